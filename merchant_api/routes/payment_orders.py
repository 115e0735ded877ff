"""Payment orders: create (with a dynamic EMVCo QR code), read, list, cancel; paid by a wallet
(merchant-presented QR) or captured from a customer's payment code (customer-presented)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from ledger.api.deps import ReaderDep
from ledger.api.errors import id_or_404
from ledger.api.responses import JSONResponse
from ledger.api.views import item_results, receipt
from ledger.store.queries import Reader
from merchant_api.deps import MerchantDep, ServiceDep, idempotent
from merchant_api.schemas import CaptureCode, OrderCreate, OrderPayment
from merchant_api.service import MerchantService, Payment

router = APIRouter(prefix="/v1/payment_orders", tags=["payment orders"])
PAGE_LIMIT_MAX = 100


@router.post("", status_code=201)
async def create_payment_order(
    body: OrderCreate, ctx: MerchantDep, service: ServiceDep, request: Request
) -> Any:
    """An order with its dynamic QR code. The same out_trade_no with the same parameters
    returns the existing order (200); with other parameters, 409 ``out_trade_no_conflict``.
    With ``payment_code``, the customer's code is captured at once (one step)."""

    async def run() -> JSONResponse:
        params = body.model_dump(exclude_unset=True, exclude={"payment_code"})
        order, created = await run_in_threadpool(service.create_order, ctx, params)
        if body.payment_code:
            await service.capture(ctx, int.from_bytes(order.id, "big"), body.payment_code)
        elif created:  # nothing has happened to it yet: nothing to read
            return JSONResponse(service.new_order_view(order, ctx.merchant), status_code=201)
        view = await run_in_threadpool(service.view, order, merchant=ctx.merchant)
        return JSONResponse(view, status_code=201 if created else 200)

    return await idempotent(request, ctx, run)


@router.get("/{order_id}")
def read_payment_order(order_id: str, ctx: MerchantDep, service: ServiceDep) -> Any:
    return JSONResponse(
        service.order_view(ctx, id_or_404(order_id, "payment_order", "payment_order"))
    )


@router.get("")
def list_payment_orders(
    ctx: MerchantDep,
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX)] = 20,
    starting_after: Annotated[str | None, Query(description="An order id.")] = None,
    status: Literal["requires_payment", "succeeded", "canceled", "expired"] | None = None,
    created_gte: Annotated[int | None, Query(description="Unix seconds")] = None,
    created_lte: Annotated[int | None, Query(description="Unix seconds")] = None,
) -> Any:
    """Newest first, cursor-paginated (``starting_after``), filtered by status and date."""
    cursor = id_or_404(starting_after, "payment_order", "payment_order") if starting_after else None
    views: list[dict[str, Any]] = []
    has_more = True
    while has_more and len(views) < limit:  # status is derived, so it filters after reading
        page, has_more = service.list_orders(
            ctx,
            limit=limit,
            starting_after=cursor,
            created_gte=created_gte,
            created_lte=created_lte,
        )
        found = service.views(page, merchant=ctx.merchant)
        views += [v for v in found if status is None or v["status"] == status]
        if page:
            cursor = int.from_bytes(page[-1].id, "big")
    more = has_more or len(views) > limit
    return JSONResponse({"object": "list", "data": views[:limit], "has_more": more})


@router.post("/{order_id}/cancel")
async def cancel_payment_order(
    order_id: str, ctx: MerchantDep, service: ServiceDep, request: Request
) -> Any:
    """Cancel an unpaid order (again: the same answer). A paid order: 409."""

    async def run() -> JSONResponse:
        oid = id_or_404(order_id, "payment_order", "payment_order")
        return JSONResponse(await service.cancel(ctx, oid))

    return await idempotent(request, ctx, run)


@router.post("/{order_id}/capture_code")
async def capture_payment_code(
    order_id: str, body: CaptureCode, ctx: MerchantDep, service: ServiceDep, request: Request
) -> Any:
    """Customer-presented mode: the till submits the code the customer's wallet shows; the
    ledger checks its signature, expiry and single use, and pays the order once."""

    async def run() -> JSONResponse:
        paid = await service.capture(
            ctx, id_or_404(order_id, "payment_order", "payment_order"), body.payment_code
        )
        return JSONResponse(await _outcome(service, paid, None))

    return await idempotent(request, ctx, run)


@router.post("/{order_id}/pay")
async def pay_payment_order(
    order_id: str, body: OrderPayment, request: Request, reader: ReaderDep, service: ServiceDep
) -> Any:
    """A wallet pays an order it scanned: a payment signed by the payer whose id is the order
    id. No API key: the signature is the authority. Exactly once, however many try."""
    oid = id_or_404(order_id, "payment_order", "payment_order")
    return JSONResponse(await _outcome(service, await service.pay(oid, body), reader))


async def _outcome(
    service: MerchantService, paid: Payment, reader: Reader | None
) -> dict[str, Any]:
    """A payment's answer, with the order's view (and the receipt, given a reader). A payment
    accepted just now answers from memory: the order's view is the one its transfer committed,
    the receipt comes from the writer's batch. Any other answer reads the order as it stands
    now, on a thread."""
    item = item_results([paid.transfer], paid.result)["results"][0]
    now = paid.paid_now()
    view = paid.paid if now else await run_in_threadpool(service.view, paid.order)
    out = {
        "result": item["result"],
        "replayed": item["replayed"],
        "seq": item["seq"],
        "limit": item.get("limit"),
        "payment_order": view,
    }
    if reader is not None and item["result"] == "ok" and item["seq"] is not None:
        key, result = service.ledger.public_key, paid.result
        if now:
            out["receipt"] = receipt(reader, item["seq"], result.tree_size, key, result.committed)
        else:
            out["receipt"] = await run_in_threadpool(
                receipt, reader, item["seq"], result.tree_size, key, result.committed
            )
    return out

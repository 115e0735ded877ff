"""Refunds: partial and several per order, never more in total than was paid."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ledger.api.errors import id_or_404
from ledger.api.responses import JSONResponse
from merchant_api.deps import MerchantDep, ServiceDep, idempotent
from merchant_api.schemas import RefundCreate

router = APIRouter(prefix="/v1/refunds", tags=["refunds"])


@router.post("", status_code=201)
async def create_refund(
    body: RefundCreate, ctx: MerchantDep, service: ServiceDep, request: Request
) -> Any:
    """Refund to the payer's wallet. Idempotent on out_refund_no (the same parameters return
    the refund; others: 409 ``out_refund_no_conflict``). The answer is final: ``succeeded``, or
    ``failed`` with a ``failure_code`` (``amount_exceeds_refundable``; ``exceeds_balance_cap``
    when the payer's wallet cannot hold it and has no linked bank account to sweep to;
    ``exceeds_credits`` when the merchant's wallet has too little)."""

    async def run() -> JSONResponse:
        params = {
            "payment_order": body.payment_order,
            "amount": body.amount,
            "out_refund_no": body.out_refund_no,
            "reason": body.reason,
        }
        return JSONResponse(await service.refund(ctx, params), status_code=201)

    return await idempotent(request, ctx, run)


@router.get("/{refund_id}")
def read_refund(refund_id: str, ctx: MerchantDep, service: ServiceDep) -> Any:
    rid = id_or_404(refund_id, "refund", "refund")
    return service.refund_view(service.refund_by_id(ctx, rid))


@router.get("")
def list_refunds(payment_order: str, ctx: MerchantDep, service: ServiceDep) -> Any:
    """The refunds of one order, oldest first."""
    oid = id_or_404(payment_order, "payment_order", "payment_order")
    order = service.order(ctx, oid)
    refunds = [service.refund_view(r, t) for r, t in service.refunds_of(order)]
    return {"object": "list", "data": refunds, "has_more": False}

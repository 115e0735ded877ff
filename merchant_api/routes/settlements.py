"""Settlements: the merchant's e-CNY redeemed to its linked bank account at its operator."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from ledger.api.errors import id_or_404
from ledger.api.models import AmountFen
from ledger.api.responses import JSONResponse
from merchant_api import settlements
from merchant_api.deps import MerchantDep, ServiceDep, idempotent

router = APIRouter(prefix="/v1/settlements", tags=["settlements"])
PAGE_LIMIT_MAX = 100


class SettlementCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: AmountFen | None = None
    """Default: the wallet's whole available balance."""


@router.post("", status_code=201)
async def create_settlement(
    ctx: MerchantDep,
    service: ServiceDep,
    request: Request,
    body: Annotated[SettlementCreate | None, Body()] = None,
) -> Any:
    """Redeem e-CNY to the merchant's linked bank account: ``amount`` fen, or by default the
    wallet's whole balance (zero: 422 ``nothing_to_settle``). The answer is final:
    ``succeeded``, or ``failed`` with the ledger's ``failure_code`` (``exceeds_credits``: the
    wallet holds less than ``amount``). Send an ``Idempotency-Key`` to retry safely."""

    async def run() -> JSONResponse:
        amount = body.amount if body is not None else None
        row = await run_in_threadpool(settlements.settle, ctx, service, amount)
        return JSONResponse(settlements.view(row), status_code=201)

    return await idempotent(request, ctx, run)


@router.get("/{settlement_id}")
def read_settlement(settlement_id: str, ctx: MerchantDep, service: ServiceDep) -> Any:
    return settlements.view(
        settlements.by_id(ctx, service, id_or_404(settlement_id, "settlement", "settlement"))
    )


@router.get("")
def list_settlements(
    ctx: MerchantDep,
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX)] = 20,
    starting_after: Annotated[str | None, Query(description="A settlement id.")] = None,
) -> Any:
    """The caller's settlements (manual and daily), newest first, cursor-paginated."""
    cursor = id_or_404(starting_after, "settlement", "settlement") if starting_after else None
    rows, has_more = settlements.page(ctx, service, limit, cursor)
    return {"object": "list", "data": [settlements.view(r) for r in rows], "has_more": has_more}

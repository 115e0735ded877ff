"""The central bank's side: operators, their reserves, issuing and redeeming e-CNY."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ledger.api.deps import CentralBank, ReaderDep, wallets_of
from ledger.api.models import BatchResults, Issuance, MoneyMove, OperatorCreate
from ledger.api.responses import JSONResponse
from ledger.api.views import item_results
from ledger.wallets import codes

router = APIRouter(prefix="/v1", tags=["central bank"])


@router.post("/operators", response_model=BatchResults)
def create_operator(body: OperatorCreate, principal: CentralBank, request: Request) -> Any:
    """Authorize an operator: its reserves at the central bank, its e-CNY float and its own side
    of customers' deposits (ids are derived from its name; creating twice is a replay)."""
    submitted = wallets_of(request).onboard_operator(body.operator)
    return JSONResponse(item_results(submitted.items, submitted.result()))


@router.post("/operators/{operator}/reserve_deposits", response_model=BatchResults)
def create_reserve_deposit(
    operator: str, body: MoneyMove, principal: CentralBank, request: Request
) -> Any:
    submitted = wallets_of(request).deposit_reserves(body.id, operator, body.amount)
    return JSONResponse(item_results(submitted.items, submitted.result()))


@router.post("/issuances", response_model=BatchResults)
def create_issuance(body: Issuance, principal: CentralBank, request: Request) -> Any:
    """Issue e-CNY to an operator's float, against its reserves (which may not go negative)."""
    submitted = wallets_of(request).issue(body.id, body.operator, body.amount)
    return JSONResponse(item_results(submitted.items, submitted.result()))


@router.post("/central_bank_redemptions", response_model=BatchResults)
def create_central_bank_redemption(body: Issuance, principal: CentralBank, request: Request) -> Any:
    """e-CNY from an operator's float back to its reserves: it leaves circulation."""
    submitted = wallets_of(request).redeem_at_central_bank(body.id, body.operator, body.amount)
    return JSONResponse(item_results(submitted.items, submitted.result()))


@router.get("/circulation")
def read_circulation(principal: CentralBank, reader: ReaderDep) -> Any:
    """e-CNY in circulation: the net balance of every e-CNY account (floats and wallets)."""
    return reader.circulation(sorted(codes.E_CNY_ACCOUNTS))

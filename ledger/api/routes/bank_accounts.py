"""Customers' bank deposits at an operator: the bank-money side of top-ups and waterfalls."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ledger.api.deps import CurrentPrincipal, ReaderDep, visible_account, wallets_of
from ledger.api.errors import APIError, id_or_404
from ledger.api.models import BankAccountCreate, BatchResults, MoneyMove
from ledger.api.responses import JSONResponse
from ledger.api.views import item_results
from ledger.wallets import codes

router = APIRouter(prefix="/v1/bank_accounts", tags=["bank accounts"])


@router.post("", response_model=BatchResults)
def create_bank_account(
    body: BankAccountCreate, principal: CurrentPrincipal, request: Request
) -> Any:
    if principal.is_central_bank:
        raise APIError(403, "permission_denied", "bank accounts are opened by operators")
    wallets = wallets_of(request)
    submitted = wallets.open_bank_account(principal.operator, body.id, body.owner)
    return JSONResponse(item_results(submitted.items, submitted.result()))


@router.post("/{account_id}/deposits", response_model=BatchResults)
def create_cash_deposit(
    account_id: str,
    body: MoneyMove,
    principal: CurrentPrincipal,
    reader: ReaderDep,
    request: Request,
) -> Any:
    """The customer pays cash (or salary arrives) into the deposit: bank money, not e-CNY."""
    target = id_or_404(account_id, "account", "account_id")
    account = visible_account(reader, principal, target)
    if account.code != codes.BANK_DEPOSIT or principal.is_central_bank:
        raise APIError(404, "account_not_found", "no such bank account", "account_id")
    wallets = wallets_of(request)
    submitted = wallets.cash_deposit(principal.operator, body.id, target, body.amount)
    return JSONResponse(item_results(submitted.items, submitted.result()))

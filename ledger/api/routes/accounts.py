"""Accounts: create in batches, read, history, balance as of a sequence number, close."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query

from ledger.api.deps import CurrentPrincipal, LedgerDep, ReaderDep, visible_account
from ledger.api.errors import APIError, id_or_404
from ledger.api.models import (
    AccountBatch,
    AccountPublic,
    BalanceAsOf,
    BatchResults,
    EntryPage,
    format_id,
)
from ledger.api.responses import JSONResponse
from ledger.api.views import account_view, entry_view, item_results
from ledger.domain import ACCOUNT_FLAG_NAMES, CURRENCIES, Account, CloseAccount
from ledger.engine import OP_CLOSE_ACCOUNTS, OP_CREATE_ACCOUNTS

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])
PAGE_LIMIT_MAX = 100


@router.post("", response_model=BatchResults)
async def create_accounts(
    body: AccountBatch, principal: CurrentPrincipal, ledger: LedgerDep
) -> JSONResponse:
    """Create up to BATCH_MAX accounts. Each item gets a result; a replayed id returns ok."""
    accounts = []
    for i, a in enumerate(body.accounts):
        operator = principal.operator
        if a.operator is not None and a.operator != operator:
            if not principal.is_central_bank:
                raise APIError(
                    403,
                    "permission_denied",
                    "operators open accounts for themselves only",
                    param=f"accounts.{i}.operator",
                )
            operator = a.operator
        flags = 0
        for name in a.flags:
            flags |= ACCOUNT_FLAG_NAMES[name]
        accounts.append(Account(a.id, CURRENCIES[a.currency], a.code, flags, a.owner, operator))
    result = await ledger.execute(OP_CREATE_ACCOUNTS, accounts)
    return JSONResponse(item_results(accounts, result))


@router.get("/{account_id}", response_model=AccountPublic)
def read_account(account_id: str, principal: CurrentPrincipal, reader: ReaderDep) -> Any:
    return account_view(
        visible_account(reader, principal, id_or_404(account_id, "account", "account_id"))
    )


@router.get("/{account_id}/entries", response_model=EntryPage)
def list_account_entries(
    account_id: str,
    principal: CurrentPrincipal,
    reader: ReaderDep,
    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX)] = 20,
    starting_after: Annotated[
        int | None, Query(ge=0, description="The seq of the last entry of the previous page.")
    ] = None,
) -> Any:
    """The account's journal entries, newest first, cursor-paginated by sequence number."""
    account = visible_account(reader, principal, id_or_404(account_id, "account", "account_id"))
    rows = reader.history(account.n, limit + 1, starting_after)
    return {
        "object": "list",
        "data": [entry_view(e) for e in rows[:limit]],
        "has_more": len(rows) > limit,
    }


@router.get("/{account_id}/balance", response_model=BalanceAsOf)
def read_balance(
    account_id: str,
    principal: CurrentPrincipal,
    reader: ReaderDep,
    as_of_seq: Annotated[int | None, Query(ge=0)] = None,
) -> Any:
    """Balances right after journal entry ``as_of_seq`` (default: now)."""
    account = visible_account(reader, principal, id_or_404(account_id, "account", "account_id"))
    latest = reader.latest_checkpoint()
    size = latest.size if latest else 0
    if as_of_seq is None:
        as_of_seq = max(size - 1, 0)
    elif as_of_seq >= size:  # an answer about the future could change: refuse it
        raise APIError(
            422,
            "as_of_seq_out_of_range",
            f"as_of_seq must be < {size}, the size of the log",
            param="as_of_seq",
        )
    balance = reader.balance_as_of(account.n, as_of_seq)
    if balance is None:
        raise APIError(
            404,
            "account_not_found_at_seq",
            f"the account did not exist yet at seq {as_of_seq} (created at {account.seq})",
            param="as_of_seq",
        )
    return {
        "account_id": format_id(account.id),
        "as_of_seq": as_of_seq,
        "last_entry_seq": balance.seq,
        "debits_pending": balance.debits_pending,
        "debits_posted": balance.debits_posted,
        "credits_pending": balance.credits_pending,
        "credits_posted": balance.credits_posted,
    }


@dataclass(frozen=True, slots=True)
class _Closed:
    """A close's result item: the seq and timestamp of the close, not of the creation."""

    id: int
    seq: int
    timestamp: int


@router.post("/{account_id}/close", response_model=BatchResults)
def close_account(
    account_id: str, principal: CurrentPrincipal, ledger: LedgerDep, reader: ReaderDep
) -> JSONResponse:
    """Close an account: no transfer may touch it again. Idempotent."""
    account = visible_account(reader, principal, id_or_404(account_id, "account", "account_id"))
    result = ledger.submit(OP_CLOSE_ACCOUNTS, [CloseAccount(account.id)]).result()
    closed = reader.account_closed(account.id) if result.codes == [0] else None
    seq, timestamp = (closed.seq, closed.entry.timestamp) if closed else (-1, 0)
    return JSONResponse(item_results([_Closed(account.id, seq, timestamp)], result))

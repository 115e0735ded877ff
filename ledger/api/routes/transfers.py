"""Transfers: create in batches (results per item), read one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ledger.api.deps import CurrentPrincipal, LedgerDep, ReaderDep, can_see
from ledger.api.errors import APIError, id_or_404
from ledger.api.models import BatchResults, TransferBatch, TransferCreate, TransferPublic
from ledger.api.responses import JSONResponse
from ledger.api.views import item_results, transfer_view
from ledger.domain import CURRENCIES, TRANSFER_FLAG_NAMES, Transfer
from ledger.engine import OP_CREATE_TRANSFERS
from ledger.entry import canonical_metadata

router = APIRouter(prefix="/v1/transfers", tags=["transfers"])


@router.post("", response_model=BatchResults)
async def create_transfers(
    body: TransferBatch, principal: CurrentPrincipal, ledger: LedgerDep
) -> JSONResponse:
    """Create up to BATCH_MAX transfers, applied in order. Each item gets a result code;
    rejections are results, not errors. Linked transfers succeed or fail together. A replayed
    id returns its original result with ``replayed: true``. An operator may only debit accounts
    it operates (``debit_account_not_permitted`` otherwise); the central bank may debit any."""
    transfers = [_transfer(t) for t in body.transfers]
    operator = None if principal.is_central_bank else principal.operator
    result = await ledger.execute(OP_CREATE_TRANSFERS, transfers, operator)
    return JSONResponse(item_results(transfers, result))


@router.get("/{transfer_id}", response_model=TransferPublic)
def read_transfer(transfer_id: str, principal: CurrentPrincipal, reader: ReaderDep) -> Any:
    tid = id_or_404(transfer_id, "transfer", "transfer_id")
    found = reader.transfer(tid)
    if found is None or not (
        principal.is_central_bank
        or can_see(principal, reader.account(found.entry.debit_account_id))
        or can_see(principal, reader.account(found.entry.credit_account_id))
    ):
        raise APIError(404, "transfer_not_found", "no such transfer", param="transfer_id")
    return transfer_view(found)


def _transfer(t: TransferCreate) -> Transfer:
    flags = 0
    for name in t.flags:
        flags |= TRANSFER_FLAG_NAMES[name]
    return Transfer(
        t.id,
        t.debit_account_id or 0,
        t.credit_account_id or 0,
        t.amount,
        CURRENCIES[t.currency],
        t.code,
        flags,
        t.pending_id or 0,
        t.timeout_s,
        canonical_metadata(t.metadata),
    )

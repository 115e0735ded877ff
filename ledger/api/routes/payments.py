"""Signed payments between wallets, and receipts anyone can check offline.

A payment needs no API key: the payer's signature over the canonical payment bytes (see
``ledger.signing``) is the authority. An accepted payment comes back with its receipt: the
journal entry, its inclusion proof and the signed checkpoint it is in.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Query, Request

from ledger.api.deps import ReaderDep, wallets_of
from ledger.api.errors import APIError, id_or_404
from ledger.api.models import PaymentBatch, SignedPaymentIn, format_id
from ledger.api.plain import PlainPost
from ledger.api.responses import JSONResponse
from ledger.api.views import item_results, receipt
from ledger.api.wallet_auth import Access, authenticate
from ledger.store.queries import Reader
from ledger.wallets.service import SignedPayment

router = APIRouter(tags=["payments"])
AccessDep = Annotated[Access, Depends(authenticate)]


def _payment(p: SignedPaymentIn) -> SignedPayment:
    return SignedPayment(
        p.id, p.payer, p.payee, p.amount, p.expires_at_ms, p.key_version, p.signature, p.kind,
        p.currency, p.metadata,
    )  # fmt: skip


async def create_payment(request: Request, body: SignedPaymentIn) -> JSONResponse:
    """One signed payment. ``result`` is ``ok`` or a code (``exceeds_daily_limit`` with the
    limit and what was allowed, ``signature_invalid``, ``wallet_key_rotated``...); a replayed id
    returns its first answer. Accepted payments carry a receipt."""
    wallets = wallets_of(request)
    transfers, result = await wallets.pay([_payment(body)], receipts=True)
    item = item_results(transfers, result)["results"][0]
    if item["result"] == "ok" and item["seq"] is not None:
        reader: Reader = request.app.state.reader
        key = wallets.ledger.public_key
        item["receipt"] = receipt(reader, item["seq"], result.tree_size, key, result.committed)
    return JSONResponse(item)


async def create_payments(request: Request, body: PaymentBatch) -> JSONResponse:
    """Up to 8190 signed payments in one request, each answered on its own (not linked)."""
    wallets = wallets_of(request)
    reader: Reader = request.app.state.reader
    transfers, result = await wallets.pay(
        [_payment(p) for p in body.payments], receipts=body.receipts
    )
    out = item_results(transfers, result)
    if body.receipts:
        key = wallets.ledger.public_key
        for item in out["results"]:
            if item["result"] == "ok" and item["seq"] is not None:
                item["receipt"] = receipt(
                    reader, item["seq"], result.tree_size, key, result.committed
                )
    return JSONResponse(out)


PLAIN: Final = (
    PlainPost(
        "/v1/payments", create_payment, SignedPaymentIn,
        "The payment's result, with its receipt if accepted.", "payments",
    ),
    PlainPost(
        "/v1/payments/batch", create_payments, PaymentBatch,
        "Each payment's result, in order (with receipts if asked).", "payments",
    ),
)  # fmt: skip
"""The busiest routes, served plainly (see ``ledger.api.plain``). ``create_app`` puts them
first in the app's own router, ahead of every included router."""


@router.get("/v1/receipts/{transfer_id}")
def read_receipt(
    transfer_id: str,
    access: AccessDep,
    request: Request,
    reader: ReaderDep,
    tree_size: Annotated[int | None, Query(ge=1, description="Default: the latest.")] = None,
) -> Any:
    """A receipt for a transfer, for its payer or payee wallet (signed request) or their
    operator, against the latest checkpoint or any later than the entry."""
    tid = id_or_404(transfer_id, "transfer", "transfer_id")
    found = reader.transfer(tid)
    if found is None or found.seq is None or not _party(access, request, reader, found.entry):
        raise APIError(404, "transfer_not_found", "no such transfer", "transfer_id")
    latest = reader.latest_checkpoint()
    assert latest is not None
    size = tree_size or latest.size
    if not found.seq < size <= latest.size or reader.checkpoint_at(size) is None:
        raise APIError(
            422, "tree_size_invalid", "name a checkpoint after the entry", param="tree_size"
        )
    wallets = wallets_of(request)
    return {
        "transfer_id": format_id(tid),
        "receipt": receipt(reader, found.seq, size, wallets.ledger.public_key),
    }


def _party(access: Access, request: Request, reader: Reader, e: Any) -> bool:
    parties = (e.debit_account_id, e.credit_account_id)
    if access.wallet_id is not None:
        return access.wallet_id in parties
    principal = access.principal
    assert principal is not None
    if principal.is_central_bank:
        return True
    return any(
        (a := reader.account(x)) is not None and a.operator == principal.operator for x in parties
    )

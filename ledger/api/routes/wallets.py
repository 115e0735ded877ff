"""Wallets: open (operator), read (operator or the wallet itself), class, key, settings, KYC
reveal, sub-wallets, top-ups and redemptions.

Every route here is a plain ``def``, which FastAPI runs in its thread pool: each reads the
writer's memory (the wallet), the KYC store or the database before or after its write, and in
an HTTP worker those reads wait on the writer or the disk. On the event loop they would stall
every other request of the worker meanwhile."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from ledger.api.deps import ReaderDep, wallets_of
from ledger.api.errors import APIError, id_or_404
from ledger.api.models import (
    BatchResults,
    EntryPage,
    MoneyMove,
    RevealRequest,
    SignedPaymentIn,
    SubWalletClose,
    SubWalletCreate,
    WalletBatch,
    WalletClassChange,
    WalletCreate,
    WalletKeyRotation,
    WalletSettings,
    format_id,
)
from ledger.api.responses import JSONResponse
from ledger.api.routes.accounts import PAGE_LIMIT_MAX
from ledger.api.views import entry_view, item_results, wallet_view
from ledger.api.wallet_auth import Access, authenticate, require_operator, wallet_for
from ledger.domain import LimitSet, Result, Transfer, UpdateWallet
from ledger.engine import OpResult
from ledger.wallets.service import SignedPayment, Submitted, WalletError, check_kyc

router = APIRouter(prefix="/v1/wallets", tags=["wallets"])
AccessDep = Annotated[Access, Depends(authenticate)]


def _answer(submitted: Submitted) -> JSONResponse:
    return JSONResponse(item_results(submitted.items, submitted.result()))


def _refuse(exc: WalletError) -> APIError:
    status = 404 if exc.code.endswith("not_found") else 422
    return APIError(status, exc.code, str(exc), exc.param)


@router.post("", response_model=BatchResults)
def create_wallet(body: WalletCreate, access: AccessDep, request: Request) -> Any:
    """Open a wallet. The key pair was made on the device; only the public key is sent. KYC
    details go to the operator's encrypted store; the journal sees a pseudonymous id."""
    principal = require_operator(access)
    if principal.is_central_bank:
        raise APIError(403, "permission_denied", "wallets are opened by operators")
    wallets = wallets_of(request)
    kyc = body.kyc.fields()
    try:
        submitted = wallets.open_wallets(principal.operator, [wallets.wallet_to_open(
            principal.operator, body.id, kind=body.kind, klass=body.wallet_class,
            public_key=body.public_key, kyc=kyc, linked_bank=body.linked_bank_account or 0,
            reverse_waterfall=body.reverse_waterfall,
        )])  # fmt: skip
    except WalletError as exc:
        raise _refuse(exc) from None
    result = submitted.result()
    if result.codes[0] == 0 and (0 not in result.replayed or wallets.kyc.get(body.id) is None):
        wallets.kyc.put(body.id, principal.operator, kyc)  # a retry completes a lost write
    return JSONResponse(item_results(submitted.items, result))


@router.post("/batch", response_model=BatchResults)
def create_wallets(body: WalletBatch, access: AccessDep, request: Request) -> Any:
    """Open up to 1000 wallets in one request (onboarding in bulk), each answered on its own as
    in ``POST /v1/wallets``. A request with any invalid wallet is refused whole (422, ``param``
    names it) before anything is opened."""
    principal = require_operator(access)
    if principal.is_central_bank:
        raise APIError(403, "permission_denied", "wallets are opened by operators")
    wallets = wallets_of(request)
    items = []
    for i, w in enumerate(body.wallets):
        try:
            items.append(
                wallets.wallet_to_open(
                    principal.operator,
                    w.id,
                    kind=w.kind,
                    klass=w.wallet_class,
                    public_key=w.public_key,
                    kyc=w.kyc.fields(),
                    linked_bank=w.linked_bank_account or 0,
                    reverse_waterfall=w.reverse_waterfall,
                )
            )
        except WalletError as exc:
            param = f"wallets[{i}]" + (f".{exc.param}" if exc.param else "")
            raise APIError(422, exc.code, f"wallets[{i}]: {exc}", param) from None
    if len({w.id for w in body.wallets}) != len(body.wallets):
        raise APIError(422, "duplicate_id", "each wallet in a batch needs its own id", "wallets")
    submitted = wallets.open_wallets(principal.operator, items)
    result = submitted.result()
    wallets.kyc.put_many(
        [
            (w.id, principal.operator, w.kyc.fields())
            for i, w in enumerate(body.wallets)
            if result.codes[i] == 0 and (i not in result.replayed or wallets.kyc.get(w.id) is None)
        ]
    )
    return JSONResponse(item_results(submitted.items, result))


@router.get("/{wallet_id}")
def read_wallet(wallet_id: str, access: AccessDep, request: Request, reader: ReaderDep) -> Any:
    wallets = wallets_of(request)
    wallet = wallet_for(
        access, wallets, id_or_404(wallet_id, "wallet", "wallet_id"), parent_ok=True
    )
    account = reader.account(wallet.id)
    assert account is not None
    return JSONResponse(wallet_view(wallet, account, wallets.ledger.limits()))


@router.get("/{wallet_id}/entries", response_model=EntryPage)
def list_wallet_entries(
    wallet_id: str,
    access: AccessDep,
    request: Request,
    reader: ReaderDep,
    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX)] = 20,
    starting_after: Annotated[int | None, Query(ge=0)] = None,
) -> Any:
    """The wallet's history, newest first (payments, top-ups, its own records)."""
    wallet = wallet_for(
        access, wallets_of(request), id_or_404(wallet_id, "wallet", "wallet_id"), parent_ok=True
    )
    account = reader.account(wallet.id)
    assert account is not None
    rows = reader.history(account.n, limit + 1, starting_after)
    page = {"object": "list", "data": [entry_view(e) for e in rows[:limit]]}
    return JSONResponse(page | {"has_more": len(rows) > limit})  # as EntryPage, not checked again


@router.post("/{wallet_id}/class", response_model=BatchResults)
def change_wallet_class(
    wallet_id: str, body: WalletClassChange, access: AccessDep, request: Request
) -> Any:
    """Upgrade (more KYC, higher limits) or downgrade; a downgrade below the wallet's balance is
    refused (``class_downgrade_exceeds_balance``, with the balance and the new cap)."""
    principal = require_operator(access)
    wallets = wallets_of(request)
    wallet = wallet_for(access, wallets, id_or_404(wallet_id, "wallet", "wallet_id"))
    kyc = body.kyc.fields() if body.kyc else {}
    known = wallets.kyc.get(wallet.id) or {}
    if body.wallet_class < wallet.klass:  # an upgrade: the stronger class's KYC must be there
        try:
            check_kyc(body.wallet_class, {**known, **kyc}, wallet.linked_bank)
        except WalletError as exc:
            raise _refuse(exc) from None
    update = UpdateWallet(wallet.id, klass=body.wallet_class, reason=body.reason or "class change")
    result = wallets.update_wallet(_acting(principal.operator), update).result()
    if result.codes[0] == 0 and kyc:
        wallets.kyc.put(wallet.id, wallet.operator, {**known, **kyc})
    return JSONResponse(item_results([update], result))


@router.post("/{wallet_id}/key", response_model=BatchResults)
def rotate_wallet_key(
    wallet_id: str, body: WalletKeyRotation, access: AccessDep, request: Request
) -> Any:
    """After re-verifying the owner (lost phone), the operator installs a new public key. The
    old key stops working at once: the writer refuses payments signed with it."""
    principal = require_operator(access)
    wallets = wallets_of(request)
    wallet = wallet_for(access, wallets, id_or_404(wallet_id, "wallet", "wallet_id"))
    reason = f"key rotated after re-verification: {body.verification_reference}"
    update = UpdateWallet(wallet.id, public_key=body.public_key, reason=reason)
    result = wallets.update_wallet(_acting(principal.operator), update).result()
    return JSONResponse(item_results([update], result))


@router.post("/{wallet_id}/settings", response_model=BatchResults)
def change_wallet_settings(
    wallet_id: str, body: WalletSettings, access: AccessDep, request: Request
) -> Any:
    """The owner (or its operator) turns the reverse waterfall on or off, or links a bank
    account."""
    wallets = wallets_of(request)
    wallet = wallet_for(access, wallets, id_or_404(wallet_id, "wallet", "wallet_id"))
    update = UpdateWallet(
        wallet.id,
        reverse_waterfall=-1 if body.reverse_waterfall is None else int(body.reverse_waterfall),
        linked_bank=-1 if body.linked_bank_account is None else body.linked_bank_account,
        reason="settings changed by " + ("the owner" if access.wallet_id else "the operator"),
    )
    if update.reverse_waterfall == 1 and not (wallet.linked_bank or update.linked_bank > 0):
        raise APIError(422, "linked_bank_required", "reverse waterfall needs a bank account")
    result = wallets.update_wallet(None, update).result()
    return JSONResponse(item_results([update], result))


@router.post("/{wallet_id}/reveal")
def reveal_wallet_owner(
    wallet_id: str, body: RevealRequest, access: AccessDep, request: Request
) -> Any:
    """Controllable anonymity: who owns a wallet, for the central bank or the wallet's operator,
    with a stated legal basis. The look-up is written to the journal before the answer."""
    principal = require_operator(access)
    wallets = wallets_of(request)
    wallet = wallet_for(access, wallets, id_or_404(wallet_id, "wallet", "wallet_id"))
    requester = f"{principal.role}:{principal.operator}:{body.requester}"
    try:
        owner = wallets.reveal(
            wallet.id,
            requester=requester,
            legal_basis=body.legal_basis,
            case_reference=body.case_reference,
        )
    except WalletError as exc:
        raise _refuse(exc) from None
    return {"wallet_id": format_id(wallet.id), "owner": owner, "logged_as": "kyc_revealed"}


@router.post("/{wallet_id}/sub_wallets", response_model=BatchResults)
def create_sub_wallet(
    wallet_id: str, body: SubWalletCreate, access: AccessDep, request: Request
) -> Any:
    """Push a sub-wallet to a merchant app: signed by the parent wallet; its own key and limits
    (each no larger than the parent's); it may pay only ``bound_payee`` or return to the parent."""
    if access.wallet_id is None:
        raise APIError(403, "permission_denied", "a sub-wallet is opened by its parent wallet")
    wallets = wallets_of(request)
    parent = wallet_for(access, wallets, id_or_404(wallet_id, "wallet", "wallet_id"))
    limits = LimitSet(
        body.limits.balance_cap, body.limits.single, body.limits.daily, body.limits.annual
    )
    try:
        submitted = wallets.open_sub_wallet(
            parent.id, body.id, public_key=body.public_key, bound_payee=body.bound_payee,
            sub_limits=limits,
        )  # fmt: skip
    except WalletError as exc:
        raise _refuse(exc) from None
    return _answer(submitted)


@router.post("/{wallet_id}/close", response_model=BatchResults)
def close_sub_wallet(
    wallet_id: str, body: SubWalletClose, access: AccessDep, request: Request, reader: ReaderDep
) -> Any:
    """Close a sub-wallet (signed by its parent, or by the operator): its balance returns to
    the parent in a transfer with the given id, and the sub-wallet's account is closed."""
    wallets = wallets_of(request)
    sub = wallet_for(access, wallets, id_or_404(wallet_id, "wallet", "wallet_id"), parent_ok=True)
    if access.wallet_id is not None and access.wallet_id != sub.parent:
        raise APIError(403, "permission_denied", "a sub-wallet is closed by its parent wallet")
    update = UpdateWallet(sub.id, reason=body.reason or "closed by the owner", close_id=body.id)
    result = wallets.update_wallet(None, update).result()
    home = reader.transfer(body.id)  # the transfer that returned the balance, if there was one
    item = Transfer(body.id, 0, 0, 0, 0, 0)
    if home is not None and home.seq is not None:
        item.seq, item.timestamp = home.seq, home.entry.timestamp
    return JSONResponse(item_results([item], result))


@router.post("/{wallet_id}/top_ups", response_model=BatchResults)
def create_top_up(wallet_id: str, body: MoneyMove, access: AccessDep, request: Request) -> Any:
    """Bank money for e-CNY: from the wallet's linked bank account, at its operator."""
    principal = require_operator(access)
    wallets = wallets_of(request)
    wallet = wallet_for(access, wallets, id_or_404(wallet_id, "wallet", "wallet_id"))
    try:
        submitted = wallets.top_up(_acting(principal.operator) or wallet.operator, body.id,
                                   wallet.id, body.amount)  # fmt: skip
    except WalletError as exc:
        raise _refuse(exc) from None
    return JSONResponse(_named_leg(submitted, submitted.result(), 1))


@router.post("/{wallet_id}/redemptions", response_model=BatchResults)
def create_redemption(wallet_id: str, body: SignedPaymentIn, request: Request) -> Any:
    """e-CNY back to the linked bank account. The body is a payment signed by the wallet, to
    its operator's float; the signature is the authority, so no API key is needed."""
    wallets = wallets_of(request)
    if body.payer != id_or_404(wallet_id, "wallet", "wallet_id"):
        raise APIError(422, "invalid_payer", "the payer must be the wallet in the path", "payer")
    payment = SignedPayment(
        body.id, body.payer, body.payee, body.amount, body.expires_at_ms, body.key_version,
        body.signature,
    )  # fmt: skip
    try:
        submitted = wallets.redeem(payment)
    except WalletError as exc:
        code = {"signature_invalid": 401, "wallet_key_rotated": 401}.get(exc.code)
        raise (APIError(code, exc.code, str(exc)) if code else _refuse(exc)) from None
    return JSONResponse(_named_leg(submitted, submitted.result(), 0))


def _acting(operator: str) -> str | None:
    """The central bank acts without an operator scope."""
    return None if operator == "central_bank" else operator


def _named_leg(submitted: Submitted, result: OpResult, index: int) -> dict[str, Any]:
    """Answer a two-leg operation (top-up, redemption) for the leg the client named. If the
    legs failed together, the answer is the failing leg's own code, not ``linked_event_failed``."""
    code = result.codes[index]
    if code == Result.LINKED_EVENT_FAILED:
        code = next((c for c in result.codes if c != Result.LINKED_EVENT_FAILED), code)
    failed = [i for i in result.details if result.codes[i] == code]
    details = {0: result.details[failed[0]]} if failed else {}
    single = OpResult([code], {0} if index in result.replayed else set(), details,
                      result.tree_size)  # fmt: skip
    return item_results(submitted.items[index : index + 1], single)

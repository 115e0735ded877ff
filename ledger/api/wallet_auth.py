"""Who may act on a wallet: its operator (API key) or the wallet itself (a signed request).

A wallet signs its own requests with its Ed25519 key: headers ``Wallet-Id``,
``Wallet-Timestamp`` (Unix ms) and ``Wallet-Signature`` (base64) over
``ledger.signing.read_message(method, path?query, timestamp, body)``. A request is accepted only
within ``REQUEST_TOLERANCE_MS`` of the server's clock and only once: knowing a wallet id reveals
nothing, and a captured request cannot be replayed later.

The signature is checked where the request arrives, with the wallet's key as this process last
saw it (``Ledger.wallet_key``); the writer then admits the request in one call
(``Admission.admit``): the key checked must still be the wallet's (a rotated key stops at
once) and the signature must be new. Its answer is the wallet, which the route uses as it is.
All of it runs on the event loop, as a payment's check does: only a key this process has not
seen yet is fetched on a thread, and the admission is awaited on the loop's own link.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, Protocol

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, State

from ledger import signing
from ledger.api.errors import APIError
from ledger.api.models import parse_id
from ledger.auth import Authenticator, Principal
from ledger.domain import Wallet
from ledger.service import Ledger
from ledger.wallets.service import Wallets

REQUEST_TOLERANCE_MS: Final = 300_000
SEEN_MAX: Final = 100_000
"""Signatures remembered to refuse replays within the tolerance window."""
KEY_ROTATED: Final = 1
"""``admit``: the key the signature was checked with is not the wallet's now (or no wallet)."""
REPLAYED: Final = 2
"""``admit``: this signature was presented before."""


@dataclass(frozen=True)
class Access:
    """An operator (or the central bank) acting with its key, or a wallet signing for itself
    (``wallet``: as the writer admitted the request)."""

    principal: Principal | None
    wallet: Wallet | None = None

    @property
    def wallet_id(self) -> int | None:
        return self.wallet.id if self.wallet is not None else None


class Admission(Protocol):
    async def admit(
        self, wallet_id: int, key_version: int, signature: bytes, now_ms: int
    ) -> Wallet | int:
        """The wallet, if ``key_version`` is its key's and ``signature`` is presented for the
        first time within the tolerance window; else ``KEY_ROTATED`` or ``REPLAYED``."""
        ...


class WriterAdmission:
    """``Admission`` from the writer's memory: in its process, and for every HTTP worker
    through the link (one memory of signatures for all)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._seen = SeenRequests()

    async def admit(
        self, wallet_id: int, key_version: int, signature: bytes, now_ms: int
    ) -> Wallet | int:
        return self.check(wallet_id, key_version, signature, now_ms)  # memory: nothing waits

    def check(
        self, wallet_id: int, key_version: int, signature: bytes, now_ms: int
    ) -> Wallet | int:
        """``admit`` for the link's calls."""
        account = self._ledger.account(wallet_id)
        wallet = account.wallet if account is not None else None
        if wallet is None or wallet.key_version != key_version:
            return KEY_ROTATED
        if not self._seen.first_time(signature, now_ms):
            return REPLAYED
        return wallet


class SeenRequests:
    """Signatures presented within the tolerance window (the writer's ``WriterAdmission``)."""

    def __init__(self) -> None:
        self._seen: OrderedDict[bytes, int] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, signature: bytes, now_ms: int) -> bool:
        with self._lock:
            while self._seen and (
                len(self._seen) > SEEN_MAX
                or next(iter(self._seen.values())) < now_ms - 2 * REQUEST_TOLERANCE_MS
            ):
                self._seen.popitem(last=False)
            if signature in self._seen:
                return False
            self._seen[signature] = now_ms
            return True


async def authenticate(request: Request) -> Access:
    """An API key (Authorization: Bearer) or a wallet's signature; 401 without either.

    On the event loop: an API key checked in the last seconds is in memory (others are read
    from the database on a thread), and so is a signed request's (see the module's text)."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(401, "invalid_api_key", "use `Authorization: Bearer <key>`")
        authenticator: Authenticator = request.app.state.authenticator
        return Access(await authenticator.authenticate_async(token.strip()))
    if "wallet-signature" in request.headers:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        signed = _signed(request.method, path, request.headers, await request.body())
        return Access(None, await _admitted(request.app.state, signed))
    raise APIError(
        401,
        "missing_credentials",
        "send an API key (Authorization: Bearer) or sign the request with the wallet's key "
        "(Wallet-Id, Wallet-Timestamp, Wallet-Signature)",
        headers={"WWW-Authenticate": "Bearer"},
    )


@dataclass(frozen=True, slots=True)
class _Signed:
    wallet_id: int
    signature: bytes
    message: bytes
    now_ms: int


def _signed(method: str, path: str, headers: Headers, body: bytes) -> _Signed:
    """A signed request's parts, if its headers are well formed and its time is recent."""
    try:
        wallet_id = parse_id(headers.get("wallet-id", ""))
        timestamp_ms = int(headers.get("wallet-timestamp", ""))
        signature = base64.b64decode(headers["wallet-signature"], validate=True)
    except (ValueError, KeyError):
        raise APIError(401, "invalid_wallet_signature", "malformed Wallet-* headers") from None
    now_ms = time.time_ns() // 1_000_000
    if abs(now_ms - timestamp_ms) > REQUEST_TOLERANCE_MS:
        raise APIError(
            401,
            "wallet_signature_expired",
            f"Wallet-Timestamp is more than {REQUEST_TOLERANCE_MS // 1000} s from the server's "
            "clock; sign the request again",
        )
    message = signing.read_message(method, path, timestamp_ms, body)
    return _Signed(wallet_id, signature, message, now_ms)


async def _admitted(state: State, signed: _Signed) -> Wallet:
    """The wallet that signed, once its signature verifies and the writer admits it."""
    ledger: Ledger = state.wallets.ledger
    admission: Admission = state.admission
    for fresh in (False, True):  # the key as last seen; then, if rotated since, the writer's
        if not fresh and ledger.knows_wallet_key(signed.wallet_id):
            known = ledger.wallet_key(signed.wallet_id)
        else:
            known = await run_in_threadpool(ledger.wallet_key, signed.wallet_id, fresh=fresh)
        if known is None:
            break
        key_version, public_key = known
        try:
            signing.verify(public_key, signed.message, signed.signature)
        except signing.SignatureError:
            continue
        admitted = await admission.admit(
            signed.wallet_id, key_version, signed.signature, signed.now_ms
        )
        if admitted == REPLAYED:
            raise APIError(401, "wallet_request_replayed", "this signed request was already used")
        if isinstance(admitted, Wallet):
            return admitted
    raise APIError(401, "invalid_wallet_signature", "the signature does not verify")


def wallet_for(
    access: Access, wallets: Wallets, wallet_id: int, *, parent_ok: bool = False
) -> Wallet:
    """The wallet, if ``access`` may act on it: its operator, the central bank, the wallet itself
    (or, with ``parent_ok``, the wallet a sub-wallet belongs to). Otherwise 404: ids reveal
    nothing."""
    signer = access.wallet
    wallet = signer if signer is not None and signer.id == wallet_id else wallets.wallet(wallet_id)
    allowed = wallet is not None and (
        (access.principal is not None and (
            access.principal.is_central_bank or access.principal.operator == wallet.operator
        ))
        or access.wallet_id == wallet_id
        or (parent_ok and access.wallet_id is not None and access.wallet_id == wallet.parent)
    )  # fmt: skip
    if not allowed or wallet is None:
        raise APIError(404, "wallet_not_found", "no such wallet", param="wallet_id")
    return wallet


def require_operator(access: Access) -> Principal:
    if access.principal is None:
        raise APIError(403, "permission_denied", "this needs the wallet's operator's API key")
    return access.principal

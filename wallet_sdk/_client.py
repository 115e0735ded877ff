"""``Client`` and ``AsyncClient``: the ledger's HTTP API as a wallet app uses it.

Each operation is written once, as a generator that yields :class:`~wallet_sdk._transport.Call`s
and receives their answers (sans-I/O, as h11 does it); ``Client`` drives it with blocking
``httpx`` and ``AsyncClient`` with ``await``, so the twins cannot drift apart.

Money moves only with the wallet's own signature, made here: the private key never leaves the
device. Every accepted payment comes back with a receipt that is verified with the ledger's
public key before ``pay`` returns, and its checkpoint is checked for consistency with the last
one this client saw (``ForkDetected`` if the ledger rewrote history).

**A commit whose outcome you never saw** (the connection dropped after the request left) is
resolved by asking again with the same id, never by guessing: a payment's id is chosen here,
the SDK retries with the same signed body, and the ledger answers a repeated id with its first
answer (``Payment.replayed`` is then True). If every retry fails, ``APIConnectionError`` carries
the ``payment_id``; call ``pay`` again with ``payment_id=`` that id and the same arguments.
The signature's expiry is derived from the id's own timestamp (ids are UUIDv7), so the second
call signs byte-identical bytes and is a replay, not a second payment.

A merchant's payment order (``pay_qr`` of a code from the merchant API) is paid with the order
id as the payment id, so it too is paid at most once. That id is random, not time-ordered, so a
second call signs another expiry, and the ledger refuses it as a conflict (409
``order_already_paid``); the SDK then asks for the order id's receipt as the payer, and if it
shows this wallet paid the order, returns that payment (``replayed=True``), verified as ever.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, TypeAlias, TypeVar

import httpx

from ledger.checkpoint import Checkpoint
from ledger.entry import Entry, TransferEntry
from ledger.ids import new_id
from wallet_sdk import qr
from wallet_sdk._errors import (
    APIConnectionError,
    ForkDetected,
    InvalidRequestError,
    NotFoundError,
    OperationRejected,
    PaymentRejected,
    ReceiptVerificationError,
    VerificationError,
    WalletSDKError,
)
from wallet_sdk._transport import AsyncTransport, Call, RetryPolicy, SyncTransport
from wallet_sdk.keys import WalletKeys, wallet_id_int
from wallet_sdk.money import Money, amount_fen
from wallet_sdk.qr import ECNY_QR_GUID
from wallet_sdk.receipts import (
    CheckpointTracker,
    check_receipt,
    parse_checkpoint,
    public_key_bytes,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "ECNY_QR_GUID",
    "AsyncClient",
    "Client",
    "Payment",
    "TransferResult",
]

T = TypeVar("T")
Op: TypeAlias = Generator[Call, Any, T]
WalletRef: TypeAlias = WalletKeys | str | int | uuid.UUID
PaymentKind: TypeAlias = Literal["payment", "sub_wallet_fund"]

DEFAULT_BASE_URL: Final = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S: Final = 10.0
HISTORY_PAGE_MAX: Final = 100
"""The ledger's largest page (``PAGE_LIMIT_MAX``)."""
EXPIRES_IN_S_MAX: Final = 86_400
TRACK_ATTEMPTS_MAX: Final = 64
"""Rounds of "fetch a consistency proof" before giving up when other calls on the same client
keep moving its remembered checkpoint. Each call running at once on the client may move it once
while another waits for its proof, so this must exceed the calls an app runs at once (5 was too
few for 12 concurrent payments on a slow machine)."""
_UUID7_VERSION: Final = 7


@dataclass(frozen=True, slots=True)
class TransferResult:
    """The ledger's answer for one money movement that is not a signed payment (a top-up, the
    return of a sub-wallet's balance). Always ``result == "ok"``: refusals raise."""

    id: str
    result: str
    replayed: bool
    seq: int | None
    timestamp: int | None


@dataclass(frozen=True, slots=True)
class Payment:
    """An accepted signed payment, with its receipt already verified offline.

    ``replayed`` is True when the ledger had seen this id before and answered with the first
    outcome (for a payment order: also when an earlier call of this wallet had paid it and the
    ledger's receipt for the order id shows so). ``limit`` is the spending-limit detail the
    ledger attached, if any (refusals raise :class:`PaymentRejected`, which carries it too).
    Keep ``receipt``: with the ledger's public key, ``verify_receipt(payment.receipt, key)``
    proves the payment to anyone, offline.

    ``payment_order`` is set when ``pay_qr`` paid a merchant's payment order: the order as the
    merchant API showed it in its answer (``id``, ``status``, ``out_trade_no``, ...; unsigned,
    for display: the receipt is the proof). None for other payments, and for an order whose
    payment was recovered from its receipt rather than answered by the merchant API."""

    id: str
    result: str
    replayed: bool
    seq: int | None
    timestamp: int | None
    payer: str
    payee: str
    amount: Money
    receipt: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)
    limit: dict[str, Any] | None = None
    payment_order: dict[str, Any] | None = None


# --- argument checks ----------------------------------------------------------------------------


def _uuid(value: int) -> str:
    return str(uuid.UUID(int=value))


def _transfer_id(value: str | int | uuid.UUID | None) -> int:
    return new_id() if value is None else wallet_id_int(value)


def _expires_in_s(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expires_in_s is an int (seconds)")
    if not 1 <= value <= EXPIRES_IN_S_MAX:
        raise ValueError(f"expires_in_s is 1..{EXPIRES_IN_S_MAX}")
    return value


def _expires_at_ms(payment_id: int, expires_in_s: int) -> int:
    """When the payer's signature expires: ``expires_in_s`` after the id's UUIDv7 timestamp
    (so asking again with the same id signs the same bytes), else after now."""
    if (payment_id >> 76) & 0xF == _UUID7_VERSION:
        return (payment_id >> 80) + expires_in_s * 1000
    return time.time_ns() // 1_000_000 + expires_in_s * 1000


def _metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise TypeError("metadata is a dict of str to str")
    return dict(metadata)


def _kind(kind: str) -> str:
    if kind not in ("payment", "sub_wallet_fund"):
        raise ValueError(f"kind is 'payment' or 'sub_wallet_fund', not {kind!r}")
    return kind


def _page_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError("limit is an int")
    if not 1 <= limit <= HISTORY_PAGE_MAX:
        raise ValueError(f"limit is 1..{HISTORY_PAGE_MAX}")
    return limit


def _only_item(data: dict[str, Any]) -> dict[str, Any]:
    """The single item of a ``{"results": [...]}`` answer."""
    results = data.get("results")
    if not isinstance(results, list) or len(results) != 1 or not isinstance(results[0], dict):
        raise WalletSDKError("the ledger's answer has no single result")
    item: dict[str, Any] = results[0]
    return item


def _transfer_result(item: dict[str, Any], what: str, id: str | None = None) -> TransferResult:
    if item.get("result") != "ok":
        raise OperationRejected(
            str(item.get("result")),
            id=item.get("id"),
            replayed=bool(item.get("replayed")),
            limit=item.get("limit"),
            what=what,
        )
    return TransferResult(
        id or str(item["id"]),
        "ok",
        bool(item.get("replayed")),
        item.get("seq"),
        item.get("timestamp"),
    )


def _qr_amount(scanned: qr.MerchantQR, amount: Money | int | None) -> int:
    if scanned.amount_fen is None:
        if amount is None:
            raise ValueError("a static QR code has no amount: pass amount=")
        return amount_fen(amount)
    if amount is not None and amount_fen(amount) != scanned.amount_fen:
        fixed, given = Money(scanned.amount_fen), Money(amount_fen(amount))
        raise ValueError(f"the QR code fixes the amount at {fixed}, not {given}")
    return amount_fen(scanned.amount_fen, "the QR code's amount")


@dataclass(frozen=True, slots=True)
class _Signed:
    """A payment signed on this device, before it is sent: what its receipt must show."""

    keys: WalletKeys
    id: int
    payee: int
    amount_fen: int
    expires_at_ms: int
    signature: bytes

    def fields(self) -> dict[str, Any]:
        """The signed fields as every payment route takes them (the id and payee may be in the
        path or implied by it, as for an order)."""
        return {
            "payer": self.keys.wallet_id, "amount": self.amount_fen, "currency": "CNY",
            "expires_at_ms": self.expires_at_ms, "key_version": self.keys.key_version,
            "signature": base64.b64encode(self.signature).decode(),
        }  # fmt: skip

    def receipt_call(self) -> Call:
        """Ask for this payment's receipt, as its payer (a signed read)."""
        return Call("GET", f"/v1/receipts/{_uuid(self.id)}", auth="wallet", keys=self.keys)


def _sign(
    keys: WalletKeys, payment_id: int, payee: int, amount: Money | int, expires_in_s: int
) -> _Signed:
    """The payer's signature over one payment, made here: the key never leaves the device."""
    if not isinstance(keys, WalletKeys):
        raise TypeError("pay with the payer's WalletKeys: the payment is signed on the device")
    fen = amount_fen(amount)
    expires_at_ms = _expires_at_ms(payment_id, _expires_in_s(expires_in_s))
    auth = keys.sign_payment(
        payment_id=payment_id, payee=payee, amount_fen=fen, expires_at_ms=expires_at_ms,
        currency="CNY",
    )  # fmt: skip
    return _Signed(keys, payment_id, payee, fen, expires_at_ms, auth.signature)


# --- the operations, written once ----------------------------------------------------------------


class _Operations:
    """Every operation as a generator of calls; the two clients only drive them."""

    def __init__(
        self,
        ledger_public_key: bytes | str | None,
        checkpoints: CheckpointTracker | None,
    ) -> None:
        if (
            checkpoints is not None
            and ledger_public_key is not None
            and public_key_bytes(ledger_public_key) != checkpoints.ledger_public_key
        ):
            raise ValueError("checkpoints= tracks another key than ledger_public_key=")
        if checkpoints is None and ledger_public_key is not None:
            checkpoints = CheckpointTracker(ledger_public_key)
        self._tracker = checkpoints
        self._tracker_lock = threading.Lock()

    @property
    def checkpoints(self) -> CheckpointTracker | None:
        """What this client remembers of the ledger's history (None until the key is known)."""
        return self._tracker

    def _op_tracker(self) -> Op[CheckpointTracker]:
        """The tracker for the pinned ledger key, fetching the key on first need (trust on
        first use: pass ``ledger_public_key=`` to rule that out)."""
        if self._tracker is None:
            data = yield Call("GET", "/v1/public_key")
            try:
                key = public_key_bytes(data.get("public_key", ""))
            except ValueError as exc:
                raise VerificationError(f"GET /v1/public_key: {exc}") from None
            with self._tracker_lock:
                if self._tracker is None:
                    self._tracker = CheckpointTracker(key)
        return self._tracker

    def _op_public_key(self) -> Op[bytes]:
        tracker = yield from self._op_tracker()
        return tracker.ledger_public_key

    def _op_track(self, checkpoint: Checkpoint) -> Op[Checkpoint]:
        """Check ``checkpoint`` for consistency with the last one seen; fetch proofs as needed."""
        tracker = yield from self._op_tracker()
        for _ in range(TRACK_ATTEMPTS_MAX):
            sizes = tracker.proof_sizes(checkpoint)
            proof = None
            if sizes is not None:
                params: dict[str, str | int] = {"first": sizes[0], "second": sizes[1]}
                try:
                    proof = yield Call("GET", "/v1/proofs/consistency", params=params)
                except InvalidRequestError as exc:
                    if exc.code != "tree_size_too_large":
                        raise
                    raise ForkDetected(  # it signed a tree it can no longer prove it has
                        f"the ledger signed a tree of size {sizes[1]} but now has fewer "
                        "entries: its history was rolled back",
                        remembered=tracker.latest(checkpoint.origin),
                        presented=checkpoint,
                    ) from exc
            if tracker.observe(checkpoint, proof):
                return checkpoint
        raise VerificationError("the remembered checkpoint kept moving; could not check this one")

    def _op_verify(self, receipt: Any, transfer_id: int) -> Op[Entry]:
        """Verify a receipt for ``transfer_id`` offline, then track its checkpoint."""
        key = yield from self._op_public_key()
        decoded = check_receipt(receipt, key, transfer_id=transfer_id)
        yield from self._op_track(parse_checkpoint(receipt["checkpoint"], key))
        return decoded

    def _op_latest_checkpoint(self) -> Op[Checkpoint]:
        key = yield from self._op_public_key()
        view = yield Call("GET", "/v1/checkpoints/latest")
        return (yield from self._op_track(parse_checkpoint(view, key)))

    # -- wallets ---------------------------------------------------------------------------------

    def _op_create_wallet(
        self,
        keys: WalletKeys | None,
        kyc: dict[str, str],
        wallet_class: int,
        kind: str,
        linked_bank_account: str | int | uuid.UUID | None,
        reverse_waterfall: bool,
    ) -> Op[WalletKeys]:
        keys = WalletKeys.generate() if keys is None else keys
        body: dict[str, Any] = {
            "id": keys.wallet_id,
            "kind": kind,
            "class": wallet_class,
            "public_key": keys.public_key_b64,
            "kyc": dict(kyc),
            "reverse_waterfall": reverse_waterfall,
        }
        if linked_bank_account is not None:
            body["linked_bank_account"] = _uuid(wallet_id_int(linked_bank_account))
        data = yield Call("POST", "/v1/wallets", json=body, auth="api_key")
        # A repeated id with other details (another key) is refused as wallet_exists.
        _transfer_result(_only_item(data), "wallet")
        return keys

    @staticmethod
    def _read(wallet: WalletRef, path: str, params: dict[str, str | int] | None = None) -> Call:
        """A read as the wallet itself (signed) if given its keys, else with the API key."""
        if isinstance(wallet, WalletKeys):
            return Call("GET", path, params=params, auth="wallet", keys=wallet)
        return Call("GET", path, params=params, auth="api_key")

    def _op_wallet(self, wallet: WalletRef) -> Op[dict[str, Any]]:
        wid = _uuid(wallet_id_int(wallet))
        data: dict[str, Any] = yield self._read(wallet, f"/v1/wallets/{wid}")
        return data

    def _op_balance(self, wallet: WalletRef) -> Op[Money]:
        view = yield from self._op_wallet(wallet)
        return Money(int(view["balance_fen"]))

    def _op_history_page(
        self, wallet: WalletRef, limit: int, starting_after: int | None
    ) -> Op[dict[str, Any]]:
        wid = _uuid(wallet_id_int(wallet))
        params: dict[str, str | int] = {"limit": limit}
        if starting_after is not None:
            params["starting_after"] = starting_after
        page: dict[str, Any] = yield self._read(wallet, f"/v1/wallets/{wid}/entries", params)
        return page

    def _op_top_up(
        self, wallet: WalletRef, amount: Money | int, top_up_id: str | int | uuid.UUID | None
    ) -> Op[TransferResult]:
        wid = _uuid(wallet_id_int(wallet))
        body = {"id": _uuid(_transfer_id(top_up_id)), "amount": amount_fen(amount)}
        data = yield Call("POST", f"/v1/wallets/{wid}/top_ups", json=body, auth="api_key")
        return _transfer_result(_only_item(data), "top-up")

    # -- signed payments -------------------------------------------------------------------------

    def _op_pay(
        self,
        keys: WalletKeys,
        to: WalletRef,
        amount: Money | int,
        metadata: dict[str, str] | None,
        expires_in_s: int,
        payment_id: str | int | uuid.UUID | None,
        kind: str,
        path: str = "/v1/payments",
    ) -> Op[Payment]:
        signed = _sign(keys, _transfer_id(payment_id), wallet_id_int(to), amount, expires_in_s)
        meta = _metadata(metadata)
        body: dict[str, Any] = {
            "id": _uuid(signed.id), "payee": _uuid(signed.payee), **signed.fields(),
            "kind": _kind(kind), "metadata": meta,
        }  # fmt: skip
        return (yield from self._op_send(signed, Call("POST", path, json=body), meta))

    def _op_send(
        self, signed: _Signed, call: Call, metadata: dict[str, str] | None = None
    ) -> Op[Payment]:
        """Send a signed payment; a refusal raises, an acceptance comes back verified."""
        try:
            data = yield call
        except APIConnectionError as exc:
            pid = _uuid(signed.id)
            raise APIConnectionError(
                f"{exc}. Payment {pid} may have been committed: call again with "
                f"payment_id={pid!r} and the same arguments to learn its outcome",
                payment_id=pid,
            ) from exc
        item = _only_item(data) if "results" in data else data  # a batch route, or one item
        if item.get("result") != "ok":
            raise PaymentRejected(
                str(item.get("result")), id=_uuid(signed.id), replayed=bool(item.get("replayed")),
                limit=item.get("limit"),
            )  # fmt: skip
        return (yield from self._op_accepted(signed, item, item.get("receipt"), metadata))

    def _op_accepted(
        self,
        signed: _Signed,
        item: dict[str, Any],
        receipt: Any,
        metadata: dict[str, str] | None = None,
    ) -> Op[Payment]:
        """The accepted payment, once its receipt verifies and is of exactly what was signed."""
        if receipt is None:  # a replay, or a route that does not attach one: ask for it
            answer = yield signed.receipt_call()
            receipt = answer.get("receipt")
        decoded = yield from self._op_verify(receipt, signed.id)
        if not (
            isinstance(decoded, TransferEntry)
            and (decoded.debit_account_id, decoded.credit_account_id, decoded.amount)
            == (signed.keys.wallet_id_int, signed.payee, signed.amount_fen)
        ):
            raise ReceiptVerificationError("the receipt's entry is not the payment that was signed")
        seq = item.get("seq", receipt["leaf_index"])  # it verified, so it has one
        order = item.get("payment_order")
        return Payment(
            _uuid(signed.id), "ok", bool(item.get("replayed")), seq,
            item.get("timestamp", decoded.timestamp), signed.keys.wallet_id, _uuid(signed.payee),
            Money(signed.amount_fen), receipt, dict(metadata or {}), item.get("limit"),
            payment_order=order if isinstance(order, dict) else None,
        )  # fmt: skip

    def _op_pay_qr(
        self,
        keys: WalletKeys,
        payload: str,
        amount: Money | int | None,
        metadata: dict[str, str] | None,
        expires_in_s: int,
        payment_id: str | int | uuid.UUID | None,
    ) -> Op[Payment]:
        scanned = qr.parse(payload)
        payee, fen = qr.ecny_payee(scanned), _qr_amount(scanned, amount)
        order_id = qr.ecny_order_id(scanned)
        if order_id is not None:
            if metadata:
                raise ValueError("an order's payment carries no metadata: its id is the order's")
            if payment_id is not None and wallet_id_int(payment_id) != order_id:
                raise ValueError(f"an order's payment id is the order id {_uuid(order_id)}")
            payee_id = wallet_id_int(payee)
            return (yield from self._op_pay_order(keys, order_id, payee_id, fen, expires_in_s))
        meta = _metadata(metadata)
        order = scanned.reference_label
        if order is not None:
            if meta.get("order", order) != order:
                raise ValueError(f"metadata 'order' differs from the QR code's reference {order!r}")
            meta["order"] = order
        return (
            yield from self._op_pay(keys, payee, fen, meta, expires_in_s, payment_id, "payment")
        )

    def _op_pay_order(
        self, keys: WalletKeys, order_id: int, payee: int, fen: int, expires_in_s: int
    ) -> Op[Payment]:
        """Pay a merchant's payment order: a payment whose id is the order id, so however many
        times (or wallets) try, the order is paid once."""
        signed = _sign(keys, order_id, payee, fen, expires_in_s)
        call = Call("POST", f"/v1/payment_orders/{_uuid(order_id)}/pay", json=signed.fields())
        try:
            return (yield from self._op_send(signed, call))
        except InvalidRequestError as exc:
            if exc.code != "order_already_paid":
                raise
            refused = exc
        # Paid already. By this wallet, if an earlier call's answer was lost: that one was signed
        # with another expiry (an order id carries no time to derive it from), so the ledger
        # calls this a conflict, not a replay. The wallet's receipt for the order id settles it.
        try:
            answer = yield signed.receipt_call()
        except NotFoundError:  # not a payment of this wallet: someone else paid
            raise refused from None
        replayed = {"result": "ok", "replayed": True}
        return (yield from self._op_accepted(signed, replayed, answer.get("receipt")))

    def _op_redeem(
        self,
        keys: WalletKeys,
        amount: Money | int,
        payment_id: str | int | uuid.UUID | None,
        expires_in_s: int,
    ) -> Op[Payment]:
        view = yield from self._op_wallet(keys)
        float_account = view.get("operator_float_account")
        path = f"/v1/wallets/{keys.wallet_id}/redemptions"
        return (
            yield from self._op_pay(
                keys, str(float_account), amount, None, expires_in_s, payment_id, "payment", path
            )
        )

    def _op_receipt(
        self, wallet: WalletRef, transfer_id: str | int | uuid.UUID, tree_size: int | None
    ) -> Op[dict[str, Any]]:
        tid = wallet_id_int(transfer_id)
        params: dict[str, str | int] | None = None
        if tree_size is not None:
            params = {"tree_size": tree_size}
        answer = yield self._read(wallet, f"/v1/receipts/{_uuid(tid)}", params)
        receipt = answer.get("receipt")
        yield from self._op_verify(receipt, tid)
        assert isinstance(receipt, dict)  # it verified, so it is one
        return receipt

    # -- sub-wallets -----------------------------------------------------------------------------

    def _op_create_sub_wallet(
        self,
        parent: WalletKeys,
        bound_payee: WalletRef,
        limits: dict[str, Money | int],
        keys: WalletKeys | None,
    ) -> Op[WalletKeys]:
        names = ("balance_cap", "single", "daily", "annual")
        if set(limits) != set(names):
            raise ValueError(f"limits has exactly the keys {', '.join(names)}")
        keys = WalletKeys.generate() if keys is None else keys
        body = {
            "id": keys.wallet_id,
            "public_key": keys.public_key_b64,
            "bound_payee": _uuid(wallet_id_int(bound_payee)),
            "limits": {name: amount_fen(limits[name], f"limits[{name!r}]") for name in names},
        }
        path = f"/v1/wallets/{parent.wallet_id}/sub_wallets"
        data = yield Call("POST", path, json=body, auth="wallet", keys=parent)
        _transfer_result(_only_item(data), "sub-wallet")
        return keys

    def _op_close_sub_wallet(
        self,
        parent: WalletKeys,
        sub_wallet: WalletRef,
        reason: str,
        close_id: str | int | uuid.UUID | None,
    ) -> Op[TransferResult]:
        tid = _uuid(_transfer_id(close_id))
        path = f"/v1/wallets/{_uuid(wallet_id_int(sub_wallet))}/close"
        body = {"id": tid, "reason": reason}
        data = yield Call("POST", path, json=body, auth="wallet", keys=parent)
        return _transfer_result(_only_item(data), "sub-wallet close", id=tid)


# --- the drivers ---------------------------------------------------------------------------------


class Client(_Operations):
    """The ledger's API for a wallet app, blocking. One per app; thread-safe; ``with`` closes it.

    ``base_url`` defaults to ``http_client``'s own base URL if you pass one, else
    ``DEFAULT_BASE_URL``. ``api_key`` is an operator's key, needed only for operator work
    (opening wallets, top-ups); a wallet's own requests are signed with its keys instead.
    ``ledger_public_key`` (raw or base64) pins the key receipts must be signed with; without
    it the key is fetched from ``GET /v1/public_key`` on first need and pinned from then on.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        ledger_public_key: bytes | str | None = None,
        http_client: httpx.Client | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_retries: int = 3,
        checkpoints: CheckpointTracker | None = None,
    ) -> None:
        super().__init__(ledger_public_key, checkpoints)
        self._owns_http = http_client is None
        if http_client is None:
            http_client = httpx.Client(base_url=base_url or DEFAULT_BASE_URL, timeout=timeout_s)
            base_url = ""
        self._transport = SyncTransport(
            http_client, base_url=base_url or "", api_key=api_key, timeout_s=timeout_s,
            retry=RetryPolicy(max_retries),
        )  # fmt: skip
        self._http = http_client

    def _run(self, op: Op[T]) -> T:
        """Drive an operation: send each call it yields, send back the answer (or throw the
        error into it), until it returns."""
        try:
            call = next(op)
            while True:
                try:
                    answer = self._transport.send(call)
                except WalletSDKError as exc:
                    call = op.throw(exc)
                else:
                    call = op.send(answer)
        except StopIteration as done:
            return done.value
        finally:
            op.close()

    def close(self) -> None:
        """Close the HTTP connections, if this client opened them."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def public_key(self) -> bytes:
        """The ledger's checkpoint-signing key, as pinned (fetched once if not given)."""
        return self._run(self._op_public_key())

    def latest_checkpoint(self) -> Checkpoint:
        """The ledger's latest signed checkpoint, verified and checked for consistency."""
        return self._run(self._op_latest_checkpoint())

    def create_wallet(
        self,
        *,
        kyc: dict[str, str],
        wallet_class: int,
        kind: Literal["personal", "merchant"] = "personal",
        linked_bank_account: str | int | uuid.UUID | None = None,
        reverse_waterfall: bool = False,
        keys: WalletKeys | None = None,
    ) -> WalletKeys:
        """Open a wallet (operator key). The key pair is made here, or pass ``keys`` you have
        already saved in a :class:`~wallet_sdk.Keystore` (so a crash cannot lose them); only
        the public key is sent. Raises :class:`OperationRejected` unless the ledger says ok."""
        return self._run(
            self._op_create_wallet(
                keys, kyc, wallet_class, kind, linked_bank_account, reverse_waterfall
            )
        )

    def wallet(self, wallet: WalletRef) -> dict[str, Any]:
        """The wallet as the ledger shows it (class, limits, spent today, balance_fen...):
        signed by the wallet if given its keys, else read with the operator key."""
        return self._run(self._op_wallet(wallet))

    def balance(self, wallet: WalletRef) -> Money:
        """The wallet's posted balance."""
        return self._run(self._op_balance(wallet))

    def history(self, wallet: WalletRef, *, limit: int = 20) -> Iterator[dict[str, Any]]:
        """Every entry touching the wallet, newest first, fetched ``limit`` per page as you
        iterate (``{"seq", "kind", "entry", "body"}``)."""
        return self._pages(wallet, _page_limit(limit))

    def _pages(self, wallet: WalletRef, limit: int) -> Iterator[dict[str, Any]]:
        after: int | None = None
        while True:
            page = self._run(self._op_history_page(wallet, limit, after))
            data = page.get("data") or []
            yield from data
            if not page.get("has_more") or not data:
                return
            after = int(data[-1]["seq"])

    def pay(
        self,
        keys: WalletKeys,
        to: WalletRef,
        amount: Money | int,
        *,
        metadata: dict[str, str] | None = None,
        expires_in_s: int = 300,
        payment_id: str | int | uuid.UUID | None = None,
        kind: PaymentKind = "payment",
    ) -> Payment:
        """Sign a payment here and send it; return it with its receipt verified.

        Raises :class:`PaymentRejected` (``code``, ``limit``) when the ledger refuses it,
        :class:`ReceiptVerificationError` / :class:`ForkDetected` when its evidence does not
        check out, and :class:`APIConnectionError` when no answer came (see the module doc:
        call again with the same ``payment_id``)."""
        return self._run(self._op_pay(keys, to, amount, metadata, expires_in_s, payment_id, kind))

    def pay_qr(
        self,
        keys: WalletKeys,
        payload: str,
        *,
        amount: Money | int | None = None,
        metadata: dict[str, str] | None = None,
        expires_in_s: int = 300,
        payment_id: str | int | uuid.UUID | None = None,
    ) -> Payment:
        """Pay a scanned merchant QR code (EMVCo; payee per :data:`ECNY_QR_GUID`). A dynamic
        code fixes the amount; a static one needs ``amount``.

        A merchant API payment order (an e-CNY code whose 62/05 is the order's 16-byte id as
        22 characters of base64url) is paid as that order: the payment's id is the order id,
        sent to ``POST /v1/payment_orders/{id}/pay``, so the order is paid once however often
        anyone tries, and calling again after :class:`APIConnectionError` gives the first
        outcome (``replayed=True``). A paid order raises :class:`InvalidRequestError` with
        ``code`` ``order_already_paid`` (409; ``order_not_payable`` if canceled or expired;
        ``amount_mismatch``, 422), an unknown one :class:`NotFoundError`
        (``payment_order_not_found``). An order's payment takes no ``metadata``; ``payment_id``,
        if given, must be the order id. ``Payment.payment_order`` is the order's view.

        Any other reference label (62/05) travels as ``metadata["order"]`` of a payment to the
        merchant's wallet."""
        return self._run(self._op_pay_qr(keys, payload, amount, metadata, expires_in_s, payment_id))

    def top_up(
        self,
        wallet: WalletRef,
        amount: Money | int,
        *,
        top_up_id: str | int | uuid.UUID | None = None,
    ) -> TransferResult:
        """Move bank money from the wallet's linked bank account into it (operator key)."""
        return self._run(self._op_top_up(wallet, amount, top_up_id))

    def redeem(
        self,
        keys: WalletKeys,
        amount: Money | int,
        *,
        payment_id: str | int | uuid.UUID | None = None,
        expires_in_s: int = 300,
    ) -> Payment:
        """e-CNY back to the linked bank account: a payment signed by the wallet to its
        operator's float; returned with its receipt verified."""
        return self._run(self._op_redeem(keys, amount, payment_id, expires_in_s))

    def receipt(
        self,
        wallet: WalletRef,
        transfer_id: str | int | uuid.UUID,
        *,
        tree_size: int | None = None,
    ) -> dict[str, Any]:
        """A verified receipt for a transfer the wallet paid or received (signed read)."""
        return self._run(self._op_receipt(wallet, transfer_id, tree_size))

    def create_sub_wallet(
        self,
        parent_keys: WalletKeys,
        *,
        bound_payee: WalletRef,
        limits: dict[str, Money | int],
        fund: Money | int | None = None,
        keys: WalletKeys | None = None,
    ) -> WalletKeys:
        """Open a sub-wallet (signed by the parent) that may pay only ``bound_payee``, with
        ``limits`` = ``{"balance_cap", "single", "daily", "annual"}`` (each at most the
        parent's); ``fund`` moves that much into it from the parent at once (a signed
        ``sub_wallet_fund`` payment; if the ledger refuses it, the sub-wallet stays open, empty,
        and :class:`PaymentRejected` says why)."""
        sub = self._run(self._op_create_sub_wallet(parent_keys, bound_payee, limits, keys))
        if fund is not None:
            self.pay(parent_keys, sub, fund, kind="sub_wallet_fund")
        return sub

    def close_sub_wallet(
        self,
        parent_keys: WalletKeys,
        sub_wallet: WalletRef,
        *,
        reason: str = "",
        close_id: str | int | uuid.UUID | None = None,
    ) -> TransferResult:
        """Close a sub-wallet (signed by its parent); its balance returns to the parent."""
        return self._run(self._op_close_sub_wallet(parent_keys, sub_wallet, reason, close_id))


class AsyncClient(_Operations):
    """The async twin of :class:`Client`: the same methods, awaited; ``history`` is an async
    iterator. Pass ``http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app))`` to
    talk to an app in process."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        ledger_public_key: bytes | str | None = None,
        http_client: httpx.AsyncClient | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_retries: int = 3,
        checkpoints: CheckpointTracker | None = None,
    ) -> None:
        super().__init__(ledger_public_key, checkpoints)
        self._owns_http = http_client is None
        if http_client is None:
            http_client = httpx.AsyncClient(
                base_url=base_url or DEFAULT_BASE_URL, timeout=timeout_s
            )
            base_url = ""
        self._transport = AsyncTransport(
            http_client, base_url=base_url or "", api_key=api_key, timeout_s=timeout_s,
            retry=RetryPolicy(max_retries),
        )  # fmt: skip
        self._http = http_client

    async def _run(self, op: Op[T]) -> T:
        try:
            call = next(op)
            while True:
                try:
                    answer = await self._transport.send(call)
                except WalletSDKError as exc:
                    call = op.throw(exc)
                else:
                    call = op.send(answer)
        except StopIteration as done:
            return done.value
        finally:
            op.close()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def public_key(self) -> bytes:
        return await self._run(self._op_public_key())

    async def latest_checkpoint(self) -> Checkpoint:
        return await self._run(self._op_latest_checkpoint())

    async def create_wallet(
        self,
        *,
        kyc: dict[str, str],
        wallet_class: int,
        kind: Literal["personal", "merchant"] = "personal",
        linked_bank_account: str | int | uuid.UUID | None = None,
        reverse_waterfall: bool = False,
        keys: WalletKeys | None = None,
    ) -> WalletKeys:
        return await self._run(
            self._op_create_wallet(
                keys, kyc, wallet_class, kind, linked_bank_account, reverse_waterfall
            )
        )

    async def wallet(self, wallet: WalletRef) -> dict[str, Any]:
        return await self._run(self._op_wallet(wallet))

    async def balance(self, wallet: WalletRef) -> Money:
        return await self._run(self._op_balance(wallet))

    def history(self, wallet: WalletRef, *, limit: int = 20) -> AsyncIterator[dict[str, Any]]:
        """``async for entry in client.history(keys)``: newest first, paged as you go."""
        return self._pages(wallet, _page_limit(limit))

    async def _pages(self, wallet: WalletRef, limit: int) -> AsyncIterator[dict[str, Any]]:
        after: int | None = None
        while True:
            page = await self._run(self._op_history_page(wallet, limit, after))
            data = page.get("data") or []
            for item in data:
                yield item
            if not page.get("has_more") or not data:
                return
            after = int(data[-1]["seq"])

    async def pay(
        self,
        keys: WalletKeys,
        to: WalletRef,
        amount: Money | int,
        *,
        metadata: dict[str, str] | None = None,
        expires_in_s: int = 300,
        payment_id: str | int | uuid.UUID | None = None,
        kind: PaymentKind = "payment",
    ) -> Payment:
        return await self._run(
            self._op_pay(keys, to, amount, metadata, expires_in_s, payment_id, kind)
        )

    async def pay_qr(
        self,
        keys: WalletKeys,
        payload: str,
        *,
        amount: Money | int | None = None,
        metadata: dict[str, str] | None = None,
        expires_in_s: int = 300,
        payment_id: str | int | uuid.UUID | None = None,
    ) -> Payment:
        return await self._run(
            self._op_pay_qr(keys, payload, amount, metadata, expires_in_s, payment_id)
        )

    async def top_up(
        self,
        wallet: WalletRef,
        amount: Money | int,
        *,
        top_up_id: str | int | uuid.UUID | None = None,
    ) -> TransferResult:
        return await self._run(self._op_top_up(wallet, amount, top_up_id))

    async def redeem(
        self,
        keys: WalletKeys,
        amount: Money | int,
        *,
        payment_id: str | int | uuid.UUID | None = None,
        expires_in_s: int = 300,
    ) -> Payment:
        return await self._run(self._op_redeem(keys, amount, payment_id, expires_in_s))

    async def receipt(
        self,
        wallet: WalletRef,
        transfer_id: str | int | uuid.UUID,
        *,
        tree_size: int | None = None,
    ) -> dict[str, Any]:
        return await self._run(self._op_receipt(wallet, transfer_id, tree_size))

    async def create_sub_wallet(
        self,
        parent_keys: WalletKeys,
        *,
        bound_payee: WalletRef,
        limits: dict[str, Money | int],
        fund: Money | int | None = None,
        keys: WalletKeys | None = None,
    ) -> WalletKeys:
        sub = await self._run(self._op_create_sub_wallet(parent_keys, bound_payee, limits, keys))
        if fund is not None:
            await self.pay(parent_keys, sub, fund, kind="sub_wallet_fund")
        return sub

    async def close_sub_wallet(
        self,
        parent_keys: WalletKeys,
        sub_wallet: WalletRef,
        *,
        reason: str = "",
        close_id: str | int | uuid.UUID | None = None,
    ) -> TransferResult:
        return await self._run(self._op_close_sub_wallet(parent_keys, sub_wallet, reason, close_id))

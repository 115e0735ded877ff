"""Payment orders, refunds and merchants on top of the ledger (in process).

The ledger's writer decides what happens to money; this module decides what to ask it and
records what it decided:

* An order's id is its payment's transfer id (flag ``attempt``: a failed try leaves the order
  payable). Paying, cancelling and expiring all race in the writer: whichever is sequenced first
  wins, and the others are refused (``order_already_paid``, ``order_not_payable``).
  Cancel and expiry are tombstones on that id.
* Refunds draw on a per-order allowance account that may not go negative, linked with the
  refund transfer, so the total refunded never exceeds the amount paid, under any concurrency.
* Each outcome's transition row and webhook event are attachments: the committer inserts them in
  the same transaction as the ledger change (the transactional outbox).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.signing import SigningKey
from sqlalchemy import Table, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col
from starlette.concurrency import run_in_threadpool

from ledger import signing
from ledger.domain import (
    RESULT_PLACEHOLDER,
    Account,
    AccountFlags,
    Attachment,
    CancelTransferId,
    Result,
    Transfer,
    TransferFlags,
)
from ledger.engine import OP_CANCEL_IDS, OP_CREATE_ACCOUNTS, OP_CREATE_TRANSFERS, OpResult
from ledger.journal import id_bytes
from ledger.service import Ledger
from ledger.store.database import for_writes
from ledger.wallets import codes
from ledger.wallets.service import SignedPayment, WalletError, Wallets, system_id
from merchant_api.egress import EgressPolicy
from merchant_api.keys import MerchantContext, issue_key
from merchant_api.models import (
    Merchant,
    OrderTransition,
    PaymentOrder,
    Refund,
    RefundTransition,
    newest_first,
)
from merchant_api.schemas import OrderPayment
from wallet_sdk import qr

CNY: Final = 156
NAMESPACE: Final = uuid.UUID("0b3f7c2e-5d14-4e88-a3c9-6f0a1d2e3b4c")
ORDER_TTL_DEFAULT_S: Final = 15 * 60
ORDER_TTL_MAX_S: Final = 24 * 3600
ECNY_QR_GUID: Final = "cn.ecny.ledger"
"""Merchant account information (EMVCo tag 26): subfield 00 this GUID, 01 the merchant's
wallet id; for an order, additional data 62/05 holds the order id (22 characters of base64url)."""
SIGNATURE_TTL_MS: Final = 5 * 60 * 1000
REFUND_SIGNATURE_TTL_MS: Final = 24 * 3600 * 1000
"""How long after it was made a refund may still be submitted (by a retry of its request)."""
_WITH_OUTCOME: Final = (
    select(PaymentOrder, OrderTransition)
    .join(OrderTransition, col(OrderTransition.order_id) == col(PaymentOrder.id), isouter=True)
    .where(col(PaymentOrder.id) == bindparam("order_id"))
)
"""An order and its outcome, if any (``MerchantService._with_outcome``)."""
_WITH_OUTCOME_AND_MERCHANT: Final = (
    select(PaymentOrder, OrderTransition, Merchant)
    .join(Merchant, col(Merchant.id) == col(PaymentOrder.merchant_id))
    .join(OrderTransition, col(OrderTransition.order_id) == col(PaymentOrder.id), isouter=True)
    .where(col(PaymentOrder.id) == bindparam("order_id"))
)
TRANSITION: Final = ("order_id", "status", "at_ms", "payer", "method")
REFUND_TRANSITION: Final = ("refund_id", "status", "at_ms", "failure_code")
EVENT: Final = (
    "id",
    "merchant_id",
    "livemode",
    "type",
    "object_id",
    "object_version",
    "payload",
    "created_at_ms",
)


ORDERS: Final[Table] = PaymentOrder.__table__  # type: ignore[attr-defined]


class MerchantError(Exception):
    """A request refused before (or instead of) reaching the ledger: status, code, message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.param = status, code, param
        self.headers = headers or {}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def uuid_of(raw: bytes | int) -> str:
    return str(uuid.UUID(bytes=raw) if isinstance(raw, bytes) else uuid.UUID(int=raw))


def order_reference(order_id: int) -> str:
    """The order id as EMVCo reference label (62/05 allows 25 characters): base64url."""
    return base64.urlsafe_b64encode(order_id.to_bytes(16, "big")).rstrip(b"=").decode()


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


@dataclass
class Onboarded:
    merchant: Merchant
    test_key: str
    live_key: str


@dataclass(frozen=True)
class Payment:
    """An order's payment as the ledger answered it: the order, the transfer, the ledger's
    result and ``paid``, the order's view as that transfer commits it (its webhook event's
    object). ``paid`` is the order as it stands only when the transfer was accepted just now
    (``paid_now``); a refusal or a replay says nothing of what happened to it since."""

    order: PaymentOrder
    transfer: Transfer
    result: OpResult
    paid: dict[str, Any]

    def paid_now(self) -> bool:
        return self.result.codes[0] == Result.OK and 0 not in self.result.replayed


class MerchantService:
    def __init__(
        self,
        ledger: Ledger,
        wallets: Wallets,
        secret_key: bytes,
        *,
        clock_ms: Callable[[], int] = now_ms,
        egress: EgressPolicy | None = None,
    ) -> None:
        self.ledger = ledger
        self.wallets = wallets
        self.engine = ledger.db
        self.writes = for_writes(self.engine)
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        self._insert_order = (
            dialect.insert(ORDERS)
            .on_conflict_do_nothing(index_elements=["merchant_id", "livemode", "out_trade_no"])
            .returning(ORDERS.c.id)
        )  # a row when inserted (psycopg's rowcount here is -1)
        self._aead = AESGCM(secret_key)
        self.clock_ms = clock_ms
        self.egress = egress if egress is not None else EgressPolicy.from_env()
        """Where webhooks may be delivered (``LEDGER_WEBHOOK_ALLOW_NETWORKS``)."""

    # -- merchants ---------------------------------------------------------------------------------

    def onboard(
        self,
        operator: str,
        *,
        name: str,
        city: str,
        mcc: str,
        kyc: dict[str, str],
        linked_bank: int,
        wallet_class: int = 2,
        settlement_schedule: str = "manual",
    ) -> Onboarded:
        """A merchant: its merchant wallet at ``operator`` (its key held here, sealed), and a
        test and a live API key, shown once."""
        key = SigningKey.generate()
        wallet_id = uuid.uuid4().int
        try:
            opened = self.wallets.open_wallets(
                operator,
                [
                    self.wallets.wallet_to_open(
                        operator,
                        wallet_id,
                        kind="merchant",
                        klass=wallet_class,
                        public_key=bytes(key.verify_key),
                        kyc=kyc,
                        linked_bank=linked_bank,
                    )
                ],
            ).result()
        except WalletError as exc:
            raise MerchantError(422, exc.code, str(exc), exc.param) from None
        if opened.codes != [0]:
            raise MerchantError(422, Result(opened.codes[0]).name.lower(), "wallet refused")
        self.wallets.kyc.put(wallet_id, operator, kyc)
        merchant_id = "mch_" + secrets.token_hex(12)
        nonce = os.urandom(12)
        merchant = Merchant(
            id=merchant_id,
            name=name,
            city=city,
            mcc=mcc,
            operator=operator,
            wallet_id=id_bytes(wallet_id),
            key_nonce=nonce,
            sealed_key=self._aead.encrypt(nonce, bytes(key), merchant_id.encode()),
            settlement_schedule=settlement_schedule,
            settled_day=0,
            created_at_ms=now_ms(),
        )
        with Session(self.engine) as session:
            session.add(merchant)
            session.commit()
            session.refresh(merchant)
        return Onboarded(
            merchant,
            issue_key(self.engine, merchant_id, False),
            issue_key(self.engine, merchant_id, True),
        )

    def signing_key(self, merchant: Merchant) -> SigningKey:
        seed = self._aead.decrypt(merchant.key_nonce, merchant.sealed_key, merchant.id.encode())
        return SigningKey(seed)

    @staticmethod
    def wallet_of(merchant: Merchant) -> int:
        return int.from_bytes(merchant.wallet_id, "big")

    def static_qr(self, merchant: Merchant) -> str:
        """The merchant's own QR code: the payer enters the amount."""
        return self._qr(merchant, None, None)

    def _qr(self, merchant: Merchant, amount: int | None, order_id: int | None) -> str:
        account = {"26": {"00": ECNY_QR_GUID, "01": uuid_of(merchant.wallet_id)}}
        extra = {"05": order_reference(order_id)} if order_id is not None else None
        return qr.encode(
            merchant_name=merchant.name,
            merchant_city=merchant.city,
            currency="156",
            country_code="CN",
            amount_fen=amount,
            point_of_initiation="dynamic" if order_id is not None else "static",
            merchant_account=account,
            additional_data=extra,
            merchant_category_code=merchant.mcc,
        )

    # -- orders ------------------------------------------------------------------------------------

    def create_order(
        self, ctx: MerchantContext, params: dict[str, Any]
    ) -> tuple[PaymentOrder, bool]:
        """A new order, or the open one already made with this out_trade_no and the same
        parameters (409 ``out_trade_no_conflict`` if they differ)."""
        now = self.clock_ms()
        ttl_s = params.get("expires_at", now // 1000 + ORDER_TTL_DEFAULT_S) - now // 1000
        if not 0 < ttl_s <= ORDER_TTL_MAX_S:
            raise MerchantError(
                422,
                "invalid_expires_at",
                "expires_at must be in the future and within 24 hours",
                "expires_at",
            )
        digest = params_hash({k: v for k, v in params.items() if k != "out_trade_no"})
        order = PaymentOrder(
            id=id_bytes(uuid.uuid4().int),
            merchant_id=ctx.merchant_id,
            livemode=ctx.mode,
            amount=params["amount"],
            currency=params.get("currency", "CNY"),
            out_trade_no=params["out_trade_no"],
            description=params.get("description", ""),
            expires_at_ms=now + ttl_s * 1000,
            metadata_json=json.dumps(params.get("metadata", {}), sort_keys=True),
            params_hash=digest,
            created_at_ms=now,
        )
        # One statement, not the ORM's read and unit of work: the out_trade_no's unique index
        # decides between a new order and the one already made (also one made concurrently:
        # PostgreSQL waits for that transaction, SQLite's write lock serialises them).
        with self.writes.begin() as conn:
            values = {c.name: getattr(order, c.name) for c in ORDERS.columns}
            if conn.execute(self._insert_order, values).first() is not None:
                return order, True
            row = conn.execute(
                select(ORDERS).where(
                    ORDERS.c.merchant_id == ctx.merchant_id,
                    ORDERS.c.livemode == ctx.mode,
                    ORDERS.c.out_trade_no == params["out_trade_no"],
                )
            ).one()
        existing = PaymentOrder(**row._mapping)
        if existing.params_hash != digest:
            raise MerchantError(
                409,
                "out_trade_no_conflict",
                "an order with this out_trade_no exists with other parameters",
                "out_trade_no",
            )
        return existing, False

    def order(self, ctx: MerchantContext | None, order_id: int) -> PaymentOrder:
        """The order; with a context, only the caller's (in its mode): 404 otherwise."""
        with Session(self.engine) as session:
            return self._order_in(session, ctx, order_id)

    def _order_to_pay(
        self, ctx: MerchantContext | None, order_id: int
    ) -> tuple[PaymentOrder, Merchant]:
        """The order (as ``order``) and its merchant, read in one session; 409 unless it can
        still be paid. A paid order goes on to the ledger, which answers a retried payment with
        its first result and anyone else with a conflict."""
        with Session(self.engine) as session:  # one query, not three: the busiest route
            order, transition, merchant = self._with_outcome(session, ctx, order_id, merchant=True)
        status = self.status(order, transition)
        if status in ("canceled", "expired"):
            raise MerchantError(409, "order_not_payable", f"the order is {status}", "payment_order")
        return order, merchant

    @staticmethod
    def _with_outcome(
        session: Session, ctx: MerchantContext | None, order_id: int, merchant: bool = False
    ) -> Any:
        """The order (as ``order``) and its outcome (or None), and with ``merchant`` its
        merchant, in one query (built once: building it took a third of the time of running
        it)."""
        query = _WITH_OUTCOME_AND_MERCHANT if merchant else _WITH_OUTCOME
        row = session.execute(query, {"order_id": id_bytes(order_id)}).first()
        MerchantService._callers(row[0] if row else None, ctx)
        return row

    @staticmethod
    def _order_in(session: Session, ctx: MerchantContext | None, order_id: int) -> PaymentOrder:
        return MerchantService._callers(session.get(PaymentOrder, id_bytes(order_id)), ctx)

    @staticmethod
    def _callers(order: PaymentOrder | None, ctx: MerchantContext | None) -> PaymentOrder:
        """The order; 404 unless it exists and, with a context, is the caller's in its mode."""
        if order is None or (ctx is not None and order.merchant_id != ctx.merchant_id):
            raise MerchantError(
                404, "payment_order_not_found", "no such payment order", "payment_order"
            )
        if ctx is not None and order.livemode != ctx.mode:
            raise MerchantError(
                404, "livemode_mismatch", "this order was made in the other mode (test vs live)"
            )
        return order

    def transition(self, order: PaymentOrder) -> OrderTransition | None:
        with Session(self.engine) as session:
            return session.get(OrderTransition, order.id)

    def refunds_of(self, order: PaymentOrder) -> list[tuple[Refund, RefundTransition | None]]:
        with Session(self.engine) as session:
            return self._refunds_in(session, [order.id])

    @staticmethod
    def _refunds_in(
        session: Session, order_ids: Sequence[bytes]
    ) -> list[tuple[Refund, RefundTransition | None]]:
        """The refunds of the orders ``order_ids``, oldest first, each with its outcome."""
        rows = session.execute(
            select(Refund, RefundTransition)
            .join(
                RefundTransition,
                col(RefundTransition.refund_id) == col(Refund.id),
                isouter=True,
            )
            .where(col(Refund.order_id).in_(order_ids))
            .order_by(col(Refund.created_at_ms))
        ).all()
        return [(r[0], r[1]) for r in rows]

    def status(self, order: PaymentOrder, transition: OrderTransition | None) -> str:
        if transition is not None:
            return transition.status
        return "expired" if self.clock_ms() >= order.expires_at_ms else "requires_payment"

    def view(
        self,
        order: PaymentOrder,
        *,
        predicted: str | None = None,
        merchant: Merchant | None = None,
    ) -> dict[str, Any]:
        """The order as the API and webhook events show it. ``predicted`` renders the status an
        event will report once the change it travels with is committed (its outcome and refunds
        are then not read). What it reads is read in one session (see ``views``)."""
        if predicted and merchant is not None:
            return self._render(order, merchant, None, [], predicted)
        return self.views([order], predicted=predicted, merchant=merchant)[0]

    def new_order_view(self, order: PaymentOrder, merchant: Merchant) -> dict[str, Any]:
        """``view`` of an order just made (no outcome, no refunds): nothing to read."""
        return self._render(order, merchant, None, [], None)

    def views(
        self,
        orders: Sequence[PaymentOrder],
        *,
        predicted: str | None = None,
        merchant: Merchant | None = None,
    ) -> list[dict[str, Any]]:
        """``view`` of each order, in order: their merchants (unless given), outcomes and refunds
        are read in one session, a query each for all the orders (a page of 20 read one order
        at a time took 60 queries in 20 sessions)."""
        with Session(self.engine) as session:
            return self._views_in(session, orders, predicted, merchant)

    def order_view(self, ctx: MerchantContext, order_id: int) -> dict[str, Any]:
        """The caller's order (as ``order``) and its ``view``, read in one session."""
        with Session(self.engine) as session:
            order, transition = self._with_outcome(session, ctx, order_id)
            refunds = self._refunds_in(session, [order.id])
        return self._render(order, ctx.merchant, transition, refunds, None)

    def _views_in(
        self,
        session: Session,
        orders: Sequence[PaymentOrder],
        predicted: str | None = None,
        merchant: Merchant | None = None,
    ) -> list[dict[str, Any]]:
        if not orders:
            return []
        merchants = {} if merchant is None else {merchant.id: merchant}
        wanted = {o.merchant_id for o in orders} - set(merchants)
        if wanted:
            found = session.execute(select(Merchant).where(col(Merchant.id).in_(wanted)))
            merchants.update((m.id, m) for m in found.scalars())
        transitions: dict[bytes, OrderTransition] = {}
        refunds: dict[bytes, list[tuple[Refund, RefundTransition | None]]] = {}
        if not predicted:
            ids = [o.id for o in orders]
            found_t = session.execute(
                select(OrderTransition).where(col(OrderTransition.order_id).in_(ids))
            )
            transitions = {t.order_id: t for t in found_t.scalars()}
            for refund, outcome in self._refunds_in(session, ids):
                refunds.setdefault(refund.order_id, []).append((refund, outcome))
        return [
            self._render(
                o, merchants[o.merchant_id], transitions.get(o.id), refunds.get(o.id, []), predicted
            )
            for o in orders
        ]

    def _render(
        self,
        order: PaymentOrder,
        merchant: Merchant,
        transition: OrderTransition | None,
        refunds: list[tuple[Refund, RefundTransition | None]],
        predicted: str | None,
    ) -> dict[str, Any]:
        refunded = sum(r.amount for r, t in refunds if t is not None and t.status == "succeeded")
        finals = sum(1 for _, t in refunds if t is not None)
        status = predicted or self.status(order, transition)
        order_id = int.from_bytes(order.id, "big")
        return {
            "id": uuid_of(order.id),
            "object": "payment_order",
            "livemode": bool(order.livemode),
            "amount": order.amount,
            "currency": order.currency,
            "out_trade_no": order.out_trade_no,
            "description": order.description,
            "status": status,
            "amount_refunded": refunded,
            "created": order.created_at_ms // 1000,
            "expires_at": order.expires_at_ms // 1000,
            "metadata": json.loads(order.metadata_json),
            "payer": uuid_of(transition.payer) if transition and transition.payer else None,
            "paid_with": transition.method if transition else None,
            "qr_code": self._qr(merchant, order.amount, order_id),
            "pay_to": uuid_of(merchant.wallet_id),
            "version": 1 + (transition is not None or predicted is not None) + finals,
        }

    def merchant(self, merchant_id: str) -> Merchant:
        with Session(self.engine) as session:
            merchant = session.get(Merchant, merchant_id)
        assert merchant is not None
        return merchant

    def list_orders(
        self,
        ctx: MerchantContext,
        *,
        limit: int,
        starting_after: int | None,
        created_gte: int | None,
        created_lte: int | None,
    ) -> tuple[list[PaymentOrder], bool]:
        query = select(PaymentOrder).where(
            col(PaymentOrder.merchant_id) == ctx.merchant_id, col(PaymentOrder.livemode) == ctx.mode
        )
        cursor = None if starting_after is None else self.order(ctx, starting_after)
        query = newest_first(query, PaymentOrder, cursor)
        if created_gte is not None:
            query = query.where(col(PaymentOrder.created_at_ms) >= created_gte * 1000)
        if created_lte is not None:
            query = query.where(col(PaymentOrder.created_at_ms) <= created_lte * 1000)
        with Session(self.engine) as session:
            rows = [r[0] for r in session.execute(query.limit(limit + 1)).all()]
        return rows[:limit], len(rows) > limit

    # -- events and transitions (attachments) -------------------------------------------------

    def _event(self, merchant_id: str, livemode: int, type: str, obj: dict[str, Any]) -> Attachment:
        event_id = "evt_" + secrets.token_hex(12)
        created = self.clock_ms()
        payload = {
            "id": event_id,
            "type": type,
            "timestamp": created,
            "livemode": bool(livemode),
            "object_version": obj["version"],
            "data": {"object": obj},
        }
        values = (
            event_id,
            merchant_id,
            livemode,
            type,
            obj["id"],
            obj["version"],
            json.dumps(payload, sort_keys=True),
            created,
        )
        return Attachment("webhook_events", EVENT, values)

    def _order_outcome(
        self,
        order: PaymentOrder,
        status: str,
        payer: int | None,
        method: str | None,
        merchant: Merchant | None = None,
    ) -> tuple[list[Attachment], dict[str, Any]]:
        """What commits with the outcome (its transition and webhook event), and the order's
        view once it has: the event's object."""
        at = self.clock_ms()
        transition = Attachment(
            "payment_order_transitions",
            TRANSITION,
            (order.id, status, at, id_bytes(payer) if payer else None, method),
        )
        view = self.view(order, predicted=status, merchant=merchant)
        view["payer"] = uuid_of(payer) if payer else None
        view["paid_with"] = method
        event = self._event(order.merchant_id, order.livemode, f"payment_order.{status}", view)
        return [transition, event], view

    # -- paying an order ---------------------------------------------------------------------------

    def _order_payment(
        self, order_id: int, body: OrderPayment
    ) -> tuple[PaymentOrder, SignedPayment, dict[str, Any]]:
        """The order, the payment of it that ``body`` signs (the order id is its id, the
        merchant's wallet its payee) and the order's view once that payment is committed. Run on
        a thread: it reads the database."""
        order, merchant = self._order_to_pay(None, order_id)
        if body.amount != order.amount:
            raise MerchantError(422, "amount_mismatch", "pay the order's amount", "amount")
        payment = SignedPayment(
            order_id, body.payer, self.wallet_of(merchant), body.amount, body.expires_at_ms,
            body.key_version, body.signature, currency=body.currency,
        )  # fmt: skip
        payment.attempt = True
        payment.attachments, paid = self._order_outcome(
            order, "succeeded", payment.payer, "qr", merchant
        )
        return order, payment, paid

    async def pay(self, order_id: int, body: OrderPayment) -> Payment:
        """A wallet pays an order (merchant-presented QR): one transfer, id = order id."""
        order, payment, paid = await run_in_threadpool(self._order_payment, order_id, body)
        transfers, result = await self.wallets.pay([payment], receipts=True)
        self._raise_if_taken(result)
        return Payment(order, transfers[0], result, paid)

    def _capture_transfer(
        self, ctx: MerchantContext, order_id: int, code_text: str
    ) -> tuple[PaymentOrder, Transfer, dict[str, Any]]:
        """The order, the transfer that captures the customer's code for it, once the code is
        checked (signature, key, expiry, maximum), and the order's view once that transfer is
        committed. Run on a thread: it reads the database and asks the writer for the payer's
        wallet."""
        order, merchant = self._order_to_pay(ctx, order_id)
        try:
            code = signing.PaymentCode.decode(code_text)
        except signing.SignatureError:
            raise MerchantError(
                422, "payment_code_invalid", "not a payment code", "payment_code"
            ) from None
        wallet = self.wallets.wallet(code.payer)
        if wallet is None or code.key_version != wallet.key_version:
            raise MerchantError(
                422, "payment_code_invalid", "the code's key is not the wallet's", "payment_code"
            )
        try:
            signing.verify(wallet.public_key, code.message(), code.signature)
        except signing.SignatureError:
            raise MerchantError(
                422, "payment_code_invalid", "the code's signature does not verify", "payment_code"
            ) from None
        if code.expires_at_ms < self.clock_ms():
            raise MerchantError(422, "payment_code_expired", "ask for a fresh code", "payment_code")
        if code.max_amount < order.amount or code.currency != order.currency:
            raise MerchantError(
                422, "payment_code_amount", "the code does not cover the order", "payment_code"
            )
        transfer = Transfer(
            order_id,
            code.payer,
            self.wallet_of(merchant),
            order.amount,
            CNY,
            codes.PAYMENT,
            TransferFlags.ATTEMPT,
            authorization=code.authorization(),
        )
        transfer.attachments, paid = self._order_outcome(
            order, "succeeded", code.payer, "payment_code", merchant
        )
        return order, transfer, paid

    async def capture(self, ctx: MerchantContext, order_id: int, code_text: str) -> Payment:
        """The merchant's till captures a payment code the customer shows (customer-presented
        mode): checked here, single use in the writer."""
        order, transfer, paid = await run_in_threadpool(
            self._capture_transfer, ctx, order_id, code_text
        )
        result = await self.ledger.execute(OP_CREATE_TRANSFERS, [transfer], None, receipts=True)
        self._raise_if_taken(result)
        if result.codes[0] == Result.PAYMENT_CODE_USED:
            raise MerchantError(
                409, "payment_code_used", "this payment code was already used", "payment_code"
            )
        return Payment(order, transfer, result, paid)

    @staticmethod
    def _raise_if_taken(result: OpResult) -> None:
        code = result.codes[0]
        if code == Result.TRANSFER_ID_CANCELED:
            raise MerchantError(409, "order_not_payable", "the order was canceled or expired")
        if Result.EXISTS_WITH_DIFFERENT_FLAGS <= code <= Result.EXISTS_WITH_DIFFERENT_AUTHORIZATION:
            raise MerchantError(409, "order_already_paid", "the order is already paid")

    # -- cancel and expire ------------------------------------------------------------------------

    async def cancel(self, ctx: MerchantContext, order_id: int) -> dict[str, Any]:
        """Cancel an unpaid order; cancelling it again is answered the same way. The order's
        view."""
        order, stone = await run_in_threadpool(self._cancel_stone, ctx, order_id)
        result = await self.ledger.execute(OP_CANCEL_IDS, [stone], None)
        if result.codes[0] == Result.TRANSFER_ID_USED:
            raise MerchantError(409, "order_already_paid", "a paid order cannot be canceled")
        return await run_in_threadpool(self._canceled_view, order)

    def _cancel_stone(
        self, ctx: MerchantContext, order_id: int
    ) -> tuple[PaymentOrder, CancelTransferId]:
        order = self.order(ctx, order_id)
        outcome, _ = self._order_outcome(order, "canceled", None, None)
        return order, CancelTransferId(order_id, "canceled", outcome)

    def _canceled_view(self, order: PaymentOrder) -> dict[str, Any]:
        view = self.view(order)
        if view["status"] != "canceled":
            raise MerchantError(409, "order_not_cancelable", f"the order is {view['status']}")
        return view

    def expire_due(self, limit: int = 500) -> int:
        """Tombstone orders past their expiry with no outcome yet (run periodically)."""
        now = self.clock_ms()
        with Session(self.engine) as session:
            due = session.execute(
                select(PaymentOrder)
                .join(
                    OrderTransition,
                    col(OrderTransition.order_id) == col(PaymentOrder.id),
                    isouter=True,
                )
                .where(
                    col(OrderTransition.order_id).is_(None), col(PaymentOrder.expires_at_ms) <= now
                )
                .limit(limit)
            ).all()
        stones = [
            CancelTransferId(
                int.from_bytes(o[0].id, "big"),
                "expired",
                self._order_outcome(o[0], "expired", None, None)[0],
            )
            for o in due
        ]
        if stones:
            self.ledger.submit(OP_CANCEL_IDS, stones, None).result()
        return len(stones)

    # -- refunds -----------------------------------------------------------------------------------

    def refund_id(self, ctx: MerchantContext, out_refund_no: str) -> int:
        return uuid.uuid5(NAMESPACE, f"{ctx.merchant_id}/{ctx.mode}/refund/{out_refund_no}").int

    async def refund(self, ctx: MerchantContext, params: dict[str, Any]) -> dict[str, Any]:
        """Refund part or all of a paid order, back to the payer's wallet. Idempotent on
        out_refund_no; the total refunded never exceeds what was paid (checked by the writer).
        The refund's view."""
        refund, to_submit = await run_in_threadpool(self._new_refund, ctx, params)
        if to_submit is not None:
            merchant, order, payer = to_submit
            await self._ensure_allowance(merchant, order)
            await self._submit_refund(merchant, order, refund, payer)
        return await run_in_threadpool(self.refund_view, refund)

    def _new_refund(
        self, ctx: MerchantContext, params: dict[str, Any]
    ) -> tuple[Refund, tuple[Merchant, PaymentOrder, int] | None]:
        """The refund to answer with and, unless its outcome is already written, what submitting
        it needs (merchant, order, payer). That is a new refund, or one made earlier under the
        same out_refund_no whose request died before the ledger answered it: it is submitted
        again, byte for byte the same (see ``_submit_refund``), so the ledger applies it once,
        however many requests submit it. Run on a thread: it reads and writes the database."""
        order = self.order(ctx, params["payment_order"])
        transition = self.transition(order)
        if transition is None or transition.status != "succeeded" or transition.payer is None:
            raise MerchantError(
                409, "order_not_paid", "only a paid order can be refunded", "payment_order"
            )
        refund = self._refund_row(ctx, order, params)
        if self.refund_transition(refund) is not None:
            return refund, None
        payer = int.from_bytes(transition.payer, "big")
        return refund, (self.merchant(order.merchant_id), order, payer)

    def _refund_row(
        self,
        ctx: MerchantContext,
        order: PaymentOrder,
        params: dict[str, Any],
        *,
        _retry: bool = True,
    ) -> Refund:
        """The refund made under this out_refund_no (409 if with other parameters), or a new
        one if what is left to refund covers it (422 if not; the writer checks again)."""
        digest = params_hash({k: v for k, v in params.items() if k != "out_refund_no"})
        refund_id = id_bytes(self.refund_id(ctx, params["out_refund_no"]))
        with Session(self.writes) as session:
            existing = session.get(Refund, refund_id)
            if existing is not None:
                if existing.params_hash != digest:
                    raise MerchantError(
                        409,
                        "out_refund_no_conflict",
                        "a refund with this out_refund_no exists with other parameters",
                        "out_refund_no",
                    )
                return existing
            # in this session: a session of its own would wait for a pooled connection while
            # this one holds the write lock, and every other connection may be held by writers
            # waiting for that lock (the pilot profile at 300 users stalled so for 30 s at a
            # time, until the pool's and the lock's timeouts broke it)
            refundable = order.amount - self._refunded_total_in(session, order)
            if params["amount"] > refundable:
                raise MerchantError(
                    422,
                    "amount_exceeds_refundable",
                    f"at most {refundable} fen can still be refunded",
                    "amount",
                )
            refund = Refund(
                id=refund_id,
                merchant_id=ctx.merchant_id,
                livemode=ctx.mode,
                order_id=order.id,
                amount=params["amount"],
                out_refund_no=params["out_refund_no"],
                reason=params.get("reason", ""),
                params_hash=digest,
                created_at_ms=self.clock_ms(),
            )
            session.add(refund)
            try:
                session.commit()
            except IntegrityError:  # the same out_refund_no, made concurrently
                if _retry:
                    return self._refund_row(ctx, order, params, _retry=False)
                raise
            session.refresh(refund)
        return refund

    async def _ensure_allowance(self, merchant: Merchant, order: PaymentOrder) -> None:
        """The order's refund allowance: an account funded once with the amount paid."""
        order_id = int.from_bytes(order.id, "big")
        source = system_id(f"{merchant.operator}/refund_allowance_source")
        allowance = system_id(f"refund_allowance/{order_id}")
        accounts = [
            Account(source, CNY, codes.REFUND_ALLOWANCE_SOURCE, 0, "", merchant.operator),
            Account(
                allowance,
                CNY,
                codes.ORDER_REFUND_ALLOWANCE,
                AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
                "",
                merchant.operator,
            ),
        ]
        await self.ledger.execute(OP_CREATE_ACCOUNTS, accounts, merchant.operator)
        funding = Transfer(
            system_id(f"refund_allowance/{order_id}/funding"),
            source,
            allowance,
            order.amount,
            CNY,
            codes.REFUND_ALLOWANCE,
        )
        result = await self.ledger.execute(OP_CREATE_TRANSFERS, [funding], merchant.operator)
        assert result.codes == [0], f"funding a refund allowance failed: {result.codes}"

    async def _submit_refund(
        self, merchant: Merchant, order: PaymentOrder, refund: Refund, payer: int
    ) -> OpResult:
        refund_id = int.from_bytes(refund.id, "big")
        order_id = int.from_bytes(order.id, "big")
        wallet = self.wallet_of(merchant)
        # from the refund's own row, not the clock: every submission of it signs the same bytes
        # (Ed25519 is deterministic), so a second one is an exact replay the ledger answers
        # with the first outcome, never a conflicting transfer under the same id
        expires = refund.created_at_ms + REFUND_SIGNATURE_TTL_MS
        auth = signing.sign_payment(
            self.signing_key(merchant), 1, refund_id, wallet, payer, refund.amount, "CNY", expires
        )
        money = Transfer(
            refund_id,
            wallet,
            payer,
            refund.amount,
            CNY,
            codes.REFUND,
            authorization=auth.encode(),
        )
        money.attachments = self._refund_outcome(refund, order)
        draw = Transfer(
            system_id(f"refund/{refund_id}/allowance"),
            system_id(f"refund_allowance/{order_id}"),
            system_id(f"{merchant.operator}/refund_allowance_source"),
            refund.amount,
            CNY,
            codes.REFUND_ALLOWANCE,
            TransferFlags.LINKED,
        )
        # The allowance first: when both would fail, "more than was paid" is the reason given.
        return await self.ledger.execute(OP_CREATE_TRANSFERS, [draw, money], merchant.operator)

    def _refund_outcome(self, refund: Refund, order: PaymentOrder) -> list[Attachment]:
        at = self.clock_ms()
        out = []
        for status, when in (("succeeded", "ok"), ("failed", "rejected")):
            failure = None if status == "succeeded" else RESULT_PLACEHOLDER
            view = self.refund_view(
                refund,
                RefundTransition(
                    refund_id=refund.id, status=status, at_ms=at, failure_code=failure
                ),
            )
            event = self._event(refund.merchant_id, refund.livemode, f"refund.{status}", view)
            out += [
                Attachment(
                    "refund_transitions", REFUND_TRANSITION, (refund.id, status, at, failure), when
                ),
                Attachment("webhook_events", EVENT, event.values, when),
            ]
        return out

    def refund_transition(self, refund: Refund) -> RefundTransition | None:
        with Session(self.engine) as session:
            return session.get(RefundTransition, refund.id)

    def refund_view(
        self, refund: Refund, transition: RefundTransition | None = None
    ) -> dict[str, Any]:
        t = transition or self.refund_transition(refund)
        failure = t.failure_code if t is not None else None
        if failure == "linked_event_failed":
            failure = "amount_exceeds_refundable"  # the allowance leg refused it
        return {
            "id": uuid_of(refund.id),
            "object": "refund",
            "livemode": bool(refund.livemode),
            "payment_order": uuid_of(refund.order_id),
            "amount": refund.amount,
            "currency": "CNY",
            "out_refund_no": refund.out_refund_no,
            "reason": refund.reason,
            "status": t.status if t is not None else "pending",
            "failure_code": failure,
            "created": refund.created_at_ms // 1000,
            "version": 1 + (t is not None),
        }

    def refund_by_id(self, ctx: MerchantContext, refund_id: int) -> Refund:
        with Session(self.engine) as session:
            refund = session.get(Refund, id_bytes(refund_id))
        if refund is None or refund.merchant_id != ctx.merchant_id:
            raise MerchantError(404, "refund_not_found", "no such refund", "refund")
        if refund.livemode != ctx.mode:
            raise MerchantError(404, "livemode_mismatch", "this refund was made in the other mode")
        return refund

    @staticmethod
    def _refunded_total_in(session: Session, order: PaymentOrder) -> int:
        total = session.execute(
            select(func.coalesce(func.sum(Refund.amount), 0))
            .join(RefundTransition, col(RefundTransition.refund_id) == col(Refund.id))
            .where(col(Refund.order_id) == order.id, col(RefundTransition.status) == "succeeded")
        ).one()
        return int(total[0])

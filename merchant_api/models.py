"""The merchant API's tables (SQLModel). Its schema is an Alembic branch of its own
(``merchant_api/migrations``), migrated by the ledger's committer with the ledger's.

Orders and refunds are rows of their own; what happens to them (paid, cancelled, expired,
refunded, failed) is decided in the ledger's writer and recorded here by *transition* rows that
the committer inserts in the same transaction as the ledger change, together with the webhook
event (the transactional outbox). Transition and event rows are only ever inserted (an event's
one exception: its ``fanned_out`` marker, set once by the webhook worker).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, SmallInteger, String, Text
from sqlmodel import Field, SQLModel, col


class Merchant(SQLModel, table=True):
    __tablename__ = "merchants"
    id: str = Field(sa_column=Column(String(32), primary_key=True))
    name: str = Field(sa_column=Column(String(25), nullable=False))
    city: str = Field(sa_column=Column(String(15), nullable=False))
    mcc: str = Field(sa_column=Column(String(4), nullable=False))
    operator: str = Field(sa_column=Column(String(64), nullable=False))
    wallet_id: bytes = Field(sa_column=Column(LargeBinary(16), nullable=False, unique=True))
    key_nonce: bytes = Field(sa_column=Column(LargeBinary(12), nullable=False))
    sealed_key: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    settlement_schedule: str = Field(sa_column=Column(String(8), nullable=False))
    settled_day: int = Field(sa_column=Column(Integer, nullable=False))
    created_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class MerchantKey(SQLModel, table=True):
    __tablename__ = "merchant_keys"
    id: str = Field(sa_column=Column(String(16), primary_key=True))
    merchant_id: str = Field(sa_column=Column(String(32), nullable=False, index=True))
    livemode: int = Field(sa_column=Column(SmallInteger, nullable=False))
    secret_hash: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))
    created_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    revoked_at_ms: int | None = Field(default=None, sa_column=Column(BigInteger))


class PaymentOrder(SQLModel, table=True):
    __tablename__ = "payment_orders"
    __table_args__ = (
        Index("payment_orders_trade_no", "merchant_id", "livemode", "out_trade_no", unique=True),
        Index("payment_orders_list", "merchant_id", "livemode", "created_at_ms"),
    )
    id: bytes = Field(sa_column=Column(LargeBinary(16), primary_key=True))
    merchant_id: str = Field(sa_column=Column(String(32), nullable=False))
    livemode: int = Field(sa_column=Column(SmallInteger, nullable=False))
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    currency: str = Field(sa_column=Column(String(3), nullable=False))
    out_trade_no: str = Field(sa_column=Column(String(64), nullable=False))
    description: str = Field(sa_column=Column(String(200), nullable=False))
    expires_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    metadata_json: str = Field(sa_column=Column(Text, nullable=False))
    params_hash: str = Field(sa_column=Column(String(64), nullable=False))
    created_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class OrderTransition(SQLModel, table=True):
    """An order's one transition out of requires_payment, inserted with the ledger change."""

    __tablename__ = "payment_order_transitions"
    order_id: bytes = Field(sa_column=Column(LargeBinary(16), primary_key=True))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    payer: bytes | None = Field(default=None, sa_column=Column(LargeBinary(16)))
    method: str | None = Field(default=None, sa_column=Column(String(16)))


class Refund(SQLModel, table=True):
    __tablename__ = "refunds"
    __table_args__ = (
        Index("refunds_refund_no", "merchant_id", "livemode", "out_refund_no", unique=True),
        Index("refunds_order", "order_id"),
    )
    id: bytes = Field(sa_column=Column(LargeBinary(16), primary_key=True))
    merchant_id: str = Field(sa_column=Column(String(32), nullable=False))
    livemode: int = Field(sa_column=Column(SmallInteger, nullable=False))
    order_id: bytes = Field(sa_column=Column(LargeBinary(16), nullable=False))
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    out_refund_no: str = Field(sa_column=Column(String(64), nullable=False))
    reason: str = Field(sa_column=Column(String(200), nullable=False))
    params_hash: str = Field(sa_column=Column(String(64), nullable=False))
    created_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class RefundTransition(SQLModel, table=True):
    __tablename__ = "refund_transitions"
    refund_id: bytes = Field(sa_column=Column(LargeBinary(16), primary_key=True))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    failure_code: str | None = Field(default=None, sa_column=Column(String(64)))


class WebhookEndpoint(SQLModel, table=True):
    """Where a merchant wants events (one mode). ``previous_secret`` still signs, next to
    ``secret``, until ``previous_until_ms`` (a rotation's overlap)."""

    __tablename__ = "webhook_endpoints"
    id: str = Field(sa_column=Column(String(32), primary_key=True))
    merchant_id: str = Field(sa_column=Column(String(32), nullable=False, index=True))
    livemode: int = Field(sa_column=Column(SmallInteger, nullable=False))
    url: str = Field(sa_column=Column(String(2048), nullable=False))
    secret: str = Field(sa_column=Column(String(128), nullable=False))
    previous_secret: str | None = Field(default=None, sa_column=Column(String(128)))
    previous_until_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    enabled_events: str = Field(sa_column=Column(Text, nullable=False))
    description: str = Field(sa_column=Column(String(200), nullable=False))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    disabled_reason: str | None = Field(default=None, sa_column=Column(String(200)))
    created_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class WebhookEvent(SQLModel, table=True):
    """The outbox: events inserted with the ledger change they report (or directly, for events
    that are not about money), delivered at least once by the webhook worker. Only
    ``fanned_out`` ever changes (0 -> 1, once, when the worker made the event's deliveries)."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        Index("webhook_events_list", "merchant_id", "livemode", "created_at_ms"),
        Index("webhook_events_fan_out", "fanned_out"),
    )
    id: str = Field(sa_column=Column(String(40), primary_key=True))
    merchant_id: str = Field(sa_column=Column(String(32), nullable=False))
    livemode: int = Field(sa_column=Column(SmallInteger, nullable=False))
    type: str = Field(sa_column=Column(String(64), nullable=False))
    object_id: str = Field(sa_column=Column(String(64), nullable=False))
    object_version: int = Field(sa_column=Column(Integer, nullable=False))
    payload: str = Field(sa_column=Column(Text, nullable=False))
    created_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    fanned_out: int = Field(
        default=0, sa_column=Column(SmallInteger, nullable=False, server_default="0")
    )


class WebhookDelivery(SQLModel, table=True):
    """One event to one endpoint: ``pending`` (due at ``next_attempt_ms``), ``delivered``,
    ``failed`` (schedule exhausted, or 410) or ``canceled`` (the endpoint was disabled)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("webhook_deliveries_due", "state", "next_attempt_ms"),
        Index("webhook_deliveries_endpoint", "endpoint_id", "state"),
    )
    event_id: str = Field(sa_column=Column(String(40), primary_key=True))
    endpoint_id: str = Field(sa_column=Column(String(32), primary_key=True))
    state: str = Field(sa_column=Column(String(16), nullable=False))
    attempts: int = Field(sa_column=Column(Integer, nullable=False))
    next_attempt_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    delivered_at_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    last_attempt_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    last_status: int | None = Field(default=None, sa_column=Column(Integer))
    last_error: str | None = Field(default=None, sa_column=Column(String(500)))


class IdempotencyRecord(SQLModel, table=True):
    __tablename__ = "idempotency_keys"
    merchant_id: str = Field(sa_column=Column(String(32), primary_key=True))
    livemode: int = Field(sa_column=Column(SmallInteger, primary_key=True))
    key: str = Field(sa_column=Column(String(255), primary_key=True))
    request_hash: str = Field(sa_column=Column(String(64), nullable=False))
    state: str = Field(sa_column=Column(String(16), nullable=False))
    status_code: int | None = Field(default=None, sa_column=Column(Integer))
    body: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    created_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class Settlement(SQLModel, table=True):
    """A merchant's e-CNY redeemed to its linked bank account at its operator (by hand, or by
    the daily schedule). Inserted with the ledger change, like a transition: its outcome
    (``succeeded``, or ``failed`` with the ledger's code) is final. ``id`` is the transfer id of
    the redemption's e-CNY leg; ``day`` the China Standard Time day (days since 1970-01-01,
    UTC+8) on which it was made."""

    __tablename__ = "settlements"
    __table_args__ = (Index("settlements_list", "merchant_id", "livemode", "created_at_ms"),)
    id: bytes = Field(sa_column=Column(LargeBinary(16), primary_key=True))
    merchant_id: str = Field(sa_column=Column(String(32), nullable=False))
    livemode: int = Field(sa_column=Column(SmallInteger, nullable=False))
    amount: int = Field(sa_column=Column(BigInteger, nullable=False))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    failure_code: str | None = Field(default=None, sa_column=Column(String(64)))
    trigger: str = Field(sa_column=Column(String(16), nullable=False))
    day: int = Field(sa_column=Column(Integer, nullable=False))
    bank_account: bytes = Field(sa_column=Column(LargeBinary(16), nullable=False))
    created_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


def newest_first(query: Any, model: Any, cursor: Any | None) -> Any:
    """``query`` ordered newest first (``created_at_ms``, then ``id``), after ``cursor`` (a row
    of ``model``) when there is one: the keyset every list route pages with."""
    if cursor is not None:
        created, row_id = col(model.created_at_ms), col(model.id)
        query = query.where(
            (created < cursor.created_at_ms)
            | ((created == cursor.created_at_ms) & (row_id < cursor.id))
        )
    return query.order_by(col(model.created_at_ms).desc(), col(model.id).desc())

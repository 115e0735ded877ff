"""The merchant API's tables: merchants and their keys, payment orders, refunds, their
transitions, webhook endpoints, the event outbox and its deliveries, idempotency keys.

An Alembic branch of its own (label ``merchant_api``), applied after the ledger's 0002.

Revision ID: m001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "m001"
down_revision = None
branch_labels = ("merchant_api",)
depends_on = "0002"


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("merchant_id", sa.String(length=32), nullable=False),
        sa.Column("livemode", sa.SmallInteger(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("merchant_id", "livemode", "key"),
    )
    op.create_table(
        "merchant_keys",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("merchant_id", sa.String(length=32), nullable=False),
        sa.Column("livemode", sa.SmallInteger(), nullable=False),
        sa.Column("secret_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_merchant_keys_merchant_id"), "merchant_keys", ["merchant_id"], unique=False
    )
    op.create_table(
        "merchants",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=25), nullable=False),
        sa.Column("city", sa.String(length=15), nullable=False),
        sa.Column("mcc", sa.String(length=4), nullable=False),
        sa.Column("operator", sa.String(length=64), nullable=False),
        sa.Column("wallet_id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("key_nonce", sa.LargeBinary(length=12), nullable=False),
        sa.Column("sealed_key", sa.LargeBinary(), nullable=False),
        sa.Column("settlement_schedule", sa.String(length=8), nullable=False),
        sa.Column("settled_day", sa.Integer(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("wallet_id"),
    )
    op.create_table(
        "payment_order_transitions",
        sa.Column("order_id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("payer", sa.LargeBinary(length=16), nullable=True),
        sa.Column("method", sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint("order_id"),
    )
    op.create_table(
        "payment_orders",
        sa.Column("id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("merchant_id", sa.String(length=32), nullable=False),
        sa.Column("livemode", sa.SmallInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("out_trade_no", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("metadata_json", sa.Text(), nullable=False),
        sa.Column("params_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "payment_orders_list",
        "payment_orders",
        ["merchant_id", "livemode", "created_at_ms"],
        unique=False,
    )
    op.create_index(
        "payment_orders_trade_no",
        "payment_orders",
        ["merchant_id", "livemode", "out_trade_no"],
        unique=True,
    )
    op.create_table(
        "refund_transitions",
        sa.Column("refund_id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("refund_id"),
    )
    op.create_table(
        "refunds",
        sa.Column("id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("merchant_id", sa.String(length=32), nullable=False),
        sa.Column("livemode", sa.SmallInteger(), nullable=False),
        sa.Column("order_id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("out_refund_no", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("params_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("refunds_order", "refunds", ["order_id"], unique=False)
    op.create_index(
        "refunds_refund_no", "refunds", ["merchant_id", "livemode", "out_refund_no"], unique=True
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("endpoint_id", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_ms", sa.BigInteger(), nullable=False),
        sa.Column("delivered_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("last_attempt_ms", sa.BigInteger(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint("event_id", "endpoint_id"),
    )
    op.create_index(
        "webhook_deliveries_due", "webhook_deliveries", ["state", "next_attempt_ms"], unique=False
    )
    op.create_index(
        "webhook_deliveries_endpoint", "webhook_deliveries", ["endpoint_id", "state"], unique=False
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("merchant_id", sa.String(length=32), nullable=False),
        sa.Column("livemode", sa.SmallInteger(), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("previous_secret", sa.String(length=128), nullable=True),
        sa.Column("previous_until_ms", sa.BigInteger(), nullable=True),
        sa.Column("enabled_events", sa.Text(), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("disabled_reason", sa.String(length=200), nullable=True),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_webhook_endpoints_merchant_id"), "webhook_endpoints", ["merchant_id"], unique=False
    )
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("merchant_id", sa.String(length=32), nullable=False),
        sa.Column("livemode", sa.SmallInteger(), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("object_id", sa.String(length=64), nullable=False),
        sa.Column("object_version", sa.Integer(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("fanned_out", sa.SmallInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("webhook_events_fan_out", "webhook_events", ["fanned_out"], unique=False)
    op.create_index(
        "webhook_events_list",
        "webhook_events",
        ["merchant_id", "livemode", "created_at_ms"],
        unique=False,
    )


def downgrade() -> None:
    raise NotImplementedError("orders, refunds and the outbox are kept; there is no going back")

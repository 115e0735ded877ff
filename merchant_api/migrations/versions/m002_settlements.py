"""Settlements: a merchant's e-CNY redeemed to its linked bank account, by hand or daily.

Revision ID: m002
Revises: m001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "m002"
down_revision = "m001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "settlements",
        sa.Column("id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("merchant_id", sa.String(length=32), nullable=False),
        sa.Column("livemode", sa.SmallInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("bank_account", sa.LargeBinary(length=16), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "settlements_list",
        "settlements",
        ["merchant_id", "livemode", "created_at_ms"],
        unique=False,
    )


def downgrade() -> None:
    raise NotImplementedError("settlements are kept; there is no going back")

"""Wallets: the writer's wallet state, rejection details, the operators' encrypted KYC store.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "wallets",
        sa.Column("id", sa.LargeBinary(16), primary_key=True),
        sa.Column("operator", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("wallet_class", sa.SmallInteger, nullable=False),
        sa.Column("public_key", sa.LargeBinary(32), nullable=False),
        sa.Column("key_version", sa.Integer, nullable=False),
        sa.Column("linked_bank", sa.LargeBinary(16)),
        sa.Column("reverse_waterfall", sa.SmallInteger, nullable=False),
        sa.Column("parent", sa.LargeBinary(16)),
        sa.Column("bound_payee", sa.LargeBinary(16)),
        sa.Column("limits", sa.String(256)),
        sa.Column("float_account", sa.LargeBinary(16), nullable=False),
        sa.Column("settlement_account", sa.LargeBinary(16), nullable=False),
        sa.Column("day", sa.Integer, nullable=False),
        sa.Column("spent_day", sa.BigInteger, nullable=False),
        sa.Column("year", sa.Integer, nullable=False),
        sa.Column("spent_year", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_wallets_operator", "wallets", ["operator"])
    op.create_index("ix_wallets_parent", "wallets", ["parent"])
    op.create_table(
        "kyc_records",
        sa.Column("wallet_id", sa.LargeBinary(16), primary_key=True),
        sa.Column("operator", sa.String(64), nullable=False),
        sa.Column("nonce", sa.LargeBinary(12), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    with op.batch_alter_table("rejected_transfers") as batch:
        batch.add_column(sa.Column("detail", sa.String(512)))
    records = sa.text("kind = 5")
    op.create_index(
        "journal_entries_records",
        "journal_entries",
        ["flags", "seq"],
        sqlite_where=records,
        postgresql_where=records,
    )


def downgrade() -> None:
    raise NotImplementedError("the journal is append-only; there is no going back")

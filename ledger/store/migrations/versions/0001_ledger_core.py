"""Ledger core: accounts, the append-only journal, checkpoints, Merkle tiles, API keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
APPEND_ONLY = ("journal_entries", "checkpoints", "rejected_transfers")


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(512), nullable=False),
    )
    op.create_table(
        "accounts",
        sa.Column("n", RowId, primary_key=True, autoincrement=False),
        sa.Column("id", sa.LargeBinary(16), nullable=False, unique=True),
        sa.Column("ledger", sa.Integer, nullable=False),
        sa.Column("code", sa.Integer, nullable=False),
        sa.Column("flags", sa.Integer, nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("operator", sa.String(64), nullable=False),
        sa.Column("debits_pending", sa.BigInteger, nullable=False),
        sa.Column("debits_posted", sa.BigInteger, nullable=False),
        sa.Column("credits_pending", sa.BigInteger, nullable=False),
        sa.Column("credits_posted", sa.BigInteger, nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_accounts_operator", "accounts", ["operator"])
    op.create_table(
        "journal_entries",
        sa.Column("seq", RowId, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("ref_id", sa.LargeBinary(16), nullable=False),
        sa.Column("pending_id", sa.LargeBinary(16)),
        sa.Column("debit_n", sa.BigInteger),
        sa.Column("credit_n", sa.BigInteger),
        sa.Column("flags", sa.Integer, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("balances", sa.LargeBinary(64)),
    )
    op.create_index("journal_entries_ref", "journal_entries", ["ref_id", "kind"], unique=True)
    op.create_index("journal_entries_debit", "journal_entries", ["debit_n", "seq"])
    op.create_index("journal_entries_credit", "journal_entries", ["credit_n", "seq"])
    not_null = sa.text("pending_id IS NOT NULL")
    op.create_index(
        "journal_entries_pending_ref",
        "journal_entries",
        ["pending_id"],
        sqlite_where=not_null,
        postgresql_where=not_null,
    )
    is_pending = sa.text("kind = 2 AND (flags & 2) = 2")
    op.create_index(
        "journal_entries_pending",
        "journal_entries",
        ["seq"],
        sqlite_where=is_pending,
        postgresql_where=is_pending,
    )
    op.create_table(
        "checkpoints",
        sa.Column("size", RowId, primary_key=True, autoincrement=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        sa.Column("signature", sa.LargeBinary(64), nullable=False),
    )
    op.create_table(
        "rejected_transfers",
        sa.Column("id", sa.LargeBinary(16), primary_key=True),
        sa.Column("result", sa.SmallInteger, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "merkle_tiles",
        sa.Column("level", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hashes", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("secret_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("operator", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("revoked_at", sa.BigInteger),
    )
    _append_only_triggers()


def _append_only_triggers() -> None:
    """UPDATE and DELETE on journal tables are refused by the database itself."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
                    USING ERRCODE = 'insufficient_privilege';
            END $$
            """
        )
        for table in APPEND_ONLY:
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION ledger_append_only()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only()"
            )
        return
    for table in APPEND_ONLY:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {verb} refused'); END"
            )


def downgrade() -> None:
    raise NotImplementedError("the journal is append-only; there is no going back from 0001")

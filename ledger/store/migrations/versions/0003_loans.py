"""Loans: a wallet's repayment mandate (the loan it repays, the lender's book, the share of
each incoming payment), kept with the writer's wallet state.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("wallets") as batch:
        batch.add_column(sa.Column("loan_account", sa.LargeBinary(16)))
        batch.add_column(sa.Column("loan_book", sa.LargeBinary(16)))
        batch.add_column(sa.Column("loan_share_bp", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("wallets") as batch:
        batch.drop_column("loan_share_bp")
        batch.drop_column("loan_book")
        batch.drop_column("loan_account")

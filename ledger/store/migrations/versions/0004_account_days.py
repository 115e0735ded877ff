"""Account days: each account's flows per China Standard Time day (``ledger.daily``), kept as
transfers land so that credit features read days, not histories; filled from the journal.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ledger import daily, entry

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

PAGE = 10_000


def upgrade() -> None:
    op.create_table(
        "account_days",
        sa.Column("account_n", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("day", sa.Integer, primary_key=True, autoincrement=False),
        *[sa.Column(name, sa.BigInteger, nullable=False) for name in daily.FIELDS],
    )
    _fill_from_the_journal()


def _fill_from_the_journal() -> None:
    """The totals of every transfer already in the journal (a ledger made before this table)."""
    conn = op.get_bind()
    totals: dict[tuple[int, int], list[int]] = {}
    after = -1
    while True:
        page = conn.execute(
            sa.text(
                "SELECT j.seq, j.debit_n, j.credit_n, j.body, d.code, c.code "
                "FROM journal_entries j JOIN accounts d ON d.n = j.debit_n "
                "JOIN accounts c ON c.n = j.credit_n "
                "WHERE j.kind = :kind AND j.seq > :after ORDER BY j.seq LIMIT :page"
            ),
            {"kind": entry.KIND_TRANSFER, "after": after, "page": PAGE},
        ).all()
        for seq, debit_n, credit_n, body, debit_code, credit_code in page:
            t = entry.decode(bytes(body))
            assert isinstance(t, entry.TransferEntry)
            daily.add_transfer(
                totals, debit_n, credit_n, t.amount, t.code, t.flags, t.timestamp,
                daily.tracked(debit_code), daily.tracked(credit_code),
            )  # fmt: skip
            after = seq
        if len(page) < PAGE:
            break
    table = sa.table(
        "account_days",
        sa.column("account_n"),
        sa.column("day"),
        *[sa.column(name) for name in daily.FIELDS],
    )
    rows = [
        {"account_n": n, "day": day, **dict(zip(daily.FIELDS, figures, strict=True))}
        for (n, day), figures in totals.items()
    ]
    for start in range(0, len(rows), PAGE):
        op.bulk_insert(table, rows[start : start + PAGE])


def downgrade() -> None:
    op.drop_table("account_days")

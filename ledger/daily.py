"""Each wallet's flows per China Standard Time day, kept as transfers land: the
``account_days`` table, which credit features read instead of a wallet's history.

For every accepted transfer that moves money (not a pending hold, nor a void), the journal adds
to the (account, day) totals of each side that is a wallet (``WALLET_ACCOUNTS``: only wallets
borrow), in the batch's own transaction; ``ledger verify`` recomputes them from the journal. A
day's totals:

* ``takings_fen``, ``payments``: incoming payments (code ``PAYMENT``), amount and count;
* ``refunds_fen``: outgoing refunds (code ``REFUND``);
* ``inflow_fen``, ``outflow_fen``: everything in and out except moves between a wallet and its
  own sub-wallets (``SUB_WALLET_FUND``, ``SUB_WALLET_RETURN``), which are not cash flow;
* ``net_fen``: credits minus debits, all of them: walking the posted balance back day by day.

Pure; compiled with mypyc (the journal calls it for every transfer).
"""

from __future__ import annotations

from typing import Final

from ledger.domain import TransferFlags
from ledger.wallets.codes import (
    PAYMENT,
    REFUND,
    SUB_WALLET_FUND,
    SUB_WALLET_RETURN,
    WALLET_ACCOUNTS,
)

DAY_NS: Final = 86_400 * 10**9
CST_OFFSET_NS: Final = 8 * 3600 * 10**9
FIELDS: Final = ("takings_fen", "payments", "refunds_fen", "inflow_fen", "outflow_fen", "net_fen")
TAKINGS, PAYMENTS, REFUNDS, INFLOW, OUTFLOW, NET = range(6)
OWN_MOVES: Final = frozenset({SUB_WALLET_FUND, SUB_WALLET_RETURN})
MOVES_NOTHING: Final = int(TransferFlags.PENDING | TransferFlags.VOID_PENDING)


def tracked(account_code: int) -> bool:
    """Whether an account of this code has day totals (wallets do)."""
    return account_code in WALLET_ACCOUNTS


def cst_day(timestamp_ns: int) -> int:
    """Days since 1970-01-01 in China Standard Time (UTC+8)."""
    return (timestamp_ns + CST_OFFSET_NS) // DAY_NS


def add_transfer(
    totals: dict[tuple[int, int], list[int]],
    debit: int,
    credit: int,
    amount: int,
    code: int,
    flags: int,
    timestamp_ns: int,
    debit_tracked: bool = True,
    credit_tracked: bool = True,
) -> None:
    """Add one transfer to ``totals`` ((account, day) -> the six figures), for each tracked
    side; ``debit`` and ``credit`` are whatever names the accounts (ids or compact numbers)."""
    if flags & MOVES_NOTHING:
        return
    day = cst_day(timestamp_ns)
    cash = code not in OWN_MOVES
    if credit_tracked:
        into = totals.get((credit, day))
        if into is None:
            into = totals[(credit, day)] = [0, 0, 0, 0, 0, 0]
        into[NET] += amount
        if cash:
            into[INFLOW] += amount
        if code == PAYMENT:
            into[TAKINGS] += amount
            into[PAYMENTS] += 1
    if debit_tracked:
        out = totals.get((debit, day))
        if out is None:
            out = totals[(debit, day)] = [0, 0, 0, 0, 0, 0]
        out[NET] -= amount
        if cash:
            out[OUTFLOW] += amount
        if code == REFUND:
            out[REFUNDS] += amount


def rows(totals: dict[tuple[int, int], list[int]]) -> list[tuple]:
    """(account, day, the six figures) for each (account, day) in ``totals``."""
    return [(account, day, *figures) for (account, day), figures in totals.items()]

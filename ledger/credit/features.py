"""Cash-flow features of a borrower (merchant or individual): pure functions, no I/O.

They read two things the ledger keeps ready, so that a decision never walks a borrower's
history:

* **day totals** (``ledger.daily``): per China Standard Time day, takings and their count,
  refunds, inflow, outflow and the net movement, summed over the borrower's accounts. The
  ledger adds to them as each transfer lands (table ``account_days``); a 365-day window is at
  most 365 rows;
* **the last 90 days' takings, payer by payer** (``Flow``), for payer concentration and repeat
  payers: the only features that need to know who paid.

Only these aggregates leave the ledger for credit scoring, never the transactions themselves.
Windows are the last 30, 90 or 365 CST days, today included; a feature that is undefined (a
ratio over nothing) is ``None``, which a scorecard bins as "Missing". ``from_flows`` computes
the same features from a list of flows (the synthetic pilot, the tests): the ledger's reads and
it agree by construction, since both fold the flows with ``ledger.daily.add_transfer``.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from ledger import daily
from ledger.daily import DAY_NS, INFLOW, NET, OUTFLOW, PAYMENTS, REFUNDS, TAKINGS, cst_day
from ledger.wallets import codes

WINDOWS: Final = (30, 90, 365)
LONGEST_DAYS: Final = max(WINDOWS)
"""No feature looks further back (the drop compares the last 30 days with the 90 before them)."""
PAYER_DAYS: Final = 90

Days = Mapping[int, Sequence[int]]
"""CST day -> the figures of ``ledger.daily.FIELDS`` (days with no flow may be absent)."""


@dataclass(frozen=True, slots=True)
class Flow:
    """One transfer into or out of the borrower's wallet."""

    timestamp_ns: int
    amount: int
    incoming: bool
    counterparty: int
    code: int


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _sum(days: Days, today: int, newest: int, oldest: int, field: int) -> int:
    """``field`` summed over the days from ``newest`` to ``oldest`` days ago (0 is today)."""
    return sum(days[d][field] for d in range(today - oldest, today - newest + 1) if d in days)


def features(
    days: Days, takings: Sequence[Flow], now_ns: int, opened_ns: int, balance_fen: int
) -> dict[str, float | None]:
    """Every feature, merchant's and individual's: ``days`` up to today, ``takings`` the
    incoming payments of the last ``PAYER_DAYS`` days."""
    return {
        **_merchant(days, takings, now_ns, opened_ns, balance_fen),
        **_individual(days, now_ns, balance_fen),
    }


def _merchant(
    days: Days, takings: Sequence[Flow], now_ns: int, opened_ns: int, balance_fen: int
) -> dict[str, float | None]:
    """Takings, activity, tickets, growth, volatility, refunds, payer concentration and
    repeat payers, inflow/outflow, balance buffer and tenure (see the README for each)."""
    today = cst_day(now_ns)
    out: dict[str, float | None] = {}
    tenure_days = max(0, (now_ns - opened_ns) // DAY_NS)
    out["tenure_days"] = float(tenure_days)
    for w in WINDOWS:
        total = _sum(days, today, 0, w - 1, TAKINGS)
        count = _sum(days, today, 0, w - 1, PAYMENTS)
        active = sum(1 for d in range(today - w + 1, today + 1) if d in days and days[d][PAYMENTS])
        out[f"takings_{w}d"] = float(total)
        out[f"payments_{w}d"] = float(count)
        out[f"active_day_ratio_{w}d"] = active / max(1, min(w, tenure_days))
        out[f"average_ticket_{w}d"] = _ratio(total, count)
        out[f"refund_ratio_{w}d"] = _ratio(_sum(days, today, 0, w - 1, REFUNDS), total)
    last_30 = _sum(days, today, 0, 29, TAKINGS)
    growth = _ratio(last_30, _sum(days, today, 30, 59, TAKINGS))
    out["growth_30d"] = growth - 1 if growth is not None else None
    drop = _ratio(last_30, _sum(days, today, 30, 119, TAKINGS) / 3)
    out["drop_30d_vs_prior_90d"] = 1 - drop if drop is not None else None
    weekly = [_sum(days, today, 7 * k, 7 * k + 6, TAKINGS) for k in range(13)]
    mean = statistics.fmean(weekly)
    out["weekly_volatility_90d"] = statistics.pstdev(weekly) / mean if mean else None
    by_payer: Counter[int] = Counter()
    visits: Counter[int] = Counter()
    for f in takings:
        by_payer[f.counterparty] += f.amount
        visits[f.counterparty] += 1
    takings_90 = sum(by_payer.values())
    out["payer_concentration_90d"] = (
        sum((v / takings_90) ** 2 for v in by_payer.values()) if takings_90 else None
    )
    repeat = sum(v for p, v in by_payer.items() if visits[p] >= 2)
    out["repeat_payer_share_90d"] = _ratio(repeat, takings_90)
    inflow = _sum(days, today, 0, 89, INFLOW)
    outflow = _sum(days, today, 0, 89, OUTFLOW)
    out["inflow_outflow_ratio_90d"] = _ratio(inflow, outflow)
    out["balance_buffer_days"] = _ratio(balance_fen, outflow / 90)
    return out


def _individual(days: Days, now_ns: int, balance_fen: int) -> dict[str, float | None]:
    """Regularity of income (the coefficient of variation of income over the last three
    30-day months: 0 is the same every month), spend/income ratio and the lowest end-of-day
    balance over the last 90 days (walked back from today's balance day by day)."""
    today = cst_day(now_ns)
    months = [_sum(days, today, 30 * k, 30 * k + 29, INFLOW) for k in range(3)]
    mean = statistics.fmean(months)
    inflow = _sum(days, today, 0, 89, INFLOW)
    outflow = _sum(days, today, 0, 89, OUTFLOW)
    lowest = balance = balance_fen
    for d in range(today, today - 90, -1):  # the balance at the end of the day before d
        balance -= days[d][NET] if d in days else 0
        lowest = min(lowest, balance)
    return {
        "income_regularity_90d": statistics.pstdev(months) / mean if mean else None,
        "spend_income_ratio_90d": _ratio(outflow, inflow),
        "min_balance_90d": float(lowest),
    }


def day_totals(flows: Iterable[Flow]) -> dict[int, list[int]]:
    """The day totals of one borrower's ``flows``, as the ledger keeps them:
    ``ledger.daily.add_transfer`` on each flow."""
    own = -1  # the borrower, in a name no counterparty has
    totals: dict[tuple[int, int], list[int]] = {}
    for f in flows:
        debit, credit = (f.counterparty, own) if f.incoming else (own, f.counterparty)
        daily.add_transfer(totals, debit, credit, f.amount, f.code, 0, f.timestamp_ns)
    return {day: figures for (account, day), figures in totals.items() if account == own}


def recent_takings(flows: Iterable[Flow], now_ns: int) -> list[Flow]:
    """The incoming payments of the last ``PAYER_DAYS`` CST days, today included."""
    today = cst_day(now_ns)
    return [
        f
        for f in flows
        if f.incoming
        and f.code == codes.PAYMENT
        and today - PAYER_DAYS < cst_day(f.timestamp_ns) <= today
    ]


def from_flows(
    flows: Sequence[Flow], now_ns: int, opened_ns: int, balance_fen: int
) -> dict[str, float | None]:
    """Every feature from a list of flows up to ``now_ns`` (the same as the ledger's read)."""
    return features(
        day_totals(flows), recent_takings(flows, now_ns), now_ns, opened_ns, balance_fen
    )

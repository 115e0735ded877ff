"""Cash-flow features of a borrower (merchant or individual), from its ledger flows: pure
functions, no I/O.

Only these aggregates leave the ledger for credit scoring, never the transactions themselves.
Windows are trailing 30, 90 and 365 days up to ``now``; days are China Standard Time days
(UTC+8), as the ledger's limits count them. A feature that is undefined (a ratio over nothing)
is ``None``, which a scorecard bins as "Missing".
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from ledger.wallets import codes

DAY_NS: Final = 86_400 * 10**9
CST_OFFSET_NS: Final = 8 * 3600 * 10**9
WINDOWS: Final = (30, 90, 365)
LONGEST_DAYS: Final = max(WINDOWS)
"""No feature looks further back (the drop compares the last 30 days with the 90 before them)."""


@dataclass(frozen=True, slots=True)
class Flow:
    """One transfer into or out of the borrower's wallet."""

    timestamp_ns: int
    amount: int
    incoming: bool
    counterparty: int
    code: int


def _day(ts_ns: int) -> int:
    return (ts_ns + CST_OFFSET_NS) // DAY_NS


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _within(flows: Iterable[Flow], now_ns: int, start_day: int, end_day: int) -> list[Flow]:
    """Flows from ``start_day`` to ``end_day`` days ago (``end_day`` < ``start_day``)."""
    lo, hi = now_ns - start_day * DAY_NS, now_ns - end_day * DAY_NS
    return [f for f in flows if lo < f.timestamp_ns <= hi]


def _takings(flows: Iterable[Flow]) -> list[Flow]:
    return [f for f in flows if f.incoming and f.code == codes.PAYMENT]


def merchant_features(
    flows: Sequence[Flow], now_ns: int, opened_ns: int, balance_fen: int
) -> dict[str, float | None]:
    """Takings, activity, tickets, growth, volatility, refunds, payer concentration and
    repeat payers, inflow/outflow, balance buffer and tenure (see the README for each)."""
    out: dict[str, float | None] = {}
    tenure_days = max(0, (now_ns - opened_ns) // DAY_NS)
    out["tenure_days"] = float(tenure_days)
    for w in WINDOWS:
        recent = _within(flows, now_ns, w, 0)
        sales = _takings(recent)
        total = sum(f.amount for f in sales)
        refunds = sum(f.amount for f in recent if not f.incoming and f.code == codes.REFUND)
        days = {_day(f.timestamp_ns) for f in sales}
        out[f"takings_{w}d"] = float(total)
        out[f"payments_{w}d"] = float(len(sales))
        out[f"active_day_ratio_{w}d"] = len(days) / max(1, min(w, tenure_days))
        out[f"average_ticket_{w}d"] = _ratio(total, len(sales))
        out[f"refund_ratio_{w}d"] = _ratio(refunds, total)
    last_30 = sum(f.amount for f in _takings(_within(flows, now_ns, 30, 0)))
    prior_30 = sum(f.amount for f in _takings(_within(flows, now_ns, 60, 30)))
    prior_90 = sum(f.amount for f in _takings(_within(flows, now_ns, 120, 30)))
    growth = _ratio(last_30, prior_30)
    out["growth_30d"] = growth - 1 if growth is not None else None
    drop = _ratio(last_30, prior_90 / 3)
    out["drop_30d_vs_prior_90d"] = 1 - drop if drop is not None else None
    window = _within(flows, now_ns, 91, 0)  # 13 whole weeks
    weekly = [0] * 13
    for f in _takings(window):
        week = (now_ns - f.timestamp_ns) // (7 * DAY_NS)
        if week < 13:
            weekly[week] += f.amount
    mean = statistics.fmean(weekly)
    out["weekly_volatility_90d"] = statistics.pstdev(weekly) / mean if mean else None
    quarter = _within(flows, now_ns, 90, 0)
    by_payer: Counter[int] = Counter()
    visits: Counter[int] = Counter()
    for f in _takings(quarter):
        by_payer[f.counterparty] += f.amount
        visits[f.counterparty] += 1
    takings_90 = sum(by_payer.values())
    out["payer_concentration_90d"] = (
        sum((v / takings_90) ** 2 for v in by_payer.values()) if takings_90 else None
    )
    repeat = sum(v for p, v in by_payer.items() if visits[p] >= 2)
    out["repeat_payer_share_90d"] = _ratio(repeat, takings_90)
    inflow = sum(f.amount for f in quarter if f.incoming)
    outflow = sum(f.amount for f in quarter if not f.incoming)
    out["inflow_outflow_ratio_90d"] = _ratio(inflow, outflow)
    daily_outflow = outflow / 90
    out["balance_buffer_days"] = _ratio(balance_fen, daily_outflow)
    return out


def individual_features(
    flows: Sequence[Flow], now_ns: int, balance_fen: int
) -> dict[str, float | None]:
    """Regularity of income (the coefficient of variation of income over the last three
    30-day months: 0 is the same every month), spend/income ratio and the lowest balance over
    the last 90 days (walked back from today's balance through the flows)."""
    months = [
        sum(f.amount for f in _within(flows, now_ns, 30 * (k + 1), 30 * k) if f.incoming)
        for k in range(3)
    ]
    mean = statistics.fmean(months)
    quarter = _within(flows, now_ns, 90, 0)
    inflow = sum(f.amount for f in quarter if f.incoming)
    outflow = sum(f.amount for f in quarter if not f.incoming)
    lowest = balance = balance_fen
    for f in sorted(quarter, key=lambda f: f.timestamp_ns, reverse=True):
        balance += -f.amount if f.incoming else f.amount  # the balance just before this flow
        lowest = min(lowest, balance)
    return {
        "income_regularity_90d": statistics.pstdev(months) / mean if mean else None,
        "spend_income_ratio_90d": _ratio(outflow, inflow),
        "min_balance_90d": float(lowest),
    }

"""A seeded synthetic pilot: merchants whose hidden "health" drives their takings.

``plan`` is pure. Each merchant gets a health in (0, 1), drawn from Beta(2, 2) and never
published. Health drives:
- how many customers pay it each day (Poisson, 1 + 7 * health a day);
- how large the tickets are (log-normal around 30 CNY, larger when healthier);
- how loyal its customers are: the share of sales from its regulars is 0.2 + 0.6 * health;
- whether a shock hits: with probability 0.7 * (1 - health), sales fall to 30 % from a day in
  the second half of the run;
- whether it eventually defaults: a logistic function of health, more likely after a shock;
- how many sales come back: each is refunded with probability 0.02 + 0.10 * (1 - health),
  0 to 3 days later, in full (70 %) or in half.

``sales`` and ``refunds`` turn the plan into the payments and refunds to make; the tests write
them into a real ledger as signed wallet transfers, day by day, and check that the cash-flow
features recover the signal.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Final

from ledger.wallets import codes

REGULARS: Final = 6
TICKET_FEN: Final = 3_000
TICKET_MIN: Final = 100
TICKET_MAX: Final = 20_000
SHOCK_FACTOR: Final = 0.3


@dataclass(frozen=True, slots=True)
class Merchant:
    health: float
    shock_day: int | None
    defaulted: bool
    regulars: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Sale:
    day: int
    merchant: int
    customer: int
    amount: int


@dataclass(frozen=True, slots=True)
class Refund:
    day: int
    merchant: int
    customer: int
    amount: int
    sale: int
    """The index of the refunded sale in ``sales``' list."""


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method: fine for the small daily rates here."""
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def plan(merchants: int, customers: int, days: int, seed: int) -> list[Merchant]:
    """The hidden truth of ``merchants`` shops served by ``customers`` customers."""
    if merchants < 1 or customers < REGULARS or days < 2:
        raise ValueError(f"need merchants >= 1, customers >= {REGULARS}, days >= 2")
    rng = random.Random(seed)
    out = []
    for _ in range(merchants):
        health = rng.betavariate(2, 2)
        shocked = rng.random() < 0.7 * (1 - health)
        shock_day = rng.randrange(days // 2, days) if shocked else None
        risk = 1 / (1 + math.exp(8 * (health - 0.35))) + (0.25 if shocked else 0.0)
        regulars = tuple(rng.sample(range(customers), REGULARS))
        out.append(Merchant(health, shock_day, rng.random() < risk, regulars))
    return out


def sales(truth: list[Merchant], customers: int, days: int, seed: int) -> list[Sale]:
    """Every sale of the run, day by day (a separate stream from ``plan``'s, same seed)."""
    rng = random.Random(seed + 1)
    out = []
    for day in range(days):
        for m, merchant in enumerate(truth):
            rate = 1 + 7 * merchant.health
            if merchant.shock_day is not None and day >= merchant.shock_day:
                rate *= SHOCK_FACTOR
            for _ in range(_poisson(rng, rate)):
                loyal = rng.random() < 0.2 + 0.6 * merchant.health
                customer = rng.choice(merchant.regulars) if loyal else rng.randrange(customers)
                ticket = rng.lognormvariate(math.log(TICKET_FEN) + 0.4 * merchant.health, 0.5)
                out.append(Sale(day, m, customer, int(min(TICKET_MAX, max(TICKET_MIN, ticket)))))
    return out


def refunds(truth: list[Merchant], sold: list[Sale], days: int, seed: int) -> list[Refund]:
    """The sales that come back, by day (a third stream, same seed): a refund never comes
    before its sale, nor after the run."""
    rng = random.Random(seed + 2)
    out = []
    for i, s in enumerate(sold):
        if rng.random() >= 0.02 + 0.10 * (1 - truth[s.merchant].health):
            continue
        day, full = s.day + rng.randrange(0, 4), rng.random() < 0.7
        if day < days:
            out.append(Refund(day, s.merchant, s.customer, s.amount if full else s.amount // 2, i))
    return sorted(out, key=lambda r: (r.day, r.sale))


def features_table(
    truth: list[Merchant], sold: list[Sale], days: int, refunded: list[Refund] | None = None
) -> Any:
    """One row per merchant: the cash-flow features its sales (less ``refunded``) give at the
    end of the run (the same functions the ledger's feature reads use), and ``defaulted``
    (yes/no): a table for ``ledger credit train --target defaulted --bad yes``. Pure: no ledger
    is written."""
    import pandas as pd

    from ledger.credit.features import DAY_NS, Flow, from_flows
    from ledger.daily import CST_OFFSET_NS

    start = -CST_OFFSET_NS  # day 0 begins at midnight, China Standard Time
    now = start + days * DAY_NS - 1  # the end of the last day
    flows: list[list[Flow]] = [[] for _ in truth]
    for i, s in enumerate(sold):  # sales spread over their day, in order
        at = start + s.day * DAY_NS + (i % 1000 + 1) * (DAY_NS // 1002)
        flows[s.merchant].append(Flow(at, s.amount, True, s.customer, codes.PAYMENT))
    for r in refunded or []:  # at the end of their day, after the day's sales
        at = start + r.day * DAY_NS + DAY_NS - 1 - r.sale % 1000
        flows[r.merchant].append(Flow(at, r.amount, False, r.customer, codes.REFUND))
    rows = []
    for merchant, own in zip(truth, flows, strict=True):
        balance = sum(f.amount if f.incoming else -f.amount for f in own)
        row: dict[str, object] = {**from_flows(own, now, 0, balance)}
        row["defaulted"] = "yes" if merchant.defaulted else "no"
        rows.append(row)
    return pd.DataFrame(rows)

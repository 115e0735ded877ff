"""The synthetic pilot written into a real ledger as signed payments: the cash-flow features
read back under consent recover the health that was planted and never published."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from ledger.credit import synthetic
from tests.credit.test_consent import DAY, features, grant
from tests.test_wallets import START, World

MERCHANTS, CUSTOMERS, DAYS, SEED = 20, 40, 90, 11


def test_the_plan_is_seeded_and_health_drives_it() -> None:
    truth = synthetic.plan(MERCHANTS, CUSTOMERS, DAYS, SEED)
    assert truth == synthetic.plan(MERCHANTS, CUSTOMERS, DAYS, SEED)
    assert truth != synthetic.plan(MERCHANTS, CUSTOMERS, DAYS, SEED + 1)
    sold = synthetic.sales(truth, CUSTOMERS, DAYS, SEED)
    count = Counter(s.merchant for s in sold)
    health = [m.health for m in truth]
    assert spearmanr(health, [count[m] for m in range(MERCHANTS)]).statistic > 0.7
    with pytest.raises(ValueError):
        synthetic.plan(1, 2, DAYS, SEED)


def test_features_read_under_consent_recover_the_planted_health(world: World) -> None:
    truth = synthetic.plan(MERCHANTS, CUSTOMERS, DAYS, SEED)
    sold = synthetic.sales(truth, CUSTOMERS, DAYS, SEED)
    spend = Counter()
    for s in sold:
        spend[s.customer] += s.amount
    merchants = [world.wallet(1, bank=1) for _ in truth]
    customers = []
    for c in range(CUSTOMERS):
        wallet = world.wallet(1, bank=spend[c] + 1)
        if spend[c]:
            assert world.top_up(wallet, spend[c]) == "ok"
        customers.append(wallet)
    by_day: dict[int, list[synthetic.Sale]] = {}
    for s in sold:
        by_day.setdefault(s.day, []).append(s)
    for day in range(DAYS):
        world.at(START + (day + 1) * DAY)
        payments = [
            world.payment(customers[s.customer], merchants[s.merchant].id, s.amount)
            for s in by_day.get(day, [])
        ]
        if payments:
            answer = world.post("/v1/payments/batch", {"payments": payments})
            assert {r["result"] for r in answer["results"]} == {"ok"}
    world.at(START + DAYS * DAY + DAY / 2)  # the first sales were 89.5 days ago

    read = []
    for merchant in merchants:
        consent = grant(world, merchant).json()["id"]
        answer = features(world, merchant, consent, world.op)
        assert answer.status_code == 200, answer.text
        read.append(answer.json()["features"])
    health = np.array([m.health for m in truth])
    takings = np.array([f["takings_90d"] for f in read])
    assert takings.sum() == sum(s.amount for s in sold), "every sale, once"
    assert spearmanr(health, takings).statistic > 0.7
    repeat = np.array([f["repeat_payer_share_90d"] or 0.0 for f in read])
    assert spearmanr(health, repeat).statistic > 0.3
    shocked = np.array([m.shock_day is not None for m in truth])
    drop = np.array([f["drop_30d_vs_prior_90d"] or 0.0 for f in read])
    late = np.array([m.shock_day is not None and m.shock_day >= DAYS - 30 for m in truth])
    assert shocked.any() and (~shocked).any()
    assert drop[late].mean() > drop[~shocked].mean() + 0.2, (drop, shocked)
    defaulted = np.array([m.defaulted for m in truth])
    assert defaulted.any() and (~defaulted).any()
    auc = roc_auc_score(defaulted, -np.array([f["takings_30d"] for f in read]))
    assert auc > 0.7

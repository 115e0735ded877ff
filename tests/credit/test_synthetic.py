"""The synthetic pilot written into a real ledger as signed payments and refunds: the cash-flow
features read back under consent recover the health that was planted and never published, and
equal the pure features table the scorecard trains on."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from ledger import signing
from ledger.credit import synthetic
from ledger.domain import Transfer
from ledger.engine import OP_CREATE_TRANSFERS
from ledger.ids import new_id
from ledger.wallets import codes
from ledger.wallets.service import CNY
from tests.credit.test_consent import DAY, features, grant
from tests.test_wallets import START, W, World

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
    back = synthetic.refunds(truth, sold, DAYS, SEED)
    assert back == synthetic.refunds(truth, sold, DAYS, SEED)
    assert all(sold[r.sale].day <= r.day < DAYS and 0 < r.amount <= sold[r.sale].amount
               and (r.merchant, r.customer) == (sold[r.sale].merchant, sold[r.sale].customer)
               for r in back)  # fmt: skip
    assert len({r.sale for r in back}) == len(back), "a sale comes back once at most"


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
    back = synthetic.refunds(truth, sold, DAYS, SEED)
    back_by_day: dict[int, list[synthetic.Refund]] = {}
    for r in back:
        back_by_day.setdefault(r.day, []).append(r)
    for day in range(DAYS):
        world.at(START + (day + 1) * DAY)
        payments = [
            world.payment(customers[s.customer], merchants[s.merchant].id, s.amount)
            for s in by_day.get(day, [])
        ]
        if payments:
            answer = world.post("/v1/payments/batch", {"payments": payments})
            assert {r["result"] for r in answer["results"]} == {"ok"}
        refunds = [
            refund(merchants[r.merchant], customers[r.customer], r.amount, world.now_ms())
            for r in back_by_day.get(day, [])
        ]
        if refunds:  # signed by the merchant's wallet, as the merchant API's refunds are
            done = world.service.submit(OP_CREATE_TRANSFERS, refunds, "op_a").result()
            assert done.codes == [0] * len(refunds)
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
    refunded = np.array([f["refund_ratio_90d"] for f in read])
    assert len(back) > 20 and spearmanr(health, refunded).statistic < -0.3
    table = synthetic.features_table(truth, sold, DAYS, back)
    for column in ("refund_ratio_30d", "refund_ratio_90d", "takings_30d", "payments_90d"):
        ledger = np.array([f[column] for f in read], dtype=float)
        assert np.allclose(ledger, table[column].to_numpy(dtype=float), equal_nan=True), column


def refund(merchant: W, customer: W, amount: int, now_ms: int) -> Transfer:
    tid = new_id()
    auth = signing.sign_payment(
        merchant.key, 1, tid, merchant.int_id, customer.int_id, amount, "CNY", now_ms + 60_000
    )
    return Transfer(tid, merchant.int_id, customer.int_id, amount, CNY, codes.REFUND,
                    authorization=auth.encode())  # fmt: skip

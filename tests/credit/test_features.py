"""Cash-flow features on hand-made flows, each figure worked out by hand. Windows are whole
China Standard Time days; NOW is 08:00 CST, so "n days ago" is n CST days ago."""

from __future__ import annotations

import pytest

from ledger.credit.features import DAY_NS, Flow, day_totals, from_flows
from ledger.wallets import codes

NOW = 1_000 * DAY_NS


def flow(
    days_ago: float, amount: int, incoming: bool, who: int = 1, code: int = codes.PAYMENT
) -> Flow:
    return Flow(NOW - int(days_ago * DAY_NS), amount, incoming, who, code)


def test_a_salaried_person() -> None:
    salary = [flow(5, 10_000, True), flow(35, 10_000, True), flow(65, 12_000, True)]
    spending = [flow(3, 4_000, False, 2), flow(20, 5_000, False, 3), flow(40, 6_000, False, 2)]
    f = from_flows(salary + spending, NOW, NOW - 100 * DAY_NS, balance_fen=20_000)
    months = [10_000, 10_000, 12_000]
    mean = sum(months) / 3
    spread = (sum((m - mean) ** 2 for m in months) / 3) ** 0.5
    assert f["income_regularity_90d"] == pytest.approx(spread / mean)
    assert f["spend_income_ratio_90d"] == pytest.approx(15_000 / 32_000)
    # end-of-day balances back from 20,000: +4,000 (3 d) 24,000; -10,000 (5 d) 14,000;
    # +5,000 (20 d) 19,000; -10,000 (35 d) 9,000; +6,000 (40 d) 15,000; -12,000 (65 d) 3,000
    assert f["min_balance_90d"] == 3_000
    quiet = from_flows([], NOW, NOW, 500)
    assert (quiet["income_regularity_90d"], quiet["spend_income_ratio_90d"]) == (None, None)
    assert quiet["min_balance_90d"] == 500


def test_a_day_is_the_lowest_balance_at_its_end() -> None:
    same_day = [flow(1.1, 9_000, False, 2), flow(1.05, 9_000, True, 3)]  # out, then back in
    assert from_flows(same_day, NOW, NOW - DAY_NS * 10, 1_000)["min_balance_90d"] == 1_000


def test_day_totals_fold_flows_as_the_ledger_does() -> None:
    flows = [
        flow(0, 1_000, True, 7), flow(0, 300, False, 7, codes.REFUND),
        flow(0, 2_000, False, 9, codes.SUB_WALLET_FUND), flow(1, 500, True, 8),
    ]  # fmt: skip
    today = (NOW + 8 * 3600 * 10**9) // DAY_NS
    # takings, payments, refunds, inflow, outflow, net
    assert day_totals(flows) == {
        today: [1_000, 1, 300, 1_000, 300, 1_000 - 300 - 2_000],
        today - 1: [500, 1, 0, 500, 0, 500],
    }


def test_a_shop_with_refunds_regulars_and_a_slump() -> None:
    sales = [flow(2, 1_000, True, 7), flow(10, 3_000, True, 7), flow(12, 2_000, True, 8)]
    older = [flow(45, 6_000, True, 9), flow(100, 9_000, True, 9)]
    refund = [flow(11, 500, False, 8, codes.REFUND)]
    f = from_flows(sales + older + refund, NOW, NOW - 200 * DAY_NS, balance_fen=10_000)
    assert (f["takings_30d"], f["payments_30d"]) == (6_000, 3)
    assert f["average_ticket_30d"] == 2_000 and f["refund_ratio_30d"] == pytest.approx(500 / 6_000)
    assert f["active_day_ratio_30d"] == pytest.approx(3 / 30)
    assert f["tenure_days"] == 200
    assert f["growth_30d"] == pytest.approx(6_000 / 6_000 - 1)  # 30-60 days ago: 6,000
    # prior 90 days = 30..120 days ago: 15,000, i.e. 5,000 a month; last 30: 6,000
    assert f["drop_30d_vs_prior_90d"] == pytest.approx(1 - 6_000 / 5_000)
    takings_90 = 6_000 + 6_000  # payer 7: 4,000 (twice), 8: 2,000, 9: 6,000
    assert f["payer_concentration_90d"] == pytest.approx(
        (4_000 / takings_90) ** 2 + (2_000 / takings_90) ** 2 + (6_000 / takings_90) ** 2
    )
    assert f["repeat_payer_share_90d"] == pytest.approx(4_000 / takings_90)
    assert f["inflow_outflow_ratio_90d"] == pytest.approx(12_000 / 500)
    assert f["balance_buffer_days"] == pytest.approx(10_000 / (500 / 90))
    assert f["takings_365d"] == 21_000
    quiet = from_flows([], NOW, NOW, 0)
    assert quiet["average_ticket_30d"] is None and quiet["weekly_volatility_90d"] is None

"""Fairness, drift and the model card: figures checked against hand computations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ledger.credit.monitoring import Protected, drift, fairness, psi, stability
from ledger.credit.scorecard import CreditDataError, Scorecard, labelled, read_table
from tests.credit.test_scorecard import GERMAN
from tests.test_cli import ledger_cli


def test_psi_matches_the_formula_by_hand() -> None:
    # shares 25/25/50 -> 50/25/25: (0.5-0.25) ln 2 + 0 + (0.25-0.5) ln(1/2) = 0.5 ln 2
    assert psi([25, 25, 50], [50, 25, 25]) == pytest.approx(0.5 * math.log(2))
    assert psi([1, 2, 3], [10, 20, 30]) == pytest.approx(0.0)
    empty_bin = psi([0, 50, 50], [10, 45, 45])  # an empty bin is floored, not infinite
    assert math.isfinite(empty_bin) and empty_bin > 0.25
    assert [stability(v) for v in (0.05, 0.2, 0.3)] == [
        "stable", "moderate shift", "significant shift",
    ]  # fmt: skip
    for bad in (([1, 2], [1, 2, 3]), ([0, 0], [1, 1]), ([-1, 2], [1, 1]), ([], [])):
        with pytest.raises(ValueError):
            psi(*bad)


def test_fairness_figures_equal_a_count_by_hand() -> None:
    rng = np.random.default_rng(7)
    groups = pd.Series(rng.choice(["a", "b", "c"], size=400))
    bad = rng.integers(0, 2, size=400)
    approved = rng.random(400) < np.where(groups == "a", 0.8, 0.5)
    table, gaps = fairness(approved, bad, groups)
    by_hand = pd.DataFrame({"g": groups, "ok": approved, "bad": bad})
    rates = by_hand.groupby("g").ok.mean()
    among_good = by_hand[by_hand.bad == 0].groupby("g").ok.mean()
    among_bad = by_hand[by_hand.bad == 1].groupby("g").ok.mean()
    assert list(table.group) == ["a", "b", "c"]
    assert list(table.applicants) == list(by_hand.groupby("g").size())
    assert np.allclose(table["approval rate"], rates)
    assert np.allclose(table["approved among good"], among_good)
    assert np.allclose(table["approved among bad"], among_bad)
    assert gaps["demographic_parity_difference"] == pytest.approx(rates.max() - rates.min())
    assert gaps["equalized_odds_difference"] == pytest.approx(
        max(among_good.max() - among_good.min(), among_bad.max() - among_bad.min())
    )


def test_protected_attributes_parse_and_group() -> None:
    frame = pd.DataFrame({"age": [19, 25, 40], "sex": ["f", "m", "f"]})
    assert list(Protected.parse("age:25").groups(frame)) == ["< 25", ">= 25", ">= 25"]
    assert list(Protected.parse("sex").groups(frame)) == ["f", "m", "f"]
    with pytest.raises(CreditDataError, match="must be a number"):
        Protected.parse("age:old")
    with pytest.raises(CreditDataError, match="not numeric"):
        Protected.parse("sex:1").groups(frame)
    with pytest.raises(CreditDataError, match="no protected column"):
        Protected.parse("income").groups(frame)


def test_drift_is_nil_on_the_same_population_and_flags_a_shift(tmp_path: Path) -> None:
    data = labelled(read_table(GERMAN), "creditability", "bad")
    card = Scorecard.train(data)
    same = drift(card, data.features, data.features)
    assert (same.psi.abs() < 1e-9).all() and list(same.characteristic)[-1] == "(score)"
    shifted = data.features.assign(
        duration_in_month=data.features.duration_in_month * 3,
        credit_amount=data.features.credit_amount * 4,
    )
    moved = drift(card, data.features, shifted).set_index("characteristic").psi
    assert moved["duration_in_month"] > 0.25 and moved["credit_amount"] > 0.25
    assert moved["(score)"] > 0.25
    assert moved["credit_history"] == pytest.approx(0.0, abs=1e-9)  # untouched

    card.save(tmp_path / "m")
    shifted.to_csv(tmp_path / "now.csv", index=False)
    run = ledger_cli(
        "credit", "drift", "--model", str(tmp_path / "m"), "--baseline", str(GERMAN),
        "--current", str(tmp_path / "now.csv"), "--json",
    )  # fmt: skip
    assert run.returncode == 1, run.stderr  # a significant shift
    rows = {r["characteristic"]: r for r in json.loads(run.stdout)["psi"]}
    assert rows["duration_in_month"]["verdict"] == "significant shift"
    run = ledger_cli(
        "credit", "drift", "--model", str(tmp_path / "m"), "--baseline", str(GERMAN),
        "--current", str(GERMAN),
    )  # fmt: skip
    assert run.returncode == 0 and "stable" in run.stdout


def test_the_model_card_command_writes_card_plots_model_and_figures(tmp_path: Path) -> None:
    out = tmp_path / "card"
    run = ledger_cli(
        "credit", "card", "--data", str(GERMAN), "--target", "creditability", "--bad", "bad",
        "--protected", "personal_status_and_sex", "--protected", "age_in_years:25",
        "--basis", "UCI Statlog, CC BY 4.0", "--out", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    for plot in ("roc.png", "scores.png", "calibration.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
    report = json.loads((out / "report.json").read_text())
    assert not {"personal_status_and_sex", "age_in_years"} & set(report["characteristics"])
    model = Scorecard.load(out / "model")
    assert model.characteristics == report["characteristics"]
    assert (out / "model.points.csv").is_file()
    assert report["cross_validation"]["auc_mean"] >= 0.75
    assert set(report["fairness"]) == {"personal_status_and_sex", "age_in_years"}
    for fair in report["fairness"].values():
        groups = fair["groups"]
        assert sum(g["applicants"] for g in groups) == report["holdout"]["applicants"] == 300
        rates = [g["approval rate"] for g in groups]
        assert fair["demographic_parity_difference"] == pytest.approx(max(rates) - min(rates))
    card = (out / "model_card.md").read_text()
    for heading in ("## Intended use", "## Data and consent basis", "## Performance",
                    "## Fairness", "## Stability", "## Limitations"):  # fmt: skip
        assert heading in card
    assert (
        "UCI Statlog, CC BY 4.0" in card and "| < 25 |" in card and "![ROC curve](roc.png)" in card
    )
    assert f"{report['cross_validation']['auc_mean']:.3f} ±" in card
    assert "```bash\nledger credit card --data" in card, "the command that regenerates it"

    run = ledger_cli(
        "credit", "card", "--data", str(GERMAN), "--target", "creditability", "--bad", "bad",
        "--protected", "religion", "--basis", "x", "--out", str(tmp_path / "no"),
    )  # fmt: skip
    assert run.returncode == 2 and "no protected column 'religion'" in run.stderr

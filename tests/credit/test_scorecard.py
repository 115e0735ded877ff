"""The scorecard on the German credit data (tests/data/README.md): its maths, its reason codes,
its cross-validated bar, and the `ledger credit` commands with good and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ledger.credit.scorecard import (
    MIN_BIN_SIZE,
    PDO,
    REASONS_MAX,
    SCORE_ODDS,
    SCORE_POINTS,
    Labelled,
    Scorecard,
    expected_score,
    labelled,
    probability_from_score,
    read_table,
)
from tests.test_cli import ledger_cli

GERMAN = Path(__file__).parent.parent / "data" / "germancredit.csv"


@pytest.fixture(scope="module")
def german() -> Labelled:
    return labelled(read_table(GERMAN), "creditability", "bad")


@pytest.fixture(scope="module")
def card(german: Labelled) -> Scorecard:
    return Scorecard.train(german)


def test_the_data_is_the_published_one(german: Labelled) -> None:
    assert german.features.shape == (1000, 20)
    assert int(german.bad.sum()) == 300


def test_a_score_is_the_sum_of_its_points(card: Scorecard, german: Labelled) -> None:
    scores = card.score(german.features)
    points = card.points(german.features)
    assert list(points.columns) == card.kept()
    assert np.allclose(scores, points.sum(axis=1).to_numpy(), atol=1e-6)
    table = card.table()
    for name in card.kept():  # every applicant's points are a row of the points table
        assert set(np.round(points[name], 6)) <= set(
            np.round(table[table.Variable == name].Points, 6)
        )


def test_600_points_at_50_to_1_and_20_more_to_double_the_odds(
    card: Scorecard, german: Labelled
) -> None:
    scores = card.score(german.features)
    risk = card.probability_bad(german.features)
    assert np.allclose(scores, [expected_score(p) for p in risk], atol=1e-6)
    assert np.allclose([probability_from_score(s) for s in scores], risk, atol=1e-9)
    assert expected_score(1 / (1 + SCORE_ODDS)) == pytest.approx(SCORE_POINTS)
    assert expected_score(1 / (1 + 2 * SCORE_ODDS)) == pytest.approx(SCORE_POINTS + PDO)
    assert scores[german.bad == 1].mean() < scores[german.bad == 0].mean()


@pytest.mark.filterwarnings("ignore:Setting an item of incompatible dtype")  # optbinning, pandas 3
def test_numerical_bins_are_monotonic_and_not_too_small(card: Scorecard, german: Labelled) -> None:
    numerical = [c for c in card.kept() if pd.api.types.is_numeric_dtype(german.features[c])]
    assert numerical, "the German data has numerical characteristics the model keeps"
    for name in card.kept():
        table = card.model.binning_process_.get_binned_variable(name).binning_table.build()
        regular = table[~table.Bin.astype(str).isin(["Special", "Missing", ""])].iloc[:-1]
        regular = regular[regular["Count"] > 0]
        assert (regular["Count"] >= math.floor(MIN_BIN_SIZE * 1000)).all(), name
        if name in numerical:
            rates = regular["Event rate"].to_numpy()
            steps = np.diff(rates)
            assert (steps >= -1e-12).all() or (steps <= 1e-12).all(), (name, rates)


def test_every_decline_has_reasons_that_are_its_largest_losses(
    card: Scorecard, german: Labelled
) -> None:
    scores = card.score(german.features)
    cutoff = float(np.median(scores))
    declined = german.features[scores < cutoff]
    assert len(declined) > 100
    reasons = card.reasons(declined)
    points = card.points(declined)
    scores_again, same = card.explain(declined)
    assert np.allclose(scores_again, scores[scores < cutoff], atol=1e-6) and same == reasons
    best = card.best_points()
    table = card.table()
    for i, why in enumerate(reasons):
        assert 1 <= len(why) <= REASONS_MAX
        losses = sorted((best[n] - points.iloc[i][n] for n in points.columns), reverse=True)
        assert [r.points_lost for r in why] == pytest.approx(losses[: len(why)])
        for reason in why:
            text = reason.text()
            assert reason.characteristic.replace("_", " ") in text.lower()
            assert "score too low" not in text.lower() and reason.value in text
            named = table[(table.Variable == reason.characteristic) & (table.Bin == reason.value)]
            assert len(named) == 1, reason  # the applicant's own bin, as the points table names it
            assert named.Points.iloc[0] == pytest.approx(points.iloc[i][reason.characteristic])


def test_german_credit_cross_validated_bar_through_the_cli() -> None:
    """Stratified 5-fold CV x 3 seeds: AUC >= 0.77, KS >= 0.45, within 0.02 of the baseline."""
    run = ledger_cli(
        "credit", "evaluate", "--data", str(GERMAN), "--target", "creditability",
        "--bad", "bad", "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["folds"] == 5 and report["seeds"] == [0, 1, 2]
    assert len(report["auc_per_fold"]) == 15
    assert report["auc_mean"] >= 0.77, report
    assert report["ks_mean"] >= 0.45, report
    assert report["auc_mean"] >= report["baseline_auc_mean"] - 0.02, report
    assert 0 < report["auc_std"] < 0.1
    assert report["gini_mean"] == pytest.approx(2 * report["auc_mean"] - 1)


def test_train_then_score_with_reasons_for_every_decline(tmp_path: Path) -> None:
    model = tmp_path / "german.model"
    run = ledger_cli(
        "credit", "train", "--data", str(GERMAN), "--target", "creditability", "--bad", "bad",
        "--out", str(model),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    table = pd.read_csv(tmp_path / "german.model.points.csv")
    assert {"Variable", "Bin", "Points"} <= set(table.columns)
    applicants = read_table(GERMAN).drop(columns=["creditability"]).head(200)
    applicants.to_csv(tmp_path / "applicants.csv", index=False)
    run = ledger_cli(
        "credit", "score", "--model", str(model), "--data", str(tmp_path / "applicants.csv"),
        "--cutoff", "560",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    scored = pd.read_csv(pd.io.common.StringIO(run.stdout)).fillna("")
    assert len(scored) == 200
    assert set(scored.decision) == {"approve", "decline"}
    assert ((scored.score >= 560) == (scored.decision == "approve")).all()
    assert (scored[scored.decision == "decline"].reasons.str.len() > 0).all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "outcome", "--bad", "bad"], "no column 'outcome'"),
        (["--target", "creditability", "--bad", "terrible"], "no row has creditability"),
        (["--target", "age_in_years", "--bad", "30"], "must hold two outcomes"),
    ],
)
def test_training_refuses_data_it_cannot_use(tmp_path: Path, args: list[str], message: str) -> None:
    run = ledger_cli("credit", "train", "--data", str(GERMAN), *args, "--out", str(tmp_path / "m"))
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert not (tmp_path / "m").exists()


def test_bad_files_are_named_not_crashed_on(tmp_path: Path) -> None:
    junk = tmp_path / "junk.csv"
    junk.write_bytes(b"\xff\xfe\x00binary\x00")
    run = ledger_cli("credit", "evaluate", "--data", str(junk), "--target", "t", "--bad", "1")
    assert run.returncode == 2 and "junk.csv" in run.stderr, run.stderr
    missing = tmp_path / "nope.csv"
    run = ledger_cli("credit", "evaluate", "--data", str(missing), "--target", "t", "--bad", "1")
    assert run.returncode == 2 and "no such file" in run.stderr
    not_a_model = tmp_path / "model"
    not_a_model.write_bytes(b"not a pickle")
    run = ledger_cli("credit", "score", "--model", str(not_a_model), "--data", str(GERMAN))
    assert run.returncode == 2 and "not a saved scorecard" in run.stderr


def test_scoring_data_without_the_models_columns_is_refused(
    card: Scorecard, tmp_path: Path
) -> None:
    model = tmp_path / "m"
    card.save(model)
    partial = read_table(GERMAN)[["age_in_years", "creditability"]]
    partial.to_csv(tmp_path / "partial.csv", index=False)
    run = ledger_cli(
        "credit", "score", "--model", str(model), "--data", str(tmp_path / "partial.csv")
    )
    assert run.returncode == 2 and "lacks the model's columns" in run.stderr, run.stderr

"""Nightly re-scoring with Dask on a 2-worker LocalCluster equals the single-process result."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ledger.credit import synthetic
from ledger.credit.rescore import local_cluster, rescore, score_table
from ledger.credit.scorecard import Scorecard, labelled
from tests.test_cli import ledger_cli


def test_dask_rescoring_equals_one_process(tmp_path: Path) -> None:
    truth = synthetic.plan(300, 900, 60, 5)
    table = synthetic.features_table(truth, synthetic.sales(truth, 900, 60, 5), 60)
    card = Scorecard.train(labelled(table, "defaulted", "yes"))
    features = table.drop(columns=["defaulted"])
    single = score_table(card, features)
    with local_cluster(2) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        spread = rescore(client, card, features, partition_rows=70)  # 5 partitions
    pd.testing.assert_frame_equal(spread, single, check_exact=True)
    assert (single.top_reason != "").any() and single.score.nunique() > 50

    card.save(tmp_path / "m")
    features.to_csv(tmp_path / "borrowers.csv", index=False)
    run = ledger_cli(
        "credit", "rescore", "--model", str(tmp_path / "m"), "--data",
        str(tmp_path / "borrowers.csv"), "--out", str(tmp_path / "scores.csv"),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    written = pd.read_csv(tmp_path / "scores.csv").fillna("")
    assert len(written) == len(features)
    assert (written.score.round(6) == single.score.round(6).to_numpy()).all()

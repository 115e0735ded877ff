"""The wallet tests' ``world`` (a ledger with two operators, behind the API) for credit tests,
and a scorecard to decide with."""

from pathlib import Path

import pytest

from ledger.credit import synthetic
from ledger.credit.scorecard import Scorecard, labelled
from tests.test_wallets import world  # noqa: F401


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scorecard trained on a synthetic pilot as old as the test shops (60 days), so that
    their features compare."""
    truth = synthetic.plan(600, 1800, 60, 3)
    table = synthetic.features_table(truth, synthetic.sales(truth, 1800, 60, 3), 60)
    path = tmp_path_factory.mktemp("credit") / "model"
    Scorecard.train(labelled(table, "defaulted", "yes")).save(path)
    return path

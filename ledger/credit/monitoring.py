"""Fairness and drift: what a credit model's audit looks at besides its ranking power.

- **Fairness** (fairlearn): approval rates, and approval rates among applicants who turned out
  good and bad, per group of a protected attribute, with the demographic-parity difference (the
  largest gap in approval rates) and the equalized-odds difference (the largest gap in either
  rate among good or among bad applicants). Protected attributes are kept out of the model and
  used only here. Leaving an attribute out does not make a model fair: other characteristics can
  stand in for it, which is why the gaps are measured rather than assumed away.
- **Drift**: the population stability index between a baseline population (the one the model
  was built on) and a current one, per characteristic over the scorecard's own bins and on the
  score over the baseline's score deciles. By the usual rule of thumb, below 0.1 is stable, 0.1
  to 0.25 is a moderate shift, and above 0.25 is a shift that calls for a look at the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd

from ledger.credit.scorecard import CreditDataError, Scorecard, quiet

PSI_FLOOR: Final = 1e-4
"""Share used for an empty bin, so that its term stays finite."""
PSI_MODERATE: Final = 0.1
PSI_SIGNIFICANT: Final = 0.25
SCORE_BINS: Final = 10


# -- fairness ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Protected:
    """A protected attribute: a column, split at ``threshold`` when it is a number."""

    column: str
    threshold: float | None = None

    @classmethod
    def parse(cls, text: str) -> Protected:
        """``COLUMN`` (groups are its values) or ``COLUMN:THRESHOLD`` (below / at or above)."""
        column, sep, threshold = text.partition(":")
        if not column:
            raise CreditDataError(f"name a protected column, not {text!r}")
        if not sep:
            return cls(column)
        try:
            return cls(column, float(threshold))
        except ValueError:
            raise CreditDataError(f"{text!r}: the threshold must be a number") from None

    def groups(self, frame: pd.DataFrame) -> pd.Series:
        if self.column not in frame.columns:
            raise CreditDataError(f"no protected column {self.column!r} in the data")
        values = frame[self.column]
        if self.threshold is None:
            return values.astype(str)
        if not pd.api.types.is_numeric_dtype(values):
            raise CreditDataError(f"{self.column!r} is not numeric: it cannot be split at a number")
        t = f"{self.threshold:g}"
        return pd.Series(np.where(values < self.threshold, f"< {t}", f">= {t}"), index=frame.index)


def fairness(
    approved: np.ndarray, bad: np.ndarray, groups: pd.Series
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per group: applicants, approval rate, approval rate among good and among bad applicants;
    and the demographic-parity and equalized-odds differences (0 is parity)."""
    from fairlearn.metrics import (
        MetricFrame,
        count,
        demographic_parity_difference,
        equalized_odds_difference,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )

    good = 1 - np.asarray(bad, dtype=int)  # "positive" = a good outcome, approved = predicted
    approve = np.asarray(approved, dtype=int)
    frame = MetricFrame(
        metrics={
            "applicants": count,
            "approval rate": selection_rate,
            "approved among good": true_positive_rate,
            "approved among bad": false_positive_rate,
        },
        y_true=good,
        y_pred=approve,
        sensitive_features=groups.to_numpy(),
    )
    table = frame.by_group.reset_index().rename(columns={"sensitive_feature_0": "group"})
    table["applicants"] = table["applicants"].astype(int)
    gaps = {
        "demographic_parity_difference": float(
            demographic_parity_difference(good, approve, sensitive_features=groups.to_numpy())
        ),
        "equalized_odds_difference": float(
            equalized_odds_difference(good, approve, sensitive_features=groups.to_numpy())
        ),
    }
    return table, gaps


# -- drift ----------------------------------------------------------------------------------


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """Population stability index of two distributions over the same bins (counts or shares):
    sum over bins of (actual - expected) * ln(actual / expected)."""
    e = np.asarray(expected, dtype=float)
    a = np.asarray(actual, dtype=float)
    if e.shape != a.shape or e.ndim != 1 or len(e) == 0:
        raise ValueError("two distributions over the same bins are needed")
    if e.sum() <= 0 or a.sum() <= 0 or (e < 0).any() or (a < 0).any():
        raise ValueError("bin counts must be non-negative and not all zero")
    e = np.maximum(e / e.sum(), PSI_FLOOR)
    a = np.maximum(a / a.sum(), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def stability(value: float) -> str:
    if value < PSI_MODERATE:
        return "stable"
    return "moderate shift" if value < PSI_SIGNIFICANT else "significant shift"


def _counts(codes: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(codes.astype(int), minlength=n)[:n]


def drift(card: Scorecard, baseline: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """PSI per characteristic the model uses (over its bins) and on the score (over the
    baseline's score deciles), with a verdict for each."""
    rows: list[dict[str, Any]] = []
    with quiet():
        before = card.model.binning_process_.transform(
            card.select(baseline), metric="indices", metric_special="empirical",
            metric_missing="empirical",
        )  # fmt: skip
        after = card.model.binning_process_.transform(
            card.select(current), metric="indices", metric_special="empirical",
            metric_missing="empirical",
        )  # fmt: skip
    for name in card.kept():
        n = int(max(before[name].max(), after[name].max())) + 1
        value = psi(_counts(before[name].to_numpy(), n), _counts(after[name].to_numpy(), n))
        rows.append({"characteristic": name, "psi": value, "verdict": stability(value)})
    old, new = card.score(baseline), card.score(current)
    edges = np.unique(np.quantile(old, np.linspace(0, 1, SCORE_BINS + 1))[1:-1])
    value = psi(
        np.bincount(np.searchsorted(edges, old, side="right"), minlength=len(edges) + 1),
        np.bincount(np.searchsorted(edges, new, side="right"), minlength=len(edges) + 1),
    )
    rows.append({"characteristic": "(score)", "psi": value, "verdict": stability(value)})
    return pd.DataFrame(rows)

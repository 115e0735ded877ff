"""How well a scorecard ranks applicants, measured honestly: stratified k-fold cross-validation
repeated over several seeds, the scorecard beside a gradient-boosting baseline on the same folds.

Metrics on each held-out fold (the bad outcome is the positive class):
- **AUC**: the chance that a random bad applicant scores worse than a random good one;
- **Gini** = 2 AUC - 1;
- **KS**: the largest gap between the score distributions of bad and good applicants.
Reported as the mean and standard deviation over all folds of all seeds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np
import pandas as pd

from ledger.credit.scorecard import Labelled, Scorecard

FOLDS: Final = 5
SEEDS: Final = (0, 1, 2)


def ks_statistic(bad: np.ndarray, risk: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between the risk of bad and of good applicants."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(risk[bad == 1], risk[bad == 0]).statistic)


def baseline_frame(features: pd.DataFrame) -> pd.DataFrame:
    """The features as the gradient-boosting baseline takes them: text columns as categories
    (one category set for the whole table, so that every fold agrees on the codes), without
    the columns holding one value or none (the scorecard drops them too)."""
    out = features[[c for c in features.columns if features[c].nunique(dropna=True) > 1]].copy()
    for column in out.columns:
        if not pd.api.types.is_numeric_dtype(out[column]):
            out[column] = out[column].astype("category")
    return out


def evaluate(
    data: Labelled,
    *,
    folds: int = FOLDS,
    seeds: Sequence[int] = SEEDS,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Cross-validate the scorecard and the baseline; one dict of figures (see the module)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    if min(int(data.bad.sum()), int(len(data.bad) - data.bad.sum())) < folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {folds} of each outcome")
    boosted = baseline_frame(data.features)
    figures: dict[str, list[float]] = {k: [] for k in ("auc", "ks", "base_auc", "base_ks")}
    total, done = folds * len(seeds), 0
    for seed in seeds:
        splits = StratifiedKFold(folds, shuffle=True, random_state=seed)
        for train, test in splits.split(data.features, data.bad):
            fold = Labelled(data.features.iloc[train], data.bad[train], data.target, data.bad_value)
            card = Scorecard.train(fold, seed=seed)
            truth = data.bad[test]
            risk = card.probability_bad(data.features.iloc[test])
            figures["auc"].append(float(roc_auc_score(truth, risk)))
            figures["ks"].append(ks_statistic(truth, risk))
            baseline = HistGradientBoostingClassifier(
                categorical_features="from_dtype", random_state=seed
            )
            baseline.fit(boosted.iloc[train], data.bad[train])
            base_risk = baseline.predict_proba(boosted.iloc[test])[:, 1]
            figures["base_auc"].append(float(roc_auc_score(truth, base_risk)))
            figures["base_ks"].append(ks_statistic(truth, base_risk))
            done += 1
            if progress is not None:
                progress(done, total)
    gini = [2 * a - 1 for a in figures["auc"]]
    return {
        "applicants": len(data.bad),
        "bad_rate": float(data.bad.mean()),
        "folds": folds,
        "seeds": list(seeds),
        "auc_mean": statistics.fmean(figures["auc"]),
        "auc_std": statistics.stdev(figures["auc"]),
        "ks_mean": statistics.fmean(figures["ks"]),
        "ks_std": statistics.stdev(figures["ks"]),
        "gini_mean": statistics.fmean(gini),
        "gini_std": statistics.stdev(gini),
        "baseline": "sklearn HistGradientBoostingClassifier (defaults), same folds",
        "baseline_auc_mean": statistics.fmean(figures["base_auc"]),
        "baseline_auc_std": statistics.stdev(figures["base_auc"]),
        "baseline_ks_mean": statistics.fmean(figures["base_ks"]),
        "auc_per_fold": figures["auc"],
        "baseline_auc_per_fold": figures["base_auc"],
    }

"""The model card: one command builds a scorecard and writes what a reviewer needs to judge it.

``ledger credit card`` keeps the protected attributes out of the model, cross-validates it (see
``evaluate``), trains it on 70 % of the applicants and tests it on the other 30 %, and writes
to one folder:
- ``model_card.md``: data and consent basis, intended use, metrics with their spread, the
  fairness table, stability, limitations;
- ``roc.png``, ``scores.png`` and ``calibration.png``;
- ``model`` and ``model.points.csv`` (the scorecard the card describes);
- ``report.json``: every figure in the card.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from ledger.credit.evaluate import baseline_frame, evaluate, ks_statistic
from ledger.credit.monitoring import Protected, drift, fairness
from ledger.credit.scorecard import (
    PDO,
    SCORE_ODDS,
    SCORE_POINTS,
    CreditDataError,
    Labelled,
    Scorecard,
)

HOLDOUT: Final = 0.3
SEED: Final = 0


def _without(data: Labelled, columns: Sequence[str]) -> Labelled:
    return Labelled(
        data.features.drop(columns=list(columns)), data.bad, data.target, data.bad_value
    )


def build(
    data: Labelled,
    protected: Sequence[Protected],
    out: Path,
    *,
    source: str,
    basis: str,
    command: str,
    cutoff: float | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Build the scorecard and write its card to ``out`` (created); return the figures."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    if not protected:
        raise CreditDataError("name at least one protected attribute to report fairness on")
    groups = {p.column: p.groups(data.features) for p in protected}
    model_data = _without(data, [p.column for p in protected])
    out.mkdir(parents=True, exist_ok=True)

    progress("cross-validating (5 folds x 3 seeds)")
    cv = evaluate(model_data)
    progress("training on 70 %, testing on 30 %")
    train, test = train_test_split(
        np.arange(len(data.bad)), test_size=HOLDOUT, stratify=data.bad, random_state=SEED
    )
    part = Labelled(model_data.features.iloc[train], data.bad[train], data.target, data.bad_value)
    card = Scorecard.train(part, seed=SEED)
    card.save(out / "model")
    x_test, y_test = model_data.features.iloc[test], data.bad[test]
    train_scores = card.score(model_data.features.iloc[train])
    scores, risk = card.score(x_test), card.probability_bad(x_test)
    if cutoff is None:  # approve as many as the training data's share of good applicants
        cutoff = float(np.quantile(train_scores, data.bad[train].mean()))
    approved = scores >= cutoff
    boosted = baseline_frame(model_data.features)
    baseline = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=SEED)
    baseline.fit(boosted.iloc[train], data.bad[train])
    base_risk = baseline.predict_proba(boosted.iloc[test])[:, 1]

    progress("fairness, stability and plots")
    fair = {}
    for p in protected:
        table, gaps = fairness(approved, y_test, groups[p.column].iloc[test])
        fair[p.column] = {"groups": table.to_dict("records"), **gaps}
    stable = drift(card, model_data.features.iloc[train], x_test)
    holdout = {
        "applicants": len(test),
        "auc": float(roc_auc_score(y_test, risk)),
        "ks": ks_statistic(y_test, risk),
        "baseline_auc": float(roc_auc_score(y_test, base_risk)),
        "cutoff": cutoff,
        "approval_rate": float(approved.mean()),
        "bad_rate_approved": float(y_test[approved].mean()) if approved.any() else None,
    }
    _plots(out, y_test, risk, base_risk, scores, cutoff)
    report = {
        "source": source,
        "basis": basis,
        "command": command,
        "generated": datetime.date.today().isoformat(),
        "target": data.target,
        "bad_value": data.bad_value,
        "applicants": len(data.bad),
        "bad_rate": float(data.bad.mean()),
        "protected": [p.column for p in protected],
        "characteristics": card.characteristics,
        "kept": card.kept(),
        "cross_validation": {k: v for k, v in cv.items() if not k.endswith("per_fold")},
        "holdout": holdout,
        "fairness": fair,
        "stability": stable.to_dict("records"),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (out / "model_card.md").write_text(_markdown(report))
    return report


def _plots(
    out: Path,
    bad: np.ndarray,
    risk: np.ndarray,
    base_risk: np.ndarray,
    scores: np.ndarray,
    cutoff: float,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, r in (("scorecard", risk), ("gradient boosting", base_risk)):
        fpr, tpr, _ = roc_curve(bad, r)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(bad, r):.3f})")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set(xlabel="share of good applicants flagged", ylabel="share of bad applicants flagged")
    ax.set_title("ROC curve, held-out applicants")
    ax.legend(loc="lower right")
    _save(fig, out / "roc.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    edges = [float(e) for e in np.linspace(scores.min(), scores.max(), 30)]
    ax.hist(scores[bad == 0], bins=edges, alpha=0.6, label="turned out good")
    ax.hist(scores[bad == 1], bins=edges, alpha=0.6, label="turned out bad")
    ax.axvline(cutoff, color="black", linestyle="--", label=f"cut-off {cutoff:.0f}")
    ax.set(xlabel="score", ylabel="applicants")
    ax.set_title("Scores by outcome, held-out applicants")
    ax.legend()
    _save(fig, out / "scores.png")

    fig, ax = plt.subplots(figsize=(5, 5))
    observed, predicted = calibration_curve(bad, risk, n_bins=8, strategy="quantile")
    ax.plot(predicted, observed, marker="o", label="scorecard")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect calibration")
    ax.set(xlabel="predicted probability of bad", ylabel="observed share bad")
    ax.set_title("Calibration, held-out applicants")
    ax.legend(loc="upper left")
    _save(fig, out / "calibration.png")


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.1%}"


def _markdown(r: dict[str, Any]) -> str:
    cv, ho = r["cross_validation"], r["holdout"]
    dropped = [c for c in r["characteristics"] if c not in r["kept"]]
    lines = [
        f"# Model card: credit scorecard on `{r['source']}`",
        "",
        f"Generated {r['generated']}; every figure is also in `report.json`. Regenerate the "
        "card, its plots and its model with:",
        "",
        "```bash",
        r["command"],
        "```",
        "",
        "## Intended use",
        "",
        "Ranks applicants for small, short loans by their chance of turning bad, and explains "
        "every decline with the characteristics that cost the most points. A decision aid with "
        "human review on request, not a sole basis for refusing credit. Not for populations "
        "unlike the one it was built on (see Stability), and not for pricing insurance, "
        "employment or housing.",
        "",
        "## Data and consent basis",
        "",
        f"- Source: `{r['source']}`: {r['applicants']:,} applicants, "
        f"{_pct(r['bad_rate'])} bad (`{r['target']}` = `{r['bad_value']}`).",
        f"- Basis for using it: {r['basis']}",
        f"- Protected attributes, kept out of the model and used only for the fairness audit: "
        f"{', '.join(f'`{p}`' for p in r['protected'])}.",
        "",
        "## The model",
        "",
        f"Weight-of-evidence bins (optbinning; monotonic, each at least 5 % of applicants), "
        f"logistic regression, scaled to {SCORE_POINTS} points at {SCORE_ODDS}:1 good:bad odds "
        f"and {PDO} points to double the odds. A score is the sum of its points; the points "
        "table is `model.points.csv`.",
        "",
        f"- Characteristics used ({len(r['kept'])}): {', '.join(r['kept'])}.",
        f"- Dropped for carrying too little information (IV < 0.02): "
        f"{', '.join(dropped) if dropped else 'none'}.",
        "",
        "## Performance",
        "",
        f"Stratified {cv['folds']}-fold cross-validation repeated with seeds {cv['seeds']}: mean "
        "± standard deviation over the held-out folds, and the gradient-boosting baseline "
        "(scikit-learn's `HistGradientBoostingClassifier`, defaults) on the same folds.",
        "",
        "| model | AUC | KS | Gini |",
        "| --- | ---: | ---: | ---: |",
        f"| scorecard | {cv['auc_mean']:.3f} ± {cv['auc_std']:.3f} | {cv['ks_mean']:.3f} ± "
        f"{cv['ks_std']:.3f} | {cv['gini_mean']:.3f} ± {cv['gini_std']:.3f} |",
        f"| gradient boosting | {cv['baseline_auc_mean']:.3f} ± {cv['baseline_auc_std']:.3f} "
        f"| {cv['baseline_ks_mean']:.3f} | |",
        "",
        f"The model in this folder was trained on 70 % and tested on the other "
        f"{ho['applicants']} applicants: AUC {ho['auc']:.3f} (baseline {ho['baseline_auc']:.3f}), "
        f"KS {ho['ks']:.3f}. At the cut-off of {ho['cutoff']:.0f} points it approves "
        f"{_pct(ho['approval_rate'])}, of whom {_pct(ho['bad_rate_approved'])} turned out bad.",
        "",
        "![ROC curve](roc.png) ![Calibration](calibration.png)",
        "",
        "![Scores by outcome](scores.png)",
        "",
        "## Fairness",
        "",
        'Approval at the cut-off on the held-out applicants, per group. "Approved among good" '
        'and "among bad" are the approval rates of applicants who turned out good and bad. '
        "Demographic parity difference: the largest gap between groups in approval rate. "
        "Equalized odds difference: the largest gap in either of the other two rates. 0 is "
        "parity. Leaving a protected attribute out of the model does not make it fair: other "
        "characteristics can stand in for it, so the gaps below are what to judge by.",
        "",
    ]
    for column, f in r["fairness"].items():
        lines += [
            f"### `{column}`",
            "",
            "| group | applicants | approval rate | approved among good | approved among bad |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for g in f["groups"]:
            lines.append(
                f"| {g['group']} | {g['applicants']} | {_pct(g['approval rate'])} | "
                f"{_pct(g['approved among good'])} | {_pct(g['approved among bad'])} |"
            )
        lines += [
            "",
            f"Demographic parity difference {f['demographic_parity_difference']:.3f}; "
            f"equalized odds difference {f['equalized_odds_difference']:.3f}.",
            "",
        ]
    lines += [
        "## Stability",
        "",
        "Population stability index (PSI) between the training and the held-out applicants, "
        "per characteristic over the model's bins and on the score over the training deciles "
        "(< 0.1 stable, 0.1–0.25 a moderate shift, > 0.25 a shift that calls for a look). "
        "`ledger credit drift` computes the same for any later population.",
        "",
        "| characteristic | PSI | verdict |",
        "| --- | ---: | --- |",
        *[f"| {s['characteristic']} | {s['psi']:.3f} | {s['verdict']} |" for s in r["stability"]],
        "",
        "## Limitations",
        "",
        "- Figures come from the data named above; a different population needs its own card.",
        "- Small groups give noisy fairness figures: read them with the applicant counts.",
        "- The scorecard is additive over its bins: it cannot use interactions between "
        "characteristics that a model like the baseline can; compare their AUCs above.",
        "",
    ]
    return "\n".join(lines)

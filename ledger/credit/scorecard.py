"""The credit scorecard: weight-of-evidence bins, logistic regression, points.

Generic over tabular data: any CSV with a target column works, the German credit data and the
ledger's cash-flow features alike. The steps are the credit industry's:

1. **Binning** (optbinning's ``BinningProcess``): each characteristic is cut into bins by
   optimal binning, each bin at least ``MIN_BIN_SIZE`` of the applicants, numerical ones with a
   monotonic bad rate (ascending or descending, chosen by the data), categorical ones grouped by
   bad rate. Characteristics with an information value below ``MIN_IV`` are dropped.
2. **Logistic regression** on the weights of evidence, with the sign check: a characteristic
   whose coefficient came out with the wrong sign (more evidence of a good outcome costing
   points, which happens when characteristics are strongly correlated) is dropped and the model
   refitted, so that every points table reads the right way round.
3. **Scaling to points** (``pdo_odds``): ``SCORE_POINTS`` at good:bad odds of ``SCORE_ODDS``:1,
   ``PDO`` more points for each doubling of the odds. A higher score is a better applicant.
   An applicant's score is the sum of the points of the bins it falls in.

Reason codes name the characteristics that cost an applicant the most points against the best
bin of each, in words a borrower can act on ("Credit history: no credits taken / all paid back
duly"), never "score too low".
"""

from __future__ import annotations

import contextlib
import logging
import math
import pickle
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

SCORE_POINTS: Final = 600
SCORE_ODDS: Final = 50
PDO: Final = 20
MIN_BIN_SIZE: Final = 0.05
MAX_BINS: Final = 6
MIN_IV: Final = 0.02
REASONS_MAX: Final = 4
MODEL_FORMAT: Final = "ledger-scorecard/1"


# optbinning imports cvxpy (through ropwr), which logs a traceback for every optional solver
# that fails to load (highspy often does); optbinning's own solvers are OR-Tools'. Drop those.
logging.getLogger("__cvxpy__").addFilter(lambda r: "importing solver" not in r.getMessage())


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """optbinning's deprecation warnings (newer pandas) are not ours to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"optbinning(\..*)?")
        yield


class CreditDataError(ValueError):
    """The data cannot be used as asked (missing column, no bad outcomes...)."""


@dataclass(frozen=True, slots=True)
class Labelled:
    """Applicants' characteristics and whether each turned out bad (1) or good (0)."""

    features: pd.DataFrame
    bad: np.ndarray
    target: str
    bad_value: str


def read_table(path: Path) -> pd.DataFrame:
    """A CSV file as text and numbers (columns pandas reads as numbers stay numbers)."""
    if not path.is_file():
        raise CreditDataError(f"no such file: {path}")
    try:
        frame = pd.read_csv(path, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise CreditDataError(f"{path} is not a readable CSV file: {exc}") from None
    if frame.empty:
        raise CreditDataError(f"{path} has no rows")
    return frame


def labelled(frame: pd.DataFrame, target: str, bad_value: str) -> Labelled:
    """Split a table into characteristics and outcomes: rows whose ``target`` equals
    ``bad_value`` (compared as text, so ``--bad 1`` matches 1 and "1") are the bad ones."""
    if target not in frame.columns:
        columns = ", ".join(map(str, frame.columns[:12]))
        raise CreditDataError(f"no column {target!r}; the columns are: {columns}")
    outcome = frame[target]
    if outcome.isna().any():
        raise CreditDataError(f"{int(outcome.isna().sum())} rows have no {target!r}")
    text = outcome.astype(str).str.strip()
    bad = (text == str(bad_value).strip()).to_numpy(dtype=int)
    values = sorted(set(text))
    if bad.sum() == 0:
        raise CreditDataError(f"no row has {target} == {bad_value!r}; it holds {values[:10]}")
    if bad.sum() == len(bad):
        raise CreditDataError(f"every row has {target} == {bad_value!r}: nothing to tell apart")
    if len(values) != 2:
        raise CreditDataError(f"{target!r} must hold two outcomes, not {len(values)}")
    features = frame.drop(columns=[target])
    if features.shape[1] == 0:
        raise CreditDataError("there is no characteristic besides the target")
    return Labelled(features, bad, target, str(bad_value))


def _categorical(features: pd.DataFrame) -> list[str]:
    return [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]


@dataclass(frozen=True, slots=True)
class Reason:
    """One characteristic that cost an applicant points against its best bin."""

    characteristic: str
    value: str
    """The applicant's bin, as the points table names it."""
    points_lost: float

    def text(self) -> str:
        name = self.characteristic.replace("_", " ").capitalize()
        return f"{name}: {self.value} ({self.points_lost:.0f} points below the best)"


@dataclass
class Scorecard:
    """A trained scorecard: the fitted optbinning model plus what it was trained for."""

    model: Any
    """``optbinning.Scorecard``, fitted."""
    target: str
    bad_value: str
    characteristics: list[str]
    """The input columns the model reads: the CSV's columns besides the target, less those
    with a single value or none."""
    format: str = MODEL_FORMAT
    _best: dict[str, float] = field(default_factory=dict, repr=False)
    _bins: dict[str, tuple[list[str], list[float]]] | None = field(default=None, repr=False)

    # -- training -----------------------------------------------------------------------------

    @classmethod
    def train(cls, data: Labelled, *, seed: int = 0) -> Scorecard:
        """Bin, fit and scale (see the module's docstring)."""
        frame = data.features.copy()
        frame.columns = [str(c) for c in frame.columns]
        names = [c for c in frame.columns if frame[c].nunique(dropna=True) > 1]
        if not names:
            raise CreditDataError("every characteristic is empty or constant: nothing to score")
        frame = frame[names]  # a column with one value or none tells no applicant apart
        model = _fit(frame, data.bad, names, seed)
        for _ in range(len(names)):  # the sign check: more evidence of good must never cost
            kept = [str(n) for n in model.binning_process_.get_support(names=True)]
            wrong = {n for n, c in zip(kept, model.estimator_.coef_[0], strict=True) if c > 0}
            if not wrong:
                break
            names = [n for n in names if n not in wrong]
            if not names:
                raise CreditDataError("no characteristic keeps a consistent sign: nothing to score")
            model = _fit(frame, data.bad, names, seed)
        return cls(model, data.target, data.bad_value, names)

    # -- using it ------------------------------------------------------------------------------

    def select(self, features: pd.DataFrame) -> pd.DataFrame:
        """The model's columns of ``features`` (refused if any is missing)."""
        missing = [c for c in self.characteristics if c not in features.columns]
        if missing:
            raise CreditDataError(f"the data lacks the model's columns: {', '.join(missing)}")
        return features[self.characteristics]

    def score(self, features: pd.DataFrame) -> np.ndarray:
        """Each applicant's score: the sum of its points."""
        with quiet():
            return np.asarray(self.model.score(self.select(features)), dtype=float)

    def probability_bad(self, features: pd.DataFrame) -> np.ndarray:
        with quiet():
            risk = self.model.predict_proba(self.select(features))[:, 1]
        return np.asarray(risk, dtype=float)

    def points(self, features: pd.DataFrame) -> pd.DataFrame:
        """Points per applicant and characteristic (only the characteristics the model kept)."""
        with quiet():
            points = pd.DataFrame(self.model.transform(self.select(features)))
        points.columns = [str(c) for c in points.columns]
        return points.set_axis(features.index)

    def table(self) -> pd.DataFrame:
        """The points table: characteristic, bin, points (and the bin's counts and WoE)."""
        columns = ["Variable", "Bin", "Count", "Event rate", "WoE", "Points"]
        with quiet():
            table = self.model.table(style="detailed")
        table = table[[c for c in columns if c in table.columns]].reset_index(drop=True)
        table["Bin"] = [_bin_text(b) for b in table["Bin"]]
        return table

    def kept(self) -> list[str]:
        """The characteristics the model uses (the others carried too little information)."""
        return [str(v) for v in self.model.binning_process_.get_support(names=True)]

    def best_points(self) -> dict[str, float]:
        if not self._best:
            with quiet():
                table = self.model.table(style="summary")
            self._best = {
                str(k): float(v) for k, v in table.groupby("Variable").Points.max().items()
            }
        return self._best

    def reasons(self, features: pd.DataFrame, limit: int = REASONS_MAX) -> list[list[Reason]]:
        """Per applicant, up to ``limit`` characteristics that cost the most points against
        their best bin, largest loss first (none where an applicant is in every best bin)."""
        return self.explain(features, limit)[1]

    def explain(
        self, features: pd.DataFrame, limit: int = REASONS_MAX
    ) -> tuple[np.ndarray, list[list[Reason]]]:
        """Scores and reasons in one pass: each applicant's bin per characteristic (one
        transform, as ``score`` does it), its points and its losses against the best bins."""
        frame = self.select(features)
        with quiet():
            rows = self.model.binning_process_.transform(
                frame, metric="indices", metric_special="empirical", metric_missing="empirical"
            )
        if self._bins is None:
            table = self.table()
            self._bins = {
                str(v): (list(g.Bin), [float(p) for p in g.Points])
                for v, g in table.groupby("Variable", sort=False)
            }
        best = self.best_points()
        kept = self.kept()
        indices = rows[kept].to_numpy(dtype=int)
        scores = np.full(len(frame), float(self.model.intercept_))
        out: list[list[Reason]] = []
        for i in range(len(frame)):
            losses = []
            for j, name in enumerate(kept):
                names, points = self._bins[name]
                gained = points[indices[i, j]]
                scores[i] += gained
                if best[name] - gained > 1e-9:
                    losses.append(Reason(name, names[indices[i, j]], best[name] - gained))
            losses.sort(key=lambda r: -r.points_lost)
            out.append(losses[:limit])
        return scores, out

    # -- files ---------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """The model (a pickle, read back only by ``load``) and its points table beside it
        (``<path>.points.csv``)."""
        path.write_bytes(pickle.dumps(self))
        self.table().to_csv(points_table_path(path), index=False)

    @classmethod
    def load(cls, path: Path) -> Scorecard:
        """A model saved by ``save``. Pickles run code when read: load only your own models."""
        if not path.is_file():
            raise CreditDataError(f"no such model file: {path}")
        try:
            model = pickle.loads(path.read_bytes())
        except Exception as exc:
            raise CreditDataError(f"{path} is not a saved scorecard: {exc}") from None
        if not isinstance(model, cls) or model.format != MODEL_FORMAT:
            raise CreditDataError(f"{path} is not a saved scorecard ({MODEL_FORMAT})")
        return model


def _fit(frame: pd.DataFrame, bad: np.ndarray, names: list[str], seed: int) -> Any:
    from optbinning import BinningProcess
    from optbinning import Scorecard as OptScorecard
    from sklearn.linear_model import LogisticRegression

    categorical = _categorical(frame[names])
    binning = BinningProcess(
        variable_names=names,
        categorical_variables=categorical,
        min_bin_size=MIN_BIN_SIZE,
        max_n_bins=MAX_BINS,
        selection_criteria={"iv": {"min": MIN_IV}},
        binning_fit_params={
            n: {"monotonic_trend": "auto_asc_desc"} for n in names if n not in categorical
        },
    )
    model = OptScorecard(
        binning_process=binning,
        estimator=LogisticRegression(max_iter=1000, random_state=seed),
        scaling_method="pdo_odds",
        scaling_method_params={"pdo": PDO, "odds": SCORE_ODDS, "scorecard_points": SCORE_POINTS},
    )
    with quiet():
        model.fit(frame[names], bad)
    return model


def points_table_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".points.csv")


_INTERVAL: Final = re.compile(r"^[\[(]\s*(-inf|[-\d.e+]+),\s*(inf|[-\d.e+]+)\s*[\])]$")


def _bin_text(value: object) -> str:
    """A bin in words: categories joined by " / ", intervals as "below 25.5", "25.5 to under
    34.5" or "34.5 or more" (optbinning's numerical bins are [low, high))."""
    if not isinstance(value, str) and hasattr(value, "__iter__"):
        return " / ".join(str(v) for v in value)
    text = str(value)
    interval = _INTERVAL.match(text)
    if interval is None:
        return text
    low, high = interval.groups()
    if low == "-inf":
        return f"below {float(high):g}"
    if high == "inf":
        return f"{float(low):g} or more"
    return f"{float(low):g} to under {float(high):g}"


def probability_from_score(score: float) -> float:
    """The inverse of ``expected_score``: the chance of turning bad at a score."""
    odds = SCORE_ODDS * 2 ** ((score - SCORE_POINTS) / PDO)
    return 1 / (1 + odds)


def expected_score(probability_bad: float) -> float:
    """The score the scaling gives to a probability of turning bad:
    ``SCORE_POINTS + PDO / ln 2 * ln(odds / SCORE_ODDS)`` with odds = good:bad."""
    odds = (1 - probability_bad) / probability_bad
    return SCORE_POINTS + PDO / math.log(2) * math.log(odds / SCORE_ODDS)

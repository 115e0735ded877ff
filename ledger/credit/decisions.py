"""Credit decisions in one step, explained, and open to human review.

A lender applies for a borrower under a live consent: the borrower's features are read (and the
read journaled, see ``consent``), scored by the lender's scorecard (``LEDGER_CREDIT_MODEL``, a
model written by ``ledger credit train`` on the same feature names, e.g. from
``ledger credit synth``), and the policy decides:

- below ``cutoff`` points: declined, with the characteristics that cost the most points;
- otherwise approved up to the smallest of the amount asked, a third of the last year's takings
  and ``limit_max_fen``, at an annual rate and term set by the score band; declined if that
  limit is under ``limit_min_fen`` (the reason says so).

Every decision is a journal record on the borrower's wallet (``credit_decision``). The borrower
may contest it (``credit_decision_contested``, signed by its wallet) and a reviewer of the
lender may override it (``credit_decision_reviewed``); the application's state is the fold of
those records.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pandas as pd

from ledger.credit.consent import PURPOSE_CREDIT, ConsentError, CreditData
from ledger.credit.scorecard import CreditDataError, Scorecard, probability_from_score

DECIDED: Final = "credit_decision"
CONTESTED: Final = "credit_decision_contested"
REVIEWED: Final = "credit_decision_reviewed"
MODEL_ENV: Final = "LEDGER_CREDIT_MODEL"


@dataclass(frozen=True, slots=True)
class Policy:
    cutoff: float = 530.0
    """About 4.4:1 good:bad odds, an 18 % chance of turning bad."""
    takings_share: float = 1 / 3
    limit_min_fen: int = 10_000
    limit_max_fen: int = 5_000_000
    bands: tuple[tuple[float, float, int], ...] = ((600.0, 0.0435, 180), (560.0, 0.0725, 120))
    """(minimum score, annual rate, term in days), best first; below all: the last rate below."""
    floor_band: tuple[float, int] = (0.1095, 90)

    def terms(self, score: float) -> tuple[float, int]:
        for minimum, rate, term in self.bands:
            if score >= minimum:
                return rate, term
        return self.floor_band


class Decisions:
    def __init__(self, credit: CreditData, policy: Policy | None = None) -> None:
        self.credit = credit
        self.policy = policy or Policy()
        self._model: tuple[str, Scorecard] | None = None

    def model(self) -> Scorecard:
        """The scorecard named by ``LEDGER_CREDIT_MODEL`` (loaded once per path)."""
        path = os.environ.get(MODEL_ENV, "")
        if not path:
            raise ConsentError(
                503, "credit_model_missing",
                f"no scorecard: set {MODEL_ENV} to a model from `ledger credit train`",
            )  # fmt: skip
        if self._model is None or self._model[0] != path:
            try:
                self._model = (path, Scorecard.load(Path(path)))
            except CreditDataError as exc:
                raise ConsentError(503, "credit_model_invalid", str(exc)) from None
        return self._model[1]

    async def apply(
        self, borrower: int, consent_id: int, lender: str, amount_fen: int
    ) -> dict[str, Any]:
        model = self.model()
        read = await self.credit.features(borrower, consent_id, lender, PURPOSE_CREDIT)
        features = read["features"]
        missing = [c for c in model.characteristics if c not in features]
        if missing:
            raise ConsentError(
                503, "credit_model_invalid",
                f"the scorecard reads characteristics the ledger does not compute: {missing}",
            )  # fmt: skip
        row = pd.DataFrame([{c: features[c] for c in model.characteristics}], dtype=float)
        scores, explained = model.explain(row)
        score = float(scores[0])
        reasons = [r.text() for r in explained[0]]
        policy = self.policy
        cap = int((features.get("takings_365d") or 0) * policy.takings_share)
        limit = min(amount_fen, cap, policy.limit_max_fen)
        decision: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "borrower": read["borrower"],
            "consent": read["consent"],
            "lender": lender,
            "amount_fen": amount_fen,
            "score": round(score, 1),
            "probability_bad": round(probability_from_score(score), 4),
        }
        if score < policy.cutoff:
            decision |= {"decision": "declined", "reasons": reasons or [_cutoff_reason(policy)]}
        elif limit < policy.limit_min_fen:
            decision |= {
                "decision": "declined",
                "reasons": [
                    f"Takings over the last year allow a loan of at most {cap / 100:.2f} CNY "
                    f"(a third of them), under the smallest loan, "
                    f"{policy.limit_min_fen / 100:.2f} CNY"
                ],
            }
        else:
            rate, term = policy.terms(score)
            decision |= {
                "decision": "approved",
                "limit_fen": limit,
                "annual_rate": rate,
                "term_days": term,
                "reasons": reasons,
            }
        await self.credit.record(borrower, DECIDED, {"application": decision})
        return self.application(borrower, uuid.UUID(decision["id"]).int)

    def application(self, borrower: int, application_id: int) -> dict[str, Any]:
        """The decision, any contest and any review, from the journal."""
        wanted = str(uuid.UUID(int=application_id))
        found: dict[str, Any] | None = None
        for seq, rec in self.credit.records(borrower, frozenset({DECIDED, CONTESTED, REVIEWED})):
            data = rec.data()
            if rec.type == DECIDED:
                decided = data["application"]
                if isinstance(decided, dict) and decided.get("id") == wanted:
                    found = {
                        **decided,
                        "decided_at_ms": rec.timestamp // 1_000_000,
                        "journal_seqs": [seq],
                        "contest": None,
                        "review": None,
                    }
            elif found is not None and data.get("application") == wanted:
                found["journal_seqs"].append(seq)
                key = "contest" if rec.type == CONTESTED else "review"
                found[key] = {k: v for k, v in data.items() if k not in ("wallet", "application")}
        if found is None:
            raise ConsentError(404, "application_not_found", "no such application", "application")
        return found

    async def contest(self, borrower: int, application_id: int, reason: str) -> dict[str, Any]:
        current = self.application(borrower, application_id)
        if current["contest"] is not None:
            raise ConsentError(409, "already_contested", "this decision is already contested")
        payload: dict[str, object] = {"application": current["id"], "reason": reason}
        await self.credit.record(borrower, CONTESTED, payload)
        return self.application(borrower, application_id)

    async def review(
        self,
        borrower: int,
        application_id: int,
        lender: str,
        reviewer: str,
        outcome: str,
        limit_fen: int | None,
        note: str,
    ) -> dict[str, Any]:
        current = self.application(borrower, application_id)
        if current["lender"] != lender:
            raise ConsentError(404, "application_not_found", "no such application", "application")
        if outcome == "approved" and not limit_fen:
            raise ConsentError(422, "limit_required", "an approval names its limit", "limit_fen")
        payload: dict[str, object] = {
            "application": current["id"],
            "reviewer": reviewer,
            "outcome": outcome,
            "limit_fen": limit_fen if outcome == "approved" else None,
            "note": note,
        }
        await self.credit.record(borrower, REVIEWED, payload)
        return self.application(borrower, application_id)


def _cutoff_reason(policy: Policy) -> str:
    return f"Every characteristic is at its best, yet the score is under {policy.cutoff:.0f}"

"""Credit applications through the API: a scorecard trained on the synthetic pilot's features
decides for real merchants of a real ledger; decisions, contests and reviews are journaled."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from ledger.credit.decisions import MODEL_ENV
from tests.credit.test_consent import DAY, features, grant, signed
from tests.test_wallets import START, W, World


def busy_and_quiet(world: World, kind: str = "personal") -> tuple[W, W]:
    """A shop paid 8 times a day for 60 days by 30 regulars, and one paid twice."""
    busy, quiet = world.wallet(1, bank=1, kind=kind), world.wallet(1, bank=1, kind=kind)
    payers = [world.wallet(1, bank=200_000) for _ in range(30)]
    for p in payers:
        world.top_up(p, 200_000)
    for day in range(60):
        world.at(START + (day + 1) * DAY)
        batch = [
            world.payment(payers[(day * 8 + i) % 30], busy.id, 4_000 + 37 * i) for i in range(8)
        ]
        if day in (20, 50):
            batch.append(world.payment(payers[day % 30], quiet.id, 1_200))
        assert {
            r["result"] for r in world.post("/v1/payments/batch", {"payments": batch})["results"]
        } == {"ok"}
    world.at(START + 61 * DAY)
    return busy, quiet


def apply(world: World, w: W, consent: str, amount: int, headers: dict[str, str]) -> object:
    body = {"borrower": w.id, "consent_id": consent, "amount": amount}
    return world.api.post("/v1/credit/applications", json=body, headers=headers)


def test_decisions_contest_and_review(
    world: World, model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy, quiet = busy_and_quiet(world)
    c_busy, c_quiet = grant(world, busy).json()["id"], grant(world, quiet).json()["id"]
    missing = apply(world, busy, c_busy, 100_000, world.op)
    assert missing.status_code == 503 and missing.json()["error"]["code"] == "credit_model_missing"
    monkeypatch.setenv(MODEL_ENV, str(model_file))

    good = apply(world, busy, c_busy, 100_000, world.op)
    assert good.status_code == 201, good.text
    approved = good.json()
    takings = features(world, busy, c_busy, world.op).json()["features"]["takings_365d"]
    assert approved["decision"] == "approved", approved
    assert approved["limit_fen"] == min(100_000, int(takings / 3))
    assert approved["annual_rate"] > 0 and approved["term_days"] > 0

    bad = apply(world, quiet, c_quiet, 100_000, world.op).json()
    assert bad["decision"] == "declined" and bad["score"] < approved["score"]
    assert 1 <= len(bad["reasons"]) <= 4
    assert all("score too low" not in r.lower() for r in bad["reasons"])

    path = f"/v1/credit/borrowers/{quiet.id}/applications/{bad['id']}"
    read = signed(world, quiet, "GET", path)
    assert read.status_code == 200 and read.json()["decision"] == "declined"
    assert len(read.json()["journal_seqs"]) == 1, "the decision is a journal record"
    assert world.api.get(path, headers=world.op_b).status_code == 404, "not op_b's application"

    contested = signed(world, quiet, "POST", f"{path}/contest", {"reason": "a new shop, growing"})
    assert contested.status_code == 200 and contested.json()["contest"]["reason"]
    again = signed(world, quiet, "POST", f"{path}/contest", {"reason": "once more"})
    assert again.status_code == 409
    review = {"outcome": "approved", "reviewer": "zhang.wei", "note": "visited the shop"}
    assert world.api.post(f"{path}/review", json=review, headers=world.op).status_code == 422
    review["limit_fen"] = 20_000
    assert world.api.post(f"{path}/review", json=review, headers=world.op_b).status_code == 404
    overridden = world.api.post(f"{path}/review", json=review, headers=world.op)
    assert overridden.status_code == 200, overridden.text
    state = overridden.json()
    assert state["decision"] == "declined" and state["review"]["outcome"] == "approved"
    assert state["review"]["limit_fen"] == 20_000 and len(state["journal_seqs"]) == 3

    revoke = f"/v1/credit/borrowers/{busy.id}/consents/{c_busy}/revoke"
    assert signed(world, busy, "POST", revoke).status_code == 200
    refused = apply(world, busy, c_busy, 100_000, world.op)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "consent_revoked"
    stranger = apply(world, busy, str(uuid.uuid4()), 100_000, world.op)
    assert stranger.status_code == 404
    floats = apply(world, busy, c_busy, 100.5, world.op)  # type: ignore[arg-type]
    assert floats.status_code == 422

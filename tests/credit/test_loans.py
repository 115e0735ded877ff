"""Loans on the ledger through the API: disbursed from the lender's float, repaid by a share of
real incoming payments, by scheduled collections and early; overdue when a collection falls
short. After every step the ledger is zero-sum, the loan's statement balances and its receivable
equals principal plus charges minus repayments; ``ledger verify`` checks the mandates."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from ledger import signing
from ledger.credit.decisions import MODEL_ENV
from ledger.credit.loans import (
    DAY_MS,
    INSTALMENTS,
    REVENUE_SHARE,
    Collector,
    schedule,
    standing,
)
from ledger.verify import Mismatch, _Account, _Replay, verify
from ledger.wallets.service import OperatorAccounts
from tests.credit.test_applications import apply, busy_and_quiet
from tests.credit.test_consent import DAY, grant, signed
from tests.test_wallets import START, W, World, new_uuid


def balance(world: World, account: str, headers: dict[str, str] | None = None) -> int:
    view = world.api.get(f"/v1/accounts/{account}", headers=headers or world.cb).json()
    return int(view["balances"]["credits_posted"]) - int(view["balances"]["debits_posted"])


def books_balance(world: World, w: W, loan_id: str) -> dict[str, Any]:
    """The loan's statement, after checking that everything adds up."""
    totals = world.service.sequencer.engine.state.totals
    assert totals[0] == totals[2] and totals[1] == totals[3], "the ledger is zero-sum"
    statement = signed(world, w, "GET", f"/v1/credit/borrowers/{w.id}/loans/{loan_id}/statement")
    assert statement.status_code == 200, statement.text
    body: dict[str, Any] = statement.json()
    assert body["balanced"] is True
    t = body["totals"]
    assert t["principal_fen"] + t["charged_fen"] - t["repaid_fen"] == t["owed_fen"]
    owed = -balance(world, loan_id)
    assert owed == t["owed_fen"] == body["loan"]["owed_fen"]
    running = 0
    for line in body["lines"]:
        running += line["amount_fen"]
        assert line["owed_fen"] == running
    return body


def mandate_after_restart(world: World, w: W) -> tuple[int, int]:
    """The wallet's mandate as a restarted writer would load it from the database."""
    recovered = world.service.store.recover()
    wallet = next(x for x in recovered.wallets if x.id == w.int_id)
    return wallet.loan_account, wallet.loan_share_bp


def take(world: World, w: W, application: str, amount: int) -> Any:
    body = {"application_id": application, "amount": amount}
    return signed(world, w, "POST", f"/v1/credit/borrowers/{w.id}/loans", body)


def repay(world: World, w: W, loan: str, amount: int | None, rid: str | None = None) -> Any:
    body: dict[str, Any] = {"id": rid or new_uuid()}
    if amount is not None:
        body["amount"] = amount
    return signed(world, w, "POST", f"/v1/credit/borrowers/{w.id}/loans/{loan}/repayments", body)


def loan_state(world: World, w: W, loan: str) -> str:
    path = f"/v1/credit/borrowers/{w.id}/loans/{loan}"
    return str(world.api.get(path, headers=world.op).json()["state"])


def collect(world: World) -> dict[str, int]:
    answer = world.api.post("/v1/credit/loans/collect", headers=world.op)
    assert answer.status_code == 200, answer.text
    out: dict[str, int] = answer.json()
    return out


def test_schedules_add_up() -> None:
    fee, [due] = schedule(REVENUE_SHARE, 100_000, 0.0725, 120, 0)
    assert fee == round(100_000 * 0.0725 * 120 / 365) and due["amount_fen"] == 100_000 + fee
    assert due["due_ms"] == 120 * DAY_MS
    fee, parts = schedule(INSTALMENTS, 100_001, 0.1095, 90, 0)
    assert fee == 0 and len(parts) == 3
    assert sum(p["principal_fen"] for p in parts) == 100_001
    assert [p["interest_fen"] for p in parts] == [
        round(100_001 * 0.1095 * 30 / 365),
        round((100_001 - 33_333) * 0.1095 * 30 / 365),
        round((100_001 - 66_666) * 0.1095 * 30 / 365),
    ]
    terms = {"principal_fen": 100_001, "schedule": parts}
    first = parts[0]["amount_fen"]
    late = standing(terms, 100_001 + parts[0]["interest_fen"], first - 1, 35 * DAY_MS)
    assert late["state"] == "overdue" and late["past_due_fen"] == 1 and late["days_past_due"] == 5
    on_time = standing(terms, 100_001 + parts[0]["interest_fen"], first, 35 * DAY_MS)
    assert on_time["state"] == "active" and on_time["past_due_fen"] == 0
    assert [i["status"] for i in on_time["instalments"]] == ["paid", "upcoming", "upcoming"]
    assert standing(terms, 100_001, 100_001, 40 * DAY_MS)["state"] == "repaid"


def test_revenue_share_loan_from_real_payments(
    world: World, model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MODEL_ENV, str(model_file))
    shop, _ = busy_and_quiet(world, kind="merchant")
    consent = grant(world, shop).json()["id"]
    offer = apply(world, shop, consent, 100_000, world.op).json()
    assert offer["decision"] == "approved", offer
    limit = offer["limit_fen"]
    float_id = str(uuid.UUID(int=OperatorAccounts.of("op_a").float))
    before_shop, before_float = balance(world, shop.id), balance(world, float_id)

    assert take(world, shop, offer["id"], limit + 1).json()["error"]["code"] == "exceeds_limit"
    taken = take(world, shop, offer["id"], limit)
    assert taken.status_code == 201, taken.text
    loan = taken.json()
    fee = round(limit * offer["annual_rate"] * offer["term_days"] / 365)
    assert loan["product"] == "revenue_share" and loan["share_bp"] == 1_000
    assert loan["principal_fen"] == limit and loan["fee_fen"] == fee
    assert loan["owed_fen"] == limit + fee and loan["state"] == "active"
    assert balance(world, shop.id) == before_shop + limit
    assert balance(world, float_id) == before_float - limit, "lent from the float, not created"
    books_balance(world, shop, loan["id"])
    assert mandate_after_restart(world, shop) == (uuid.UUID(loan["id"]).int, 1_000)

    again = take(world, shop, offer["id"], limit)
    assert again.status_code == 201 and again.json()["id"] == loan["id"]
    assert balance(world, shop.id) == before_shop + limit, "a retry is not a second loan"
    other = take(world, shop, offer["id"], limit - 1)
    assert other.status_code == 409 and other.json()["error"]["code"] == "offer_taken"
    path = f"/v1/credit/borrowers/{shop.id}/loans/{loan['id']}"
    assert world.api.get(path, headers=world.op_b).status_code == 404, "not op_b's loan"
    assert world.api.get(path, headers=world.op).json()["owed_fen"] == limit + fee

    # a tenth of every payment the shop receives repays the loan, in the same step
    customer = world.wallet(1, bank=2_000_000)
    world.top_up(customer, 1_500_000)
    world.at(START + 62 * DAY)
    payment = world.payment(customer, shop.id, 12_345)
    assert world.post("/v1/payments", payment)["result"] == "ok"
    share = 12_345 * 1_000 // 10_000
    assert balance(world, shop.id) == before_shop + limit + 12_345 - share
    statement = books_balance(world, shop, loan["id"])
    last = statement["lines"][-1]
    assert last["kind"] == "revenue_share" and last["amount_fen"] == -share
    assert last["payment"] == payment["id"]
    assert statement["loan"]["owed_fen"] == limit + fee - share

    # early repayment, in part: a retry with the same id is a replay
    rid = new_uuid()
    part = repay(world, shop, loan["id"], 5_000, rid)
    assert part.status_code == 201, part.text
    assert part.json()["loan"]["owed_fen"] == limit + fee - share - 5_000
    assert repay(world, shop, loan["id"], 5_000, rid).status_code == 200
    owed = books_balance(world, shop, loan["id"])["loan"]["owed_fen"]
    assert owed == limit + fee - share - 5_000
    too_much = repay(world, shop, loan["id"], owed + 1)
    assert too_much.status_code == 422 and too_much.json()["error"]["code"] == "exceeds_owed"
    assert repay(world, shop, loan["id"], 0).status_code == 422, "zero is not an amount"
    assert repay(world, W(shop.id, customer.key), loan["id"], 1).status_code == 401, "forged"

    # the rest from one large sale, whose share is only what is still owed
    large = 10 * owed + 5_000
    after = balance(world, shop.id)
    world.post("/v1/payments", world.payment(customer, shop.id, large))
    assert balance(world, shop.id) == after + large - owed
    done = books_balance(world, shop, loan["id"])
    assert done["loan"]["state"] == "repaid" and done["loan"]["owed_fen"] == 0
    assert done["totals"]["repaid_fen"] == limit + fee
    assert mandate_after_restart(world, shop) == (0, 0), "the mandate ends with the loan"
    after = balance(world, shop.id)
    world.post("/v1/payments", world.payment(customer, shop.id, 1_000))
    assert balance(world, shop.id) == after + 1_000, "no share once the loan is repaid"
    assert repay(world, shop, loan["id"], 1).json()["error"]["code"] == "loan_repaid"
    n = world.service.sequencer.engine.state.accounts[shop.int_id].n
    kinds = frozenset({"loan_disbursed", "loan_repaid"})
    records = [r.type for _, r in world.api.app.state.reader.records(n, kinds)]
    assert records == ["loan_disbursed", "loan_repaid"]
    report = verify(world.service.store.engine)
    assert report.problem is None, report.problem


def test_instalments_overdue_collection_and_early_repayment(
    world: World, model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MODEL_ENV, str(model_file))
    person = world.wallet(1, bank=1)
    friend = world.wallet(1, bank=50_000)
    world.top_up(friend, 20_000)
    consent = grant(world, person).json()["id"]
    declined = apply(world, person, consent, 30_000, world.op).json()
    assert declined["decision"] == "declined", "a wallet with no history"
    path = f"/v1/credit/borrowers/{person.id}/applications/{declined['id']}"
    assert take(world, person, declined["id"], 30_000).json()["error"]["code"] == (
        "application_declined"
    )
    review = {"outcome": "approved", "limit_fen": 30_000, "reviewer": "li.na", "note": "payslips"}
    assert world.api.post(f"{path}/review", json=review, headers=world.op).status_code == 200
    taken = take(world, person, declined["id"], 30_000)
    assert taken.status_code == 201, taken.text
    loan = taken.json()
    lid = loan["id"]
    assert loan["product"] == "instalments" and loan["fee_fen"] == 0 and loan["share_bp"] == 0
    parts = loan["instalments"]
    assert [p["principal_fen"] for p in parts] == [10_000, 10_000, 10_000]
    assert loan["owed_fen"] == 30_000 and loan["next_due"]["due_ms"] == parts[0]["due_ms"]
    assert balance(world, person.id) == 30_000

    # nothing is due yet: a collection run changes nothing
    assert collect(world)["collected_fen"] == 0
    # the first instalment falls due: its interest is charged and it is collected in full
    world.at(START + 31 * DAY)
    ran = collect(world)
    assert ran["interest_charges"] == 1 and ran["collected_fen"] == parts[0]["amount_fen"]
    assert collect(world) == {**ran, "interest_charges": 0, "collections": 0, "collected_fen": 0}
    first = books_balance(world, person, lid)
    assert first["loan"]["state"] == "active"
    assert [line["kind"] for line in first["lines"]] == ["disbursement", "interest", "collection"]
    assert first["loan"]["instalments"][0]["status"] == "paid"

    # the wallet is nearly spent when the second falls due: collected in part, then overdue
    spend = balance(world, person.id) - 2_000
    world.post("/v1/payments", world.payment(person, friend.id, spend))
    world.at(START + 61 * DAY)
    short = collect(world)
    assert short["collected_fen"] == 2_000 and short["overdue"] == 1
    world.at(START + 65 * DAY)
    late = world.api.get(f"/v1/credit/borrowers/{person.id}/loans/{lid}", headers=world.op).json()
    assert late["state"] == "overdue" and late["days_past_due"] == 5
    assert late["past_due_fen"] == parts[1]["amount_fen"] - 2_000
    books_balance(world, person, lid)

    # money comes in; the collector's next run (a thread, as in `ledger serve`) collects what is
    # past due and the loan is current again
    world.post("/v1/payments", world.payment(friend, person.id, spend + 10_000))
    collector = Collector(world.api.app.state.loans, interval_s=0.05)
    collector.start()
    try:
        deadline = time.monotonic() + 30
        while loan_state(world, person, lid) == "overdue" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        collector.stop()
    current = books_balance(world, person, lid)["loan"]
    assert current["state"] == "active" and current["owed_fen"] == 10_000
    assert current["repaid_fen"] == parts[0]["amount_fen"] + parts[1]["amount_fen"]

    # repaid early in full: the third instalment's interest never falls due
    paid = repay(world, person, lid, None)
    assert paid.status_code == 201 and paid.json()["amount_fen"] == 10_000
    world.at(START + 95 * DAY)
    assert collect(world)["interest_charges"] == 0
    final = books_balance(world, person, lid)["loan"]
    assert final["state"] == "repaid" and final["repaid_fen"] == 30_000 + final["charged_fen"]
    assert final["charged_fen"] == parts[0]["interest_fen"] + parts[1]["interest_fen"]
    listed = signed(world, person, "GET", f"/v1/credit/borrowers/{person.id}/loans").json()
    assert [x["id"] for x in listed["data"]] == [lid]
    report = verify(world.service.store.engine)
    assert report.problem is None, report.problem


def test_the_ledger_refuses_what_no_mandate_allows(world: World) -> None:
    """A loan repayment from a wallet with no loan, or an operator's collection beyond what is
    owed, is refused by the engine itself, whoever asks."""
    person = world.wallet(1, bank=1)
    float_id = str(uuid.UUID(int=OperatorAccounts.of("op_a").float))
    body = {
        "transfers": [
            {"id": new_uuid(), "debit_account_id": person.id, "credit_account_id": float_id,
             "amount": 1, "code": 1053}
        ]
    }  # fmt: skip
    answer = world.api.post("/v1/transfers", json=body, headers=world.op)
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["result"] == "loan_not_active"


def test_verify_refuses_an_acceptance_the_borrower_did_not_sign() -> None:
    """The journal's loan record must carry the borrower's signature over the very request that
    took the loan up, for the amount lent."""
    key, other = SigningKey.generate(), SigningKey.generate()
    account = _Account(1, 1, 0, 300)
    account.keys[1] = bytes(key.verify_key)
    application = new_uuid()

    def record(signer: SigningKey, amount: int, principal: int) -> dict[str, object]:
        body = json.dumps({"application_id": application, "amount": amount})
        message = signing.read_message("POST", "/v1/credit/borrowers/x/loans", 5, body.encode())
        acceptance = {
            "method": "POST", "path": "/v1/credit/borrowers/x/loans", "timestamp_ms": 5,
            "body": body, "signature": base64.b64encode(signer.sign(message).signature).decode(),
        }  # fmt: skip
        return {"acceptance": acceptance, "principal_fen": principal, "application": application}

    _Replay._check_acceptance(7, account, record(key, 1_000, 1_000))  # signed: passes
    for forged in (record(other, 1_000, 1_000), record(key, 1_000, 2_000), {"principal_fen": 1}):
        with pytest.raises(Mismatch, match="entry 7: the borrower's acceptance"):
            _Replay._check_acceptance(7, account, forged)

"""e-CNY wallets through the HTTP API, on SQLite and PostgreSQL: limits at, under and over their
bounds with the clock injected, caps and waterfalls, sub-wallets, signatures, key rotation,
class changes, KYC and controllable anonymity, signed reads, conservation."""

from __future__ import annotations

import base64
import datetime
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from nacl.signing import SigningKey
from sqlalchemy import text

from ledger import signing
from ledger.api.models import EntryPage
from ledger.auth import create_api_key
from ledger.domain import BATCH_MAX
from ledger.ids import new_uuid
from ledger.service import LedgerService
from ledger.store.database import make_engine
from ledger.verify import verify
from tests.conftest import app_for, served_app
from tests.test_api import error
from tests.test_service import raw_sql
from tests.test_verify import drop_triggers

CST = datetime.timezone(datetime.timedelta(hours=8))
START = datetime.datetime(2026, 6, 15, 10, 0, tzinfo=CST)
SMALL = {  # a test limits version with small, exact numbers (fen)
    "test-small": {
        "1": {"balance_cap": 0, "single": 0, "daily": 0, "annual": 0},
        "2": {"balance_cap": 100_000, "single": 20_000, "daily": 50_000, "annual": 0},
        "3": {"balance_cap": 20_000, "single": 5_000, "daily": 10_000, "annual": 50_000},
        "4": {"balance_cap": 10_000, "single": 1_000, "daily": 3_000, "annual": 5_000},
    }
}


def ns(moment: datetime.datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class W:
    """A wallet in a test: its id and its key."""

    id: str
    key: SigningKey
    key_version: int = 1
    bank: str | None = None

    @property
    def int_id(self) -> int:
        return uuid.UUID(self.id).int


@dataclass
class World:
    api: TestClient
    service: LedgerService
    clock: list[int]
    cb: dict[str, str]
    op: dict[str, str]
    op_b: dict[str, str]
    issued: list[int] = field(default_factory=list)

    def at(self, moment: datetime.datetime) -> None:
        self.clock[0] = ns(moment)

    def now_ms(self) -> int:
        return self.clock[0] // 1_000_000

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        response = self.api.post(path, json=body, headers=headers or {})
        assert response.status_code == 200, response.text
        return response.json()

    def bank_account(self, amount: int, headers: dict[str, str] | None = None) -> str:
        bank = new_uuid()
        self.post("/v1/bank_accounts", {"id": bank, "owner": "customer"}, headers or self.op)
        if amount:
            body = {"id": new_uuid(), "amount": amount}
            assert (
                self.post(f"/v1/bank_accounts/{bank}/deposits", body, headers or self.op)[
                    "results"
                ][0]["result"]
                == "ok"
            )
        return bank

    def wallet(
        self,
        klass: int = 4,
        *,
        bank: int = 0,
        reverse: bool = False,
        headers: dict[str, str] | None = None,
        kyc: dict[str, str] | None = None,
        kind: str = "personal",
    ) -> W:
        key = SigningKey.generate()
        wallet = W(new_uuid(), key, bank=self.bank_account(bank, headers) if bank else None)
        kyc = kyc or {"phone": "+8613800000000", "name": "Li Lei", "id_number": "110101"}
        body: dict[str, Any] = {
            "id": wallet.id,
            "kind": kind,
            "class": klass,
            "public_key": b64(bytes(key.verify_key)),
            "kyc": kyc,
            "linked_bank_account": wallet.bank,
            "reverse_waterfall": reverse,
        }
        assert self.post("/v1/wallets", body, headers or self.op)["results"][0]["result"] == "ok"
        return wallet

    def top_up(self, w: W, amount: int) -> str:
        body = {"id": new_uuid(), "amount": amount}
        return str(self.post(f"/v1/wallets/{w.id}/top_ups", body, self.op)["results"][0]["result"])

    def pay(self, payer: W, payee: str, amount: int, **how: Any) -> dict[str, Any]:
        body = self.payment(payer, payee, amount, **how)
        result: dict[str, Any] = self.post("/v1/payments", body)
        return result

    def payment(
        self,
        payer: W,
        payee: str,
        amount: int,
        *,
        key: SigningKey | None = None,
        expires_in_ms: int = 60_000,
        kind: str = "payment",
        payment_id: str | None = None,
        signed_amount: int | None = None,
    ) -> dict[str, Any]:
        """The body of a signed payment."""
        pid = payment_id or new_uuid()
        expires = self.now_ms() + expires_in_ms
        auth = signing.sign_payment(
            key or payer.key,
            payer.key_version,
            uuid.UUID(pid).int,
            payer.int_id,
            uuid.UUID(payee).int,
            signed_amount or amount,
            "CNY",
            expires,
        )
        body = {
            "id": pid,
            "payer": payer.id,
            "payee": payee,
            "amount": amount,
            "expires_at_ms": expires,
            "key_version": payer.key_version,
            "signature": b64(auth.signature),
            "kind": kind,
        }
        return body

    def signed_get(self, w: W, path: str, key: SigningKey | None = None) -> Any:
        ts = time.time_ns() // 1_000_000
        message = signing.read_message("GET", path, ts, b"")
        signature = (key or w.key).sign(message).signature
        headers = {
            "Wallet-Id": w.id,
            "Wallet-Timestamp": str(ts),
            "Wallet-Signature": b64(signature),
        }
        return self.api.get(path, headers=headers), headers

    def wallet_view(self, w: W) -> dict[str, Any]:
        view: dict[str, Any] = self.api.get(f"/v1/wallets/{w.id}", headers=self.op).json()
        return view


@pytest.fixture
def world(
    database_url: str,
    key_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    app_mode: str,
) -> Iterator[World]:
    limits_file = tmp_path / "limits.json"
    limits_file.write_text(json.dumps(SMALL))
    monkeypatch.setenv("LEDGER_LIMITS_FILE", str(limits_file))
    monkeypatch.setenv("LEDGER_LIMITS_VERSION", "test-small")
    clock = [ns(START)]
    service = LedgerService.open(database_url, key_file, "test/wallets", clock_ns=lambda: clock[0])
    engine = service.store.engine
    cb = {"Authorization": "Bearer " + create_api_key(engine, "central_bank", "").secret}
    op = {"Authorization": "Bearer " + create_api_key(engine, "operator", "op_a").secret}
    op_b = {"Authorization": "Bearer " + create_api_key(engine, "operator", "op_b").secret}
    try:
        with served_app(service, app_mode) as app, TestClient(app) as api:
            w = World(api, service, clock, cb, op, op_b)
            for operator in ("op_a", "op_b"):
                w.post("/v1/operators", {"operator": operator}, cb)
                w.post(
                    f"/v1/operators/{operator}/reserve_deposits",
                    {"id": new_uuid(), "amount": 10**9},
                    cb,
                )
                w.post(
                    "/v1/issuances", {"id": new_uuid(), "operator": operator, "amount": 10**8}, cb
                )
                w.issued.append(10**8)
            yield w
    finally:
        service.close()


def result(answer: dict[str, Any]) -> str:
    return str(answer["result"])


# -- limits -------------------------------------------------------------------------------------


def test_single_limit_at_under_and_over(world: World) -> None:
    payer, payee = world.wallet(bank=10_000), world.wallet()
    assert world.top_up(payer, 3_000) == "ok"
    assert result(world.pay(payer, payee.id, 999)) == "ok"
    assert result(world.pay(payer, payee.id, 1_000)) == "ok"
    over = world.pay(payer, payee.id, 1_001)
    assert result(over) == "exceeds_single_limit" and over["seq"] is None
    assert over["limit"] == {
        "limit": "single",
        "limit_fen": 1_000,
        "allowed_fen": 1_000,
        "limits_version": "test-small",
    }
    assert world.wallet_view(payer)["balance_fen"] == 3_000 - 1_999


def test_daily_limit_rolls_over_at_midnight_china_time(world: World) -> None:
    payer, payee = world.wallet(3, bank=20_000), world.wallet(2, bank=1)  # daily 10,000
    world.top_up(payer, 20_000)
    for _ in range(2):
        assert result(world.pay(payer, payee.id, 5_000)) == "ok"
    over = world.pay(payer, payee.id, 1)
    assert result(over) == "exceeds_daily_limit" and over["limit"]["allowed_fen"] == 0
    world.at(START.replace(hour=23, minute=59, second=59))
    assert result(world.pay(payer, payee.id, 1)) == "exceeds_daily_limit"
    world.at(START.replace(hour=0, minute=0, second=0) + datetime.timedelta(days=1))
    assert result(world.pay(payer, payee.id, 5_000)) == "ok"
    assert result(world.pay(payer, payee.id, 4_999)) == "ok"
    left = world.pay(payer, payee.id, 2)
    assert result(left) == "exceeds_daily_limit" and left["limit"]["allowed_fen"] == 1
    assert result(world.pay(payer, payee.id, 1)) == "ok"  # exactly at the bound


def test_annual_limit_rolls_over_with_the_year(world: World) -> None:
    payer, payee = world.wallet(bank=50_000), world.wallet(bank=1)  # payee sweeps its excess
    world.top_up(payer, 9_000)
    world.at(datetime.datetime(2026, 12, 30, 9, 0, tzinfo=CST))
    for _ in range(3):
        assert result(world.pay(payer, payee.id, 1_000)) == "ok"
    world.at(datetime.datetime(2026, 12, 31, 9, 0, tzinfo=CST))
    assert result(world.pay(payer, payee.id, 1_000)) == "ok"
    assert result(world.pay(payer, payee.id, 999)) == "ok"
    over = world.pay(payer, payee.id, 2)
    assert result(over) == "exceeds_annual_limit"
    assert over["limit"]["allowed_fen"] == 1 and over["limit"]["limit_fen"] == 5_000
    assert result(world.pay(payer, payee.id, 1)) == "ok"  # exactly at the bound
    world.at(datetime.datetime(2027, 1, 1, 0, 0, 1, tzinfo=CST))
    assert result(world.pay(payer, payee.id, 1_000)) == "ok"


def test_spending_counters_are_stored_and_survive_a_restart(
    world: World, database_url: str, key_file: Path
) -> None:
    """A payer's counters are written alone (an UPDATE, not a whole-row upsert): the stored
    row keeps the wallet's other columns, and a restarted ledger refuses what the limit would."""
    payer, payee = world.wallet(3, bank=20_000), world.wallet(2, bank=1)  # daily 10,000
    world.top_up(payer, 20_000)
    assert result(world.pay(payer, payee.id, 4_000)) == "ok"
    world.at(START + datetime.timedelta(days=1))
    assert result(world.pay(payer, payee.id, 5_000)) == "ok"
    held = world.service.account(payer.int_id)
    assert held is not None and held.wallet is not None
    day = held.wallet.day
    assert (held.wallet.spent_day, held.wallet.spent_year) == (5_000, 9_000)
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT day, spent_day, year, spent_year, public_key, key_version, "
                    "wallet_class FROM wallets WHERE id = :id"
                ),
                {"id": uuid.UUID(payer.id).bytes},
            ).one()
    finally:
        engine.dispose()
    assert tuple(row[:4]) == (day, 5_000, held.wallet.year, 9_000)
    assert (bytes(row[4]), row[5], row[6]) == (bytes(payer.key.verify_key), 1, 3)
    world.service.close()
    reopened = LedgerService.open(database_url, key_file, "test/wallets")
    try:
        back = reopened.account(payer.int_id)
        assert back is not None and back.wallet is not None
        assert (back.wallet.day, back.wallet.spent_day, back.wallet.spent_year) == (
            day, 5_000, 9_000
        )  # fmt: skip
    finally:
        reopened.close()


def test_default_limits_are_the_pboc_2021_figures(
    database_url: str, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LEDGER_LIMITS_VERSION", raising=False)
    monkeypatch.delenv("LEDGER_LIMITS_FILE", raising=False)
    service = LedgerService.open(database_url, key_file, "test/pboc")
    try:
        engine = service.store.engine
        cb = {"Authorization": "Bearer " + create_api_key(engine, "central_bank", "").secret}
        op = {"Authorization": "Bearer " + create_api_key(engine, "operator", "op_a").secret}
        with TestClient(app_for(service)) as api:
            w = World(api, service, [time.time_ns()], cb, op, op)
            w.post("/v1/operators", {"operator": "op_a"}, cb)
            w.post("/v1/operators/op_a/reserve_deposits", {"id": new_uuid(), "amount": 10**9}, cb)
            w.post("/v1/issuances", {"id": new_uuid(), "operator": "op_a", "amount": 10**8}, cb)
            w.clock[0] = time.time_ns()
            payer, payee = w.wallet(bank=10_000_000), w.wallet(2, bank=1)
            view = w.wallet_view(payer)
            assert view["limits_version"] == "pboc-2021"
            assert view["limits"] == {
                "balance_cap": 1_000_000,
                "single": 200_000,
                "daily": 500_000,
                "annual": 5_000_000,
            }
            assert w.wallet_view(payee)["limits"]["balance_cap"] == 50_000_000
            assert w.top_up(payer, 1_000_000) == "ok"
            assert w.top_up(payer, 1) == "exceeds_balance_cap"  # class 4: ¥10,000 at most
            assert result(w.pay(payer, payee.id, 200_000)) == "ok"  # ¥2,000: at the bound
            assert result(w.pay(payer, payee.id, 200_001)) == "exceeds_single_limit"
    finally:
        service.close()


# -- balance caps and waterfalls ----------------------------------------------------------------


def test_balance_cap_refuses_without_a_linked_bank_account(world: World) -> None:
    payer = world.wallet(2, bank=200_000)
    payee = world.wallet()  # class 4: cap 10,000, no bank account
    world.top_up(payer, 20_000)
    assert result(world.pay(payer, payee.id, 10_000)) == "ok"  # exactly at the cap
    over = world.pay(payer, payee.id, 1)
    assert result(over) == "exceeds_balance_cap"
    assert over["limit"]["limit"] == "balance_cap" and over["limit"]["allowed_fen"] == 0


def test_waterfall_sweeps_the_excess_to_the_linked_bank_account(world: World) -> None:
    payer = world.wallet(2, bank=200_000)
    payee = world.wallet(bank=1)
    world.top_up(payer, 20_000)
    assert result(world.pay(payer, payee.id, 9_000)) == "ok"
    assert result(world.pay(payer, payee.id, 4_000)) == "ok"  # 3,000 over the cap
    assert world.wallet_view(payee)["balance_fen"] == 10_000
    bank = world.api.get(f"/v1/accounts/{payee.bank}", headers=world.op).json()
    assert bank["balances"]["credits_posted"] - bank["balances"]["debits_posted"] == 1 + 3_000
    entries = world.api.get(f"/v1/wallets/{payee.id}/entries", headers=world.op).json()["data"]
    codes = [e["entry"]["code"] for e in entries if e["kind"] == "transfer"]
    assert codes[:2] == [1021, 1020], "the sweep follows the payment, atomically"


def test_reverse_waterfall_tops_up_the_shortfall_or_nothing_moves(world: World) -> None:
    payer = world.wallet(bank=5_000, reverse=True)
    payee = world.wallet()
    world.top_up(payer, 200)
    assert result(world.pay(payer, payee.id, 700)) == "ok"  # 500 short: topped up first
    assert world.wallet_view(payer)["balance_fen"] == 0
    bank = world.api.get(f"/v1/accounts/{payer.bank}", headers=world.op).json()["balances"]
    assert bank["credits_posted"] - bank["debits_posted"] == 5_000 - 200 - 500
    poor = world.wallet(bank=300, reverse=True)
    failed = world.pay(poor, payee.id, 301)  # the bank cannot cover it: the whole thing fails
    assert result(failed) == "exceeds_credits"
    bank = world.api.get(f"/v1/accounts/{poor.bank}", headers=world.op).json()["balances"]
    assert bank["credits_posted"] - bank["debits_posted"] == 300
    assert world.wallet_view(poor)["balance_fen"] == 0
    assert world.wallet_view(payee)["balance_fen"] == 700
    assert result(world.pay(poor, payee.id, 300)) == "ok"


def test_top_up_and_redeem_move_bank_money_and_e_cny_together(world: World) -> None:
    w = world.wallet(bank=1_000)
    assert world.top_up(w, 1_001) == "exceeds_credits", "the bank side fails: nothing moves"
    assert world.wallet_view(w)["balance_fen"] == 0
    assert world.top_up(w, 800) == "ok"
    float_account = world.wallet_view(w)["operator_float_account"]
    pid = new_uuid()
    expires = world.now_ms() + 60_000
    auth = signing.sign_payment(
        w.key, 1, uuid.UUID(pid).int, w.int_id, uuid.UUID(float_account).int, 300, "CNY", expires
    )
    body = {
        "id": pid,
        "payer": w.id,
        "payee": float_account,
        "amount": 300,
        "expires_at_ms": expires,
        "key_version": 1,
        "signature": b64(auth.signature),
    }
    assert world.post(f"/v1/wallets/{w.id}/redemptions", body)["results"][0]["result"] == "ok"
    assert world.wallet_view(w)["balance_fen"] == 500
    bank = world.api.get(f"/v1/accounts/{w.bank}", headers=world.op).json()["balances"]
    assert bank["credits_posted"] - bank["debits_posted"] == 1_000 - 800 + 300
    forged = dict(body, id=new_uuid())
    response = world.api.post(f"/v1/wallets/{w.id}/redemptions", json=forged)
    assert response.status_code == 401 and response.json()["error"]["code"] == "signature_invalid"


# -- signatures -----------------------------------------------------------------------------------


def test_forged_tampered_expired_and_replayed_signatures(world: World) -> None:
    payer, payee = world.wallet(bank=10_000), world.wallet()
    world.top_up(payer, 3_000)
    size = world.api.get("/v1/checkpoints/latest").json()["tree_size"]
    assert result(world.pay(payer, payee.id, 100, key=SigningKey.generate())) == "signature_invalid"
    assert result(world.pay(payer, payee.id, 200, signed_amount=100)) == "signature_invalid"
    assert result(world.pay(payer, payee.id, 100, expires_in_ms=-1)) == "signature_expired"
    assert world.api.get("/v1/checkpoints/latest").json()["tree_size"] == size, "nothing applied"
    pid = new_uuid()
    first = world.pay(payer, payee.id, 100, payment_id=pid)
    again = world.pay(payer, payee.id, 100, payment_id=pid)
    assert result(first) == result(again) == "ok" and again["replayed"] and not first["replayed"]
    assert again["seq"] == first["seq"]
    assert world.wallet_view(payee)["balance_fen"] == 100, "a replayed signature pays once"
    bad = world.api.post(
        "/v1/payments",
        json={
            "id": new_uuid(),
            "payer": payer.id,
            "payee": payee.id,
            "amount": 1,
            "expires_at_ms": 1,
            "key_version": 1,
            "signature": "not base64!",
        },
    )
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "signature"


BAD_PAYMENT_FIELDS: dict[str, tuple[dict[str, Any], int, str, str | None]] = {
    # name: (fields over a valid signed payment, status, code, param)
    "amount_float": ({"amount": 10.5}, 422, "amount_not_integer", "amount"),
    "amount_whole_float": ({"amount": 100.0}, 422, "amount_not_integer", "amount"),
    "amount_string": ({"amount": "100"}, 422, "amount_not_integer", "amount"),
    "amount_bool": ({"amount": True}, 422, "amount_not_integer", "amount"),
    "amount_negative": ({"amount": -1}, 422, "invalid_field", "amount"),
    "unknown_field": ({"memo": "hi"}, 422, "unknown_field", "memo"),
    "missing_id": ({"id": None}, 422, "missing_field", "id"),
    "id_not_uuid": ({"id": "pay-1"}, 422, "invalid_field", "id"),
    "payer_integer": ({"payer": 12345}, 422, "invalid_field", "payer"),
    "currency_usd": ({"currency": "USD"}, 422, "invalid_field", "currency"),
    "key_version_zero": ({"key_version": 0}, 422, "invalid_field", "key_version"),
    "signature_short": ({"signature": b64(b"x" * 63)}, 422, "invalid_field", "signature"),
    "metadata_value_not_string": ({"metadata": {"n": 1}}, 422, "invalid_field", "metadata.n"),
}
JSON_HEADERS = {"Content-Type": "application/json"}
RAW_PAYMENT_BODIES: dict[str, tuple[bytes | None, dict[str, str], int, str]] = {
    # name: (body, or None for a valid payment; headers, status, code)
    "malformed_json": (b'{"id": ', {"Content-Type": "application/json"}, 400, "invalid_json"),
    "trailing_garbage": (b"{} x", {"Content-Type": "application/json"}, 400, "invalid_json"),
    "array": (b"[]", {"Content-Type": "application/json"}, 400, "invalid_json"),
    "string": (b'"pay"', {"Content-Type": "application/json"}, 400, "invalid_json"),
    "text_plain": (None, {"Content-Type": "text/plain"}, 400, "invalid_json"),
    "form_encoded": (b"id=1", {"Content-Type": "application/x-www-form-urlencoded"}, 400,
                     "invalid_json"),
    "no_content_type": (None, {}, 400, "invalid_json"),
    "empty": (b"", {"Content-Type": "application/json"}, 422, "missing_field"),
    "empty_no_content_type": (b"", {}, 422, "missing_field"),
}  # fmt: skip


def test_bad_payment_bodies_are_refused_and_change_nothing(
    world: World, subtests: pytest.Subtests
) -> None:
    """Every malformed payment gets the one error shape (as every other route answers it) and
    moves nothing; a JSON payment sent as something else than JSON is not taken either."""
    payer, payee = world.wallet(bank=10_000), world.wallet()
    world.top_up(payer, 3_000)
    before = world.api.get("/v1/checkpoints/latest").json()["tree_size"]
    for case, (fields, status, code, param) in BAD_PAYMENT_FIELDS.items():
        with subtests.test(case):
            body = {**world.payment(payer, payee.id, 100), **fields}
            body = {k: v for k, v in body.items() if v is not None}
            err = error(world.api.post("/v1/payments", json=body), status, code, param)
            if code == "amount_not_integer":
                assert "integer number of fen" in err["message"]
    for case, (content, headers, status, code) in RAW_PAYMENT_BODIES.items():
        with subtests.test(case):
            if content is None:  # a valid payment, not declared as JSON
                content = json.dumps(world.payment(payer, payee.id, 100)).encode()
            answer = world.api.post("/v1/payments", content=content, headers=headers)
            err = error(answer, status, code, None)
            assert ("JSON" if status == 400 else "body") in err["message"]
    with subtests.test("get"):
        error(world.api.get("/v1/payments"), 405, "method_not_allowed", None)
    assert world.api.get("/v1/checkpoints/latest").json()["tree_size"] == before
    assert world.wallet_view(payer)["balance_fen"] == 3_000, "nothing moved"
    assert result(world.pay(payer, payee.id, 100)) == "ok", "and the route still pays"


def test_bad_payment_batches_are_refused_and_change_nothing(
    world: World, subtests: pytest.Subtests
) -> None:
    """A batch is validated whole before anything is verified or queued: one bad payment, an
    empty or oversize batch, or a body that is not a JSON object refuses all of it."""
    payer, payee = world.wallet(bank=10_000), world.wallet()
    world.top_up(payer, 3_000)
    before = world.api.get("/v1/checkpoints/latest").json()["tree_size"]
    good = world.payment(payer, payee.id, 100)
    oversize = [{**good, "id": new_uuid()} for _ in range(BATCH_MAX + 1)]
    cases: dict[str, tuple[Any, int, str, str | None]] = {
        "float_in_second": ({"payments": [good, {**good, "amount": 1.0}]}, 422,
                            "amount_not_integer", "payments.1.amount"),
        "unknown_field_in_item": ({"payments": [{**good, "memo": "x"}]}, 422, "unknown_field",
                                  "payments.0.memo"),
        "empty": ({"payments": []}, 422, "invalid_field", "payments"),
        "oversize": ({"payments": oversize}, 422, "batch_too_large", "payments"),
        "receipts_not_bool": ({"payments": [good], "receipts": "yes"}, 422, "invalid_field",
                              "receipts"),
        "missing_payments": ({}, 422, "missing_field", "payments"),
        "array": ([good], 400, "invalid_json", None),
    }  # fmt: skip
    for case, (body, status, code, param) in cases.items():
        with subtests.test(case):
            error(world.api.post("/v1/payments/batch", json=body), status, code, param)
    with subtests.test("malformed_json"):
        answer = world.api.post(
            "/v1/payments/batch", content=b'{"payments": [', headers=JSON_HEADERS
        )
        error(answer, 400, "invalid_json", None)
    assert world.api.get("/v1/checkpoints/latest").json()["tree_size"] == before
    assert world.wallet_view(payer)["balance_fen"] == 3_000, "nothing moved"
    answer = world.post("/v1/payments/batch", {"payments": [good]})
    assert [r["result"] for r in answer["results"]] == ["ok"]


def test_rotated_key_stops_the_old_one_at_once(world: World) -> None:
    payer, payee = world.wallet(bank=10_000), world.wallet()
    world.top_up(payer, 3_000)
    old = payer.key
    new = SigningKey.generate()
    body = {"public_key": b64(bytes(new.verify_key)), "verification_reference": "counter 12"}
    assert world.post(f"/v1/wallets/{payer.id}/key", body, world.op)["results"][0]["result"] == "ok"
    assert result(world.pay(payer, payee.id, 100, key=old)) == "wallet_key_rotated"
    payer.key_version = 2
    assert result(world.pay(payer, payee.id, 100, key=old)) == "signature_invalid"
    payer.key = new
    assert result(world.pay(payer, payee.id, 100)) == "ok"
    assert world.wallet_view(payer)["key_version"] == 2
    other = world.api.post(f"/v1/wallets/{payer.id}/key", json=body, headers=world.op_b)
    assert other.status_code == 404, "another operator cannot rotate it"


# -- classes, sub-wallets ------------------------------------------------------------------------


def test_class_upgrade_raises_limits_and_downgrade_below_balance_is_refused(world: World) -> None:
    w = world.wallet(3, bank=100_000, kyc={"phone": "+86138", "name": "Han Mei", "id_number": "1"})
    assert world.top_up(w, 15_000) == "ok"
    refused = world.api.post(f"/v1/wallets/{w.id}/class", json={"class": 4}, headers=world.op)
    answer = refused.json()["results"][0]
    assert answer["result"] == "class_downgrade_exceeds_balance"
    assert answer["limit"] == {
        "balance_fen": 15_000,
        "balance_cap_fen": 10_000,
        "limits_version": "test-small",
    }
    assert world.wallet_view(w)["class"] == 3
    assert (
        world.post(f"/v1/wallets/{w.id}/class", {"class": 2}, world.op)["results"][0]["result"]
        == "ok"
    )
    assert world.wallet_view(w)["limits"]["balance_cap"] == 100_000
    phone_only = world.wallet(4, kyc={"phone": "+86139"})
    response = world.api.post(
        f"/v1/wallets/{phone_only.id}/class", json={"class": 3}, headers=world.op
    )
    assert response.status_code == 422 and response.json()["error"]["code"] == "kyc_incomplete"
    upgrade = {"class": 3, "kyc": {"name": "Wang", "id_number": "2"}}
    assert (
        world.post(f"/v1/wallets/{phone_only.id}/class", upgrade, world.op)["results"][0]["result"]
        == "ok"
    )


def test_sub_wallet_lifecycle(world: World) -> None:
    parent, merchant, other = world.wallet(2, bank=100_000), world.wallet(), world.wallet()
    world.top_up(parent, 10_000)
    sub_key = SigningKey.generate()
    sub = W(new_uuid(), sub_key)
    path = f"/v1/wallets/{parent.id}/sub_wallets"
    body = {
        "id": sub.id,
        "public_key": b64(bytes(sub_key.verify_key)),
        "bound_payee": merchant.id,
        "limits": {"balance_cap": 2_000, "single": 500, "daily": 1_000, "annual": 3_000},
    }
    too_big = dict(body, limits={**body["limits"], "single": 20_001})
    answer = _signed_post(world, parent, path, too_big).json()["results"][0]
    assert answer["result"] == "sub_wallet_limits_invalid"
    assert _signed_post(world, parent, path, body).json()["results"][0]["result"] == "ok"
    assert result(world.pay(parent, sub.id, 1_500, kind="sub_wallet_fund")) == "ok"
    assert result(world.pay(sub, merchant.id, 500)) == "ok"
    assert result(world.pay(sub, other.id, 100)) == "sub_wallet_payee_not_allowed"
    assert result(world.pay(sub, merchant.id, 501)) == "exceeds_single_limit"
    close = {"id": new_uuid(), "reason": "app uninstalled"}
    closed = _signed_post(world, parent, f"/v1/wallets/{sub.id}/close", close).json()
    assert closed["results"][0]["result"] == "ok"
    assert world.wallet_view(parent)["balance_fen"] == 10_000 - 1_500 + 1_000
    assert world.wallet_view(sub)["closed"] is True
    assert result(world.pay(sub, merchant.id, 1)) == "debit_account_already_closed"


def _column(conn: Any, sql: str) -> bytes:
    return b"".join(bytes(r[0]) for r in conn.execute(text(sql)))


def _signed_post(world: World, w: W, path: str, body: dict[str, Any]) -> Any:
    raw = json.dumps(body).encode()
    ts = time.time_ns() // 1_000_000
    signature = w.key.sign(signing.read_message("POST", path, ts, raw)).signature
    headers = {
        "Wallet-Id": w.id,
        "Wallet-Timestamp": str(ts),
        "Wallet-Signature": b64(signature),
        "Content-Type": "application/json",
    }
    return world.api.post(path, content=raw, headers=headers)


# -- privacy, access -----------------------------------------------------------------------------


def test_kyc_is_encrypted_and_revealing_an_owner_is_journaled(world: World) -> None:
    w = world.wallet(
        3,
        bank=1,
        kyc={"phone": "+8613912345678", "name": "Zhang San", "id_number": "310101199001011234"},
    )
    engine = world.service.store.engine
    with engine.connect() as conn:
        from sqlalchemy import text

        sealed = b"".join(
            bytes(r[0]) for r in conn.execute(text("SELECT ciphertext FROM kyc_records"))
        )
        bodies = b"".join(
            bytes(r[0]) for r in conn.execute(text("SELECT body FROM journal_entries"))
        )
    for secret in (b"Zhang San", b"310101199001011234", b"+8613912345678"):
        assert secret not in sealed and secret not in bodies
    path = f"/v1/wallets/{w.id}/reveal"
    no_basis = world.api.post(path, json={"legal_basis": "", "requester": "x"}, headers=world.op)
    assert no_basis.status_code == 422
    assert (
        world.api.post(
            path, json={"legal_basis": "court order 17", "requester": "x"}, headers=world.op_b
        ).status_code
        == 404
    )
    answer = world.post(
        path,
        {"legal_basis": "court order 17", "requester": "officer 9", "case_reference": "CASE-1"},
        world.cb,
    )
    assert answer["owner"]["name"] == "Zhang San"
    history = world.api.get(f"/v1/wallets/{w.id}/entries", headers=world.op).json()["data"]
    revealed = [
        e for e in history if e["kind"] == "record" and e["entry"]["type"] == "kyc_revealed"
    ]
    assert len(revealed) == 1
    payload = revealed[0]["entry"]["payload"]
    assert payload["legal_basis"] == "court order 17" and "officer 9" in payload["requester"]
    assert "Zhang San" not in json.dumps(payload)


def test_signed_reads_and_who_sees_a_wallet(world: World) -> None:
    w, other = world.wallet(bank=1_000), world.wallet()
    world.top_up(w, 700)
    response, headers = world.signed_get(w, f"/v1/wallets/{w.id}")
    assert response.status_code == 200 and response.json()["balance_fen"] == 700
    replay = world.api.get(f"/v1/wallets/{w.id}", headers=headers)
    assert replay.status_code == 401 and replay.json()["error"]["code"] == "wallet_request_replayed"
    response, _ = world.signed_get(other, f"/v1/wallets/{w.id}")
    assert response.status_code == 404, "another wallet learns nothing"
    response, _ = world.signed_get(w, f"/v1/wallets/{w.id}", key=SigningKey.generate())
    assert response.status_code == 401
    stale = dict(headers, **{"Wallet-Timestamp": str(time.time_ns() // 1_000_000 - 400_000)})
    response = world.api.get(f"/v1/wallets/{w.id}", headers=stale)
    assert response.json()["error"]["code"] == "wallet_signature_expired"
    assert world.api.get(f"/v1/wallets/{w.id}").status_code == 401
    assert world.api.get(f"/v1/wallets/{w.id}", headers=world.op_b).status_code == 404
    assert world.api.get(f"/v1/wallets/{w.id}", headers=world.cb).status_code == 200
    response, _ = world.signed_get(w, f"/v1/wallets/{w.id}/entries?limit=2")
    assert response.status_code == 200 and len(response.json()["data"]) == 2
    page = response.json()  # sent as is: what the documented model says, nothing more
    assert EntryPage.model_validate(page).model_dump() == page


def test_a_rotated_key_stops_signing_reads_where_the_old_one_was_seen(world: World) -> None:
    """A worker verifies a signed read with the key it last saw; the writer admits it only while
    that key is the wallet's. So the old key stops at once after a rotation, even where it was
    just used, and the new key works at once, even where it was never seen."""
    w = world.wallet()
    before, _ = world.signed_get(w, f"/v1/wallets/{w.id}")  # the old key, now in memory
    assert before.status_code == 200 and before.json()["key_version"] == 1
    new = SigningKey.generate()
    body = {"public_key": b64(bytes(new.verify_key)), "verification_reference": "counter 3"}
    assert world.post(f"/v1/wallets/{w.id}/key", body, world.op)["results"][0]["result"] == "ok"
    old, _ = world.signed_get(w, f"/v1/wallets/{w.id}")
    assert old.status_code == 401 and old.json()["error"]["code"] == "invalid_wallet_signature"
    fresh, headers = world.signed_get(w, f"/v1/wallets/{w.id}/entries", key=new)
    assert fresh.status_code == 200 and fresh.json()["data"][0]["entry"]["type"] == "wallet_updated"
    replay = world.api.get(f"/v1/wallets/{w.id}/entries", headers=headers)
    assert replay.status_code == 401 and replay.json()["error"]["code"] == "wallet_request_replayed"


# -- receipts, conservation, verify ---------------------------------------------------------------


def test_receipt_entry_proof_and_checkpoint(world: World) -> None:
    from ledger import checkpoint, entry, merkle

    payer, payee = world.wallet(bank=10_000), world.wallet()
    world.top_up(payer, 1_000)
    paid = world.pay(payer, payee.id, 250)
    receipt = paid["receipt"]
    body = base64.b64decode(receipt["entry"])
    decoded = entry.decode(body)
    assert isinstance(decoded, entry.TransferEntry) and decoded.amount == 250
    cp = receipt["checkpoint"]
    public_key = base64.b64decode(world.api.get("/v1/public_key").json()["public_key"])
    signed = checkpoint.parse_note(cp["note"], public_key)
    assert signed.verify(public_key) and signed.size == receipt["tree_size"]
    proof = [base64.b64decode(h) for h in receipt["inclusion_proof"]]
    assert merkle.verify_inclusion(body, receipt["leaf_index"], signed.size, proof, signed.root)


def test_receipts_from_the_writers_memory_equal_those_read_back(world: World) -> None:
    """A payment's receipt is built from the committed batch in memory; the same receipt read
    later from the database (``GET /v1/receipts``) must be identical, for one payment and for
    every payment of a batch."""
    payer, payee = world.wallet(bank=10_000), world.wallet()
    world.top_up(payer, 5_000)
    answers = [world.pay(payer, payee.id, 100)]
    batch = [world.payment(payer, payee.id, 10 + i) for i in range(5)]
    answers += world.post("/v1/payments/batch", {"payments": batch, "receipts": True})["results"]
    assert len({a["receipt"]["tree_size"] for a in answers}) == 2, "one single, one batch"
    for answer in answers:
        assert answer["result"] == "ok"
        tid = answer["id"]
        made = answer["receipt"]
        stored = world.api.get(
            f"/v1/receipts/{tid}?tree_size={made['tree_size']}", headers=world.op
        )
        assert stored.status_code == 200, stored.text
        assert stored.json()["receipt"] == made


def test_circulation_is_issued_minus_redeemed_and_verify_agrees(world: World) -> None:
    a, b = world.wallet(2, bank=500_000), world.wallet(bank=1)
    world.top_up(a, 50_000)
    world.pay(a, b.id, 12_345)
    redeemed = 5_000
    body = {"id": new_uuid(), "operator": "op_a", "amount": redeemed}
    assert (
        world.post("/v1/central_bank_redemptions", body, world.cb)["results"][0]["result"] == "ok"
    )
    circulation = world.api.get("/v1/circulation", headers=world.cb).json()
    assert circulation["circulation_fen"] == sum(world.issued) - redeemed
    assert world.api.get("/v1/circulation", headers=world.op).status_code == 403
    report = verify(world.service.store.engine)
    assert report.ok, report.problem
    assert (
        report.circulation_fen
        == report.issued_fen - report.redeemed_fen
        == circulation["circulation_fen"]
    )
    assert report.signatures >= 1


def test_verify_names_a_forged_wallet_signature(world: World, database_url: str) -> None:
    payer, payee = world.wallet(bank=10_000), world.wallet()
    world.top_up(payer, 1_000)
    seq = world.pay(payer, payee.id, 100)["seq"]
    world.service.close()
    drop_triggers(database_url)
    raw_sql(database_url, "DELETE FROM merkle_tiles")  # hide it from the stored leaf hashes
    engine = make_engine(database_url)
    with engine.begin() as conn:
        body = bytes(
            conn.execute(
                text("SELECT body FROM journal_entries WHERE seq = :s"), {"s": seq}
            ).scalar_one()
        )
        forged = body[:-1] + bytes([body[-1] ^ 1])  # the last byte of the signature
        conn.execute(
            text("UPDATE journal_entries SET body = :b WHERE seq = :s"), {"b": forged, "s": seq}
        )
    report = verify(engine)
    engine.dispose()
    assert report.problem == f"entry {seq}: the payer's signature does not verify"


def test_reopening_a_wallet_replays_only_the_same_wallet(world: World) -> None:
    w = world.wallet()
    body = {
        "id": w.id,
        "class": 4,
        "public_key": b64(bytes(w.key.verify_key)),
        "kyc": {"phone": "+8613800000000", "name": "Li Lei", "id_number": "110101"},
        "linked_bank_account": None,
        "reverse_waterfall": False,
    }
    again = world.post("/v1/wallets", body, world.op)["results"][0]
    assert again["result"] == "ok" and again["replayed"] is True
    other_key = dict(body, public_key=b64(bytes(SigningKey.generate().verify_key)))
    assert world.post("/v1/wallets", other_key, world.op)["results"][0]["result"] == "wallet_exists"
    other_class = dict(body, **{"class": 3})
    assert world.post("/v1/wallets", other_class, world.op)["results"][0]["result"] == (
        "wallet_exists"
    )
    assert world.wallet_view(w)["public_key"] == b64(bytes(w.key.verify_key))


def test_wallet_switches_take_only_true_or_false(world: World) -> None:
    """A JSON bool, not "yes", 1 or "true": pydantic's lax mode would read those as true."""
    w = world.wallet(bank=1_000)  # a reverse waterfall needs a linked bank account
    body = {
        "id": new_uuid(),
        "class": 4,
        "public_key": b64(bytes(SigningKey.generate().verify_key)),
        "kyc": {"phone": "+8613800000000", "name": "Li Lei", "id_number": "110101"},
    }
    for loose in ("yes", 1, "true"):
        opened = world.api.post("/v1/wallets", json={**body, "reverse_waterfall": loose},
                                headers=world.op)  # fmt: skip
        error(opened, 422, "invalid_field", "reverse_waterfall")
        changed = world.api.post(f"/v1/wallets/{w.id}/settings",
                                 json={"reverse_waterfall": loose}, headers=world.op)  # fmt: skip
        error(changed, 422, "invalid_field", "reverse_waterfall")
    assert world.api.get(f"/v1/wallets/{body['id']}", headers=world.op).status_code == 404
    assert world.wallet_view(w)["reverse_waterfall"] is False
    answer = world.post(f"/v1/wallets/{w.id}/settings", {"reverse_waterfall": True}, world.op)
    assert answer["results"][0]["result"] == "ok"
    assert world.wallet_view(w)["reverse_waterfall"] is True


def test_closing_a_sub_wallet_answers_with_the_returning_transfer(world: World) -> None:
    parent, merchant = world.wallet(2, bank=10_000), world.wallet()
    world.top_up(parent, 5_000)
    sub = W(new_uuid(), SigningKey.generate())
    body = {
        "id": sub.id,
        "public_key": b64(bytes(sub.key.verify_key)),
        "bound_payee": merchant.id,
        "limits": {"balance_cap": 2_000, "single": 500, "daily": 1_000, "annual": 3_000},
    }
    _signed_post(world, parent, f"/v1/wallets/{parent.id}/sub_wallets", body)
    world.pay(parent, sub.id, 800, kind="sub_wallet_fund")
    close_id = new_uuid()
    answer = _signed_post(world, parent, f"/v1/wallets/{sub.id}/close", {"id": close_id}).json()
    item = answer["results"][0]
    assert item["id"] == close_id and item["result"] == "ok" and item["seq"] is not None
    home = world.api.get(f"/v1/transfers/{close_id}", headers=world.op).json()
    assert home["amount"] == 800 and home["credit_account_id"] == parent.id


def test_wallets_open_in_bulk_each_answered_on_its_own(world: World) -> None:
    keys = [SigningKey.generate() for _ in range(50)]
    bodies: list[dict[str, Any]] = [
        {
            "id": new_uuid(),
            "class": 4,
            "public_key": b64(bytes(k.verify_key)),
            "kyc": {"phone": f"+86138{i:08d}"},
        }
        for i, k in enumerate(keys)
    ]
    existing = world.wallet()
    taken = dict(bodies[0], id=existing.id)  # someone else's id with another key
    answer = world.post("/v1/wallets/batch", {"wallets": [*bodies, taken]}, world.op)
    results = [r["result"] for r in answer["results"]]
    assert results == ["ok"] * 50 + ["wallet_exists"]
    opened = W(bodies[7]["id"], keys[7])
    assert world.wallet_view(opened)["public_key"] == bodies[7]["public_key"]
    response, _ = world.signed_get(opened, f"/v1/wallets/{opened.id}")
    assert response.status_code == 200  # the key works for signed reads
    reveal = world.api.post(
        f"/v1/wallets/{opened.id}/reveal",
        json={"legal_basis": "court order 2026-17", "requester": "auditor"},
        headers=world.op,
    )
    assert reveal.status_code == 200 and reveal.json()["owner"]["phone"] == "+8613800000007"
    again = world.post("/v1/wallets/batch", {"wallets": bodies[:3]}, world.op)
    assert [r["replayed"] for r in again["results"]] == [True, True, True]


def test_a_bulk_open_with_one_bad_wallet_opens_none(world: World) -> None:
    key = b64(bytes(SigningKey.generate().verify_key))
    good = {"id": new_uuid(), "class": 4, "public_key": key, "kyc": {"phone": "+8613800000001"}}
    bad = dict(good, id=new_uuid(), **{"class": 2})  # class 2 needs ID, name and a bank account
    response = world.api.post("/v1/wallets/batch", json={"wallets": [good, bad]}, headers=world.op)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "kyc_incomplete" and error["param"].startswith("wallets[1].kyc.")
    assert world.api.get(f"/v1/wallets/{good['id']}", headers=world.op).status_code == 404
    too_many = {"wallets": [dict(good, id=new_uuid()) for _ in range(1001)]}
    response = world.api.post("/v1/wallets/batch", json=too_many, headers=world.op)
    assert response.status_code == 422
    twice = world.api.post("/v1/wallets/batch", json={"wallets": [good, good]}, headers=world.op)
    assert twice.status_code == 422 and twice.json()["error"]["code"] == "duplicate_id"
    response = world.api.post("/v1/wallets/batch", json={"wallets": [good]}, headers=world.cb)
    assert response.status_code == 403

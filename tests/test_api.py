"""The HTTP API end to end, on real SQLite and the real PostgreSQL.

Every request goes through ``create_app`` around a running ``LedgerService``: routes, auth,
operator scoping, validation, the one error shape, the public journal endpoints with their proofs
checked by the same verification code clients use, and backpressure (503) from a stalled database.
"""

from __future__ import annotations

import base64
import gc
import json
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from ledger import auth, checkpoint, merkle
from ledger.api.errors import BODY_MAX_BYTES
from ledger.api.models import format_id, parse_id
from ledger.auth import create_api_key
from ledger.domain import AMOUNT_MAX, BATCH_MAX, METADATA_BYTES_MAX, METADATA_KEYS_MAX
from ledger.ids import new_uuid
from ledger.service import LedgerService
from ledger.store.database import is_sqlite, sqlite_path
from tests.conftest import app_for, served_app

ORIGIN = "test.example/ledger"
OP_A, OP_B = "bank_a", "bank_b"
FUNDING = 10_000
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    500: "api_error",
    503: "api_error",
}
_ANY = object()


# ================================================================================================
# Fixtures
# ================================================================================================


@pytest.fixture
def ledger_service(database_url: str, key_file: Path) -> Iterator[LedgerService]:
    service = LedgerService.open(database_url, key_file, ORIGIN)
    try:
        yield service
    finally:
        service.close()


@pytest.fixture
def api(ledger_service: LedgerService, app_mode: str) -> Iterator[TestClient]:
    with served_app(ledger_service, app_mode) as app, TestClient(app) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def central_bank_headers(ledger_service: LedgerService) -> dict[str, str]:
    new = create_api_key(ledger_service.store.engine, "central_bank", "", "test central bank")
    return bearer(new.secret)


@pytest.fixture
def operator_headers(ledger_service: LedgerService) -> dict[str, str]:
    """Operator A."""
    return bearer(create_api_key(ledger_service.store.engine, "operator", OP_A, "a").secret)


@pytest.fixture
def other_operator_headers(ledger_service: LedgerService) -> dict[str, str]:
    """Operator B."""
    return bearer(create_api_key(ledger_service.store.engine, "operator", OP_B, "b").secret)


@dataclass(frozen=True)
class World:
    """Accounts of every kind of holder; alice and bob start with FUNDING fen each."""

    issuer: str  # the central bank's own account, no limit: issuing drives it negative
    alice: str  # operator A, debits must not exceed credits
    alice2: str  # operator A, debits must not exceed credits, empty
    bob: str  # operator B, debits must not exceed credits
    bob2: str  # operator B, debits must not exceed credits, empty
    central_bank: dict[str, str]  # headers that can read every account

    @property
    def all(self) -> list[str]:
        return [self.issuer, self.alice, self.alice2, self.bob, self.bob2]


@pytest.fixture
def world(
    api: TestClient,
    central_bank_headers: dict[str, str],
    operator_headers: dict[str, str],
    other_operator_headers: dict[str, str],
) -> World:
    w = World(new_uuid(), new_uuid(), new_uuid(), new_uuid(), new_uuid(), central_bank_headers)
    create_accounts(api, central_bank_headers, account(w.issuer, flags=[]))
    create_accounts(api, operator_headers, account(w.alice), account(w.alice2))
    create_accounts(api, other_operator_headers, account(w.bob), account(w.bob2))
    results = post_transfers(
        api,
        central_bank_headers,
        transfer(w.issuer, w.alice, FUNDING),
        transfer(w.issuer, w.bob, FUNDING),
    )
    assert [r["result"] for r in results] == ["ok", "ok"]
    return w


# ================================================================================================
# Helpers
# ================================================================================================


def account(account_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": account_id, "code": 2, "flags": ["debits_must_not_exceed_credits"], **fields}


def transfer(debit: str, credit: str, amount: int, **fields: Any) -> dict[str, Any]:
    return {
        "id": new_uuid(),
        "debit_account_id": debit,
        "credit_account_id": credit,
        "amount": amount,
        "code": 1,
        **fields,
    }


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    assert response.headers["Request-Id"].startswith("req_")
    return response.json() if response.content else None


def error(response: Any, status: int, code: str, param: object = _ANY) -> dict[str, Any]:
    """Assert the one error shape; return the error object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"type", "code", "message", "param", "request_id"}
    assert err["code"] == code, err
    assert err["type"] == ERROR_TYPES[status]
    assert isinstance(err["message"], str) and err["message"]
    assert err["request_id"].startswith("req_")
    assert err["request_id"] == response.headers["Request-Id"]
    if param is not _ANY:
        assert err["param"] == param, err
    return err  # type: ignore[no-any-return]


def create_accounts(api: TestClient, headers: dict[str, str], *accounts: dict) -> list[dict]:
    results = ok(api.post("/v1/accounts", json={"accounts": list(accounts)}, headers=headers))[
        "results"
    ]
    assert [r["result"] for r in results] == ["ok"] * len(accounts), results
    return results  # type: ignore[no-any-return]


def post_transfers(api: TestClient, headers: dict[str, str], *transfers: dict) -> list[dict]:
    body = ok(api.post("/v1/transfers", json={"transfers": list(transfers)}, headers=headers))
    results = body["results"]
    assert [r["index"] for r in results] == list(range(len(transfers)))
    assert [r["id"] for r in results] == [t["id"] for t in transfers]
    return results  # type: ignore[no-any-return]


def balances(api: TestClient, headers: dict[str, str], account_id: str) -> tuple[int, ...]:
    """(debits_pending, debits_posted, credits_pending, credits_posted) via GET /v1/accounts."""
    b = ok(api.get(f"/v1/accounts/{account_id}", headers=headers))["balances"]
    return (b["debits_pending"], b["debits_posted"], b["credits_pending"], b["credits_posted"])


def tree_size(api: TestClient) -> int:
    return ok(api.get("/v1/checkpoints/latest"))["tree_size"]  # type: ignore[no-any-return]


def snapshot(api: TestClient, world: World) -> tuple[Any, ...]:
    """What a rejected request must not change: the log's size and every balance."""
    return (tree_size(api), [balances(api, world.central_bank, a) for a in world.all])


@contextmanager
def database_stalled(url: str, postgres_lock: str = "ACCESS EXCLUSIVE") -> Iterator[None]:
    """Another connection holds a lock, so the ledger's commits wait until the block ends.

    SQLite: BEGIN EXCLUSIVE (in WAL mode readers still read). PostgreSQL: LOCK TABLE
    journal_entries in ``postgres_lock`` mode (EXCLUSIVE lets readers through, ACCESS EXCLUSIVE
    stops them too)."""
    if is_sqlite(url):
        conn: Any = sqlite3.connect(sqlite_path(url), isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
    else:
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        conn = psycopg.connect(dsn)
        conn.execute(f"LOCK TABLE journal_entries IN {postgres_lock} MODE")
    try:
        yield
    finally:
        conn.rollback()
        conn.close()


# ================================================================================================
# 1. The happy path
# ================================================================================================


def test_create_accounts_in_a_batch_and_read_them_back(
    api: TestClient, operator_headers: dict[str, str]
) -> None:
    ids = [new_uuid() for _ in range(3)]
    batch = [
        account(ids[0], owner="wallet-1"),
        account(ids[1], code=7, flags=[]),
        account(ids[2], flags=["credits_must_not_exceed_debits"]),
    ]
    results = create_accounts(api, operator_headers, *batch)
    assert [r["index"] for r in results] == [0, 1, 2]
    assert [r["id"] for r in results] == ids
    assert [r["replayed"] for r in results] == [False] * 3
    seqs = [r["seq"] for r in results]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert all(isinstance(r["timestamp"], int) and r["timestamp"] > 0 for r in results)

    got = ok(api.get(f"/v1/accounts/{ids[0]}", headers=operator_headers))
    assert got == {
        "id": ids[0],
        "currency": "CNY",
        "code": 2,
        "flags": ["debits_must_not_exceed_credits"],
        "owner": "wallet-1",
        "operator": OP_A,
        "balances": {
            "debits_pending": 0,
            "debits_posted": 0,
            "credits_pending": 0,
            "credits_posted": 0,
        },
        "created_seq": seqs[0],
        "timestamp": results[0]["timestamp"],
    }
    assert ok(api.get(f"/v1/accounts/{ids[1]}", headers=operator_headers))["code"] == 7
    # the same id without dashes, upper case: the same account
    undashed = ids[2].replace("-", "").upper()
    third = ok(api.get(f"/v1/accounts/{undashed}", headers=operator_headers))
    assert third["id"] == ids[2] and third["flags"] == ["credits_must_not_exceed_debits"]

    size = tree_size(api)
    again = create_accounts(api, operator_headers, *batch)  # a replay: the original outcome
    assert [r["replayed"] for r in again] == [True] * 3
    assert [(r["seq"], r["timestamp"]) for r in again] == [
        (r["seq"], r["timestamp"]) for r in results
    ]
    assert tree_size(api) == size

    changed = ok(
        api.post(
            "/v1/accounts", json={"accounts": [account(ids[0], code=3)]}, headers=operator_headers
        )
    )["results"]
    assert changed[0]["result"] == "exists_with_different_code" and changed[0]["seq"] is None


def test_transfers_answer_per_item(
    api: TestClient, world: World, operator_headers: dict[str, str]
) -> None:
    unknown = new_uuid()
    batch = [
        transfer(world.alice, world.alice2, 1_500, metadata={"order": "A-1"}),
        transfer(world.alice2, world.alice, 2_000),  # alice2 holds 1_500
        transfer(unknown, world.alice, 1),
        transfer(world.alice, unknown, 1),
        transfer(world.alice, world.alice, 1),
        transfer(world.alice, world.bob, 500),  # crediting another operator's account is fine
    ]
    results = post_transfers(api, operator_headers, *batch)
    assert [r["result"] for r in results] == [
        "ok",
        "exceeds_credits",
        "debit_account_not_found",
        "credit_account_not_found",
        "accounts_must_be_different",
        "ok",
    ]
    assert [r["replayed"] for r in results] == [False] * 6
    assert results[0]["seq"] is not None and results[5]["seq"] == results[0]["seq"] + 1
    assert all(r["seq"] is None and r["timestamp"] is None for r in results[1:5])
    assert balances(api, operator_headers, world.alice) == (0, 2_000, 0, FUNDING)
    assert balances(api, operator_headers, world.alice2) == (0, 0, 0, 1_500)

    again = post_transfers(api, operator_headers, *batch)  # idempotent: the same answers
    assert [r["result"] for r in again] == [r["result"] for r in results]
    assert [r["replayed"] for r in again] == [True, True, True, True, False, True]
    assert [r["seq"] for r in again] == [r["seq"] for r in results]
    assert balances(api, operator_headers, world.alice) == (0, 2_000, 0, FUNDING)

    different = dict(batch[0], amount=1_501)
    assert post_transfers(api, operator_headers, different)[0]["result"] == (
        "exists_with_different_amount"
    )


def test_read_a_transfer_accepted_or_rejected(
    api: TestClient, world: World, operator_headers: dict[str, str]
) -> None:
    paid = transfer(world.alice, world.alice2, 1_234, code=9, metadata={"note": "lunch"})
    refused = transfer(world.alice2, world.alice, 5_000)  # alice2 holds 1_234
    results = post_transfers(api, operator_headers, paid, refused)

    got = ok(api.get(f"/v1/transfers/{paid['id']}", headers=operator_headers))
    assert got == {
        "id": paid["id"],
        "debit_account_id": world.alice,
        "credit_account_id": world.alice2,
        "amount": 1_234,
        "currency": "CNY",
        "code": 9,
        "flags": [],
        "pending_id": None,
        "timeout_s": 0,
        "metadata": {"note": "lunch"},
        "timestamp": results[0]["timestamp"],
        "result": "ok",
        "seq": results[0]["seq"],
        "pending_state": None,
    }
    rejected = ok(api.get(f"/v1/transfers/{refused['id']}", headers=operator_headers))
    assert rejected["result"] == "exceeds_credits" and rejected["seq"] is None
    assert rejected["amount"] == 5_000

    error(
        api.get(f"/v1/transfers/{new_uuid()}", headers=operator_headers),
        404,
        "transfer_not_found",
        "transfer_id",
    )
    error(
        api.get("/v1/transfers/not-a-uuid", headers=operator_headers),
        404,
        "transfer_not_found",
        "transfer_id",
    )


def test_account_entries_are_cursor_paginated(
    api: TestClient, world: World, operator_headers: dict[str, str]
) -> None:
    results = post_transfers(
        api, operator_headers, *[transfer(world.alice, world.alice2, 10 + i) for i in range(6)]
    )
    full = ok(api.get(f"/v1/accounts/{world.alice}/entries?limit=100", headers=operator_headers))
    assert full["object"] == "list" and full["has_more"] is False
    seqs = [e["seq"] for e in full["data"]]
    assert len(seqs) == 8, "created, funded, six payments"
    assert seqs == sorted(seqs, reverse=True)
    assert seqs[:6] == [r["seq"] for r in reversed(results)]
    kinds = [e["kind"] for e in full["data"]]
    assert kinds == ["transfer"] * 7 + ["account_created"]
    newest = full["data"][0]
    assert newest["entry"]["id"] == results[-1]["id"] and newest["entry"]["amount"] == 15
    assert base64.b64decode(newest["body"]), "canonical bytes, base64"

    def pages(limit: int) -> list[tuple[list[int], bool]]:
        out, cursor = [], None
        while True:
            url = f"/v1/accounts/{world.alice}/entries?limit={limit}"
            if cursor is not None:
                url += f"&starting_after={cursor}"
            page = ok(api.get(url, headers=operator_headers))
            out.append(([e["seq"] for e in page["data"]], page["has_more"]))
            if not page["has_more"]:
                return out
            cursor = page["data"][-1]["seq"]

    by_three = pages(3)
    assert [has_more for _, has_more in by_three] == [True, True, False]
    assert [len(p) for p, _ in by_three] == [3, 3, 2]
    assert [s for p, _ in by_three for s in p] == seqs
    by_four = pages(4)  # the last page is exactly full: has_more must still be False
    assert [(len(p), more) for p, more in by_four] == [(4, True), (4, False)]
    assert [s for p, _ in by_four for s in p] == seqs

    default = ok(api.get(f"/v1/accounts/{world.alice}/entries", headers=operator_headers))
    assert [e["seq"] for e in default["data"]] == seqs and default["has_more"] is False
    for bad in ("limit=0", "limit=101", "limit=x", "starting_after=-1"):
        error(
            api.get(f"/v1/accounts/{world.alice}/entries?{bad}", headers=operator_headers),
            422,
            "invalid_field",
            bad.split("=")[0],
        )


def test_balance_as_of_a_sequence_number(
    api: TestClient, world: World, operator_headers: dict[str, str]
) -> None:
    created_seq = ok(api.get(f"/v1/accounts/{world.alice}", headers=operator_headers))[
        "created_seq"
    ]
    results = post_transfers(
        api,
        operator_headers,
        *[transfer(world.alice, world.alice2, 100 * (i + 1)) for i in range(4)],
    )
    spent = 0
    for i, r in enumerate(results):
        spent += 100 * (i + 1)
        got = ok(
            api.get(
                f"/v1/accounts/{world.alice}/balance?as_of_seq={r['seq']}", headers=operator_headers
            )
        )
        assert got == {
            "account_id": world.alice,
            "as_of_seq": r["seq"],
            "last_entry_seq": r["seq"],
            "debits_pending": 0,
            "debits_posted": spent,
            "credits_pending": 0,
            "credits_posted": FUNDING,
        }
    # an entry that does not touch alice: her balance as of the one before it
    bob_pay = post_transfers(api, operator_headers, transfer(world.alice2, world.bob, 5))[0]
    at = ok(
        api.get(
            f"/v1/accounts/{world.alice}/balance?as_of_seq={bob_pay['seq']}",
            headers=operator_headers,
        )
    )
    assert at["last_entry_seq"] == results[-1]["seq"] and at["debits_posted"] == 1_000

    now = ok(api.get(f"/v1/accounts/{world.alice}/balance", headers=operator_headers))
    assert now["as_of_seq"] == tree_size(api) - 1
    assert (now["debits_posted"], now["credits_posted"]) == (1_000, FUNDING)
    assert balances(api, operator_headers, world.alice) == (0, 1_000, 0, FUNDING)

    at_creation = ok(
        api.get(
            f"/v1/accounts/{world.alice}/balance?as_of_seq={created_seq}", headers=operator_headers
        )
    )
    assert at_creation["last_entry_seq"] == created_seq and at_creation["credits_posted"] == 0
    error(
        api.get(
            f"/v1/accounts/{world.alice}/balance?as_of_seq={created_seq - 1}",
            headers=operator_headers,
        ),
        404,
        "account_not_found_at_seq",
        "as_of_seq",
    )
    error(
        api.get(f"/v1/accounts/{world.alice}/balance?as_of_seq=-1", headers=operator_headers),
        422,
        "invalid_field",
        "as_of_seq",
    )
    # a seq the log has not reached yet: refused, not answered with a balance that may change
    future = f"/v1/accounts/{world.alice}/balance?as_of_seq={tree_size(api)}"
    error(api.get(future, headers=operator_headers), 422, "as_of_seq_out_of_range", "as_of_seq")
    # the id sent without dashes: the answer names the account the one canonical way
    undashed = world.alice.replace("-", "").upper()
    got = ok(api.get(f"/v1/accounts/{undashed}/balance", headers=operator_headers))
    assert got["account_id"] == world.alice


def test_close_an_account_then_transfers_to_it_are_refused(
    api: TestClient, world: World, operator_headers: dict[str, str]
) -> None:
    post_transfers(api, operator_headers, transfer(world.alice, world.alice2, 300))
    closed = ok(api.post(f"/v1/accounts/{world.alice2}/close", headers=operator_headers))
    (result,) = closed["results"]
    assert result["id"] == world.alice2 and result["result"] == "ok"
    assert result["replayed"] is False
    assert result["seq"] == tree_size(api) - 1, "the seq of the close, not of the creation"
    entry = ok(api.get(f"/v1/journal/entries/{result['seq']}", headers=operator_headers))
    assert entry["kind"] == "account_closed" and entry["entry"]["account_id"] == world.alice2
    assert result["timestamp"] == entry["entry"]["timestamp"]

    again = ok(api.post(f"/v1/accounts/{world.alice2}/close", headers=operator_headers))
    assert again["results"][0]["replayed"] is True
    assert again["results"][0]["seq"] == result["seq"]

    got = ok(api.get(f"/v1/accounts/{world.alice2}", headers=operator_headers))
    assert "closed" in got["flags"]
    results = post_transfers(
        api,
        operator_headers,
        transfer(world.alice, world.alice2, 1),
        transfer(world.alice2, world.alice, 1),
    )
    assert [r["result"] for r in results] == [
        "credit_account_already_closed",
        "debit_account_already_closed",
    ]
    assert balances(api, operator_headers, world.alice2) == (0, 0, 0, 300)
    assert balances(api, operator_headers, world.alice) == (0, 300, 0, FUNDING)
    error(
        api.post(f"/v1/accounts/{new_uuid()}/close", headers=operator_headers),
        404,
        "account_not_found",
        "account_id",
    )


def test_pending_then_partial_post_and_void(
    api: TestClient, world: World, operator_headers: dict[str, str]
) -> None:
    hold = transfer(world.alice, world.bob, 1_000, flags=["pending"], timeout_s=3600)
    hold2 = transfer(world.alice, world.bob, 500, flags=["pending"])
    assert [r["result"] for r in post_transfers(api, operator_headers, hold, hold2)] == ["ok"] * 2
    assert balances(api, operator_headers, world.alice) == (1_500, 0, 0, FUNDING)
    got = ok(api.get(f"/v1/transfers/{hold['id']}", headers=operator_headers))
    assert got["pending_state"] == "pending" and got["flags"] == ["pending"]
    assert got["timeout_s"] == 3600

    post = {"id": new_uuid(), "pending_id": hold["id"], "amount": 600, "flags": ["post_pending"]}
    void = {"id": new_uuid(), "pending_id": hold2["id"], "flags": ["void_pending"]}
    assert [r["result"] for r in post_transfers(api, operator_headers, post, void)] == ["ok"] * 2
    assert balances(api, operator_headers, world.alice) == (0, 600, 0, FUNDING)
    assert balances(api, world.central_bank, world.bob)[2:] == (0, FUNDING + 600)

    assert (
        ok(api.get(f"/v1/transfers/{hold['id']}", headers=operator_headers))["pending_state"]
        == "posted"
    )
    assert (
        ok(api.get(f"/v1/transfers/{hold2['id']}", headers=operator_headers))["pending_state"]
        == "voided"
    )
    posted = ok(api.get(f"/v1/transfers/{post['id']}", headers=operator_headers))
    assert posted["amount"] == 600 and posted["pending_id"] == hold["id"]
    assert posted["flags"] == ["post_pending"]
    assert (posted["debit_account_id"], posted["credit_account_id"]) == (world.alice, world.bob)

    late = [
        {"id": new_uuid(), "pending_id": hold["id"], "flags": ["void_pending"]},
        {"id": new_uuid(), "pending_id": hold2["id"], "flags": ["post_pending"]},
        {"id": new_uuid(), "pending_id": new_uuid(), "flags": ["post_pending"]},
        transfer(world.alice, world.bob, 1, pending_id=hold2["id"], flags=["pending"]),
    ]
    assert [r["result"] for r in post_transfers(api, operator_headers, *late)] == [
        "pending_transfer_already_posted",
        "pending_transfer_already_voided",
        "pending_transfer_not_found",
        "pending_id_must_be_zero",
    ]
    assert balances(api, operator_headers, world.alice) == (0, 600, 0, FUNDING)


def test_a_linked_chain_fails_together(
    api: TestClient, world: World, operator_headers: dict[str, str]
) -> None:
    before = snapshot(api, world)
    chain = [
        transfer(world.alice, world.alice2, 100, flags=["linked"]),
        transfer(world.alice, world.bob, 200, flags=["linked"]),
        transfer(world.alice2, world.bob, 1_000_000),  # alice2 cannot pay this: all fail
    ]
    results = post_transfers(api, operator_headers, *chain)
    assert [r["result"] for r in results] == [
        "linked_event_failed",
        "linked_event_failed",
        "exceeds_credits",
    ]
    assert snapshot(api, world) == before
    assert (
        ok(api.get(f"/v1/transfers/{chain[0]['id']}", headers=operator_headers))["result"]
        == "linked_event_failed"
    )

    good = [
        transfer(world.alice, world.alice2, 100, flags=["linked"]),
        transfer(world.alice2, world.bob, 100),  # paid from what the chain just credited
    ]
    assert [r["result"] for r in post_transfers(api, operator_headers, *good)] == ["ok", "ok"]
    open_chain = [transfer(world.alice, world.alice2, 1, flags=["linked"])]
    assert post_transfers(api, operator_headers, *open_chain)[0]["result"] == (
        "linked_event_chain_open"
    )
    assert balances(api, operator_headers, world.alice) == (0, 100, 0, FUNDING)


def test_duplicate_ids_in_one_batch_apply_once(
    api: TestClient, world: World, operator_headers: dict[str, str]
) -> None:
    before = tree_size(api)
    t = transfer(world.alice, world.alice2, 250)
    results = post_transfers(api, operator_headers, t, dict(t), dict(t, amount=1))
    assert [r["result"] for r in results] == ["ok", "ok", "exists_with_different_amount"]
    assert [r["replayed"] for r in results] == [False, True, False]
    assert results[1]["seq"] == results[0]["seq"]
    assert tree_size(api) == before + 1
    assert balances(api, operator_headers, world.alice2) == (0, 0, 0, 250)


def test_health_and_request_ids(api: TestClient) -> None:
    first, second = api.get("/healthz"), api.get("/healthz")
    assert ok(first) == {"status": "ok", "tree_size": 0, "origin": ORIGIN}
    ok(second)
    assert first.headers["Request-Id"] != second.headers["Request-Id"]
    error(api.get("/v1/nowhere"), 404, "not_found")
    error(api.delete("/v1/transfers"), 405, "method_not_allowed")


def test_a_closed_ledger_is_freed_with_its_app(tmp_path: Path) -> None:
    """Nothing module-level keeps a ledger alive once it and its app are gone: the test suite
    makes a thousand of them, and FastAPI caches every endpoint it has analysed."""
    service = LedgerService.open(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "k", ORIGIN)
    with TestClient(app_for(service)) as client:
        assert ok(client.get("/healthz"))["origin"] == ORIGIN
    service.close()
    freed = weakref.ref(service)
    del service, client
    gc.collect()
    assert freed() is None, "something still holds the closed ledger"


def test_an_unexpected_error_is_a_500_in_the_one_shape(
    ledger_service: LedgerService, caplog: pytest.LogCaptureFixture
) -> None:
    app = app_for(ledger_service)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app) as client:
        err = error(client.get("/boom"), 500, "internal_error", None)
    assert "a bug" not in err["message"], "internals stay in the log"
    assert any(err["request_id"] in r.getMessage() for r in caplog.records), "logged with the id"


# ================================================================================================
# 2. Bad input: a clear error, and nothing in the ledger moves
# ================================================================================================


def _valid(world: World, **fields: Any) -> dict[str, Any]:
    """A transfer operator A may send, with ``fields`` overriding."""
    return {**transfer(world.alice, world.bob, 100), **fields}


BAD_TRANSFER_BODIES: dict[str, tuple[Any, int, str, str | None]] = {
    # name: (body builder, status, code, param)
    "amount_float": (lambda w: {"transfers": [_valid(w, amount=10.5)]}, 422,
                     "amount_not_integer", "transfers.0.amount"),
    "amount_whole_float": (lambda w: {"transfers": [_valid(w, amount=100.0)]}, 422,
                           "amount_not_integer", "transfers.0.amount"),
    "amount_string": (lambda w: {"transfers": [_valid(w, amount="100")]}, 422,
                      "amount_not_integer", "transfers.0.amount"),
    "amount_bool": (lambda w: {"transfers": [_valid(w, amount=True)]}, 422,
                    "amount_not_integer", "transfers.0.amount"),
    "amount_float_in_second_item": (
        lambda w: {"transfers": [_valid(w), _valid(w, amount=1.0)]}, 422,
        "amount_not_integer", "transfers.1.amount"),
    "amount_negative": (lambda w: {"transfers": [_valid(w, amount=-1)]}, 422,
                        "invalid_field", "transfers.0.amount"),
    "amount_over_max": (lambda w: {"transfers": [_valid(w, amount=AMOUNT_MAX + 1)]}, 422,
                        "invalid_field", "transfers.0.amount"),
    "unknown_field": (lambda w: {"transfers": [_valid(w, memo="hi")]}, 422,
                      "unknown_field", "transfers.0.memo"),
    "unknown_top_level_field": (lambda w: {"transfers": [_valid(w)], "dry_run": True}, 422,
                                "unknown_field", "dry_run"),
    "missing_id": (lambda w: {"transfers": [{k: v for k, v in _valid(w).items() if k != "id"}]},
                   422, "missing_field", "transfers.0.id"),
    "missing_transfers": (lambda w: {}, 422, "missing_field", "transfers"),
    "id_not_uuid": (lambda w: {"transfers": [_valid(w, id="tx-1")]}, 422,
                    "invalid_field", "transfers.0.id"),
    "id_integer": (lambda w: {"transfers": [_valid(w, id=12345)]}, 422,
                   "invalid_field", "transfers.0.id"),
    "account_id_not_uuid": (lambda w: {"transfers": [_valid(w, debit_account_id="alice")]}, 422,
                            "invalid_field", "transfers.0.debit_account_id"),
    "currency_usd": (lambda w: {"transfers": [_valid(w, currency="USD")]}, 422,
                     "invalid_field", "transfers.0.currency"),
    "unknown_flag": (lambda w: {"transfers": [_valid(w, flags=["reverse"])]}, 422,
                     "invalid_field", "transfers.0.flags.0"),
    "empty_batch": (lambda w: {"transfers": []}, 422, "invalid_field", "transfers"),
    "transfers_not_a_list": (lambda w: {"transfers": _valid(w)}, 422, "invalid_field",
                             "transfers"),
    "metadata_too_large": (
        lambda w: {"transfers": [_valid(w, metadata={"k": "x" * METADATA_BYTES_MAX})]}, 422,
        "invalid_field", "transfers.0.metadata"),
    "metadata_too_many_keys": (
        lambda w: {"transfers": [_valid(w, metadata={f"k{i}": "v"
                                                     for i in range(METADATA_KEYS_MAX + 1)})]},
        422, "invalid_field", "transfers.0.metadata"),
    "metadata_value_not_string": (lambda w: {"transfers": [_valid(w, metadata={"n": 1})]}, 422,
                                  "invalid_field", "transfers.0.metadata.n"),
    "metadata_key_named_body": (lambda w: {"transfers": [_valid(w, metadata={"body": 1})]},
                                422, "invalid_field", "transfers.0.metadata.body"),
    "body_is_array": (lambda w: [_valid(w)], 400, "invalid_json", None),
    "body_is_string": (lambda w: "transfers", 400, "invalid_json", None),
}  # fmt: skip


def test_bad_transfer_bodies_are_refused_and_change_nothing(
    api: TestClient, world: World, operator_headers: dict[str, str], subtests: pytest.Subtests
) -> None:
    before = snapshot(api, world)
    for case, (build, status, code, param) in BAD_TRANSFER_BODIES.items():
        with subtests.test(case):
            body = build(world)
            response = api.post("/v1/transfers", json=body, headers=operator_headers)
            err = error(response, status, code, param)
            if code == "amount_not_integer":
                assert "integer number of fen" in err["message"]
            assert snapshot(api, world) == before
            transfers = body.get("transfers") if isinstance(body, dict) else None
            for t in transfers if isinstance(transfers, list) else []:
                if isinstance(t.get("id"), str) and len(t["id"]) == 36:  # none of it exists
                    error(
                        api.get(f"/v1/transfers/{t['id']}", headers=operator_headers),
                        404,
                        "transfer_not_found",
                    )


VALID_BATCH = None  # stands for a valid batch of transfers, as JSON

RAW_BODIES: dict[str, tuple[bytes | None, dict[str, str], int, str]] = {
    "malformed_json": (b'{"transfers": [', {"Content-Type": "application/json"}, 400,
                       "invalid_json"),
    "trailing_garbage": (b'{"transfers": []} x', {"Content-Type": "application/json"}, 400,
                         "invalid_json"),
    "text_plain": (VALID_BATCH, {"Content-Type": "text/plain"}, 400, "invalid_json"),
    "form_encoded": (b"transfers=1", {"Content-Type": "application/x-www-form-urlencoded"}, 400,
                     "invalid_json"),
    "no_content_type": (VALID_BATCH, {}, 400, "invalid_json"),
}  # fmt: skip


def test_bodies_that_are_not_json_objects_are_refused(
    api: TestClient, world: World, operator_headers: dict[str, str], subtests: pytest.Subtests
) -> None:
    before = snapshot(api, world)
    for case, (content, headers, status, code) in RAW_BODIES.items():
        with subtests.test(case):
            if content is VALID_BATCH:  # valid, but not declared as JSON
                content = json.dumps({"transfers": [_valid(world)]}).encode()
            response = api.post(
                "/v1/transfers", content=content, headers={**operator_headers, **headers}
            )
            err = error(response, status, code, None)
            assert "JSON" in err["message"]
            assert snapshot(api, world) == before


def test_an_empty_body_is_refused(
    api: TestClient, world: World, operator_headers: dict[str, str]
) -> None:
    before = snapshot(api, world)
    for headers in ({"Content-Type": "application/json"}, {}):
        response = api.post("/v1/transfers", content=b"", headers={**operator_headers, **headers})
        err = error(response, 422, "missing_field", None)
        assert "body" in err["message"]
    assert snapshot(api, world) == before


BAD_ACCOUNT_BODIES: dict[str, tuple[dict[str, Any], str, str]] = {
    "code_zero": ({"code": 0}, "invalid_field", "accounts.0.code"),
    "code_float": ({"code": 2.0}, "invalid_field", "accounts.0.code"),
    "unknown_flag": ({"flags": ["closed"]}, "invalid_field", "accounts.0.flags.0"),
    "currency_usd": ({"currency": "USD"}, "invalid_field", "accounts.0.currency"),
    "owner_too_long": ({"owner": "x" * 65}, "invalid_field", "accounts.0.owner"),
    "unknown_field": ({"balance": 100}, "unknown_field", "accounts.0.balance"),
    "id_not_uuid": ({"id": "acct-1"}, "invalid_field", "accounts.0.id"),
}


def test_bad_account_bodies_are_refused_and_create_nothing(
    api: TestClient, operator_headers: dict[str, str], subtests: pytest.Subtests
) -> None:
    for case, (fields, code, param) in BAD_ACCOUNT_BODIES.items():
        with subtests.test(case):
            good, bad = account(new_uuid()), account(new_uuid(), **fields)
            body = {"accounts": [good, bad]}
            error(
                api.post("/v1/accounts", json=body, headers=operator_headers),
                422,
                code,
                param.replace("accounts.0", "accounts.1"),
            )
            error(
                api.get(f"/v1/accounts/{good['id']}", headers=operator_headers),
                404,
                "account_not_found",
            )
            assert ok(api.get("/healthz"))["tree_size"] == 0


def test_a_batch_over_batch_max_is_refused(
    api: TestClient, world: World, central_bank_headers: dict[str, str]
) -> None:
    before = snapshot(api, world)
    batch = [transfer(world.issuer, world.bob, 1) for _ in range(BATCH_MAX + 1)]
    response = api.post("/v1/transfers", json={"transfers": batch}, headers=central_bank_headers)
    err = error(response, 422, "batch_too_large", "transfers")
    assert str(BATCH_MAX) in err["message"]
    assert snapshot(api, world) == before

    accounts = [account(new_uuid()) for _ in range(BATCH_MAX + 1)]
    response = api.post("/v1/accounts", json={"accounts": accounts}, headers=central_bank_headers)
    error(response, 422, "batch_too_large", "accounts")
    assert snapshot(api, world) == before

    full = post_transfers(api, central_bank_headers, *batch[:BATCH_MAX])  # the limit itself is fine
    assert {r["result"] for r in full} == {"ok"}
    assert balances(api, central_bank_headers, world.bob)[3] == FUNDING + BATCH_MAX


def test_a_body_over_the_limit_is_refused_before_it_is_read(
    api: TestClient, world: World, operator_headers: dict[str, str]
) -> None:
    before = snapshot(api, world)
    padding = "x" * (BODY_MAX_BYTES + 1)
    big = json.dumps({"transfers": [_valid(world, metadata={"pad": padding})]}).encode()
    response = api.post(
        "/v1/transfers",
        content=big,
        headers={**operator_headers, "Content-Type": "application/json"},
    )
    err = error(response, 413, "body_too_large", None)
    assert str(BODY_MAX_BYTES) in err["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(big), 1 << 20):
            yield big[i : i + (1 << 20)]

    response = api.post(
        "/v1/transfers",
        content=chunks(),
        headers={**operator_headers, "Content-Type": "application/json"},
    )
    assert "content-length" not in {k.lower() for k in response.request.headers}
    error(response, 413, "body_too_large", None)

    response = api.post(
        "/v1/transfers",
        content=b"{}",
        headers={**operator_headers, "Content-Type": "application/json", "Content-Length": "x"},
    )
    error(response, 413, "body_too_large", None)
    assert snapshot(api, world) == before


# ================================================================================================
# 3. Authentication
# ================================================================================================


def test_requests_without_a_key_are_refused(api: TestClient, world: World) -> None:
    calls = [
        ("GET", f"/v1/accounts/{world.alice}", None),
        ("GET", f"/v1/accounts/{world.alice}/entries", None),
        ("GET", f"/v1/accounts/{world.alice}/balance", None),
        ("POST", f"/v1/accounts/{world.alice}/close", None),
        ("POST", "/v1/accounts", {"accounts": [account(new_uuid())]}),
        ("POST", "/v1/transfers", {"transfers": [_valid(world)]}),
        ("GET", f"/v1/transfers/{new_uuid()}", None),
        ("GET", "/v1/journal/entries/0", None),
        ("POST", "/v1/api_keys", {"operator": "x"}),
        ("DELETE", "/v1/api_keys/abc", None),
    ]
    before = tree_size(api)
    for method, url, body in calls:
        response = api.request(method, url, json=body)
        error(response, 401, "missing_api_key", None)
        assert response.headers["WWW-Authenticate"] == "Bearer"
    for header in ("Basic dXNlcjpwYXNz", "Bearer", "lk_op_x_y"):
        response = api.get(f"/v1/accounts/{world.alice}", headers={"Authorization": header})
        error(response, 401, "missing_api_key")
    assert tree_size(api) == before


def test_malformed_unknown_and_wrong_keys_are_refused(
    api: TestClient, ledger_service: LedgerService, world: World
) -> None:
    real = create_api_key(ledger_service.store.engine, "operator", OP_A).secret
    _, role, key_id, secret = real.split("_")
    wrong_secret = f"lk_{role}_{key_id}_{'0' * len(secret)}"
    unknown_id = f"lk_{role}_000000000000_{secret}"
    for key in ("nonsense", "lk_xx_a_b", "lk_op_a_b_c", real + "_", wrong_secret, unknown_id):
        response = api.get(f"/v1/accounts/{world.alice}", headers=bearer(key))
        error(response, 401, "invalid_api_key", None)
        assert response.headers["WWW-Authenticate"] == "Bearer"
    ok(api.get(f"/v1/accounts/{world.alice}", headers=bearer(real)))


def test_a_revoked_key_stops_working(
    api: TestClient,
    world: World,
    central_bank_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth, "CACHE_TTL_S", 0.0)
    created = ok(
        api.post(
            "/v1/api_keys", json={"operator": OP_A, "name": "till 3"}, headers=central_bank_headers
        ),
        201,
    )
    assert created["role"] == "operator" and created["operator"] == OP_A
    assert created["key"].startswith(f"lk_op_{created['id']}_")
    key = bearer(created["key"])
    assert ok(api.get(f"/v1/accounts/{world.alice}", headers=key))["id"] == world.alice
    assert post_transfers(api, key, transfer(world.alice, world.alice2, 5))[0]["result"] == "ok"

    assert (
        ok(api.delete(f"/v1/api_keys/{created['id']}", headers=central_bank_headers), 204) is None
    )
    response = api.get(f"/v1/accounts/{world.alice}", headers=key)
    error(response, 401, "api_key_revoked", None)
    assert response.headers["WWW-Authenticate"] == "Bearer"
    late = transfer(world.alice, world.alice2, 5)
    error(
        api.post("/v1/transfers", json={"transfers": [late]}, headers=key), 401, "api_key_revoked"
    )
    error(
        api.get(f"/v1/transfers/{late['id']}", headers=central_bank_headers),
        404,
        "transfer_not_found",
    )
    error(
        api.delete(f"/v1/api_keys/{created['id']}", headers=central_bank_headers),
        404,
        "api_key_not_found",
        "key_id",
    )
    error(
        api.delete("/v1/api_keys/nosuchkey", headers=central_bank_headers),
        404,
        "api_key_not_found",
        "key_id",
    )


def test_revocation_reaches_a_fresh_server_process(
    ledger_service: LedgerService, world: World, central_bank_headers: dict[str, str]
) -> None:
    """With the default cache: a new process (a fresh app) refuses a key revoked elsewhere."""
    new = create_api_key(ledger_service.store.engine, "operator", OP_A)
    with TestClient(app_for(ledger_service)) as first:
        ok(first.get(f"/v1/accounts/{world.alice}", headers=bearer(new.secret)))
        ok(first.delete(f"/v1/api_keys/{new.principal.key_id}", headers=central_bank_headers), 204)
    with TestClient(app_for(ledger_service)) as second:
        error(
            second.get(f"/v1/accounts/{world.alice}", headers=bearer(new.secret)),
            401,
            "api_key_revoked",
        )


def test_only_the_central_bank_manages_keys(
    api: TestClient,
    ledger_service: LedgerService,
    operator_headers: dict[str, str],
    central_bank_headers: dict[str, str],
) -> None:
    response = api.post("/v1/api_keys", json={"operator": OP_A}, headers=operator_headers)
    error(response, 403, "permission_denied")
    other = create_api_key(ledger_service.store.engine, "operator", OP_B)
    response = api.delete(f"/v1/api_keys/{other.principal.key_id}", headers=operator_headers)
    error(response, 403, "permission_denied")
    ok(api.get("/healthz"))
    # the key B holds still works: the refused revocation did nothing
    assert api.get(f"/v1/accounts/{new_uuid()}", headers=bearer(other.secret)).status_code == 404

    for body, param in (
        ({"operator": OP_A, "role": "central_bank"}, "role"),
        ({"operator": ""}, "operator"),
        ({"operator": "x" * 65}, "operator"),
        ({}, "operator"),
        ({"operator": OP_A, "scopes": ["all"]}, "scopes"),
    ):
        response = api.post("/v1/api_keys", json=body, headers=central_bank_headers)
        assert response.status_code == 422, response.text
        error(response, 422, response.json()["error"]["code"], param)


def test_an_operator_key_with_an_unusable_name_is_refused(
    api: TestClient, world: World, central_bank_headers: dict[str, str]
) -> None:
    """Names a key cannot carry are a 422, not a 500; and no operator key may act as the
    central bank's own operator (it would see and debit the issuing accounts)."""
    for name in ("bank\na", "bank\x00", "central_bank"):
        response = api.post("/v1/api_keys", json={"operator": name}, headers=central_bank_headers)
        error(response, 422, "invalid_field", "operator")
    with pytest.raises(ValueError, match="reserved"):
        create_api_key(api.app.state.ledger.db, "operator", "central_bank")


# ================================================================================================
# 4. Operator scoping: ids of others' accounts and transfers reveal nothing
# ================================================================================================


def test_an_operator_cannot_see_another_operators_accounts(
    api: TestClient,
    world: World,
    operator_headers: dict[str, str],
    other_operator_headers: dict[str, str],
    central_bank_headers: dict[str, str],
) -> None:
    a, b, cb = operator_headers, other_operator_headers, central_bank_headers
    missing = new_uuid()
    for account_id in (world.bob, world.issuer):
        for suffix in ("", "/entries", "/balance", "/balance?as_of_seq=0"):
            theirs = error(
                api.get(f"/v1/accounts/{account_id}{suffix}", headers=a),
                404,
                "account_not_found",
                "account_id",
            )
            nobody = error(
                api.get(f"/v1/accounts/{missing}{suffix}", headers=a),
                404,
                "account_not_found",
                "account_id",
            )
            assert theirs["message"] == nobody["message"], "the answer must not tell them apart"
    error(api.post(f"/v1/accounts/{world.bob}/close", headers=a), 404, "account_not_found")
    assert "closed" not in ok(api.get(f"/v1/accounts/{world.bob}", headers=b))["flags"]
    for account_id in world.all:  # the central bank sees everything
        ok(api.get(f"/v1/accounts/{account_id}", headers=cb))
        ok(api.get(f"/v1/accounts/{account_id}/entries", headers=cb))
        ok(api.get(f"/v1/accounts/{account_id}/balance", headers=cb))
    ok(api.get(f"/v1/accounts/{world.bob}/entries", headers=b))


def test_an_operator_cannot_see_another_operators_transfers_or_entries(
    api: TestClient,
    world: World,
    operator_headers: dict[str, str],
    other_operator_headers: dict[str, str],
    central_bank_headers: dict[str, str],
) -> None:
    a, b, cb = operator_headers, other_operator_headers, central_bank_headers
    b_only = transfer(world.bob, world.bob2, 10)
    b_refused = transfer(world.bob2, world.bob, 10)
    a_to_b = transfer(world.alice, world.bob, 20)
    seqs = [r["seq"] for r in post_transfers(api, b, b_only, b_refused)]
    a_to_b_seq = post_transfers(api, a, a_to_b)[0]["seq"]

    for tid in (b_only["id"], b_refused["id"]):
        theirs = error(api.get(f"/v1/transfers/{tid}", headers=a), 404, "transfer_not_found")
        nobody = error(api.get(f"/v1/transfers/{new_uuid()}", headers=a), 404, "transfer_not_found")
        assert theirs["message"] == nobody["message"]
        ok(api.get(f"/v1/transfers/{tid}", headers=b))
        ok(api.get(f"/v1/transfers/{tid}", headers=cb))
    for headers in (a, b, cb):  # both sides see a transfer between them
        assert ok(api.get(f"/v1/transfers/{a_to_b['id']}", headers=headers))["amount"] == 20

    bob_created = ok(api.get(f"/v1/accounts/{world.bob}", headers=b))["created_seq"]
    issuer_created = ok(api.get(f"/v1/accounts/{world.issuer}", headers=cb))["created_seq"]
    for seq in (seqs[0], bob_created, issuer_created):
        theirs = error(
            api.get(f"/v1/journal/entries/{seq}", headers=a), 404, "entry_not_found", "seq"
        )
        nobody = error(api.get("/v1/journal/entries/999999", headers=a), 404, "entry_not_found")
        assert theirs["message"].replace(str(seq), "N") == nobody["message"].replace("999999", "N")
        ok(api.get(f"/v1/journal/entries/{seq}", headers=cb))
    assert ok(api.get(f"/v1/journal/entries/{seqs[0]}", headers=b))["entry"]["id"] == b_only["id"]
    for headers in (a, b, cb):
        got = ok(api.get(f"/v1/journal/entries/{a_to_b_seq}", headers=headers))
        assert got["seq"] == a_to_b_seq and got["entry"]["id"] == a_to_b["id"]
    alice_created = ok(api.get(f"/v1/accounts/{world.alice}", headers=a))["created_seq"]
    assert ok(api.get(f"/v1/journal/entries/{alice_created}", headers=a))["kind"] == (
        "account_created"
    )


def test_an_operator_cannot_debit_another_operators_account(
    api: TestClient,
    world: World,
    operator_headers: dict[str, str],
    other_operator_headers: dict[str, str],
) -> None:
    """Checked in the writer, per item, like every other rejection."""
    a, b = operator_headers, other_operator_headers
    for victim in (world.bob, world.issuer):
        own = transfer(world.alice, world.alice2, 1)
        theft = transfer(victim, world.alice, 500)
        results = post_transfers(api, a, own, theft)
        assert [r["result"] for r in results] == ["ok", "debit_account_not_permitted"]
        assert results[1]["seq"] is None
        error(api.get(f"/v1/transfers/{theft['id']}", headers=a), 404, "transfer_not_found")
    assert balances(api, b, world.bob) == (0, 0, 0, FUNDING)
    assert balances(api, a, world.alice) == (0, 2, 0, FUNDING)
    # a debit of an account that does not exist is the engine's usual answer
    ghost = transfer(new_uuid(), world.alice, 1)
    assert post_transfers(api, a, ghost)[0]["result"] == "debit_account_not_found"


def test_an_operator_cannot_post_or_void_another_operators_pending_transfer(
    api: TestClient,
    world: World,
    operator_headers: dict[str, str],
    other_operator_headers: dict[str, str],
) -> None:
    a, b = operator_headers, other_operator_headers
    hold = transfer(world.bob, world.alice, 700, flags=["pending"])  # even one paying A
    assert post_transfers(api, b, hold)[0]["result"] == "ok"
    size = tree_size(api)
    for flag in ("post_pending", "void_pending"):
        attempt = {"id": new_uuid(), "pending_id": hold["id"], "flags": [flag]}
        assert post_transfers(api, a, attempt)[0]["result"] == "debit_account_not_permitted"
    assert tree_size(api) == size
    assert ok(api.get(f"/v1/transfers/{hold['id']}", headers=b))["pending_state"] == "pending"
    assert balances(api, b, world.bob) == (700, 0, 0, FUNDING)
    assert balances(api, a, world.alice) == (0, 0, 700, FUNDING)
    post = {"id": new_uuid(), "pending_id": hold["id"], "flags": ["post_pending"]}
    assert post_transfers(api, b, post)[0]["result"] == "ok"  # its operator can
    assert balances(api, a, world.alice) == (0, 0, 0, FUNDING + 700)


def test_an_operator_cannot_void_another_operators_pending_transfer_in_flight(
    database_url: str,
    api: TestClient,
    world: World,
    operator_headers: dict[str, str],
    other_operator_headers: dict[str, str],
) -> None:
    """B's pending is applied but not yet committed when A tries to void it: the writer knows
    whose it is even though the database does not yet."""
    a, b = operator_headers, other_operator_headers
    hold = transfer(world.bob, world.bob2, 700, flags=["pending"])
    void = {"id": new_uuid(), "pending_id": hold["id"], "flags": ["void_pending"]}
    answers: dict[str, Any] = {}

    def send(name: str, headers: dict[str, str], t: dict[str, Any]) -> None:
        answers[name] = api.post("/v1/transfers", json={"transfers": [t]}, headers=headers)

    threads = [
        threading.Thread(target=send, args=("b", b, hold)),
        threading.Thread(target=send, args=("a", a, void)),
    ]
    with database_stalled(database_url, postgres_lock="EXCLUSIVE"):  # commits wait, reads not
        threads[0].start()
        time.sleep(0.3)  # B's pending is applied in memory, its commit waits
        threads[1].start()
        time.sleep(0.3)
    for thread in threads:
        thread.join(30)
    assert ok(answers["b"])["results"][0]["result"] == "ok"
    assert ok(answers["a"])["results"][0]["result"] == "debit_account_not_permitted"
    assert ok(api.get(f"/v1/transfers/{hold['id']}", headers=b))["pending_state"] == "pending"


def test_an_operator_can_credit_another_operators_account(
    api: TestClient,
    world: World,
    operator_headers: dict[str, str],
    other_operator_headers: dict[str, str],
) -> None:
    a, b = operator_headers, other_operator_headers
    pay = transfer(world.alice, world.bob, 321)
    assert post_transfers(api, a, pay)[0]["result"] == "ok"
    assert balances(api, b, world.bob) == (0, 0, 0, FUNDING + 321)
    assert balances(api, a, world.alice) == (0, 321, 0, FUNDING)
    entries = ok(api.get(f"/v1/accounts/{world.bob}/entries?limit=1", headers=b))
    assert entries["data"][0]["entry"]["id"] == pay["id"]


def test_who_may_open_accounts_for_which_operator(
    api: TestClient,
    operator_headers: dict[str, str],
    other_operator_headers: dict[str, str],
    central_bank_headers: dict[str, str],
) -> None:
    a, b, cb = operator_headers, other_operator_headers, central_bank_headers
    mine, theirs = account(new_uuid()), account(new_uuid(), operator=OP_B)
    response = api.post("/v1/accounts", json={"accounts": [mine, theirs]}, headers=a)
    error(response, 403, "permission_denied", "accounts.1.operator")
    for account_id in (mine["id"], theirs["id"]):
        error(api.get(f"/v1/accounts/{account_id}", headers=cb), 404, "account_not_found")
    assert ok(api.get("/healthz"))["tree_size"] == 0

    explicit = account(new_uuid(), operator=OP_A)  # naming yourself is fine
    create_accounts(api, a, explicit)
    assert ok(api.get(f"/v1/accounts/{explicit['id']}", headers=a))["operator"] == OP_A

    for_b = account(new_uuid(), operator=OP_B)
    create_accounts(api, cb, for_b)
    assert ok(api.get(f"/v1/accounts/{for_b['id']}", headers=b))["operator"] == OP_B
    error(api.get(f"/v1/accounts/{for_b['id']}", headers=a), 404, "account_not_found")
    own = account(new_uuid())
    create_accounts(api, cb, own)
    assert ok(api.get(f"/v1/accounts/{own['id']}", headers=cb))["operator"] == "central_bank"
    error(api.get(f"/v1/accounts/{own['id']}", headers=a), 404, "account_not_found")


# ================================================================================================
# 5. The journal: public, and verifiable with the ledger's public key alone
# ================================================================================================


def _checkpoint(got: dict[str, Any]) -> checkpoint.Checkpoint:
    return checkpoint.Checkpoint(
        got["origin"],
        got["tree_size"],
        base64.b64decode(got["root_hash"]),
        got["timestamp"],
        base64.b64decode(got["signature"]),
    )


def test_journal_endpoints_before_anything_is_signed(api: TestClient) -> None:
    error(api.get("/v1/checkpoints/latest"), 404, "checkpoint_not_found")
    error(api.get("/v1/checkpoints/1"), 404, "checkpoint_not_found", "tree_size")
    error(api.get("/v1/proofs/inclusion?leaf_index=0"), 422, "leaf_index_out_of_range")
    error(api.get("/v1/proofs/consistency?first=1"), 422, "first_after_second", "first")
    assert ok(api.get("/v1/public_key"))["origin"] == ORIGIN


def test_public_key_and_signed_checkpoints(
    api: TestClient, ledger_service: LedgerService, world: World
) -> None:
    key = ok(api.get("/v1/public_key"))
    public_key = base64.b64decode(key["public_key"])
    assert public_key == ledger_service.public_key
    assert key == {
        "algorithm": "Ed25519",
        "public_key": key["public_key"],
        "key_id": checkpoint.key_id(ORIGIN, public_key).hex(),
        "origin": ORIGIN,
    }

    latest = ok(api.get("/v1/checkpoints/latest"))
    assert latest["origin"] == ORIGIN and latest["tree_size"] == 7  # 5 accounts, 2 fundings
    signed = _checkpoint(latest)
    assert signed.verify(public_key)
    assert checkpoint.parse_note(latest["note"], public_key) == signed
    tampered = checkpoint.Checkpoint(ORIGIN, 8, signed.root, signed.timestamp, signed.signature)
    assert not tampered.verify(public_key)
    assert ok(api.get(f"/v1/checkpoints/{latest['tree_size']}")) == latest

    first = ok(api.get("/v1/checkpoints/1"))  # the first batch: the issuer's account alone
    assert first["tree_size"] == 1 and _checkpoint(first).verify(public_key)
    assert first["timestamp"] < latest["timestamp"]
    error(api.get("/v1/checkpoints/2"), 404, "checkpoint_not_found", "tree_size")  # mid-batch
    error(api.get("/v1/checkpoints/8"), 404, "checkpoint_not_found", "tree_size")
    error(api.get("/v1/checkpoints/0"), 404, "checkpoint_not_found", "tree_size")


def test_inclusion_and_consistency_proofs_verify(
    api: TestClient, world: World, central_bank_headers: dict[str, str]
) -> None:
    public_key = base64.b64decode(ok(api.get("/v1/public_key"))["public_key"])
    old = _checkpoint(ok(api.get("/v1/checkpoints/latest")))
    for i in range(3):  # more batches, more checkpoints, a less trivial tree
        post_transfers(
            api,
            central_bank_headers,
            *[transfer(world.issuer, world.bob, 1) for _ in range(10 + i)],
        )
    new = _checkpoint(ok(api.get("/v1/checkpoints/latest")))
    assert new.verify(public_key) and old.verify(public_key) and new.size == old.size + 33

    for seq in (0, 1, old.size - 1, old.size, new.size - 1):
        entry = ok(api.get(f"/v1/journal/entries/{seq}", headers=central_bank_headers))
        body = base64.b64decode(entry["body"])
        proof = ok(api.get(f"/v1/proofs/inclusion?leaf_index={seq}"))  # no key needed
        assert proof["tree_size"] == new.size and proof["leaf_index"] == seq
        assert base64.b64decode(proof["leaf_hash"]) == merkle.leaf_hash(body)
        path = [base64.b64decode(h) for h in proof["proof"]]
        assert merkle.verify_inclusion(body, seq, new.size, path, new.root)
        assert not merkle.verify_inclusion(body + b"\x00", seq, new.size, path, new.root)
        if seq < old.size:  # and in the older tree, against the older signed root
            older = ok(api.get(f"/v1/proofs/inclusion?leaf_index={seq}&tree_size={old.size}"))
            path = [base64.b64decode(h) for h in older["proof"]]
            assert merkle.verify_inclusion(body, seq, old.size, path, old.root)

    got = ok(api.get(f"/v1/proofs/consistency?first={old.size}"))
    assert (got["first"], got["second"]) == (old.size, new.size)
    path = [base64.b64decode(h) for h in got["proof"]]
    assert merkle.verify_consistency(old.size, new.size, old.root, new.root, path)
    assert not merkle.verify_consistency(old.size, new.size, new.root, new.root, path)
    first = _checkpoint(ok(api.get("/v1/checkpoints/1")))
    got = ok(api.get(f"/v1/proofs/consistency?first=1&second={old.size}"))
    path = [base64.b64decode(h) for h in got["proof"]]
    assert merkle.verify_consistency(1, old.size, first.root, old.root, path)
    same = ok(api.get(f"/v1/proofs/consistency?first={new.size}&second={new.size}"))
    assert same["proof"] == []
    assert merkle.verify_consistency(new.size, new.size, new.root, new.root, [])


def test_proof_requests_out_of_range_are_refused(api: TestClient, world: World) -> None:
    size = tree_size(api)
    cases = [
        (f"/v1/proofs/inclusion?leaf_index={size}", "leaf_index_out_of_range", "leaf_index"),
        ("/v1/proofs/inclusion?leaf_index=3&tree_size=3", "leaf_index_out_of_range", "leaf_index"),
        (f"/v1/proofs/inclusion?leaf_index=0&tree_size={size + 1}", "tree_size_too_large",
         "tree_size"),
        ("/v1/proofs/inclusion?leaf_index=-1", "invalid_field", "leaf_index"),
        ("/v1/proofs/inclusion?leaf_index=0&tree_size=0", "invalid_field", "tree_size"),
        ("/v1/proofs/inclusion", "missing_field", "leaf_index"),
        ("/v1/proofs/inclusion?leaf_index=one", "invalid_field", "leaf_index"),
        (f"/v1/proofs/consistency?first={size + 1}", "first_after_second", "first"),
        ("/v1/proofs/consistency?first=3&second=2", "first_after_second", "first"),
        (f"/v1/proofs/consistency?first=1&second={size + 1}", "tree_size_too_large", "second"),
        ("/v1/proofs/consistency?first=0", "invalid_field", "first"),
        ("/v1/proofs/consistency", "missing_field", "first"),
    ]  # fmt: skip
    for url, code, param in cases:
        error(api.get(url), 422, code, param)


def test_journal_entries_need_a_key(
    api: TestClient, world: World, central_bank_headers: dict[str, str]
) -> None:
    error(api.get("/v1/journal/entries/0"), 401, "missing_api_key")
    got = ok(api.get("/v1/journal/entries/0", headers=central_bank_headers))
    assert got["seq"] == 0 and got["kind"] == "account_created"
    assert got["entry"]["id"] == world.issuer
    size = tree_size(api)
    error(
        api.get(f"/v1/journal/entries/{size}", headers=central_bank_headers),
        404,
        "entry_not_found",
        "seq",
    )
    error(api.get("/v1/journal/entries/-1", headers=central_bank_headers), 404, "entry_not_found")
    error(
        api.get("/v1/journal/entries/x", headers=central_bank_headers), 422, "invalid_field", "seq"
    )


# ================================================================================================
# 6. Backpressure: a full queue answers 503, and nothing accepted is lost
# ================================================================================================


def test_a_full_queue_answers_503_and_accepted_requests_commit(
    database_url: str, key_file: Path
) -> None:
    service = LedgerService.open(database_url, key_file, ORIGIN, queue_max_events=1)
    try:
        headers = bearer(create_api_key(service.store.engine, "central_bank", "").secret)
        issuer, payee = new_uuid(), new_uuid()
        with TestClient(app_for(service)) as api:
            create_accounts(api, headers, account(issuer, flags=[]))  # one event fits the queue
            create_accounts(api, headers, account(payee))
            ok(api.get(f"/v1/accounts/{payee}", headers=headers))  # the key is cached now

            sent = [transfer(issuer, payee, 1) for _ in range(16)]
            answers: dict[str, Any] = {}
            refused = threading.Semaphore(0)

            def send(t: dict[str, Any]) -> None:
                response = api.post("/v1/transfers", json={"transfers": [t]}, headers=headers)
                answers[t["id"]] = response
                if response.status_code == 503:
                    refused.release()

            threads = [threading.Thread(target=send, args=(t,)) for t in sent]
            with database_stalled(database_url):
                for thread in threads:
                    thread.start()
                assert refused.acquire(timeout=20), "a stalled writer must push back"
                time.sleep(0.3)  # let the rest arrive while the database is still held
            for thread in threads:
                thread.join(60)
            assert len(answers) == len(sent)

            statuses = [answers[t["id"]].status_code for t in sent]
            assert set(statuses) <= {200, 503}, statuses
            accepted = [t for t in sent if answers[t["id"]].status_code == 200]
            assert accepted and len(accepted) < len(sent), statuses
            for t in sent:
                response = answers[t["id"]]
                if response.status_code == 503:
                    error(response, 503, "overloaded", None)
                    assert int(response.headers["Retry-After"]) >= 1
                    error(
                        api.get(f"/v1/transfers/{t['id']}", headers=headers),
                        404,
                        "transfer_not_found",
                    )
                else:
                    assert response.json()["results"][0]["result"] == "ok"
                    got = ok(api.get(f"/v1/transfers/{t['id']}", headers=headers))
                    assert got["result"] == "ok" and got["seq"] is not None
            assert balances(api, headers, payee) == (0, 0, 0, len(accepted))
            assert tree_size(api) == 2 + len(accepted)
    finally:
        service.close()


# ================================================================================================
# 7. OpenAPI
# ================================================================================================


def test_openapi_lists_every_route(api: TestClient) -> None:
    spec = ok(api.get("/openapi.json"))
    paths = spec["paths"]
    expected = {
        "/v1/accounts": {"post"},
        "/v1/accounts/{account_id}": {"get"},
        "/v1/accounts/{account_id}/entries": {"get"},
        "/v1/accounts/{account_id}/balance": {"get"},
        "/v1/accounts/{account_id}/close": {"post"},
        "/v1/transfers": {"post"},
        "/v1/transfers/{transfer_id}": {"get"},
        "/v1/public_key": {"get"},
        "/v1/checkpoints/latest": {"get"},
        "/v1/checkpoints/{tree_size}": {"get"},
        "/v1/journal/entries/{seq}": {"get"},
        "/v1/proofs/inclusion": {"get"},
        "/v1/proofs/consistency": {"get"},
        "/v1/api_keys": {"post"},
        "/v1/api_keys/{key_id}": {"delete"},
        "/healthz": {"get"},
        "/v1/payments": {"post"},
        "/v1/payments/batch": {"post"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))
    schemas = spec["components"]["schemas"]
    payment = paths["/v1/payments"]["post"]  # a plain route, documented by hand
    body = payment["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert schemas[body.rsplit("/", 1)[1]]["properties"]["signature"]["type"] == "string"
    assert "receipt" in payment["description"] and payment["tags"] == ["payments"]
    amount = schemas["TransferCreate"]["properties"]["amount"]
    assert amount["type"] == "integer" and amount["maximum"] == AMOUNT_MAX
    assert schemas["TransferCreate"]["properties"]["id"]["format"] == "uuid"
    assert any(s.get("scheme") == "bearer" for s in spec["components"]["securitySchemes"].values())
    assert "security" not in paths["/v1/public_key"]["get"]
    assert "security" in paths["/v1/transfers"]["post"]

    docs = api.get("/docs")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    assert "swagger" in docs.text.lower() and docs.headers["Request-Id"]


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_ids_read_and_written_as_uuid_does(value: int) -> None:
    text = str(uuid.UUID(int=value))
    assert format_id(value) == text
    assert parse_id(text) == parse_id(text.upper()) == parse_id(text.replace("-", "")) == value
    for bad in (" " + text, text[:-1] + "g", text + "0", text.replace("-", "_")):
        with pytest.raises(ValueError):
            parse_id(bad)

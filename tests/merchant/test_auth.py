"""Who may call the merchant API, on SQLite and PostgreSQL: keys (shown once, test vs live),
authorization between merchants on every order and refund route, idempotency keys, rate limits,
and the headers every answer carries."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from sqlmodel import Session, select

from ledger.api.errors import API_VERSION
from ledger.ids import new_uuid
from merchant_api.keys import KeyChecker
from merchant_api.models import IdempotencyRecord, MerchantKey
from merchant_api.ratelimit import SharedBuckets
from tests.merchant.conftest import Pilot
from tests.merchant.test_orders import error


def test_keys_are_stored_hashed_and_authenticate_one_merchant(pilot: Pilot) -> None:
    shop = pilot.merchant()
    secret = shop.test["Authorization"].removeprefix("Bearer ")
    with Session(pilot.merchants.engine) as session:
        rows = session.exec(select(MerchantKey).where(MerchantKey.merchant_id == shop.id)).all()
    assert len(rows) == 2
    stored = b"".join(r.secret_hash + r.id.encode() for r in rows)
    assert secret.encode() not in stored and secret[20:].encode() not in stored
    me = pilot.get("/v1/merchants/me", shop.test)
    assert (me["id"], me["livemode"], me["wallet"]) == (shop.id, False, shop.wallet)
    assert pilot.get("/v1/merchants/me", shop.live)["livemode"] is True


def test_missing_bad_and_foreign_keys_are_refused(pilot: Pilot) -> None:
    shop = pilot.merchant()
    good = shop.test["Authorization"]
    for headers, code in [
        ({}, "missing_api_key"),
        ({"Authorization": "Basic abc"}, "missing_api_key"),
        ({"Authorization": "Bearer sk_test_" + "0" * 60}, "invalid_api_key"),
        ({"Authorization": good[:-1] + ("0" if good[-1] != "0" else "1")}, "invalid_api_key"),
        ({"Authorization": good.replace("sk_test_", "sk_live_")}, "invalid_api_key"),
        (pilot.op, "missing_api_key"),  # an operator's ledger key is not a merchant key
    ]:
        response = pilot.api.get("/v1/payment_orders", headers=headers)
        assert error(response, 401) == code
        assert response.headers["www-authenticate"] == "Bearer"


def test_operators_sign_up_merchants_and_the_central_bank_does_not(pilot: Pilot) -> None:
    body = {
        "name": "Noodles",
        "city": "Shanghai",
        "kyc": {"name": "Noodles Ltd", "id_number": "91310000"},
        "linked_bank_account": pilot.bank_account(),
    }
    response = pilot.post("/v1/merchants", body, pilot.cb, status=None)
    assert error(response, 403) == "permission_denied"
    response = pilot.post("/v1/merchants", {**body, "name": "x" * 26}, pilot.op, status=None)
    assert error(response, 422) == "invalid_field"


def test_a_merchant_never_sees_or_touches_another_merchants_objects(pilot: Pilot) -> None:
    """Every order and refund route, with merchant B's key on merchant A's objects: 404, and
    nothing changes."""
    a, b = pilot.merchant("A"), pilot.merchant("B")
    shopper = pilot.wallet(top_up=10_000)
    paid = pilot.order(a, 1_000)
    assert pilot.pay_order(shopper, paid).json()["result"] == "ok"
    open_ = pilot.order(a, 500)
    made = pilot.post(
        "/v1/refunds",
        {"payment_order": paid["id"], "amount": 100, "out_refund_no": "R-1"},
        a.test,
        status=201,
    )
    code = pilot.payment_code(shopper, 500)
    attempts: list[tuple[str, str, dict[str, Any] | None, str]] = [
        ("GET", f"/v1/payment_orders/{paid['id']}", None, "payment_order_not_found"),
        ("POST", f"/v1/payment_orders/{open_['id']}/cancel", {}, "payment_order_not_found"),
        (
            "POST",
            f"/v1/payment_orders/{open_['id']}/capture_code",
            {"payment_code": code},
            "payment_order_not_found",
        ),
        (
            "POST",
            "/v1/refunds",
            {"payment_order": paid["id"], "amount": 100, "out_refund_no": "B-1"},
            "payment_order_not_found",
        ),
        ("GET", f"/v1/refunds/{made['id']}", None, "refund_not_found"),
        ("GET", f"/v1/refunds?payment_order={paid['id']}", None, "payment_order_not_found"),
    ]
    for method, path, body, code_expected in attempts:
        response = pilot.api.request(method, path, json=body, headers=b.test)
        assert error(response, 404) == code_expected, path
    assert pilot.get("/v1/payment_orders", b.test)["data"] == []
    assert pilot.get(f"/v1/payment_orders/{open_['id']}", a.test)["status"] == "requires_payment"
    assert pilot.balance(shopper.id) == 10_000 - 1_000 + 100
    assert pilot.get(f"/v1/payment_orders/{paid['id']}", a.test)["amount_refunded"] == 100


def test_test_and_live_objects_never_mix(pilot: Pilot) -> None:
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=10_000)
    test_order = pilot.order(shop, 300)
    response = pilot.api.get(f"/v1/payment_orders/{test_order['id']}", headers=shop.live)
    assert error(response, 404) == "livemode_mismatch"
    assert pilot.pay_order(shopper, test_order).json()["result"] == "ok"
    body = {"payment_order": test_order["id"], "amount": 100, "out_refund_no": "R-1"}
    response = pilot.post("/v1/refunds", body, shop.live, status=None)
    assert error(response, 404) == "livemode_mismatch"
    made = pilot.post("/v1/refunds", body, shop.test, status=201)
    response = pilot.api.get(f"/v1/refunds/{made['id']}", headers=shop.live)
    assert error(response, 404) == "livemode_mismatch"
    assert pilot.get("/v1/payment_orders", shop.live)["data"] == []


# -- Idempotency-Key ---------------------------------------------------------------------------


def test_the_same_key_and_body_replay_the_first_answer(pilot: Pilot) -> None:
    shop = pilot.merchant()
    headers = {**shop.test, "Idempotency-Key": "order-77"}
    body = {"amount": 700, "out_trade_no": new_uuid()}
    first = pilot.api.post("/v1/payment_orders", json=body, headers=headers)
    second = pilot.api.post("/v1/payment_orders", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert second.json() == first.json()
    assert len(pilot.get("/v1/payment_orders", shop.test)["data"]) == 1
    other = pilot.api.post(
        "/v1/payment_orders", json={**body, "amount": 701}, headers=headers
    )  # same key, other body
    assert error(other, 422) == "idempotency_key_reused"
    elsewhere = pilot.merchant("Other")  # keys are per merchant: no clash
    mine = pilot.api.post(
        "/v1/payment_orders", json=body, headers={**elsewhere.test, "Idempotency-Key": "order-77"}
    )
    assert mine.status_code == 201 and mine.json()["id"] != first.json()["id"]


def test_a_replayed_refund_moves_money_once(pilot: Pilot) -> None:
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=10_000)
    order = pilot.order(shop, 1_000)
    pilot.pay_order(shopper, order)
    headers = {**shop.test, "Idempotency-Key": "refund-1"}
    body = {"payment_order": order["id"], "amount": 400, "out_refund_no": "R-1"}
    answers = [pilot.api.post("/v1/refunds", json=body, headers=headers) for _ in range(3)]
    assert {a.json()["id"] for a in answers} == {answers[0].json()["id"]}
    assert pilot.balance(shopper.id) == 10_000 - 600


def test_errors_are_not_kept_so_a_fixed_retry_can_succeed(pilot: Pilot) -> None:
    shop = pilot.merchant()
    headers = {**shop.test, "Idempotency-Key": "k-err"}
    body = {"amount": 100, "out_trade_no": "E-1", "expires_at": 1}
    bad = pilot.api.post("/v1/payment_orders", json=body, headers=headers)
    assert error(bad, 422) == "invalid_expires_at"
    body.pop("expires_at")
    good = pilot.api.post("/v1/payment_orders", json=body, headers=headers)
    assert good.status_code == 201


def test_a_request_still_running_is_409_with_retry_after(pilot: Pilot) -> None:
    shop = pilot.merchant()
    raw = b'{"amount":100,"out_trade_no":"P-1"}'
    digest = hashlib.sha256(b"POST /v1/payment_orders\n" + raw).hexdigest()
    with Session(pilot.merchants.engine) as session:  # another worker holds the key
        session.add(
            IdempotencyRecord(
                merchant_id=shop.id,
                livemode=0,
                key="k-busy",
                request_hash=digest,
                state="in_progress",
                created_at_ms=time.time_ns() // 1_000_000,
            )
        )
        session.commit()
    response = pilot.api.post(
        "/v1/payment_orders",
        content=raw,
        headers={**shop.test, "Idempotency-Key": "k-busy", "content-type": "application/json"},
    )
    assert error(response, 409) == "idempotency_key_in_progress"
    assert response.headers["retry-after"] == "1"
    assert pilot.get("/v1/payment_orders", shop.test)["data"] == []


def test_an_oversize_idempotency_key_is_refused(pilot: Pilot) -> None:
    shop = pilot.merchant()
    response = pilot.api.post(
        "/v1/payment_orders",
        json={"amount": 100, "out_trade_no": "X"},
        headers={**shop.test, "Idempotency-Key": "k" * 256},
    )
    assert error(response, 400) == "invalid_idempotency_key"


# -- rate limits and headers ------------------------------------------------------------------


def test_each_key_has_its_own_rate_limit(pilot: Pilot) -> None:
    a, b = pilot.merchant("A"), pilot.merchant("B")
    pilot.api.app.state.merchant_keys = KeyChecker(  # type: ignore[attr-defined]
        pilot.merchants.engine, SharedBuckets(None, rate_per_s=0.01, burst=3)
    )
    for _ in range(3):
        assert pilot.api.get("/v1/payment_orders", headers=a.test).status_code == 200
    limited = pilot.api.get("/v1/payment_orders", headers=a.test)
    assert error(limited, 429) == "rate_limited"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(limited.headers["retry-after"]) <= 100
    assert pilot.api.get("/v1/payment_orders", headers=a.live).status_code == 200  # other key
    assert pilot.api.get("/v1/payment_orders", headers=b.test).status_code == 200


def test_every_answer_carries_request_id_and_ledger_version(pilot: Pilot) -> None:
    shop = pilot.merchant()
    answers = [
        pilot.api.get("/v1/payment_orders", headers=shop.test),
        pilot.api.get(f"/v1/payment_orders/{new_uuid()}", headers=shop.test),
        pilot.api.get("/v1/payment_orders"),
        pilot.api.post("/v1/payment_orders", json={"amount": 1.5}, headers=shop.test),
    ]
    ids = set()
    for response in answers:
        assert response.headers["ledger-version"] == API_VERSION
        assert response.headers["request-id"].startswith("req_")
        ids.add(response.headers["request-id"])
    assert len(ids) == len(answers)

"""Payment orders through the HTTP API, on SQLite and PostgreSQL: creation and its conflicts, QR
payment exactly once (also under concurrent attempts), payment codes, cancel, expiry with the
clock moved, listing, and bad input."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from ledger.ids import new_uuid
from merchant_api.models import OrderTransition
from tests.merchant.conftest import Pilot, b64
from wallet_sdk import qr

VALIDATION_CODES = {
    "amount_not_integer",
    "invalid_field",
    "missing_field",
    "unknown_field",
    "invalid_expires_at",
}


def error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"type", "code", "message", "param", "request_id"}
    assert body["request_id"] == response.headers["request-id"]
    return str(body["code"])


def test_an_order_is_paid_once_by_qr(pilot: Pilot) -> None:
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=50_000)
    order = pilot.order(shop, 1_234, description="two teas", metadata={"table": "7"})
    assert order["status"] == "requires_payment" and order["livemode"] is False
    assert order["metadata"] == {"table": "7"} and order["version"] == 1
    scanned = qr.parse(order["qr_code"])
    assert (scanned.amount_fen, scanned.point_of_initiation) == (1_234, "dynamic")
    assert (scanned.currency, scanned.country_code, scanned.merchant_name) == (
        "156",
        "CN",
        "Tea House",
    )
    assert scanned.merchant_account_information["26"]["01"] == shop.wallet
    paid = pilot.pay_order(shopper, order)
    assert paid.status_code == 200, paid.text
    answer = paid.json()
    assert answer["result"] == "ok" and answer["replayed"] is False
    assert answer["receipt"]["leaf_index"] == answer["seq"]
    view = answer["payment_order"]
    assert (view["status"], view["payer"], view["paid_with"]) == ("succeeded", shopper.id, "qr")
    assert pilot.balance(shop.wallet) == 1_234
    assert pilot.balance(shopper.id) == 50_000 - 1_234
    again = pilot.pay_order(shopper, order)  # a retry of the same signed payment: replayed
    assert again.status_code == 200 and again.json()["replayed"] is True
    assert again.json()["seq"] == answer["seq"]
    assert pilot.balance(shop.wallet) == 1_234
    read = pilot.get(f"/v1/payment_orders/{order['id']}", shop.test)
    assert read["status"] == "succeeded" and read["version"] == 2


def test_static_qr_names_the_merchant_wallet_without_amount(pilot: Pilot) -> None:
    shop = pilot.merchant(name="茶馆 Tea", city="上海")
    scanned = qr.parse(shop.static_qr)
    assert scanned.point_of_initiation == "static" and scanned.amount_fen is None
    assert (scanned.merchant_name, scanned.merchant_city) == ("茶馆 Tea", "上海")
    assert scanned.merchant_account_information["26"]["01"] == shop.wallet


def test_a_second_payer_is_refused_and_nothing_moves(pilot: Pilot) -> None:
    shop = pilot.merchant()
    first, second = pilot.wallet(top_up=10_000), pilot.wallet(top_up=10_000)
    order = pilot.order(shop, 500)
    assert pilot.pay_order(first, order).status_code == 200
    assert error(pilot.pay_order(second, order), 409) == "order_already_paid"
    assert pilot.balance(second.id) == 10_000 and pilot.balance(shop.wallet) == 500


def test_concurrent_payers_exactly_one_succeeds(pilot: Pilot) -> None:
    shop = pilot.merchant()
    payers = [pilot.wallet(top_up=10_000) for _ in range(6)]
    order = pilot.order(shop, 700)
    bodies = [pilot.sign_order_payment(w, order) for w in payers]
    barrier = threading.Barrier(len(payers))
    statuses: list[int] = []

    def pay(body: dict[str, Any]) -> None:
        barrier.wait()
        response = pilot.api.post(f"/v1/payment_orders/{order['id']}/pay", json=body)
        statuses.append(response.status_code)

    threads = [threading.Thread(target=pay, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] + [409] * (len(payers) - 1)
    assert pilot.balance(shop.wallet) == 700
    assert sum(pilot.balance(w.id) for w in payers) == 6 * 10_000 - 700


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"amount": 499}, 422, "amount_mismatch"),
        ({"amount": 499.0}, 422, "amount_not_integer"),
        ({"signature": b64(bytes(64))}, 200, "signature_invalid"),
        ({"key_version": 2}, 200, "wallet_key_rotated"),
    ],
)
def test_bad_payments_of_an_order_are_refused(
    pilot: Pilot, change: dict[str, Any], status: int, code: str
) -> None:
    """Refused before the ledger (an error), or by it (200 with the result, like every ledger
    write); either way nothing moves and the order stays payable."""
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=10_000)
    order = pilot.order(shop, 500)
    body = {**pilot.sign_order_payment(shopper, order), **change}
    response = pilot.api.post(f"/v1/payment_orders/{order['id']}/pay", json=body)
    if status == 200:
        assert response.status_code == 200 and response.json()["result"] == code
        assert response.json()["payment_order"]["status"] == "requires_payment"
    else:
        assert error(response, status) == code
    assert pilot.balance(shop.wallet) == 0
    assert pilot.pay_order(shopper, order).status_code == 200  # the order is still payable


def test_a_failed_payment_leaves_the_order_payable(pilot: Pilot) -> None:
    shop = pilot.merchant()
    poor, rich = pilot.wallet(top_up=100), pilot.wallet(top_up=10_000)
    order = pilot.order(shop, 500)
    refused = pilot.pay_order(poor, order)
    assert refused.status_code == 200 and refused.json()["result"] == "exceeds_credits"
    assert refused.json()["payment_order"]["status"] == "requires_payment"
    paid = pilot.pay_order(rich, order)
    assert paid.status_code == 200 and paid.json()["result"] == "ok"


def test_unknown_order(pilot: Pilot) -> None:
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=1_000)
    fake = {"id": new_uuid(), "amount": 100, "expires_at": pilot.now_ms() // 1000 + 60}
    fake["pay_to"] = shop.wallet
    assert error(pilot.pay_order(shopper, fake), 404) == "payment_order_not_found"
    response = pilot.api.get(f"/v1/payment_orders/{new_uuid()}", headers=shop.test)
    assert error(response, 404) == "payment_order_not_found"
    response = pilot.api.get("/v1/payment_orders/not-a-uuid", headers=shop.test)
    assert error(response, 404) == "payment_order_not_found"


# -- creating ---------------------------------------------------------------------------------


def test_out_trade_no_returns_the_open_order_or_conflicts(pilot: Pilot) -> None:
    shop = pilot.merchant()
    first = pilot.order(shop, 900, out_trade_no="T-1", description="soup")
    again = pilot.post(
        "/v1/payment_orders",
        {"amount": 900, "out_trade_no": "T-1", "description": "soup"},
        shop.test,
        status=200,
    )
    assert again["id"] == first["id"]
    other = pilot.post(
        "/v1/payment_orders", {"amount": 901, "out_trade_no": "T-1"}, shop.test, status=None
    )
    assert error(other, 409) == "out_trade_no_conflict"
    elsewhere = pilot.merchant(name="Noodles")  # out_trade_no is unique per merchant only
    assert pilot.order(elsewhere, 901, out_trade_no="T-1")["id"] != first["id"]
    live = pilot.order(shop, 901, out_trade_no="T-1", live=True)  # and per mode
    assert live["livemode"] is True and live["id"] != first["id"]


def test_one_out_trade_no_sent_at_once_makes_one_order(pilot: Pilot) -> None:
    """Tills retrying at once: one order is made (201), the others get it (200); a request
    with other parameters gets a conflict. Nothing is made twice."""
    shop = pilot.merchant()
    same = {"amount": 900, "out_trade_no": "T-RACE", "description": "soup"}
    bodies = [same] * 5 + [{**same, "amount": 901}]
    barrier = threading.Barrier(len(bodies))
    answers: list[tuple[int, Any]] = []

    def create(body: dict[str, Any]) -> None:
        barrier.wait()
        response = pilot.api.post("/v1/payment_orders", json=body, headers=shop.test)
        answers.append((response.status_code, response.json()))

    threads = [threading.Thread(target=create, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(status for status, _ in answers)
    made = {a["id"] for status, a in answers if status in (200, 201)}
    first = [a for status, a in answers if status == 201]
    assert len(first) == 1 and len(made) == 1
    if first[0]["amount"] == 900:  # the five's order was made: the other one conflicts
        assert statuses == [200] * 4 + [201, 409]
    else:  # the other one came first: the five conflict
        assert statuses == [201] + [409] * 5
    listed = pilot.get("/v1/payment_orders?limit=100", shop.test)["data"]
    assert [o["id"] for o in listed if o["out_trade_no"] == "T-RACE"] == list(made)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"amount": 12.5, "out_trade_no": "x"}, "amount"),
        ({"amount": "100", "out_trade_no": "x"}, "amount"),
        ({"amount": 0, "out_trade_no": "x"}, "amount"),
        ({"amount": -5, "out_trade_no": "x"}, "amount"),
        ({"amount": 100, "out_trade_no": "x", "currency": "USD"}, "currency"),
        ({"amount": 100}, "out_trade_no"),
        ({"amount": 100, "out_trade_no": "x", "tip": 5}, "tip"),
        ({"amount": 100, "out_trade_no": "x", "expires_at": 1}, "expires_at"),
    ],
)
def test_bad_orders_are_refused_with_the_field_named(
    pilot: Pilot, body: dict[str, Any], param: str
) -> None:
    shop = pilot.merchant()
    response = pilot.post("/v1/payment_orders", body, shop.test, status=None)
    assert error(response, 422) in VALIDATION_CODES
    assert param in str(response.json()["error"]["param"])
    listed = pilot.get("/v1/payment_orders", shop.test)
    assert listed["data"] == []  # nothing was made


def test_expiry_bounds(pilot: Pilot) -> None:
    shop = pilot.merchant()
    now_s = pilot.now_ms() // 1000
    ok = pilot.order(shop, 100, expires_at=now_s + 24 * 3600)
    assert ok["expires_at"] == now_s + 24 * 3600
    late = {"amount": 100, "out_trade_no": "late", "expires_at": now_s + 24 * 3600 + 1}
    assert error(pilot.post("/v1/payment_orders", late, shop.test, status=None), 422) == (
        "invalid_expires_at"
    )
    default = pilot.order(shop, 100)
    assert default["expires_at"] == now_s + 15 * 60


def test_malformed_json_is_a_clear_400(pilot: Pilot) -> None:
    shop = pilot.merchant()
    response = pilot.api.post(
        "/v1/payment_orders",
        content=b'{"amount": 100, "out_trade_no": ',
        headers={**shop.test, "content-type": "application/json"},
    )
    assert error(response, 400) == "invalid_json"


# -- listing ----------------------------------------------------------------------------------


def test_list_is_newest_first_with_a_cursor_and_a_status_filter(pilot: Pilot) -> None:
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=10_000)
    made = []
    for i in range(5):
        made.append(pilot.order(shop, 100 + i, out_trade_no=f"L-{i}"))
        pilot.advance(1)
    pilot.pay_order(shopper, made[1])
    seen, cursor = [], None
    while True:
        query = "?limit=2" + (f"&starting_after={cursor}" if cursor else "")
        page = pilot.get("/v1/payment_orders" + query, shop.test)
        seen += [o["out_trade_no"] for o in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["data"][-1]["id"]
    assert seen == [f"L-{i}" for i in reversed(range(5))]
    paid = pilot.get("/v1/payment_orders?status=succeeded", shop.test)["data"]
    assert [o["out_trade_no"] for o in paid] == ["L-1"]
    since = made[3]["created"]
    recent = pilot.get(f"/v1/payment_orders?created_gte={since}", shop.test)["data"]
    assert [o["out_trade_no"] for o in recent] == ["L-4", "L-3"]
    bad = pilot.api.get("/v1/payment_orders?limit=1000", headers=shop.test)
    assert bad.status_code == 422


def test_a_listed_order_is_shown_as_it_is_read_alone(pilot: Pilot) -> None:
    """A page reads its orders' outcomes and refunds together: each order must still get its
    own (paid with refunds, paid, canceled, expired, waiting), and none of another's."""
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=100_000)
    orders = [
        pilot.order(shop, 1_000 + i, expires_at=pilot.now_ms() // 1000 + 60) for i in range(6)
    ]
    for paid in orders[:3]:
        assert pilot.pay_order(shopper, paid).json()["result"] == "ok"
    for i, amount in enumerate((100, 250)):  # two refunds of the first order, one of the third
        refund = {"payment_order": orders[0]["id"], "amount": amount, "out_refund_no": f"R{i}"}
        assert pilot.post("/v1/refunds", refund, shop.test, status=201)["status"] == "succeeded"
    refund = {"payment_order": orders[2]["id"], "amount": 7, "out_refund_no": "R2"}
    assert pilot.post("/v1/refunds", refund, shop.test, status=201)["status"] == "succeeded"
    pilot.post(f"/v1/payment_orders/{orders[3]['id']}/cancel", {}, shop.test)
    later = pilot.order(shop, 999, expires_at=pilot.now_ms() // 1000 + 600)
    pilot.advance(120)  # the first six have expired unless paid or canceled; not the last
    listed = pilot.get("/v1/payment_orders?limit=10", shop.test)["data"]
    alone = [pilot.get(f"/v1/payment_orders/{o['id']}", shop.test) for o in listed]
    assert listed == alone
    by_id = {o["id"]: o for o in listed}
    assert [by_id[o["id"]]["amount_refunded"] for o in orders[:3]] == [350, 0, 7]
    assert [by_id[o["id"]]["status"] for o in [*orders, later]] == [
        *["succeeded"] * 3, "canceled", "expired", "expired", "requires_payment"
    ]  # fmt: skip
    assert {by_id[o["id"]]["payer"] for o in orders[:3]} == {shopper.id}
    assert by_id[orders[0]["id"]]["version"] == 4 and by_id[orders[4]["id"]]["version"] == 1


# -- cancel and expiry ------------------------------------------------------------------------


def test_answers_made_from_memory_equal_the_order_read_afterwards(pilot: Pilot) -> None:
    """A new order's answer, and a payment's accepted just now, are built without reading the
    order back; each must equal a GET made afterwards. A replayed payment reads the order as it
    stands now: after a refund, its answer shows the refund."""
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=10_000)

    def read(order: dict[str, Any]) -> Any:
        return pilot.get(f"/v1/payment_orders/{order['id']}", shop.test)

    order = pilot.order(shop, 1_000, description="noodles", metadata={"till": "2"})
    assert order == read(order)
    paid = pilot.pay_order(shopper, order).json()
    assert paid["replayed"] is False and paid["payment_order"] == read(order)
    assert paid["payment_order"]["version"] == 2

    captured = pilot.order(shop, 600)
    code = pilot.payment_code(shopper, 600)
    answer = pilot.post(
        f"/v1/payment_orders/{captured['id']}/capture_code", {"payment_code": code}, shop.test
    )
    assert answer["payment_order"] == read(captured)
    assert answer["payment_order"]["paid_with"] == "payment_code"

    body = {"payment_order": order["id"], "amount": 300, "out_refund_no": "R-1"}
    assert pilot.post("/v1/refunds", body, shop.test, status=201)["status"] == "succeeded"
    again = pilot.pay_order(shopper, order).json()
    assert again["replayed"] is True
    assert again["payment_order"]["amount_refunded"] == 300
    assert again["payment_order"] == read(order)


def test_cancel_is_idempotent_and_final(pilot: Pilot) -> None:
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=10_000)
    order = pilot.order(shop, 300)
    path = f"/v1/payment_orders/{order['id']}/cancel"
    assert pilot.post(path, {}, shop.test)["status"] == "canceled"
    assert pilot.post(path, {}, shop.test)["status"] == "canceled"
    assert error(pilot.pay_order(shopper, order), 409) == "order_not_payable"
    assert pilot.balance(shopper.id) == 10_000
    paid = pilot.order(shop, 300)
    assert pilot.pay_order(shopper, paid).status_code == 200
    response = pilot.post(f"/v1/payment_orders/{paid['id']}/cancel", {}, shop.test, status=None)
    assert error(response, 409) == "order_already_paid"
    assert pilot.get(f"/v1/payment_orders/{paid['id']}", shop.test)["status"] == "succeeded"


def test_a_payment_signed_before_cancel_cannot_land_after_it(pilot: Pilot) -> None:
    """The tombstone is in the ledger: even a payment that skips the API's status check (sent
    straight to the wallet layer) is refused once the order id is cancelled."""
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=10_000)
    order = pilot.order(shop, 300)
    body = pilot.sign_order_payment(shopper, order)
    pilot.post(f"/v1/payment_orders/{order['id']}/cancel", {}, shop.test)
    direct = {"id": order["id"], "payee": order["pay_to"], **body}
    answer = pilot.post("/v1/payments", direct)
    assert answer["result"] == "transfer_id_canceled"
    assert pilot.balance(shop.wallet) == 0


def test_orders_expire_with_the_clock(pilot: Pilot) -> None:
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=10_000)
    now_s = pilot.now_ms() // 1000
    order = pilot.order(shop, 300, expires_at=now_s + 60)
    body = pilot.sign_order_payment(shopper, order)  # signed while the order is open
    pilot.advance(59)
    assert pilot.merchants.expire_due() == 0
    assert pilot.get(f"/v1/payment_orders/{order['id']}", shop.test)["status"] == (
        "requires_payment"
    )
    pilot.advance(1)
    assert pilot.get(f"/v1/payment_orders/{order['id']}", shop.test)["status"] == "expired"
    response = pilot.api.post(f"/v1/payment_orders/{order['id']}/pay", json=body)
    assert error(response, 409) == "order_not_payable"
    assert pilot.merchants.expire_due() == 1
    assert pilot.merchants.expire_due() == 0  # once
    with pilot.merchants.engine.connect() as conn:
        row = conn.execute(
            OrderTransition.__table__.select().where(  # type: ignore[attr-defined]
                OrderTransition.__table__.c.order_id == uuid.UUID(order["id"]).bytes  # type: ignore[attr-defined]
            )
        ).one()
    assert row.status == "expired"
    direct = {"id": order["id"], "payee": order["pay_to"], **body}
    assert pilot.post("/v1/payments", direct)["result"] == "transfer_id_canceled"
    assert pilot.balance(shop.wallet) == 0
    expired = pilot.get("/v1/payment_orders?status=expired", shop.test)["data"]
    assert [o["id"] for o in expired] == [order["id"]]


# -- payment codes (customer-presented) -------------------------------------------------------


def test_a_payment_code_pays_once(pilot: Pilot) -> None:
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=10_000)
    code = pilot.payment_code(shopper, 2_000)
    order = pilot.order(shop, 1_500)
    path = f"/v1/payment_orders/{order['id']}/capture_code"
    answer = pilot.post(path, {"payment_code": code}, shop.test)
    assert answer["result"] == "ok"
    assert answer["payment_order"]["status"] == "succeeded"
    assert answer["payment_order"]["paid_with"] == "payment_code"
    assert pilot.balance(shopper.id) == 10_000 - 1_500
    second = pilot.order(shop, 100)
    response = pilot.post(
        f"/v1/payment_orders/{second['id']}/capture_code",
        {"payment_code": code},
        shop.test,
        status=None,
    )
    assert error(response, 409) == "payment_code_used"
    assert pilot.balance(shopper.id) == 10_000 - 1_500


def test_one_step_capture_on_create(pilot: Pilot) -> None:
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=10_000)
    code = pilot.payment_code(shopper, 800)
    body = {"amount": 800, "out_trade_no": "POS-1", "payment_code": code}
    order = pilot.post("/v1/payment_orders", body, shop.test, status=201)
    assert order["status"] == "succeeded" and order["payer"] == shopper.id
    assert pilot.balance(shop.wallet) == 800


@pytest.mark.parametrize("case", ["expired", "over_max", "forged", "garbage", "unknown_wallet"])
def test_bad_payment_codes_are_refused(pilot: Pilot, case: str) -> None:
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=10_000)
    order = pilot.order(shop, 1_000)
    codes = {
        "expired": (pilot.payment_code(shopper, 1_000, ttl_ms=1_000), "payment_code_expired"),
        "over_max": (pilot.payment_code(shopper, 999), "payment_code_amount"),
        "garbage": ("not-a-code", "payment_code_invalid"),
    }
    if case == "forged":
        other = pilot.wallet()
        other.id, other.key = shopper.id, other.key  # signed by a key that is not the wallet's
        codes[case] = (pilot.payment_code(other, 1_000), "payment_code_invalid")
    if case == "unknown_wallet":
        stranger = pilot.wallet()
        stranger.id = new_uuid()
        codes[case] = (pilot.payment_code(stranger, 1_000), "payment_code_invalid")
    code, expected = codes[case]
    pilot.advance(2)
    response = pilot.post(
        f"/v1/payment_orders/{order['id']}/capture_code",
        {"payment_code": code},
        shop.test,
        status=None,
    )
    assert error(response, 422) == expected
    assert pilot.balance(shopper.id) == 10_000
    assert pilot.get(f"/v1/payment_orders/{order['id']}", shop.test)["status"] == (
        "requires_payment"
    )

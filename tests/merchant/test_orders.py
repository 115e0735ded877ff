"""Payment orders through the HTTP API, on SQLite and PostgreSQL."""

from __future__ import annotations

from tests.merchant.conftest import Pilot
from wallet_sdk import qr


def test_an_order_is_paid_once_by_qr(pilot: Pilot) -> None:
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=50_000)
    order = pilot.order(shop, 1_234, description="two teas")
    assert order["status"] == "requires_payment" and order["livemode"] is False
    scanned = qr.parse(order["qr_code"])
    assert (scanned.amount_fen, scanned.point_of_initiation) == (1_234, "dynamic")
    paid = pilot.pay_order(shopper, order)
    assert paid.status_code == 200, paid.text
    assert paid.json()["result"] == "ok"
    assert paid.json()["payment_order"]["status"] == "succeeded"
    assert pilot.balance(shop.wallet) == 1_234
    assert pilot.balance(shopper.id) == 50_000 - 1_234

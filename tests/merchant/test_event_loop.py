"""The merchant API never waits for its database on the event loop: a merchant request whose
query is stuck behind a lock holds up no other request of the same worker.

On PostgreSQL, where a waiting query can be seen (``pg_stat_activity``): another connection
locks the table a route needs, the route is called from a thread, and once its query is seen
waiting, ``/healthz`` is asked on the same app (one event loop, as in an HTTP worker). It must
answer while the lock is still held; the lock is released only after that (or after a timeout,
and the test fails). Then the route finishes normally."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from ledger.ids import new_uuid
from tests.merchant.conftest import Pilot, Shop

WAIT_S = 30.0

Request = Callable[[], httpx.Response]
"""A merchant API request, made ready (orders, wallets, signatures) before the lock."""


def _create(pilot: Pilot, shop: Shop) -> Request:
    body = {"amount": 500, "out_trade_no": new_uuid()}
    return lambda: pilot.api.post("/v1/payment_orders", json=body, headers=shop.test)


def _pay(pilot: Pilot, shop: Shop) -> Request:
    order, payer = pilot.order(shop, 500), pilot.wallet(top_up=10_000)
    body = pilot.sign_order_payment(payer, order)
    return lambda: pilot.api.post(f"/v1/payment_orders/{order['id']}/pay", json=body)


def _cancel(pilot: Pilot, shop: Shop) -> Request:
    order = pilot.order(shop, 500)
    return lambda: pilot.api.post(f"/v1/payment_orders/{order['id']}/cancel", headers=shop.test)


def _refund(pilot: Pilot, shop: Shop) -> Request:
    order = pilot.order(shop, 500)
    assert pilot.pay_order(pilot.wallet(top_up=10_000), order).status_code == 200
    body = {"payment_order": order["id"], "amount": 100, "out_refund_no": new_uuid()}
    return lambda: pilot.api.post("/v1/refunds", json=body, headers=shop.test)


def _endpoint(pilot: Pilot, shop: Shop) -> Request:
    headers = {**shop.test, "Idempotency-Key": new_uuid()}
    body = {"url": "https://shop.example/hook"}
    return lambda: pilot.api.post("/v1/webhook_endpoints", json=body, headers=headers)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
@pytest.mark.parametrize(
    ("prepare", "table", "status"),
    [
        (_create, "payment_orders", 201),
        (_pay, "payment_orders", 200),
        (_cancel, "payment_orders", 200),
        (_refund, "refunds", 201),
        (_endpoint, "idempotency_keys", 201),
    ],
    ids=["create order", "pay order", "cancel order", "refund", "idempotency key"],
)
def test_a_request_waiting_for_the_database_holds_up_no_other(
    pilot: Pilot,
    database_url: str,
    prepare: Callable[[Pilot, Shop], Request],
    table: str,
    status: int,
) -> None:
    request = prepare(pilot, pilot.merchant())
    engine = create_engine(database_url)
    answers: dict[str, httpx.Response] = {}
    stuck = threading.Thread(target=lambda: answers.update(stuck=request()))
    health = threading.Thread(target=lambda: answers.update(health=pilot.api.get("/healthz")))
    try:
        with engine.connect() as locker, engine.connect() as watcher:
            locker.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            stuck.start()
            try:
                assert _waiting_on_a_lock(watcher), "the request never reached the lock"
                health.start()
                health.join(WAIT_S)
                answered_while_locked = not health.is_alive()
                assert "stuck" not in answers  # still waiting for the lock
            finally:
                locker.rollback()  # releases the lock
            stuck.join(WAIT_S)
            health.join(WAIT_S)
    finally:
        engine.dispose()
    assert answered_while_locked, "the event loop waited for the merchant request's database"
    assert answers["health"].status_code == 200
    assert answers["stuck"].status_code == status, answers["stuck"].text


def _waiting_on_a_lock(watcher: Any) -> bool:
    deadline = time.monotonic() + WAIT_S
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    while time.monotonic() < deadline:
        if watcher.execute(query).scalar_one() > 0:
            return True
        watcher.rollback()
        time.sleep(0.02)
    return False

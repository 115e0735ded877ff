"""Refunds through the HTTP API, on SQLite and PostgreSQL: partial and several, never more than
was paid (also under concurrent requests), idempotent on out_refund_no, and what happens when the
payer's wallet cannot hold the money back."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

from ledger.store.database import for_writes, make_engine
from merchant_api.keys import MerchantContext
from tests.merchant.conftest import Pilot, Shop, W
from tests.merchant.test_orders import error


def paid_order(pilot: Pilot, shop: Shop, payer: W, amount: int) -> dict[str, Any]:
    order = pilot.order(shop, amount)
    answer = pilot.pay_order(payer, order).json()
    assert answer["result"] == "ok", answer
    return order


def refund(pilot: Pilot, shop: Shop, order: dict[str, Any], amount: int, no: str) -> Any:
    body = {"payment_order": order["id"], "amount": amount, "out_refund_no": no, "reason": "cold"}
    return pilot.post("/v1/refunds", body, shop.test, status=None)


def test_partial_refunds_up_to_the_amount_paid(pilot: Pilot) -> None:
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=10_000)
    order = paid_order(pilot, shop, shopper, 1_000)
    first = refund(pilot, shop, order, 300, "R-1")
    assert first.status_code == 201, first.text
    assert (first.json()["status"], first.json()["failure_code"]) == ("succeeded", None)
    assert refund(pilot, shop, order, 700, "R-2").json()["status"] == "succeeded"
    over = refund(pilot, shop, order, 1, "R-3")
    assert error(over, 422) == "amount_exceeds_refundable"
    assert pilot.balance(shopper.id) == 10_000
    assert pilot.balance(shop.wallet) == 0
    view = pilot.get(f"/v1/payment_orders/{order['id']}", shop.test)
    assert view["amount_refunded"] == 1_000 and view["status"] == "succeeded"
    listed = pilot.get(f"/v1/refunds?payment_order={order['id']}", shop.test)["data"]
    assert [(r["out_refund_no"], r["amount"]) for r in listed] == [("R-1", 300), ("R-2", 700)]
    one = pilot.get(f"/v1/refunds/{first.json()['id']}", shop.test)
    assert one == first.json()


def test_a_refund_needs_one_pooled_connection_at_a_time(pilot: Pilot) -> None:
    """A refund's row is written while its transaction holds the write lock; were anything in it
    read through a second connection, it could wait for the pool while every other pooled
    connection is held by writers waiting for that lock (the pilot profile at 300 users stalled
    so). With a pool of one connection, the refund must still go through."""
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=10_000)
    order = paid_order(pilot, shop, shopper, 1_000)
    service = pilot.merchants
    url = service.engine.url.render_as_string(hide_password=False)
    one = make_engine(url, pool_size=1, max_overflow=0, pool_timeout=2)
    engine, writes = service.engine, service.writes
    service.engine, service.writes = one, for_writes(one)
    try:
        answer = refund(pilot, shop, order, 300, "R-1")
        assert answer.status_code == 201, answer.text
        assert answer.json()["status"] == "succeeded"
        assert refund(pilot, shop, order, 700, "R-2").json()["status"] == "succeeded"
        assert error(refund(pilot, shop, order, 1, "R-3"), 422) == "amount_exceeds_refundable"
    finally:
        service.engine, service.writes = engine, writes
        one.dispose()
    assert pilot.balance(shopper.id) == 10_000


def test_out_refund_no_is_idempotent_and_conflicts_on_other_parameters(pilot: Pilot) -> None:
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=10_000)
    order = paid_order(pilot, shop, shopper, 1_000)
    first = refund(pilot, shop, order, 400, "R-1").json()
    again = refund(pilot, shop, order, 400, "R-1")
    assert again.json()["id"] == first["id"]
    assert pilot.balance(shopper.id) == 10_000 - 600  # refunded once
    assert error(refund(pilot, shop, order, 500, "R-1"), 409) == "out_refund_no_conflict"


def refund_by_hand(
    pilot: Pilot, amount: int
) -> tuple[Shop, W, dict[str, Any], MerchantContext, dict[str, Any]]:
    """A shop, a shopper who paid it an order of 1,000, that order, and what the refund route
    hands the service for a refund of ``amount`` under R-1 (the caller's context and the
    parameters), for tests that play a part of a refund's request by hand."""
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=10_000)
    order = paid_order(pilot, shop, shopper, 1_000)
    ctx = pilot.api.app.state.merchant_keys.authenticate(  # type: ignore[attr-defined]
        shop.test["Authorization"].removeprefix("Bearer ")
    )
    params = {"payment_order": uuid.UUID(order["id"]).int, "amount": amount,
              "out_refund_no": "R-1", "reason": "cold"}  # fmt: skip
    return shop, shopper, order, ctx, params


def test_a_full_refund_retried_is_the_same_refund(pilot: Pilot) -> None:
    """Nothing is left to refund once a full refund succeeded, but its retry under the same
    out_refund_no is that refund, not a new one over the amount paid."""
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=10_000)
    order = paid_order(pilot, shop, shopper, 1_000)
    first = refund(pilot, shop, order, 1_000, "R-1")
    again = refund(pilot, shop, order, 1_000, "R-1")
    assert again.status_code == 201, again.text
    assert again.json() == first.json() and first.json()["status"] == "succeeded"
    assert pilot.balance(shopper.id) == 10_000


def test_a_refund_whose_request_died_is_finished_by_its_retry(pilot: Pilot) -> None:
    """The request that made the refund's row died before the ledger answered (the row is made,
    nothing submitted). The refund is ``pending``, which the API says it never answers: its
    retry under the same out_refund_no submits it, and the money moves once."""
    shop, shopper, order, ctx, params = refund_by_hand(pilot, 400)
    service = pilot.merchants
    made = service._refund_row(ctx, service.order(ctx, params["payment_order"]), params)
    assert service.refund_view(made)["status"] == "pending"
    assert pilot.balance(shopper.id) == 9_000
    again = refund(pilot, shop, order, 400, "R-1")
    assert again.status_code == 201, again.text
    assert again.json()["id"] == str(uuid.UUID(bytes=made.id))
    assert (again.json()["status"], again.json()["failure_code"]) == ("succeeded", None)
    assert pilot.balance(shopper.id) == 9_400
    assert refund(pilot, shop, order, 400, "R-1").json() == again.json()
    assert pilot.balance(shopper.id) == 9_400
    kinds = [e["type"] for e in pilot.get("/v1/events?type=refund.succeeded", shop.test)["data"]]
    assert kinds == ["refund.succeeded"]


def test_a_refund_submitted_twice_is_applied_once(pilot: Pilot) -> None:
    """Two requests submit one refund (the second before the first's outcome is written): the
    two submissions are the same bytes, so the second is the ledger's replay of the first, with
    the same outcome and nothing written twice."""
    shop, shopper, _, ctx, params = refund_by_hand(pilot, 300)
    service = pilot.merchants
    made, submit = service._new_refund(ctx, params)
    assert submit is not None
    merchant, paid, payer = submit
    asyncio.run(service._ensure_allowance(merchant, paid))
    first = asyncio.run(service._submit_refund(merchant, paid, made, payer))
    pilot.advance(60)  # a later submission still signs the same bytes
    second = asyncio.run(service._submit_refund(merchant, paid, made, payer))
    assert first.codes == second.codes == [0, 0]
    assert second.replayed == {0, 1}
    assert pilot.balance(shopper.id) == 9_300
    view = pilot.get(f"/v1/refunds/{uuid.UUID(bytes=made.id)}", shop.test)
    assert view["status"] == "succeeded"
    kinds = [e["type"] for e in pilot.get("/v1/events?type=refund.succeeded", shop.test)["data"]]
    assert kinds == ["refund.succeeded"]


def test_an_unpaid_order_cannot_be_refunded(pilot: Pilot) -> None:
    shop = pilot.merchant()
    order = pilot.order(shop, 1_000)
    assert error(refund(pilot, shop, order, 100, "R-1"), 409) == "order_not_paid"


def test_concurrent_refunds_never_exceed_the_amount_paid(pilot: Pilot) -> None:
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=10_000)
    order = paid_order(pilot, shop, shopper, 1_000)
    barrier = threading.Barrier(5)
    answers: list[Any] = []

    def go(i: int) -> None:
        barrier.wait()
        answers.append(refund(pilot, shop, order, 400, f"C-{i}"))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    succeeded = [a for a in answers if a.status_code == 201 and a.json()["status"] == "succeeded"]
    assert len(succeeded) == 2  # 2 × 400 ≤ 1,000 < 3 × 400
    for a in answers:
        if a not in succeeded:  # refused before the ledger, or by its allowance account
            assert a.status_code == 422 or a.json()["failure_code"] == "amount_exceeds_refundable"
    assert pilot.balance(shopper.id) == 10_000 - 1_000 + 800
    view = pilot.get(f"/v1/payment_orders/{order['id']}", shop.test)
    assert view["amount_refunded"] == 800


def test_a_refund_over_the_payers_cap_is_swept_to_the_linked_bank(pilot: Pilot) -> None:
    shop = pilot.merchant()
    cap = 1_000_000  # class 4: ¥10,000
    shopper = pilot.wallet(4, bank=100_000, top_up=cap)
    order = paid_order(pilot, shop, shopper, 100_000)
    assert pilot.top_up(shopper, 100_000) == "ok"  # back at the cap
    before = bank_balance(pilot, shopper)
    done = refund(pilot, shop, order, 60_000, "R-1")
    assert done.json()["status"] == "succeeded"
    assert pilot.balance(shopper.id) == cap  # the excess went on to the bank account
    assert bank_balance(pilot, shopper) == before + 60_000


def bank_balance(pilot: Pilot, w: W) -> int:
    balances = pilot.get(f"/v1/accounts/{w.bank}", pilot.op)["balances"]
    return int(balances["credits_posted"] - balances["debits_posted"])


def test_a_refund_over_the_cap_without_a_bank_fails_with_a_reason(pilot: Pilot) -> None:
    shop = pilot.merchant()
    cap = 1_000_000
    donor = pilot.wallet(2, top_up=2_000_000)
    shopper = pilot.wallet(4, bank=None)
    assert pilot.transfer(donor, shopper.id, 300_000) == "ok"
    order = paid_order(pilot, shop, shopper, 100_000)
    assert pilot.transfer(donor, shopper.id, cap - 200_000) == "ok"  # exactly at the cap
    failed = refund(pilot, shop, order, 1, "R-1")
    assert failed.status_code == 201
    assert (failed.json()["status"], failed.json()["failure_code"]) == (
        "failed",
        "exceeds_balance_cap",
    )
    assert pilot.balance(shopper.id) == cap and pilot.balance(shop.wallet) == 100_000
    view = pilot.get(f"/v1/payment_orders/{order['id']}", shop.test)
    assert view["amount_refunded"] == 0
    assert pilot.transfer(shopper, donor.id, 50_000) == "ok"  # room again: a new refund works
    assert refund(pilot, shop, order, 1, "R-2").json()["status"] == "succeeded"

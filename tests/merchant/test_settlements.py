"""Settlements through the HTTP API, on SQLite and PostgreSQL: by hand (the whole balance or an
amount, idempotent with Idempotency-Key, refused or failed with the ledger's code), daily on the
schedule exactly once per CST day, listing, and one merchant never seeing another's."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from ledger.ids import new_uuid
from merchant_api import app as merchant_app
from merchant_api import statements
from merchant_api.models import Merchant, Settlement, WebhookEvent
from tests.merchant.conftest import Pilot, Shop, W

DAY_S = 86_400
CST_S = 8 * 3600


def sell(pilot: Pilot, shop: Shop, payer: W, amount: int) -> None:
    order = pilot.order(shop, amount)
    answer = pilot.pay_order(payer, order)
    assert answer.status_code == 200 and answer.json()["result"] == "ok", answer.text


def bank_balance(pilot: Pilot, shop: Shop) -> int:
    balances = pilot.get(f"/v1/accounts/{shop.bank}", pilot.op)["balances"]
    return int(balances["credits_posted"]) - int(balances["debits_posted"])


def settle(pilot: Pilot, shop: Shop, body: dict[str, Any], **headers: str) -> Any:
    return pilot.api.post("/v1/settlements", json=body, headers={**shop.test, **headers})


def error_code(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    return str(response.json()["error"]["code"])


def events(pilot: Pilot, shop: Shop) -> list[WebhookEvent]:
    with Session(pilot.merchants.engine) as session:
        query = select(WebhookEvent).where(
            col(WebhookEvent.merchant_id) == shop.id, col(WebhookEvent.type).like("settlement.%")
        )
        return list(session.exec(query.order_by(col(WebhookEvent.created_at_ms))).all())


def settlement_rows(pilot: Pilot, shop: Shop) -> list[Settlement]:
    with Session(pilot.merchants.engine) as session:
        query = select(Settlement).where(col(Settlement.merchant_id) == shop.id)
        return list(session.exec(query).all())


def past_midnight(pilot: Pilot) -> None:
    now_s = pilot.now_ms() // 1000
    pilot.advance(((now_s + CST_S) // DAY_S + 1) * DAY_S - CST_S - now_s + 60)


def test_settling_the_whole_balance_by_hand(pilot: Pilot) -> None:
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=20_000)
    sell(pilot, shop, shopper, 1_500)
    sell(pilot, shop, shopper, 2_000)
    response = settle(pilot, shop, {})
    assert response.status_code == 201, response.text
    done = response.json()
    assert (done["object"], done["status"], done["failure_code"]) == (
        "settlement",
        "succeeded",
        None,
    )
    assert (done["amount"], done["currency"], done["trigger"]) == (3_500, "CNY", "manual")
    assert done["bank_account"] == shop.bank and done["livemode"] is False
    assert done["day"] == statements.day_date(statements.cst_day(pilot.now_ms())).isoformat()
    assert pilot.balance(shop.wallet) == 0 and bank_balance(pilot, shop) == 3_500
    assert pilot.get(f"/v1/settlements/{done['id']}", shop.test) == done
    # the redemption is in the journal, signed by the merchant wallet's key
    transfer = pilot.get(f"/v1/transfers/{done['id']}", pilot.op)
    assert (transfer["amount"], transfer["debit_account_id"]) == (3_500, shop.wallet)
    # nothing left: refused before the ledger
    assert error_code(settle(pilot, shop, {}), 422) == "nothing_to_settle"
    [event] = events(pilot, shop)
    payload = json.loads(event.payload)
    assert (event.type, event.object_id, event.livemode) == ("settlement.succeeded", done["id"], 0)
    assert payload["data"]["object"] == done


def test_an_amount_over_the_balance_fails_with_the_ledgers_code(pilot: Pilot) -> None:
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=20_000)
    sell(pilot, shop, shopper, 1_000)
    response = settle(pilot, shop, {"amount": 1_001})
    assert response.status_code == 201, response.text
    failed = response.json()
    assert (failed["status"], failed["failure_code"], failed["amount"]) == (
        "failed",
        "exceeds_credits",
        1_001,
    )
    assert pilot.balance(shop.wallet) == 1_000 and bank_balance(pilot, shop) == 0
    [event] = events(pilot, shop)
    assert event.type == "settlement.failed"
    assert json.loads(event.payload)["data"]["object"]["failure_code"] == "exceeds_credits"
    part = settle(pilot, shop, {"amount": 400}).json()
    assert (part["status"], part["amount"]) == ("succeeded", 400)
    assert pilot.balance(shop.wallet) == 600 and bank_balance(pilot, shop) == 400
    for bad in ({"amount": 0}, {"amount": 10.5}, {"amount": "100"}, {"amount": 1, "x": 1}):
        assert settle(pilot, shop, bad).status_code in (400, 422), bad
    assert pilot.balance(shop.wallet) == 600


def test_a_settlement_is_idempotent_with_an_idempotency_key(pilot: Pilot) -> None:
    shop = pilot.merchant()
    shopper = pilot.wallet(top_up=20_000)
    sell(pilot, shop, shopper, 2_000)
    key = new_uuid()
    first = settle(pilot, shop, {"amount": 500}, **{"Idempotency-Key": key})
    assert first.status_code == 201, first.text
    again = settle(pilot, shop, {"amount": 500}, **{"Idempotency-Key": key})
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert pilot.balance(shop.wallet) == 1_500 and bank_balance(pilot, shop) == 500
    other = settle(pilot, shop, {"amount": 600}, **{"Idempotency-Key": key})
    assert error_code(other, 422) == "idempotency_key_reused"
    assert len(settlement_rows(pilot, shop)) == 1


def test_listing_is_newest_first_with_a_cursor_and_private(pilot: Pilot) -> None:
    shop = pilot.merchant()
    other = pilot.merchant("Noodle Bar")
    shopper = pilot.wallet(top_up=20_000)
    sell(pilot, shop, shopper, 3_000)
    made = []
    for amount in (100, 200, 300):
        made.append(settle(pilot, shop, {"amount": amount}).json()["id"])
        pilot.advance(1)
    page = pilot.get("/v1/settlements?limit=2", shop.test)
    assert [s["id"] for s in page["data"]] == made[::-1][:2] and page["has_more"] is True
    rest = pilot.get(f"/v1/settlements?limit=2&starting_after={made[1]}", shop.test)
    assert [s["id"] for s in rest["data"]] == [made[0]] and rest["has_more"] is False
    # another merchant (or the other mode) sees none of it
    assert pilot.get("/v1/settlements", other.test)["data"] == []
    assert pilot.get("/v1/settlements", shop.live)["data"] == []
    for headers, code in ((other.test, "settlement_not_found"), (shop.live, "livemode_mismatch")):
        response = pilot.api.get(f"/v1/settlements/{made[0]}", headers=headers)
        assert error_code(response, 404) == code
    assert error_code(pilot.api.get("/v1/settlements/nope", headers=shop.test), 404) == (
        "settlement_not_found"
    )
    assert pilot.api.get("/v1/settlements").status_code == 401


def test_daily_settlement_runs_once_per_day(pilot: Pilot) -> None:
    daily = pilot.merchant(settlement_schedule="daily")
    manual = pilot.merchant("Noodle Bar")
    shopper = pilot.wallet(top_up=50_000)
    workers = merchant_app.Workers(pilot.merchants)
    workers.run_once()  # today: nothing to settle yet, and the day is done
    sell(pilot, daily, shopper, 1_200)
    sell(pilot, manual, shopper, 800)
    workers.run_once()
    assert settlement_rows(pilot, daily) == [] and pilot.balance(daily.wallet) == 1_200
    past_midnight(pilot)
    sell(pilot, daily, shopper, 300)
    workers.run_once()
    workers.run_once()
    [row] = settlement_rows(pilot, daily)
    assert (row.status, row.amount, row.trigger, row.livemode) == ("succeeded", 1_500, "daily", 1)
    assert row.day == statements.cst_day(pilot.now_ms())
    assert pilot.balance(daily.wallet) == 0 and bank_balance(pilot, daily) == 1_500
    assert settlement_rows(pilot, manual) == [] and pilot.balance(manual.wallet) == 800
    listed = pilot.get("/v1/settlements", daily.live)["data"]
    assert [s["trigger"] for s in listed] == ["daily"]
    assert [e.type for e in events(pilot, daily)] == ["settlement.succeeded"]
    # a restart that lost settled_day never settles the same day twice
    with Session(pilot.merchants.engine) as session:
        session.execute(update(Merchant).where(col(Merchant.id) == daily.id).values(settled_day=0))
        session.commit()
    sell(pilot, daily, shopper, 50)
    workers.run_once()
    assert len(settlement_rows(pilot, daily)) == 1 and pilot.balance(daily.wallet) == 50
    with Session(pilot.merchants.engine) as session:
        merchant = session.get(Merchant, daily.id)
        assert merchant is not None and merchant.settled_day == row.day
    past_midnight(pilot)
    workers.run_once()
    workers.run_once()
    rows = sorted(settlement_rows(pilot, daily), key=lambda s: s.day)
    assert [(s.amount, s.day - rows[0].day) for s in rows] == [(1_500, 0), (50, 1)]
    assert pilot.balance(daily.wallet) == 0 and bank_balance(pilot, daily) == 1_550

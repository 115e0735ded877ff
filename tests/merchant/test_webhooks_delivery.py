"""Webhooks of the merchant API, delivered to a real HTTP receiver on 127.0.0.1, on SQLite and
PostgreSQL. Time is the pilot's clock: tests move it and call the worker, they never sleep for
the retry schedule."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from merchant_api import app as merchant_app
from merchant_api import webhooks
from tests.merchant.conftest import Pilot, Shop
from wallet_sdk.webhooks import WebhookVerificationError, verify

SCHEDULE = webhooks.RETRY_SCHEDULE_S


# -- a real receiver ------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    def signatures(self) -> list[str]:
        return self.headers["webhook-signature"].split()


class Receiver:
    """An HTTP server in a thread that records every POST and answers from a script: the next
    scripted status, else ``default``. Paths under ``/hang`` wait until the receiver closes.
    With ``tls``, it speaks HTTPS with that server context."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Received] = []
        self.script: list[int] = []
        self.default = 200
        self.lock = threading.Lock()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.path.startswith("/hang"):
                    receiver.release.wait(30)
                with receiver.lock:
                    receiver.requests.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    status = receiver.script.pop(0) if receiver.script else receiver.default
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "http" if tls is None else "https"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str = "/hook") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def answer(self, *statuses: int, then: int = 200) -> None:
        with self.lock:
            self.script, self.default = list(statuses), then

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


# -- helpers --------------------------------------------------------------------------------------


def deliver(pilot: Pilot) -> webhooks.RunResult:
    return webhooks.run_once(pilot.merchants)


def add_endpoint(
    pilot: Pilot, shop: Shop, url: str, *, events: list[str] | None = None, live: bool = False
) -> dict[str, Any]:
    body: dict[str, Any] = {"url": url, "description": "till"}
    if events is not None:
        body["enabled_events"] = events
    view: dict[str, Any] = pilot.post(
        "/v1/webhook_endpoints", body, shop.live if live else shop.test, status=201
    )
    return view


def paid_order(pilot: Pilot, shop: Shop, amount: int = 1_000) -> dict[str, Any]:
    shopper = pilot.wallet(top_up=amount * 10)
    order = pilot.order(shop, amount)
    paid = pilot.pay_order(shopper, order)
    assert paid.status_code == 200 and paid.json()["result"] == "ok", paid.text
    view: dict[str, Any] = paid.json()["payment_order"]
    return view


def checked(pilot: Pilot, request: Received, secret: str) -> dict[str, Any]:
    """The event, after checking its signature as a merchant would (at the pilot's time)."""
    return verify(request.body, request.headers, secret, now=pilot.now_ms() / 1000)


def events(pilot: Pilot, shop: Shop, query: str = "") -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = pilot.get(f"/v1/events{query}", shop.test)["data"]
    return data


def the_event(pilot: Pilot, shop: Shop, type: str) -> dict[str, Any]:
    [found] = events(pilot, shop, f"?type={type}")
    detail: dict[str, Any] = pilot.get(f"/v1/events/{found['id']}", shop.test)
    return detail


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- delivery -------------------------------------------------------------------------------------


def test_a_paid_order_is_delivered_signed(pilot: Pilot, receiver: Receiver) -> None:
    shop = pilot.merchant()
    endpoint = add_endpoint(pilot, shop, receiver.url())
    secret = endpoint["secret"]
    assert secret.startswith("whsec_") and endpoint["status"] == "enabled"
    assert endpoint["enabled_events"] == ["*"] and endpoint["livemode"] is False
    shown = pilot.get(f"/v1/webhook_endpoints/{endpoint['id']}", shop.test)
    assert "secret" not in shown and shown["url"] == receiver.url()

    order = paid_order(pilot, shop)
    assert receiver.requests == []  # sent by the worker, not on the request path
    result = deliver(pilot)
    assert (result.fanned_out, result.attempted, result.delivered) == (1, 1, 1)
    [request] = receiver.requests
    assert request.headers["content-type"] == "application/json"
    event = checked(pilot, request, secret)
    assert event["type"] == "payment_order.succeeded" and event["livemode"] is False
    assert event["id"] == request.headers["webhook-id"]
    assert int(request.headers["webhook-timestamp"]) == pilot.now_ms() // 1000
    assert event["data"]["object"]["id"] == order["id"]
    assert event["data"]["object"]["status"] == "succeeded"
    assert event["object_version"] == event["data"]["object"]["version"] == 2
    with pytest.raises(WebhookVerificationError):
        verify(request.body, request.headers, webhooks.generate_secret(), now=pilot.now_ms() / 1000)
    tampered = request.body.replace(b"succeeded", b"SUCCEEDED")
    with pytest.raises(WebhookVerificationError):
        verify(tampered, request.headers, secret, now=pilot.now_ms() / 1000)

    detail = pilot.get(f"/v1/events/{event['id']}", shop.test)
    assert json.loads(request.body) == {
        k: v
        for k, v in detail.items()
        if k not in ("object", "created", "pending_webhooks", "delivery_success", "deliveries")
    }  # the body is the stored event, byte for byte what was signed
    [delivery] = detail["deliveries"]
    assert delivery["endpoint"] == endpoint["id"] and delivery["state"] == "delivered"
    assert (delivery["attempts"], delivery["last_status"]) == (1, 200)
    assert delivery["next_attempt_at"] is None and detail["pending_webhooks"] == 0

    pilot.advance(3600)
    assert deliver(pilot).attempted == 0  # delivered is final
    assert len(receiver.requests) == 1


def test_failures_are_retried_on_the_schedule_until_delivered(
    pilot: Pilot, receiver: Receiver
) -> None:
    shop = pilot.merchant()
    secret = add_endpoint(pilot, shop, receiver.url())["secret"]
    receiver.answer(500, 503, 404, then=200)
    paid_order(pilot, shop)
    deliver(pilot)
    assert len(receiver.requests) == 1  # attempt 1, at once: 500
    for attempt, delay in ((2, SCHEDULE[1]), (3, SCHEDULE[2]), (4, SCHEDULE[3])):
        event = the_event(pilot, shop, "payment_order.succeeded")
        [delivery] = event["deliveries"]
        assert (delivery["state"], delivery["attempts"]) == ("pending", attempt - 1)
        assert delivery["next_attempt_at"] == pilot.now_ms() // 1000 + delay
        assert event["pending_webhooks"] == 1 and event["delivery_success"] is False
        pilot.advance(delay - 1)
        assert deliver(pilot).attempted == 0  # not before its time
        assert len(receiver.requests) == attempt - 1
        pilot.advance(1)
        assert deliver(pilot).attempted == 1
        assert len(receiver.requests) == attempt
        checked(pilot, receiver.requests[-1], secret)  # every attempt is signed afresh
    [delivery] = the_event(pilot, shop, "payment_order.succeeded")["deliveries"]
    assert (delivery["state"], delivery["attempts"], delivery["last_status"]) == (
        "delivered",
        4,
        200,
    )
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    stamps = [int(r.headers["webhook-timestamp"]) for r in receiver.requests]
    assert len(ids) == 1 and stamps == sorted(stamps) and len(set(stamps)) == 4
    assert len({r.body for r in receiver.requests}) == 1
    pilot.advance(SCHEDULE[-1])
    deliver(pilot)
    assert len(receiver.requests) == 4


def test_an_exhausted_schedule_fails_and_can_be_redelivered(
    pilot: Pilot, receiver: Receiver
) -> None:
    shop = pilot.merchant()
    secret = add_endpoint(pilot, shop, receiver.url())["secret"]
    receiver.answer(then=500)
    paid_order(pilot, shop)
    deliver(pilot)
    for delay in SCHEDULE[1:]:
        pilot.advance(delay)
        assert deliver(pilot).attempted == 1
    assert len(receiver.requests) == len(SCHEDULE) == 8
    event = the_event(pilot, shop, "payment_order.succeeded")
    [delivery] = event["deliveries"]
    assert (delivery["state"], delivery["attempts"], delivery["last_status"]) == ("failed", 8, 500)
    assert delivery["last_error"] == "HTTP 500" and delivery["next_attempt_at"] is None
    pilot.advance(SCHEDULE[-1] * 2)
    assert deliver(pilot).attempted == 0
    assert [e["id"] for e in events(pilot, shop, "?delivery_success=false")] == [event["id"]]
    assert events(pilot, shop, "?delivery_success=true") == []

    receiver.answer(then=200)
    redone = pilot.post(f"/v1/events/{event['id']}/redeliver", {}, shop.test)
    assert redone["deliveries"][0]["state"] == "pending"
    assert redone["deliveries"][0]["next_attempt_at"] == pilot.now_ms() // 1000
    assert deliver(pilot).delivered == 1
    assert checked(pilot, receiver.requests[-1], secret)["id"] == event["id"]
    [delivery] = the_event(pilot, shop, "payment_order.succeeded")["deliveries"]
    assert (delivery["state"], delivery["attempts"]) == ("delivered", 9)
    assert events(pilot, shop, "?delivery_success=false") == []
    assert [e["id"] for e in events(pilot, shop, "?delivery_success=true")] == [event["id"]]


def test_a_failed_redelivery_is_one_attempt(pilot: Pilot, receiver: Receiver) -> None:
    shop = pilot.merchant()
    add_endpoint(pilot, shop, receiver.url())
    receiver.answer(then=500)
    paid_order(pilot, shop)
    deliver(pilot)
    for delay in SCHEDULE[1:]:
        pilot.advance(delay)
        deliver(pilot)
    event = the_event(pilot, shop, "payment_order.succeeded")
    pilot.post(f"/v1/events/{event['id']}/redeliver", {}, shop.test)
    assert deliver(pilot).attempted == 1
    [delivery] = the_event(pilot, shop, "payment_order.succeeded")["deliveries"]
    assert (delivery["state"], delivery["attempts"]) == ("failed", 9)


def test_410_gone_disables_the_endpoint(pilot: Pilot, receiver: Receiver) -> None:
    shop = pilot.merchant()
    endpoint = add_endpoint(pilot, shop, receiver.url())
    receiver.answer(410, then=200)
    first, second = paid_order(pilot, shop), paid_order(pilot, shop)
    deliver(pilot)
    assert len(receiver.requests) == 1  # the endpoint is not asked again
    shown = pilot.get(f"/v1/webhook_endpoints/{endpoint['id']}", shop.test)
    assert shown["status"] == "disabled" and "410" in shown["disabled_reason"]
    states = sorted(
        d["state"]
        for e in events(pilot, shop)
        for d in pilot.get(f"/v1/events/{e['id']}", shop.test)["deliveries"]
    )
    assert states == ["canceled", "failed"]
    pilot.advance(SCHEDULE[-1])
    paid_order(pilot, shop)
    assert deliver(pilot).attempted == 0 and len(receiver.requests) == 1

    enabled = pilot.post(
        f"/v1/webhook_endpoints/{endpoint['id']}", {"status": "enabled"}, shop.test
    )
    assert enabled["status"] == "enabled" and enabled["disabled_reason"] is None
    fourth = paid_order(pilot, shop)
    assert deliver(pilot).delivered == 1
    assert receiver.requests[-1].event["data"]["object"]["id"] == fourth["id"]
    for e in events(pilot, shop, "?delivery_success=false"):  # the two from before the 410
        pilot.post(f"/v1/events/{e['id']}/redeliver", {"endpoint": endpoint["id"]}, shop.test)
    assert deliver(pilot).delivered == 2
    sent = {r.event["data"]["object"]["id"] for r in receiver.requests[-2:]}
    assert sent == {first["id"], second["id"]}


def test_secret_rotation_signs_with_both_during_the_overlap(
    pilot: Pilot, receiver: Receiver
) -> None:
    shop = pilot.merchant()
    endpoint = add_endpoint(pilot, shop, receiver.url())
    old = endpoint["secret"]
    path = f"/v1/webhook_endpoints/{endpoint['id']}/rotate_secret"
    rotated = pilot.post(path, {"expires_in_s": 3600}, shop.test)
    new = rotated["secret"]
    assert new.startswith("whsec_") and new != old
    assert rotated["previous_secret_expires_at"] == pilot.now_ms() // 1000 + 3600
    assert "secret" not in pilot.get(f"/v1/webhook_endpoints/{endpoint['id']}", shop.test)

    paid_order(pilot, shop)
    deliver(pilot)
    [during] = receiver.requests
    assert len(during.signatures()) == 2
    assert checked(pilot, during, old) == checked(pilot, during, new)

    pilot.advance(3600)
    paid_order(pilot, shop)
    deliver(pilot)
    after = receiver.requests[-1]
    assert len(after.signatures()) == 1
    checked(pilot, after, new)
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        checked(pilot, after, old)
    shown = pilot.get(f"/v1/webhook_endpoints/{endpoint['id']}", shop.test)
    assert shown["previous_secret_expires_at"] is None

    default = pilot.post(path, {}, shop.test)  # a day's overlap by default
    assert default["previous_secret_expires_at"] == pilot.now_ms() // 1000 + 86400
    at_once = pilot.post(path, {"expires_in_s": 0}, shop.test)
    assert at_once["previous_secret_expires_at"] is None
    paid_order(pilot, shop)
    deliver(pilot)
    assert len(receiver.requests[-1].signatures()) == 1
    checked(pilot, receiver.requests[-1], at_once["secret"])


def test_object_versions_let_a_receiver_drop_stale_events(pilot: Pilot, receiver: Receiver) -> None:
    shop = pilot.merchant()
    add_endpoint(pilot, shop, receiver.url())
    created = pilot.order(shop, 5_000)
    shopper = pilot.wallet(top_up=50_000)
    assert pilot.pay_order(shopper, created).status_code == 200
    for n, amount in enumerate((1_000, 1_500)):
        body = {"payment_order": created["id"], "amount": amount, "out_refund_no": f"r{n}"}
        refund = pilot.post("/v1/refunds", body, shop.test, status=201)
        assert refund["status"] == "succeeded"
    deliver(pilot)
    sent = [r.event for r in receiver.requests]
    assert sorted(e["type"] for e in sent) == ["payment_order.succeeded", *["refund.succeeded"] * 2]
    paid = next(e for e in sent if e["type"] == "payment_order.succeeded")
    refunds = [e for e in sent if e["type"] == "refund.succeeded"]
    assert created["version"] == 1 < paid["object_version"] == 2
    assert all(e["data"]["object"]["payment_order"] == created["id"] for e in refunds)
    assert all(e["object_version"] == e["data"]["object"]["version"] == 2 for e in refunds)
    now = pilot.get(f"/v1/payment_orders/{created['id']}", shop.test)
    assert now["version"] == 4 and now["amount_refunded"] == 2_500  # one step per final refund

    # a receiver keeping the newest version per object ignores a late (redelivered) event
    latest: dict[str, int] = {now["id"]: now["version"]}
    pilot.post(f"/v1/events/{paid['id']}/redeliver", {}, shop.test)
    deliver(pilot)
    late = receiver.requests[-1].event
    assert late["id"] == paid["id"]
    assert late["object_version"] < latest[late["data"]["object"]["id"]]


def test_enabled_events_choose_what_each_endpoint_gets(pilot: Pilot, receiver: Receiver) -> None:
    shop = pilot.merchant()
    refunds_only = add_endpoint(pilot, shop, receiver.url("/r"), events=["refund.succeeded"])
    paid_only = add_endpoint(pilot, shop, receiver.url("/p"), events=["payment_order.succeeded"])
    add_endpoint(pilot, shop, receiver.url("/all"))
    live = add_endpoint(pilot, shop, "https://shop.example/hook", live=True)
    order = paid_order(pilot, shop)
    body = {"payment_order": order["id"], "amount": 100, "out_refund_no": "r1"}
    pilot.post("/v1/refunds", body, shop.test, status=201)
    canceled = pilot.order(shop, 200)
    pilot.post(f"/v1/payment_orders/{canceled['id']}/cancel", {}, shop.test)
    deliver(pilot)
    types = {p: sorted(r.event["type"] for r in receiver.at(p)) for p in ("/r", "/p", "/all")}
    assert types == {
        "/r": ["refund.succeeded"],
        "/p": ["payment_order.succeeded"],
        "/all": ["payment_order.canceled", "payment_order.succeeded", "refund.succeeded"],
    }
    for e in events(pilot, shop):  # test events never go to a live endpoint
        detail = pilot.get(f"/v1/events/{e['id']}", shop.test)
        assert live["id"] not in {d["endpoint"] for d in detail["deliveries"]}

    path = f"/v1/webhook_endpoints/{paid_only['id']}"
    events_now = ["payment_order.succeeded", "payment_order.canceled"]
    assert pilot.post(path, {"enabled_events": events_now}, shop.test)["enabled_events"] == (
        events_now
    )
    again = pilot.order(shop, 300)
    pilot.post(f"/v1/payment_orders/{again['id']}/cancel", {}, shop.test)
    deliver(pilot)
    assert receiver.at("/p")[-1].event["type"] == "payment_order.canceled"
    assert len(receiver.at("/r")) == 1
    assert refunds_only["enabled_events"] == ["refund.succeeded"]


def test_events_list_filters_and_paginates(pilot: Pilot) -> None:
    shop = pilot.merchant()
    for _ in range(3):
        paid_order(pilot, shop)
        pilot.advance(1)
    canceled = pilot.order(shop, 200)
    pilot.post(f"/v1/payment_orders/{canceled['id']}/cancel", {}, shop.test)
    everything = events(pilot, shop)
    assert [e["type"] for e in everything] == [
        "payment_order.canceled",
        *["payment_order.succeeded"] * 3,
    ]  # newest first
    assert all(e["object"] == "event" and e["pending_webhooks"] == 0 for e in everything)
    page = pilot.get("/v1/events?limit=2", shop.test)
    assert page["has_more"] is True and [e["id"] for e in page["data"]] == [
        e["id"] for e in everything[:2]
    ]
    rest = pilot.get(f"/v1/events?limit=2&starting_after={everything[1]['id']}", shop.test)
    assert rest["has_more"] is False and [e["id"] for e in rest["data"]] == [
        e["id"] for e in everything[2:]
    ]
    assert len(events(pilot, shop, "?type=payment_order.succeeded")) == 3
    assert events(pilot, shop, "?type=refund.succeeded") == []
    assert events(pilot, shop, "?delivery_success=false") == []  # no endpoint: nothing pending


def test_redelivery_reaches_an_endpoint_made_after_the_event(
    pilot: Pilot, receiver: Receiver
) -> None:
    shop = pilot.merchant()
    paid_order(pilot, shop)
    assert deliver(pilot).fanned_out == 1  # no endpoint yet: no delivery
    event = the_event(pilot, shop, "payment_order.succeeded")
    assert event["deliveries"] == []
    answer = pilot.post(f"/v1/events/{event['id']}/redeliver", {}, shop.test, status=409)
    assert answer["error"]["code"] == "no_endpoint_to_redeliver"
    endpoint = add_endpoint(pilot, shop, receiver.url())
    body = {"endpoint": endpoint["id"]}
    redone = pilot.post(f"/v1/events/{event['id']}/redeliver", body, shop.test)
    assert [d["endpoint"] for d in redone["deliveries"]] == [endpoint["id"]]
    assert deliver(pilot).delivered == 1
    assert checked(pilot, receiver.requests[0], endpoint["secret"])["id"] == event["id"]


def test_the_background_workers_expire_orders_and_deliver(pilot: Pilot, receiver: Receiver) -> None:
    shop = pilot.merchant()
    secret = add_endpoint(pilot, shop, receiver.url())["secret"]
    order = pilot.order(shop, 100, expires_at=pilot.now_ms() // 1000 + 60)
    pilot.advance(61)
    merchant_app.Workers(pilot.merchants).run_once()
    [request] = receiver.requests
    event = checked(pilot, request, secret)
    assert event["type"] == "payment_order.expired"
    assert event["data"]["object"]["id"] == order["id"]


def test_a_dead_endpoint_does_not_hold_up_the_others(
    pilot: Pilot, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhooks, "ATTEMPT_TIMEOUT_S", 0.5)
    monkeypatch.setattr(webhooks, "RUN_BUDGET_S", 600.0)  # however slow this machine is
    shop = pilot.merchant()
    hanging = add_endpoint(pilot, shop, receiver.url("/hang"))
    closed = add_endpoint(pilot, shop, f"http://127.0.0.1:{free_port()}/hook")
    add_endpoint(pilot, shop, receiver.url("/ok"))
    paid_order(pilot, shop)
    paid_order(pilot, shop)
    result = deliver(pilot)
    assert len(receiver.at("/ok")) == 2  # both, in the same run
    assert (result.attempted, result.delivered) == (4, 2)  # one try each for the dead ones
    by_endpoint: dict[str, list[dict[str, Any]]] = {}
    for e in events(pilot, shop):
        for d in pilot.get(f"/v1/events/{e['id']}", shop.test)["deliveries"]:
            by_endpoint.setdefault(d["endpoint"], []).append(d)
    for dead, error in ((hanging, "ReadTimeout"), (closed, "ConnectError")):
        tried = [d for d in by_endpoint[dead["id"]] if d["attempts"]]
        untried = [d for d in by_endpoint[dead["id"]] if not d["attempts"]]
        assert len(tried) == len(untried) == 1
        assert tried[0]["state"] == "pending" and tried[0]["last_error"].startswith(error)
        assert tried[0]["next_attempt_at"] == pilot.now_ms() // 1000 + SCHEDULE[1]
        assert untried[0]["state"] == "pending"  # left for the next run


# -- endpoints: management, isolation, validation ---------------------------------------------


def test_endpoints_can_be_listed_updated_and_deleted(pilot: Pilot, receiver: Receiver) -> None:
    shop = pilot.merchant()
    first = add_endpoint(pilot, shop, receiver.url("/1"))
    pilot.advance(1)
    second = add_endpoint(pilot, shop, receiver.url("/2"))
    listed = pilot.get("/v1/webhook_endpoints", shop.test)
    assert [e["id"] for e in listed["data"]] == [second["id"], first["id"]]
    assert all("secret" not in e for e in listed["data"])
    page = pilot.get(f"/v1/webhook_endpoints?limit=1&starting_after={second['id']}", shop.test)
    assert [e["id"] for e in page["data"]] == [first["id"]] and page["has_more"] is False

    path = f"/v1/webhook_endpoints/{first['id']}"
    changed = pilot.post(path, {"url": receiver.url("/1b"), "description": "new"}, shop.test)
    assert (changed["url"], changed["description"]) == (receiver.url("/1b"), "new")
    disabled = pilot.post(path, {"status": "disabled"}, shop.test)
    assert disabled["status"] == "disabled"
    paid_order(pilot, shop)
    deliver(pilot)
    assert [r.path for r in receiver.requests] == ["/2"]

    gone = pilot.api.delete(f"/v1/webhook_endpoints/{second['id']}", headers=shop.test)
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    pilot.get(f"/v1/webhook_endpoints/{second['id']}", shop.test, status=404)
    assert [e["id"] for e in pilot.get("/v1/webhook_endpoints", shop.test)["data"]] == [first["id"]]
    [event] = events(pilot, shop)
    detail = pilot.get(f"/v1/events/{event['id']}", shop.test)
    assert [d["state"] for d in detail["deliveries"]] == ["delivered"]  # history stays


def test_creating_an_endpoint_is_idempotent(pilot: Pilot, receiver: Receiver) -> None:
    shop = pilot.merchant()
    headers = {**shop.test, "Idempotency-Key": "hook-1"}
    body = {"url": receiver.url()}
    a = pilot.post("/v1/webhook_endpoints", body, headers, status=201)
    b = pilot.api.post("/v1/webhook_endpoints", json=body, headers=headers)
    assert b.status_code == 201 and b.headers["idempotent-replayed"] == "true"
    assert b.json() == a
    assert len(pilot.get("/v1/webhook_endpoints", shop.test)["data"]) == 1


def test_another_merchant_sees_none_of_it(pilot: Pilot, receiver: Receiver) -> None:
    shop, other = pilot.merchant("Tea House"), pilot.merchant("Noodle Bar")
    endpoint = add_endpoint(pilot, shop, receiver.url())
    theirs = add_endpoint(pilot, other, receiver.url("/other"))
    paid_order(pilot, shop)
    deliver(pilot)
    [event] = events(pilot, shop)
    e, ev = endpoint["id"], event["id"]
    api, them = pilot.api, other.test
    refusals = [
        api.get(f"/v1/webhook_endpoints/{e}", headers=them),
        api.post(f"/v1/webhook_endpoints/{e}", json={"status": "disabled"}, headers=them),
        api.post(f"/v1/webhook_endpoints/{e}/rotate_secret", json={}, headers=them),
        api.delete(f"/v1/webhook_endpoints/{e}", headers=them),
        api.get(f"/v1/webhook_endpoints?starting_after={e}", headers=them),
        api.get(f"/v1/events/{ev}", headers=them),
        api.post(f"/v1/events/{ev}/redeliver", json={}, headers=them),
        api.get(f"/v1/events?starting_after={ev}", headers=them),
        # and the owner cannot aim its event at someone else's endpoint
        api.post(f"/v1/events/{ev}/redeliver", json={"endpoint": theirs["id"]}, headers=shop.test),
    ]
    for answer in refusals:
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] in ("webhook_endpoint_not_found", "event_not_found")
    assert [x["id"] for x in pilot.get("/v1/webhook_endpoints", other.test)["data"]] == [
        theirs["id"]
    ]
    assert events(pilot, other) == []
    assert pilot.get(f"/v1/webhook_endpoints/{e}", shop.test)["status"] == "enabled"
    assert receiver.at("/other") == []
    nobody = pilot.api.get("/v1/events", headers={})
    assert nobody.status_code == 401


def test_test_and_live_never_mix(pilot: Pilot, receiver: Receiver) -> None:
    shop = pilot.merchant()
    live = add_endpoint(pilot, shop, "https://shop.example/hook", live=True)
    test = add_endpoint(pilot, shop, receiver.url())
    assert live["livemode"] is True and test["livemode"] is False
    for path in (f"/v1/webhook_endpoints/{live['id']}",):
        answer = pilot.api.get(path, headers=shop.test)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "livemode_mismatch"
    assert [e["id"] for e in pilot.get("/v1/webhook_endpoints", shop.test)["data"]] == [test["id"]]
    assert [e["id"] for e in pilot.get("/v1/webhook_endpoints", shop.live)["data"]] == [live["id"]]
    rotate = pilot.api.post(
        f"/v1/webhook_endpoints/{live['id']}/rotate_secret", json={}, headers=shop.test
    )
    assert rotate.status_code == 404 and rotate.json()["error"]["code"] == "livemode_mismatch"
    paid_order(pilot, shop)
    [event] = events(pilot, shop)
    answer = pilot.api.get(f"/v1/events/{event['id']}", headers=shop.live)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "livemode_mismatch"
    assert pilot.get("/v1/events", shop.live)["data"] == []
    body = {"endpoint": live["id"]}
    answer = pilot.api.post(f"/v1/events/{event['id']}/redeliver", json=body, headers=shop.test)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "livemode_mismatch"


@pytest.mark.parametrize(
    ("path", "body", "live", "code", "param"),
    [
        ("", {"url": "not a url"}, False, "invalid_url", "url"),
        ("", {"url": "ftp://shop.example/hook"}, False, "invalid_url", "url"),
        ("", {"url": "http://"}, False, "invalid_url", "url"),
        ("", {"url": "http://shop.example:99999/"}, False, "invalid_url", "url"),
        ("", {"url": "http://shop.example/hook"}, True, "url_not_https", "url"),
        ("", {"url": "https://a.example", "enabled_events": ["order.paid"]}, False,
         "unknown_event_type", "enabled_events"),
        ("", {"url": "https://a.example", "enabled_events": []}, False,
         "invalid_enabled_events", "enabled_events"),
        ("", {"url": "https://a.example", "secret": "whsec_x"}, False, "unknown_field", "secret"),
        ("", {"enabled_events": ["*"]}, False, "missing_field", "url"),
        ("/{id}", {"url": "http://shop.example/hook"}, True, "url_not_https", "url"),
        ("/{id}", {"enabled_events": ["payment_order.paid"]}, True, "unknown_event_type",
         "enabled_events"),
        ("/{id}", {"status": "paused"}, True, "invalid_field", "status"),
        ("/{id}/rotate_secret", {"expires_in_s": 7 * 86400 + 1}, True, "invalid_field",
         "expires_in_s"),
        ("/{id}/rotate_secret", {"expires_in_s": -1}, True, "invalid_field", "expires_in_s"),
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_422(
    pilot: Pilot, path: str, body: dict[str, Any], live: bool, code: str, param: str
) -> None:
    shop = pilot.merchant()
    headers = shop.live if live else shop.test
    existing = pilot.post(
        "/v1/webhook_endpoints", {"url": "https://shop.example/ok"}, headers, status=201
    )
    answer = pilot.api.post(
        "/v1/webhook_endpoints" + path.format(id=existing["id"]), json=body, headers=headers
    )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    assert error["message"] and error["request_id"] == answer.headers["request-id"]
    shown = pilot.get(f"/v1/webhook_endpoints/{existing['id']}", headers)
    assert (shown["url"], shown["enabled_events"]) == ("https://shop.example/ok", ["*"])
    assert len(pilot.get("/v1/webhook_endpoints", headers)["data"]) == 1


def test_at_most_sixteen_endpoints_per_mode_even_when_added_at_once(
    pilot: Pilot, receiver: Receiver
) -> None:
    """The limit is counted in the transaction that adds the endpoint: four requests for the
    last place at once get it once."""
    shop = pilot.merchant()
    for i in range(webhooks.ENDPOINTS_MAX - 1):
        add_endpoint(pilot, shop, receiver.url(f"/{i}"))
    barrier = threading.Barrier(4)
    statuses: list[int] = []
    codes: list[str] = []

    def add(i: int) -> None:
        barrier.wait()
        body = {"url": receiver.url(f"/last{i}")}
        response = pilot.api.post("/v1/webhook_endpoints", json=body, headers=shop.test)
        statuses.append(response.status_code)
        if response.status_code == 409:
            codes.append(response.json()["error"]["code"])

    threads = [threading.Thread(target=add, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [201, 409, 409, 409], statuses
    assert codes == ["endpoint_limit_reached"] * 3
    listed = pilot.get("/v1/webhook_endpoints?limit=100", shop.test)["data"]
    assert len(listed) == webhooks.ENDPOINTS_MAX
    refused = pilot.post(
        "/v1/webhook_endpoints", {"url": receiver.url("/x")}, shop.test, status=None
    )
    assert refused.status_code == 409

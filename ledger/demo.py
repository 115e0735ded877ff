"""``ledger demo``: a small pilot day against a fresh embedded ledger, over real HTTP.

The central bank issues e-CNY to two operators; shoppers and merchants open wallets; orders are
paid by QR code and by payment code; some are refunded; one order is cancelled and one expires;
a merchant settles to its bank; webhooks reach a local receiver; each merchant's statement is
produced and checked against the journal; and the whole journal is verified. Every step goes
through the same HTTP API and SDK a pilot's systems would use (``ledger serve``'s writer runs
in this process, its HTTP workers beside it, on a free local port).
"""

from __future__ import annotations

import datetime
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from ledger import auth
from ledger.config import Settings, kyc_key_file_beside
from ledger.server import LedgerServer
from ledger.verify import Report, verify
from wallet_sdk import Client, Money, WalletKeys, webhooks

CST = datetime.timezone(datetime.timedelta(hours=8))
OPERATORS = ("icbc_demo", "ccb_demo")
SHOPPERS = 6
WAIT_S = 30.0


@dataclass
class Receiver:
    """A merchant's webhook endpoint: a real local HTTP server that checks every signature."""

    secrets: dict[str, str] = field(default_factory=dict)  # endpoint path -> whsec_ secret
    events: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0
    server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                secret = receiver.secrets.get(self.path, "")
                try:
                    event = webhooks.verify(body, dict(self.headers.items()), secret)
                except webhooks.WebhookVerificationError:
                    receiver.rejected += 1
                    self.send_response(400)
                else:
                    receiver.events.append(event)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def ids(self) -> set[str]:
        return {str(e["id"]) for e in list(self.events)}

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@contextmanager
def serving(settings: Settings) -> Iterator[tuple[str, str]]:
    """``ledger serve`` as it runs (the writer in this process, HTTP workers beside it): yields
    (base URL, a central-bank key)."""
    with LedgerServer(settings) as server:
        assert server.ledger is not None
        cb_key = auth.create_api_key(server.ledger.db, auth.ROLE_CENTRAL_BANK, "", "demo").secret
        yield f"http://127.0.0.1:{settings.port}", cb_key


class Pilot:
    """The day's actors: plain HTTP for the central bank, operators and merchants' servers;
    the wallet SDK for shoppers' phones."""

    def __init__(self, base: str, cb_key: str, receiver: Receiver, say: Any) -> None:
        self.http = httpx.Client(base_url=base, timeout=30)
        self.base, self.cb, self.receiver, self.say = base, cb_key, receiver, say
        self.op_keys: dict[str, str] = {}
        self.counts: dict[str, int] = {}

    def call(self, method: str, path: str, key: str, body: Any = None, ok: int = 200) -> Any:
        response = self.http.request(
            method, path, json=body, headers={"Authorization": f"Bearer {key}"}
        )
        if response.status_code != ok:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        answer = (
            response.json()
            if response.headers.get("content-type", "").startswith("application/json")
            else response.text
        )
        results = answer.get("results", []) if isinstance(answer, dict) else []
        if any(r["result"] != "ok" for r in results):
            raise RuntimeError(f"{method} {path}: {answer}")
        return answer

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    # -- the day -------------------------------------------------------------------------

    def central_bank(self) -> None:
        for operator in OPERATORS:
            created = self.call("POST", "/v1/api_keys", self.cb, {"operator": operator}, 201)
            self.op_keys[operator] = created["key"]
            self.call("POST", "/v1/operators", self.cb, {"operator": operator})
            reserves = {"id": _id(), "amount": 100_000_000}
            self.call("POST", f"/v1/operators/{operator}/reserve_deposits", self.cb, reserves)
            issue = {"id": _id(), "operator": operator, "amount": 50_000_000}
            self.call("POST", "/v1/issuances", self.cb, issue)
        self.say(f"central bank issued ¥{2 * 500_000:,} of e-CNY to {len(OPERATORS)} operators")

    def bank_account(self, operator: str, cash: int) -> str:
        bank = _id()
        key = self.op_keys[operator]
        self.call("POST", "/v1/bank_accounts", key, {"id": bank, "owner": "demo customer"})
        if cash:
            deposit = {"id": _id(), "amount": cash}
            self.call("POST", f"/v1/bank_accounts/{bank}/deposits", key, deposit)
        return bank

    def shoppers(self) -> list[tuple[Client, WalletKeys]]:
        out = []
        for i in range(SHOPPERS):
            operator = OPERATORS[i % 2]
            client = Client(self.base, api_key=self.op_keys[operator])
            keys = client.create_wallet(
                kyc={"phone": f"+86138000000{i:02d}", "name": f"Shopper {i}", "id_number": "31"},
                wallet_class=3 if i % 3 else 2,
                linked_bank_account=self.bank_account(operator, 200_000),
            )
            client.top_up(keys, Money.yuan("800.00"))
            out.append((client, keys))
        self.say(f"{SHOPPERS} shoppers opened wallets and topped up ¥800.00 each")
        return out

    def merchant(self, operator: str, name: str, city: str, receiver_url: str) -> dict[str, Any]:
        body = {
            "name": name,
            "city": city,
            "mcc": "5812",
            "kyc": {"name": name, "id_number": "91310000MA1" + uuid.uuid4().hex[:7].upper()},
            "linked_bank_account": self.bank_account(operator, 0),
        }
        shop = self.call("POST", "/v1/merchants", self.op_keys[operator], body, 201)
        key = shop["keys"]["test"]
        path = f"/hooks/{shop['id']}"
        endpoint = self.call(
            "POST", "/v1/webhook_endpoints", key, {"url": receiver_url + path}, 201
        )
        self.receiver.secrets[path] = endpoint["secret"]
        shop["key"] = key
        return shop

    def order(self, shop: dict[str, Any], amount: int, **extra: Any) -> dict[str, Any]:
        body = {"amount": amount, "out_trade_no": f"T{uuid.uuid4().hex[:10]}", **extra}
        order: dict[str, Any] = self.call("POST", "/v1/payment_orders", shop["key"], body, 201)
        return order

    def shopping(
        self, shops: list[dict[str, Any]], shoppers: list[tuple[Client, WalletKeys]]
    ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        paid = []
        for i in range(12):  # scan the till's QR code and pay it
            shop = shops[i % 2]
            client, keys = shoppers[i % SHOPPERS]
            order = self.order(shop, 1_800 + 350 * i, description="lunch")
            payment = client.pay_qr(keys, order["qr_code"])
            assert payment.result == "ok"
            paid.append((shop, order))
            self.count("paid by QR")
            self.count("volume", order["amount"])
        for i in range(6):  # show a payment code; the till captures it
            shop = shops[i % 2]
            _, keys = shoppers[(i + 3) % SHOPPERS]
            code = keys.payment_code(Money.yuan("100.00"), ttl_s=60)
            order = self.order(shop, 2_600 + 100 * i, description="tea", payment_code=code)
            assert order["status"] == "succeeded", order
            paid.append((shop, order))
            self.count("paid by payment code")
            self.count("volume", order["amount"])
        self.say(
            f"{self.counts['paid by QR']} orders paid by QR code, "
            f"{self.counts['paid by payment code']} by payment code"
        )
        return paid

    def refunds(self, paid: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        for shop, order in (paid[0], paid[3]):
            body = {
                "payment_order": order["id"],
                "amount": order["amount"] // 2,
                "out_refund_no": f"R{uuid.uuid4().hex[:8]}",
                "reason": "half portion",
            }
            refund = self.call("POST", "/v1/refunds", shop["key"], body, 201)
            assert refund["status"] == "succeeded", refund
            self.count("refunds")
            self.count("refunded", refund["amount"])
        self.say(f"{self.counts['refunds']} partial refunds, ¥{self.counts['refunded'] / 100:.2f}")

    def loose_ends(self, shop: dict[str, Any]) -> None:
        canceled = self.order(shop, 999)
        self.call("POST", f"/v1/payment_orders/{canceled['id']}/cancel", shop["key"], {})
        soon = int(time.time()) + 2
        expiring = self.order(shop, 888, expires_at=soon)
        deadline = time.monotonic() + WAIT_S
        path = f"/v1/payment_orders/{expiring['id']}"
        while self.call("GET", path, shop["key"])["status"] != "expired":
            if time.monotonic() > deadline:
                raise RuntimeError("the order did not expire")
            time.sleep(0.25)
        self.say("one order cancelled, one expired unpaid (the worker tombstoned it)")

    def settle(self, shop: dict[str, Any]) -> None:
        settlement = self.call("POST", "/v1/settlements", shop["key"], {}, 201)
        self.count("settled", settlement["amount"])
        self.say(
            f"{shop['name']} settled ¥{settlement['amount'] / 100:.2f} to its bank account "
            f"({settlement['status']})"
        )

    def await_webhooks(self, shops: list[dict[str, Any]]) -> tuple[int, int]:
        """Wait until every event the merchants' event lists show has reached the receiver
        (at least once: a receiver dedupes on the event id). Returns (events, delivered)."""
        expected: set[str] = set()
        for shop in shops:
            cursor = ""
            while True:
                page = self.call("GET", f"/v1/events?limit=100{cursor}", shop["key"])
                expected |= {e["id"] for e in page["data"]}
                if not page["has_more"]:
                    break
                cursor = f"&starting_after={page['data'][-1]['id']}"
        deadline = time.monotonic() + WAIT_S
        while not expected <= self.receiver.ids() and time.monotonic() < deadline:
            time.sleep(0.2)
        return len(expected), len(expected & self.receiver.ids())

    def statements(self, shops: list[dict[str, Any]], out: Path) -> list[Path]:
        today = datetime.datetime.now(CST).date().isoformat()
        files = []
        for shop in shops:
            text = self.call("GET", f"/v1/statements/{today}", shop["key"])
            path = out / f"statement-{shop['name'].replace(' ', '_')}-{today}.csv"
            path.write_text(text, encoding="utf-8")
            files.append(path)
        return files


def _id() -> str:
    return str(uuid.uuid4())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(directory: Path, say: Any) -> dict[str, Any]:
    """Play the day in ``directory`` (a fresh ledger there); return the summary numbers."""
    from ledger.store.database import make_engine
    from merchant_api.statements import verify_file

    directory.mkdir(parents=True, exist_ok=True)
    database = directory / "ledger.db"
    if database.exists():
        raise FileExistsError(f"{database} exists: the demo starts from a fresh ledger")
    key_file = directory / "ledger.key"
    settings = Settings(
        database_url=f"sqlite:///{database}",
        key_file=key_file,
        origin="demo.ecny-ledger.local",
        kyc_key_file=kyc_key_file_beside(key_file),
        port=free_port(),
    )
    receiver = Receiver()
    receiver_url = receiver.start()
    try:
        with serving(settings) as (base, cb_key):
            pilot = Pilot(base, cb_key, receiver, say)
            pilot.central_bank()
            shoppers = pilot.shoppers()
            shops = [
                pilot.merchant(OPERATORS[0], "Lujiazui Teahouse", "Shanghai", receiver_url),
                pilot.merchant(OPERATORS[1], "Jing'an Noodle Bar", "Shanghai", receiver_url),
            ]
            say("2 merchants signed up, each with a webhook endpoint")
            paid = pilot.shopping(shops, shoppers)
            pilot.refunds(paid)
            pilot.loose_ends(shops[0])
            pilot.settle(shops[1])
            events, delivered = pilot.await_webhooks(shops)
            files = pilot.statements(shops, directory)
            public_key = pilot.call("GET", "/v1/public_key", cb_key)
            for client, _ in shoppers:
                client.close()
    finally:
        receiver.stop()
    engine = make_engine(settings.database_url)
    try:
        checked = [verify_file(engine, path.read_text(encoding="utf-8")) for path in files]
        report = verify(engine)
    finally:
        engine.dispose()
    return {
        "directory": str(directory),
        "database": settings.database_url,
        "public_key": public_key,
        "counts": pilot.counts,
        "webhooks": {"events": events, "delivered": delivered, "bad": receiver.rejected},
        "statements": [{"file": str(p), "check": c} for p, c in zip(files, checked, strict=True)],
        "verify": report,
    }


def summary(result: dict[str, Any]) -> str:
    counts = result["counts"]
    lines = [
        "",
        "pilot day done:",
        f"  payments    {counts['paid by QR']} by QR code + {counts['paid by payment code']} by "
        f"payment code, ¥{counts['volume'] / 100:,.2f}",
        f"  refunds     {counts['refunds']}, ¥{counts['refunded'] / 100:,.2f}",
        f"  settlement  ¥{counts.get('settled', 0) / 100:,.2f} to a merchant's bank account",
        f"  webhooks    {result['webhooks']['delivered']} of {result['webhooks']['events']} "
        f"events delivered, {result['webhooks']['bad']} bad signatures",
    ]
    for item in result["statements"]:
        lines.append(f"  statement   {item['file']}  (checked against the journal)")
    lines += [
        f"  verify      {_verified(result['verify'])}",
        "",
        "where to look next:",
        f"  ledger serve --database {result['database']}   then http://127.0.0.1:8000/docs",
        f"  ledger verify --database {result['database']}",
        f"  ledger verify --database {result['database']} --statement "
        f"{result['statements'][0]['file']}",
        "  README.md: the merchant API (orders, refunds, webhooks, statements) and the SDK",
    ]
    return "\n".join(lines)


def _verified(report: Report) -> str:
    if not report.ok:
        return f"FAILED: {report.problem}"
    return (
        f"ok: {report.entries} entries, {report.checkpoints} signed checkpoints, "
        f"{report.accounts} accounts; e-CNY in circulation ¥{report.circulation_fen / 100:,.2f}"
    )

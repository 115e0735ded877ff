"""End to end, as a merchant and a shopper's app meet it: a real ``ledger serve`` process (on
SQLite and on PostgreSQL), the wallet SDK over real HTTP, a real local webhook receiver, and the
real ``ledger verify --statement`` command.

create order → parse its QR code → pay it with the SDK → the webhook arrives, signed → refund
twice → the day's statement totals match, and the statement checks out against the journal."""

from __future__ import annotations

import datetime
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.sdk.test_client_server import Ledger
from tests.test_server import Server
from wallet_sdk import Client, Money, qr, verify_receipt, webhooks

CST = datetime.timezone(datetime.timedelta(hours=8))
WAIT_S = 30.0


class Receiver:
    """A merchant's webhook endpoint: records raw bodies and headers, answers 204."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, dict[str, str]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.received.append((body, dict(self.headers.items())))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, secret: str) -> dict[str, dict[str, Any]]:
        """Every delivery, verified as a merchant's server must; deduplicated on the id."""
        return {
            str(event["id"]): event
            for event in (webhooks.verify(body, headers, secret) for body, headers in self.received)
        }

    def wait_for(self, secret: str, count: int) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + WAIT_S
        while len(self.events(secret)) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.events(secret)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def test_order_to_statement_end_to_end(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    server = Server(database_url, tmp_path)
    server.start()
    try:
        ledger = Ledger(server)
        run_the_day(ledger, database_url, tmp_path, receiver)
        ledger.http.close()
    finally:
        server.stop()


def run_the_day(ledger: Ledger, database_url: str, tmp_path: Path, receiver: Receiver) -> None:
    http = ledger.http
    signup = {
        "name": "Tea House",
        "city": "Shanghai",
        "kyc": {"name": "Tea House Ltd", "id_number": "91310000"},
        "linked_bank_account": ledger.bank_account(),
    }
    created = http.post("/v1/merchants", json=signup, headers=ledger.bearer(ledger.op_key))
    assert created.status_code == 201, created.text
    shop = created.json()
    key = {"Authorization": f"Bearer {shop['keys']['test']}"}
    endpoint = http.post("/v1/webhook_endpoints", json={"url": receiver.url}, headers=key)
    assert endpoint.status_code == 201, endpoint.text
    secret = endpoint.json()["secret"]
    assert secret.startswith("whsec_")

    # The merchant's backend makes an order; the shopper's app scans its QR code and pays.
    made = http.post(
        "/v1/payment_orders",
        json={"amount": 4_250, "out_trade_no": "TEA-0001", "description": "two oolong"},
        headers=key,
    )
    assert made.status_code == 201, made.text
    order = made.json()
    scanned = qr.parse(order["qr_code"])
    assert (scanned.amount_fen, scanned.currency, scanned.merchant_name) == (
        4_250,
        "156",
        "Tea House",
    )
    public_key = http.get("/v1/public_key").json()["public_key"]
    with Client(ledger.server.base, api_key=ledger.op_key, ledger_public_key=public_key) as app:
        shopper = app.create_wallet(
            kyc={"phone": "+8613800000000"},
            wallet_class=4,
            linked_bank_account=ledger.bank_account(),
        )
        app.top_up(shopper, Money.yuan("100.00"))
        payment = app.pay_qr(shopper, order["qr_code"])
        assert payment.result == "ok" and payment.id == order["id"]
        assert payment.payment_order is not None
        assert payment.payment_order["status"] == "succeeded"
        assert verify_receipt(payment.receipt, app.public_key())

        # The webhook reaches the merchant's server, signed, with the paid order in it.
        events = receiver.wait_for(secret, 1)
        (paid,) = events.values()
        assert paid["type"] == "payment_order.succeeded"
        assert paid["data"]["object"]["id"] == order["id"]
        assert paid["data"]["object"]["payer"] == shopper.wallet_id

        # Two partial refunds, back to the shopper's wallet.
        for number, amount in (("R-1", 1_000), ("R-2", 250)):
            body = {"payment_order": order["id"], "amount": amount, "out_refund_no": number}
            refund = http.post("/v1/refunds", json=body, headers=key)
            assert refund.status_code == 201, refund.text
            assert refund.json()["status"] == "succeeded"
        assert app.balance(shopper) == Money(10_000 - 4_250 + 1_250)

    events = receiver.wait_for(secret, 3)
    assert sorted(e["type"] for e in events.values()) == [
        "payment_order.succeeded",
        "refund.succeeded",
        "refund.succeeded",
    ]

    # The day's statement: every movement of the merchant's wallet, with totals, signed.
    today = datetime.datetime.now(CST).date().isoformat()
    answer = http.get(f"/v1/statements/{today}", headers=key)
    assert answer.status_code == 200, answer.text
    text = answer.text
    rows = [line.split(",") for line in text.splitlines() if line and not line.startswith("#")]
    header, body = rows[0], rows[1:]
    kinds = [(r[header.index("type")], int(r[header.index("amount_fen")])) for r in body]
    assert kinds == [("payment", 4_250), ("refund", -1_000), ("refund", -250)]
    assert {r[header.index("out_trade_no")] for r in body} == {"TEA-0001"}
    assert [r[header.index("out_refund_no")] for r in body] == ["", "R-1", "R-2"]
    totals = {line for line in text.splitlines() if line.startswith("# ")}
    assert "# total: type=payment count=1 amount_fen=4250 fee_fen=0" in totals
    assert "# total: type=refund count=2 amount_fen=-1250 fee_fen=0" in totals
    assert "# net_fen: 3000" in totals and "# closing_balance_fen: 3000" in totals
    me = http.get("/v1/merchants/me", headers=key).json()
    assert me["balance_fen"] == 3_000
    assert answer.headers["statement-sha256"] in text

    # Anyone with the database and the ledger's key can check it: the real command.
    path = tmp_path / "statement.csv"
    path.write_bytes(answer.content)
    checked = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "verify", "--database", database_url,
         "--statement", str(path), "--public-key", public_key],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    path.write_bytes(answer.content.replace(b",4250,", b",4205,"))
    tampered = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "verify", "--database", database_url,
         "--statement", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr

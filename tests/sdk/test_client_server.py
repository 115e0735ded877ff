"""The SDK against a real ``ledger serve`` process over real HTTP (SQLite), and the README's
quickstart run as a user would run it."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ledger.ids import new_uuid
from tests.conftest import sqlite_url
from tests.test_server import Server, free_port
from wallet_sdk import APIConnectionError, AsyncClient, Client, Money, verify_receipt
from wallet_sdk import _transport as transport_module

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"
OPERATOR = "serve_bank"


class Ledger:
    """A running ``ledger serve``, with its central-bank key and one funded operator."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.cb_key = server.admin_file.read_text().strip()
        self.http = httpx.Client(base_url=server.base, timeout=10)
        created = self.http.post(
            "/v1/api_keys", json={"operator": OPERATOR}, headers=self.bearer(self.cb_key)
        )
        assert created.status_code == 201, created.text
        self.op_key: str = created.json()["key"]
        self.post("/v1/operators", {"operator": OPERATOR}, self.cb_key)
        self.post(f"/v1/operators/{OPERATOR}/reserve_deposits",
                  {"id": new_uuid(), "amount": 10**9}, self.cb_key)  # fmt: skip
        self.post("/v1/issuances", {"id": new_uuid(), "operator": OPERATOR, "amount": 10**8},
                  self.cb_key)  # fmt: skip

    @staticmethod
    def bearer(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def post(self, path: str, body: dict[str, object], key: str) -> None:
        response = self.http.post(path, json=body, headers=self.bearer(key))
        assert response.status_code == 200, response.text
        assert all(r["result"] == "ok" for r in response.json()["results"]), response.text

    def bank_account(self) -> str:
        bank = new_uuid()
        self.post("/v1/bank_accounts", {"id": bank, "owner": "c"}, self.op_key)
        self.post(f"/v1/bank_accounts/{bank}/deposits", {"id": new_uuid(), "amount": 10**6},
                  self.op_key)  # fmt: skip
        return bank


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    tmp = tmp_path_factory.mktemp("serve")
    server = Server(sqlite_url(tmp), tmp)
    server.start()
    try:
        running = Ledger(server)
        yield running
        running.http.close()
    finally:
        server.stop()


def test_quickstart_flow_over_real_http(ledger: Ledger) -> None:
    published = ledger.http.get("/v1/public_key").json()["public_key"]
    with Client(ledger.server.base, api_key=ledger.op_key, ledger_public_key=published) as client:
        alice = client.create_wallet(
            kyc={"phone": "+8613800000000"}, wallet_class=4,
            linked_bank_account=ledger.bank_account(),
        )  # fmt: skip
        shop = client.create_wallet(
            kyc={"phone": "+8613900000000"}, wallet_class=4, kind="merchant"
        )
        client.top_up(alice, Money.yuan("50.00"))
        payment = client.pay(alice, shop, Money.yuan("12.30"), metadata={"order": "A-1001"})
        assert verify_receipt(payment.receipt, base64.b64decode(published))
        assert client.balance(alice) == Money(3_770) and client.balance(shop) == Money(1_230)
        assert [e["seq"] for e in client.history(shop, limit=1)][:1] == [payment.seq]
        assert client.receipt(shop, payment.id)["leaf_index"] == payment.seq

    async def twin() -> None:
        async with AsyncClient(ledger.server.base, api_key=ledger.op_key) as aclient:
            again = await aclient.pay(alice, shop, Money.yuan("1.00"))
            assert verify_receipt(again.receipt, await aclient.public_key())
            assert await aclient.balance(shop) == Money(1_330)
            assert await aclient.public_key() == base64.b64decode(published)

    asyncio.run(twin())


def _run_quickstart(ledger: Ledger, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(QUICKSTART)],
        env={**os.environ, "LEDGER_URL": ledger.server.base, "LEDGER_CB_KEY": ledger.cb_key,
             "LEDGER_OPERATOR": OPERATOR, **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_quickstart_example_runs_and_verifies_its_receipt(ledger: Ledger) -> None:
    first = _run_quickstart(ledger, LEDGER_OPERATOR_KEY=ledger.op_key)
    assert first.returncode == 0, first.stderr
    assert "receipt verified: True" in first.stdout
    assert "paid ¥12.30" in first.stdout and "shop ¥12.30" in first.stdout
    # again, as a newcomer would: no operator key given, the operator already set up
    second = _run_quickstart(ledger, LEDGER_OPERATOR_KEY="")
    assert second.returncode == 0, second.stderr
    assert "receipt verified: True" in second.stdout


def test_no_server_is_an_api_connection_error(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []
    monkeypatch.setattr(transport_module, "_sleep", delays.append)
    client = Client(f"http://127.0.0.1:{free_port()}", max_retries=2)
    with client, pytest.raises(APIConnectionError, match="3 attempt"):
        client.public_key()
    assert len(delays) == 2

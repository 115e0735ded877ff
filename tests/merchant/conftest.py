"""A pilot for merchant API tests: a ledger (SQLite and PostgreSQL) with the wallet layer and the
merchant API, one clock shared by the ledger and the merchant API (tests move it), a central
bank, two funded operators, and helpers to open wallets, onboard merchants and pay orders."""

from __future__ import annotations

import base64
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from nacl.signing import SigningKey

from ledger import signing
from ledger.auth import create_api_key
from ledger.ids import new_uuid
from ledger.server import full_app, open_wallets
from ledger.service import LedgerService
from merchant_api import app as merchant_app
from merchant_api.service import MerchantService


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class W:
    """A wallet in a test: its id and its key."""

    id: str
    key: SigningKey
    bank: str | None = None
    key_version: int = 1

    @property
    def int_id(self) -> int:
        return uuid.UUID(self.id).int


@dataclass
class Shop:
    """An onboarded merchant: its id, wallet, keys (as headers) and static QR code."""

    id: str
    wallet: str
    bank: str
    test: dict[str, str]
    live: dict[str, str]
    static_qr: str


@dataclass
class Pilot:
    api: TestClient
    ledger: LedgerService
    merchants: MerchantService
    clock: list[int]
    cb: dict[str, str]
    op: dict[str, str]
    op_b: dict[str, str]
    shops: list[Shop] = field(default_factory=list)

    # -- time --------------------------------------------------------------------------------

    def now_ms(self) -> int:
        return self.clock[0] // 1_000_000

    def advance(self, seconds: float) -> None:
        self.clock[0] += int(seconds * 1_000_000_000)

    # -- plumbing ----------------------------------------------------------------------------

    def post(
        self,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
        *,
        status: int | None = 200,
    ) -> Any:
        """POST; with ``status``, assert it and return the JSON, else return the response."""
        response = self.api.post(path, json=body, headers=headers or {})
        if status is None:
            return response
        assert response.status_code == status, response.text
        return response.json()

    def get(self, path: str, headers: dict[str, str], *, status: int = 200) -> Any:
        response = self.api.get(path, headers=headers)
        assert response.status_code == status, response.text
        return response.json()

    # -- wallets -----------------------------------------------------------------------------

    def bank_account(self, amount: int = 0, headers: dict[str, str] | None = None) -> str:
        bank = new_uuid()
        self.post("/v1/bank_accounts", {"id": bank, "owner": "customer"}, headers or self.op)
        if amount:
            body = {"id": new_uuid(), "amount": amount}
            answer = self.post(f"/v1/bank_accounts/{bank}/deposits", body, headers or self.op)
            assert answer["results"][0]["result"] == "ok"
        return bank

    def wallet(self, klass: int = 2, *, bank: int | None = 0, top_up: int = 0) -> W:
        """A personal wallet at op_a; ``bank=None`` opens it without a linked bank account."""
        key = SigningKey.generate()
        linked = None if bank is None else self.bank_account(bank + top_up)
        w = W(new_uuid(), key, linked)
        body: dict[str, Any] = {
            "id": w.id,
            "class": klass,
            "public_key": b64(bytes(key.verify_key)),
            "kyc": {"phone": "+8613800000000", "name": "Li Lei", "id_number": "110101"},
            "linked_bank_account": linked,
        }
        assert self.post("/v1/wallets", body, self.op)["results"][0]["result"] == "ok"
        if top_up:
            assert self.top_up(w, top_up) == "ok"
        return w

    def top_up(self, w: W, amount: int) -> str:
        body = {"id": new_uuid(), "amount": amount}
        answer = self.post(f"/v1/wallets/{w.id}/top_ups", body, self.op)
        return str(answer["results"][0]["result"])

    def balance(self, wallet_id: str) -> int:
        return int(self.get(f"/v1/wallets/{wallet_id}", self.op)["balance_fen"])

    def transfer(self, payer: W, payee: str, amount: int) -> str:
        """A plain signed wallet-to-wallet payment; its result label."""
        pid = new_uuid()
        expires = self.now_ms() + 60_000
        auth = signing.sign_payment(
            payer.key, payer.key_version, uuid.UUID(pid).int, payer.int_id,
            uuid.UUID(payee).int, amount, "CNY", expires,
        )  # fmt: skip
        body = {
            "id": pid,
            "payer": payer.id,
            "payee": payee,
            "amount": amount,
            "expires_at_ms": expires,
            "key_version": payer.key_version,
            "signature": b64(auth.signature),
        }
        return str(self.post("/v1/payments", body)["result"])

    # -- merchants ---------------------------------------------------------------------------

    def merchant(self, name: str = "Tea House", city: str = "Shanghai", **extra: Any) -> Shop:
        bank = self.bank_account()
        body = {
            "name": name,
            "city": city,
            "kyc": {"name": name, "id_number": "91310000"},
            "linked_bank_account": bank,
            **extra,
        }
        view = self.post("/v1/merchants", body, self.op, status=201)
        keys = view["keys"]
        assert keys["test"].startswith("sk_test_") and keys["live"].startswith("sk_live_")
        shop = Shop(
            view["id"],
            view["wallet"],
            bank,
            {"Authorization": "Bearer " + keys["test"]},
            {"Authorization": "Bearer " + keys["live"]},
            view["static_qr_code"],
        )
        self.shops.append(shop)
        return shop

    def order(self, shop: Shop, amount: int, *, live: bool = False, **extra: Any) -> Any:
        body = {"amount": amount, "out_trade_no": extra.pop("out_trade_no", new_uuid()), **extra}
        return self.post("/v1/payment_orders", body, shop.live if live else shop.test, status=201)

    def sign_order_payment(
        self, w: W, order: dict[str, Any], *, amount: int | None = None, ttl_ms: int = 60_000
    ) -> dict[str, Any]:
        """The body of POST /v1/payment_orders/{id}/pay, signed by ``w``."""
        amount = order["amount"] if amount is None else amount
        expires = min(self.now_ms() + ttl_ms, order["expires_at"] * 1000)
        auth = signing.sign_payment(
            w.key, w.key_version, uuid.UUID(order["id"]).int, w.int_id,
            uuid.UUID(order["pay_to"]).int, amount, "CNY", expires,
        )  # fmt: skip
        return {
            "payer": w.id,
            "amount": amount,
            "expires_at_ms": expires,
            "key_version": w.key_version,
            "signature": b64(auth.signature),
        }

    def pay_order(self, w: W, order: dict[str, Any], **kw: Any) -> httpx.Response:
        body = self.sign_order_payment(w, order, **kw)
        response: httpx.Response = self.api.post(f"/v1/payment_orders/{order['id']}/pay", json=body)
        return response

    def payment_code(self, w: W, max_amount: int, *, ttl_ms: int = 60_000) -> str:
        code = signing.sign_payment_code(
            w.key, w.key_version, uuid.uuid4().int, w.int_id, max_amount, "CNY",
            self.now_ms() + ttl_ms,
        )  # fmt: skip
        return code.encode()


@pytest.fixture
def pilot(database_url: str, tmp_path: Path) -> Iterator[Pilot]:
    clock = [time.time_ns()]
    ledger = LedgerService.open(
        database_url,
        tmp_path / "ledger.key",
        "test/merchant",
        clock_ns=lambda: clock[0],
        extra_migrations=[merchant_app.MIGRATIONS],
    )
    key_dir = Path(tempfile.mkdtemp(prefix="ledger-kyc-"))
    wallets = open_wallets(ledger, key_dir / "kyc.key")
    try:
        app, merchants = full_app(
            ledger, wallets, os.urandom(32), clock_ms=lambda: clock[0] // 1_000_000
        )
        engine = ledger.store.engine
        cb = {"Authorization": "Bearer " + create_api_key(engine, "central_bank", "").secret}
        op = {"Authorization": "Bearer " + create_api_key(engine, "operator", "op_a").secret}
        op_b = {"Authorization": "Bearer " + create_api_key(engine, "operator", "op_b").secret}
        with TestClient(app) as api:
            p = Pilot(api, ledger, merchants, clock, cb, op, op_b)
            for operator in ("op_a", "op_b"):
                p.post("/v1/operators", {"operator": operator}, cb)
                body = {"id": new_uuid(), "amount": 10**10}
                p.post(f"/v1/operators/{operator}/reserve_deposits", body, cb)
                body = {"id": new_uuid(), "operator": operator, "amount": 10**9}
                p.post("/v1/issuances", body, cb)
            yield p
    finally:
        wallets.close()
        ledger.close()

"""The pilot profile: shoppers, merchants and operators as a pilot city's day has them.

    locust -f loadtests/pilot.py --host http://127.0.0.1:8000 --headless \\
        --shape lunch_peak --base-users 20 --shape-seconds 300 \\
        --cb-key "$LEDGER_CB_KEY" --ledger-database sqlite:///ledger.db --report-dir reports/lunch

* ``ShopperUser`` (most users): scans a merchant's dynamic QR code and pays the order, signed
  with its wallet key; pays friends; checks its balance and history (signed reads); verifies
  some receipts offline against the ledger's public key.
* ``MerchantUser``: creates payment orders (shoppers pay them), polls them until paid, refunds
  a share, lists orders, downloads today's statement.
* ``OperatorUser``: opens wallets with bank accounts, tops them up and redeems them (bank money
  to e-CNY and back: the waterfall's traffic).

Every transfer id the server answered is recorded (``common.record``) for the audit.
"""

from __future__ import annotations

import base64
import json
import random
import time
import uuid
from typing import Any, Final

from locust import FastHttpUser, between, task
from locust.exception import RescheduleTask

from loadtests import common
from loadtests.common import PilotShape, new_id, record
from loadtests.seed import Merchant, Seed, signed_payment
from wallet_sdk import WalletKeys, qr, verify_receipt

__all__ = ["MerchantUser", "OperatorUser", "PilotShape", "ShopperUser"]

RETRIES: Final = 2
"""A payment whose answer never came is sent again, same id and same signature."""
RECEIPT_CHECK_SHARE: Final = 0.1
REFUND_SHARE: Final = 0.3


class LedgerUser(FastHttpUser):
    abstract = True
    network_timeout = 10.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        self.seed: Seed = common.seed_for(self.environment)

    def merchant(self) -> Merchant:
        return random.choice(self.seed.merchants)

    def send(
        self,
        method: str,
        path: str,
        name: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201),
    ) -> dict[str, Any] | None:
        """One request; the JSON answer, or None (marked failed) when it is not ``ok``."""
        data = None if body is None else json.dumps(body)
        hdrs = {"Content-Type": "application/json", **(headers or {})} if data else headers
        with self.client.request(
            method, path, name=name, data=data, headers=hdrs, catch_response=True
        ) as response:
            if response.status_code not in ok:
                response.failure(f"{response.status_code} {(response.text or '')[:200]}")
                return None
            try:
                answer: dict[str, Any] = response.json()
            except ValueError:
                answer = {"text": response.text}
            return answer

    def check(self, name: str, problem: str | None, started: float) -> None:
        """Report a check made here (not a request) in the stats: a failure if ``problem``."""
        self.environment.events.request.fire(
            request_type="CHECK",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=None if problem is None else AssertionError(problem),
            context={},
        )

    def transfer(
        self,
        path: str,
        name: str,
        transfer_id: str,
        body: Any,
        headers: dict[str, str] | None = None,
        record_rejections: bool = True,
    ) -> dict[str, Any] | None:
        """Send something that moves money under a client-chosen id and record what came
        back. No answer (connection lost, timeout, 5xx) is resolved by sending the same
        request again, never by guessing."""
        for attempt in range(RETRIES + 1):
            with self.client.post(
                path,
                name=name,
                data=json.dumps(body),
                catch_response=True,
                headers={"Content-Type": "application/json", **(headers or {})},
            ) as response:
                status = response.status_code
                if status == 0 or status >= 500:  # 0: no answer at all
                    record("unk", transfer_id)
                    response.failure(f"no answer ({status}), attempt {attempt + 1}")
                    time.sleep(0.2 * (attempt + 1))
                    continue
                try:
                    answer: dict[str, Any] = response.json()
                except ValueError:
                    response.failure(f"{status}: not JSON")
                    return None
                item = answer["results"][0] if "results" in answer else answer
                if status in (200, 201) and item.get("result") == "ok":
                    record("ack", transfer_id)
                    return item
                if status == 200 and record_rejections:
                    record("rej", transfer_id)
                code = item.get("result") or answer.get("error", {}).get("code")
                response.failure(f"{status} {code}")
                return None
        return None


class ShopperUser(LedgerUser):
    weight = 8
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        super().on_start()
        self.wallets = common.shopper_keys(self.seed)
        self.public_key = base64.b64decode(self.seed.public_key)

    def phone(self) -> WalletKeys:
        """A shopper's phone: each task is some shopper's, so money and limits spread."""
        return random.choice(self.wallets)

    @task(6)
    def pay_qr(self) -> None:
        """Scan a waiting order's QR code (or have the till print one) and pay it."""
        keys = self.phone()
        order: dict[str, Any] | None
        try:
            order = common.STATE.orders.popleft()
        except IndexError:
            shop = self.merchant()
            body = {
                "amount": random.randint(100, 3000),
                "out_trade_no": f"T{uuid.uuid4().hex[:16]}",
            }
            order = self.send(
                "POST",
                "/v1/payment_orders",
                "/v1/payment_orders [till]",
                body,
                {"Authorization": f"Bearer {shop.key}"},
            )
            if order is None:
                return
        scanned = qr.parse(order["qr_code"])
        order_id, payee = qr.ecny_order_id(scanned), qr.ecny_payee(scanned)
        assert order_id is not None and scanned.amount_fen is not None
        expires = time.time_ns() // 1_000_000 + 120_000
        auth = keys.sign_payment(
            payment_id=order_id,
            payee=uuid.UUID(payee).int,
            amount_fen=scanned.amount_fen,
            expires_at_ms=expires,
            currency="CNY",
        )
        body = {
            "payer": keys.wallet_id,
            "amount": scanned.amount_fen,
            "currency": "CNY",
            "expires_at_ms": expires,
            "key_version": keys.key_version,
            "signature": base64.b64encode(auth.signature).decode(),
        }
        oid = str(uuid.UUID(int=order_id))
        # an order id is shared by whoever tries to pay it: a refusal is not this shopper's to
        # record (another payer may have paid it), so only acknowledgements are
        paid = self.transfer(
            f"/v1/payment_orders/{oid}/pay",
            "/v1/payment_orders/[id]/pay",
            oid,
            body,
            record_rejections=False,
        )
        if paid is not None and random.random() < RECEIPT_CHECK_SHARE:
            self.check_receipt(paid)

    def check_receipt(self, paid: dict[str, Any]) -> None:
        started, receipt = time.perf_counter(), paid.get("receipt")
        ok = receipt is not None and verify_receipt(receipt, self.public_key)
        self.check(
            "receipt verified offline", None if ok else "the receipt does not verify", started
        )

    @task(3)
    def pay_friend(self) -> None:
        keys = self.phone()
        friend, _ = random.choice(self.seed.shoppers)
        if friend == keys.wallet_id:
            raise RescheduleTask()
        body = signed_payment(keys, friend, random.randint(1, 2000))
        self.transfer("/v1/payments", "/v1/payments", body["id"], body)

    @task(2)
    def balance(self) -> None:
        keys = self.phone()
        path = f"/v1/wallets/{keys.wallet_id}"
        self.send("GET", path, "/v1/wallets/[me]", headers=keys.sign_request("GET", path, b""))

    @task(1)
    def history(self) -> None:
        keys = self.phone()
        path = f"/v1/wallets/{keys.wallet_id}/entries?limit=20"
        self.send(
            "GET",
            path,
            "/v1/wallets/[me]/entries",
            headers=keys.sign_request("GET", path, b""),
        )


class MerchantUser(LedgerUser):
    weight = 3
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        super().on_start()
        self.shop = self.merchant()
        self.auth = {"Authorization": f"Bearer {self.shop.key}"}
        self.waiting: list[str] = []  # orders created, not yet seen paid
        self.paid: list[tuple[str, int]] = []

    @task(10)
    def create_order(self) -> None:
        body = {"amount": random.randint(100, 3000), "out_trade_no": f"M{uuid.uuid4().hex[:16]}"}
        order = self.send("POST", "/v1/payment_orders", "/v1/payment_orders", body, self.auth)
        if order is not None:
            common.STATE.orders.append(order)  # a shopper will scan it
            self.waiting.append(order["id"])
            del self.waiting[:-50]

    @task(6)
    def poll_order(self) -> None:
        if not self.waiting:
            raise RescheduleTask()
        order_id = self.waiting[0]
        order = self.send(
            "GET", f"/v1/payment_orders/{order_id}", "/v1/payment_orders/[id]", headers=self.auth
        )
        if order is None or order["status"] == "pending":
            self.waiting.append(self.waiting.pop(0))  # look again later
            return
        self.waiting.pop(0)
        if order["status"] == "succeeded":
            self.paid.append((order_id, int(order["amount"])))
            del self.paid[:-50]

    @task(2)
    def refund(self) -> None:
        if not self.paid:
            raise RescheduleTask()
        order_id, amount = self.paid.pop(random.randrange(len(self.paid)))
        body = {
            "payment_order": order_id,
            "amount": max(1, int(amount * REFUND_SHARE)),
            "out_refund_no": f"R{uuid.uuid4().hex[:16]}",
            "reason": "load test",
        }
        refund = self.send("POST", "/v1/refunds", "/v1/refunds", body, self.auth)
        if refund is not None:
            failed = refund.get("status") != "succeeded"
            problem = (
                f"refund {refund.get('status')}: {refund.get('failure_code')}" if failed else None
            )
            self.check("refund succeeded", problem, time.perf_counter())

    @task(2)
    def list_orders(self) -> None:
        self.send(
            "GET", "/v1/payment_orders?limit=20", "/v1/payment_orders?limit=20", headers=self.auth
        )

    @task(1)
    def statement(self) -> None:
        today = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 8 * 3600))  # China time
        with self.client.get(
            f"/v1/statements/{today}",
            name="/v1/statements/[today]",
            headers=self.auth,
            catch_response=True,
        ) as response:
            if response.status_code != 200 or not (response.text or "").startswith("# ecny-ledger"):
                response.failure(f"{response.status_code} {(response.text or '')[:200]}")


class OperatorUser(LedgerUser):
    weight = 1
    wait_time = between(2.0, 5.0)

    def on_start(self) -> None:
        super().on_start()
        self.auth = {"Authorization": f"Bearer {self.seed.operator_key}"}
        self.wallets: list[list[Any]] = []  # [keys, operator float account, balance in fen]

    @task(1)
    def open_wallet(self) -> None:
        bank = new_id()
        if (
            self.send(
                "POST",
                "/v1/bank_accounts",
                "/v1/bank_accounts",
                {"id": bank, "owner": "load test"},
                self.auth,
            )
            is None
        ):
            return
        deposit: dict[str, Any] = {"id": new_id(), "amount": 1_000_000}
        self.transfer(
            f"/v1/bank_accounts/{bank}/deposits",
            "/v1/bank_accounts/[id]/deposits",
            deposit["id"],
            deposit,
            self.auth,
        )
        keys = WalletKeys.generate()
        body = {
            "id": keys.wallet_id,
            "class": 2,
            "public_key": keys.public_key_b64,
            "kyc": {"name": "Load Customer", "id_number": "310101", "phone": "+8613700000000"},
            "linked_bank_account": bank,
        }
        opened = self.send("POST", "/v1/wallets", "/v1/wallets", body, self.auth)
        if opened is None or opened["results"][0]["result"] != "ok":
            return
        view = self.send(
            "GET", f"/v1/wallets/{keys.wallet_id}", "/v1/wallets/[id]", headers=self.auth
        )
        if view is not None:
            self.wallets.append([keys, view["operator_float_account"], 0])
            del self.wallets[:-20]

    @task(4)
    def top_up(self) -> None:
        if not self.wallets:
            return self.open_wallet()
        wallet = random.choice(self.wallets)
        body: dict[str, Any] = {"id": new_id(), "amount": random.randint(1000, 50_000)}
        if (
            self.transfer(
                f"/v1/wallets/{wallet[0].wallet_id}/top_ups",
                "/v1/wallets/[id]/top_ups",
                body["id"],
                body,
                self.auth,
            )
            is not None
        ):
            wallet[2] += body["amount"]
        return None

    @task(2)
    def redeem(self) -> None:
        funded = [w for w in self.wallets if w[2] >= 100]
        if not funded:
            raise RescheduleTask()
        wallet = random.choice(funded)
        keys, float_account, balance = wallet
        body = signed_payment(keys, float_account, random.randint(100, min(balance, 5000)))
        if (
            self.transfer(
                f"/v1/wallets/{keys.wallet_id}/redemptions",
                "/v1/wallets/[id]/redemptions",
                body["id"],
                body,
            )
            is not None
        ):
            wallet[2] -= body["amount"]

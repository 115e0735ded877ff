"""The SDK paying a merchant against a real ``ledger serve`` (which includes the merchant API).

Merchant-presented: ``pay_qr`` of an order's QR code pays that order (payment id = order id), once,
however often it is called. Customer-presented: ``WalletKeys.payment_code`` is what the wallet
shows; the merchant's till captures it with its own key, once.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ledger.ids import new_uuid
from merchant_api.service import order_reference
from tests.conftest import sqlite_url
from tests.sdk.test_client_server import Ledger
from tests.test_server import Server
from wallet_sdk import (
    ECNY_QR_GUID,
    APIConnectionError,
    AsyncClient,
    Client,
    InvalidRequestError,
    Money,
    NotFoundError,
    WalletKeys,
    qr,
    verify_receipt,
)

# ================================================================================================
# A running ledger with one onboarded merchant, and wallets to pay it
# ================================================================================================


@dataclass
class Merchant:
    """An onboarded merchant: its wallet, its static QR code and its test key (as headers)."""

    id: str
    wallet: str
    static_qr: str
    test: dict[str, str]


class Till:
    """The merchant's side, in plain HTTP with its ``sk_test_`` key: what a till or a shop's
    backend does."""

    def __init__(self, ledger: Ledger, merchant: Merchant) -> None:
        self.http, self.merchant = ledger.http, merchant

    def order(self, amount: int) -> dict[str, Any]:
        body = {"amount": amount, "out_trade_no": new_uuid()}
        response = self.http.post("/v1/payment_orders", json=body, headers=self.merchant.test)
        assert response.status_code == 201, response.text
        order: dict[str, Any] = response.json()
        return order

    def read(self, order: dict[str, Any]) -> dict[str, Any]:
        response = self.http.get(f"/v1/payment_orders/{order['id']}", headers=self.merchant.test)
        assert response.status_code == 200, response.text
        view: dict[str, Any] = response.json()
        return view

    def capture(self, order: dict[str, Any], payment_code: str) -> httpx.Response:
        path = f"/v1/payment_orders/{order['id']}/capture_code"
        return self.http.post(path, json={"payment_code": payment_code}, headers=self.merchant.test)

    def cancel(self, order: dict[str, Any]) -> None:
        path = f"/v1/payment_orders/{order['id']}/cancel"
        response = self.http.post(path, headers=self.merchant.test)
        assert response.status_code == 200, response.text

    def balance(self) -> Money:
        me = self.http.get("/v1/merchants/me", headers=self.merchant.test)
        assert me.status_code == 200, me.text
        return Money(int(me.json()["balance_fen"]))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    tmp = tmp_path_factory.mktemp("serve_merchant")
    server = Server(sqlite_url(tmp), tmp)
    server.start()
    try:
        running = Ledger(server)
        yield running
        running.http.close()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def merchant(served: Ledger) -> Merchant:
    body = {
        "name": "Tea House",
        "city": "Shanghai",
        "kyc": {"name": "Tea House Ltd", "id_number": "91310000"},
        "linked_bank_account": served.bank_account(),
    }
    created = served.http.post("/v1/merchants", json=body, headers=served.bearer(served.op_key))
    assert created.status_code == 201, created.text
    view = created.json()
    assert view["keys"]["test"].startswith("sk_test_")
    assert view["keys"]["live"].startswith("sk_live_")
    test_key = {"Authorization": f"Bearer {view['keys']['test']}"}
    return Merchant(view["id"], view["wallet"], view["static_qr_code"], test_key)


@pytest.fixture
def till(served: Ledger, merchant: Merchant) -> Till:
    return Till(served, merchant)


@pytest.fixture
def client(served: Ledger) -> Iterator[Client]:
    with Client(served.server.base, api_key=served.op_key) as sdk:
        yield sdk


@pytest.fixture
def funded_wallet(served: Ledger, client: Client) -> WalletKeys:
    """A customer's wallet with ¥100.00 in it."""
    keys = client.create_wallet(
        kyc={"phone": "+8613800000000"}, wallet_class=4, linked_bank_account=served.bank_account()
    )
    client.top_up(keys, Money.yuan("100.00"))
    return keys


def _order_code(merchant: Merchant, order_id: int, amount_fen: int) -> str:
    """An e-CNY order code as the merchant API prints one, for any order id and amount."""
    return qr.encode(
        merchant_name="Tea House", merchant_city="Shanghai", amount_fen=amount_fen,
        point_of_initiation="dynamic",
        merchant_account={"26": {"00": ECNY_QR_GUID, "01": merchant.wallet}},
        additional_data={"05": order_reference(order_id)},
    )  # fmt: skip


# ================================================================================================
# Merchant-presented: pay_qr of an order's code
# ================================================================================================


def test_pay_qr_pays_the_order_with_a_verified_receipt(
    client: Client, till: Till, merchant: Merchant, funded_wallet: WalletKeys
) -> None:
    order = till.order(1_288)
    before = till.balance()
    payment = client.pay_qr(funded_wallet, order["qr_code"])
    assert (payment.id, payment.payee) == (order["id"], merchant.wallet)
    assert payment.amount == Money(1_288)
    assert not payment.replayed and payment.metadata == {}
    assert verify_receipt(payment.receipt, client.public_key())
    assert payment.receipt["leaf_index"] == payment.seq
    assert payment.payment_order is not None
    assert payment.payment_order["id"] == order["id"]
    assert payment.payment_order["status"] == "succeeded"
    paid = till.read(order)
    assert (paid["status"], paid["payer"], paid["paid_with"]) == (
        "succeeded", funded_wallet.wallet_id, "qr",
    )  # fmt: skip
    assert till.balance() == before + Money(1_288)
    assert client.balance(funded_wallet) == Money.yuan("100.00") - Money(1_288)


def test_paying_the_same_order_again_replays_and_another_wallet_is_refused(
    client: Client, till: Till, funded_wallet: WalletKeys, served: Ledger
) -> None:
    order = till.order(500)
    first = client.pay_qr(funded_wallet, order["qr_code"])
    again = client.pay_qr(funded_wallet, order["qr_code"])
    assert again.replayed and (again.id, again.seq) == (first.id, first.seq)
    assert verify_receipt(again.receipt, client.public_key())
    assert client.balance(funded_wallet) == Money.yuan("100.00") - Money(500)  # paid once

    other = funded_wallet_of(served, client)
    with pytest.raises(InvalidRequestError) as refused:
        client.pay_qr(other, order["qr_code"])
    assert (refused.value.http_status, refused.value.code) == (409, "order_already_paid")
    assert client.balance(other) == Money.yuan("100.00")
    assert till.read(order)["payer"] == funded_wallet.wallet_id


def funded_wallet_of(served: Ledger, client: Client) -> WalletKeys:
    keys = client.create_wallet(
        kyc={"phone": "+8613900000000"}, wallet_class=4, linked_bank_account=served.bank_account()
    )
    client.top_up(keys, Money.yuan("100.00"))
    return keys


class DropFirstPayAnswer(httpx.BaseTransport):
    """Real HTTP, except that the first answer to an order's ``/pay`` is lost on the way back:
    the ledger committed, the wallet never heard."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.dropped = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path.endswith("/pay") and not self.dropped:
            response.read()
            response.close()
            self.dropped += 1
            raise httpx.ReadError("connection reset before the answer arrived", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_an_answer_lost_in_flight_is_retried_into_the_first_outcome(
    served: Ledger, till: Till, funded_wallet: WalletKeys
) -> None:
    order = till.order(700)
    lossy = httpx.Client(base_url=served.server.base, transport=DropFirstPayAnswer())
    with Client(http_client=lossy) as sdk:  # the SDK's own retry resends the same signed body
        payment = sdk.pay_qr(funded_wallet, order["qr_code"])
        assert payment.replayed and payment.id == order["id"]
        assert payment.payment_order is not None
        assert payment.payment_order["status"] == "succeeded"
        assert sdk.balance(funded_wallet) == Money.yuan("100.00") - Money(700)
    lossy.close()


def test_after_no_answer_at_all_calling_again_gives_the_first_outcome(
    served: Ledger, client: Client, till: Till, funded_wallet: WalletKeys
) -> None:
    order = till.order(900)
    lossy = httpx.Client(base_url=served.server.base, transport=DropFirstPayAnswer())
    with Client(http_client=lossy, max_retries=0) as sdk:
        with pytest.raises(APIConnectionError) as unknown:
            sdk.pay_qr(funded_wallet, order["qr_code"])
        assert unknown.value.payment_id == order["id"]
        assert till.read(order)["status"] == "succeeded"  # it did commit
        # Calling again (a new signature: another expiry) learns the outcome, not a 2nd payment.
        payment = client.pay_qr(funded_wallet, order["qr_code"], payment_id=order["id"])
    lossy.close()
    assert payment.replayed and payment.id == order["id"]
    assert verify_receipt(payment.receipt, client.public_key())
    assert payment.receipt["leaf_index"] == payment.seq
    assert client.balance(funded_wallet) == Money.yuan("100.00") - Money(900)


def test_order_errors_are_typed_with_their_codes(
    client: Client, till: Till, merchant: Merchant, funded_wallet: WalletKeys
) -> None:
    canceled = till.order(300)
    till.cancel(canceled)
    with pytest.raises(InvalidRequestError) as not_payable:
        client.pay_qr(funded_wallet, canceled["qr_code"])
    assert (not_payable.value.http_status, not_payable.value.code) == (409, "order_not_payable")

    order = till.order(400)
    forged = _order_code(merchant, uuid.UUID(order["id"]).int, 1)  # same order, ¥0.01
    with pytest.raises(InvalidRequestError) as mismatch:
        client.pay_qr(funded_wallet, forged)
    assert (mismatch.value.http_status, mismatch.value.code) == (422, "amount_mismatch")

    unknown = _order_code(merchant, uuid.uuid4().int, 400)
    with pytest.raises(NotFoundError) as missing:
        client.pay_qr(funded_wallet, unknown)
    assert (missing.value.http_status, missing.value.code) == (404, "payment_order_not_found")

    with pytest.raises(ValueError, match="fixes the amount"):
        client.pay_qr(funded_wallet, order["qr_code"], amount=399)
    with pytest.raises(ValueError, match="no metadata"):
        client.pay_qr(funded_wallet, order["qr_code"], metadata={"note": "tea"})
    with pytest.raises(ValueError, match="payment id is the order id"):
        client.pay_qr(funded_wallet, order["qr_code"], payment_id=new_uuid())
    assert till.read(order)["status"] == "requires_payment"
    assert client.balance(funded_wallet) == Money.yuan("100.00")


def test_a_static_code_pays_the_merchant_wallet_an_amount_the_payer_enters(
    client: Client, till: Till, merchant: Merchant, funded_wallet: WalletKeys
) -> None:
    with pytest.raises(ValueError, match="static QR code"):
        client.pay_qr(funded_wallet, merchant.static_qr)
    with pytest.raises(TypeError, match="float"):
        client.pay_qr(funded_wallet, merchant.static_qr, amount=3.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        client.pay_qr(funded_wallet, merchant.static_qr, amount=0)
    before = till.balance()
    payment = client.pay_qr(funded_wallet, merchant.static_qr, amount=Money.yuan("3.50"))
    assert (payment.payee, payment.amount) == (merchant.wallet, Money(350))
    assert payment.payment_order is None and not payment.replayed
    assert verify_receipt(payment.receipt, client.public_key())
    assert till.balance() == before + Money(350)


# ================================================================================================
# Customer-presented: the wallet shows a payment code, the till captures it
# ================================================================================================


def test_a_payment_code_is_captured_once(
    client: Client, till: Till, merchant: Merchant, funded_wallet: WalletKeys
) -> None:
    code = funded_wallet.payment_code(Money.yuan("50.00"), ttl_s=60)  # offline
    order = till.order(2_000)
    captured = till.capture(order, code)
    assert captured.status_code == 200, captured.text
    outcome = captured.json()
    assert outcome["result"] == "ok" and outcome["payment_order"]["status"] == "succeeded"
    paid = till.read(order)
    assert (paid["payer"], paid["paid_with"]) == (funded_wallet.wallet_id, "payment_code")
    receipt = client.receipt(funded_wallet, order["id"])  # the payer can prove it, too
    assert verify_receipt(receipt, client.public_key())
    assert client.balance(funded_wallet) == Money.yuan("80.00")

    second = till.order(1_000)
    reused = till.capture(second, code)
    assert reused.status_code == 409, reused.text
    assert reused.json()["error"]["code"] == "payment_code_used"
    assert till.read(second)["status"] == "requires_payment"

    small = till.capture(second, funded_wallet.payment_code(Money(999)))
    assert small.status_code == 422 and small.json()["error"]["code"] == "payment_code_amount"
    assert till.capture(second, funded_wallet.payment_code(1_000)).status_code == 200
    assert client.balance(funded_wallet) == Money.yuan("70.00")


# ================================================================================================
# The async twin
# ================================================================================================


def test_async_client_pays_an_order_replays_and_refuses_a_second_payer(
    served: Ledger, till: Till, merchant: Merchant, client: Client, funded_wallet: WalletKeys
) -> None:
    other = funded_wallet_of(served, client)
    order = till.order(1_500)

    async def run() -> None:
        async with AsyncClient(served.server.base) as aclient:
            payment = await aclient.pay_qr(funded_wallet, order["qr_code"])
            assert (payment.id, payment.payee, payment.replayed) == (
                order["id"], merchant.wallet, False,
            )  # fmt: skip
            assert verify_receipt(payment.receipt, await aclient.public_key())
            again = await aclient.pay_qr(funded_wallet, order["qr_code"])
            assert again.replayed and again.seq == payment.seq
            with pytest.raises(InvalidRequestError) as refused:
                await aclient.pay_qr(other, order["qr_code"])
            assert refused.value.code == "order_already_paid"

    asyncio.run(run())
    assert till.read(order)["status"] == "succeeded"
    assert client.balance(funded_wallet) == Money.yuan("85.00")


# ================================================================================================
# Reading an order reference (pure)
# ================================================================================================


def _code_with_reference(reference: str | None, *, amount_fen: int | None = 100) -> qr.MerchantQR:
    return qr.parse(
        qr.encode(
            merchant_name="Tea House", merchant_city="Shanghai", amount_fen=amount_fen,
            merchant_account={"26": {"00": ECNY_QR_GUID, "01": new_uuid()}},
            additional_data={"05": reference} if reference else None,
        )
    )  # fmt: skip


@pytest.mark.parametrize("order_id", [1, uuid.uuid4().int, (1 << 128) - 1])
def test_an_order_reference_reads_back_as_the_merchant_apis_order_id(order_id: int) -> None:
    assert qr.ecny_order_id(_code_with_reference(order_reference(order_id))) == order_id


@pytest.mark.parametrize(
    "reference",
    [
        None,  # a static code
        "A-1001",  # the merchant's own label: travels as metadata["order"]
        "AAAAAAAAAAAAAAAAAAAAAB",  # 22 characters, but stray bits in the last one
        "AAAAAAAAAAAAAAAAAAAAAA",  # the zero id
        "AAAAAAAAAAAAAAAAAAAA+A",  # not base64url
        base64.urlsafe_b64encode(bytes(17)).decode().rstrip("="),  # 23 characters
    ],
)
def test_anything_else_is_not_an_order(reference: str | None) -> None:
    assert qr.ecny_order_id(_code_with_reference(reference)) is None

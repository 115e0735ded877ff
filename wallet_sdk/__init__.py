"""The Python SDK for e-CNY wallet apps: keys, signed payments, receipts verified offline.

Quickstart (an operator's API key opens wallets; each wallet signs its own payments)::

    from wallet_sdk import Client, Money, verify_receipt

    with Client("http://127.0.0.1:8000", api_key=OPERATOR_KEY) as client:
        alice = client.create_wallet(kyc={"phone": "+8613800000000"}, wallet_class=4,
                                     linked_bank_account=BANK_ACCOUNT_ID)
        shop = client.create_wallet(kyc={"phone": "+8613900000000"}, wallet_class=4)
        client.top_up(alice, Money.yuan("50.00"))
        payment = client.pay(alice, shop, Money.yuan("12.30"))   # signed here, receipt checked
        assert verify_receipt(payment.receipt, client.public_key())  # anyone can, offline
        print(client.balance(shop))                                   # ¥12.30

At a shop: ``client.pay_qr(alice, scanned_text)`` pays a merchant's QR code; a code the merchant
API printed for an order pays that order (its id is the payment's id, so it is paid once,
however often you call). Or the customer shows ``alice.payment_code(Money.yuan("50.00"))``
(signed offline, good for one payment up to that amount, 60 s by default) and the till captures
it.

``AsyncClient`` has the same methods, awaited. Keys live on the device: save them with
``Keystore.save(path, passphrase, alice)``. Errors form one tree (see ``wallet_sdk._errors``):
``APIError`` and its per-status subclasses, ``APIConnectionError``, ``PaymentRejected``,
``ReceiptVerificationError``, ``ForkDetected``, ``KeystoreError``, and the re-exported
``QRCodeError`` and ``WebhookVerificationError``.

The SDK talks HTTP only; the protocol code it shares with the server (canonical bytes, Merkle
proofs, checkpoint signatures) is the ledger's own dependency-free modules: one truth. The
payment code's bytes are the exception, written out in ``wallet_sdk.keys`` and tested
byte-identical to ``ledger.signing``.
"""

from __future__ import annotations

from wallet_sdk import qr, webhooks
from wallet_sdk._client import (
    DEFAULT_BASE_URL,
    ECNY_QR_GUID,
    AsyncClient,
    Client,
    Payment,
    TransferResult,
)
from wallet_sdk._errors import (
    APIConnectionError,
    APIError,
    APIInternalError,
    AuthenticationError,
    ForkDetected,
    InvalidRequestError,
    KeystoreError,
    LedgerUnavailableError,
    NotFoundError,
    OperationRejected,
    PaymentRejected,
    PermissionDeniedError,
    RateLimitError,
    ReceiptVerificationError,
    VerificationError,
    WalletSDKError,
)
from wallet_sdk.keys import Keystore, WalletKeys
from wallet_sdk.money import Money
from wallet_sdk.qr import QRCodeError
from wallet_sdk.receipts import CheckpointTracker, check_receipt, verify_receipt
from wallet_sdk.webhooks import WebhookVerificationError

__all__ = [
    "DEFAULT_BASE_URL",
    "ECNY_QR_GUID",
    "APIConnectionError",
    "APIError",
    "APIInternalError",
    "AsyncClient",
    "AuthenticationError",
    "CheckpointTracker",
    "Client",
    "ForkDetected",
    "InvalidRequestError",
    "Keystore",
    "KeystoreError",
    "LedgerUnavailableError",
    "Money",
    "NotFoundError",
    "OperationRejected",
    "Payment",
    "PaymentRejected",
    "PermissionDeniedError",
    "QRCodeError",
    "RateLimitError",
    "ReceiptVerificationError",
    "TransferResult",
    "VerificationError",
    "WalletKeys",
    "WalletSDKError",
    "WebhookVerificationError",
    "check_receipt",
    "qr",
    "verify_receipt",
    "webhooks",
]

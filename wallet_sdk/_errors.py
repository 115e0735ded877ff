"""Every exception the SDK raises, in one tree, so one ``except`` catches what you mean.

::

    WalletSDKError
    ├── APIError                    the ledger answered with an error (http_status, code, ...)
    │   ├── AuthenticationError     401: no, bad or revoked API key; a wallet signature refused
    │   ├── PermissionDeniedError   403: the key may not do this (e.g. a wallet signed, not its
    │   │                                operator)
    │   ├── NotFoundError           404: no such wallet / transfer (or not yours: ids reveal
    │   │                                nothing)
    │   ├── InvalidRequestError     400, 409, 422 and other 4xx: the request is wrong; the
    │   │                                ``param`` names the field
    │   ├── RateLimitError          429: slow down (retried for you first, honouring
    │   │                                Retry-After)
    │   ├── LedgerUnavailableError  503: overloaded or not committing (retried for you first)
    │   └── APIInternalError        other 5xx (retried for you first)
    ├── APIConnectionError          no answer at all, after every retry (the outcome is unknown:
    │                               call again with the same ids, see ``Client.pay``)
    ├── OperationRejected           a 200 answer whose result is not ``ok`` (``code``, ``limit``)
    │   └── PaymentRejected         ... for a signed payment (``exceeds_daily_limit``, ...)
    ├── VerificationError           the ledger's own evidence does not check out
    │   ├── ReceiptVerificationError  a receipt that does not verify (entry, proof, signature)
    │   └── ForkDetected            two signed checkpoints that cannot both be true: the ledger
    │                               rewrote history
    └── KeystoreError               a keystore file that cannot be opened (wrong passphrase,
                                    altered, not a keystore)

    ValueError
    └── QRCodeError                 (``wallet_sdk.qr``) a payload that is not a valid
                                    merchant-presented QR code
    Exception
    └── WebhookVerificationError    (``wallet_sdk.webhooks``) a webhook whose signature,
                                    timestamp or headers do not check out

``QRCodeError`` and ``WebhookVerificationError`` live in their pure, stdlib-only modules (so a
merchant can vendor them alone) and are therefore not ``WalletSDKError`` subclasses; both are
re-exported from ``wallet_sdk``.

Programmer errors are not in the tree: a float where money goes raises ``TypeError``, a
non-positive amount ``ValueError``, as Python itself would.
"""

from __future__ import annotations

from typing import Any

from wallet_sdk.qr import QRCodeError
from wallet_sdk.webhooks import WebhookVerificationError

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIInternalError",
    "AuthenticationError",
    "ForkDetected",
    "InvalidRequestError",
    "KeystoreError",
    "LedgerUnavailableError",
    "NotFoundError",
    "OperationRejected",
    "PaymentRejected",
    "PermissionDeniedError",
    "QRCodeError",
    "RateLimitError",
    "ReceiptVerificationError",
    "VerificationError",
    "WalletSDKError",
    "WebhookVerificationError",
    "error_for_status",
]


class WalletSDKError(Exception):
    """The base of every error the SDK raises itself."""


class APIError(WalletSDKError):
    """The ledger answered with its error shape ``{"error": {type, code, message, param,
    request_id}}``. Quote ``request_id`` when you ask the operator what happened."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.code = code
        self.param = param
        self.request_id = request_id
        self.body = body

    def __str__(self) -> str:
        where = f" (param {self.param})" if self.param else ""
        rid = f" [request {self.request_id}]" if self.request_id else ""
        status = f"{self.http_status} " if self.http_status is not None else ""
        return f"{status}{self.code or 'error'}: {self.message}{where}{rid}"


class AuthenticationError(APIError):
    """401: the API key or the wallet's request signature was missing or refused."""


class PermissionDeniedError(APIError):
    """403: authenticated, but not allowed to do this."""


class NotFoundError(APIError):
    """404: no such object, or one the credential may not see (``payment_order_not_found``
    for an order code that names no order)."""


class InvalidRequestError(APIError):
    """400, 409, 422 (and any other 4xx): fix the request; ``param`` names the field. Paying a
    merchant's order, ``code`` says why: 409 ``order_already_paid`` (by another wallet) or
    ``order_not_payable`` (canceled, expired), 422 ``amount_mismatch``."""


class RateLimitError(APIError):
    """429: too many requests, after the SDK's own retries."""


class LedgerUnavailableError(APIError):
    """503: the ledger is at capacity or cannot commit, after the SDK's own retries. Nothing
    was accepted that a retry with the same ids would not find."""


class APIInternalError(APIError):
    """A 5xx other than 503, after the SDK's own retries."""


class APIConnectionError(WalletSDKError):
    """No HTTP answer (connection refused, reset, timed out) after every retry.

    For a payment this means *unknown outcome*, not failure: the ledger may have committed it.
    Call ``pay`` again with the same ``payment_id`` (a payment's id makes it idempotent); the
    ledger answers with the original result and ``replayed=True`` if it had committed.
    ``payment_id`` names that payment when a payment was being sent."""

    def __init__(self, message: str, *, payment_id: str | None = None) -> None:
        super().__init__(message)
        self.payment_id = payment_id


class OperationRejected(WalletSDKError):
    """The ledger answered 200 but refused the item with a result ``code`` (TigerBeetle style:
    expected refusals are result codes). ``limit`` carries the spending-limit detail when a
    limit was the reason (``{"limit", "limit_fen", "allowed_fen", "limits_version"}``)."""

    def __init__(
        self,
        code: str,
        *,
        id: str | None = None,
        replayed: bool = False,
        limit: dict[str, Any] | None = None,
        what: str = "operation",
    ) -> None:
        detail = ""
        if limit:
            detail = f" ({limit.get('limit')} limit {limit.get('limit_fen')} fen, "
            detail += f"{limit.get('allowed_fen')} fen allowed)"
        again = " (replayed: the first answer for this id)" if replayed else ""
        super().__init__(f"{what} {id} rejected: {code}{detail}{again}")
        self.code = code
        self.id = id
        self.replayed = replayed
        self.limit = limit


class PaymentRejected(OperationRejected):
    """A signed payment the ledger refused (``exceeds_daily_limit``, ``exceeds_credits``,
    ``signature_expired``, ...). ``transfer_id`` is the payment's id; a replay of the same id
    returns the same code, so retrying will not help until something changes."""

    def __init__(
        self,
        code: str,
        *,
        id: str | None = None,
        replayed: bool = False,
        limit: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(code, id=id, replayed=replayed, limit=limit, what="payment")

    @property
    def transfer_id(self) -> str | None:
        return self.id


class VerificationError(WalletSDKError):
    """The ledger's evidence (a signature, a Merkle proof) does not check out. Fail closed:
    treat the answer that came with it as untrustworthy."""


class ReceiptVerificationError(VerificationError):
    """A receipt whose entry, inclusion proof or checkpoint signature does not verify."""


class ForkDetected(VerificationError):
    """Two checkpoints signed by the same ledger key that cannot both be true: the ledger
    showed you one history and now shows another. Keep both as evidence (``remembered`` and
    ``presented``) and stop trusting that ledger."""

    def __init__(self, message: str, *, remembered: Any = None, presented: Any = None) -> None:
        super().__init__(message)
        self.remembered = remembered
        self.presented = presented


class KeystoreError(WalletSDKError):
    """A keystore that cannot be opened: wrong passphrase, altered bytes, or not a keystore."""


_BY_STATUS: dict[int, type[APIError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
    503: LedgerUnavailableError,
}


def error_for_status(http_status: int) -> type[APIError]:
    """The exception class for an error answer's HTTP status."""
    if http_status in _BY_STATUS:
        return _BY_STATUS[http_status]
    if http_status >= 500:
        return APIInternalError
    return InvalidRequestError

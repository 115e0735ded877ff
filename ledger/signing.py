"""What a wallet signs: payments, payment codes and read requests. Canonical bytes, one truth.

Pure (stdlib + PyNaCl) and shared by the server and ``wallet_sdk``, so both sides build exactly
the same bytes. Every signed message starts with a domain-separation label, so a signature made
for one purpose can never be replayed as another.

Payment (every debit of a wallet)::

    b"ecny/payment/v1\\x00" | transfer id u128 | payer u128 | payee u128 | amount u64 |
    currency (3 ASCII bytes, "CNY") | expires_at_ms u64

The transfer's ``authorization`` field (kept in the journal entry, so anyone can re-check it)::

    u8 scheme (1 = Ed25519) | u16 key_version | u64 expires_at_ms | 64-byte signature

Payment code (customer-presented: the wallet shows it, a merchant's terminal captures it)::

    b"ecny/payment-code/v1\x00" | code id u128 | payer u128 | max amount u64 |
    currency (3 ASCII bytes) | expires_at_ms u64

A capture's ``authorization`` (scheme 2; the code id may pay once, for up to the max amount)::

    u8 scheme (2) | u16 key_version | u64 expires_at_ms | code id u128 | max amount u64 | signature

Read request (a wallet's own balance, history, receipts)::

    b"ecny/read/v1\\x00" | method | "\\n" | path?query | "\\n" | timestamp_ms | "\\n" | sha256(body)
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass
from typing import Final

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

PAYMENT_LABEL: Final = b"ecny/payment/v1\x00"
READ_LABEL: Final = b"ecny/read/v1\x00"
PAYMENT_CODE_LABEL: Final = b"ecny/payment-code/v1\x00"
STATEMENT_LABEL: Final = b"ecny/statement/v1\x00"
"""What the ledger's own key signs besides checkpoints: merchants' daily statements."""
SCHEME_ED25519: Final = 1
SCHEME_PAYMENT_CODE: Final = 2
_U64: Final = 0xFFFF_FFFF_FFFF_FFFF
_PAYMENT = struct.Struct(">QQQQQQQ3sQ")
_AUTH = struct.Struct(">BHQ64s")
AUTHORIZATION_SIZE: Final = _AUTH.size
_CODE_MESSAGE = struct.Struct(">QQQQQ3sQ")
_CODE_AUTH = struct.Struct(">BHQQQQ64s")
CODE_AUTHORIZATION_SIZE: Final = _CODE_AUTH.size


class SignatureError(ValueError):
    """A signature, or the bytes around it, that does not check out."""


def payment_message(
    transfer_id: int, payer: int, payee: int, amount: int, currency: str, expires_at_ms: int
) -> bytes:
    """The canonical bytes a payer signs for one payment."""
    if len(currency) != 3 or not currency.isascii():
        raise SignatureError("currency must be a 3-letter code")
    return PAYMENT_LABEL + _PAYMENT.pack(
        transfer_id >> 64,
        transfer_id & _U64,
        payer >> 64,
        payer & _U64,
        payee >> 64,
        payee & _U64,
        amount,
        currency.encode(),
        expires_at_ms,
    )


@dataclass(frozen=True, slots=True)
class Authorization:
    key_version: int
    expires_at_ms: int
    signature: bytes

    def encode(self) -> bytes:
        return _AUTH.pack(SCHEME_ED25519, self.key_version, self.expires_at_ms, self.signature)

    @classmethod
    def decode(cls, raw: bytes) -> Authorization:
        if len(raw) != _AUTH.size:
            raise SignatureError(f"an authorization is {_AUTH.size} bytes, not {len(raw)}")
        scheme, version, expires, signature = _AUTH.unpack(raw)
        if scheme != SCHEME_ED25519:
            raise SignatureError(f"unknown signature scheme {scheme}")
        return cls(version, expires, signature)


def sign_payment(
    key: SigningKey,
    key_version: int,
    transfer_id: int,
    payer: int,
    payee: int,
    amount: int,
    currency: str,
    expires_at_ms: int,
) -> Authorization:
    message = payment_message(transfer_id, payer, payee, amount, currency, expires_at_ms)
    return Authorization(key_version, expires_at_ms, key.sign(message).signature)


def verify_payment(
    public_key: bytes,
    authorization: bytes,
    transfer_id: int,
    payer: int,
    payee: int,
    amount: int,
    currency: str,
) -> Authorization:
    """Check a payment's authorization; return it decoded, or raise ``SignatureError``."""
    auth = Authorization.decode(authorization)
    verify_payment_signature(
        public_key, auth.signature, transfer_id, payer, payee, amount, currency, auth.expires_at_ms
    )
    return auth


def verify_payment_signature(
    public_key: bytes,
    signature: bytes,
    transfer_id: int,
    payer: int,
    payee: int,
    amount: int,
    currency: str,
    expires_at_ms: int,
) -> None:
    """Check a payment's signature from its parts (what an HTTP worker has before the
    authorization is packed); raise ``SignatureError`` unless it verifies."""
    message = payment_message(transfer_id, payer, payee, amount, currency, expires_at_ms)
    verify(public_key, message, signature)


def payment_code_message(
    code_id: int, payer: int, max_amount: int, currency: str, expires_at_ms: int
) -> bytes:
    """The canonical bytes a wallet signs to show a payment code."""
    return PAYMENT_CODE_LABEL + _CODE_MESSAGE.pack(
        code_id >> 64, code_id & _U64, payer >> 64, payer & _U64, max_amount,
        currency.encode(), expires_at_ms,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class PaymentCode:
    """What a wallet shows at a till: pay up to ``max_amount`` once, before ``expires_at_ms``."""

    code_id: int
    payer: int
    max_amount: int
    currency: str
    expires_at_ms: int
    key_version: int
    signature: bytes

    def message(self) -> bytes:
        return payment_code_message(
            self.code_id, self.payer, self.max_amount, self.currency, self.expires_at_ms
        )

    def authorization(self) -> bytes:
        """The transfer authorization (scheme 2) of a capture made with this code."""
        return _CODE_AUTH.pack(
            SCHEME_PAYMENT_CODE, self.key_version, self.expires_at_ms, self.code_id >> 64,
            self.code_id & _U64, self.max_amount, self.signature,
        )  # fmt: skip

    def encode(self) -> str:
        """The text a wallet shows (as a QR code or barcode): base64url, no padding."""
        raw = self.message()[len(PAYMENT_CODE_LABEL) :] + struct.pack(
            ">H64s", self.key_version, self.signature
        )
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def decode(cls, text: str) -> PaymentCode:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            hi, lo, p_hi, p_lo, max_amount, currency, expires = _CODE_MESSAGE.unpack_from(raw)
            key_version, signature = struct.unpack_from(">H64s", raw, _CODE_MESSAGE.size)
        except (ValueError, struct.error):
            raise SignatureError("not a payment code") from None
        if len(raw) != _CODE_MESSAGE.size + 66:
            raise SignatureError("not a payment code")
        return cls((hi << 64) | lo, (p_hi << 64) | p_lo, max_amount, currency.decode("ascii"),
                   expires, key_version, signature)  # fmt: skip

    @classmethod
    def from_authorization(cls, raw: bytes, payer: int, currency: str) -> PaymentCode:
        if len(raw) != _CODE_AUTH.size or raw[0] != SCHEME_PAYMENT_CODE:
            raise SignatureError("not a payment-code authorization")
        _, version, expires, hi, lo, max_amount, signature = _CODE_AUTH.unpack(raw)
        return cls((hi << 64) | lo, payer, max_amount, currency, expires, version, signature)


def sign_payment_code(
    key: SigningKey,
    key_version: int,
    code_id: int,
    payer: int,
    max_amount: int,
    currency: str,
    expires_at_ms: int,
) -> PaymentCode:
    message = payment_code_message(code_id, payer, max_amount, currency, expires_at_ms)
    signature = key.sign(message).signature
    return PaymentCode(code_id, payer, max_amount, currency, expires_at_ms, key_version, signature)


def read_message(method: str, path_and_query: str, timestamp_ms: int, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    text = f"{method.upper()}\n{path_and_query}\n{timestamp_ms}\n{digest}"
    return READ_LABEL + text.encode()


def verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Ed25519 verification that fails closed with one error type."""
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError) as exc:
        raise SignatureError("the signature does not verify") from exc

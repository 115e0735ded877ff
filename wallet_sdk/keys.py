"""A wallet's identity on the device: its id and Ed25519 key, and an encrypted file to keep them.

The private key never leaves the device: the ledger learns only the public key, when the
operator opens the wallet. Everything the wallet authorises is signed here, with the exact bytes
the server checks (``ledger.signing``, one truth for both sides), including the payment code a
wallet shows at a till (:meth:`WalletKeys.payment_code`).

Payment code, as shown (base64url of these bytes, no padding; 156 characters)::

    code id u128 | payer u128 | max amount u64 | currency (3 ASCII bytes) | expires_at_ms u64 |
    key_version u16 | Ed25519 signature (64 bytes) over
        b"ecny/payment-code/v1\\x00" | code id ... expires_at_ms   (the first five fields)

Keystore file format, version 1 (UTF-8 JSON, every binary field base64)::

    {
      "format": "wallet_sdk.keystore",
      "version": 1,
      "kdf": {"name": "argon2id", "opslimit": <int>, "memlimit": <bytes>, "salt": <16 bytes>},
      "cipher": {"name": "xsalsa20poly1305", "nonce": <24 bytes>},
      "ciphertext": <SecretBox ciphertext (MAC included)>
    }

The key is ``argon2id(passphrase, salt, opslimit, memlimit)`` (libsodium's
``crypto_pwhash``, 32 bytes); the plaintext is
``{"wallets": [{"wallet_id": <uuid>, "key_version": <int>, "seed": <32 bytes>}]}``. Altering any
byte of the salt, the limits, the nonce or the ciphertext makes decryption fail, exactly as a
wrong passphrase does.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
import threading
import time
import unicodedata
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils
from nacl.signing import SigningKey

from ledger import signing
from ledger.ids import new_id
from wallet_sdk._errors import KeystoreError
from wallet_sdk.money import Money, amount_fen

__all__ = [
    "KEYSTORE_FORMAT",
    "KEYSTORE_VERSION",
    "PAYMENT_CODE_TTL_MAX_S",
    "Keystore",
    "WalletKeys",
    "wallet_id_int",
]

KEYSTORE_FORMAT: Final = "wallet_sdk.keystore"
KEYSTORE_VERSION: Final = 1
KEYSTORE_BYTES_MAX: Final = 1 << 20
"""Largest keystore file read: thousands of wallets; refuses to parse anything bigger."""
_ARGON2ID = nacl.pwhash.argon2id
OPSLIMIT_DEFAULT: Final = _ARGON2ID.OPSLIMIT_MODERATE
MEMLIMIT_DEFAULT: Final = _ARGON2ID.MEMLIMIT_MODERATE
"""libsodium's "moderate" cost (256 MiB, ~1 s): the keys move money, so a stolen file should
be slow to guess at. Interactive apps may pass the "interactive" limits instead."""
_U128: Final = 1 << 128
_U64: Final = (1 << 64) - 1
_SEED_SIZE: Final = 32
PAYMENT_CODE_TTL_MAX_S: Final = 300
"""Longest life of a payment code: it is shown at a till and read at once; a short life bounds
what a photographed code is worth."""


def wallet_id_int(value: WalletKeys | str | int | uuid.UUID) -> int:
    """A wallet id in any of its spellings (keys, UUID string, int, UUID) as its 128-bit int."""
    if isinstance(value, WalletKeys):
        return value.wallet_id_int
    if isinstance(value, uuid.UUID):
        return value.int
    if isinstance(value, str):
        try:
            return uuid.UUID(value).int
        except ValueError:
            raise ValueError(f"{value!r} is not a wallet id (a UUID string)") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"a wallet id is a UUID string or an int, not {type(value).__name__}")
    if not 0 < value < _U128:
        raise ValueError(f"a wallet id is a non-zero 128-bit number, not {value}")
    return value


class WalletKeys:
    """A wallet's id and its Ed25519 signing key (with the key's version at the ledger).

    Treat it like cash: anyone holding it can spend the wallet. Save it with :class:`Keystore`.
    ``repr`` never shows the key.
    """

    __slots__ = ("_key", "_last_ms", "_lock", "key_version", "wallet_id_int")

    def __init__(
        self,
        wallet_id: str | int | uuid.UUID,
        signing_key: SigningKey | bytes,
        *,
        key_version: int = 1,
    ) -> None:
        self.wallet_id_int = wallet_id_int(wallet_id)
        self._key = signing_key if isinstance(signing_key, SigningKey) else SigningKey(signing_key)
        if isinstance(key_version, bool) or not isinstance(key_version, int):
            raise TypeError("key_version is an int")
        if not 1 <= key_version <= 0xFFFF:
            raise ValueError(f"key_version is 1..65535, not {key_version}")
        self.key_version = key_version
        self._lock = threading.Lock()
        self._last_ms = 0

    @classmethod
    def generate(cls, wallet_id: str | int | uuid.UUID | None = None) -> WalletKeys:
        """A fresh key pair, made on this device, for a new wallet id (a time-ordered UUIDv7
        unless you pass one)."""
        return cls(new_id() if wallet_id is None else wallet_id, SigningKey.generate())

    @property
    def wallet_id(self) -> str:
        """The wallet id as the API writes it (a UUID string)."""
        return str(uuid.UUID(int=self.wallet_id_int))

    @property
    def public_key(self) -> bytes:
        return bytes(self._key.verify_key)

    @property
    def public_key_b64(self) -> str:
        """The public key as ``POST /v1/wallets`` takes it."""
        return base64.b64encode(self.public_key).decode()

    @property
    def signing_key(self) -> SigningKey:
        """The secret key itself. Sharp: prefer the ``sign_*`` methods and :class:`Keystore`."""
        return self._key

    def sign_payment(
        self, *, payment_id: int, payee: int, amount_fen: int, expires_at_ms: int, currency: str
    ) -> signing.Authorization:
        """This wallet's authorization of one payment (``ledger.signing.payment_message``)."""
        return signing.sign_payment(
            self._key, self.key_version, payment_id, self.wallet_id_int, payee, amount_fen,
            currency, expires_at_ms,
        )  # fmt: skip

    def payment_code(self, max_amount: Money | int, *, ttl_s: int = 60) -> str:
        """The text this wallet shows at a till (as a QR code or barcode) in customer-presented
        mode: it lets the merchant take up to ``max_amount``, once, within ``ttl_s`` seconds
        (1..300). Made offline; a fresh random code id every call, and the ledger accepts each
        code id once, so show a new code for every purchase."""
        fen = amount_fen(max_amount, "max_amount")
        if fen > _U64:
            raise ValueError(f"max_amount is at most {_U64} fen, not {fen}")
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int):
            raise TypeError(f"ttl_s is an int (seconds), not {type(ttl_s).__name__}")
        if not 1 <= ttl_s <= PAYMENT_CODE_TTL_MAX_S:
            raise ValueError(f"ttl_s is 1..{PAYMENT_CODE_TTL_MAX_S} seconds, not {ttl_s}")
        expires_at_ms = time.time_ns() // 1_000_000 + ttl_s * 1000
        code = signing.sign_payment_code(
            self._key, self.key_version, uuid.uuid4().int, self.wallet_id_int, fen, "CNY",
            expires_at_ms,
        )  # fmt: skip
        return code.encode()

    def sign_request(self, method: str, path_and_query: str, body: bytes) -> dict[str, str]:
        """Headers that authenticate one HTTP request as this wallet.

        The server accepts each signature once, so the timestamp is strictly increasing per
        key (two identical reads in the same millisecond would otherwise sign the same bytes
        and the second would be refused as a replay)."""
        with self._lock:
            timestamp_ms = max(time.time_ns() // 1_000_000, self._last_ms + 1)
            self._last_ms = timestamp_ms
        message = signing.read_message(method, path_and_query, timestamp_ms, body)
        return {
            "Wallet-Id": self.wallet_id,
            "Wallet-Timestamp": str(timestamp_ms),
            "Wallet-Signature": base64.b64encode(self._key.sign(message).signature).decode(),
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WalletKeys):
            return NotImplemented
        return (self.wallet_id_int, self.key_version, bytes(self._key)) == (
            other.wallet_id_int,
            other.key_version,
            bytes(other._key),
        )

    def __hash__(self) -> int:
        return hash((self.wallet_id_int, self.key_version, self.public_key))

    def __repr__(self) -> str:
        return f"WalletKeys(wallet_id={self.wallet_id!r}, key_version={self.key_version})"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: object, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise KeystoreError(f"keystore field {what} is not a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KeystoreError(f"keystore field {what} is not valid base64") from None
    if size is not None and len(raw) != size:
        raise KeystoreError(f"keystore field {what} must be {size} bytes, not {len(raw)}")
    return raw


def _passphrase(passphrase: str | bytes) -> bytes:
    """UTF-8 of the NFC form, so the same passphrase typed on another keyboard still opens."""
    if isinstance(passphrase, bytes):
        raw = passphrase
    elif isinstance(passphrase, str):
        raw = unicodedata.normalize("NFC", passphrase).encode()
    else:
        raise TypeError("the passphrase is a str or bytes")
    if not raw:
        raise ValueError("the passphrase must not be empty")
    return raw


def _limits_ok(opslimit: object, memlimit: object) -> bool:
    """Costs a file may ask for: at least libsodium's minimum, at most its "sensitive" level
    (so a planted file cannot make ``load`` allocate gigabytes)."""
    return (
        isinstance(opslimit, int)
        and isinstance(memlimit, int)
        and not isinstance(opslimit, bool)
        and not isinstance(memlimit, bool)
        and _ARGON2ID.OPSLIMIT_MIN <= opslimit <= _ARGON2ID.OPSLIMIT_SENSITIVE
        and _ARGON2ID.MEMLIMIT_MIN <= memlimit <= _ARGON2ID.MEMLIMIT_SENSITIVE
    )


def _derive(passphrase: bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return _ARGON2ID.kdf(
        nacl.secret.SecretBox.KEY_SIZE, passphrase, salt, opslimit=opslimit, memlimit=memlimit
    )


class Keystore:
    """Wallet keys in a passphrase-protected file (argon2id + XSalsa20-Poly1305, libsodium).

    ``Keystore.save(path, passphrase, *keys)`` writes it (mode 0600, atomically);
    ``Keystore.load(path, passphrase)`` opens it, or raises :class:`KeystoreError`.
    """

    __slots__ = ("keys",)

    def __init__(self, keys: Iterable[WalletKeys]) -> None:
        self.keys: tuple[WalletKeys, ...] = tuple(keys)

    def __iter__(self) -> Iterator[WalletKeys]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, wallet_id: str | int | uuid.UUID) -> WalletKeys:
        """The keys of one wallet, by id; ``KeyError`` if the file has none for it."""
        wanted = wallet_id_int(wallet_id)
        for keys in self.keys:
            if keys.wallet_id_int == wanted:
                return keys
        raise KeyError(str(uuid.UUID(int=wanted)))

    @staticmethod
    def save(
        path: str | os.PathLike[str],
        passphrase: str | bytes,
        *keys: WalletKeys,
        opslimit: int = OPSLIMIT_DEFAULT,
        memlimit: int = MEMLIMIT_DEFAULT,
    ) -> None:
        """Encrypt ``keys`` under ``passphrase`` into ``path``, replacing it atomically; the
        file is created with mode 0600 (owner read/write only)."""
        if not keys or not all(isinstance(k, WalletKeys) for k in keys):
            raise TypeError("save at least one WalletKeys")
        if not _limits_ok(opslimit, memlimit):
            raise ValueError("opslimit/memlimit outside libsodium's argon2id MIN..SENSITIVE")
        salt = nacl.utils.random(_ARGON2ID.SALTBYTES)
        nonce = nacl.utils.random(nacl.secret.SecretBox.NONCE_SIZE)
        box = nacl.secret.SecretBox(_derive(_passphrase(passphrase), salt, opslimit, memlimit))
        plaintext = json.dumps(
            {
                "wallets": [
                    {
                        "wallet_id": k.wallet_id,
                        "key_version": k.key_version,
                        "seed": _b64(bytes(k.signing_key)),
                    }
                    for k in keys
                ]
            }
        ).encode()
        document = {
            "format": KEYSTORE_FORMAT,
            "version": KEYSTORE_VERSION,
            "kdf": {
                "name": "argon2id",
                "opslimit": opslimit,
                "memlimit": memlimit,
                "salt": _b64(salt),
            },
            "cipher": {"name": "xsalsa20poly1305", "nonce": _b64(nonce)},
            "ciphertext": _b64(box.encrypt(plaintext, nonce).ciphertext),
        }
        _write_private(Path(path), json.dumps(document, indent=2).encode() + b"\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str], passphrase: str | bytes) -> Keystore:
        """Open a keystore; :class:`KeystoreError` if the passphrase is wrong, a byte was
        altered, or the file is not a keystore of a version this SDK reads."""
        try:
            with open(path, "rb") as f:
                raw = f.read(KEYSTORE_BYTES_MAX + 1)
        except OSError as exc:
            raise KeystoreError(f"cannot read keystore {os.fspath(path)!r}: {exc}") from exc
        if len(raw) > KEYSTORE_BYTES_MAX:
            raise KeystoreError(f"not a keystore: larger than {KEYSTORE_BYTES_MAX} bytes")
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise KeystoreError("not a keystore: the file is not JSON") from None
        box, nonce, ciphertext = _open_box(document, _passphrase(passphrase))
        try:
            plaintext = box.decrypt(ciphertext, nonce)
        except nacl.exceptions.CryptoError:
            raise KeystoreError(
                "cannot decrypt the keystore: wrong passphrase, or the file was altered"
            ) from None
        return cls(_read_wallets(plaintext))


def _open_box(document: Any, passphrase: bytes) -> tuple[nacl.secret.SecretBox, bytes, bytes]:
    """Check the header, derive the key: (box, nonce, ciphertext)."""
    if not isinstance(document, dict) or document.get("format") != KEYSTORE_FORMAT:
        raise KeystoreError(f'not a keystore: no "format": "{KEYSTORE_FORMAT}"')
    if document.get("version") != KEYSTORE_VERSION:
        raise KeystoreError(
            f"keystore version {document.get('version')!r} is not one this SDK reads "
            f"({KEYSTORE_VERSION})"
        )
    kdf, cipher = document.get("kdf"), document.get("cipher")
    if not isinstance(kdf, dict) or kdf.get("name") != "argon2id":
        raise KeystoreError("keystore kdf must be argon2id")
    if not isinstance(cipher, dict) or cipher.get("name") != "xsalsa20poly1305":
        raise KeystoreError("keystore cipher must be xsalsa20poly1305")
    opslimit, memlimit = kdf.get("opslimit"), kdf.get("memlimit")
    if not _limits_ok(opslimit, memlimit):
        raise KeystoreError("keystore argon2id limits are out of range")
    assert isinstance(opslimit, int) and isinstance(memlimit, int)
    salt = _unb64(kdf.get("salt"), "kdf.salt", _ARGON2ID.SALTBYTES)
    nonce = _unb64(cipher.get("nonce"), "cipher.nonce", nacl.secret.SecretBox.NONCE_SIZE)
    ciphertext = _unb64(document.get("ciphertext"), "ciphertext")
    box = nacl.secret.SecretBox(_derive(passphrase, salt, opslimit, memlimit))
    return box, nonce, ciphertext


def _read_wallets(plaintext: bytes) -> list[WalletKeys]:
    try:
        wallets = json.loads(plaintext)["wallets"]
        return [
            WalletKeys(
                w["wallet_id"],
                _unb64(w["seed"], "seed", _SEED_SIZE),
                key_version=w["key_version"],
            )
            for w in wallets
        ]
    except (ValueError, TypeError, KeyError) as exc:  # authenticated, yet malformed: a bug
        raise KeystoreError(f"keystore contents are malformed: {exc}") from None


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600: a temporary file beside it, fsynced, then
    renamed over it, so a crash leaves the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(directory)
    finally:
        os.close(directory)

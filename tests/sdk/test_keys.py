"""wallet_sdk.keys: wallet keys sign what the server checks; the keystore keeps them safe."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
import unicodedata
import uuid
from pathlib import Path
from typing import Any

import nacl.pwhash
import pytest
from nacl.signing import SigningKey

from ledger import signing
from wallet_sdk import KeystoreError, Money, WalletKeys
from wallet_sdk.keys import (
    KEYSTORE_FORMAT,
    KEYSTORE_VERSION,
    PAYMENT_CODE_TTL_MAX_S,
    Keystore,
    wallet_id_int,
)

FAST = {  # the cheapest argon2id libsodium allows: the format, not the cost, is under test
    "opslimit": nacl.pwhash.argon2id.OPSLIMIT_MIN,
    "memlimit": nacl.pwhash.argon2id.MEMLIMIT_MIN,
}
PASSPHRASE = "correct horse battery staple"


def test_generate_makes_a_uuid7_wallet_id_and_an_ed25519_key() -> None:
    keys = WalletKeys.generate()
    assert uuid.UUID(keys.wallet_id).version == 7
    assert uuid.UUID(keys.wallet_id).int == keys.wallet_id_int
    assert base64.b64decode(keys.public_key_b64) == keys.public_key
    assert keys.public_key == bytes(keys.signing_key.verify_key)
    assert keys.key_version == 1
    assert WalletKeys.generate().wallet_id != keys.wallet_id


def test_a_wallet_id_may_be_spelled_any_way() -> None:
    keys = WalletKeys.generate()
    seed = bytes(keys.signing_key)
    as_int = WalletKeys(keys.wallet_id_int, seed)
    as_str = WalletKeys(keys.wallet_id.replace("-", ""), seed)
    as_uuid = WalletKeys(uuid.UUID(keys.wallet_id), keys.signing_key)
    assert keys == as_int == as_str == as_uuid
    assert wallet_id_int(keys) == wallet_id_int(keys.wallet_id) == keys.wallet_id_int
    with pytest.raises(ValueError, match="not a wallet id"):
        wallet_id_int("alice")
    with pytest.raises(ValueError):
        wallet_id_int(0)
    with pytest.raises(TypeError):
        wallet_id_int(True)
    with pytest.raises(ValueError):
        WalletKeys(1, seed, key_version=0)


def test_repr_never_shows_the_secret() -> None:
    keys = WalletKeys.generate()
    seed = bytes(keys.signing_key)
    text = repr(keys)
    assert keys.wallet_id in text
    assert base64.b64encode(seed).decode() not in text and seed.hex() not in text


def test_payment_signatures_verify_with_the_servers_own_check() -> None:
    keys = WalletKeys.generate(wallet_id=uuid.uuid4().int)
    payee = uuid.uuid4().int
    auth = keys.sign_payment(
        payment_id=42, payee=payee, amount_fen=1230, expires_at_ms=10**13, currency="CNY"
    )
    raw = auth.encode()
    checked = signing.verify_payment(
        keys.public_key, raw, 42, keys.wallet_id_int, payee, 1230, "CNY"
    )
    assert checked.expires_at_ms == 10**13 and checked.key_version == 1
    with pytest.raises(signing.SignatureError):  # any other amount is another message
        signing.verify_payment(keys.public_key, raw, 42, keys.wallet_id_int, payee, 1231, "CNY")


def test_request_signatures_verify_and_are_never_reused() -> None:
    keys = WalletKeys.generate()
    seen: set[str] = set()
    last_ms = 0
    for _ in range(200):  # far more than one per millisecond
        headers = keys.sign_request("GET", "/v1/wallets/x?limit=2", b"")
        ts = int(headers["Wallet-Timestamp"])
        assert ts > last_ms
        last_ms = ts
        assert headers["Wallet-Id"] == keys.wallet_id
        message = signing.read_message("GET", "/v1/wallets/x?limit=2", ts, b"")
        signing.verify(keys.public_key, message, base64.b64decode(headers["Wallet-Signature"]))
        seen.add(headers["Wallet-Signature"])
    assert len(seen) == 200


# --- keystore -------------------------------------------------------------------------------------


# --- payment codes (customer-presented mode) ------------------------------------------------

KNOWN_SEED = bytes(range(32))
KNOWN_CODE = (  # seed 00..1f, key_version 3, code id 2**127 + 5, payer 42, ¥12.34, 1.7e12 ms
    "gAAAAAAAAAAAAAAAAAAABQAAAAAAAAAAAAAAAAAAACoAAAAAAAAE0kNOWQAAAYvP5WgAAANbDsR0EekW"
    "gbG8m05WabO6Z6cGaeO5IOd16fxaZWE-QI_LbAzs379SOBhqprMq6MBrS03bqdjGSs8Ds1KFwVsC"
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _ledgers(key: SigningKey, version: int, code_id: int, payer: int, fen: int, exp: int) -> str:
    return signing.sign_payment_code(key, version, code_id, payer, fen, "CNY", exp).encode()


def test_payment_code_bytes_are_the_ledgers_known_answer() -> None:
    key = SigningKey(KNOWN_SEED)
    args = (key, 3, (1 << 127) | 5, 42, 1_234, 1_700_000_000_000)
    assert _ledgers(*args) == KNOWN_CODE  # a fixed vector: the format never drifts
    assert len(KNOWN_CODE) == 156


def test_payment_code_is_what_the_ledger_decodes_and_verifies() -> None:
    keys = WalletKeys(uuid.uuid4(), SigningKey.generate(), key_version=2)
    before_ms = now_ms()
    text = keys.payment_code(Money.yuan("88.00"), ttl_s=90)
    code = signing.PaymentCode.decode(text)
    assert (code.payer, code.max_amount, code.currency, code.key_version) == (
        keys.wallet_id_int, 8_800, "CNY", 2,
    )  # fmt: skip
    assert before_ms + 90_000 <= code.expires_at_ms <= now_ms() + 90_000
    signing.verify(keys.public_key, code.message(), code.signature)
    assert code.encode() == text  # byte-identical, both ways
    assert _ledgers(keys.signing_key, 2, code.code_id, code.payer, 8_800, code.expires_at_ms) == (
        text
    )


def test_every_payment_code_has_a_fresh_random_code_id() -> None:
    keys = WalletKeys.generate()
    ids = {signing.PaymentCode.decode(keys.payment_code(100)).code_id for _ in range(50)}
    assert len(ids) == 50
    assert all(uuid.UUID(int=i).version == 4 for i in ids)  # random, not time-ordered


def test_payment_code_refuses_bad_amounts_and_lifetimes() -> None:
    keys = WalletKeys.generate()
    with pytest.raises(TypeError, match="float"):
        keys.payment_code(12.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        keys.payment_code(0)
    with pytest.raises(ValueError, match="at most"):
        keys.payment_code(1 << 64)
    for ttl_s in (0, -1, PAYMENT_CODE_TTL_MAX_S + 1):
        with pytest.raises(ValueError, match=f"ttl_s is 1..{PAYMENT_CODE_TTL_MAX_S} seconds"):
            keys.payment_code(100, ttl_s=ttl_s)
    with pytest.raises(TypeError, match="ttl_s"):
        keys.payment_code(100, ttl_s=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ttl_s"):
        keys.payment_code(100, ttl_s=True)
    for ttl_s in (1, PAYMENT_CODE_TTL_MAX_S):
        assert signing.PaymentCode.decode(keys.payment_code(Money(1), ttl_s=ttl_s))


@pytest.fixture
def two_keys() -> tuple[WalletKeys, WalletKeys]:
    return WalletKeys.generate(), WalletKeys(uuid.uuid4(), os.urandom(32), key_version=3)


@pytest.fixture
def saved(tmp_path: Path, two_keys: tuple[WalletKeys, WalletKeys]) -> Path:
    path = tmp_path / "wallet.keystore"
    Keystore.save(path, PASSPHRASE, *two_keys, **FAST)
    return path


def test_keystore_round_trip(saved: Path, two_keys: tuple[WalletKeys, WalletKeys]) -> None:
    store = Keystore.load(saved, PASSPHRASE)
    assert list(store) == list(two_keys) and len(store) == 2
    assert store[two_keys[1].wallet_id] == two_keys[1]
    assert store[two_keys[1].wallet_id].key_version == 3
    assert store[two_keys[0].wallet_id_int].public_key == two_keys[0].public_key
    with pytest.raises(KeyError):
        store[uuid.uuid4().int]


def test_keystore_file_is_private_and_holds_no_secret_in_clear(
    saved: Path, two_keys: tuple[WalletKeys, WalletKeys]
) -> None:
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    text = saved.read_text()
    for keys in two_keys:
        seed = bytes(keys.signing_key)
        assert base64.b64encode(seed).decode() not in text and seed.hex() not in text
    document = json.loads(text)
    assert document["format"] == KEYSTORE_FORMAT and document["version"] == KEYSTORE_VERSION
    assert document["kdf"]["name"] == "argon2id"
    assert document["kdf"]["opslimit"] == FAST["opslimit"]
    assert document["kdf"]["memlimit"] == FAST["memlimit"]
    assert len(base64.b64decode(document["kdf"]["salt"])) == nacl.pwhash.argon2id.SALTBYTES
    assert len(base64.b64decode(document["cipher"]["nonce"])) == 24
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]  # no temporary left behind


def test_saving_again_replaces_the_file_with_a_fresh_salt_and_mode_0600(
    saved: Path, two_keys: tuple[WalletKeys, WalletKeys]
) -> None:
    os.chmod(saved, 0o644)
    before = json.loads(saved.read_text())
    Keystore.save(saved, "another passphrase", two_keys[0], **FAST)
    after = json.loads(saved.read_text())
    assert after["kdf"]["salt"] != before["kdf"]["salt"]
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert list(Keystore.load(saved, "another passphrase")) == [two_keys[0]]


def test_wrong_passphrase_is_a_clear_keystore_error(saved: Path) -> None:
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        Keystore.load(saved, PASSPHRASE + "!")


def test_the_same_passphrase_typed_in_another_unicode_form_opens(tmp_path: Path) -> None:
    keys = WalletKeys.generate()
    path = tmp_path / "k"
    Keystore.save(path, unicodedata.normalize("NFC", "café 钱包"), keys, **FAST)
    assert list(Keystore.load(path, unicodedata.normalize("NFD", "café 钱包"))) == [keys]


def _tamper(path: Path, change: Any) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def _flip_b64(value: str, index: int = -1) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


TAMPERINGS = {
    "ciphertext byte": lambda d: d.update(ciphertext=_flip_b64(d["ciphertext"], 20)),
    "ciphertext MAC": lambda d: d.update(ciphertext=_flip_b64(d["ciphertext"], 0)),
    "salt": lambda d: d["kdf"].update(salt=_flip_b64(d["kdf"]["salt"])),
    "nonce": lambda d: d["cipher"].update(nonce=_flip_b64(d["cipher"]["nonce"])),
    "opslimit": lambda d: d["kdf"].update(opslimit=d["kdf"]["opslimit"] + 1),
    "truncated": lambda d: d.update(ciphertext=d["ciphertext"][:-8]),
}


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_any_altered_byte_fails_like_a_wrong_passphrase(saved: Path, name: str) -> None:
    _tamper(saved, TAMPERINGS[name])
    with pytest.raises(KeystoreError):
        Keystore.load(saved, PASSPHRASE)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(version=2), "version 2"),
        (lambda d: d.update(format="something.else"), "not a keystore"),
        (lambda d: d["kdf"].update(name="scrypt"), "argon2id"),
        (lambda d: d["cipher"].update(name="aes"), "xsalsa20poly1305"),
        (lambda d: d["kdf"].update(memlimit=1 << 40), "out of range"),  # refused, not allocated
        (lambda d: d["kdf"].update(opslimit="3"), "out of range"),
        (lambda d: d["kdf"].update(salt="not base64!"), "base64"),
        (lambda d: d["cipher"].update(nonce=base64.b64encode(b"short").decode()), "24 bytes"),
    ],
)
def test_a_malformed_header_is_named(saved: Path, change: Any, message: str) -> None:
    _tamper(saved, change)
    with pytest.raises(KeystoreError, match=message):
        Keystore.load(saved, PASSPHRASE)


def test_not_a_keystore_at_all(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00\xff not json")
    with pytest.raises(KeystoreError, match="not JSON"):
        Keystore.load(junk, PASSPHRASE)
    with pytest.raises(KeystoreError, match="cannot read"):
        Keystore.load(tmp_path / "missing", PASSPHRASE)
    big = tmp_path / "big"
    big.write_bytes(b" " * (2 << 20))
    with pytest.raises(KeystoreError, match="larger than"):
        Keystore.load(big, PASSPHRASE)


def test_save_refuses_nothing_to_save_and_empty_passphrases(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        Keystore.save(tmp_path / "k", PASSPHRASE, **FAST)
    with pytest.raises(ValueError, match="empty"):
        Keystore.save(tmp_path / "k", "", WalletKeys.generate(), **FAST)
    with pytest.raises(ValueError, match="opslimit"):
        Keystore.save(tmp_path / "k", PASSPHRASE, WalletKeys.generate(), opslimit=0, memlimit=0)
    assert not (tmp_path / "k").exists()

"""Seeding: the operator, wallets, keys and merchants a load profile needs, made in bulk and
cached so that repeated runs start in a second or two.

Everything goes through the public HTTP API with the central-bank key, as a pilot's own set-up
would: an operator is authorised, holds reserves and receives issued e-CNY; a class-1 *seed
wallet* is topped up from a bank account; shoppers' class-3 wallets are opened 1,000 per
request (``POST /v1/wallets/batch``) and funded 1,000 per request by signed payments from the
seed wallet (``POST /v1/payments/batch``); merchants sign up with their own wallets.

The cache (``.loadtest-cache/<ledger>.json``, mode 0600: it holds wallet keys) is keyed by the
server's address and the ledger's public key. A cached seed is checked against the server
before it is used, and shoppers whose balance has run low are topped back up from the seed
wallet, so run after run starts from the same place.

Run it alone to seed ahead of time (the profiles do it themselves otherwise)::

    python -m loadtests.seed --host http://127.0.0.1:8000 --cb-key lk_cb_...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from wallet_sdk import WalletKeys

CACHE_DIR: Final = Path(".loadtest-cache")
BATCH: Final = 1000
"""Wallets per ``POST /v1/wallets/batch`` and payments per ``POST /v1/payments/batch``."""
FUND_FEN: Final = 100_000
"""Each shopper starts a run with ¥1,000.00; one whose balance is below half is topped back up."""
MERCHANT_MCC: Final = "5812"  # eating places and restaurants


@dataclass
class Merchant:
    id: str
    key: str
    wallet: str


@dataclass
class Seed:
    host: str
    public_key: str
    operator: str
    operator_key: str
    seed_wallet: str
    seed_wallet_key: str
    shoppers: list[tuple[str, str]] = field(default_factory=list)  # (wallet id, key hex)
    merchants: list[Merchant] = field(default_factory=list)

    def shopper_keys(self) -> list[WalletKeys]:
        return [WalletKeys(w, bytes.fromhex(k)) for w, k in self.shoppers]

    def seed_keys(self) -> WalletKeys:
        return WalletKeys(self.seed_wallet, bytes.fromhex(self.seed_wallet_key))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Seed:
        merchants = [Merchant(**m) for m in data.pop("merchants")]
        shoppers = [(w, k) for w, k in data.pop("shoppers")]
        return cls(**data, shoppers=shoppers, merchants=merchants)


class SeedError(RuntimeError):
    """The server refused part of the seeding; the message names the call and the answer."""


class _Api:
    def __init__(self, host: str, key: str) -> None:
        self.http = httpx.Client(base_url=host, timeout=120)
        self.key = key

    def call(self, method: str, path: str, body: Any = None, key: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        response = self.http.request(method, path, json=body, headers=headers)
        if response.status_code not in (200, 201):
            raise SeedError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        answer = response.json()
        results = answer.get("results", []) if isinstance(answer, dict) else []
        refused = [r for r in results if r.get("result") != "ok"]
        if refused:
            raise SeedError(f"{method} {path}: {len(refused)} refused, e.g. {refused[0]}")
        return answer


def _id() -> str:
    return str(uuid.uuid4())


def cache_path(host: str, public_key: str, directory: Path = CACHE_DIR) -> Path:
    digest = hashlib.sha256(f"{host.rstrip('/')}\n{public_key}".encode()).hexdigest()[:16]
    return directory / f"{digest}.json"


def signed_payment(
    keys: WalletKeys, payee: str, amount: int, expires_in_s: int = 300
) -> dict[str, Any]:
    """The body of one signed payment (as ``POST /v1/payments`` takes it)."""
    import base64

    payment_id = uuid.uuid4()
    expires = time.time_ns() // 1_000_000 + expires_in_s * 1000
    auth = keys.sign_payment(
        payment_id=payment_id.int,
        payee=uuid.UUID(payee).int,
        amount_fen=amount,
        expires_at_ms=expires,
        currency="CNY",
    )
    return {
        "id": str(payment_id),
        "payer": keys.wallet_id,
        "payee": payee,
        "amount": amount,
        "expires_at_ms": expires,
        "key_version": keys.key_version,
        "signature": base64.b64encode(auth.signature).decode(),
        "kind": "payment",
    }


def seed(
    host: str,
    cb_key: str,
    shoppers: int = 1000,
    merchants: int = 20,
    say: Callable[[str], None] = print,
    cache_dir: Path = CACHE_DIR,
) -> Seed:
    """A seed for ``host``: from the cache when it still matches the server, else made now."""
    api = _Api(host, cb_key)
    public_key = str(api.call("GET", "/v1/public_key")["public_key"])
    path = cache_path(host, public_key, cache_dir)
    cached = _load(path, api, shoppers, merchants)
    if cached is not None:
        say(
            f"seed: reusing {path} ({len(cached.shoppers)} shoppers, "
            f"{len(cached.merchants)} merchants)"
        )
        _refill(api, cached, say)
        return cached
    started = time.monotonic()
    made = _make(api, host, public_key, shoppers, merchants, say)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(made), f)
    say(f"seed: made in {time.monotonic() - started:.1f} s, cached in {path}")
    return made


def load_cached(path: Path) -> Seed:
    return Seed.from_json(json.loads(path.read_text()))


def _load(path: Path, api: _Api, shoppers: int, merchants: int) -> Seed | None:
    if not path.exists():
        return None
    cached = load_cached(path)
    if len(cached.shoppers) < shoppers or len(cached.merchants) < merchants:
        return None
    try:  # the server still knows them (a fresh database behind the same key would not)
        api.call("GET", f"/v1/wallets/{cached.shoppers[-1][0]}", key=cached.operator_key)
        api.call("GET", "/v1/merchants/me", key=cached.merchants[-1].key)
    except SeedError:
        return None
    cached.shoppers, cached.merchants = cached.shoppers[:shoppers], cached.merchants[:merchants]
    return cached


def _make(
    api: _Api, host: str, public_key: str, shoppers: int, merchants: int, say: Callable[[str], None]
) -> Seed:
    operator = f"load_{uuid.uuid4().hex[:8]}"
    funding = shoppers * FUND_FEN * 4  # this run and a few refills
    op_key = str(api.call("POST", "/v1/api_keys", {"operator": operator})["key"])
    api.call("POST", "/v1/operators", {"operator": operator})
    float_fen = 2 * funding  # half for the seed wallet, half for the operators' top-ups
    reserves = {"id": _id(), "amount": float_fen}
    api.call("POST", f"/v1/operators/{operator}/reserve_deposits", reserves)
    api.call("POST", "/v1/issuances", {"id": _id(), "operator": operator, "amount": float_fen})
    say(f"seed: operator {operator} holds ¥{float_fen // 100:,} of e-CNY")

    seed_keys = WalletKeys.generate()
    bank = _bank_account(api, op_key, funding)
    api.call(
        "POST",
        "/v1/wallets",
        {
            "id": seed_keys.wallet_id,
            "class": 1,
            "public_key": seed_keys.public_key_b64,
            "kyc": {"name": "Load Seed", "id_number": "310101", "phone": "+8613000000000"},
            "linked_bank_account": bank,
        },
        key=op_key,
    )
    api.call(
        "POST",
        f"/v1/wallets/{seed_keys.wallet_id}/top_ups",
        {"id": _id(), "amount": funding},
        key=op_key,
    )
    made = Seed(
        host, public_key, operator, op_key, seed_keys.wallet_id, bytes(seed_keys.signing_key).hex()
    )

    keys = [WalletKeys.generate() for _ in range(shoppers)]
    for start in range(0, shoppers, BATCH):
        chunk = keys[start : start + BATCH]
        body: dict[str, Any] = {
            "wallets": [
                {
                    "id": k.wallet_id,
                    "class": 3,
                    "public_key": k.public_key_b64,
                    "kyc": {
                        "name": f"Shopper {start + i}",
                        "id_number": f"3101{start + i:06d}",
                        "phone": f"+86139{start + i:08d}",
                    },
                }
                for i, k in enumerate(chunk)
            ]
        }
        api.call("POST", "/v1/wallets/batch", body, key=op_key)
        _fund(api, seed_keys, [(k.wallet_id, FUND_FEN) for k in chunk])
        say(f"seed: shoppers {start + len(chunk)}/{shoppers} opened and funded")
    made.shoppers = [(k.wallet_id, bytes(k.signing_key).hex()) for k in keys]

    for i in range(merchants):
        body = {
            "name": f"Load Shop {i}",
            "city": "Shanghai",
            "mcc": MERCHANT_MCC,
            "kyc": {"name": f"Load Shop {i}", "id_number": f"91310000LOAD{i:05d}"},
            "linked_bank_account": _bank_account(api, op_key, 0),
        }
        shop = api.call("POST", "/v1/merchants", body, key=op_key)
        made.merchants.append(Merchant(shop["id"], shop["keys"]["test"], shop["wallet"]))
    say(f"seed: {merchants} merchants signed up")
    return made


def _bank_account(api: _Api, op_key: str, cash: int) -> str:
    bank = _id()
    api.call("POST", "/v1/bank_accounts", {"id": bank, "owner": "load test"}, key=op_key)
    if cash:
        deposit = {"id": _id(), "amount": cash}
        api.call("POST", f"/v1/bank_accounts/{bank}/deposits", deposit, key=op_key)
    return bank


def _fund(api: _Api, seed_keys: WalletKeys, grants: list[tuple[str, int]]) -> None:
    for start in range(0, len(grants), BATCH):
        payments = [
            signed_payment(seed_keys, w, amount) for w, amount in grants[start : start + BATCH]
        ]
        api.call("POST", "/v1/payments/batch", {"payments": payments})


def _refill(api: _Api, made: Seed, say: Callable[[str], None]) -> None:
    """Top shoppers below half their starting balance back up to it."""

    def balance(wallet: str) -> int:
        view = api.call("GET", f"/v1/wallets/{wallet}", key=made.operator_key)
        return int(view["balance_fen"])

    with ThreadPoolExecutor(8) as pool:
        balances = list(pool.map(balance, [w for w, _ in made.shoppers]))
    grants = [
        (w, FUND_FEN - b)
        for (w, _), b in zip(made.shoppers, balances, strict=True)
        if b < FUND_FEN // 2
    ]
    if not grants:
        return
    need = sum(amount for _, amount in grants)
    seed_balance = balance(made.seed_wallet)
    if seed_balance < need:
        raise SeedError(
            f"the seed wallet holds ¥{seed_balance / 100:,.2f}, refills need ¥{need / 100:,.2f}: "
            f"delete {CACHE_DIR} to seed afresh"
        )
    _fund(api, made.seed_keys(), grants)
    say(f"seed: topped {len(grants)} shoppers back up to ¥{FUND_FEN // 100:,}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="http://127.0.0.1:8000")
    parser.add_argument(
        "--cb-key", default=os.environ.get("LEDGER_CB_KEY"), help="or $LEDGER_CB_KEY"
    )
    parser.add_argument("--shoppers", type=int, default=1000)
    parser.add_argument("--merchants", type=int, default=20)
    args = parser.parse_args(argv)
    if not args.cb_key:
        parser.error(
            "--cb-key (or $LEDGER_CB_KEY) is needed: the central-bank key ledger serve printed"
        )
    seed(args.host, args.cb_key, args.shoppers, args.merchants)


if __name__ == "__main__":
    main()

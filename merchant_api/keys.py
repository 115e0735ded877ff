"""Merchant API keys and rate limits.

A key is ``sk_test_<id><secret>`` or ``sk_live_<id><secret>`` (12 hex digits of id, 48 of
secret): shown once, stored as SHA-256 of the secret. Test and live keys see separate objects:
an object made with one mode is invisible to the other (``livemode_mismatch``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from typing import Final

from sqlalchemy import Engine
from sqlmodel import Session

from ledger.auth import KeyCache
from merchant_api.models import Merchant, MerchantKey
from merchant_api.ratelimit import SharedBuckets

PREFIX: Final = {True: "sk_live_", False: "sk_test_"}
ID_HEX: Final = 12
RATE_PER_S: Final = float(os.environ.get("MERCHANT_RATE_LIMIT_PER_S", "100"))
RATE_BURST: Final = float(os.environ.get("MERCHANT_RATE_LIMIT_BURST", "200"))
"""Per key: a token bucket refilled at RATE_PER_S requests per second, holding RATE_BURST,
shared by every HTTP worker of a server (``merchant_api.ratelimit``)."""


class KeyError_(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class MerchantContext:
    """Who is calling: one merchant, in one mode, with one key."""

    merchant: Merchant
    livemode: bool
    key_id: str

    @property
    def merchant_id(self) -> str:
        return self.merchant.id

    @property
    def mode(self) -> int:
        return int(self.livemode)


def issue_key(engine: Engine, merchant_id: str, livemode: bool) -> str:
    key_id, secret = secrets.token_hex(ID_HEX // 2), secrets.token_hex(24)
    row = MerchantKey(
        id=key_id,
        merchant_id=merchant_id,
        livemode=int(livemode),
        secret_hash=hashlib.sha256(secret.encode()).digest(),
        created_at_ms=time.time_ns() // 1_000_000,
    )
    with Session(engine) as session:
        session.add(row)
        session.commit()
    return PREFIX[livemode] + key_id + secret


class KeyChecker:
    """Authenticates keys (with a short cache, ``keys``) and applies each key's rate limit."""

    def __init__(self, engine: Engine, buckets: SharedBuckets) -> None:
        self.engine = engine
        self.buckets = buckets
        self.keys: KeyCache[MerchantContext] = KeyCache()

    def authenticate(self, presented: str) -> MerchantContext:
        return self.keys.check(presented, self._check)

    async def authenticate_async(self, presented: str) -> MerchantContext:
        return await self.keys.check_async(presented, self._check)

    def _check(self, presented: str) -> MerchantContext:
        livemode = presented.startswith(PREFIX[True])
        if not (livemode or presented.startswith(PREFIX[False])):
            raise KeyError_("invalid_api_key", "merchant keys start with sk_test_ or sk_live_")
        rest = presented[len(PREFIX[livemode]) :]
        key_id, secret = rest[:ID_HEX], rest[ID_HEX:]
        with Session(self.engine) as session:
            row = session.get(MerchantKey, key_id)
            merchant = session.get(Merchant, row.merchant_id) if row is not None else None
        digest = hashlib.sha256(secret.encode()).digest()
        if row is None or merchant is None or not hmac.compare_digest(row.secret_hash, digest):
            raise KeyError_("invalid_api_key", "the API key is not valid")
        if row.revoked_at_ms is not None:
            raise KeyError_("api_key_revoked", "the API key has been revoked")
        if bool(row.livemode) != livemode:
            raise KeyError_("invalid_api_key", "the API key is not valid")
        return MerchantContext(merchant, livemode, key_id)

    def take(self, key_id: str) -> float:
        """Spend one request; 0 if allowed, else seconds to wait before the next one."""
        return self.buckets.take(key_id)

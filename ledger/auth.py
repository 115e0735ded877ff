"""API keys for the central bank and operators: shown once, stored hashed, scoped to a role.

A key looks like ``lk_cb_<key id>_<secret>`` (central bank) or ``lk_op_<key id>_<secret>``
(operator). Only SHA-256 of the 256-bit secret is stored: with that much entropy a fast hash is
what GitHub and Stripe use too, and it keeps authentication cheap on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from sqlalchemy import Engine, select, update
from sqlmodel import Session, col
from starlette.concurrency import run_in_threadpool

from ledger.store.schema import ApiKeyRow

ROLE_CENTRAL_BANK: Final = "central_bank"
ROLE_OPERATOR: Final = "operator"
ROLE_PREFIX: Final = {ROLE_CENTRAL_BANK: "cb", ROLE_OPERATOR: "op"}
CENTRAL_BANK_OPERATOR: Final = "central_bank"
"""The operator name of accounts the central bank holds itself."""
CACHE_TTL_S: Final = 10.0
"""A revoked key stops working within this many seconds in every server process."""


class AuthError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    role: str
    operator: str

    @property
    def is_central_bank(self) -> bool:
        return self.role == ROLE_CENTRAL_BANK


@dataclass(frozen=True, slots=True)
class NewKey:
    principal: Principal
    secret: str
    """The full key. Shown once; the ledger cannot show it again."""


def create_api_key(engine: Engine, role: str, operator: str, name: str = "") -> NewKey:
    if role not in ROLE_PREFIX:
        raise ValueError(f"unknown role {role!r}; use one of {sorted(ROLE_PREFIX)}")
    if role == ROLE_CENTRAL_BANK:
        operator = CENTRAL_BANK_OPERATOR
    elif operator == CENTRAL_BANK_OPERATOR:
        raise ValueError(
            f"{CENTRAL_BANK_OPERATOR!r} is reserved for the central bank's own accounts; "
            "an operator key with that name would see and debit them"
        )
    if not operator or len(operator) > 64 or not operator.isprintable():
        raise ValueError("operator must be 1..64 printable characters")
    key_id = secrets.token_hex(6)
    secret = secrets.token_hex(32)
    row = ApiKeyRow(
        id=key_id,
        secret_hash=hashlib.sha256(secret.encode()).digest(),
        role=role,
        operator=operator,
        name=name[:128],
        created_at=time.time_ns(),
    )
    with Session(engine) as session:
        session.add(row)
        session.commit()
    return NewKey(Principal(key_id, role, operator), f"lk_{ROLE_PREFIX[role]}_{key_id}_{secret}")


def revoke_api_key(engine: Engine, key_id: str) -> bool:
    with Session(engine) as session:
        result = session.execute(
            update(ApiKeyRow)
            .where(col(ApiKeyRow.id) == key_id, col(ApiKeyRow.revoked_at).is_(None))
            .values(revoked_at=time.time_ns())
        )
        session.commit()
        return bool(getattr(result, "rowcount", 0))


def has_central_bank_key(engine: Engine) -> bool:
    with Session(engine) as session:
        row = session.execute(
            select(col(ApiKeyRow.id)).where(
                col(ApiKeyRow.role) == ROLE_CENTRAL_BANK, col(ApiKeyRow.revoked_at).is_(None)
            )
        ).first()
        return row is not None


Checked = TypeVar("Checked")
KEY_CACHE_MAX: Final = 10_000
"""Keys a ``KeyCache`` remembers; past that it starts again empty."""


class KeyCache(Generic[Checked]):
    """What checking each presented API key found, remembered for ``CACHE_TTL_S`` seconds (a
    key that failed its check is not remembered). The ledger's and the merchant API's keys."""

    def __init__(self) -> None:
        self._found: dict[str, tuple[float, Checked]] = {}
        self._lock = threading.Lock()

    def get(self, presented: str) -> Checked | None:
        """What the key's check found in the last ``CACHE_TTL_S`` seconds, else None. No
        database read: callers on the event loop use this first."""
        hit = self._found.get(presented)
        if hit is not None and time.monotonic() - hit[0] < CACHE_TTL_S:
            return hit[1]
        return None

    def check(self, presented: str, check: Callable[[str], Checked]) -> Checked:
        """From memory, else ``check(presented)``, which raises for a key that is not valid."""
        found = self.get(presented)
        if found is not None:
            return found
        now = time.monotonic()
        found = check(presented)
        with self._lock:
            if len(self._found) > KEY_CACHE_MAX:
                self._found.clear()
            self._found[presented] = (now, found)
        return found

    async def check_async(self, presented: str, check: Callable[[str], Checked]) -> Checked:
        """``check`` for code on an event loop: from memory at once, else on a thread (a key
        not in memory is read from the database)."""
        found = self.get(presented)
        if found is not None:
            return found
        return await run_in_threadpool(self.check, presented, check)


class Authenticator:
    """Checks presented keys against the database, with a short cache (``keys``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.keys: KeyCache[Principal] = KeyCache()

    def authenticate(self, presented: str) -> Principal:
        return self.keys.check(presented, self._check)

    async def authenticate_async(self, presented: str) -> Principal:
        return await self.keys.check_async(presented, self._check)

    def _check(self, presented: str) -> Principal:
        parts = presented.split("_")
        if len(parts) != 4 or parts[0] != "lk" or parts[1] not in ROLE_PREFIX.values():
            raise AuthError("invalid_api_key", "the API key is malformed")
        _, _, key_id, secret = parts
        with Session(self.engine) as session:
            row = session.get(ApiKeyRow, key_id)
        digest = hashlib.sha256(secret.encode()).digest()
        if row is None or not hmac.compare_digest(row.secret_hash, digest):
            raise AuthError("invalid_api_key", "the API key is not valid")
        if row.revoked_at is not None:
            raise AuthError("api_key_revoked", "the API key has been revoked")
        return Principal(row.id, row.role, row.operator)

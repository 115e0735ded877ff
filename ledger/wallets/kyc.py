"""The operators' KYC store: who owns a wallet, encrypted at rest, never in the journal.

Each record (name, ID number, phone) is sealed with AES-256-GCM (``cryptography``) under a key
kept in a file readable only by its owner (created on first use, like the ledger's signing key).
The wallet id and the operator are bound in as associated data, so a record cannot be moved to
another wallet. Reading a record back is only done by ``Wallets.reveal``, which first writes the
look-up and its legal basis to the journal.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine
from sqlmodel import Session

from ledger.journal import id_bytes
from ledger.store.database import for_writes
from ledger.store.schema import KycRecordRow

KEY_BYTES = 32
KYC_FIELDS = ("name", "id_number", "phone")


class KycError(RuntimeError):
    pass


def load_or_create_key(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = AESGCM.generate_key(bit_length=256)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KycError(f"{path} is readable by others; run: chmod 600 {path}")
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise KycError(f"{path} does not hold a 256-bit key")
    return key


class KycStore:
    def __init__(self, engine: Engine, key: bytes) -> None:
        self.engine = engine
        self._aead = AESGCM(key)

    @staticmethod
    def _aad(wallet_id: int, operator: str) -> bytes:
        return id_bytes(wallet_id) + operator.encode()

    def put(self, wallet_id: int, operator: str, data: dict[str, str]) -> None:
        """Store (or replace, e.g. after more KYC on an upgrade) a wallet's owner details."""
        self.put_many([(wallet_id, operator, data)])

    def put_many(self, records: list[tuple[int, str, dict[str, str]]]) -> None:
        """Store several wallets' details (wallet id, operator, fields) in one transaction."""
        for _, _, data in records:
            unknown = set(data) - set(KYC_FIELDS)
            if unknown:
                raise KycError(f"unknown KYC fields {sorted(unknown)}")
        now = time.time_ns()
        with Session(for_writes(self.engine)) as session:  # reads, then writes
            for wallet_id, operator, data in records:
                nonce = os.urandom(12)
                sealed = self._aead.encrypt(
                    nonce, json.dumps(data, sort_keys=True).encode(), self._aad(wallet_id, operator)
                )
                row = session.get(KycRecordRow, id_bytes(wallet_id))
                if row is None:
                    row = KycRecordRow(
                        wallet_id=id_bytes(wallet_id),
                        operator=operator,
                        nonce=nonce,
                        ciphertext=sealed,
                        created_at=now,
                        updated_at=now,
                    )
                else:
                    row.nonce, row.ciphertext, row.updated_at = nonce, sealed, now
                session.add(row)
            session.commit()

    def get(self, wallet_id: int) -> dict[str, str] | None:
        with Session(self.engine) as session:
            row = session.get(KycRecordRow, id_bytes(wallet_id))
        if row is None:
            return None
        plain = self._aead.decrypt(row.nonce, row.ciphertext, self._aad(wallet_id, row.operator))
        data: dict[str, str] = json.loads(plain)
        return data

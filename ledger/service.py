"""The ledger as a running service: storage, identity, the writer, and reads.

``LedgerService.open`` starts the committer process (which takes the single-writer lock and
migrates the database), loads (or creates) the signing key, recovers the writer's state from the
database and starts the sequencer. The HTTP API, the benchmarks and the tests all go through this
one object.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Protocol

from nacl.signing import SigningKey
from sqlalchemy.engine import Engine as Database

from ledger import keys, signing
from ledger.domain import Account, CloseAccount, LimitSet, Transfer
from ledger.engine import (
    OP_CLOSE_ACCOUNTS,
    OP_CREATE_ACCOUNTS,
    OP_CREATE_TRANSFERS,
    Engine,
    OpResult,
    State,
)
from ledger.idfilter import IdFilter
from ledger.journal import Journal, MerkleLog, tile_node_reader
from ledger.sequencer import QUEUE_MAX_EVENTS, Sequencer
from ledger.store.committer import Committer
from ledger.store.database import make_engine
from ledger.store.writer import Store


class LedgerIdentityError(RuntimeError):
    """The key file or origin does not match the ledger stored in the database."""


class Ledger(Protocol):
    """What the HTTP API and the services built on the ledger use of it: ``LedgerService`` in
    the writer's own process, ``ledger.link.RemoteLedger`` in an HTTP worker process."""

    db: Database
    """The database, for reads and for components' own tables (never balances or journal)."""
    public_key: bytes
    origin: str

    def submit(
        self, op: int, items: list, operator: str | None = None, *, receipts: bool = False
    ) -> Future[OpResult]:
        """Queue one operation for the writer. ``receipts``: the answer will prove its entries
        (``OpResult.committed``), so that receipts need no database read."""
        ...

    async def execute(
        self, op: int, items: list, operator: str | None = None, *, receipts: bool = False
    ) -> OpResult: ...

    def clock_ns(self) -> int:
        """The ledger's clock (the sequencer stamps entries with it)."""
        ...

    def account(self, account_id: int) -> Account | None:
        """The writer's current account (with its wallet), or None. Read it; never change it."""
        ...

    def wallet_key(self, wallet_id: int, *, fresh: bool = False) -> tuple[int, bytes] | None:
        """The wallet's (key version, public key), or None if there is no such wallet. A worker
        may answer from memory unless ``fresh``: possibly an older version than the wallet's
        current one, which the engine refuses in sequence (``wallet_key_rotated``)."""
        ...

    def knows_wallet_key(self, wallet_id: int, key_version: int | None = None) -> bool:
        """Whether ``wallet_key`` answers for this key version (``None``: any) from this
        process's memory, at once. Otherwise it waits on the writer, which code on an event loop
        must not do."""
        ...

    def limits(self) -> tuple[str, dict[int, LimitSet]]:
        """The wallet limits in force: (version, limits by wallet class)."""
        ...

    def committed_size(self) -> int:
        """Entries committed so far."""
        ...

    def sign_statement(self, message: bytes) -> bytes:
        """The ledger's signature on a merchant statement's signed message."""
        ...

    def public_key_b64(self) -> str: ...


class LedgerService:
    def __init__(
        self,
        store: Store,
        committer: Committer,
        key: SigningKey,
        origin: str,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        queue_max_events: int = QUEUE_MAX_EVENTS,
    ) -> None:
        self.store = store
        self.db = store.engine
        self.key = key
        self.public_key = bytes(key.verify_key)
        self.origin = origin
        self.committer = committer
        self.clock_ns = clock_ns
        """The ledger's clock (the sequencer stamps entries with it); tests may set it."""
        engine, journal = self._load()
        self.sequencer = Sequencer(
            engine,
            journal,
            committer.commit,
            store.load_transfers,
            self._load,
            IdFilter(store.iter_transfer_ids()),
            clock_ns=clock_ns,
            queue_max_events=queue_max_events,
        )
        self.sequencer.start()

    @classmethod
    def open(
        cls,
        database_url: str,
        key_file: Path,
        origin: str | None = None,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        queue_max_events: int = QUEUE_MAX_EVENTS,
        extra_migrations: Sequence[Path] = (),
    ) -> LedgerService:
        """Open the ledger; ``extra_migrations`` are the schema branches of components built
        on it (the merchant API's tables), migrated by the committer with the ledger's own."""
        committer = Committer(database_url, extra_migrations)  # the writer lock, the schema
        engine = make_engine(database_url)
        try:
            key = keys.load_or_create(key_file)
            store = Store(engine)
            origin = _identity(store, key, origin, key_file)
        except BaseException:
            committer.close()
            engine.dispose()
            raise
        return cls(
            store, committer, key, origin, clock_ns=clock_ns, queue_max_events=queue_max_events
        )

    def _load(self) -> tuple[Engine, Journal]:
        """Rebuild the writer's in-memory state from the database (at start, and after a
        failed commit, once a live committer holds the lock)."""
        self.committer.ensure_running()
        rec = self.store.recover()
        state = State()
        for a in rec.accounts:
            state.accounts[a.id] = a
            for i, v in enumerate(a.balances()):
                state.totals[i] += v
        state.next_account_n = max((a.n for a in rec.accounts), default=0) + 1
        for t in rec.live_pending:
            state.live_pending[t.id] = t
            if t.timeout_s:
                heapq.heappush(state.expiries, (t.expires_at(), t.id))
        state.next_seq = rec.size
        for w in rec.wallets:
            state.accounts[w.id].wallet = w
        if rec.limits is not None:
            state.limits_version, state.limits = rec.limits
        log = MerkleLog.restore(rec.size, tile_node_reader(self.store.get_tile), rec.last_tiles)
        if rec.checkpoint is not None:
            state.last_timestamp = rec.checkpoint.timestamp
            if rec.checkpoint.size != rec.size or rec.checkpoint.root != log.root():
                raise LedgerIdentityError(
                    f"the stored Merkle tree (size {rec.size}) does not match the last checkpoint "
                    f"(size {rec.checkpoint.size}); run `ledger verify`"
                )
        return Engine(state), Journal(log, self.key, self.origin)

    # -- writes -----------------------------------------------------------------------------------

    def submit(
        self, op: int, items: list, operator: str | None = None, *, receipts: bool = False
    ) -> Future[OpResult]:
        """Queue one operation; the answer always carries the committed batch (``receipts``
        is for ``RemoteLedger``, which proves entries only when asked)."""
        return self.sequencer.submit(op, items, operator)

    def create_accounts(self, accounts: list[Account]) -> OpResult:
        return self.submit(OP_CREATE_ACCOUNTS, accounts).result()

    def create_transfers(self, transfers: list[Transfer]) -> OpResult:
        return self.submit(OP_CREATE_TRANSFERS, transfers).result()

    def close_accounts(self, closes: list[CloseAccount]) -> OpResult:
        return self.submit(OP_CLOSE_ACCOUNTS, closes).result()

    async def execute(
        self, op: int, items: list, operator: str | None = None, *, receipts: bool = False
    ) -> OpResult:
        """Submit from async code on behalf of ``operator`` (None: the central bank); raises
        Overloaded at once when the queue is full."""
        return await asyncio.wrap_future(self.submit(op, items, operator))

    # -- reads of the writer's memory (safe from other threads: single dict lookups) -----------

    def account(self, account_id: int) -> Account | None:
        return self.sequencer.engine.state.accounts.get(account_id)

    def wallet_key(self, wallet_id: int, *, fresh: bool = False) -> tuple[int, bytes] | None:
        account = self.account(wallet_id)
        wallet = account.wallet if account is not None else None
        return (wallet.key_version, wallet.public_key) if wallet is not None else None

    def knows_wallet_key(self, wallet_id: int, key_version: int | None = None) -> bool:
        return True  # the writer's own memory: wallet_key never waits

    def limits(self) -> tuple[str, dict[int, LimitSet]]:
        state = self.sequencer.engine.state
        return state.limits_version, state.limits

    def committed_size(self) -> int:
        return self.sequencer.committed_size

    def sign_statement(self, message: bytes) -> bytes:
        if not message.startswith(signing.STATEMENT_LABEL):  # a worker must not get checkpoints
            raise ValueError("the ledger's key signs statements here, nothing else")
        return self.key.sign(message).signature

    # -- identity ---------------------------------------------------------------------------------

    def public_key_b64(self) -> str:
        return base64.b64encode(self.public_key).decode()

    def close(self) -> None:
        try:
            self.sequencer.close()
        finally:
            self.committer.close()
            self.store.close()
            self.store.engine.dispose()

    def __enter__(self) -> LedgerService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _identity(store: Store, key: SigningKey, origin: str | None, key_file: Path) -> str:
    """First start records the origin and public key; later starts must match them."""
    public = base64.b64encode(bytes(key.verify_key)).decode()
    stored_key = store.get_meta("public_key")
    stored_origin = store.get_meta("origin")
    if stored_key is None:
        origin = origin or f"ecny-ledger.local/{secrets.token_hex(4)}"
        store.set_meta("origin", origin)
        store.set_meta("public_key", public)
        store.set_meta("created_at", str(time.time_ns()))
        return origin
    if stored_key != public:
        raise LedgerIdentityError(
            f"{key_file} does not belong to this ledger: its public key is {public}, the "
            f"ledger's is {stored_key}. Point LEDGER_KEY_FILE at the ledger's key."
        )
    assert stored_origin is not None
    if origin and origin != stored_origin:
        raise LedgerIdentityError(
            f"this ledger's origin is {stored_origin!r}, not {origin!r}; unset LEDGER_ORIGIN"
        )
    return stored_origin

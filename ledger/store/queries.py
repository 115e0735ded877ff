"""Reads for the API: accounts, transfers, history, balances as of a sequence number, proofs.

Readers never take the writer's lock: they see what the last committed batch wrote (WAL on
SQLite, MVCC on PostgreSQL). Proofs come from stored tiles, so they cost O(log n) reads whatever
the size of the log; complete tiles never change and are cached.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Engine, text

from ledger import checkpoint, daily, entry, merkle
from ledger.domain import PendingState, Result
from ledger.journal import BALANCES, TILE_WIDTH, id_bytes, tile_node_reader
from ledger.store.writer import last_checkpoint

TILE_CACHE_MAX: Final = 4096
NODE_CACHE_MAX: Final = 32768
"""Complete-subtree hashes computed from tiles (about 200 bytes each with the key): a receipt's
proof shares most of its nodes with the receipts before it, so each is hashed once."""
"""Complete tiles kept in memory per process (8 KiB each: 32 MiB at most)."""


@dataclass(frozen=True, slots=True)
class AccountView:
    id: int
    n: int
    ledger: int
    code: int
    flags: int
    owner: str
    operator: str
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    timestamp: int
    seq: int


@dataclass(frozen=True, slots=True)
class EntryView:
    seq: int
    body: bytes
    entry: entry.Entry


@dataclass(frozen=True, slots=True)
class TransferView:
    """A stored transfer: accepted (with its entry) or a recorded rejection."""

    entry: entry.TransferEntry
    seq: int | None
    result: Result
    state: PendingState | None


@dataclass(frozen=True, slots=True)
class Balance:
    seq: int
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int


HISTORY_PAGE: Final = 1000


class Reader:
    def __init__(self, engine: Engine, origin: str) -> None:
        self.engine = engine
        self.origin = origin
        self._tiles: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._tiles_lock = threading.Lock()
        self._nodes: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._from_tiles = tile_node_reader(self._tile)

    def _one(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).first()

    def _all(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params))

    # -- accounts ---------------------------------------------------------------------------------

    def days(self, account_n: int, first_day: int) -> dict[int, tuple[int, ...]]:
        """An account's totals per CST day from ``first_day`` on (``ledger.daily.FIELDS``):
        one indexed read of at most a row a day, whatever the account's traffic."""
        rows = self._all(
            f"SELECT day, {', '.join(daily.FIELDS)} FROM account_days "
            "WHERE account_n = :n AND day >= :d",
            n=account_n,
            d=first_day,
        )
        return {row[0]: tuple(row[1:]) for row in rows}

    def account(self, account_id: int) -> AccountView | None:
        row = self._one("SELECT * FROM accounts WHERE id = :id", id=id_bytes(account_id))
        if row is None:
            return None
        m = row._mapping
        return AccountView(
            int.from_bytes(m["id"], "big"),
            m["n"],
            m["ledger"],
            m["code"],
            m["flags"],
            m["owner"],
            m["operator"],
            m["debits_pending"],
            m["debits_posted"],
            m["credits_pending"],
            m["credits_posted"],
            m["timestamp"],
            m["seq"],
        )

    def circulation(self, codes: list[int]) -> dict[str, object]:
        """Net balances of the accounts with these codes (e-CNY), in total and by operator."""
        marks = ", ".join(str(int(c)) for c in codes)
        rows = self._all(
            "SELECT operator, SUM(credits_posted - debits_posted) FROM accounts "
            f"WHERE code IN ({marks}) GROUP BY operator ORDER BY operator"
        )
        by_operator = {operator: int(total) for operator, total in rows}
        return {"circulation_fen": sum(by_operator.values()), "by_operator": by_operator}

    def operator_of(self, account_n: int) -> str | None:
        row = self._one("SELECT operator FROM accounts WHERE n = :n", n=account_n)
        return row[0] if row else None

    def history(self, account_n: int, limit: int, before_seq: int | None) -> list[EntryView]:
        """Entries touching an account, newest first, with seq < before_seq."""
        cursor = before_seq if before_seq is not None else 2**62
        rows = []
        for column in ("debit_n", "credit_n"):
            rows += self._all(
                f"SELECT seq, body FROM journal_entries WHERE {column} = :n AND seq < :c "
                "ORDER BY seq DESC LIMIT :l",
                n=account_n,
                c=cursor,
                l=limit,
            )
        rows.sort(key=lambda r: r[0], reverse=True)
        return [
            EntryView(seq, bytes(body), entry.decode(bytes(body))) for seq, body in rows[:limit]
        ]

    def records(self, account_n: int, types: frozenset[str]) -> list[tuple[int, entry.RecordEntry]]:
        """The journal records (kind 5) attached to an account, of these types, oldest first."""
        rows = self._all(
            "SELECT seq, body FROM journal_entries WHERE debit_n = :n AND kind = 5 ORDER BY seq",
            n=account_n,
        )
        out = []
        for seq, body in rows:
            decoded = entry.decode(bytes(body))
            if isinstance(decoded, entry.RecordEntry) and decoded.type in types:
                out.append((seq, decoded))
        return out

    def records_of_kind(
        self, flags: tuple[int, ...], after_seq: int = 0
    ) -> list[tuple[int, entry.RecordEntry]]:
        """Every journal record whose ``flags`` column is one of ``flags`` (record types, see
        ``ledger.engine.RECORD_TYPES``) after ``after_seq``, oldest first, through the records
        index. One query, so records of the several types come from one snapshot."""
        marks = ", ".join(f":f{i}" for i in range(len(flags)))
        rows = self._all(
            f"SELECT seq, body FROM journal_entries WHERE kind = 5 AND flags IN ({marks}) "
            "AND seq > :s ORDER BY seq",
            s=after_seq,
            **{f"f{i}": f for i, f in enumerate(flags)},
        )
        out = []
        for seq, body in rows:
            decoded = entry.decode(bytes(body))
            assert isinstance(decoded, entry.RecordEntry)
            out.append((seq, decoded))
        return out

    def transfers_since(self, account_n: int, since_ns: int) -> list[entry.TransferEntry]:
        """Transfer entries touching an account with a timestamp after ``since_ns``, newest
        first. Timestamps grow with seq, so the read walks back page by page and stops at the
        first older entry: it costs the window, not the account's whole history."""
        out: list[entry.TransferEntry] = []
        cursor = 2**62
        while True:
            page = self.history(account_n, HISTORY_PAGE, cursor)
            for view in page:
                if view.entry.timestamp <= since_ns:
                    return out
                if isinstance(view.entry, entry.TransferEntry):
                    out.append(view.entry)
            if len(page) < HISTORY_PAGE:
                return out
            cursor = page[-1].seq

    def balance_as_of(self, account_n: int, seq: int) -> Balance | None:
        """Balances right after entry ``seq`` (or the last entry before it touching the account);
        None if the account did not exist yet."""
        best = None
        for column, side in (("debit_n", 0), ("credit_n", 1)):
            row = self._one(
                f"SELECT seq, kind, balances FROM journal_entries WHERE {column} = :n "
                "AND seq <= :s ORDER BY seq DESC LIMIT 1",
                n=account_n,
                s=seq,
            )
            if row is not None and (best is None or row[0] > best[0][0]):
                best = (row, side)
        if best is None:
            return None
        (at, kind, packed), side = best
        if packed is None:  # account_created / account_closed carry no movement
            if kind == entry.KIND_ACCOUNT_CREATED:
                return Balance(at, 0, 0, 0, 0)
            return self._balance_before_close(account_n, at)
        values = BALANCES.unpack(bytes(packed))[4 * side : 4 * side + 4]
        return Balance(at, *values)

    def _balance_before_close(self, account_n: int, close_seq: int) -> Balance | None:
        previous = self.balance_as_of(account_n, close_seq - 1)
        return None if previous is None else dataclasses.replace(previous, seq=close_seq)

    # -- transfers and entries --------------------------------------------------------------------

    def transfer(self, transfer_id: int) -> TransferView | None:
        key = id_bytes(transfer_id)
        row = self._one(
            "SELECT seq, body FROM journal_entries WHERE ref_id = :r AND kind = 2", r=key
        )
        if row is None:
            rejected = self._one("SELECT result, body FROM rejected_transfers WHERE id = :r", r=key)
            if rejected is None:
                return None
            e = entry.decode(bytes(rejected[1]))
            assert isinstance(e, entry.TransferEntry)
            return TransferView(e, None, Result(rejected[0]), None)
        e = entry.decode(bytes(row[1]))
        assert isinstance(e, entry.TransferEntry)
        state = None
        if e.flags & 2:  # pending: find what became of it
            state = PendingState.PENDING
            fate = self._one("SELECT kind, flags FROM journal_entries WHERE pending_id = :r", r=key)
            if fate is not None:
                kind, flags = fate
                if kind == entry.KIND_PENDING_EXPIRED:
                    state = PendingState.EXPIRED
                else:
                    state = PendingState.POSTED if flags & 4 else PendingState.VOIDED
        return TransferView(e, row[0], Result.OK, state)

    def account_closed(self, account_id: int) -> EntryView | None:
        """The entry that closed an account; None while it is open."""
        row = self._one(
            "SELECT seq, body FROM journal_entries WHERE ref_id = :r AND kind = :k",
            r=id_bytes(account_id),
            k=entry.KIND_ACCOUNT_CLOSED,
        )
        if row is None:
            return None
        return EntryView(row[0], bytes(row[1]), entry.decode(bytes(row[1])))

    def entry_at(self, seq: int) -> EntryView | None:
        row = self._one("SELECT seq, body FROM journal_entries WHERE seq = :s", s=seq)
        if row is None:
            return None
        return EntryView(row[0], bytes(row[1]), entry.decode(bytes(row[1])))

    def entry_accounts(self, seq: int) -> tuple[int | None, int | None]:
        row = self._one("SELECT debit_n, credit_n FROM journal_entries WHERE seq = :s", s=seq)
        return (row[0], row[1]) if row else (None, None)

    # -- checkpoints and proofs -------------------------------------------------------------------

    def latest_checkpoint(self) -> checkpoint.Checkpoint | None:
        with self.engine.connect() as conn:
            return last_checkpoint(conn, self.origin)

    def checkpoint_at(self, size: int) -> checkpoint.Checkpoint | None:
        row = self._one(
            "SELECT size, root, timestamp, signature FROM checkpoints WHERE size = :s", s=size
        )
        if row is None:
            return None
        return checkpoint.Checkpoint(self.origin, row[0], bytes(row[1]), row[2], bytes(row[3]))

    def _tile(self, level: int, idx: int) -> bytes:
        key = (level, idx)
        with self._tiles_lock:
            cached = self._tiles.get(key)
            if cached is not None:
                self._tiles.move_to_end(key)
                return cached
        row = self._one(
            "SELECT hashes FROM merkle_tiles WHERE level = :l AND idx = :i", l=level, i=idx
        )
        if row is None:
            raise LookupError(f"no Merkle tile ({level}, {idx})")
        data = bytes(row[0])
        if len(data) == TILE_WIDTH * merkle.HASH_SIZE:  # complete tiles never change
            with self._tiles_lock:
                self._tiles[key] = data
                if len(self._tiles) > TILE_CACHE_MAX:
                    self._tiles.popitem(last=False)
        return data

    def _node(self, level: int, index: int) -> bytes:
        """A complete subtree's hash (it never changes once the subtree is complete, and the
        proof builders ask only for complete ones)."""
        key = (level, index)
        with self._tiles_lock:
            cached = self._nodes.get(key)
            if cached is not None:
                self._nodes.move_to_end(key)
                return cached
        value = self._from_tiles(level, index)
        with self._tiles_lock:
            self._nodes[key] = value
            if len(self._nodes) > NODE_CACHE_MAX:
                self._nodes.popitem(last=False)
        return value

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return merkle.inclusion_proof_from_nodes(index, size, self._node)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        return merkle.consistency_proof_from_nodes(old_size, new_size, self._node)

    def root_at(self, size: int) -> bytes:
        return merkle.root_from_nodes(size, self._node)

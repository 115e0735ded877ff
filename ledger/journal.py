"""The journal: turns an engine outcome into canonical entries, extends the Merkle log, signs.

The writer keeps the tree's right edge (its *frontier*) in memory and stores complete-subtree
hashes as *tiles* (transparency-dev's layout): tile (L, N) holds the hashes of tree level 8·L,
nodes 256·N .. 256·N+255. Any complete subtree is then one tile read plus at most 127 hashes, so
proofs over millions of entries never rebuild the tree. A tile fills up over several batches;
the partial one is rewritten each batch (tiles are an index derived from the journal, which
``ledger verify`` recomputes; the journal tables themselves are append-only).
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from nacl.signing import SigningKey

from ledger import checkpoint, daily, merkle
from ledger.domain import RESULT_PLACEHOLDER, TOMBSTONE_RESULT, Account, Result, Transfer, Wallet
from ledger.engine import Outcome
from ledger.entry import (
    KIND_ACCOUNT_CLOSED,
    KIND_ACCOUNT_CREATED,
    KIND_PENDING_EXPIRED,
    KIND_RECORD,
    KIND_TRANSFER,
    canonical_json,
    encode_account_closed,
    encode_account_created,
    encode_pending_expired,
    encode_record,
    encode_transfer,
)

_IDENTIFIER: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
TILE_HEIGHT: Final = 8
TILE_WIDTH: Final = 1 << TILE_HEIGHT
_EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
BALANCES = struct.Struct(">8q")
"""Packed balances after an entry: debit account's (dp, dpo, cp, cpo), then credit account's."""


def id_bytes(value: int) -> bytes:
    """128-bit id as 16 big-endian bytes: how ids are stored and indexed."""
    return value.to_bytes(16, "big")


class MerkleLog:
    """The writer's Merkle tree: frontier hashes plus the tile each tile level is filling."""

    def __init__(self, size: int = 0, frontier: list[bytes] | None = None) -> None:
        self.size = size
        self.frontier: list[bytes] = frontier or []  # one hash per set bit of size, high to low
        assert len(self.frontier) == size.bit_count()
        self.partial: dict[int, list[bytes]] = {}  # tile level -> hashes of its unfinished tile
        self._dirty: dict[tuple[int, int], bytes] = {}

    @classmethod
    def restore(cls, size: int, node: merkle.NodeReader, tiles: dict[int, bytes]) -> MerkleLog:
        """Rebuild from stored tiles: ``tiles`` maps tile level -> bytes of its last tile."""
        frontier = []
        for level in reversed(range(size.bit_length())):
            if size >> level & 1:
                frontier.append(node(level, (size >> level) - 1))
        log = cls(size, frontier)
        for tile_level, data in tiles.items():
            width = len(data) // merkle.HASH_SIZE
            if width < TILE_WIDTH:
                hashes = [data[i : i + 32] for i in range(0, len(data), 32)]
                log.partial[tile_level] = hashes
        return log

    def append(self, leaf_hashes: Iterable[bytes]) -> None:
        sha = hashlib.sha256
        frontier, partial = self.frontier, self.partial
        size = self.size
        level0 = partial.setdefault(0, [])
        for h in leaf_hashes:
            level0.append(h)
            if len(level0) == TILE_WIDTH:
                self._finish_tile(0, size >> TILE_HEIGHT, level0)
                level0 = partial[0] = []
            level, n = 0, size
            while n & 1:
                h = sha(b"\x01" + frontier.pop() + h).digest()
                level += 1
                n >>= 1
                if level % TILE_HEIGHT == 0:
                    self._add_tile_node(level // TILE_HEIGHT, size >> level, h)
            frontier.append(h)
            size += 1
        self.size = size
        if level0:
            self._dirty[(0, size >> TILE_HEIGHT)] = b"".join(level0)

    def _add_tile_node(self, tile_level: int, index: int, h: bytes) -> None:
        hashes = self.partial.setdefault(tile_level, [])
        hashes.append(h)
        assert index % TILE_WIDTH == len(hashes) - 1, "tile nodes arrive in order"
        tile = index >> TILE_HEIGHT
        if len(hashes) == TILE_WIDTH:
            self._finish_tile(tile_level, tile, hashes)
            self.partial[tile_level] = []
        else:
            self._dirty[(tile_level, tile)] = b"".join(hashes)

    def _finish_tile(self, tile_level: int, tile: int, hashes: list[bytes]) -> None:
        self._dirty[(tile_level, tile)] = b"".join(hashes)

    def take_dirty_tiles(self) -> list[tuple[int, int, bytes]]:
        """Tiles written since the last call, to persist with the batch."""
        out = [(lvl, idx, data) for (lvl, idx), data in self._dirty.items()]
        self._dirty = {}
        return out

    def root(self) -> bytes:
        if not self.frontier:
            return _EMPTY_ROOT
        sha = hashlib.sha256
        h = self.frontier[-1]
        for left in reversed(self.frontier[:-1]):
            h = sha(b"\x01" + left + h).digest()
        return h


def tile_node_reader(get_tile: Callable[[int, int], bytes]) -> merkle.NodeReader:
    """A NodeReader over tiles: ``get_tile(tile_level, index)`` returns the tile's bytes."""

    def node(level: int, index: int) -> bytes:
        tile_level, rest = divmod(level, TILE_HEIGHT)
        first = index << rest  # first node of tree level 8*tile_level under this subtree
        data = get_tile(tile_level, first >> TILE_HEIGHT)
        at = (first % TILE_WIDTH) * 32
        hashes = [data[i : i + 32] for i in range(at, at + (32 << rest), 32)]
        if len(hashes) != 1 << rest or any(len(h) != 32 for h in hashes):
            raise LookupError(
                f"tile ({tile_level}, {first >> TILE_HEIGHT}) lacks node {level}/{index}"
            )
        while len(hashes) > 1:
            hashes = [merkle.node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
        return hashes[0]

    return node


@dataclass(slots=True)
class BatchRows:
    """Everything one batch writes, as plain tuples, built in the writer thread.

    Snapshotted here because the engine goes on to the next batch while this one commits."""

    entries: list[tuple]
    """(seq, kind, ref_id, pending_id, debit_n, credit_n, flags, body, balances)"""
    new_accounts: list[tuple]
    """(n, id, ledger, code, flags, owner, operator, dp, dpo, cp, cpo, timestamp, seq)"""
    account_balances: list[tuple]
    """(dp, dpo, cp, cpo, flags, n) of accounts that existed before the batch"""
    rejected: list[tuple]
    """(id, result, body, detail JSON or None)"""
    wallets: list[tuple]
    """Wallet rows to upsert (see ``wallet_row``)"""
    wallet_spending: list[tuple]
    """(day, spent_day, year, spent_year, id) of wallets that only paid: their spending counters
    alone are updated (a whole-row upsert per payment cost the database a conflict check, an
    executor start-up and twenty columns)"""
    attachments: list[tuple[str, tuple[str, ...], tuple]]
    """(table, columns, values) rows other components asked to commit with the outcome"""
    tiles: list[tuple[int, int, bytes]]
    day_totals: list[tuple]
    """(account n, CST day, takings, payments, refunds, inflow, outflow, net) to add to
    ``account_days`` (see ``ledger.daily``)"""
    checkpoint: checkpoint.Checkpoint | None
    """None when the batch added no entry (only replays or rejections): nothing new to sign."""

    def is_empty(self) -> bool:
        return not (
            self.entries
            or self.new_accounts
            or self.account_balances
            or self.rejected
            or self.wallets
            or self.wallet_spending
            or self.attachments
            or self.day_totals
        )


class Journal:
    """Encodes entries, extends the tree and signs a checkpoint per batch. Writer-thread only."""

    def __init__(self, log: MerkleLog, key: SigningKey, origin: str) -> None:
        self.log = log
        self.key = key
        self.origin = origin

    def prepare(self, out: Outcome) -> tuple[BatchRows, merkle.AppendedLeaves]:
        """The batch's rows, and what proves its entries from memory once committed."""
        rows, leaves, days = self._entry_rows(out)
        appended = merkle.AppendedLeaves(self.log.size, self.log.frontier, leaves)
        self.log.append(leaves)
        assert self.log.size == out.first_seq + len(rows), "journal and engine disagree on seq"
        signed = None
        if rows:  # a batch of only replays and rejections adds nothing to sign
            root = self.log.root()
            signed = checkpoint.sign(self.key, self.origin, self.log.size, root, out.last_timestamp)
        new = {a.n for a in out.new_accounts}
        return BatchRows(
            entries=rows,
            new_accounts=[_account_row(a) for a in out.new_accounts],
            account_balances=[
                (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted, a.flags, n)
                for n, a in out.touched.items()
                if n not in new
            ],
            rejected=[
                (id_bytes(t.id), t.result, transfer_body(t), _detail(t)) for t in out.rejected
            ],
            wallets=[wallet_row(w) for w in out.wallets],
            wallet_spending=[
                (w.day, w.spent_day, w.year, w.spent_year, id_bytes(w.id)) for w in out.spent
            ],
            attachments=_attachments(out),
            tiles=self.log.take_dirty_tiles(),
            day_totals=daily.rows(days),
            checkpoint=signed,
        ), appended

    @staticmethod
    def _entry_rows(
        out: Outcome,
    ) -> tuple[list[tuple], list[bytes], dict[tuple[int, int], list[int]]]:
        """Canonical bytes, leaf hash and database row of every entry, and the day totals of
        the accounts they move. The hot loop of the journal: transfers first, with no per-row
        checks beyond what the types guarantee."""
        rows: list[tuple] = []
        leaves: list[bytes] = []
        days: dict[tuple[int, int], list[int]] = {}
        touched = out.touched  # by account n: every account a transfer of the batch moved
        seq = out.first_seq
        pack = BALANCES.pack
        sha = hashlib.sha256
        row: tuple  # compiled with mypyc: the two shapes of row must share one declared type
        for kind, obj, captured in out.entries:
            if kind == KIND_TRANSFER:
                t: Transfer = obj  # type: ignore[assignment]
                body = transfer_body(t)
                pending = t.pending_id.to_bytes(16, "big") if t.pending_id else None
                row = (
                    seq, kind, t.id.to_bytes(16, "big"), pending, captured[0], captured[1],  # type: ignore[index]
                    t.flags, body, pack(*captured[2:]),  # type: ignore[index]
                )  # fmt: skip
                sides: tuple = captured  # type: ignore[assignment]
                dr, cr = touched.get(sides[0]), touched.get(sides[1])
                daily.add_transfer(
                    days, sides[0], sides[1], t.amount, t.code, t.flags, t.timestamp,
                    dr is not None and daily.tracked(dr.code),
                    cr is not None and daily.tracked(cr.code),
                )  # fmt: skip
            else:
                row = _other_row(seq, kind, obj, captured)
                body = row[7]
            rows.append(row)
            leaves.append(sha(b"\x00" + body).digest())
            seq += 1
        return rows, leaves, days


def _other_row(seq: int, kind: int, obj: object, captured: object) -> tuple:
    """Rows of the rarer entries: account created or closed, pending expired, records."""
    if kind == KIND_RECORD:
        assert isinstance(obj, tuple) and isinstance(captured, int)
        type_, payload, ts, type_flag = obj
        body = encode_record(ts, type_, payload)
        return (seq, kind, id_bytes(seq), None, captured or None, None, type_flag, body, None)
    if kind == KIND_ACCOUNT_CREATED:
        assert isinstance(obj, Account) and isinstance(captured, int)
        body = encode_account_created(
            obj.timestamp, obj.id, obj.ledger, obj.code, captured, obj.owner, obj.operator
        )
        return (seq, kind, id_bytes(obj.id), None, obj.n, None, captured, body, None)
    if kind == KIND_PENDING_EXPIRED:
        assert isinstance(obj, tuple) and isinstance(captured, tuple)
        p, ts = obj
        body = encode_pending_expired(
            ts, p.id, p.debit_account_id, p.credit_account_id, p.amount, p.ledger, p.code
        )
        pid = id_bytes(p.id)
        return (
            seq,
            kind,
            pid,
            pid,
            captured[0],
            captured[1],
            0,
            body,
            BALANCES.pack(*captured[2:]),
        )
    assert kind == KIND_ACCOUNT_CLOSED and isinstance(obj, Account) and isinstance(captured, int)
    body = encode_account_closed(captured, obj.id)
    return (seq, kind, id_bytes(obj.id), None, obj.n, None, 0, body, None)


def transfer_body(t: Transfer) -> bytes:
    return encode_transfer(
        t.timestamp,
        t.id,
        t.debit_account_id,
        t.credit_account_id,
        t.pending_id,
        t.amount,
        t.ledger,
        t.code,
        t.flags,
        t.timeout_s,
        t.metadata,
        t.authorization,
    )


def _account_row(a: Account) -> tuple:
    return (
        a.n,
        id_bytes(a.id),
        a.ledger,
        a.code,
        a.flags,
        a.owner,
        a.operator,
        a.debits_pending,
        a.debits_posted,
        a.credits_pending,
        a.credits_posted,
        a.timestamp,
        a.seq,
    )


def _attachments(out: Outcome) -> list[tuple[str, tuple[str, ...], tuple]]:
    """Rows to insert with this batch: those of accepted transfers and tombstones ("ok"), and
    those of recorded rejections ("rejected"). A replay is neither, so it inserts nothing.

    The transfers let go of their attachments once they are rows: the engine keeps recent
    transfers in memory long after, and the attachments (events with whole objects in them)
    would make that cache many times larger."""
    rows = []
    for kind, obj, _ in out.entries:
        if kind == KIND_TRANSFER:
            t: Transfer = obj  # type: ignore[assignment]
            if t.attachments:
                rows += [(a.table, a.columns, _with_result(a.values, 0))
                         for a in t.attachments if a.when == "ok"]  # fmt: skip
                t.attachments = None
    for t in out.rejected:
        if t.attachments:
            when = "ok" if t.result == TOMBSTONE_RESULT else "rejected"
            code = 0 if when == "ok" else t.result
            rows += [(a.table, a.columns, _with_result(a.values, code))
                     for a in t.attachments if a.when == when]  # fmt: skip
            t.attachments = None
    for table, columns, _ in rows:
        assert all(_IDENTIFIER.fullmatch(n) for n in (table, *columns)), "bad attachment name"
    return rows


def _with_result(values: tuple, code: int) -> tuple:
    """Fill ``RESULT_PLACEHOLDER`` in text values with the outcome ("ok" or a result code):
    rows written before the outcome is known can still name it."""
    label = "ok" if code == 0 else Result(code).name.lower()
    return tuple(v.replace(RESULT_PLACEHOLDER, label) if isinstance(v, str) else v for v in values)


def _detail(t: Transfer) -> str | None:
    return canonical_json(t.detail).decode() if t.detail is not None else None


def wallet_row(w: Wallet) -> tuple:
    """(id, operator, kind, class, public_key, key_version, linked_bank, reverse_waterfall,
    parent, bound_payee, limits JSON, float_account, settlement_account, day, spent_day, year,
    spent_year, loan_account, loan_book, loan_share_bp): the wallets table, as the writer knows
    it at the end of a batch."""
    return (
        id_bytes(w.id),
        w.operator,
        w.kind,
        w.klass,
        w.public_key,
        w.key_version,
        id_bytes(w.linked_bank) if w.linked_bank else None,
        int(w.reverse_waterfall),
        id_bytes(w.parent) if w.parent else None,
        id_bytes(w.bound_payee) if w.bound_payee else None,
        canonical_json(w.limits.as_dict()).decode() if w.limits is not None else None,
        id_bytes(w.float_account),
        id_bytes(w.settlement_account),
        w.day,
        w.spent_day,
        w.year,
        w.spent_year,
        id_bytes(w.loan_account) if w.loan_account else None,
        id_bytes(w.loan_book) if w.loan_book else None,
        w.loan_share_bp,
    )

"""``ledger verify``: recompute everything from the journal and name the first thing that differs.

An independent checker, deliberately not the engine: it replays each entry's effect with plain
arithmetic, so a bug in the engine cannot hide itself. It checks, in one pass over the log:

* every entry is canonical, its index columns agree with its bytes, and its leaf hash equals the
  one stored in the Merkle tiles when it was written (so a changed entry is named exactly);
* balances after each entry equal the replay, and no limit flag was ever broken;
* every checkpoint's root equals the recomputed tree at its size, and its signature verifies;
* the stored tiles equal the recomputed ones, the accounts table equals the replay, and so do
  each account's day totals (``account_days``, what credit features read);
* the ledger is zero-sum: total debits == total credits, posted and pending;
* every debit of a wallet carries a signature that verifies with the wallet's key at the time
  (keys come from the journal's own wallet records), except the waterfall legs the writer makes;
* e-CNY is conserved: only issuance and redemption at the central bank move money between e-CNY
  accounts and others, so the e-CNY in circulation equals issued minus redeemed.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Engine, text

from ledger import checkpoint, daily, entry, signing
from ledger.domain import AccountFlags, TransferFlags
from ledger.engine import RECORD_AUDIT, RECORD_TYPES
from ledger.journal import BALANCES, TILE_WIDTH, MerkleLog
from ledger.wallets import codes

CHUNK: Final = 5000
_DR_LIMIT: Final = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_CR_LIMIT: Final = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
_CLOSED: Final = int(AccountFlags.CLOSED)


class Mismatch(Exception):
    """The first thing found that does not match; its message names it."""


@dataclass
class Report:
    entries: int = 0
    checkpoints: int = 0
    accounts: int = 0
    tiles: int = 0
    account_days: int = 0
    problem: str | None = None
    totals: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    signatures: int = 0
    issued_fen: int = 0
    redeemed_fen: int = 0
    circulation_fen: int = 0

    @property
    def ok(self) -> bool:
        return self.problem is None


class _Account:
    __slots__ = ("b", "code", "flags", "id", "keys", "mandate", "n")

    def __init__(self, id: int, n: int, flags: int, code: int) -> None:
        self.id, self.n, self.flags, self.code = id, n, flags, code
        self.keys: dict[int, bytes] = {}  # a wallet's public keys by version
        self.mandate = 0  # the loan a wallet's signed acceptance lets the ledger collect for
        self.b = [0, 0, 0, 0]  # debits_pending, debits_posted, credits_pending, credits_posted


class _Replay:
    """Balances recomputed from entries alone."""

    def __init__(self) -> None:
        self.accounts: dict[int, _Account] = {}
        self.by_n: dict[int, _Account] = {}
        self.pending: dict[int, tuple[int, int, int]] = {}  # id -> (amount, debit id, credit id)
        self.issued = self.redeemed = self.signatures = 0
        self.codes_used: set[int] = set()
        self.days: dict[tuple[int, int], list[int]] = {}  # (account n, CST day) -> totals

    def apply(self, seq: int, e: entry.Entry) -> tuple[_Account | None, _Account | None]:
        if isinstance(e, entry.AccountCreated):
            if e.id in self.accounts:
                raise Mismatch(f"entry {seq}: account {_uuid(e.id)} is created twice")
            a = _Account(e.id, len(self.accounts) + 1, e.flags, e.code)
            self.accounts[e.id] = self.by_n[a.n] = a
            return a, None
        if isinstance(e, entry.RecordEntry):
            return self._record(seq, e), None
        if isinstance(e, entry.AccountClosed):
            a = self._account(seq, e.account_id)
            if a.b[0] or a.b[2]:
                raise Mismatch(f"entry {seq}: account closed with pending transfers")
            a.flags |= _CLOSED
            return a, None
        if isinstance(e, entry.PendingExpired):
            amount, dr_id, cr_id = self._take_pending(seq, e.pending_id)
            if (amount, dr_id, cr_id) != (e.amount, e.debit_account_id, e.credit_account_id):
                raise Mismatch(f"entry {seq}: expiry does not match its pending transfer")
            dr, cr = self._account(seq, dr_id), self._account(seq, cr_id)
            dr.b[0] -= amount
            cr.b[2] -= amount
            return dr, cr
        assert isinstance(e, entry.TransferEntry)
        return self._transfer(seq, e)

    def _record(self, seq: int, e: entry.RecordEntry) -> _Account | None:
        """Wallet records give the keys signatures are checked with; returns the wallet named."""
        data = e.data()
        wallet = data.get("wallet")
        a = self._account(seq, uuid.UUID(str(wallet)).int) if wallet else None
        if e.type == "wallet_opened" and a is not None:
            a.keys[int(str(data["key_version"]))] = base64.b64decode(str(data["public_key"]))
        elif e.type == "wallet_updated" and a is not None:
            changes = data["changes"]
            assert isinstance(changes, dict)
            if "key_version" in changes:
                a.keys[int(changes["key_version"])] = base64.b64decode(changes["public_key"])
        elif e.type == "loan_disbursed" and a is not None:
            self._check_acceptance(seq, a, data)
            a.mandate = uuid.UUID(str(data["loan"])).int
        elif e.type == "loan_repaid" and a is not None:
            a.mandate = 0
        return a

    @staticmethod
    def _check_acceptance(seq: int, a: _Account, data: dict[str, object]) -> None:
        """The borrower signed the request that took up this loan, for this amount."""
        signed = data.get("acceptance")
        try:
            assert isinstance(signed, dict) and a.keys
            body = str(signed["body"]).encode()
            message = signing.read_message(
                str(signed["method"]), str(signed["path"]), int(signed["timestamp_ms"]), body
            )
            signing.verify(a.keys[max(a.keys)], message, base64.b64decode(signed["signature"]))
            asked = json.loads(body)
            application = uuid.UUID(str(asked["application_id"])).int
            if (
                asked["amount"] != data["principal_fen"]
                or application != uuid.UUID(str(data["application"])).int
            ):
                raise ValueError("the signed request names other terms")
        except (AssertionError, KeyError, TypeError, ValueError, signing.SignatureError):
            raise Mismatch(f"entry {seq}: the borrower's acceptance does not verify") from None

    def _check_signature(self, seq: int, e: entry.TransferEntry, dr: _Account) -> None:
        """A wallet's owner signed this debit, with the key the wallet had at the time."""
        if not dr.keys or e.code in codes.ENGINE_LEGS or e.code == codes.SUB_WALLET_RETURN:
            return
        if e.code in (codes.LOAN_REPAYMENT, codes.LOAN_REVENUE_SHARE):
            if not dr.mandate:
                raise Mismatch(f"entry {seq}: debits a wallet for a loan without its mandate")
            return
        if e.flags & (TransferFlags.POST_PENDING | TransferFlags.VOID_PENDING):
            return  # the pending transfer it resolves carried the signature
        currency = "CNY" if e.ledger == 156 else str(e.ledger)
        try:
            if len(e.authorization) == signing.CODE_AUTHORIZATION_SIZE:
                self._check_payment_code(seq, e, dr, currency)
            else:
                auth = signing.Authorization.decode(e.authorization)
                signing.verify_payment(
                    dr.keys[auth.key_version], e.authorization, e.id, e.debit_account_id,
                    e.credit_account_id, e.amount, currency,
                )  # fmt: skip
        except (signing.SignatureError, KeyError):
            raise Mismatch(f"entry {seq}: the payer's signature does not verify") from None
        self.signatures += 1

    def _check_payment_code(
        self, seq: int, e: entry.TransferEntry, dr: _Account, currency: str
    ) -> None:
        code = signing.PaymentCode.from_authorization(e.authorization, dr.id, currency)
        signing.verify(dr.keys[code.key_version], code.message(), code.signature)
        if e.amount > code.max_amount:
            raise Mismatch(f"entry {seq}: captures more than its payment code allows")
        if code.code_id in self.codes_used:
            raise Mismatch(f"entry {seq}: its payment code was already used")
        self.codes_used.add(code.code_id)

    def _check_crossing(self, seq: int, e: entry.TransferEntry, dr: _Account, cr: _Account) -> None:
        """Only issuance and redemption move money into or out of e-CNY accounts."""
        dr_ecny, cr_ecny = dr.code in codes.E_CNY_ACCOUNTS, cr.code in codes.E_CNY_ACCOUNTS
        if dr_ecny == cr_ecny:
            return
        if cr_ecny and e.code == codes.ISSUE and not e.flags & TransferFlags.PENDING:
            self.issued += e.amount
        elif dr_ecny and e.code == codes.CB_REDEEM and not e.flags & TransferFlags.PENDING:
            self.redeemed += e.amount
        else:
            raise Mismatch(f"entry {seq}: moves e-CNY across the boundary without issuance")

    def _transfer(self, seq: int, e: entry.TransferEntry) -> tuple[_Account, _Account]:
        dr, cr = self._account(seq, e.debit_account_id), self._account(seq, e.credit_account_id)
        if dr is cr or (e.amount <= 0 and not e.flags & TransferFlags.VOID_PENDING):
            raise Mismatch(f"entry {seq}: transfer {_uuid(e.id)} is malformed")
        self._check_signature(seq, e, dr)
        self._check_crossing(seq, e, dr, cr)
        if (dr.flags | cr.flags) & _CLOSED:
            raise Mismatch(f"entry {seq}: transfer {_uuid(e.id)} touches a closed account")
        if e.flags & (TransferFlags.POST_PENDING | TransferFlags.VOID_PENDING):
            amount, dr_id, cr_id = self._take_pending(seq, e.pending_id)
            if (dr_id, cr_id) != (dr.id, cr.id):
                raise Mismatch(f"entry {seq}: post/void names other accounts than its pending")
            dr.b[0] -= amount
            cr.b[2] -= amount
            if e.flags & TransferFlags.POST_PENDING:
                if e.amount > amount:
                    raise Mismatch(f"entry {seq}: posts more than was pending")
                dr.b[1] += e.amount
                cr.b[3] += e.amount
            elif e.amount != amount:
                raise Mismatch(f"entry {seq}: voids a different amount than was pending")
        elif e.flags & TransferFlags.PENDING:
            self.pending[e.id] = (e.amount, dr.id, cr.id)
            dr.b[0] += e.amount
            cr.b[2] += e.amount
        else:
            dr.b[1] += e.amount
            cr.b[3] += e.amount
        if dr.flags & _DR_LIMIT and dr.b[0] + dr.b[1] > dr.b[3]:
            raise Mismatch(f"entry {seq}: debits exceed credits on {_uuid(dr.id)}")
        if cr.flags & _CR_LIMIT and cr.b[2] + cr.b[3] > cr.b[1]:
            raise Mismatch(f"entry {seq}: credits exceed debits on {_uuid(cr.id)}")
        daily.add_transfer(
            self.days, dr.n, cr.n, e.amount, e.code, e.flags, e.timestamp,
            daily.tracked(dr.code), daily.tracked(cr.code),
        )  # fmt: skip
        return dr, cr

    def _account(self, seq: int, account_id: int) -> _Account:
        a = self.accounts.get(account_id)
        if a is None:
            raise Mismatch(f"entry {seq}: names account {_uuid(account_id)} before it exists")
        return a

    def _take_pending(self, seq: int, pending_id: int) -> tuple[int, int, int]:
        p = self.pending.pop(pending_id, None)
        if p is None:
            raise Mismatch(f"entry {seq}: resolves {_uuid(pending_id)}, which is not pending")
        return p


def _uuid(value: int) -> str:
    return str(uuid.UUID(int=value))


def verify(engine: Engine, progress: Callable[[int, int], None] | None = None) -> Report:
    """Check the whole ledger. ``progress(done, total)`` is called as entries are read."""
    report = Report()
    try:
        _verify(engine, report, progress or (lambda done, total: None))
    except Mismatch as exc:
        report.problem = str(exc)
    except Exception as exc:  # unreadable rows are a finding too, not a crash
        report.problem = f"could not read the ledger after entry {report.entries}: {exc}"
    return report


def _verify(engine: Engine, report: Report, progress: Callable[[int, int], None]) -> None:
    with engine.connect() as conn:
        meta: dict[str, str] = {k: v for k, v in conn.execute(text("SELECT key, value FROM meta"))}
        total = conn.execute(text("SELECT COUNT(*) FROM journal_entries")).scalar() or 0
    if "public_key" not in meta:
        raise Mismatch("the database has no ledger identity (meta.public_key)")
    public_key = base64.b64decode(meta["public_key"])
    origin = meta["origin"]
    replay, log = _Replay(), MerkleLog()
    checkpoints = _rows(engine, "SELECT size, root, timestamp, signature FROM checkpoints", "size")
    next_cp = next(checkpoints, None)
    stored_leaves = _stored_leaf_hashes(engine)
    previous_ts = 0
    for seq, kind, ref_id, pending_id, debit_n, credit_n, flags, body, balances in _rows(
        engine,
        "SELECT seq, kind, ref_id, pending_id, debit_n, credit_n, flags, body, balances "
        "FROM journal_entries",
        "seq",
    ):
        if seq != report.entries:
            raise Mismatch(f"entry {report.entries} is missing (the next one is {seq})")
        body = bytes(body)
        try:
            e = entry.decode(body)
        except entry.EntryError as exc:
            raise Mismatch(f"entry {seq}: {exc}") from None
        leaf = hashlib.sha256(b"\x00" + body).digest()
        stored = next(stored_leaves, None)
        if stored is not None and stored != leaf:
            raise Mismatch(
                f"entry {seq}: its bytes differ from those hashed into the log when it was "
                "written (the stored leaf hash does not match)"
            )
        if e.timestamp <= previous_ts:
            raise Mismatch(f"entry {seq}: timestamp does not increase")
        previous_ts = e.timestamp
        dr, cr = replay.apply(seq, e)
        _check_columns(seq, e, kind, ref_id, pending_id, debit_n, credit_n, flags, dr, cr)
        _check_balances(seq, balances, dr, cr)
        log.append([leaf])
        report.entries += 1
        if log.size % TILE_WIDTH == 0:
            _compare_tiles(engine, log.take_dirty_tiles(), report, final=False)
        while next_cp is not None and next_cp[0] == log.size:
            _check_checkpoint(next_cp, origin, log.root(), public_key)
            report.checkpoints += 1
            next_cp = next(checkpoints, None)
        if report.entries % 1000 == 0:
            progress(report.entries, total)
    progress(report.entries, total)
    if next_cp is not None:
        raise Mismatch(f"checkpoint at size {next_cp[0]} is beyond the log ({log.size} entries)")
    if next(stored_leaves, None) is not None:
        raise Mismatch(f"the Merkle tiles hold more leaves than the log's {log.size} entries")
    _compare_tiles(engine, log.take_dirty_tiles(), report, final=False)
    partial = [
        (level, (log.size >> (8 * level)) >> 8, b"".join(hashes))
        for level, hashes in log.partial.items()
        if hashes
    ]
    _compare_tiles(engine, partial, report, final=True)
    _check_accounts(engine, replay, report)
    _check_days(engine, replay, report)


def _check_days(engine: Engine, replay: _Replay, report: Report) -> None:
    expected = dict(replay.days)
    with engine.connect() as conn:
        stored = conn.execute(
            text(f"SELECT account_n, day, {', '.join(daily.FIELDS)} FROM account_days")
        )
        for n, day, *figures in stored:
            want = expected.pop((n, day), None)
            if want != figures:
                a = replay.by_n.get(n)
                who = _uuid(a.id) if a is not None else f"n={n}"
                raise Mismatch(
                    f"account {who}: its totals for day {_date(day)} are {figures} in "
                    f"account_days, {want or 'nothing'} from the journal"
                )
            report.account_days += 1
    if expected:
        (n, day), want = next(iter(expected.items()))
        raise Mismatch(
            f"account {_uuid(replay.by_n[n].id)}: account_days lacks day {_date(day)} {want}"
        )


def _date(day: int) -> str:
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=day)).isoformat()


def _rows(engine: Engine, sql: str, order: str, where: str = "") -> Iterator[Any]:
    """Stream a table in key order, CHUNK rows per query (keyset pagination)."""
    after = -1
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                text(f"{sql} WHERE {where}{order} > :after ORDER BY {order} LIMIT {CHUNK}"),
                {"after": after},
            ).all()
        if not rows:
            return
        yield from rows
        after = rows[-1][0]


def _stored_leaf_hashes(engine: Engine) -> Iterator[bytes]:
    """The leaf hashes written with the entries, from the level-0 tiles, in order."""
    tiles = _rows(engine, "SELECT idx, hashes FROM merkle_tiles", "idx", "level = 0 AND ")
    for expected, (idx, hashes) in enumerate(tiles):
        if idx != expected:
            raise Mismatch(f"Merkle tile (0, {expected}) is missing")
        data = bytes(hashes)
        for i in range(0, len(data), 32):
            yield data[i : i + 32]


def _check_columns(
    seq: int,
    e: entry.Entry,
    kind: int,
    ref_id: bytes,
    pending_id: bytes | None,
    debit_n: int | None,
    credit_n: int | None,
    flags: int,
    dr: _Account | None,
    cr: _Account | None,
) -> None:
    if isinstance(e, entry.TransferEntry):
        want = (2, e.id, e.pending_id or None, dr and dr.n, cr and cr.n, e.flags)
    elif isinstance(e, entry.PendingExpired):
        want = (3, e.pending_id, e.pending_id, dr and dr.n, cr and cr.n, 0)
    elif isinstance(e, entry.AccountCreated):
        want = (1, e.id, None, dr and dr.n, None, e.flags)
    elif isinstance(e, entry.RecordEntry):
        want = (5, seq, None, dr and dr.n, None, RECORD_TYPES.get(e.type, RECORD_AUDIT))
    else:
        want = (4, e.account_id, None, dr and dr.n, None, 0)
    got = (
        kind,
        int.from_bytes(ref_id, "big"),
        int.from_bytes(pending_id, "big") if pending_id is not None else None,
        debit_n,
        credit_n,
        flags,
    )
    if got != want:
        raise Mismatch(f"entry {seq}: its index columns do not match its bytes")


def _check_balances(
    seq: int, packed: bytes | None, dr: _Account | None, cr: _Account | None
) -> None:
    if cr is None:
        if packed is not None:
            raise Mismatch(f"entry {seq}: carries balances it should not")
        return
    assert dr is not None
    if packed is None or BALANCES.unpack(bytes(packed)) != (*dr.b, *cr.b):
        raise Mismatch(
            f"entry {seq}: the stored balances after this entry do not match the replay "
            f"(stored {BALANCES.unpack(bytes(packed)) if packed else None}, "
            f"replayed {(*dr.b, *cr.b)})"
        )


def _check_checkpoint(row: Any, origin: str, root: bytes, public_key: bytes) -> None:
    size, stored_root, timestamp, signature = row
    if bytes(stored_root) != root:
        raise Mismatch(f"checkpoint at size {size}: its root does not match the entries")
    signed = checkpoint.Checkpoint(origin, size, bytes(stored_root), timestamp, bytes(signature))
    if not signed.verify(public_key):
        raise Mismatch(f"checkpoint at size {size}: the signature does not verify")


def _compare_tiles(
    engine: Engine, tiles: list[tuple[int, int, bytes]], report: Report, *, final: bool
) -> None:
    """Compare recomputed tiles with the stored ones: complete tiles as they fill up, the
    unfinished one of each level at the end (level 0 is already checked leaf by leaf)."""
    for level, idx, data in tiles:
        if level == 0 or (len(data) < TILE_WIDTH * 32 and not final):
            continue
        with engine.connect() as conn:
            stored = conn.execute(
                text("SELECT hashes FROM merkle_tiles WHERE level = :l AND idx = :i"),
                {"l": level, "i": idx},
            ).scalar()
        if stored is None or bytes(stored) != data:
            raise Mismatch(f"Merkle tile ({level}, {idx}) does not match the entries")
        report.tiles += 1


def _check_accounts(engine: Engine, replay: _Replay, report: Report) -> None:
    seen = 0
    for row in _rows(engine, "SELECT * FROM accounts", "n"):
        m = row._mapping
        a = replay.by_n.get(m["n"])
        if a is None or a.id != int.from_bytes(m["id"], "big"):
            raise Mismatch(f"account n={m['n']}: in the accounts table but not in the journal")
        stored = [
            m["debits_pending"],
            m["debits_posted"],
            m["credits_pending"],
            m["credits_posted"],
        ]
        names = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")
        for name, s, r in zip(names, stored, a.b, strict=True):
            if s != r:
                raise Mismatch(
                    f"account {_uuid(a.id)}: {name} is {s} in the accounts table, "
                    f"{r} from the journal"
                )
        if m["flags"] != a.flags:
            raise Mismatch(f"account {_uuid(a.id)}: flags differ from the journal")
        for i in range(4):
            report.totals[i] += a.b[i]
        seen += 1
    if seen != len(replay.accounts):
        raise Mismatch(f"{len(replay.accounts) - seen} account(s) in the journal are missing")
    report.accounts = seen
    report.signatures = replay.signatures
    report.issued_fen, report.redeemed_fen = replay.issued, replay.redeemed
    report.circulation_fen = sum(
        a.b[3] - a.b[1] for a in replay.accounts.values() if a.code in codes.E_CNY_ACCOUNTS
    )
    if report.circulation_fen != replay.issued - replay.redeemed:
        raise Mismatch(
            f"e-CNY is not conserved: {report.circulation_fen} fen in circulation, but "
            f"{replay.issued} issued and {replay.redeemed} redeemed"
        )
    t = report.totals
    if t[0] != t[2] or t[1] != t[3]:
        raise Mismatch(f"the ledger is not zero-sum: debits {t[0]}/{t[1]}, credits {t[2]}/{t[3]}")

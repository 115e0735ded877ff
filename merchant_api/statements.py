"""A merchant's daily statement: every payment, refund, settlement and sweep of its wallet on one
China Standard Time day, re-derived from the journal, pinned to a signed checkpoint, signed.

The file (UTF-8, ``\\n`` line ends) is self-contained::

    # ecny-ledger statement v1
    # origin: <the ledger's checkpoint origin>
    # merchant: mch_...
    # wallet: <the merchant wallet's id>
    # date: 2026-11-22
    # timezone: +08:00
    # tree_size: 1234
    # checkpoint_root: <base64 root of the signed checkpoint at tree_size>
    # complete: true
    # currency: CNY
    # fees: none (e-CNY merchants pay no fees in the pilot; fee_fen is always 0)
    seq,time,type,transfer_id,payment_order,out_trade_no,out_refund_no,counterparty,amount_fen,fee_fen
    <one CSV row per transfer entry, in journal order>
    # total: type=payment count=3 amount_fen=3702 fee_fen=0
    # total: type=refund ... (then settlement, sweep, loan, other: always all six)
    # net_fen: ...
    # opening_balance_fen: ...
    # closing_balance_fen: ...
    # sha256=<hex SHA-256 of every byte above this line>
    # signature=<base64 Ed25519 signature by the ledger's key over signed_message(...)>

Rows are the posted transfer entries (not pending, not voids) debiting or crediting the wallet
with a timestamp inside the day, and with ``seq < tree_size``; ``amount_fen`` is signed (+ in,
- out). A day that has ended is *complete*: its tree size is the first signed checkpoint at or
after the day's end, so asking again gives the same bytes. A day still running gives a
*partial* statement as of the latest checkpoint. The closing balance (opening + net) is checked
against the balance the ledger stored after the period's last entry.

``derive`` is the one re-derivation: the API renders with it and ``ledger verify --statement``
compares a file with it, byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Final

from sqlalchemy import Connection, Engine, select, text
from sqlmodel import Session, col

from ledger import entry, signing
from ledger.domain import AuditRecord, TransferFlags
from ledger.engine import OP_RECORDS
from ledger.journal import id_bytes
from ledger.service import Ledger
from ledger.store.queries import Reader
from ledger.wallets import codes
from merchant_api.models import Merchant, PaymentOrder, Refund

FORMAT: Final = "# ecny-ledger statement v1"
CST: Final = timezone(timedelta(hours=8))
CST_OFFSET_S: Final = 8 * 3600
DAY_S: Final = 86_400
_EPOCH: Final = date(1970, 1, 1).toordinal()
COLUMNS: Final = (
    "seq",
    "time",
    "type",
    "transfer_id",
    "payment_order",
    "out_trade_no",
    "out_refund_no",
    "counterparty",
    "amount_fen",
    "fee_fen",
)
TYPES: Final = ("payment", "refund", "settlement", "sweep", "loan", "other")
TYPE_OF_CODE: Final = {
    codes.PAYMENT: "payment",
    codes.REFUND: "refund",
    codes.REDEEM_ECNY: "settlement",
    codes.WATERFALL_ECNY: "sweep",
    codes.REVERSE_WATERFALL_ECNY: "sweep",
    codes.LOAN_DISBURSE: "loan",
    codes.LOAN_REVENUE_SHARE: "loan",
    codes.LOAN_REPAYMENT: "loan",
}
"""Transfer codes -> row types; any other code touching the wallet is "other"."""
FEES_LINE: Final = "# fees: none (e-CNY merchants pay no fees in the pilot; fee_fen is always 0)"
DAY_CLOSED_RECORD: Final = "statement_day_closed"
"""A journal record written (once) when a statement is asked for a day that has ended but whose
end the log has not passed yet: every entry of the day is then committed, so the day can be
pinned for good."""
CHUNK: Final = 5000
"""Journal rows read per query."""
JOIN_CHUNK: Final = 500
"""Ids per ``IN (...)`` when joining the merchant API's orders and refunds."""
_NOT_POSTED: Final = int(TransferFlags.PENDING | TransferFlags.VOID_PENDING)
_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")


class StatementError(Exception):
    """A statement that cannot be made: a malformed date or a day that has not begun."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class StatementMismatch(Exception):
    """A statement file that does not match the ledger; the message names what differs."""


# -- days ---------------------------------------------------------------------------------------


def parse_day(value: str) -> date:
    if not _DATE.fullmatch(value):
        raise StatementError("invalid_date", "the date is a China Standard Time day, YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise StatementError("invalid_date", f"{value} is not a calendar day") from None


def day_bounds_ns(day: date) -> tuple[int, int]:
    """[start, end) of a CST day, in Unix nanoseconds (the journal's timestamps)."""
    start_s = (day.toordinal() - _EPOCH) * DAY_S - CST_OFFSET_S
    return start_s * 10**9, (start_s + DAY_S) * 10**9


def cst_day(ms: int) -> int:
    """The CST day of a Unix time in ms, as days since 1970-01-01 (as the ledger counts them)."""
    return (ms // 1000 + CST_OFFSET_S) // DAY_S


def day_date(day: int) -> date:
    return date.fromordinal(_EPOCH + day)


def format_time(ns: int) -> str:
    """ISO 8601 in CST with the journal's full nanosecond precision."""
    seconds, fraction = divmod(ns, 10**9)
    stamp = datetime.fromtimestamp(seconds, CST).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{fraction:09d}+08:00"


# -- the journal ------------------------------------------------------------------------------


def _timestamp_at(conn: Connection, seq: int) -> int:
    body = conn.execute(text("SELECT body FROM journal_entries WHERE seq = :s"), {"s": seq})
    return int.from_bytes(bytes(body.scalar_one())[2:10], "big")  # u8 version, u8 kind, u64 ts


def first_seq_at(conn: Connection, timestamp_ns: int, size: int) -> int:
    """The first entry (below ``size``) stamped at or after ``timestamp_ns``; ``size`` if none.
    Timestamps increase with seq, so a binary search: O(log n) reads."""
    lo, hi = 0, size
    while lo < hi:
        mid = (lo + hi) // 2
        if _timestamp_at(conn, mid) < timestamp_ns:
            lo = mid + 1
        else:
            hi = mid
    return lo


def latest_size(conn: Connection) -> int:
    size = conn.execute(text("SELECT MAX(size) FROM checkpoints")).scalar()
    return int(size or 0)


def complete_tree_size(conn: Connection, day: date) -> int | None:
    """The tree size a complete statement of ``day`` is pinned to: the first signed checkpoint
    at or after the day's last entry. None while no committed entry lies after the day (entries
    of the day could still be on their way)."""
    size = latest_size(conn)
    end = first_seq_at(conn, day_bounds_ns(day)[1], size)
    if end >= size:
        return None
    pinned = conn.execute(
        text("SELECT MIN(size) FROM checkpoints WHERE size >= :n"), {"n": end}
    ).scalar_one()
    return int(pinned)


@dataclass(slots=True)
class Row:
    seq: int
    timestamp: int
    type: str
    transfer_id: int
    counterparty: int
    amount: int
    payment_order: int | None = None
    out_trade_no: str = ""
    out_refund_no: str = ""

    def cells(self) -> list[str]:
        return [
            str(self.seq),
            format_time(self.timestamp),
            self.type,
            str(uuid.UUID(int=self.transfer_id)),
            str(uuid.UUID(int=self.payment_order)) if self.payment_order is not None else "",
            self.out_trade_no,
            self.out_refund_no,
            str(uuid.UUID(int=self.counterparty)),
            str(self.amount),
            "0",
        ]


def _wallet_rows(conn: Connection, n: int, wallet: int, start: int, stop: int) -> list[Row]:
    """Posted transfer entries debiting or crediting account ``n`` with start <= seq < stop."""
    rows: list[Row] = []
    for column in ("debit_n", "credit_n"):
        after = start - 1
        while True:
            chunk = conn.execute(
                text(
                    f"SELECT seq, body FROM journal_entries WHERE {column} = :n AND seq > :a "
                    f"AND seq < :b AND kind = {entry.KIND_TRANSFER} ORDER BY seq LIMIT {CHUNK}"
                ),
                {"n": n, "a": after, "b": stop},
            ).all()
            for seq, body in chunk:
                e = entry.decode(bytes(body))
                assert isinstance(e, entry.TransferEntry)
                if e.flags & _NOT_POSTED:
                    continue
                incoming = e.credit_account_id == wallet
                rows.append(
                    Row(
                        seq,
                        e.timestamp,
                        TYPE_OF_CODE.get(e.code, "other"),
                        e.id,
                        e.debit_account_id if incoming else e.credit_account_id,
                        e.amount if incoming else -e.amount,
                    )
                )
            if len(chunk) < CHUNK:
                break
            after = chunk[-1][0]
    rows.sort(key=lambda r: r.seq)
    return rows


def _join(engine: Engine, merchant_id: str, rows: list[Row]) -> None:
    """Fill in the merchant API's references: an order's out_trade_no (a payment's transfer id
    is its order's id), a refund's out_refund_no and order (a refund's id is its transfer's)."""
    ids = [id_bytes(r.transfer_id) for r in rows]
    orders: dict[bytes, PaymentOrder] = {}
    refunds: dict[bytes, Refund] = {}
    with Session(engine) as session:
        for i in range(0, len(ids), JOIN_CHUNK):
            part = ids[i : i + JOIN_CHUNK]
            for o in session.execute(
                select(PaymentOrder).where(
                    col(PaymentOrder.id).in_(part), col(PaymentOrder.merchant_id) == merchant_id
                )
            ).scalars():
                orders[o.id] = o
            mine = (col(Refund.id).in_(part), col(Refund.merchant_id) == merchant_id)
            for r in session.execute(select(Refund).where(*mine)).scalars():
                refunds[r.id] = r
        refunded = sorted({r.order_id for r in refunds.values()} - orders.keys())
        for i in range(0, len(refunded), JOIN_CHUNK):
            for o in session.execute(
                select(PaymentOrder).where(col(PaymentOrder.id).in_(refunded[i : i + JOIN_CHUNK]))
            ).scalars():
                orders[o.id] = o
    for row in rows:
        key = id_bytes(row.transfer_id)
        refund = refunds.get(key)
        order = orders.get(refund.order_id if refund is not None else key)
        if refund is not None:
            row.out_refund_no = refund.out_refund_no
            row.payment_order = int.from_bytes(refund.order_id, "big")
        if order is not None:
            row.payment_order = int.from_bytes(order.id, "big")
            row.out_trade_no = order.out_trade_no


def _posted_balance(reader: Reader, n: int, seq: int) -> int:
    """The account's posted balance right after entry ``seq``, as the ledger stored it."""
    if seq < 0:
        return 0
    b = reader.balance_as_of(n, seq)
    return 0 if b is None else b.credits_posted - b.debits_posted


# -- the one re-derivation ------------------------------------------------------------------


def derive(reader: Reader, merchant: Merchant, day: date, tree_size: int, complete: bool) -> str:
    """The statement's text above its ``# sha256=`` line, re-derived from the journal as of
    ``tree_size``. Used by the API to make statements and by ``ledger verify --statement`` to
    check them, so the two cannot drift."""
    checkpoint = reader.checkpoint_at(tree_size)
    if checkpoint is None:
        raise StatementMismatch(f"the ledger has no signed checkpoint at tree size {tree_size}")
    wallet = int.from_bytes(merchant.wallet_id, "big")
    account = reader.account(wallet)
    start_ns, end_ns = day_bounds_ns(day)
    rows: list[Row] = []
    opening = closing = 0
    if account is not None:
        with reader.engine.connect() as conn:
            start = first_seq_at(conn, start_ns, tree_size)
            stop = first_seq_at(conn, end_ns, tree_size)
            rows = _wallet_rows(conn, account.n, wallet, start, stop)
        _join(reader.engine, merchant.id, rows)
        opening = _posted_balance(reader, account.n, start - 1)
        closing = opening + sum(r.amount for r in rows)
        held = _posted_balance(reader, account.n, stop - 1)
        if held != closing:
            raise StatementMismatch(
                f"the journal's rows give a closing balance of {closing} fen, but the ledger "
                f"stored {held} fen after entry {stop - 1}; run `ledger verify`"
            )
    out = io.StringIO()
    out.write(
        f"{FORMAT}\n"
        f"# origin: {reader.origin}\n"
        f"# merchant: {merchant.id}\n"
        f"# wallet: {uuid.UUID(int=wallet)}\n"
        f"# date: {day.isoformat()}\n"
        "# timezone: +08:00\n"
        f"# tree_size: {tree_size}\n"
        f"# checkpoint_root: {base64.b64encode(checkpoint.root).decode()}\n"
        f"# complete: {'true' if complete else 'false'}\n"
        "# currency: CNY\n"
        f"{FEES_LINE}\n"
    )
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(row.cells())
    for kind in TYPES:
        of_kind = [r.amount for r in rows if r.type == kind]
        out.write(
            f"# total: type={kind} count={len(of_kind)} amount_fen={sum(of_kind)} fee_fen=0\n"
        )
    out.write(
        f"# net_fen: {closing - opening}\n"
        f"# opening_balance_fen: {opening}\n"
        f"# closing_balance_fen: {closing}\n"
    )
    return out.getvalue()


def signed_message(origin: str, merchant_id: str, day: str, tree_size: int, sha256: str) -> bytes:
    """What the ledger signs: domain-separated, so it can never pass for another signature."""
    fields = f"{origin}\n{merchant_id}\n{day}\n{tree_size}\n{sha256}"
    return signing.STATEMENT_LABEL + fields.encode()


# -- making one (the API) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    text: str
    sha256: str
    signature: str
    """base64"""
    tree_size: int
    complete: bool


def make(
    ledger: Ledger, reader: Reader, merchant: Merchant, day_text: str, now_ms: int
) -> Statement:
    """The signed statement of ``merchant`` for a CST day (422 errors as StatementError)."""
    day = parse_day(day_text)
    start_ns, end_ns = day_bounds_ns(day)
    now_ns = now_ms * 1_000_000
    if start_ns > now_ns:
        raise StatementError("date_in_future", f"{day} has not begun in China Standard Time")
    pinned = None
    if now_ns >= end_ns:
        with reader.engine.connect() as conn:
            pinned = complete_tree_size(conn, day)
        if pinned is None:  # the log has not passed the day's end yet: close the day
            record = AuditRecord(DAY_CLOSED_RECORD, {"day": day.isoformat(), "timezone": "+08:00"})
            ledger.submit(OP_RECORDS, [record], None).result()
            with reader.engine.connect() as conn:
                pinned = complete_tree_size(conn, day)
    if pinned is None:
        with reader.engine.connect() as conn:
            tree_size, complete = latest_size(conn), False
    else:
        tree_size, complete = pinned, True
    body = derive(reader, merchant, day, tree_size, complete)
    return sign(ledger.sign_statement, reader.origin, merchant.id, day, tree_size, complete, body)


def sign(
    signer: Callable[[bytes], bytes],
    origin: str,
    merchant_id: str,
    day: date,
    tree_size: int,
    complete: bool,
    body: str,
) -> Statement:
    digest = hashlib.sha256(body.encode()).hexdigest()
    message = signed_message(origin, merchant_id, day.isoformat(), tree_size, digest)
    signature = base64.b64encode(signer(message)).decode()
    text_ = f"{body}# sha256={digest}\n# signature={signature}\n"
    return Statement(text_, digest, signature, tree_size, complete)


# -- checking one (``ledger verify --statement``) -------------------------------------------


@dataclass(frozen=True)
class Checked:
    merchant: str
    day: str
    tree_size: int
    complete: bool
    rows: int
    sha256: str


def verify_file(engine: Engine, data: str, public_key: bytes | None = None) -> Checked:
    """Check a statement file against the ledger in ``engine``: its sha256, the ledger's
    signature (with ``public_key`` if given, which must be this ledger's), then the whole text
    against the journal re-derived at its tree size. Raises StatementMismatch naming the first
    thing that differs."""
    with engine.connect() as conn:
        meta = {k: v for k, v in conn.execute(text("SELECT key, value FROM meta"))}
    if "public_key" not in meta:
        raise StatementMismatch("the database has no ledger identity (meta.public_key)")
    ledger_key, origin = base64.b64decode(meta["public_key"]), meta["origin"]
    if public_key is not None and public_key != ledger_key:
        raise StatementMismatch("the public key given is not this ledger's key")
    body, digest, signature = _split(data)
    if hashlib.sha256(body.encode()).hexdigest() != digest:
        raise StatementMismatch(
            "the sha256 line does not match the file's contents: it was changed after signing"
        )
    header = _header(body)
    try:
        merchant_id, day_text, wallet = header["merchant"], header["date"], header["wallet"]
        tree_size, complete = (
            int(header["tree_size"]),
            {"true": True, "false": False}[header["complete"]],
        )
    except (KeyError, ValueError) as exc:
        raise StatementMismatch(
            f"the statement's header is incomplete or malformed ({exc})"
        ) from None
    if header.get("origin") != origin:
        raise StatementMismatch(
            f"the statement is from ledger {header.get('origin')!r}, this ledger is {origin!r}"
        )
    try:
        message = signed_message(origin, merchant_id, day_text, tree_size, digest)
        signing.verify(ledger_key, message, signature)
    except signing.SignatureError:
        raise StatementMismatch(
            "the signature does not verify with the ledger's public key: not signed by this ledger"
        ) from None
    with Session(engine) as session:
        merchant = session.get(Merchant, merchant_id)
    if merchant is None or str(uuid.UUID(bytes=merchant.wallet_id)) != wallet:
        raise StatementMismatch(f"the ledger has no merchant {merchant_id} with wallet {wallet}")
    try:
        day = parse_day(day_text)
    except StatementError as exc:
        raise StatementMismatch(str(exc)) from None
    if complete:
        with engine.connect() as conn:
            pinned = complete_tree_size(conn, day)
        if pinned != tree_size:
            raise StatementMismatch(
                f"a complete statement of {day} is pinned to tree size {pinned}, not {tree_size}"
            )
    journal = derive(Reader(engine, origin), merchant, day, tree_size, complete)
    if journal != body:
        raise StatementMismatch(_difference(body, journal))
    return Checked(merchant_id, day_text, tree_size, complete, len(_rows_of(body)), digest)


def _split(data: str) -> tuple[str, str, bytes]:
    """(body, sha256 hex, signature) of a statement's text."""
    lines = data.split("\n")
    if len(lines) < 3 or lines[-1] != "":
        raise StatementMismatch("not a statement: it must end with its sha256 and signature lines")
    sha_line, sig_line = lines[-3], lines[-2]
    if not (sha_line.startswith("# sha256=") and sig_line.startswith("# signature=")):
        raise StatementMismatch("not a statement: its last lines are not # sha256=, # signature=")
    try:
        signature = base64.b64decode(sig_line.removeprefix("# signature="), validate=True)
    except (binascii.Error, ValueError):
        raise StatementMismatch("the signature line is not base64") from None
    body = data[: len(data) - len(sha_line) - len(sig_line) - 2]
    if not body.startswith(FORMAT + "\n"):
        raise StatementMismatch(f"not a statement: the first line must be {FORMAT!r}")
    return body, sha_line.removeprefix("# sha256="), signature


def _header(body: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in body.split("\n")[1:]:
        if not line.startswith("# "):
            break
        key, sep, value = line[2:].partition(": ")
        if sep:
            out[key] = value
    return out


def _rows_of(body: str) -> dict[int, list[str]]:
    """The CSV rows of a statement's text, by seq (for messages)."""
    head = ",".join(COLUMNS) + "\n"
    start = body.find(head)
    end = body.find("\n# total: ", start)
    if start < 0 or end < 0:
        return {}
    out: dict[int, list[str]] = {}
    for cells in csv.reader(io.StringIO(body[start + len(head) : end + 1])):
        if cells and cells[0].isdigit():
            out[int(cells[0])] = cells
    return out


def _difference(file_body: str, journal_body: str) -> str:
    """Name the first difference between a statement's text and the journal's."""
    got, want = _rows_of(file_body), _rows_of(journal_body)
    for seq in sorted(got.keys() | want.keys()):
        g, w = got.get(seq), want.get(seq)
        if g == w:
            continue
        if g is None:
            return f"the file lacks the journal's row for entry {seq}: {','.join(w or [])}"
        if w is None:
            return f"the file has a row for entry {seq} that the journal does not: {','.join(g)}"
        pairs = zip(COLUMNS, g, w, strict=False)
        fields = [f"{name} {a!r} (journal: {b!r})" for name, a, b in pairs if a != b]
        return f"the row for entry {seq} differs from the journal: {'; '.join(fields) or g}"
    file_lines, journal_lines = file_body.split("\n"), journal_body.split("\n")
    for i, (a, b) in enumerate(zip(file_lines, journal_lines, strict=False)):
        if a != b:
            return f"line {i + 1} differs from the journal: the file has {a!r}, the journal {b!r}"
    return f"the file has {len(file_lines)} lines, the journal's statement {len(journal_lines)}"

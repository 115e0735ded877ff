"""Canonical bytes of journal entries: the one documented encoding of the ledger's log.

Dependency-free (stdlib only) so that ``wallet_sdk`` verifies receipts with exactly the code the
server writes them with. Every entry is big-endian binary::

    u8 version (=1) | u8 kind | u64 timestamp_ns | body

    kind 1 account_created  id:u128 ledger:u32 code:u16 flags:u16
                            owner:(u8 len, utf-8) operator:(u8 len, utf-8)
    kind 2 transfer         id:u128 debit_account_id:u128 credit_account_id:u128 pending_id:u128
                            amount:u64 ledger:u32 code:u16 flags:u16 timeout_s:u32
                            metadata:(u16 len, canonical JSON) authorization:(u16 len, bytes)
    kind 3 pending_expired  pending_id:u128 debit_account_id:u128 credit_account_id:u128
                            amount:u64 ledger:u32 code:u16
    kind 4 account_closed   account_id:u128
    kind 5 record           type:(u8 len, ASCII) payload:(u32 len, canonical JSON)

Records carry what is not a movement of money but must be in the log: wallets opened and
changed, limit versions activated, audited look-ups (e.g. revealing who owns a wallet). Their
payloads hold pseudonymous ids only, never personal data.

For a ``post_pending``/``void_pending`` transfer the entry holds the resolved values (the pending
transfer's accounts, ledger and code; the amount actually posted or voided). An entry's index in
the log is its sequence number and its Merkle leaf index. ``decode`` accepts only canonical
bytes: ``encode(decode(b)) == b`` for every ``b`` it accepts.
"""

from __future__ import annotations

import json
import struct
import uuid
from dataclasses import dataclass
from typing import Final

VERSION: Final = 1
KIND_ACCOUNT_CREATED: Final = 1
KIND_TRANSFER: Final = 2
KIND_PENDING_EXPIRED: Final = 3
KIND_ACCOUNT_CLOSED: Final = 4
KIND_RECORD: Final = 5
KIND_NAMES: Final = {
    KIND_ACCOUNT_CREATED: "account_created",
    KIND_TRANSFER: "transfer",
    KIND_PENDING_EXPIRED: "pending_expired",
    KIND_ACCOUNT_CLOSED: "account_closed",
    KIND_RECORD: "record",
}

_U64: Final = 0xFFFF_FFFF_FFFF_FFFF
_HEAD = struct.Struct(">BBQ")
_ACCOUNT = struct.Struct(">BBQQQIHH")
_TRANSFER = struct.Struct(">BBQQQQQQQQQQIHHI")
_EXPIRED = struct.Struct(">BBQQQQQQQQIH")
_CLOSED = struct.Struct(">BBQQQ")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_EMPTY_TAILS: Final = b"\x00\x00\x00\x00"  # metadata len 0, authorization len 0


class EntryError(ValueError):
    """Bytes that are not a canonical journal entry."""


@dataclass(frozen=True, slots=True)
class AccountCreated:
    timestamp: int
    id: int
    ledger: int
    code: int
    flags: int
    owner: str
    operator: str
    kind: int = KIND_ACCOUNT_CREATED


@dataclass(frozen=True, slots=True)
class TransferEntry:
    timestamp: int
    id: int
    debit_account_id: int
    credit_account_id: int
    pending_id: int
    amount: int
    ledger: int
    code: int
    flags: int
    timeout_s: int
    metadata: bytes
    authorization: bytes
    kind: int = KIND_TRANSFER


@dataclass(frozen=True, slots=True)
class PendingExpired:
    timestamp: int
    pending_id: int
    debit_account_id: int
    credit_account_id: int
    amount: int
    ledger: int
    code: int
    kind: int = KIND_PENDING_EXPIRED


@dataclass(frozen=True, slots=True)
class AccountClosed:
    timestamp: int
    account_id: int
    kind: int = KIND_ACCOUNT_CLOSED


@dataclass(frozen=True, slots=True)
class RecordEntry:
    timestamp: int
    type: str
    payload: bytes
    kind: int = KIND_RECORD

    def data(self) -> dict[str, object]:
        parsed: dict[str, object] = json.loads(self.payload)
        return parsed


Entry = AccountCreated | TransferEntry | PendingExpired | AccountClosed | RecordEntry


def canonical_json(data: object) -> bytes:
    """Sorted keys, no spaces, UTF-8: the one way a record payload is written."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_metadata(metadata: dict[str, str] | None) -> bytes:
    """Canonical JSON of a metadata map: sorted keys, no spaces, UTF-8. Empty map -> b""."""
    if not metadata:
        return b""
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise EntryError("metadata keys and values must be strings")
    return json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_metadata(raw: bytes) -> dict[str, str]:
    return json.loads(raw) if raw else {}


def encode_account_created(
    timestamp: int, id: int, ledger: int, code: int, flags: int, owner: str, operator: str
) -> bytes:
    o, p = owner.encode(), operator.encode()
    head = _ACCOUNT.pack(
        VERSION, KIND_ACCOUNT_CREATED, timestamp, id >> 64, id & _U64, ledger, code, flags
    )
    return b"".join((head, bytes((len(o),)), o, bytes((len(p),)), p))


def encode_transfer(
    timestamp: int,
    id: int,
    debit_account_id: int,
    credit_account_id: int,
    pending_id: int,
    amount: int,
    ledger: int,
    code: int,
    flags: int,
    timeout_s: int,
    metadata: bytes = b"",
    authorization: bytes = b"",
) -> bytes:
    head = _TRANSFER.pack(
        VERSION,
        KIND_TRANSFER,
        timestamp,
        id >> 64,
        id & _U64,
        debit_account_id >> 64,
        debit_account_id & _U64,
        credit_account_id >> 64,
        credit_account_id & _U64,
        pending_id >> 64,
        pending_id & _U64,
        amount,
        ledger,
        code,
        flags,
        timeout_s,
    )
    if not metadata and not authorization:  # the common case, kept cheap
        return head + _EMPTY_TAILS
    return b"".join(
        (head, _U16.pack(len(metadata)), metadata, _U16.pack(len(authorization)), authorization)
    )


def encode_pending_expired(
    timestamp: int,
    pending_id: int,
    debit_account_id: int,
    credit_account_id: int,
    amount: int,
    ledger: int,
    code: int,
) -> bytes:
    return _EXPIRED.pack(
        VERSION,
        KIND_PENDING_EXPIRED,
        timestamp,
        pending_id >> 64,
        pending_id & _U64,
        debit_account_id >> 64,
        debit_account_id & _U64,
        credit_account_id >> 64,
        credit_account_id & _U64,
        amount,
        ledger,
        code,
    )


def encode_account_closed(timestamp: int, account_id: int) -> bytes:
    return _CLOSED.pack(
        VERSION, KIND_ACCOUNT_CLOSED, timestamp, account_id >> 64, account_id & _U64
    )


def encode_record(timestamp: int, type: str, payload: bytes) -> bytes:
    t = type.encode("ascii")
    head = _HEAD.pack(VERSION, KIND_RECORD, timestamp)
    return b"".join((head, bytes((len(t),)), t, _U32.pack(len(payload)), payload))


def encode(entry: Entry) -> bytes:
    """Canonical bytes of a decoded entry (the inverse of ``decode``)."""
    if isinstance(entry, RecordEntry):
        return encode_record(entry.timestamp, entry.type, entry.payload)
    if isinstance(entry, TransferEntry):
        return encode_transfer(
            entry.timestamp,
            entry.id,
            entry.debit_account_id,
            entry.credit_account_id,
            entry.pending_id,
            entry.amount,
            entry.ledger,
            entry.code,
            entry.flags,
            entry.timeout_s,
            entry.metadata,
            entry.authorization,
        )
    if isinstance(entry, AccountCreated):
        return encode_account_created(
            entry.timestamp,
            entry.id,
            entry.ledger,
            entry.code,
            entry.flags,
            entry.owner,
            entry.operator,
        )
    if isinstance(entry, PendingExpired):
        return encode_pending_expired(
            entry.timestamp,
            entry.pending_id,
            entry.debit_account_id,
            entry.credit_account_id,
            entry.amount,
            entry.ledger,
            entry.code,
        )
    return encode_account_closed(entry.timestamp, entry.account_id)


def _u128(hi: int, lo: int) -> int:
    return (hi << 64) | lo


def _short_text(data: bytes, at: int) -> tuple[str, int]:
    if at >= len(data):
        raise EntryError("entry is truncated")
    n = data[at]
    raw = data[at + 1 : at + 1 + n]
    if len(raw) != n:
        raise EntryError("entry is truncated")
    try:
        return raw.decode(), at + 1 + n
    except UnicodeDecodeError as exc:
        raise EntryError("entry text is not UTF-8") from exc


def _blob(data: bytes, at: int) -> tuple[bytes, int]:
    if at + 2 > len(data):
        raise EntryError("entry is truncated")
    (n,) = _U16.unpack_from(data, at)
    raw = data[at + 2 : at + 2 + n]
    if len(raw) != n:
        raise EntryError("entry is truncated")
    return raw, at + 2 + n


def _decode_body(data: bytes) -> Entry:
    if len(data) < _HEAD.size:
        raise EntryError("entry is shorter than its header")
    version, kind, _ = _HEAD.unpack_from(data)
    if version != VERSION:
        raise EntryError(f"unknown entry version {version}")
    try:
        if kind == KIND_TRANSFER:
            f = _TRANSFER.unpack_from(data)
            metadata, at = _blob(data, _TRANSFER.size)
            authorization, at = _blob(data, at)
            if at != len(data):
                raise EntryError("entry has trailing bytes")
            return TransferEntry(
                f[2], _u128(f[3], f[4]), _u128(f[5], f[6]), _u128(f[7], f[8]),
                _u128(f[9], f[10]), f[11], f[12], f[13], f[14], f[15], metadata, authorization,
            )  # fmt: skip
        if kind == KIND_ACCOUNT_CREATED:
            f = _ACCOUNT.unpack_from(data)
            owner, at = _short_text(data, _ACCOUNT.size)
            operator, at = _short_text(data, at)
            if at != len(data):
                raise EntryError("entry has trailing bytes")
            return AccountCreated(f[2], _u128(f[3], f[4]), f[5], f[6], f[7], owner, operator)
        if kind == KIND_PENDING_EXPIRED:
            f = _EXPIRED.unpack(data)
            return PendingExpired(
                f[2], _u128(f[3], f[4]), _u128(f[5], f[6]), _u128(f[7], f[8]), f[9], f[10], f[11]
            )
        if kind == KIND_ACCOUNT_CLOSED:
            f = _CLOSED.unpack(data)
            return AccountClosed(f[2], _u128(f[3], f[4]))
        if kind == KIND_RECORD:
            return _decode_record(data)
    except struct.error as exc:
        raise EntryError(f"{KIND_NAMES[kind]} entry has the wrong length") from exc
    raise EntryError(f"unknown entry kind {kind}")


def _decode_record(data: bytes) -> RecordEntry:
    _, _, timestamp = _HEAD.unpack_from(data)
    type_text, at = _short_text(data, _HEAD.size)
    if at + 4 > len(data):
        raise EntryError("entry is truncated")
    (n,) = _U32.unpack_from(data, at)
    payload = data[at + 4 : at + 4 + n]
    if len(payload) != n or at + 4 + n != len(data):
        raise EntryError("record entry has the wrong length")
    try:
        if canonical_json(json.loads(payload)) != payload:
            raise EntryError("record payload is not canonical JSON")
    except (ValueError, UnicodeDecodeError) as exc:
        raise EntryError(f"record payload is not JSON: {exc}") from None
    return RecordEntry(timestamp, type_text, payload)


def decode(data: bytes) -> Entry:
    """Parse canonical entry bytes; raise ``EntryError`` on anything else."""
    entry = _decode_body(bytes(data))
    if encode(entry) != data:
        raise EntryError("entry bytes are not canonical")
    return entry


def to_json(entry: Entry) -> dict[str, object]:
    """A JSON-friendly view of an entry: 128-bit ids as UUID strings, as the API shows them."""
    out: dict[str, object] = {"kind": KIND_NAMES[entry.kind]}
    for name in entry.__dataclass_fields__:
        if name == "kind":
            continue
        value = getattr(entry, name)
        if name.endswith("id") and isinstance(value, int):
            out[name] = str(uuid.UUID(int=value)) if value else None
        elif name == "metadata":
            out[name] = parse_metadata(value)
        elif name == "authorization":
            out[name] = value.hex()
        elif name == "payload":
            out[name] = json.loads(value)
        else:
            out[name] = value
    return out

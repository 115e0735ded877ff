"""The link between HTTP worker processes and the writer's process.

``ledger serve`` runs the one writer (sequencer, engine, journal, committer) in its own process
and the HTTP API in worker processes, so that parsing, validation and signature checks use every
core while one writer keeps one log. Each worker holds a ``RemoteLedger``: the ``Ledger``
protocol over a Unix socket to the writer's ``LinkServer``.

What crosses the link:

* **submit**: an operation's items go to the writer, which queues them like any in-process
  caller; the answer (result codes, replays, details, what the engine wrote onto the items, and,
  when asked, each accepted entry's body and inclusion proof with the checkpoint) comes back
  once the batch is committed. Nothing is acknowledged before it is durable, as in process.
* **calls**: reads of the writer's memory (an account, the limits in force, the committed size,
  the clock), statement signatures (the signing key never leaves the writer) and the admission
  of signed wallet requests (one memory of their signatures for all workers).

Frames are a 4-byte big-endian length and a pickle of a list: every request (or answer) that
is ready goes out in one frame, so one pickler serves them all and a checkpoint shared by
several receipts is sent once. Both ends are this program, run by one
user; the socket lives in a directory only that user can enter. The domain's classes are
compiled (mypyc) and have no pickle support of their own, so ``_Pickler`` sends them as their
attribute values and ``_rebuild`` makes them again.

A wallet's public key at a given key version never changes, so a worker keeps the keys it has
seen (``RemoteLedger.wallet_key``) and verifies payments without asking the writer; the engine
still checks, in sequence, that the version is current.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import io
import itertools
import logging
import operator
import os
import pickle
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sqlalchemy.engine import Engine as Database

from ledger import domain
from ledger.checkpoint import Checkpoint
from ledger.domain import Account, LimitSet
from ledger.engine import OpResult
from ledger.sequencer import CommittedBatch, LedgerUnavailable, Overloaded
from ledger.service import LedgerService

log = logging.getLogger("ledger.link")

FRAME: Final = struct.Struct(">I")
FRAME_MAX_BYTES: Final = 256 * 1024 * 1024
"""Largest frame either end accepts: a full batch of BATCH_MAX items with attachments is a few
MiB; anything near this is a bug, and the link is dropped rather than the memory taken."""
READ_BUFFER_BYTES: Final = 256 * 1024
SUBMIT, CALL = 0, 1
WALLET_KEYS_MAX: Final = 1_000_000
"""Wallet keys a worker remembers before it starts again from empty."""

# -- the domain's compiled classes on the wire ------------------------------------------------


_CLASSES: Final = [
    domain.Account,
    domain.Transfer,
    domain.CloseAccount,
    domain.LimitSet,
    domain.Wallet,
    domain.OpenWallet,
    domain.UpdateWallet,
    domain.Disbursement,
    domain.AuditRecord,
    domain.ActivateLimits,
    domain.Attachment,
    domain.CancelTransferId,
]
_INDEX: Final = {cls: i for i, cls in enumerate(_CLASSES)}


def _wire_order(cls: type) -> tuple[tuple[str, ...], int]:
    """A class's attribute names as they cross the link, and how many lead: those its
    constructor takes, in the constructor's order, then the rest. ``_rebuild`` calls the
    constructor with the leading values and sets the others: a third of the time of setting
    every attribute on a blank (every payment crosses the link as a Transfer)."""
    names = getattr(cls, "__mypyc_attrs__", ()) or vars(cls)["__slots__"]
    # compiled classes name their attributes in __mypyc_attrs__, plain ones in __slots__
    params = tuple(inspect.signature(cls).parameters)
    if unknown := [p for p in params if p not in names]:
        raise TypeError(f"{cls.__name__}() takes {unknown}, which are not its attributes")
    return params + tuple(n for n in names if n not in params), len(params)


_WIRE: Final = [_wire_order(cls) for cls in _CLASSES]
_ATTRS: Final = [names for names, _ in _WIRE]
_LEADING: Final = [leading for _, leading in _WIRE]


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple]:
    """The tuple of an object's attribute values, in C (attrgetter gives a bare value for one)."""
    if len(names) == 1:
        one = operator.attrgetter(names[0])
        return lambda obj: (one(obj),)
    return operator.attrgetter(*names)


_GET: Final = [_getter(names) for names in _ATTRS]
_NOT_BACK: Final = "attachments"
"""Rows for the committer: sent with a request, never needed back."""
_REST: Final = [names[n:] for names, n in zip(_ATTRS, _LEADING, strict=True)]


def _rebuild(index: int, values: tuple) -> Any:
    leading = _LEADING[index]
    obj = _CLASSES[index](*values[:leading])
    for name, value in zip(_REST[index], values[leading:], strict=True):
        setattr(obj, name, value)
    return obj


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        index = _INDEX.get(type(obj))
        if index is None:
            return NotImplemented
        return _rebuild, (index, _GET[index](obj))


def encode(message: object) -> bytes:
    """One frame: length and pickle."""
    buffer = io.BytesIO()
    buffer.write(b"\0\0\0\0")
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(message)
    frame = buffer.getbuffer()
    FRAME.pack_into(frame, 0, len(frame) - FRAME.size)
    del frame
    return buffer.getvalue()


def read_frame(stream: io.IOBase) -> Any:
    """The next message, or None at the end of the stream."""
    head = stream.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    (size,) = FRAME.unpack(head)
    if size > FRAME_MAX_BYTES:
        raise ConnectionError(f"a frame of {size} bytes is over FRAME_MAX_BYTES")
    body = stream.read(size)
    if len(body) < size:
        return None
    return pickle.loads(body)


def snapshot(item: Any) -> tuple:
    """An item's attribute values as it arrived, to answer with what the engine changed."""
    values: tuple = _GET[_INDEX[type(item)]](item)
    return values


def changes(item: Any, before: tuple) -> tuple[tuple[int, Any], ...]:
    """What the writer's engine wrote onto ``item`` (seq, timestamp, result...) since
    ``before``, as (attribute position, value) pairs; domain objects inside it go whole, since
    the engine may have changed them in place. Answers stay small: a payment's is two pairs."""
    out = []
    for position, (old, new) in enumerate(zip(before, snapshot(item), strict=True)):
        if type(new) in _INDEX or (new is not old and new != old):
            out.append((position, new))
    return tuple(out)


def apply_changes(local: Any, changed: tuple[tuple[int, Any], ...]) -> None:
    """Give the caller's ``local`` item the writer's changes; callers keep their references,
    to the domain objects inside it too."""
    names = _ATTRS[_INDEX[type(local)]]
    for position, value in changed:
        name = names[position]
        if name == _NOT_BACK:
            continue
        mine = getattr(local, name)
        if type(value) in _INDEX and type(mine) is type(value):
            apply_changes(mine, tuple(enumerate(snapshot(value))))
        else:
            setattr(local, name, value)


# -- receipts from the writer's memory --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProvenEntries:
    """The accepted entries of one request, with their inclusion proofs at ``checkpoint``: what
    ``ledger.api.views.receipt`` needs, the same questions ``CommittedBatch`` answers."""

    checkpoint: Checkpoint
    entries: dict[int, tuple[bytes, list[bytes]]]

    def __reduce__(self) -> tuple[type[ProvenEntries], tuple[Checkpoint, dict]]:
        return ProvenEntries, (self.checkpoint, self.entries)  # faster than a slotted default

    def proves(self, seq: int, tree_size: int) -> bool:
        return tree_size == self.checkpoint.size and seq in self.entries

    def body(self, seq: int) -> bytes:
        return self.entries[seq][0]

    def inclusion_proof(self, seq: int) -> list[bytes]:
        return self.entries[seq][1]


def prove(items: list, result: OpResult) -> ProvenEntries | None:
    """Bodies and proofs of the accepted items, from the batch the writer committed."""
    batch = result.committed
    if not isinstance(batch, CommittedBatch):
        return None
    entries = {}
    for item, code in zip(items, result.codes, strict=True):
        seq = getattr(item, "seq", -1)
        if code == 0 and seq >= 0 and batch.proves(seq, result.tree_size):
            entries[seq] = (batch.body(seq), batch.inclusion_proof(seq))
    return ProvenEntries(batch.checkpoint, entries)


# -- the writer's side ------------------------------------------------------------------------


class LinkServer:
    """Accepts workers on a Unix socket and serves their submits and calls.

    ``submit`` is the writer's own (``LedgerService.submit``); ``calls`` are the functions a
    worker may call by name. Each worker gets a reader thread (requests in) and a sender thread
    (answers out, all that are ready in one write)."""

    def __init__(
        self,
        path: Path,
        submit: Callable[[int, list, str | None], Future[OpResult]],
        calls: dict[str, Callable[..., Any]],
    ) -> None:
        self.path = path
        self._submit, self._calls = submit, calls
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._listener.bind(str(path))
        os.chmod(path, 0o600)
        self._listener.listen(64)
        self._peers: list[_Peer] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="ledger-link", daemon=True)
        self._thread.start()

    def peers(self) -> int:
        """Workers connected now."""
        return sum(p.alive for p in self._peers)

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            peer = _Peer(conn, self._submit, self._calls)
            self._peers = [p for p in self._peers if p.alive] + [peer]
            peer.start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for peer in self._peers:
            peer.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class _Peer:
    def __init__(
        self,
        conn: socket.socket,
        submit: Callable[[int, list, str | None], Future[OpResult]],
        calls: dict[str, Callable[..., Any]],
    ) -> None:
        self.conn = conn
        self._submit, self._calls = submit, calls
        self._out: list[tuple[int, Any]] = []
        self._cond = threading.Condition()
        self.alive = True
        self._threads = [
            threading.Thread(target=self._read, name="ledger-link-in", daemon=True),
            threading.Thread(target=self._send, name="ledger-link-out", daemon=True),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def close(self) -> None:
        with self._cond:
            self.alive = False
            self._cond.notify()
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)

    def _answer(self, request_id: int, answer: Any) -> None:
        with self._cond:
            self._out.append((request_id, answer))
            self._cond.notify()

    def _read(self) -> None:
        stream = self.conn.makefile("rb", buffering=READ_BUFFER_BYTES)
        try:
            while True:
                message = read_frame(stream)
                if message is None:
                    break
                for request_id, kind, payload in message:
                    self._handle(request_id, kind, payload)
        except (OSError, ConnectionError, pickle.UnpicklingError, ValueError) as exc:
            log.warning("a worker's link failed: %s", exc)
        finally:
            self.close()

    def _handle(self, request_id: int, kind: int, payload: Any) -> None:
        if kind == SUBMIT:
            op, items, operator, receipts = payload
            before = [snapshot(item) for item in items]
            try:
                future = self._submit(op, items, operator)
            except (Overloaded, LedgerUnavailable) as exc:
                self._answer(request_id, _error(exc))
                return
            future.add_done_callback(
                lambda f: self._answer(request_id, (f, items, before, receipts))
            )
            return
        name, args = payload
        try:
            self._answer(request_id, ("ok", self._calls[name](*args)))
        except Exception as exc:  # a bug or a refusal: the caller raises it, the writer goes on
            self._answer(request_id, _error(exc))

    def _send(self) -> None:
        while True:
            with self._cond:
                while not self._out and self.alive:
                    self._cond.wait()
                if not self.alive:
                    return
                out, self._out = self._out, []
            frame = encode([(rid, _finish(answer)) for rid, answer in out])
            try:
                self.conn.sendall(frame)
            except OSError:
                self.close()
                return


def _error(exc: BaseException) -> tuple:
    if isinstance(exc, Overloaded):
        return ("overloaded", exc.retry_after_s)
    if isinstance(exc, LedgerUnavailable):
        return ("unavailable", str(exc))
    return ("error", f"{type(exc).__name__}: {exc}")


def _finish(answer: Any) -> tuple:
    """A submit's future, once done, as the tuple that crosses the link (built on the sender
    thread, not on the committer's)."""
    if not isinstance(answer[0], Future):
        return answer
    future, items, before, receipts = answer
    exc = future.exception()
    if exc is not None:
        return _error(exc)
    r: OpResult = future.result()
    proven = prove(items, r) if receipts else None
    changed = [changes(item, old) for item, old in zip(items, before, strict=True)]
    return ("result", (r.codes, r.replayed, r.details, r.tree_size, changed, proven))


# -- the worker's side ------------------------------------------------------------------------


class RemoteLedger:
    """The ``Ledger`` protocol in an HTTP worker: writes and the writer's memory over the link,
    reads from the database directly (``db``). ``on_lost`` runs once if the link breaks (the
    writer is gone: a worker exits rather than answer without it).

    Two connections: ``execute`` (what async request handlers await) uses one that the worker's
    event loop reads itself, so an answer wakes the loop directly; ``submit`` and the calls, which
    block, use one with a reader thread of its own."""

    def __init__(
        self, path: Path, db: Database, *, on_lost: Callable[[], None] | None = None
    ) -> None:
        self.db = db
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(str(path))
        self._send_lock = threading.Lock()
        self._pending: dict[int, tuple[Future[Any], list | None]] = {}
        self._ids = itertools.count(1)
        self._lost: str | None = None
        self._on_lost = on_lost
        self._keys: dict[int, tuple[int, bytes]] = {}
        self._warned: set[str] = set()
        self._path = path
        self._loop_links: dict[asyncio.AbstractEventLoop, asyncio.Future[_LoopLink]] = {}
        self._closing = False
        self._reader = threading.Thread(target=self._read, name="ledger-link", daemon=True)
        self._reader.start()
        self.public_key, self.origin = self._call("identity")

    # -- the wire --

    def _request(self, kind: int, payload: tuple, items: list | None) -> Future[Any]:
        future: Future[Any] = Future()
        request_id = next(self._ids)
        frame = encode([(request_id, kind, payload)])
        with self._send_lock:
            if self._lost is not None:
                raise LedgerUnavailable(self._lost)
            self._pending[request_id] = (future, items)
            try:
                self._sock.sendall(frame)
            except OSError as exc:
                self._pending.pop(request_id, None)
                raise LedgerUnavailable(f"the link to the writer failed: {exc}") from None
        return future

    def _call(self, name: str, *args: Any) -> Any:
        if name not in self._warned and _on_event_loop():
            self._warned.add(name)  # once per call: a log line per request would drown the log
            log.warning(
                "%s waited on the writer on the event loop, and so did every request of this "
                "worker meanwhile: call it from the thread pool",
                name,
            )
        return self._request(CALL, (name, args), None).result()

    def _read(self) -> None:
        stream = self._sock.makefile("rb", buffering=READ_BUFFER_BYTES)
        reason = "the writer closed the link"
        try:
            while (message := read_frame(stream)) is not None:
                for request_id, answer in message:
                    future, items = self._pending.pop(request_id)
                    _resolve(future, items, answer)
        except Exception as exc:
            reason = f"the link to the writer failed: {exc}"
            log.exception("reading from the writer failed")
        with self._send_lock:
            self._lost = reason
            pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            future.set_exception(LedgerUnavailable(reason))
        self._link_lost()

    def _link_lost(self) -> None:
        if self._on_lost is not None and not self._closing:
            self._on_lost()
            self._on_lost = None

    async def _loop_connection(self) -> _LoopLink:
        """The running event loop's own connection, made on its first use (a worker has one
        loop; tests may run several, one after the other)."""
        loop = asyncio.get_running_loop()
        made = self._loop_links.get(loop)
        if made is not None and made.done() and made.exception() is None:
            return made.result()  # every request but the first: no await of a done future
        if made is None:
            for old in [x for x in self._loop_links if x.is_closed()]:
                del self._loop_links[old]
            made = self._loop_links[loop] = loop.create_future()
            try:
                _, protocol = await loop.create_unix_connection(
                    lambda: _LoopLink(self._link_lost), str(self._path)
                )
            except OSError as exc:
                del self._loop_links[loop]
                lost = LedgerUnavailable(f"no link to the writer: {exc}")
                made.set_exception(lost)
                made.exception()  # retrieved here; every waiter raises it
                raise lost from None
            made.set_result(protocol)
        return await made

    def close(self) -> None:
        self._closing = True
        for loop, made in self._loop_links.items():
            if not loop.is_closed() and made.done() and not made.exception():
                loop.call_soon_threadsafe(made.result().close)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(10)
        self._sock.close()

    # -- the Ledger protocol --

    def submit(
        self, op: int, items: list, operator: str | None = None, *, receipts: bool = False
    ) -> Future[OpResult]:
        """Raises ``Overloaded`` (through the future) when the writer's queue is full."""
        return self._request(SUBMIT, (op, items, operator, receipts), items)

    async def execute(
        self, op: int, items: list, operator: str | None = None, *, receipts: bool = False
    ) -> OpResult:
        link = await self._loop_connection()
        result: OpResult = await link.request(SUBMIT, (op, items, operator, receipts), items)
        return result

    def clock_ns(self) -> int:
        now: int = self._call("clock_ns")
        return now

    def account(self, account_id: int) -> Account | None:
        found: Account | None = self._call("account", account_id)
        return found

    def wallet_key(self, wallet_id: int, *, fresh: bool = False) -> tuple[int, bytes] | None:
        """The wallet's (key version, public key) as last seen; ``fresh`` asks the writer. A
        remembered key may be older than the wallet's current one: the engine refuses what it
        signs (``wallet_key_rotated``), so a stale answer can never let a payment through."""
        known = None if fresh else self._keys.get(wallet_id)
        if known is not None:
            return known
        found: tuple[int, bytes] | None = self._call("wallet_key", wallet_id)
        if found is not None:
            if len(self._keys) >= WALLET_KEYS_MAX:
                self._keys.clear()
            self._keys[wallet_id] = found
        return found

    def knows_wallet_key(self, wallet_id: int, key_version: int | None = None) -> bool:
        known = self._keys.get(wallet_id)
        return known is not None and key_version in (None, known[0])

    def limits(self) -> tuple[str, dict[int, LimitSet]]:
        found: tuple[str, dict[int, LimitSet]] = self._call("limits")
        return found

    def committed_size(self) -> int:
        size: int = self._call("committed_size")
        return size

    def sign_statement(self, message: bytes) -> bytes:
        signature: bytes = self._call("sign_statement", message)
        return signature

    async def admit(
        self, wallet_id: int, key_version: int, signature: bytes, now_ms: int
    ) -> domain.Wallet | int:
        """The writer's admission of a signed wallet request (``ledger.api.wallet_auth``),
        awaited on the event loop's own connection."""
        link = await self._loop_connection()
        payload = ("admit", (wallet_id, key_version, signature, now_ms))
        admitted: domain.Wallet | int = await link.request(CALL, payload, None)
        return admitted

    def public_key_b64(self) -> str:
        return base64.b64encode(self.public_key).decode()


class _LoopLink(asyncio.Protocol):
    """The worker's event loop end of a link connection: frames in as they arrive, each answer
    resolving its request's future on the loop itself. Requests made in one turn of the loop go
    out in one write: every write wakes the writer's process, and a wake-up costs more than the
    frames (measured: about a sixth of a worker's time went to writing each request alone)."""

    def __init__(self, on_lost: Callable[[], None]) -> None:
        self._on_lost = on_lost
        self._transport: Any = None  # asyncio's or uvloop's (which does not subclass asyncio's)
        self._buffer = bytearray()
        self._pending: dict[int, tuple[asyncio.Future[Any], list | None]] = {}
        self._ids = itertools.count(1)
        self._lost: str | None = None
        self._out: list[tuple[int, int, tuple]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def request(self, kind: int, payload: tuple, items: list | None) -> asyncio.Future[Any]:
        if self._lost is not None or self._transport is None:
            raise LedgerUnavailable(self._lost or "the link to the writer is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        request_id = next(self._ids)
        self._pending[request_id] = (future, items)
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append((request_id, kind, payload))
        return future

    def _flush(self) -> None:
        out, self._out = self._out, []
        try:
            frame = encode(out)
        except Exception:  # a bug (an item that cannot be sent): only its own caller fails
            frame = b"".join(self._encode_each(out))
        if frame and self._transport is not None and not self._transport.is_closing():
            self._transport.write(frame)

    def _encode_each(self, out: list[tuple[int, int, tuple]]) -> Iterator[bytes]:
        for request in out:
            try:
                yield encode([request])
            except Exception as exc:
                future, _ = self._pending.pop(request[0])
                future.set_exception(exc)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= FRAME.size:
            (size,) = FRAME.unpack_from(buffer, start)
            if size > FRAME_MAX_BYTES:
                self.close()
                return
            end = start + FRAME.size + size
            if len(buffer) < end:
                break
            answers = pickle.loads(memoryview(buffer)[start + FRAME.size : end])
            start = end
            for request_id, answer in answers:
                future, items = self._pending.pop(request_id)
                if not future.cancelled():  # a client that went away: the answer is not needed
                    _resolve(future, items, answer)
        del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = f"the link to the writer closed ({exc or 'by the writer'})"
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(LedgerUnavailable(self._lost))
        self._on_lost()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _resolve(future: Future[Any] | asyncio.Future[Any], items: list | None, answer: tuple) -> None:
    kind, value = answer
    if kind == "ok":
        future.set_result(value)
    elif kind == "result":
        codes, replayed, details, tree_size, changed, proven = value
        assert items is not None and len(changed) == len(items)
        for mine, theirs in zip(items, changed, strict=True):
            apply_changes(mine, theirs)
        future.set_result(OpResult(codes, replayed, details, tree_size, proven))
    elif kind == "overloaded":
        future.set_exception(Overloaded(value))
    elif kind == "unavailable":
        future.set_exception(LedgerUnavailable(value))
    else:
        future.set_exception(RuntimeError(f"the writer refused a call: {value}"))


def link_server(
    path: Path, ledger: LedgerService, admit: Callable[[int, int, bytes, int], Any]
) -> LinkServer:
    """The writer's end for ``ledger``: what a ``RemoteLedger`` may ask of it, by name;
    ``admit`` admits signed wallet requests (``WriterAdmission.check``)."""
    calls: dict[str, Callable[..., Any]] = {
        "identity": lambda: (ledger.public_key, ledger.origin),
        "clock_ns": lambda: ledger.clock_ns(),
        "account": ledger.account,
        "wallet_key": ledger.wallet_key,
        "limits": ledger.limits,
        "committed_size": ledger.committed_size,
        "sign_statement": ledger.sign_statement,
        "admit": admit,
    }
    return LinkServer(path, ledger.submit, calls)

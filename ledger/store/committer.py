"""The committer process: writes batches in database transactions, in a process of its own.

Why a process: the sequencer's work (engine, canonical bytes, hashing) is Python, and the
database drivers re-take the GIL around every row they write. In one interpreter the two stages
take turns; in two processes they really run at once on two cores (measured here: SQLite commits
alone ~130k transfers/s, the sequencer's work alone ~95k/s, both in one interpreter ~45k/s).

The committer is the writer: it holds the single-writer lock and the only write connection. The
parent sends ``BatchRows`` over a pipe and waits for the answer before acknowledging anything.
If the parent dies, the committer finishes the commit in hand, sees the pipe close and exits,
releasing the lock; a restarted server's committer waits for that (``LOCK_WAIT_S``).
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import socket
import subprocess
import sys
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Final

from ledger.journal import BatchRows
from ledger.process import settle_heap
from ledger.store.database import SQLITE_WRITER_CACHE_KIB, make_engine, migrate
from ledger.store.writer import LedgerLockedError, Store, WriterLock

log = logging.getLogger("ledger.committer")

START_TIMEOUT_S: Final = 60.0


class CommitFailed(Exception):
    """The batch was not committed (database error, or the committer died)."""


class Committer:
    """Parent-side handle of the committer process."""

    def __init__(self, url: str, extra_migrations: Sequence[Path] = ()) -> None:
        self.url = url
        self.extra_migrations = [str(p) for p in extra_migrations]
        self._conn: Connection | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Start the process; it takes the writer lock and migrates the schema, then says ready.

        A fresh interpreter (``python -m ledger.store.committer``), not multiprocessing: no fork
        of a threaded process, and no re-import of the caller's ``__main__``."""
        ours, theirs = socket.socketpair()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ledger.store.committer",
                str(theirs.fileno()),
                self.url,
                *self.extra_migrations,
            ],
            pass_fds=(theirs.fileno(),),
        )
        theirs.close()
        conn = Connection(ours.detach())
        try:
            if not conn.poll(START_TIMEOUT_S):
                raise CommitFailed("the committer process did not start")
            status, detail = conn.recv()
        except (EOFError, OSError):
            status, detail = "error", f"the committer process exited ({proc.wait(10)})"
        except CommitFailed:
            proc.kill()
            raise
        if status != "ready":
            conn.close()
            proc.wait(10)
            raise LedgerLockedError(detail) if status == "locked" else CommitFailed(detail)
        self._conn, self._proc = conn, proc

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def commit(self, batches: list[BatchRows]) -> None:
        """Commit ``batches`` in one transaction (all or none), in order."""
        batches = [rows for rows in batches if not rows.is_empty()]
        if not batches:
            return
        if self._conn is None:
            raise CommitFailed("the committer is not running")
        try:
            # plain pickle: multiprocessing's own pickler copies its dispatch table per message
            self._conn.send_bytes(pickle.dumps(batches, pickle.HIGHEST_PROTOCOL))
            error = self._conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError) as exc:
            raise CommitFailed(f"the committer process died: {exc!r}") from None
        if error is not None:
            raise CommitFailed(error)

    def ensure_running(self) -> None:
        """After a failure: restart the process if it died (the lock passes to the new one)."""
        if not self.alive():
            self.close()
            self.start()

    def close(self, timeout_s: float = 30.0) -> None:
        conn, proc = self._conn, self._proc
        self._conn = self._proc = None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.send(None)
            conn.close()
        if proc is not None:
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _main(url: str, conn: Connection, extra_migrations: Sequence[str] = ()) -> None:
    """The committer process: lock, migrate, then commit batches until told to stop."""
    engine = make_engine(url, sqlite_cache_kib=SQLITE_WRITER_CACHE_KIB)
    try:
        lock = WriterLock.acquire(url, engine)
    except LedgerLockedError as exc:
        conn.send(("locked", str(exc)))
        return
    try:
        migrate(engine, [Path(p) for p in extra_migrations])
        store = Store(engine)
        settle_heap()
        conn.send(("ready", None))
        _serve(store, conn)
    except Exception as exc:  # report, then exit: the parent fails the batch and restarts us
        log.exception("committer stopped")
        with contextlib.suppress(OSError):
            conn.send(("error", repr(exc)))
    finally:
        lock.release()
        engine.dispose()


def _serve(store: Store, conn: Connection) -> None:
    while True:
        try:
            batches = conn.recv()
        except EOFError:  # the parent is gone: stop, releasing the lock
            return
        if batches is None:
            return
        try:
            store.commit(batches)
        except Exception as exc:
            conn.send(f"{type(exc).__name__}: {exc}")
            continue
        try:
            conn.send(None)
        except OSError:
            return


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _main(sys.argv[2], Connection(int(sys.argv[1])), sys.argv[3:])

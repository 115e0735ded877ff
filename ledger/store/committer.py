"""The committer process: writes batches in database transactions, in a process of its own.

Why a process: the sequencer's work (engine, canonical bytes, hashing) is Python, and the
database drivers re-take the GIL around every row they write. In one interpreter the two stages
take turns; in two processes they really run at once on two cores (measured here: SQLite commits
alone ~130k transfers/s, the sequencer's work alone ~95k/s, both in one interpreter ~45k/s).

The committer is the writer: it holds the single-writer lock and the only write connection. The
parent sends ``BatchRows`` over a pipe and waits for the answer before acknowledging anything.
If the parent dies, the committer finishes the commit in hand, sees the pipe close and exits,
releasing the lock; a restarted server's committer waits for that (``LOCK_WAIT_S``).

How it starts: a process that opens ledgers has one *launcher*, a fresh interpreter
(``python -m ledger.store.committer``) that imports the committer's code and runs its
migrations once on a scratch database, then forks a committer for each ledger opened. A fresh
interpreter, not a fork of the caller: no fork of a threaded process, no copy of the caller's
heap, no re-import of its ``__main__``. Forked from the warm launcher, a committer is ready in
tens of milliseconds instead of half a second or more (the interpreter, SQLAlchemy's and
Alembic's imports, Alembic's first run): what a restart after a failed commit waits for, and
what every test that opens a ledger pays.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Final

from sqlalchemy import create_engine

from ledger.journal import BatchRows
from ledger.process import settle_heap, wait_gone
from ledger.store.database import SQLITE_WRITER_CACHE_KIB, make_engine, migrate
from ledger.store.writer import LedgerLockedError, Store, WriterLock

log = logging.getLogger("ledger.committer")

START_TIMEOUT_S: Final = 60.0
KILL_WAIT_S: Final = 10.0


class CommitFailed(Exception):
    """The batch was not committed (database error, or the committer died)."""


class Committer:
    """Parent-side handle of the committer process."""

    def __init__(self, url: str, extra_migrations: Sequence[Path] = ()) -> None:
        self.url = url
        self.extra_migrations = [str(p) for p in extra_migrations]
        self._conn: Connection | None = None
        self.pid: int | None = None
        self.start()

    def start(self) -> None:
        """Start the process (forked by this process's launcher); it takes the writer lock and
        migrates the schema, then says ready."""
        ours, theirs = socket.socketpair()
        try:
            pid = LAUNCHER.launch(self.url, self.extra_migrations, theirs)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        started = False
        try:
            started = conn.poll(START_TIMEOUT_S)
            if started:
                status, detail = conn.recv()
            else:
                status, detail = "error", "the committer process did not start"
        except (EOFError, OSError):
            status, detail = "error", "the committer process exited"
        if status != "ready":  # one that did not start in time is killed at once
            _wait_for_exit(conn, pid, START_TIMEOUT_S if started else 0.0)
            raise LedgerLockedError(detail) if status == "locked" else CommitFailed(detail)
        self._conn, self.pid = conn, pid

    def alive(self) -> bool:
        """Whether the process runs. Between commits it never writes unasked, so anything to
        read is the end of its pipe: it has exited."""
        return self._conn is not None and not self._conn.poll(0)

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
        """Stop the process; return once it has exited, so its writer lock is free."""
        conn, pid = self._conn, self.pid
        self._conn = self.pid = None
        if conn is not None and pid is not None:
            with contextlib.suppress(OSError):
                conn.send(None)
            _wait_for_exit(conn, pid, timeout_s)


def _wait_for_exit(conn: Connection, pid: int, timeout_s: float) -> None:
    """Wait for the end of a committer's pipe, which comes when the process has exited (its
    lock released before that); SIGKILL it if that takes longer than ``timeout_s``."""
    try:
        while conn.poll(timeout_s):
            conn.recv()  # an answer still in flight, then the end
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        # The pipe ends as the kernel closes the killed process's files, one by one: its lock's
        # may still be open then. Once no thread of it runs, all are closed.
        conn.poll(KILL_WAIT_S)
        wait_gone([pid], KILL_WAIT_S)
    except (EOFError, OSError):
        pass
    finally:
        conn.close()


class Launcher:
    """Forks committers for this process, from a fresh interpreter that has imported and run
    the committer's code once (see the module's docstring). Started on first use, and again if
    it died (the crash harness kills it with its committers); it exits when this process closes
    its end of the socket, or dies. Its committers outlive it: each stops at the end of its
    own pipe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the writer's threads and tests may open ledgers at once
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._owner = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def launch(self, url: str, extra_migrations: list[str], pipe_end: socket.socket) -> int:
        """Fork a committer for ``url`` that talks over ``pipe_end``; its process id. Like a
        process started now, not like the launcher, it works in this process's current
        directory and environment (a relative SQLite path, ``LEDGER_SQLITE_SYNCHRONOUS``) and
        writes to its current standard output and error."""
        with self._lock:
            sock = self._running()
            std = [fd for fd in (1, 2) if _is_open(fd)]
            request = pickle.dumps((url, extra_migrations, os.getcwd(), dict(os.environ), std))
            try:
                socket.send_fds(sock, [request], [pipe_end.fileno(), *std])
                answer = sock.recv(8)
            except OSError:
                answer = b""
            if len(answer) != 8:
                self._stop()
                raise CommitFailed("the committer launcher died")
            (pid,) = struct.unpack("!q", answer)
            if pid < 0:
                raise CommitFailed("the committer launcher could not fork")
            return int(pid)

    def _running(self) -> socket.socket:
        if self._sock is not None and (self._owner != os.getpid() or not self._alive()):
            self._stop()  # died, or this is a fork of the process that started it
        if self._sock is None:
            self._start()
        assert self._sock is not None
        return self._sock

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "ledger.store.committer", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
        )
        theirs.close()
        if self._owner == 0:
            atexit.register(self.close)
        self._sock, self._owner = ours, os.getpid()
        ready, _, _ = select.select([ours], [], [], START_TIMEOUT_S)
        if not ready or ours.recv(16) != b"ready":
            self._stop()
            raise CommitFailed("the committer launcher did not start")

    def close(self) -> None:
        """Stop the launcher (at exit); committers it started run on until their pipes end."""
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._proc is not None and self._owner == os.getpid():
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._sock = self._proc = None


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


LAUNCHER: Final = Launcher()
"""This process's launcher."""


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


def _warm_up() -> None:
    """Do once what each committer would otherwise do first: Alembic's lazy imports and its
    first run (on a scratch SQLite database in memory: nothing on disk), and the PostgreSQL
    driver's import."""
    import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401

    engine = create_engine("sqlite://")
    try:
        migrate(engine)
    finally:
        engine.dispose()
    settle_heap()  # so each committer's own settle_heap walks only what it made itself


def _launch_loop(control: socket.socket) -> None:
    """The launcher: fork a committer for each request, until the parent closes its end.

    It and its committers ignore SIGINT: a Ctrl-C in the terminal reaches the whole process
    group, and the writer stops its committer itself once the requests in hand are done (a
    committer whose writer is gone stops at the end of its pipe)."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the committers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control.send(b"ready")
    while True:
        try:
            request, fds, _, _ = socket.recv_fds(control, 1 << 16, 3)
        except OSError:
            return
        if not request:
            return  # the parent is gone; the committers it started see their own pipes end
        url, extra_migrations, cwd, environment, std = pickle.loads(request)
        try:
            pid = os.fork()
        except OSError:
            pid = -1
        if pid == 0:
            code = 0
            try:
                control.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.chdir(cwd)
                os.environ.clear()
                os.environ.update(environment)
                pipe_end, *copies = fds
                for copy, fd in zip(copies, std, strict=True):
                    os.dup2(copy, fd)
                _main(url, Connection(pipe_end), extra_migrations)
            except BaseException:
                log.exception("committer failed")
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        for fd in fds:
            os.close(fd)
        control.send(struct.pack("!q", pid))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    launcher_socket = socket.socket(fileno=int(sys.argv[1]))
    _warm_up()
    _launch_loop(launcher_socket)

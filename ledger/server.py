"""Composes what ``ledger serve`` runs: the writer's process, its HTTP workers and their apps.

``ledger serve`` is one writer process and ``--workers`` HTTP worker processes:

* **the writer** (the process ``ledger serve`` starts in): the ledger itself (sequencer, engine,
  journal; its committer process writes the database), the background work (order expiry,
  webhook delivery, settlement, loan collection), and the link the workers use
  (``ledger.link``). It binds the listening socket and answers no HTTP itself;
* **each worker** (``python -m ledger.worker``): uvicorn with the whole API (the ledger's and
  the merchant API's) on that socket, over a ``RemoteLedger``. It parses, validates and checks
  payers' signatures itself and hands the writer only what passed.

Why: one interpreter runs Python on one core at a time, and HTTP, JSON and validation cost
more per payment than the writer's own work (measured, README "Benchmarks"). Workers spread
them over every core while one writer keeps one log, so the log can never fork.

This is the one module in ``ledger`` allowed to import the packages built on top of it (the
merchant API), so the ledger core never depends on them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Final

from fastapi import FastAPI

from ledger.api.app import create_app
from ledger.api.wallet_auth import Admission
from ledger.config import Settings
from ledger.credit.loans import Collector
from ledger.link import LinkServer, link_server
from ledger.process import settle_heap
from ledger.service import Ledger, LedgerService
from ledger.wallets.kyc import KycStore, load_or_create_key
from ledger.wallets.service import Wallets
from merchant_api import app as merchant_app
from merchant_api.service import MerchantService, now_ms

log = logging.getLogger("ledger.server")

WORKERS_DEFAULT: Final = max(1, min(os.cpu_count() or 1, 8))
"""HTTP workers when ``--workers`` is not given: one per core (up to 8)."""
LISTEN_BACKLOG: Final = 2048
BIND_WAIT_S: Final = 15.0
"""How long to wait for the port while the workers of a killed predecessor exit."""
WORKER_START_S: Final = 60.0
RESTARTS_MAX: Final = 5
"""Workers that exit on their own are started again, this many times in all; then the server
stops (a worker that cannot start would otherwise be restarted for ever)."""
STOP_WAIT_S: Final = 30.0


def open_wallets(ledger: Ledger, kyc_key_file: Path) -> Wallets:
    """The wallet layer on a running ledger, with the operators' KYC store."""
    return Wallets(ledger, KycStore(ledger.db, load_or_create_key(kyc_key_file)))


def full_app(
    ledger: Ledger,
    wallets: Wallets,
    merchant_key: bytes,
    *,
    clock_ms: Callable[[], int] = now_ms,
    admission: Admission | None = None,
    rate_file: Path | None = None,
) -> tuple[FastAPI, MerchantService]:
    """The ledger's API with the merchant API in it. ``rate_file``: the merchant keys' rate
    limit buckets, shared with the server's other HTTP workers (``None``: this process's own)."""
    app = create_app(ledger, wallets, admission=admission)
    merchants = MerchantService(ledger, wallets, merchant_key, clock_ms=clock_ms)
    merchant_app.install(app, merchants, rate_file=rate_file)
    return app, merchants


@contextmanager
def running(settings: Settings) -> Iterator[tuple[FastAPI, LedgerService]]:
    """The ledger, its wallet layer, the merchant API and the background work, in this process;
    yields the (in-process) app and the ledger, and closes them all."""
    ledger = LedgerService.open(
        settings.database_url,
        settings.key_file,
        settings.origin,
        extra_migrations=[merchant_app.MIGRATIONS],
    )
    wallets = workers = collector = None
    try:
        wallets = open_wallets(ledger, settings.kyc_key_file)
        merchant_key = load_or_create_key(settings.merchant_key_file)
        app, merchants = full_app(ledger, wallets, merchant_key)
        workers = merchant_app.Workers(merchants)
        workers.start()
        collector = Collector(app.state.loans)
        collector.start()
        yield app, ledger
    finally:
        if collector is not None:
            collector.stop()
        if workers is not None:
            workers.stop()
        if wallets is not None:
            wallets.close()
        ledger.close()


class LedgerServer:
    """``ledger serve``: the writer in this process and ``workers`` HTTP worker processes on
    ``settings.host:port``. ``start`` runs ``before_workers`` on the open ledger (the first
    central-bank key, say), then returns once every worker has joined the link; ``watch``
    restarts a worker that died; ``stop`` ends the workers, then the writer (which drains and
    commits whatever it accepted)."""

    def __init__(
        self,
        settings: Settings,
        workers: int = WORKERS_DEFAULT,
        *,
        before_workers: Callable[[LedgerService], None] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("a server needs at least one HTTP worker")
        self.settings, self.workers = settings, workers
        self._before_workers = before_workers
        self._stack = ExitStack()
        self.app: FastAPI | None = None
        self.ledger: LedgerService | None = None
        self._link: LinkServer | None = None
        self._link_dir: Path | None = None
        self._socket: socket.socket | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self.restarts = 0

    def start(self) -> None:
        try:
            self.app, self.ledger = self._stack.enter_context(running(self.settings))
            if self._before_workers is not None:
                self._before_workers(self.ledger)
            settle_heap()
            self._link_dir = Path(tempfile.mkdtemp(prefix="ledger-link-"))  # mode 0700
            self._stack.callback(shutil.rmtree, self._link_dir, True)
            self._link = link_server(
                self._link_dir / "link.sock",
                self.ledger,
                self.app.state.admission.check,
            )
            self._stack.callback(self._link.close)
            self._socket = bind(self.settings.host, self.settings.port)
            self._stack.callback(self._socket.close)
            self._procs = [self._spawn(i) for i in range(self.workers)]
            self._stack.callback(self._stop_workers)
            self._await_workers()
        except BaseException:
            self._stack.close()
            raise

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        assert self._socket is not None and self._link is not None and self._link_dir is not None
        fd = self._socket.fileno()
        env = dict(os.environ)
        env.setdefault("MALLOC_ARENA_MAX", "2")  # see ledger.process.few_malloc_arenas
        s = self.settings
        command = [
            sys.executable, "-m", "ledger.worker", "--fd", str(fd),
            "--link", str(self._link.path), "--database", s.database_url,
            "--kyc-key-file", str(s.kyc_key_file), "--merchant-key-file",
            str(s.merchant_key_file), "--rate-file", str(self._link_dir / "rates"),
            "--workers", str(self.workers), "--index", str(index),
        ]  # fmt: skip
        return subprocess.Popen(command, pass_fds=(fd,), env=env)

    def _await_workers(self) -> None:
        assert self._link is not None
        deadline = time.monotonic() + WORKER_START_S
        while self._link.peers() < len(self._procs):
            for proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"an HTTP worker exited at start ({proc.returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError("the HTTP workers did not start")
            time.sleep(0.05)

    def watch(self) -> None:
        """Start again any worker that exited; raise once that has happened too often."""
        for i, proc in enumerate(self._procs):
            if proc.poll() is None:
                continue
            self.restarts += 1
            if self.restarts > RESTARTS_MAX:
                raise RuntimeError(f"HTTP workers keep exiting (the last with {proc.returncode})")
            log.warning("HTTP worker %d exited (%s); starting it again", i, proc.returncode)
            self._procs[i] = self._spawn(i)

    def _stop_workers(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # uvicorn finishes the requests in hand
        deadline = time.monotonic() + STOP_WAIT_S
        for proc in self._procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def stop(self) -> None:
        self._stack.close()

    def __enter__(self) -> LedgerServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts on. After a crash, the workers of the killed
    server may hold the port for a moment (they die with their parent): wait for them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + BIND_WAIT_S
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            continue
        sock.listen(LISTEN_BACKLOG)
        sock.set_inheritable(True)
        return sock


@contextlib.contextmanager
def signals_stop() -> Iterator[list[int]]:
    """SIGINT and SIGTERM end ``ledger serve`` cleanly; yields the list they are noted in."""
    caught: list[int] = []

    def note(signum: int, _frame: object) -> None:
        caught.append(signum)

    old = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)

"""``ledger serve`` as it runs: one writer process, HTTP worker processes on one port.

The helpers at the top are what other tests import to talk to a real server over HTTP (the code
lives in ``ledger.crash``: the crash-safety harness drives the same process). ``Server`` starts
``python -m ledger.cli serve`` with its key and first central-bank key in a temporary directory
and waits for /healthz; ``kill()`` is SIGKILL, ``stop()`` SIGTERM. The SIGKILL-and-restart test
is ``tests/test_crash.py``."""

from __future__ import annotations

import base64
import http.client
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from nacl.signing import SigningKey

from ledger import signing
from ledger.crash import ServeProcess, free_port, serving
from ledger.process import alive, descendants
from loadtests import http_bench

Server = ServeProcess

__all__ = ["Server", "free_port", "serving"]


def workers_of(server: ServeProcess) -> list[int]:
    assert server.proc is not None
    return [
        pid
        for pid in descendants(server.proc.pid)
        if b"ledger.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


@pytest.fixture
def two_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServeProcess]:
    monkeypatch.setenv("LEDGER_WORKERS", "2")
    with serving(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path) as server:
        yield server


def signed_read(wallet_id: str, seed_hex: str, path: str) -> dict[str, str]:
    now = time.time_ns() // 1_000_000
    message = signing.read_message("GET", path, now, b"")
    signature = SigningKey(bytes.fromhex(seed_hex)).sign(message).signature
    return {
        "Wallet-Id": wallet_id,
        "Wallet-Timestamp": str(now),
        "Wallet-Signature": base64.b64encode(signature).decode(),
    }


def test_workers_share_one_port_and_one_replay_guard(two_workers: ServeProcess) -> None:
    assert len(workers_of(two_workers)) == 2
    seeded = http_bench.seed_ledger(
        two_workers.base, two_workers.admin_file.read_text().strip(), payers=1, payees=1
    )
    wallet_id, seed = seeded.payers[0]
    path = f"/v1/wallets/{wallet_id}"
    headers = signed_read(wallet_id, seed, path)
    statuses = []
    for _ in range(12):  # a new connection each time: the kernel hands them to either worker
        with httpx.Client(base_url=two_workers.base, timeout=30) as http:
            statuses.append(http.get(path, headers=headers).status_code)
    assert statuses.count(200) == 1 and statuses.count(401) == 11, statuses


def test_a_worker_that_dies_is_replaced(two_workers: ServeProcess) -> None:
    first = workers_of(two_workers)
    os.kill(first[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        now = workers_of(two_workers)
        if len(now) == 2 and first[0] not in now:
            break
        assert time.monotonic() < deadline, f"no new worker: {now}\n{two_workers.log()}"
        time.sleep(0.1)
    for _ in range(10):
        with httpx.Client(base_url=two_workers.base, timeout=30) as http:
            assert http.get("/healthz").status_code == 200


def test_workers_die_with_their_writer(two_workers: ServeProcess) -> None:
    workers = workers_of(two_workers)
    assert two_workers.proc is not None
    two_workers.proc.send_signal(signal.SIGKILL)
    two_workers.proc.wait(10)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in workers):
        assert time.monotonic() < deadline, "a worker outlived its writer"
        time.sleep(0.05)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{two_workers.base}/healthz", timeout=5)


def test_an_idle_keep_alive_connection_stays_open_past_uvicorns_default(
    two_workers: ServeProcess,
) -> None:
    """A connection left idle for longer than uvicorn's default keep-alive (5 s) still answers:
    a client sending on it as the server closed it would get no answer at all."""
    from ledger.worker import KEEP_ALIVE_S

    assert KEEP_ALIVE_S > 6
    conn = http.client.HTTPConnection("127.0.0.1", two_workers.port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        first = conn.getresponse()
        assert first.status == 200 and first.read()
        opened = conn.sock
        time.sleep(6.5)  # past uvicorn's default of 5 s
        conn.request("GET", "/healthz")  # on the same socket (it would raise, were it closed)
        assert conn.sock is opened
        second = conn.getresponse()
        assert second.status == 200 and second.read()
    finally:
        conn.close()

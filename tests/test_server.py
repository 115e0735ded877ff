"""A real `ledger serve` process: killed mid-stream, restarted, and the log continues.

Clients keep paying while the server is SIGKILLed. Afterwards: every acknowledged transfer is in
the ledger exactly once, requests whose answer never came are resolved by retrying the same ids,
the new checkpoints are consistent with the last one signed before the crash, a second server on
the same database is refused at once, and `ledger verify` passes."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from ledger import merkle
from ledger.ids import new_uuid

SERVE_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, url: str, tmp: Path) -> None:
        self.url, self.tmp = url, tmp
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.admin_file = tmp / "admin.key"
        self.proc: subprocess.Popen[str] | None = None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "ledger.cli", "serve", "--database", self.url,
            "--key-file", str(self.tmp / "ledger.key"), "--port", str(self.port),
            "--admin-key-file", str(self.admin_file),
        ]  # fmt: skip

    def start(self) -> None:
        log = open(self.tmp / f"serve-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.tmp / log.name).read_text()
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("ledger serve did not come up")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_file.read_text().strip()}"}


@contextmanager
def serving(url: str, tmp: Path) -> Iterator[Server]:
    server = Server(url, tmp)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_killed_mid_stream_restarts_and_continues_the_same_log(
    database_url: str, tmp_path: Path
) -> None:
    issuer, shop = new_uuid(), new_uuid()
    acknowledged: dict[str, int] = {}
    unanswered: list[list[dict[str, object]]] = []
    checkpoints: list[dict[str, object]] = []
    with serving(database_url, tmp_path) as server:
        client = httpx.Client(base_url=server.base, headers=server.headers, timeout=10)
        created = client.post(
            "/v1/accounts", json={"accounts": [{"id": issuer, "code": 1}, {"id": shop, "code": 3}]}
        )
        assert [r["result"] for r in created.json()["results"]] == ["ok", "ok"]
        stop = threading.Event()

        def pay() -> None:
            while not stop.is_set():
                batch = [
                    {"id": new_uuid(), "debit_account_id": issuer, "credit_account_id": shop,
                     "amount": 1 + i, "code": 1}
                    for i in range(20)
                ]  # fmt: skip
                try:
                    response = client.post("/v1/transfers", json={"transfers": batch})
                    for item, result in zip(batch, response.json()["results"], strict=True):
                        assert result["result"] == "ok"
                        acknowledged[str(item["id"])] = int(item["amount"])  # type: ignore[call-overload]
                    checkpoints.append(client.get("/v1/checkpoints/latest").json())
                except httpx.HTTPError:
                    unanswered.append(batch)  # the server died: we never saw the outcome
                    return

        senders = [threading.Thread(target=pay) for _ in range(4)]
        for t in senders:
            t.start()
        time.sleep(1.5)
        server.kill()
        stop.set()
        for t in senders:
            t.join(30)
        assert len(acknowledged) > 100, "payments were flowing when the server died"

        server.start()  # same database, same key
        second = subprocess.run(
            Server(database_url, tmp_path).command(), capture_output=True, text=True, timeout=60
        )
        assert second.returncode != 0 and "another ledger writer" in second.stderr

        for batch in unanswered:  # resolve by retrying the same ids, never by guessing
            response = client.post("/v1/transfers", json={"transfers": batch})
            for item, result in zip(batch, response.json()["results"], strict=True):
                assert result["result"] == "ok"
                acknowledged[str(item["id"])] = int(item["amount"])  # type: ignore[call-overload]
        again = (
            client.post("/v1/transfers", json={"transfers": unanswered[0]}) if unanswered else None
        )
        if again is not None:
            assert all(r["replayed"] for r in again.json()["results"]), "applied once only"

        shop_account = client.get(f"/v1/accounts/{shop}").json()
        assert shop_account["balances"]["credits_posted"] == sum(acknowledged.values())
        for tid in list(acknowledged)[:: max(1, len(acknowledged) // 50)]:
            assert client.get(f"/v1/transfers/{tid}").json()["result"] == "ok"

        before = checkpoints[-1]
        after = client.get("/v1/checkpoints/latest").json()
        assert after["tree_size"] >= before["tree_size"]
        proof = client.get(
            "/v1/proofs/consistency",
            params={"first": before["tree_size"], "second": after["tree_size"]},
        ).json()["proof"]
        assert merkle.verify_consistency(
            before["tree_size"],
            after["tree_size"],
            base64.b64decode(before["root_hash"]),
            base64.b64decode(after["root_hash"]),
            [base64.b64decode(h) for h in proof],
        )
        client.close()
    verify = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "verify", "--database", database_url],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.startswith(f"OK {2 + len(acknowledged)} entries")

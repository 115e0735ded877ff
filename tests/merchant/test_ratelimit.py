"""Merchant keys' rate limits, one bucket per key shared by every HTTP worker of a server
(``merchant_api.ratelimit``): in one table, across real processes, and through a real
``ledger serve`` with two HTTP workers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from merchant_api.ratelimit import SharedBuckets
from tests.sdk.test_client_server import Ledger
from tests.test_server import Server

SLOW = 1e-6
"""A refill rate so low that no test lives to see a token come back."""


def test_a_bucket_spends_its_burst_then_says_how_long_to_wait(tmp_path: Path) -> None:
    buckets = SharedBuckets(tmp_path / "rates", rate_per_s=0.5, burst=3)
    assert [buckets.take("key-a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = buckets.take("key-a")
    assert 0 < wait <= 2.0  # one token at 0.5/s
    assert buckets.take("key-b") == 0.0  # every key has its own bucket
    buckets.close()


def test_two_processes_mapping_one_table_share_each_bucket(tmp_path: Path) -> None:
    """Two workers (two mappings of one file) take from the same bucket, not from one each."""
    first = SharedBuckets(tmp_path / "rates", rate_per_s=SLOW, burst=5)
    second = SharedBuckets(tmp_path / "rates", rate_per_s=SLOW, burst=5)
    taken = [first.take("k") for _ in range(3)] + [second.take("k") for _ in range(3)]
    assert taken[:5] == [0.0] * 5 and taken[5] > 0
    assert first.take("k") > 0 and second.take("other") == 0.0
    first.close()
    second.close()


SPENDER = """
import sys
from pathlib import Path
from merchant_api.ratelimit import SharedBuckets
buckets = SharedBuckets(Path(sys.argv[1]), rate_per_s=1e-6, burst=20_000)
sys.stdin.readline()  # start together
print(sum(buckets.take("hot-key") == 0.0 for _ in range(10_000)))
"""


def test_concurrent_processes_never_spend_more_than_the_burst(tmp_path: Path) -> None:
    """Four processes race for one key's 20,000 tokens, 10,000 tries each: exactly 20,000 get
    through (without the table's lock, two processes read the same count and both spend it)."""
    path = tmp_path / "rates"
    SharedBuckets(path, rate_per_s=SLOW, burst=20_000).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SPENDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    allowed = [int(proc.communicate(timeout=120)[0]) for proc in procs]
    assert sum(allowed) == 20_000, allowed


def test_a_key_that_went_quiet_gives_its_slot_up(tmp_path: Path) -> None:
    """A table of two slots: a third key finds both held while their buckets still count and
    is let through (no room is no reason to refuse a payment); once a bucket has refilled, its
    slot is as good as free and the new key is counted there."""
    clock = [0]
    buckets = SharedBuckets(None, rate_per_s=1.0, burst=2, slots=2)
    monotonic = pytest.MonkeyPatch()
    monotonic.setattr("merchant_api.ratelimit.time.monotonic_ns", lambda: clock[0])
    try:
        assert buckets.take("a") == 0.0 and buckets.take("b") == 0.0
        assert [buckets.take("c") for _ in range(5)] == [0.0] * 5  # no slot: not counted
        clock[0] += 2_000_000_000  # two seconds: both buckets are full again
        assert [buckets.take("c") for _ in range(2)] == [0.0, 0.0]
        assert buckets.take("c") > 0  # counted now
    finally:
        monotonic.undo()
        buckets.close()


def test_a_bad_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="positive rate"):
        SharedBuckets(None, rate_per_s=0, burst=10)
    with pytest.raises(ValueError, match="burst of at least 1"):
        SharedBuckets(None, rate_per_s=1, burst=0.5)


def test_ledger_serve_gives_a_key_its_whole_rate_across_two_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real server with two HTTP workers, each key allowed a burst of 20. On one kept-alive
    connection (one worker) the key gets all 20, not the half a worker used to keep; on a new
    connection per request (spread over both workers) it gets 20 in all, not 20 from each."""
    monkeypatch.setenv("MERCHANT_RATE_LIMIT_PER_S", str(SLOW))
    monkeypatch.setenv("MERCHANT_RATE_LIMIT_BURST", "20")
    server = Server(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path, workers=2)
    server.start()
    try:
        ledger = Ledger(server)
        signup = {
            "name": "Tea House",
            "city": "Shanghai",
            "kyc": {"name": "Tea House Ltd", "id_number": "91310000"},
            "linked_bank_account": ledger.bank_account(),
        }
        created = ledger.http.post(
            "/v1/merchants", json=signup, headers=ledger.bearer(ledger.op_key)
        )
        assert created.status_code == 201, created.text
        keys = created.json()["keys"]
        ledger.http.close()

        with httpx.Client(base_url=server.base, timeout=30) as one_connection:
            kept = [
                one_connection.get("/v1/merchants/me", headers=ledger.bearer(keys["test"]))
                for _ in range(30)
            ]
        assert [r.status_code for r in kept] == [200] * 20 + [429] * 10

        fresh = []
        for _ in range(30):
            with httpx.Client(base_url=server.base, timeout=30) as new_connection:
                fresh.append(
                    new_connection.get("/v1/merchants/me", headers=ledger.bearer(keys["live"]))
                )
        assert [r.status_code for r in fresh] == [200] * 20 + [429] * 10
    finally:
        server.stop()

"""Crash safety (issue #5): SIGKILL a real ``ledger serve`` mid-stream, again and again.

``ledger.crash.run`` does the work and the checking (see its docstring): after every kill and
restart, nothing acknowledged is lost, nothing is applied twice (unanswered batches are resolved
by retrying the same ids), the journal continues the same Merkle log, and balances equal a replay
of the journal. Here it runs a short, seeded version on SQLite and on PostgreSQL; the audit it
relies on is shown to fail on a planted problem; and the ``ledger crash-test`` command runs end to
end. Longer runs: ``ledger crash-test --rounds 1000`` (see the README)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from ledger.audit import audit, read_record
from ledger.crash import RECORD_NAME, run
from ledger.ids import new_uuid
from ledger.store.database import make_engine

ROUNDS = 4


def test_kills_lose_nothing_and_apply_nothing_twice(database_url: str, tmp_path: Path) -> None:
    lines: list[str] = []
    report = run(
        database_url, tmp_path, rounds=ROUNDS, clients=4, seed=5, log=lines.append,
        min_s=0.3, max_s=1.2,
    )  # fmt: skip
    assert report.ok, report.summary()
    assert report.kills == report.rounds == ROUNDS
    assert report.acknowledged > 50, "payments were flowing when the server died"
    assert report.second_writer_refused
    assert report.full_verifies == ROUNDS + 1
    assert report.entries == report.acknowledged + 5  # the five accounts, then the payments
    assert [line.split(":")[0] for line in lines if line.startswith("round ")] == [
        f"round {i}/{ROUNDS}" for i in range(1, ROUNDS + 1)
    ]

    # The audit behind "nothing lost, nothing twice" can fail: plant what it must catch.
    record_path = tmp_path / RECORD_NAME
    record_lines = record_path.read_text().splitlines()
    acked = next(line.split()[1] for line in record_lines if line.startswith("ack "))
    lost = new_uuid()
    planted = tmp_path / "planted.ids"
    planted.write_text(record_path.read_text() + f"ack {lost}\nrej {acked}\n")
    refused = tmp_path / "refused.ids"
    refused.write_text(f"rej {acked}\n")  # a refusal that would have turned into a payment
    engine = make_engine(database_url)
    try:
        clean = audit(engine, read_record([record_path]), run_verify=False)
        found = audit(engine, read_record([planted]), run_verify=False)
        turned = audit(engine, read_record([refused]), run_verify=False)
    finally:
        engine.dispose()
    assert clean.ok and clean.acknowledged == report.acknowledged
    assert not found.ok
    assert f"acknowledged {uuid.UUID(lost)} is in the journal 0 times" in found.problems
    assert f"{uuid.UUID(acked)} was answered both ok and rejected" in found.problems
    assert turned.problems == [f"rejected {uuid.UUID(acked)} is in the journal as a transfer"]


def test_crash_test_command(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    database = f"sqlite:///{tmp_path / 'crash.db'}"
    command = [
        sys.executable, "-m", "ledger.cli", "crash-test", "--database", database,
        "--dir", str(directory), "--rounds", "2", "--clients", "3", "--seed", "11",
        "--verify-every", "2",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK crash test"), done.stdout
    assert "2 rounds, 2 SIGKILLs" in done.stdout
    assert "round 2/2" in done.stderr

    recheck = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "audit-load", str(directory / RECORD_NAME),
         "--database", database],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert recheck.returncode == 0, recheck.stdout + recheck.stderr
    assert recheck.stdout.startswith("OK audit")

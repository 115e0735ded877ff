"""The `ledger` command: bench prints one JSON object with every figure; keys are issued once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ledger.auth import Authenticator
from ledger.store.database import make_engine
from tests.conftest import POSTGRES_SERVER


def ledger_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def test_bench_json_has_every_figure() -> None:
    run = ledger_cli(
        "bench", "--json", "--runs", "1", "--transfers", "3000", "--postgres", POSTGRES_SERVER
    )
    assert run.returncode == 0, run.stderr
    figures = json.loads(run.stdout)
    for key in (
        "engine_tps",
        "sqlite_tps",
        "postgres_tps",
        "hot_account_sqlite_tps",
        "hot_account_postgres_tps",
        "baseline_sqlite_raw_tps",
        "signed_sqlite_tps",
    ):
        assert isinstance(figures[key], int) and figures[key] > 0, key
    assert figures["transfers_per_run"] == 3000 and figures["runs"] == 1


def test_keys_create_prints_a_working_key_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    run = ledger_cli("keys", "create", "--operator", "op_icbc", "--database", url)
    assert run.returncode == 0, run.stderr
    key = run.stdout.strip()
    assert key.startswith("lk_op_")
    engine = make_engine(url)
    principal = Authenticator(engine).authenticate(key)
    assert principal.operator == "op_icbc" and principal.role == "operator"
    revoke = ledger_cli("keys", "revoke", principal.key_id, "--database", url)
    assert revoke.returncode == 0 and "revoked" in revoke.stdout
    again = ledger_cli("keys", "revoke", principal.key_id, "--database", url)
    assert again.returncode == 1
    bad = ledger_cli("keys", "create", "--operator", "x", "--role", "auditor", "--database", url)
    assert bad.returncode == 2 and "unknown role" in bad.stderr

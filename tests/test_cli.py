"""The `ledger` command: bench prints one JSON object with every figure; keys are issued once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from ledger.auth import Authenticator
from ledger.store.database import make_engine
from tests.conftest import POSTGRES_SERVER


def ledger_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=env,
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


def test_serve_refuses_a_bad_webhook_network_setting(tmp_path: Path) -> None:
    env = {**os.environ, "LEDGER_WEBHOOK_ALLOW_NETWORKS": "10.0.0.0/8,intranet"}
    run = ledger_cli("serve", "--database", f"sqlite:///{tmp_path / 'l.db'}", env=env)
    assert run.returncode == 2, run.stderr
    assert "LEDGER_WEBHOOK_ALLOW_NETWORKS: 'intranet' is not a network" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "l.db").exists()


def test_demo_plays_a_pilot_day_and_everything_checks_out(tmp_path: Path) -> None:
    done = ledger_cli("demo", "--dir", str(tmp_path / "day"))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "12 by QR code + 6 by payment code" in out
    assert "refunds     2," in out
    delivered = re.search(r"webhooks +(\d+) of (\d+) events delivered, 0 bad signatures", out)
    assert delivered is not None and delivered[1] == delivered[2] and int(delivered[1]) >= 20
    assert out.count("(checked against the journal)") == 2
    assert re.search(r"verify +ok: \d+ entries", out), out
    statement = re.search(r"--statement (\S+\.csv)", out)
    assert statement is not None and Path(statement[1]).is_file()
    again = ledger_cli("demo", "--dir", str(tmp_path / "day"))  # never over an existing ledger
    assert again.returncode != 0 and "fresh ledger" in again.stdout + again.stderr

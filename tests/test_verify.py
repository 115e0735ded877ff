"""`ledger verify` catches tampering done behind the ledger's back, and names what it found.

The append-only triggers stop UPDATE and DELETE, so each test first drops them, as someone with
the database's owner password could, and then edits rows with raw SQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from ledger.daily import FIELDS
from ledger.domain import Account, AccountFlags, Transfer, TransferFlags
from ledger.ids import new_id
from ledger.service import LedgerService
from ledger.store.database import is_sqlite, make_engine
from ledger.verify import verify
from tests.test_service import raw_sql

CNY = 156


def build_ledger(url: str, key_file: Path) -> None:
    """A ledger with accounts, plain, pending, posted and expired transfers over 300+ entries."""
    with LedgerService.open(url, key_file, "test.example/ledger") as ledger:
        limited = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
        ledger.create_accounts(
            [Account(1, CNY, 1), Account(2, CNY, 2, limited), Account(3, CNY, 2)]
        )
        ledger.create_transfers([Transfer(10, 1, 2, 100_000, CNY, 1)])
        ledger.create_transfers([Transfer(11, 2, 3, 500, CNY, 1, TransferFlags.PENDING, 0, 3600)])
        ledger.create_transfers([Transfer(12, 0, 0, 200, 0, 0, TransferFlags.POST_PENDING, 11)])
        for _ in range(3):
            ledger.create_transfers([Transfer(new_id(), 2, 3, 7, CNY, 1) for _ in range(110)])


def drop_triggers(url: str) -> None:
    if is_sqlite(url):
        names = ("journal_entries_no_update", "journal_entries_no_delete", "checkpoints_no_update")
        raw_sql(url, "".join(f"DROP TRIGGER {name};" for name in names))
    else:
        tables = ("journal_entries", "checkpoints")
        raw_sql(url, "".join(f"DROP TRIGGER {t}_append_only ON {t};" for t in tables))


def rewrite_amount(url: str, seq: int, amount: int) -> None:
    """Overwrite a transfer entry's amount inside its canonical bytes, with raw SQL."""
    at = 1 + 1 + 8 + 64  # version, kind, timestamp, four 128-bit ids
    new = amount.to_bytes(8, "big").hex()
    if is_sqlite(url):
        sql = (f"UPDATE journal_entries SET body = CAST(substr(body, 1, {at}) || x'{new}' "
               f"|| substr(body, {at + 9}) AS BLOB) WHERE seq = {seq}")  # fmt: skip
    else:
        sql = (f"UPDATE journal_entries SET body = overlay(body placing '\\x{new}'::bytea "
               f"from {at + 1} for 8) WHERE seq = {seq}")  # fmt: skip
    raw_sql(url, sql)


def problem(url: str) -> str | None:
    engine = make_engine(url)
    try:
        return verify(engine).problem
    finally:
        engine.dispose()


def test_an_untouched_ledger_verifies(database_url: str, key_file: Path) -> None:
    build_ledger(database_url, key_file)
    engine = make_engine(database_url)
    seen: list[tuple[int, int]] = []
    report = verify(engine, lambda done, total: seen.append((done, total)))
    engine.dispose()
    assert report.ok, report.problem
    assert report.entries == 3 + 3 + 330 and report.accounts == 3
    assert report.checkpoints >= 5 and seen[-1] == (report.entries, report.entries)
    assert report.totals[1] == report.totals[3] > 0


def test_a_changed_amount_is_named_by_entry(database_url: str, key_file: Path) -> None:
    build_ledger(database_url, key_file)
    drop_triggers(database_url)
    rewrite_amount(database_url, seq=3, amount=200_000)  # entry 3 is transfer 10 (100,000 fen)
    found = problem(database_url)
    assert found is not None and found.startswith("entry 3:"), found


def test_a_rewritten_entry_with_rewritten_hashes_is_still_caught(
    database_url: str, key_file: Path
) -> None:
    """Even if the tiles are rewritten to match, the balances and checkpoints do not."""
    build_ledger(database_url, key_file)
    drop_triggers(database_url)
    raw_sql(database_url, "DELETE FROM merkle_tiles")  # no stored leaf hashes to compare with
    rewrite_amount(database_url, seq=3, amount=200_000)
    found = problem(database_url)
    assert found is not None and "entry 3" in found and "balances" in found, found


def test_a_changed_balance_is_named_by_account(database_url: str, key_file: Path) -> None:
    build_ledger(database_url, key_file)
    raw_sql(database_url, "UPDATE accounts SET credits_posted = credits_posted + 1 WHERE n = 3")
    found = problem(database_url)
    assert found is not None and found.startswith("account ") and "credits_posted" in found


def test_a_deleted_entry_is_named(database_url: str, key_file: Path) -> None:
    build_ledger(database_url, key_file)
    drop_triggers(database_url)
    raw_sql(database_url, "DELETE FROM journal_entries WHERE seq = 100")
    assert problem(database_url) == "entry 100 is missing (the next one is 101)"


def test_a_forged_checkpoint_signature_is_named(database_url: str, key_file: Path) -> None:
    build_ledger(database_url, key_file)
    drop_triggers(database_url)
    if is_sqlite(database_url):
        sql = "UPDATE checkpoints SET signature = zeroblob(64) WHERE size = 4"
    else:
        sql = "UPDATE checkpoints SET signature = '\\x" + "00" * 64 + "' WHERE size = 4"
    raw_sql(database_url, sql)
    assert problem(database_url) == "checkpoint at size 4: the signature does not verify"


def test_a_checkpoint_over_a_different_root_is_named(database_url: str, key_file: Path) -> None:
    build_ledger(database_url, key_file)
    drop_triggers(database_url)
    if is_sqlite(database_url):
        sql = "UPDATE checkpoints SET root = zeroblob(32) WHERE size = 5"
    else:
        sql = "UPDATE checkpoints SET root = '\\x" + "00" * 32 + "' WHERE size = 5"
    raw_sql(database_url, sql)
    assert problem(database_url) == "checkpoint at size 5: its root does not match the entries"


@pytest.mark.parametrize("tamper", [False, True])
def test_cli_exit_codes(tmp_path: Path, tamper: bool) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    build_ledger(url, tmp_path / "ledger.key")
    if tamper:
        raw_sql(url, "UPDATE accounts SET debits_posted = 1 WHERE n = 3")
    run = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "verify", "--database", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if tamper:
        assert (
            run.returncode == 1 and "FAIL account" in run.stderr and "debits_posted" in run.stderr
        )
    else:
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("OK 336 entries")


def day_totals_by_account(url: str) -> dict[int, list[int]]:
    """account_days summed over days, by account n (the ledger is built within a second)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(f"SELECT account_n, {', '.join(FIELDS)} FROM account_days"))
            out: dict[int, list[int]] = {}
            for n, *figures in rows:
                summed = out.setdefault(n, [0] * len(FIELDS))
                for i, v in enumerate(figures):
                    summed[i] += v
            return out
    finally:
        engine.dispose()


def test_day_totals_follow_the_journal(database_url: str, key_file: Path) -> None:
    build_ledger(database_url, key_file)
    # takings, payments, refunds, inflow, outflow, net; the pending 500 moves nothing, its post
    # moves 200; code 1 is not an e-CNY payment, so there are no takings
    moved = 200 + 330 * 7
    assert day_totals_by_account(database_url) == {
        1: [0, 0, 0, 0, 100_000, -100_000],
        2: [0, 0, 0, 100_000, moved, 100_000 - moved],
        3: [0, 0, 0, moved, 0, moved],
    }


def test_a_changed_day_total_is_named(database_url: str, key_file: Path) -> None:
    build_ledger(database_url, key_file)
    raw_sql(database_url, "UPDATE account_days SET inflow_fen = inflow_fen + 1 WHERE account_n = 3")
    found = problem(database_url)
    assert found is not None and found.startswith("account ") and "account_days" in found, found


def test_a_missing_day_total_is_named(database_url: str, key_file: Path) -> None:
    build_ledger(database_url, key_file)
    raw_sql(database_url, "DELETE FROM account_days WHERE account_n = 2")
    found = problem(database_url)
    assert found is not None and "account_days lacks day" in found, found

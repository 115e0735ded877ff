"""`ledger verify` catches tampering done behind the ledger's back, and names what it found.

The append-only triggers stop UPDATE and DELETE, so each test first drops them, as someone with
the database's owner password could, and then edits rows with raw SQL."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from sqlalchemy import text

from ledger import signing
from ledger.daily import FIELDS
from ledger.domain import Account, AccountFlags, Transfer, TransferFlags
from ledger.ids import new_id
from ledger.service import LedgerService
from ledger.store.database import is_sqlite, make_engine
from ledger.verify import verify
from ledger.wallets import codes
from ledger.wallets.kyc import KycStore
from ledger.wallets.service import Wallets
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


def build_wallet_ledger(url: str, key_file: Path) -> tuple[int, int]:
    """An operator, a shopper topped up from the bank with 10,000 fen who pays a shop 3,000,
    and is refunded 500. Returns the two wallets' account numbers."""
    with LedgerService.open(url, key_file, "test.example/ledger") as ledger:
        wallets = Wallets(ledger, KycStore(ledger.db, b"k" * 32))
        try:
            assert wallets.onboard_operator("op").result().codes == [0, 0, 0]
            wallets.deposit_reserves(new_id(), "op", 10**9).result()
            wallets.issue(new_id(), "op", 10**8).result()
            bank = new_id()
            wallets.open_bank_account("op", bank, "shopper").result()
            wallets.cash_deposit("op", new_id(), bank, 10**6).result()
            keys, ids = [SigningKey.generate(), SigningKey.generate()], [new_id(), new_id()]
            opened = wallets.open_wallets("op", [
                wallets.wallet_to_open(
                    "op", w, kind=kind, klass=4, public_key=bytes(k.verify_key),
                    kyc={"phone": "1"}, linked_bank=bank if kind == "personal" else 0,
                )
                for w, k, kind in zip(ids, keys, ("personal", "merchant"), strict=True)
            ])  # fmt: skip
            assert opened.result().codes == [0, 0]
            assert wallets.top_up("op", new_id(), ids[0], 10_000).result().codes == [0, 0]
            expires = time.time_ns() // 1_000_000 + 60_000
            for payer, payee, amount, kind in ((0, 1, 3_000, "payment"), (1, 0, 500, "refund")):
                tid = new_id()
                auth = signing.sign_payment(
                    keys[payer], 1, tid, ids[payer], ids[payee], amount, "CNY", expires
                )
                t = Transfer(tid, ids[payer], ids[payee], amount, CNY,
                             codes.PAYMENT if kind == "payment" else codes.REFUND,
                             authorization=auth.encode())  # fmt: skip
                assert ledger.create_transfers([t]).codes == [0]
        finally:
            wallets.close()
        accounts = [ledger.account(w) for w in ids]
        return accounts[0].n, accounts[1].n  # type: ignore[union-attr]


def test_day_totals_are_kept_for_wallets(database_url: str, key_file: Path) -> None:
    shopper, shop = build_wallet_ledger(database_url, key_file)
    # takings, payments, refunds, inflow, outflow, net; the operator's float and the bank
    # accounts are not wallets and keep none
    assert day_totals_by_account(database_url) == {
        shopper: [0, 0, 0, 10_000 + 500, 3_000, 10_000 - 3_000 + 500],
        shop: [3_000, 1, 500, 3_000, 500, 3_000 - 500],
    }
    assert problem(database_url) is None


def test_a_changed_day_total_is_named(database_url: str, key_file: Path) -> None:
    shopper, _ = build_wallet_ledger(database_url, key_file)
    raw_sql(database_url, f"UPDATE account_days SET inflow_fen = 1 WHERE account_n = {shopper}")
    found = problem(database_url)
    assert found is not None and found.startswith("account ") and "account_days" in found, found


def test_a_missing_day_total_is_named(database_url: str, key_file: Path) -> None:
    _, shop = build_wallet_ledger(database_url, key_file)
    raw_sql(database_url, f"DELETE FROM account_days WHERE account_n = {shop}")
    found = problem(database_url)
    assert found is not None and "account_days lacks day" in found, found

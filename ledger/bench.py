"""``ledger bench``: transfers per second in-process, each figure the median of several runs.

* ``engine_tps``: the pure engine alone (validation, balances, undo, zero-sum check).
* ``sqlite_tps`` / ``postgres_tps``: the whole write path through ``LedgerService``: queue,
  sequencer, engine, journal (canonical bytes, Merkle tree, signed checkpoint per batch) and one
  committed database transaction per batch (or per group of batches waiting together). Timed
  from the first submit to the last acknowledgement, so nothing is counted before it is durable.
* ``hot_account_*``: the same, with every transfer crediting one merchant account.
* ``signed_sqlite_tps``: wallet payments, each signed by its payer's Ed25519 key and verified
  before the writer (two threads: PyNaCl releases the GIL), with limits and caps checked, on
  SQLite; signing is done beforehand, outside the timing, as the payers' phones would.
* ``baseline_sqlite_raw_tps``: raw ``sqlite3`` executemany of a transfer (two balance UPDATEs and
  one INSERT per transfer, 1,000 per transaction) measured in the same run: the reference point.

Transfers move small amounts between 10,000 funded wallets that may not overdraw (so limits are
checked) and use time-ordered ids, as the SDK makes them.
"""

from __future__ import annotations

import os
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

from nacl.signing import SigningKey

from ledger import signing
from ledger.domain import BATCH_MAX, Account, AccountFlags, OpenWallet, Transfer, Wallet
from ledger.engine import (
    OP_CREATE_ACCOUNTS,
    OP_CREATE_TRANSFERS,
    OP_OPEN_WALLETS,
    Engine,
    OpResult,
    State,
)
from ledger.ids import new_id
from ledger.sequencer import Overloaded
from ledger.service import LedgerService
from ledger.store.database import fresh_postgres_database
from ledger.wallets import codes
from ledger.wallets.kyc import KycStore
from ledger.wallets.service import OperatorAccounts, SignedPayment, Wallets

CNY: Final = 156
WALLETS: Final = 10_000
REQUEST_SIZE: Final = 1_000
"""Transfers per submitted request; the sequencer merges requests into batches of BATCH_MAX."""
ISSUER: Final = 1
HOT: Final = 2
FIRST_WALLET: Final = 3

Log = Callable[[str], None]


def _accounts() -> list[Account]:
    limited = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
    return [Account(ISSUER, CNY, 1), Account(HOT, CNY, 3, limited)] + [
        Account(FIRST_WALLET + i, CNY, 2, limited) for i in range(WALLETS)
    ]


def _funding() -> list[Transfer]:
    return [Transfer(new_id(), ISSUER, FIRST_WALLET + i, 10**12, CNY, 1) for i in range(WALLETS)]


def _transfers(n: int, hot: bool, seed: int) -> list[Transfer]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        dr = FIRST_WALLET + rng.randrange(WALLETS)
        cr = HOT if hot else FIRST_WALLET + rng.randrange(WALLETS)
        if cr == dr:
            cr = FIRST_WALLET + (dr - FIRST_WALLET + 1) % WALLETS
        out.append(Transfer(new_id(), dr, cr, rng.randrange(1, 10_000), CNY, 1))
    return out


def engine_tps(n: int, seed: int) -> float:
    engine = Engine(State())
    ts = time.time_ns()
    out = engine.execute([(OP_CREATE_ACCOUNTS, _accounts(), None)], ts)
    out = engine.execute([(OP_CREATE_TRANSFERS, _funding(), None)], out.last_timestamp + 1)
    transfers = _transfers(n, False, seed)
    batches = [transfers[i : i + BATCH_MAX] for i in range(0, n, BATCH_MAX)]
    ts = out.last_timestamp + 1
    started = time.perf_counter()
    for batch in batches:
        out = engine.execute([(OP_CREATE_TRANSFERS, batch, None)], ts)
        ts = out.last_timestamp + 1
    elapsed = time.perf_counter() - started
    assert all(code == 0 for code in out.results[0].codes)
    return n / elapsed


def service_tps(url: str, key_file: Path, n: int, hot: bool, seed: int) -> float:
    """Submit n transfers as fast as the queue takes them; time until the last is durable."""
    with LedgerService.open(url, key_file, "bench.local/ledger") as ledger:
        accounts = _accounts()
        for i in range(0, len(accounts), BATCH_MAX):
            assert set(ledger.create_accounts(accounts[i : i + BATCH_MAX]).codes) == {0}
        funding = _funding()
        for i in range(0, len(funding), BATCH_MAX):
            assert set(ledger.create_transfers(funding[i : i + BATCH_MAX]).codes) == {0}
        transfers = _transfers(n, hot, seed)
        requests = [transfers[i : i + REQUEST_SIZE] for i in range(0, n, REQUEST_SIZE)]
        futures: list[Future[OpResult]] = []
        started = time.perf_counter()
        for request in requests:
            while True:
                try:
                    futures.append(ledger.submit(OP_CREATE_TRANSFERS, request))
                    break
                except Overloaded:
                    time.sleep(0.0005)  # backpressure: the queue is full
        results = [f.result() for f in futures]
        elapsed = time.perf_counter() - started
        assert all(set(r.codes) == {0} for r in results), "every benchmark transfer must succeed"
    return n / elapsed


SIGNED_WALLETS: Final = 2_000


def signed_tps(url: str, key_file: Path, n: int, seed: int) -> float:
    """Signed wallet payments per second, verified and committed, in-process."""
    rng = random.Random(seed)
    with LedgerService.open(url, key_file, "bench.local/ledger") as ledger:
        wallets = Wallets(ledger, KycStore(ledger.store.engine, os.urandom(32)))
        try:
            keys, ids = _signed_setup(ledger, wallets)
            payments = _presign(keys, ids, n, rng)
            futures: list[Future[OpResult]] = []
            started = time.perf_counter()
            for i in range(0, n, REQUEST_SIZE):
                chunk = payments[i : i + REQUEST_SIZE]
                errors = wallets.check_payments(chunk)
                assert not any(errors), errors[:3]
                transfers = [wallets.transfer_for(p) for p in chunk]
                while True:
                    try:
                        futures.append(ledger.submit(OP_CREATE_TRANSFERS, transfers))
                        break
                    except Overloaded:
                        time.sleep(0.0005)
            results = [f.result() for f in futures]
            elapsed = time.perf_counter() - started
        finally:
            wallets.close()
        assert all(set(r.codes) == {0} for r in results), "every signed payment must succeed"
    return n / elapsed


def _signed_setup(ledger: LedgerService, wallets: Wallets) -> tuple[list[SigningKey], list[int]]:
    """An operator with e-CNY, and class-4 wallets (phone only) funded from its float."""
    wallets.onboard_operator("op_bench").result()
    wallets.deposit_reserves(new_id(), "op_bench", 10**14).result()
    wallets.issue(new_id(), "op_bench", 10**13).result()
    ops = OperatorAccounts.of("op_bench")
    keys = [SigningKey.generate() for _ in range(SIGNED_WALLETS)]
    ids = [new_id() for _ in keys]
    opened = [
        OpenWallet(
            Account(w, CNY, codes.WALLET_PERSONAL, AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
                    "", "op_bench"),
            Wallet(w, "op_bench", "personal", 4, bytes(k.verify_key), ops.float, ops.settlement),
        )
        for w, k in zip(ids, keys, strict=True)
    ]  # fmt: skip
    assert set(ledger.submit(OP_OPEN_WALLETS, opened, "op_bench").result().codes) == {0}
    funding = [Transfer(new_id(), ops.float, w, 900_000, CNY, codes.TOP_UP_ECNY) for w in ids]
    assert set(ledger.submit(OP_CREATE_TRANSFERS, funding, "op_bench").result().codes) == {0}
    return keys, ids


def _presign(
    keys: list[SigningKey], ids: list[int], n: int, rng: random.Random
) -> list[SignedPayment]:
    expires = time.time_ns() // 1_000_000 + 3_600_000
    plan = []
    for _ in range(n):
        a, b = rng.randrange(len(ids)), rng.randrange(len(ids))
        plan.append((a, b if b != a else (b + 1) % len(ids), new_id(), rng.randrange(1, 100)))

    def sign(part: list[tuple[int, int, int, int]]) -> list[SignedPayment]:
        out = []
        for a, b, pid, amount in part:
            auth = signing.sign_payment(keys[a], 1, pid, ids[a], ids[b], amount, "CNY", expires)
            out.append(SignedPayment(pid, ids[a], ids[b], amount, expires, 1, auth.signature))
        return out

    with ThreadPoolExecutor(2) as pool:
        halves = pool.map(sign, [plan[: n // 2], plan[n // 2 :]])
        return [p for half in halves for p in half]


def baseline_sqlite_raw_tps(n: int, seed: int) -> float:
    """Raw sqlite3: per transfer, UPDATE two balances and INSERT one row; 1,000 per commit."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(Path(tmp) / "raw.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE a (id INTEGER PRIMARY KEY, debits INTEGER, credits INTEGER)")
        db.execute("CREATE TABLE t (id BLOB PRIMARY KEY, dr INTEGER, cr INTEGER, amount INTEGER)")
        db.executemany("INSERT INTO a VALUES (?, 0, 0)", [(i,) for i in range(WALLETS)])
        rows = [
            (new_id().to_bytes(16, "big"), rng.randrange(WALLETS), rng.randrange(WALLETS), 5)
            for _ in range(n)
        ]
        started = time.perf_counter()
        for i in range(0, n, 1000):
            chunk = rows[i : i + 1000]
            db.execute("BEGIN")
            db.executemany(
                "UPDATE a SET debits = debits + ? WHERE id = ?", [(r[3], r[1]) for r in chunk]
            )
            db.executemany(
                "UPDATE a SET credits = credits + ? WHERE id = ?", [(r[3], r[2]) for r in chunk]
            )
            db.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", chunk)
            db.execute("COMMIT")
        elapsed = time.perf_counter() - started
        db.close()
    return n / elapsed


def _sqlite_run(n: int, hot: bool, seed: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        return service_tps(url, Path(tmp) / "bench.key", n, hot, seed)


def _signed_run(n: int, seed: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        return signed_tps(f"sqlite:///{Path(tmp) / 'bench.db'}", Path(tmp) / "k", n, seed)


def _postgres_run(server: str, n: int, hot: bool, seed: int) -> float:
    with (
        fresh_postgres_database(server, "ledger_bench") as url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        return service_tps(url, Path(tmp) / "bench.key", n, hot, seed)


def _median(label: str, runs: int, run: Callable[[int], float], log: Log) -> int:
    figures = []
    for i in range(runs):
        figures.append(run(i))
        log(f"  {label} run {i + 1}/{runs}: {figures[-1]:,.0f}/s")
    return round(statistics.median(figures))


def run_all(
    runs: int, transfers: int, postgres_url: str | None, log: Log, signed: int = 50_000
) -> dict[str, Any]:
    import ledger.engine

    results: dict[str, Any] = {
        "engine_compiled": not ledger.engine.__file__.endswith(".py"),  # mypyc build (setup.py)
        "transfers_per_run": transfers,
        "signed_payments_per_run": signed,
        "runs": runs,
        "batch_max": BATCH_MAX,
        "cpu_count": os.cpu_count(),
    }
    results["engine_tps"] = _median("engine", runs, lambda i: engine_tps(transfers, i), log)
    results["sqlite_tps"] = _median("sqlite", runs, lambda i: _sqlite_run(transfers, False, i), log)
    results["hot_account_sqlite_tps"] = _median(
        "sqlite hot account", runs, lambda i: _sqlite_run(transfers, True, i), log
    )
    results["signed_sqlite_tps"] = _median(
        "signed payments sqlite", runs, lambda i: _signed_run(signed, i), log
    )
    results["baseline_sqlite_raw_tps"] = _median(
        "raw sqlite3 baseline", runs, lambda i: baseline_sqlite_raw_tps(transfers, i), log
    )
    if postgres_url:
        results["postgres_tps"] = _median(
            "postgres", runs, lambda i: _postgres_run(postgres_url, transfers, False, i), log
        )
        results["hot_account_postgres_tps"] = _median(
            "postgres hot account",
            runs,
            lambda i: _postgres_run(postgres_url, transfers, True, i),
            log,
        )
    if postgres_url:
        results["hot_vs_spread_postgres"] = round(
            results["hot_account_postgres_tps"] / results["postgres_tps"], 3
        )
    results["hot_vs_spread_sqlite"] = round(
        results["hot_account_sqlite_tps"] / results["sqlite_tps"], 3
    )
    results["sqlite_vs_raw_baseline"] = round(
        results["sqlite_tps"] / results["baseline_sqlite_raw_tps"], 3
    )
    return results

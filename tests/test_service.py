"""The running ledger on real SQLite and PostgreSQL: commit, restart, locks, backpressure."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from ledger import merkle
from ledger.domain import (
    Account,
    AccountFlags,
    CloseAccount,
    PendingState,
    Result,
    Transfer,
    TransferFlags,
)
from ledger.engine import OP_CREATE_ACCOUNTS, OP_CREATE_TRANSFERS
from ledger.ids import new_id
from ledger.keys import KeyFileError
from ledger.sequencer import PREPARE_AHEAD_EVENTS, LedgerUnavailable, Overloaded
from ledger.service import LedgerIdentityError, LedgerService
from ledger.store.database import is_sqlite, sqlite_path
from ledger.store.queries import Reader
from ledger.store.writer import LedgerLockedError, _array_literals

CNY = 156
DR_LIMIT = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
PENDING, POST = TransferFlags.PENDING, TransferFlags.POST_PENDING
ISSUER, ALICE, BOB = 1, 2, 3


def pay(tid: int, dr: int, cr: int, amount: int, **kw: object) -> Transfer:
    return Transfer(tid, dr, cr, amount, CNY, 1, **kw)  # type: ignore[arg-type]


def open_ledger(url: str, key_file: Path, **kw: object) -> LedgerService:
    return LedgerService.open(url, key_file, "test.example/ledger", **kw)  # type: ignore[arg-type]


def seed(ledger: LedgerService) -> None:
    assert ledger.create_accounts(
        [Account(ISSUER, CNY, 1), Account(ALICE, CNY, 2, DR_LIMIT), Account(BOB, CNY, 2, DR_LIMIT)]
    ).codes == [0, 0, 0]
    assert ledger.create_transfers([pay(100, ISSUER, ALICE, 10_000)]).codes == [0]


def raw_sql(url: str, sql: str) -> None:
    """Run SQL outside the ledger, as an attacker or an operator with a console would."""
    if is_sqlite(url):
        with sqlite3.connect(sqlite_path(url), isolation_level=None) as conn:
            conn.executescript(sql)
    else:
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]


def test_restart_recovers_state_and_continues_the_same_log(
    database_url: str, key_file: Path
) -> None:
    with open_ledger(database_url, key_file) as ledger:
        seed(ledger)
        assert ledger.create_transfers(
            [
                pay(101, ALICE, BOB, 300, flags=PENDING, timeout_s=3600),
                pay(102, ALICE, BOB, 200, flags=PENDING, timeout_s=3600),
                pay(103, ALICE, BOB, 1),
                pay(104, BOB, ALICE, 5),  # exceeds_credits: recorded
            ]
        ).codes == [0, 0, 0, Result.EXCEEDS_CREDITS]
        size_before = ledger.sequencer.committed_size
        reader = Reader(ledger.store.engine, ledger.origin)
        old = reader.latest_checkpoint()
        assert old is not None and old.size == size_before
    with open_ledger(database_url, key_file) as ledger:
        state = ledger.sequencer.engine.state
        assert state.accounts[ALICE].balances() == (500, 1, 0, 10_000)
        assert sorted(state.live_pending) == [101, 102]
        assert ledger.sequencer.committed_size == size_before
        # the cache is empty after a restart: these answers come from the database (prefetch)
        out = ledger.create_transfers(
            [
                pay(103, ALICE, BOB, 1),  # replay of an accepted transfer
                pay(104, BOB, ALICE, 5),  # replay of a recorded rejection
                Transfer(105, 0, 0, 0, 0, 0, POST, 101),  # post a pending from before
                pay(106, ALICE, BOB, 2),
            ]
        )
        assert out.codes == [0, Result.EXCEEDS_CREDITS, 0, 0] and out.replayed == {0, 1}
        assert state.accounts[BOB].balances() == (0, 0, 200, 303)
        reader = Reader(ledger.store.engine, ledger.origin)
        new = reader.latest_checkpoint()
        assert new is not None and new.size == size_before + 2
        assert new.verify(ledger.public_key) and old.verify(ledger.public_key)
        proof = reader.consistency_proof(old.size, new.size)
        assert merkle.verify_consistency(old.size, new.size, old.root, new.root, proof)
    with open_ledger(database_url, key_file) as ledger:  # and once more: a resolved pending
        out = ledger.create_transfers([Transfer(107, 0, 0, 0, 0, 0, POST, 101)])
        assert out.codes == [Result.PENDING_TRANSFER_ALREADY_POSTED]


def test_pending_expiry_survives_restart(database_url: str, key_file: Path) -> None:
    clock = [time.time_ns()]
    with open_ledger(database_url, key_file, clock_ns=lambda: clock[0]) as ledger:
        seed(ledger)
        assert ledger.create_transfers(
            [pay(201, ALICE, BOB, 700, flags=PENDING, timeout_s=60)]
        ).codes == [0]
    clock[0] += 61 * 1_000_000_000  # the server was down past the timeout
    with open_ledger(database_url, key_file, clock_ns=lambda: clock[0]) as ledger:
        assert ledger.create_transfers([Transfer(202, 0, 0, 0, 0, 0, POST, 201)]).codes == [
            Result.PENDING_TRANSFER_EXPIRED
        ]
        assert ledger.sequencer.engine.state.accounts[ALICE].balances() == (0, 0, 0, 10_000)
        found = Reader(ledger.store.engine, ledger.origin).transfer(201)
        assert found is not None and found.state == PendingState.EXPIRED


def test_journal_tables_refuse_update_and_delete(database_url: str, key_file: Path) -> None:
    with open_ledger(database_url, key_file) as ledger:
        seed(ledger)
        ledger.create_transfers([pay(301, BOB, ALICE, 1)])  # a recorded rejection
    for sql in (
        "UPDATE journal_entries SET flags = 0",
        "DELETE FROM journal_entries",
        "UPDATE checkpoints SET timestamp = 0",
        "DELETE FROM checkpoints",
        "DELETE FROM rejected_transfers",
    ):
        with pytest.raises(Exception, match="append-only"):
            raw_sql(database_url, sql)
    if not is_sqlite(database_url):
        with pytest.raises(Exception, match="append-only"):
            raw_sql(database_url, "TRUNCATE journal_entries")


def test_a_second_writer_fails_fast_with_a_clear_message(database_url: str, key_file: Path) -> None:
    with open_ledger(database_url, key_file):
        started = time.monotonic()
        with pytest.raises(LedgerLockedError, match="another ledger writer"):
            open_ledger(database_url, key_file)
        assert time.monotonic() - started < 5, "fail fast, do not wait for the lock"
    with open_ledger(database_url, key_file):  # released on close
        pass


def test_key_file_is_private_and_must_match(
    database_url: str, key_file: Path, tmp_path: Path
) -> None:
    with open_ledger(database_url, key_file):
        pass
    assert key_file.stat().st_mode & 0o777 == 0o600
    with pytest.raises(LedgerIdentityError, match="does not belong to this ledger"):
        open_ledger(database_url, tmp_path / "other.key")
    os.chmod(key_file, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        open_ledger(database_url, key_file)


@contextmanager
def stalled_database(database_url: str) -> Iterator[None]:
    """Hold a lock that stops the committer's next transaction until the block ends."""
    release = threading.Event()
    locked = threading.Event()

    def hold_lock() -> None:
        if is_sqlite(database_url):
            conn = sqlite3.connect(sqlite_path(database_url), isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
        else:
            dsn = make_url(database_url).set(drivername="postgresql")
            conn = psycopg.connect(dsn.render_as_string(hide_password=False))
            conn.execute("LOCK TABLE journal_entries IN ACCESS EXCLUSIVE MODE")
        locked.set()
        release.wait(30)
        conn.rollback() if not is_sqlite(database_url) else conn.execute("ROLLBACK")
        conn.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert locked.wait(10)
    try:
        yield
    finally:
        release.set()
        holder.join()


def test_full_queue_answers_overloaded_and_drops_nothing(database_url: str, key_file: Path) -> None:
    """Stall the database from outside; the queue fills; new work is refused at once; once the
    database is back every accepted request commits."""
    with open_ledger(database_url, key_file, queue_max_events=20) as ledger:
        seed(ledger)
        accepted, refused = [], 0
        with stalled_database(database_url):
            for i in range(200):
                try:
                    transfer = [pay(1000 + i, ISSUER, BOB, 1)]
                    accepted.append(ledger.submit(OP_CREATE_TRANSFERS, transfer))
                except Overloaded as exc:
                    refused += 1
                    assert exc.retry_after_s >= 1
            assert refused > 0, "a stalled writer must push back"
            assert len(accepted) >= 20
        results = [f.result(timeout=60) for f in accepted]
        assert all(r.codes == [0] for r in results)
        assert ledger.sequencer.engine.state.accounts[BOB].balances()[3] == len(accepted)
    with open_ledger(database_url, key_file) as ledger:
        assert ledger.sequencer.engine.state.accounts[BOB].balances()[3] == len(accepted)


def test_requests_that_wait_for_a_commit_share_the_next_batch(
    database_url: str, key_file: Path
) -> None:
    """Group commit: while one batch commits, requests queue instead of each becoming a batch
    of its own; the whole queue is the next batch."""
    with open_ledger(database_url, key_file) as ledger:
        seed(ledger)
        before = ledger.sequencer.batches_committed
        with stalled_database(database_url):
            first = ledger.submit(OP_CREATE_TRANSFERS, [pay(900, ISSUER, BOB, 1)])
            time.sleep(0.5)  # the first batch is now in the committer, waiting for the lock
            rest = []
            for i in range(40):  # one by one, as requests arrive, not all in one go
                rest.append(ledger.submit(OP_CREATE_TRANSFERS, [pay(901 + i, ISSUER, BOB, 1)]))
                time.sleep(0.005)
        results = [f.result(timeout=60) for f in [first, *rest]]
        assert all(r.codes == [0] for r in results)
        assert ledger.sequencer.batches_committed - before == 2
        assert len({r.tree_size for r in results[1:]}) == 1, "the forty share one checkpoint"


def test_batches_prepared_during_a_commit_commit_together_in_order(
    database_url: str, key_file: Path
) -> None:
    """Group commit in the committer: batches the writer prepared while a commit was in hand
    go to the database in one transaction, in their order, so a later batch may pay into
    accounts an earlier one opened; each keeps its own checkpoint, and a restart reads back
    what was answered."""
    n = PREPARE_AHEAD_EVENTS  # a request this big is prepared at once, as a batch of its own
    with open_ledger(database_url, key_file) as ledger:
        seed(ledger)
        sequencer = ledger.sequencer
        batches, transactions = sequencer.batches_committed, sequencer.transactions_committed
        with stalled_database(database_url):
            first = ledger.submit(OP_CREATE_TRANSFERS, [pay(900, ISSUER, BOB, 1)])
            time.sleep(0.5)  # the first batch is now in the committer, waiting for the lock
            opened = ledger.submit(
                OP_CREATE_ACCOUNTS, [Account(1000 + i, CNY, 2) for i in range(n)]
            )
            time.sleep(0.3)  # prepared, waiting behind the first
            paid = ledger.submit(
                OP_CREATE_TRANSFERS, [pay(5000 + i, ISSUER, 1000 + i, 7) for i in range(n)]
            )
            time.sleep(0.3)
        results = [f.result(timeout=60) for f in (first, opened, paid)]
        assert [set(r.codes) for r in results] == [{0}, {0}, {0}]
        assert sequencer.batches_committed - batches == 3
        assert sequencer.transactions_committed - transactions == 2, "the last two together"
        sizes = [r.tree_size for r in results]
        assert sizes[0] < sizes[1] < sizes[2], "each batch answered with its own checkpoint"
        reader = Reader(ledger.store.engine, ledger.origin)
        assert all(reader.checkpoint_at(size) is not None for size in sizes)
    with open_ledger(database_url, key_file) as ledger:
        accounts = ledger.sequencer.engine.state.accounts
        assert [accounts[1000 + i].balances()[3] for i in range(n)] == [7] * n
        assert ledger.sequencer.committed_size == sizes[2]


@pytest.mark.parametrize(
    ("table", "column"),
    [("journal_entries", "seq"), ("checkpoints", "size")],
    ids=["entries", "checkpoint"],  # on PostgreSQL: the COPY, and the pipelined statements
)
def test_failed_commit_is_retried_with_the_same_ids(
    database_url: str, key_file: Path, table: str, column: str
) -> None:
    """A database error fails the batch; the writer reloads; the retry applies exactly once."""
    with open_ledger(database_url, key_file) as ledger:
        seed(ledger)
        if is_sqlite(database_url):
            raw_sql(
                database_url,
                f"CREATE TRIGGER refuse BEFORE INSERT ON {table} "
                "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;",
            )
        else:
            raw_sql(
                database_url,
                f"ALTER TABLE {table} ADD CONSTRAINT refuse CHECK ({column} < 0) NOT VALID",
            )
        with pytest.raises(LedgerUnavailable):
            ledger.create_transfers([pay(401, ALICE, BOB, 10)])
        latest = Reader(ledger.store.engine, ledger.origin).latest_checkpoint()
        with ledger.store.engine.connect() as conn:
            stored = conn.execute(text("SELECT count(*) FROM journal_entries")).scalar_one()
        assert latest is not None and latest.size == stored  # nothing of the batch was kept
        if is_sqlite(database_url):
            raw_sql(database_url, "DROP TRIGGER refuse")
        else:
            raw_sql(database_url, f"ALTER TABLE {table} DROP CONSTRAINT refuse")
        deadline = time.monotonic() + 10
        while True:
            try:
                out = ledger.create_transfers([pay(401, ALICE, BOB, 10)])
                break
            except LedgerUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert out.codes == [0] and out.replayed == set()
        again = ledger.create_transfers([pay(401, ALICE, BOB, 10)])
        assert again.codes == [0] and again.replayed == {0}
        assert ledger.sequencer.engine.state.accounts[BOB].balances() == (0, 0, 0, 10)


def test_array_literals_round_trip_through_postgresql(postgres_url: str) -> None:
    """The batch's columns go to PostgreSQL as array literals made by a join: what unnest reads
    back must be the very integers and bytes sent, at the ends of int8 and for any byte."""
    rows = [
        (0, -(2**63), b"\x00" * 16),
        (2**63 - 1, 7, bytes(range(16))),
        (-1, 2**31, b"\xff\x5c\x22\x2c\x7b\x7d" + b"\x00" * 10),  # \ " , { } as raw bytes
    ]
    literals = _array_literals(rows)
    assert literals[0] == "{0,9223372036854775807,-1}"
    dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn:
        back = conn.execute(
            "SELECT a, b, decode(c, 'hex') FROM unnest(%s::int8[], %s::int8[], %s::text[]) "
            "AS v(a, b, c)",
            literals,
        ).fetchall()
        assert [(a, b, bytes(c)) for a, b, c in back] == rows
        for bad in (1.5, None, True):  # anything but an integer is refused, never rounded
            with pytest.raises(psycopg.errors.InvalidTextRepresentation):
                conn.execute("SELECT unnest(%s::int8[])", _array_literals([(bad,)]))
            conn.rollback()


def test_proofs_from_the_store_verify_against_signed_checkpoints(
    database_url: str, key_file: Path
) -> None:
    with open_ledger(database_url, key_file) as ledger:
        seed(ledger)
        for _ in range(7):  # several batches -> several checkpoints, ~1,000 entries
            transfers = [pay(new_id(), ISSUER, BOB, 1) for _ in range(150)]
            assert set(ledger.create_transfers(transfers).codes) == {0}
        reader = Reader(ledger.store.engine, ledger.origin)
        latest = reader.latest_checkpoint()
        assert latest is not None and latest.verify(ledger.public_key)
        for seq in (0, 1, 255, 256, 700, latest.size - 1):
            body = reader.entry_at(seq)
            assert body is not None
            proof = reader.inclusion_proof(seq, latest.size)
            assert merkle.verify_inclusion(body.body, seq, latest.size, proof, latest.root)
            flipped = bytes([body.body[0] ^ 1]) + body.body[1:]
            assert not merkle.verify_inclusion(flipped, seq, latest.size, proof, latest.root)
        with ledger.store.engine.connect() as conn:
            sizes = [r[0] for r in conn.execute(text("SELECT size FROM checkpoints ORDER BY size"))]
        for old in sizes:
            cp_old = reader.checkpoint_at(old)
            assert cp_old is not None and cp_old.verify(ledger.public_key)
            proof = reader.consistency_proof(old, latest.size)
            assert merkle.verify_consistency(old, latest.size, cp_old.root, latest.root, proof)
            assert reader.root_at(old) == cp_old.root


def test_balance_as_of_and_history(database_url: str, key_file: Path) -> None:
    with open_ledger(database_url, key_file) as ledger:
        seed(ledger)
        for i in range(5):
            ledger.create_transfers([pay(500 + i, ALICE, BOB, 100 * (i + 1))])
        ledger.create_transfers([pay(600, BOB, ALICE, 50)])
        assert ledger.close_accounts([CloseAccount(ISSUER)]).codes == [0]
        reader = Reader(ledger.store.engine, ledger.origin)
        bob = reader.account(BOB)
        assert bob is not None and bob.credits_posted == 1_500 and bob.debits_posted == 50
        history = reader.history(bob.n, 100, None)
        seqs = [e.seq for e in history]
        assert seqs == sorted(seqs, reverse=True) and len(seqs) == 7  # created + 5 in + 1 out
        page1 = reader.history(bob.n, 3, None)
        page2 = reader.history(bob.n, 3, page1[-1].seq)
        assert [e.seq for e in page1 + page2] == seqs[:6]
        third_payment = next(e.seq for e in history if getattr(e.entry, "id", 0) == 502)
        then = reader.balance_as_of(bob.n, third_payment)
        assert then is not None and (then.credits_posted, then.debits_posted) == (600, 0)
        assert reader.balance_as_of(bob.n, bob.seq - 1) is None, "before it existed"
        issuer = reader.account(ISSUER)
        assert issuer is not None and issuer.flags & AccountFlags.CLOSED
        closed = reader.balance_as_of(issuer.n, 10**9)
        assert closed is not None and closed.debits_posted == 10_000


def test_a_killed_committer_is_restarted_and_nothing_is_lost(
    database_url: str, key_file: Path
) -> None:
    with open_ledger(database_url, key_file) as ledger:
        seed(ledger)
        pid = ledger.committer.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while ledger.committer.alive():
            assert time.monotonic() < deadline, "a SIGKILLed committer still looks alive"
            time.sleep(0.01)
        with pytest.raises(LedgerUnavailable, match="committer process died"):
            ledger.create_transfers([pay(501, ALICE, BOB, 10)])
        deadline = time.monotonic() + 30
        while True:  # the writer restarts the committer and reloads; clients retry the same id
            try:
                out = ledger.create_transfers([pay(501, ALICE, BOB, 10)])
                break
            except LedgerUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert out.codes == [0] and ledger.committer.alive()
        assert ledger.committer.pid not in (None, pid)
        assert ledger.sequencer.engine.state.accounts[BOB].balances() == (0, 0, 0, 10)
    with open_ledger(database_url, key_file) as ledger:
        assert ledger.sequencer.engine.state.accounts[BOB].balances() == (0, 0, 0, 10)


def test_attachments_commit_with_the_outcome_and_never_with_a_replay(
    database_url: str, key_file: Path
) -> None:
    from ledger.domain import Attachment, CancelTransferId
    from ledger.engine import OP_CANCEL_IDS

    raw_sql_create = "CREATE TABLE test_outbox (event TEXT NOT NULL, seq INTEGER NOT NULL)"
    with open_ledger(database_url, key_file) as ledger:
        seed(ledger)
        raw_sql(database_url, raw_sql_create)

        def with_events(t: Transfer, tag: str) -> Transfer:
            t.attachments = [
                Attachment("test_outbox", ("event", "seq"), (f"{tag}.ok", 1)),
                Attachment("test_outbox", ("event", "seq"), (f"{tag}.rejected", 2), "rejected"),
            ]
            return t

        assert ledger.create_transfers([with_events(pay(601, ALICE, BOB, 5), "a")]).codes == [0]
        replay = ledger.create_transfers([with_events(pay(601, ALICE, BOB, 5), "a")])
        assert replay.replayed == {0}
        refused = ledger.create_transfers([with_events(pay(602, BOB, ALICE, 10**9), "b")])
        assert refused.codes == [Result.EXCEEDS_CREDITS]
        stone = CancelTransferId(603, "canceled", [Attachment("test_outbox", ("event", "seq"),
                                                               ("c.canceled", 3))])  # fmt: skip
        assert ledger.submit(OP_CANCEL_IDS, [stone]).result().codes == [0]
        assert ledger.submit(OP_CANCEL_IDS, [stone]).result().replayed == {0}
        with ledger.store.engine.connect() as conn:
            rows = sorted(conn.execute(text("SELECT event FROM test_outbox")).scalars())
    assert rows == ["a.ok", "b.rejected", "c.canceled"], "each outcome once, none for replays"

"""SQLite write transactions (``ledger.store.database.begin_immediate``): a writer that meets
another's write lock waits for it, takes it once it is free, and gives up after the busy
timeout, with SQLite's own error; the busy handler every other statement relies on stays on."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from ledger.store import database
from ledger.store.database import begin_immediate, for_writes, make_engine

WAIT_S = 30.0
"""Upper bound for a thread the test expects to finish (never reached when things work)."""


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (v INTEGER NOT NULL)")
    yield engine
    engine.dispose()


def driver(engine: Engine) -> sqlite3.Connection:
    """A configured driver connection of the engine's, as the committer holds its own."""
    pooled = engine.raw_connection()
    connection = pooled.driver_connection
    pooled.detach()
    assert isinstance(connection, sqlite3.Connection)
    return connection


def busy_timeout(connection: sqlite3.Connection) -> int:
    value: int = connection.execute("PRAGMA busy_timeout").fetchone()[0]
    return value


def test_a_writer_waits_for_the_write_lock_and_takes_it_once_free(engine: Engine) -> None:
    holder, waiter = driver(engine), driver(engine)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    began = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            begin_immediate(waiter.cursor())
            began.set()
            waiter.execute("INSERT INTO t VALUES (2)")
            waiter.execute("COMMIT")
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    assert not began.wait(0.3), "took the write lock while another transaction held it"
    holder.execute("COMMIT")
    thread.join(WAIT_S)
    assert not thread.is_alive() and not errors, errors
    rows = holder.execute("SELECT v FROM t ORDER BY v").fetchall()
    assert rows == [(1,), (2,)]
    assert busy_timeout(waiter) == database.SQLITE_BUSY_TIMEOUT_MS == 30_000
    holder.close()
    waiter.close()


def test_a_writer_gives_up_after_the_busy_timeout_with_sqlites_error(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_MS", 200)
    holder, waiter = driver(engine), driver(engine)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked") as caught:
        begin_immediate(waiter.cursor())
    assert caught.value.sqlite_errorcode == sqlite3.SQLITE_BUSY
    assert waiter.in_transaction is False
    assert busy_timeout(waiter) == 200  # the handler is back on for every other statement
    holder.execute("ROLLBACK")
    begin_immediate(waiter.cursor())  # free now: taken at once
    assert waiter.in_transaction
    waiter.execute("ROLLBACK")
    holder.close()
    waiter.close()


def test_an_error_other_than_busy_is_raised_at_once(engine: Engine) -> None:
    connection = driver(engine)
    connection.execute("BEGIN")
    with pytest.raises(sqlite3.OperationalError, match="within a transaction") as caught:
        begin_immediate(connection.cursor())
    assert caught.value.sqlite_errorcode != sqlite3.SQLITE_BUSY
    assert busy_timeout(connection) == database.SQLITE_BUSY_TIMEOUT_MS
    connection.execute("ROLLBACK")
    connection.close()


def test_a_session_for_writes_waits_for_the_committers_lock(engine: Engine) -> None:
    """The merchant API's read-then-write transactions (``for_writes``) meet the committer's
    write lock: they wait for it, then read what it committed and write after it."""
    committer = driver(engine)
    committer.execute("BEGIN IMMEDIATE")
    committer.execute("INSERT INTO t VALUES (10)")
    seen: list[int] = []
    errors: list[BaseException] = []

    def read_then_write() -> None:
        try:
            with for_writes(engine).begin() as conn:
                total = conn.execute(text("SELECT coalesce(sum(v), 0) FROM t")).scalar_one()
                seen.append(total)
                conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": total + 1})
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=read_then_write)
    thread.start()
    thread.join(0.3)
    assert thread.is_alive(), "wrote while the committer held the write lock"
    committer.execute("COMMIT")
    thread.join(WAIT_S)
    assert not thread.is_alive() and not errors, errors
    assert seen == [10]
    assert committer.execute("SELECT v FROM t ORDER BY v").fetchall() == [(10,), (11,)]
    committer.close()


def test_one_thread_at_a_time_waits_for_the_write_lock(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads of one engine that want to write while another process holds the lock queue in
    the process; only one at a time tries for SQLite's lock (each try wakes the thread up to
    1,000 times a second). Once it is free, every one of them writes, in turn."""
    waiting, most = 0, 0
    count = threading.Lock()
    real = database.begin_immediate

    def counted(cursor: sqlite3.Cursor) -> None:
        nonlocal waiting, most
        with count:
            waiting += 1
            most = max(most, waiting)
        try:
            real(cursor)
        finally:
            with count:
                waiting -= 1

    monkeypatch.setattr(database, "begin_immediate", counted)
    committer = driver(engine)
    committer.execute("BEGIN IMMEDIATE")
    errors: list[BaseException] = []

    def write(v: int) -> None:
        try:
            with for_writes(engine).begin() as conn:
                conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": v})
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(v,)) for v in range(8)]
    for thread in threads:
        thread.start()
    threads[0].join(0.3)
    assert all(t.is_alive() for t in threads), "wrote while the committer held the write lock"
    assert most == 1, f"{most} threads tried for the write lock at once"
    committer.execute("COMMIT")
    for thread in threads:
        thread.join(WAIT_S)
    assert not any(t.is_alive() for t in threads) and not errors, errors
    assert committer.execute("SELECT v FROM t ORDER BY v").fetchall() == [(v,) for v in range(8)]
    assert most == 1
    committer.close()


def test_a_writer_queued_in_the_process_gives_up_after_the_busy_timeout(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_MS", 300)
    committer = driver(engine)
    committer.execute("BEGIN IMMEDIATE")
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with for_writes(engine).begin() as conn:
                conn.execute(text("INSERT INTO t VALUES (1)"))
        except BaseException as exc:  # expected: both give up
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert len(errors) == 2 and all("locked" in str(e) for e in errors), errors
    codes = [getattr(getattr(e, "orig", e), "sqlite_errorcode", None) for e in errors]
    assert codes == [sqlite3.SQLITE_BUSY] * 2
    committer.execute("ROLLBACK")
    with for_writes(engine).begin() as conn:  # free now: taken at once
        conn.execute(text("INSERT INTO t VALUES (2)"))
    assert committer.execute("SELECT v FROM t").fetchall() == [(2,)]
    committer.close()

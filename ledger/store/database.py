"""Database engines and migrations: SQLite (WAL) by default, PostgreSQL by URL."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

DEFAULT_URL = "sqlite:///ledger.db"
SQLITE_PAGE_SIZE = 16384
"""Bigger pages make the journal's index inserts much cheaper (measured: ~100k vs ~70k rows/s)."""
SQLITE_WRITER_CACHE_KIB = 131072
"""The committer's one connection: its index pages stay in memory between batches."""
SQLITE_READER_CACHE_KIB = 8192
"""Each reading connection (a pool of them serves the API): a page cache that fills up with
whatever was read, so it is what each connection costs in memory for good. The operating
system's file cache holds the rest."""
MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
"""How long a statement waits for a lock another connection holds before it fails."""
WRITE_LOCK_POLL_MAX_S: Final = 0.001
"""``begin_immediate`` tries again after 0.1, 0.2, 0.4, 0.8 ms, then every 1 ms."""


def database_url(explicit: str | None = None) -> str:
    """The URL to use: an explicit one, else $LEDGER_DATABASE_URL, else ./ledger.db."""
    return explicit or os.environ.get("LEDGER_DATABASE_URL") or DEFAULT_URL


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise ValueError("the ledger needs a file database; :memory: cannot be shared")
    return Path(database)


def sqlite_synchronous() -> str:
    """FULL (default) syncs the WAL on every commit: a batch acknowledged is on disk even if
    the machine loses power. NORMAL survives process crashes only."""
    value = os.environ.get("LEDGER_SQLITE_SYNCHRONOUS", "FULL").upper()
    if value not in ("FULL", "NORMAL", "EXTRA"):
        raise ValueError("LEDGER_SQLITE_SYNCHRONOUS must be FULL, NORMAL or EXTRA")
    return value


def make_engine(
    url: str, *, sqlite_cache_kib: int = SQLITE_READER_CACHE_KIB, **kwargs: Any
) -> Engine:
    """A SQLAlchemy engine; for SQLite with WAL, big pages, real BEGIN/COMMIT and a page cache
    of ``sqlite_cache_kib`` per connection."""
    if not is_sqlite(url):
        kwargs.setdefault("pool_size", 8)
        kwargs.setdefault("max_overflow", 8)
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, **kwargs)
    sqlite_path(url)
    connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    engine = create_engine(url, connect_args=connect_args, **kwargs)
    synchronous = sqlite_synchronous()

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (SQLAlchemy's recipe)
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")  # only takes on a new file
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA cache_size=-{sqlite_cache_kib}")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    write_turn = threading.Lock()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        if conn._execution_options.get(IMMEDIATE):
            cursor = conn.connection.dbapi_connection.cursor()
            try:
                # One thread of this engine at a time waits for SQLite's write lock; the others
                # wait here, asleep. SQLite lets one writer in at a time anyway, and every
                # waiter in begin_immediate wakes up to 1,000 times a second to try again: under
                # the checkout profile at 300 users, dozens of threads of each HTTP worker did.
                if not write_turn.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
                    raise _busy()
                try:
                    begin_immediate(cursor)
                finally:
                    write_turn.release()
            finally:
                cursor.close()
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


IMMEDIATE: Final = "sqlite_begin_immediate"


def begin_immediate(cursor: sqlite3.Cursor) -> None:
    """``BEGIN IMMEDIATE`` on SQLite: take the write lock, waiting for whoever holds it by
    trying again every millisecond or less, for up to the busy timeout.

    SQLite's own busy handler waits 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50 and then 100 ms
    between tries, however soon the lock is free: a writer that meets a commit in progress
    sleeps on long after it ended. The committer and the merchant API's writes meet all the
    time (measured under the checkout profile, 100 users: the committer slept 16.6 s of 25
    in that handler, 87 times for 100 ms, and every payment in its batches waited with it).
    The handler is off for this one statement; every other statement keeps it."""
    cursor.execute("PRAGMA busy_timeout=0")
    try:
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
        delay = 0.0001
        while True:
            try:
                cursor.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, WRITE_LOCK_POLL_MAX_S)
    finally:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")


def _busy() -> sqlite3.OperationalError:
    """The error SQLite gives a writer that waited the busy timeout in vain."""
    exc = sqlite3.OperationalError("database is locked")
    exc.sqlite_errorcode, exc.sqlite_errorname = sqlite3.SQLITE_BUSY, "SQLITE_BUSY"
    return exc


def for_writes(engine: Engine) -> Engine:
    """The engine for transactions that read, then write (outside the ledger's committer).

    On SQLite (WAL) a transaction that starts reading and then writes fails at once with
    "database is locked" if another process (the committer) wrote in between: the busy timeout
    cannot help a stale snapshot. ``BEGIN IMMEDIATE`` takes the write lock first, waiting its
    turn. PostgreSQL ignores the option."""
    return engine.execution_options(**{IMMEDIATE: True})


def migrate(engine: Engine, extra: Sequence[Path] = ()) -> None:
    """Bring the schema to the newest Alembic revisions: the ledger's own, and those of the
    components built on it (``extra`` version directories, each an Alembic branch of its own)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    locations = [str(MIGRATIONS / "versions"), *(str(p) for p in extra)]
    config.set_main_option("version_locations", os.pathsep.join(locations))
    config.set_main_option("path_separator", "os")
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "heads")


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        try:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except Exception:
            return None


@contextmanager
def fresh_postgres_database(
    server_url: str, prefix: str, template: str | None = None
) -> Iterator[str]:
    """A new database ``<prefix>_<random>`` on the PostgreSQL server of ``server_url``, a copy
    of the database ``template`` if one is named; its URL is yielded, and it is dropped
    afterwards (tests and benchmarks)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    _create_postgres_database(url, template)
    try:
        yield url
    finally:
        _drop_postgres_database(url)


def _create_postgres_database(url: str, template: str | None = None) -> None:
    """Create the database a PostgreSQL URL names, if it does not exist."""
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database}
        ).scalar()
        if not exists:
            copy = f' TEMPLATE "{template}"' if template else ""
            conn.execute(text(f'CREATE DATABASE "{target.database}"{copy}'))
    admin.dispose()


def _drop_postgres_database(url: str) -> None:
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    admin.dispose()

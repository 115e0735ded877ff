"""Shared fixtures: every test that touches storage runs on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from ledger.api.app import create_app
from ledger.api.wallet_auth import WriterAdmission
from ledger.link import RemoteLedger, link_server
from ledger.server import open_wallets
from ledger.service import LedgerService
from ledger.store.database import fresh_postgres_database, make_engine, migrate

POSTGRES_SERVER = os.environ.get(
    "LEDGER_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A database migrated to the ledger's newest schema once a session, from nothing; each
    PostgreSQL test's own database is a copy of it, so its committer has nothing left to
    migrate (45-85 ms less a test here). The SQLite tests still migrate from nothing each time,
    and components' schema branches (the merchant API's) are migrated in each test."""
    with fresh_postgres_database(POSTGRES_SERVER, "ledger_template") as url:
        engine = make_engine(url)
        try:
            migrate(engine)
        finally:
            engine.dispose()  # a database with sessions open cannot be copied
        yield str(make_url(url).database)


@pytest.fixture
def postgres_url(postgres_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards. Fails (never skips) if the server is down:
    CI starts it, and a PostgreSQL test that silently skips would be a check dressed as a pass."""
    with fresh_postgres_database(POSTGRES_SERVER, "ledger_test", postgres_template) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
    else:
        yield request.getfixturevalue("postgres_url")


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return tmp_path / "ledger.key"


def app_for(service: LedgerService) -> FastAPI:
    """The full API around a running ledger: the wallet layer started, with a KYC key beside
    the ledger's signing key."""
    key_dir = Path(tempfile.mkdtemp(prefix="ledger-kyc-"))
    return create_app(service, open_wallets(service, key_dir / "kyc.key"))


@contextmanager
def worker_app_for(service: LedgerService) -> Iterator[FastAPI]:
    """The same API as an HTTP worker of ``ledger serve`` builds it: over a ``RemoteLedger``
    linked (a real Unix socket, the real frames) to ``service`` as its writer."""
    link_dir = Path(tempfile.mkdtemp(prefix="lk-"))  # short: Unix socket paths are limited
    server = link_server(link_dir / "link.sock", service, WriterAdmission(service).check)
    remote = RemoteLedger(link_dir / "link.sock", service.db)
    key_dir = Path(tempfile.mkdtemp(prefix="ledger-kyc-"))
    wallets = open_wallets(remote, key_dir / "kyc.key")
    try:
        yield create_app(remote, wallets, admission=remote)
    finally:
        wallets.close()
        remote.close()
        server.close()
        shutil.rmtree(link_dir, ignore_errors=True)


@pytest.fixture(params=["in_process", "worker"])
def app_mode(request: pytest.FixtureRequest) -> str:
    """Where the API runs: beside the writer (tests, ``LedgerService`` in process) or in an HTTP
    worker over the link, as ``ledger serve`` runs it."""
    return str(request.param)


@contextmanager
def served_app(service: LedgerService, mode: str) -> Iterator[FastAPI]:
    if mode == "worker":
        with worker_app_for(service) as app:
            yield app
    else:
        yield app_for(service)

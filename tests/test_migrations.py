"""The Alembic migrations (the ledger's and the merchant API's branch) build exactly the schema
the SQLModel tables describe."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from ledger.store.database import MIGRATIONS, make_engine, migrate
from ledger.store.schema import SQLModel
from ledger.verify import verify
from merchant_api import app as merchant_app
from merchant_api import models as _merchant_models  # noqa: F401  (their tables join the metadata)
from tests.test_verify import build_wallet_ledger, day_totals_by_account


def test_migrations_match_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate(engine, [merchant_app.MIGRATIONS])
        migrate(engine, [merchant_app.MIGRATIONS])  # idempotent: a restart runs it again
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        ledger_head = ScriptDirectory.from_config(config).get_current_head()
        with engine.connect() as conn:
            heads = set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
        assert heads <= {ledger_head, "m002"} and "m002" in heads
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        assert diff == [], diff
    finally:
        engine.dispose()


def test_account_days_are_filled_from_an_older_ledgers_journal(
    database_url: str, key_file: Path
) -> None:
    """A ledger made before ``account_days`` (revision 0003) gets its day totals from the
    journal when it migrates: the same rows the writer made, and ``ledger verify`` passes."""
    build_wallet_ledger(database_url, key_file)
    made = day_totals_by_account(database_url)
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE account_days"))
            conn.execute(text("UPDATE alembic_version SET version_num = '0003' "
                              "WHERE version_num = '0004'"))  # fmt: skip
        migrate(engine)
        assert verify(engine).ok
    finally:
        engine.dispose()
    assert day_totals_by_account(database_url) == made and made

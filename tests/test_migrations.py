"""The Alembic migrations (the ledger's and the merchant API's branch) build exactly the schema
the SQLModel tables describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from ledger.store.database import MIGRATIONS, make_engine, migrate
from ledger.store.schema import SQLModel
from merchant_api import app as merchant_app
from merchant_api import models as _merchant_models  # noqa: F401  (their tables join the metadata)


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

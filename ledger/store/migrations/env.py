"""Alembic environment: runs the ledger's migrations on the connection ``ledger.store`` passes."""

from __future__ import annotations

from alembic import context

from ledger.store.schema import SQLModel

config = context.config
target_metadata = SQLModel.metadata

connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `ledger.store.database.migrate`")
context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

"""Alembic environment of the archive: runs on the connection the archive hands over (never from a URL here)."""

from alembic import context

from na64_online.monitor.archive.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                  transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()

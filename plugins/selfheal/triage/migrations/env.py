"""Alembic environment for the triage database.

Run through ``selfheal db upgrade`` (selfheal.triage.migrate), which passes the
URL or an open connection in the config; plain ``alembic -c
plugins/selfheal/triage/alembic.ini upgrade head`` works too and reads the URL
from SELFHEAL_DATABASE_URL. ``render_as_batch`` lets later migrations ALTER
tables on SQLite (which rebuilds the table for most changes).
"""

from __future__ import annotations

from alembic import context

from selfheal.triage.db import database_url, make_engine
from selfheal.triage.schema import metadata

config = context.config


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url") or database_url(),
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url") or database_url())
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

"""Apply the triage schema migrations (Alembic) without an alembic.ini.

``selfheal db upgrade`` and the test fixtures call ``upgrade``; the
migrations live in ``migrations/versions`` and later issues add revisions to
the same chain (patches, gateway rules, audit log).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from selfheal.triage.db import as_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        # ConfigParser interpolation: a literal % in a password must be doubled.
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine_or_url: sa.Engine | str | None = None, revision: str = "head") -> str | None:
    """Migrate the database to ``revision``; returns the revision it is at afterwards."""
    engine, owned = as_engine(engine_or_url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        return current(engine)
    finally:
        if owned:
            engine.dispose()


def current(engine_or_url: sa.Engine | str | None = None) -> str | None:
    """The revision the database is at (None: never migrated)."""
    engine, owned = as_engine(engine_or_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        if owned:
            engine.dispose()


def head() -> str | None:
    """The newest revision the code knows."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()

"""Which triage database to use, and engines configured for it.

The URL comes from the caller, else ``SELFHEAL_DATABASE_URL``, else an
embedded SQLite file under the project's ``.run/`` directory, so a laptop
without Postgres still works (slower bulk path, one writer at a time).
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa

from selfheal.paths import PROJECT_ROOT

ENV_VAR = "SELFHEAL_DATABASE_URL"


def default_sqlite_url() -> str:
    return f"sqlite:///{PROJECT_ROOT / '.run' / 'selfheal.db'}"


def database_url(url: str | None = None) -> str:
    """The URL to use: explicit, else $SELFHEAL_DATABASE_URL, else the embedded SQLite file."""
    return url or os.environ.get(ENV_VAR) or default_sqlite_url()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers (the UI) do not block the writer; busy_timeout: a second
    # writer waits instead of failing at once with "database is locked".
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str | sa.URL | None = None, **kwargs) -> sa.Engine:
    """An Engine for ``url`` (see database_url); SQLite files get their directory created."""
    u = sa.make_url(database_url(url) if not isinstance(url, sa.URL) else url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(u, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(u, **kwargs)


def as_engine(engine_or_url: sa.Engine | str | None) -> tuple[sa.Engine, bool]:
    """Accept an Engine or a URL; the flag says whether the caller must dispose it."""
    if isinstance(engine_or_url, sa.Engine):
        return engine_or_url, False
    return make_engine(engine_or_url), True


def masked(url: str | sa.URL) -> str:
    """The URL with any password hidden, for logs and `selfheal db current`."""
    return sa.make_url(url).render_as_string(hide_password=True)

"""Seeded triage databases for the web tests: one per backend the UI must work on.

Seeding goes through the real write paths (see web_seed) and takes a few
seconds, so each database is made once per module and only read by the tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from web_seed import Seeded, seed

from selfheal.triage.db import make_engine
from selfheal.triage.migrate import upgrade


@dataclass
class WebDb:
    backend: str
    url: str
    engine: sa.Engine
    seeded: Seeded


def _pg_database(admin_url: str) -> tuple[str, sa.Engine, str]:
    name = f"web_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return f"{admin_url.rpartition('/')[0]}/{name}", admin, name


@pytest.fixture(scope="module")
def pg_web_db(pg_admin_url: str) -> Iterator[WebDb]:
    url, admin, name = _pg_database(pg_admin_url)
    engine = make_engine(url)
    try:
        upgrade(url)
        yield WebDb("postgresql", url, engine, seed(url))
    finally:
        engine.dispose()
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module")
def sqlite_web_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDb]:
    url = f"sqlite:///{Path(tmp_path_factory.mktemp('webdb')) / 'triage.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        yield WebDb("sqlite", url, engine, seed(url))
    finally:
        engine.dispose()


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def web_db(request: pytest.FixtureRequest) -> WebDb:
    """The same seeded history on PostgreSQL and on SQLite (the embedded default)."""
    return request.getfixturevalue("pg_web_db" if request.param == "postgresql" else "sqlite_web_db")


@pytest.fixture
def empty_pg_url(pg_admin_url: str) -> Iterator[str]:
    """A migrated triage database with no rows."""
    url, admin, name = _pg_database(pg_admin_url)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

"""Triage store fixtures: a migrated database on each backend the store supports.

``db`` runs a test three times: PostgreSQL through the bulk COPY path,
PostgreSQL through the portable path, and SQLite (the embedded default), so
both write paths are held to the same behaviour.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from selfheal.triage import migrate, store


@dataclass
class Db:
    name: str
    engine: sa.Engine
    bulk: bool

    def ingest(self, *reports: tuple[bytes, str] | store.ReportIn, **kwargs: Any) -> store.IngestResult:
        items = [r if isinstance(r, store.ReportIn) else store.ReportIn(r[0], r[1]) for r in reports]
        kwargs.setdefault("service", "shop")
        return store.ingest_reports(self.engine, items, bulk=self.bulk, **kwargs)

    def rows(self, sql: str, **params: Any) -> list[sa.Row]:
        with self.engine.connect() as c:
            return list(c.execute(sa.text(sql), params))

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as c:
            return c.execute(sa.text(sql), params).scalar_one()


def _sqlite(tmp_path: Path) -> sa.Engine:
    from selfheal.triage.db import make_engine

    return make_engine(f"sqlite:///{tmp_path / 'triage.db'}")


def _db(request: pytest.FixtureRequest, tmp_path: Path, name: str) -> Iterator[Db]:
    pg = name != "sqlite"
    engine = sa.create_engine(request.getfixturevalue("pg_url")) if pg else _sqlite(tmp_path)
    migrate.upgrade(engine)
    try:
        yield Db(name, engine, name == "postgres-copy")
    finally:
        engine.dispose()


@pytest.fixture(params=["postgres-copy", "postgres-portable", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    yield from _db(request, tmp_path, request.param)


@pytest.fixture
def copy_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    """The PostgreSQL COPY write path alone (for tests of its own strategies)."""
    yield from _db(request, tmp_path, "postgres-copy")


@pytest.fixture(params=["postgres", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """A migrated engine per backend (for code with a single path per backend)."""
    eng = _sqlite(tmp_path) if request.param == "sqlite" else sa.create_engine(request.getfixturevalue("pg_url"))
    migrate.upgrade(eng)
    try:
        yield eng
    finally:
        eng.dispose()

"""Collected scanner reports waiting to be ingested, and scanner watermarks.

The collect task writes a report's bytes here and passes only the row id to
the ingest task (reports never travel as XCom values, so the DAGs run on any
executor). Ingest moves the bytes into raw_reports and deletes the inbox row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from selfheal.pipeline_state import report_inbox, scanner_watermarks


@dataclass(frozen=True)
class InboxReport:
    id: int
    scan_run_id: int
    scanner: str
    fmt: str
    service: str | None
    source: str
    body: bytes


def put(engine: sa.Engine, *, scan_run_id: int, scanner: str, fmt: str, service: str | None,
        source: str, body: bytes) -> int:
    """Store one collected report; returns the id the ingest task takes."""
    with engine.begin() as conn:
        return int(conn.execute(
            report_inbox.insert().returning(report_inbox.c.id),
            {"scan_run_id": scan_run_id, "scanner": scanner, "fmt": fmt, "service": service,
             "source": source, "body": body, "received_at": datetime.now(UTC)},
        ).scalar_one())


def load(engine: sa.Engine, ids: Sequence[int]) -> list[InboxReport]:
    """The reports with these ids (already ingested ones are simply absent: re-runs are no-ops)."""
    if not ids:
        return []
    with engine.connect() as conn:
        rows = conn.execute(sa.select(report_inbox).where(report_inbox.c.id.in_(list(ids))).order_by(report_inbox.c.id))
        return [InboxReport(r.id, r.scan_run_id, r.scanner, r.fmt, r.service, r.source, bytes(r.body)) for r in rows]


def delete(conn: sa.Connection, ids: Sequence[int]) -> None:
    if ids:
        conn.execute(report_inbox.delete().where(report_inbox.c.id.in_(list(ids))))


class PgWatermarkStore:
    """Scanner watermarks (e.g. Inspector2's last `updatedAt`) kept in the triage DB."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def get(self, key: str) -> datetime | None:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(scanner_watermarks.c.value).where(scanner_watermarks.c.key == key)
            ).scalar_one_or_none()

    def set(self, key: str, value: datetime) -> None:
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            updated = conn.execute(
                scanner_watermarks.update().where(scanner_watermarks.c.key == key).values(value=value, updated_at=now)
            ).rowcount
            if not updated:
                conn.execute(scanner_watermarks.insert(), {"key": key, "value": value, "updated_at": now})

"""The triage database schema (SQLAlchemy 2 declarative models).

The tables are created by the Alembic migrations next to this module
(``migrations/versions``), never by ``metadata.create_all``: a test checks that
the migrations and these models agree, so the models are the readable
reference and the migrations the deployed truth.

Portable between PostgreSQL (production, bulk COPY path) and SQLite (the
embedded default): JSON columns are JSONB on Postgres (containment operators
for the upsert's "nothing changed" test), JSON text on SQLite; ids are BIGINT
identity on Postgres and INTEGER PRIMARY KEY (rowid) on SQLite; timestamps are
always timezone-aware UTC in Python.

``observations`` deliberately has no foreign keys: every ingest writes one row
per finding seen, and a per-row referential-integrity trigger made that insert
six to seven times slower on this machine (0.4 s -> 2.7-3.3 s for 160,000
rows). The store is its only writer and only writes ids it just read from
``findings`` / ``scan_runs``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from selfheal.findings.model import KINDS, SEVERITIES
from selfheal.triage.lifecycle import STATUSES

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC in Python on every backend (SQLite drops the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware value")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType, list[str]: JSONType}


class ScanRun(Base):
    """One scanner run over one scope of one service; ``complete`` means the run
    covered its whole scope, so what it did not see is gone (auto-resolve)."""

    __tablename__ = "scan_runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    scanner: Mapped[str] = mapped_column(sa.String(64))
    service: Mapped[str | None] = mapped_column(sa.String(128))
    scope: Mapped[str | None] = mapped_column(sa.Text)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(sa.String(32), server_default="running")
    complete: Mapped[bool] = mapped_column(server_default=sa.false())
    counts: Mapped[dict[str, Any]] = mapped_column(server_default=sa.text("'{}'"))

    __table_args__ = (sa.Index(None, "scanner", "service", "scope", "started_at"),)


class RawReport(Base):
    """Every report received, byte for byte. ``sha256`` is unique: the same bytes
    twice are recognized and not processed again."""

    __tablename__ = "raw_reports"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    scan_run_id: Mapped[int | None] = mapped_column(
        BigId, sa.ForeignKey("scan_runs.id", ondelete="SET NULL"), index=True
    )
    scanner: Mapped[str | None] = mapped_column(sa.String(64))
    format: Mapped[str] = mapped_column(sa.String(32))
    source: Mapped[str] = mapped_column(sa.Text)
    sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    size: Mapped[int] = mapped_column(sa.BigInteger)
    body: Mapped[bytes] = mapped_column(sa.LargeBinary)
    received_at: Mapped[datetime]
    findings: Mapped[int] = mapped_column(server_default="0")  # findings parsed from it


class FindingRow(Base):
    """One actionable issue: one row per fingerprint, whatever scanners saw it."""

    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(sa.String(128), unique=True)
    service: Mapped[str | None] = mapped_column(sa.String(128))
    scanner: Mapped[str] = mapped_column(sa.String(64))  # first scanner to report it: owns the content
    kind: Mapped[str] = mapped_column(sa.String(16))
    rule_id: Mapped[str] = mapped_column(sa.Text)
    rule_ids: Mapped[list[str]] = mapped_column(server_default=sa.text("'[]'"))  # "scanner:rule" of every source
    cwe: Mapped[int | None]
    cves: Mapped[list[str]] = mapped_column(server_default=sa.text("'[]'"))
    title: Mapped[str] = mapped_column(sa.Text)
    severity: Mapped[str] = mapped_column(sa.String(16))
    confidence: Mapped[str | None] = mapped_column(sa.String(32))
    cvss_vector: Mapped[str | None] = mapped_column(sa.Text)
    cvss_score: Mapped[float | None] = mapped_column(sa.Float)
    epss: Mapped[float | None] = mapped_column(sa.Float)
    kev: Mapped[bool | None]
    exploit_available: Mapped[bool | None]
    fix_available: Mapped[bool | None]
    method: Mapped[str | None] = mapped_column(sa.String(16))
    path_template: Mapped[str | None] = mapped_column(sa.Text)
    param: Mapped[str | None] = mapped_column(sa.Text)
    url: Mapped[str | None] = mapped_column(sa.Text)
    host: Mapped[str | None] = mapped_column(sa.Text)
    port: Mapped[str | None] = mapped_column(sa.String(32))
    line: Mapped[int | None]
    package_name: Mapped[str | None] = mapped_column(sa.Text)
    package_version: Mapped[str | None] = mapped_column(sa.Text)
    fixed_version: Mapped[str | None] = mapped_column(sa.Text)
    package_ecosystem: Mapped[str | None] = mapped_column(sa.String(64))
    file_path: Mapped[str | None] = mapped_column(sa.Text)
    evidence: Mapped[str] = mapped_column(sa.Text, server_default="")
    solution: Mapped[str] = mapped_column(sa.Text, server_default="")
    sources: Mapped[list[str]] = mapped_column(server_default=sa.text("'[]'"))  # every scanner that saw it
    content_hash: Mapped[str] = mapped_column(sa.String(32))
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    status: Mapped[str] = mapped_column(sa.String(16), server_default="new")
    status_changed_at: Mapped[datetime]
    priority: Mapped[float | None] = mapped_column(sa.Float)
    ssvc_decision: Mapped[str | None] = mapped_column(sa.String(16))
    sla_due: Mapped[datetime | None]
    mitigated_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]

    __table_args__ = (
        sa.CheckConstraint(_in("severity", SEVERITIES), name="severity"),
        sa.CheckConstraint(_in("kind", KINDS), name="kind"),
        sa.CheckConstraint(_in("status", STATUSES), name="status"),
        sa.CheckConstraint("priority IS NULL OR (priority >= 0 AND priority <= 100)", name="priority"),
        # Room on each page for HOT updates: prioritization and status changes
        # rewrite rows without touching the indexes.
        {"postgresql_with": {"fillfactor": 90}},
    )


class Observation(Base):
    """Scan run X saw finding Y: drives auto-resolve and the per-run history."""

    __tablename__ = "observations"

    scan_run_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    finding_id: Mapped[int] = mapped_column(BigId, primary_key=True)
    seen_at: Mapped[datetime]


class Quarantine(Base):
    """Input that could not be parsed: the bytes, the error, our best guess of what it was.

    A quarantined report is not also stored in raw_reports: it has no findings
    to link, and its bytes are here. ``sha256`` is unique, so sending the same
    bad report again adds nothing."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime]
    source: Mapped[str] = mapped_column(sa.Text)
    scanner_guess: Mapped[str | None] = mapped_column(sa.String(64))
    format_guess: Mapped[str | None] = mapped_column(sa.String(32))
    error: Mapped[str] = mapped_column(sa.Text)
    body: Mapped[bytes] = mapped_column(sa.LargeBinary)
    size: Mapped[int] = mapped_column(sa.BigInteger)
    sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    scan_run_id: Mapped[int | None] = mapped_column(BigId, sa.ForeignKey("scan_runs.id", ondelete="SET NULL"))


class StatusChange(Base):
    """Every status change of a finding: who, why, when (the lifecycle's history)."""

    __tablename__ = "status_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    finding_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("findings.id", ondelete="CASCADE"), index=True)
    from_status: Mapped[str | None] = mapped_column(sa.String(16))
    to_status: Mapped[str] = mapped_column(sa.String(16))
    actor: Mapped[str] = mapped_column(sa.String(256))
    reason: Mapped[str] = mapped_column(sa.Text, server_default="")
    changed_at: Mapped[datetime]
    scan_run_id: Mapped[int | None] = mapped_column(BigId)


class Kev(Base):
    """CISA Known Exploited Vulnerabilities catalog entries."""

    __tablename__ = "kev"

    cve_id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    vendor_project: Mapped[str | None] = mapped_column(sa.Text)
    product: Mapped[str | None] = mapped_column(sa.Text)
    vulnerability_name: Mapped[str | None] = mapped_column(sa.Text)
    date_added: Mapped[date | None]
    due_date: Mapped[date | None]
    known_ransomware: Mapped[bool | None]
    loaded_at: Mapped[datetime]


class Epss(Base):
    """FIRST EPSS scores: probability of exploitation activity in the next 30 days."""

    __tablename__ = "epss"

    cve_id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    epss: Mapped[float] = mapped_column(sa.Float)
    percentile: Mapped[float | None] = mapped_column(sa.Float)
    score_date: Mapped[date | None]
    model_version: Mapped[str | None] = mapped_column(sa.String(64))
    loaded_at: Mapped[datetime]


metadata = Base.metadata
findings = FindingRow.__table__
scan_runs = ScanRun.__table__
raw_reports = RawReport.__table__
observations = Observation.__table__
quarantine = Quarantine.__table__
status_changes = StatusChange.__table__
kev = Kev.__table__
epss = Epss.__table__

"""Triage store: scan runs, raw reports, findings, observations, quarantine,
status history, and the KEV / EPSS threat-intelligence tables.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Frozen: later schema changes go into new revisions (0002, ...), never here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)

SEVERITIES = ("critical", "high", "medium", "low", "info")
KINDS = ("web", "dependency", "host", "code")
STATUSES = ("new", "open", "mitigated", "patching", "resolved", "accepted", "false_positive", "reopened")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "scan_runs",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("scanner", sa.String(64), nullable=False),
        sa.Column("service", sa.String(128)),
        sa.Column("scope", sa.Text),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS),
        sa.Column("status", sa.String(32), nullable=False, server_default="running"),
        sa.Column("complete", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("counts", JSONType, nullable=False, server_default=sa.text("'{}'")),
        sa.PrimaryKeyConstraint("id", name="pk_scan_runs"),
    )
    op.create_index(
        "ix_scan_runs_scanner_service_scope_started_at",
        "scan_runs",
        ["scanner", "service", "scope", "started_at"],
    )

    op.create_table(
        "raw_reports",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("scan_run_id", BigId),
        sa.Column("scanner", sa.String(64)),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("findings", sa.Integer, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id", name="pk_raw_reports"),
        sa.UniqueConstraint("sha256", name="uq_raw_reports_sha256"),
        sa.ForeignKeyConstraint(
            ["scan_run_id"], ["scan_runs.id"], name="fk_raw_reports_scan_run_id_scan_runs", ondelete="SET NULL"
        ),
    )
    op.create_index("ix_raw_reports_scan_run_id", "raw_reports", ["scan_run_id"])

    op.create_table(
        "findings",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("fingerprint", sa.String(128), nullable=False),
        sa.Column("service", sa.String(128)),
        sa.Column("scanner", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("rule_id", sa.Text, nullable=False),
        sa.Column("rule_ids", JSONType, nullable=False, server_default=sa.text("'[]'")),
        sa.Column("cwe", sa.Integer),
        sa.Column("cves", JSONType, nullable=False, server_default=sa.text("'[]'")),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("confidence", sa.String(32)),
        sa.Column("cvss_vector", sa.Text),
        sa.Column("cvss_score", sa.Float),
        sa.Column("epss", sa.Float),
        sa.Column("kev", sa.Boolean),
        sa.Column("exploit_available", sa.Boolean),
        sa.Column("fix_available", sa.Boolean),
        sa.Column("method", sa.String(16)),
        sa.Column("path_template", sa.Text),
        sa.Column("param", sa.Text),
        sa.Column("url", sa.Text),
        sa.Column("host", sa.Text),
        sa.Column("port", sa.String(32)),
        sa.Column("line", sa.Integer),
        sa.Column("package_name", sa.Text),
        sa.Column("package_version", sa.Text),
        sa.Column("fixed_version", sa.Text),
        sa.Column("package_ecosystem", sa.String(64)),
        sa.Column("file_path", sa.Text),
        sa.Column("evidence", sa.Text, nullable=False, server_default=""),
        sa.Column("solution", sa.Text, nullable=False, server_default=""),
        sa.Column("sources", JSONType, nullable=False, server_default=sa.text("'[]'")),
        sa.Column("content_hash", sa.String(32), nullable=False),
        sa.Column("first_seen", TS, nullable=False),
        sa.Column("last_seen", TS, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="new"),
        sa.Column("status_changed_at", TS, nullable=False),
        sa.Column("priority", sa.Float),
        sa.Column("ssvc_decision", sa.String(16)),
        sa.Column("sla_due", TS),
        sa.Column("mitigated_at", TS),
        sa.Column("resolved_at", TS),
        sa.PrimaryKeyConstraint("id", name="pk_findings"),
        sa.UniqueConstraint("fingerprint", name="uq_findings_fingerprint"),
        sa.CheckConstraint(_in("severity", SEVERITIES), name="ck_findings_severity"),
        sa.CheckConstraint(_in("kind", KINDS), name="ck_findings_kind"),
        sa.CheckConstraint(_in("status", STATUSES), name="ck_findings_status"),
        sa.CheckConstraint("priority IS NULL OR (priority >= 0 AND priority <= 100)", name="ck_findings_priority"),
        postgresql_with={"fillfactor": 90},
    )

    op.create_table(
        "observations",
        sa.Column("scan_run_id", BigId, nullable=False),
        sa.Column("finding_id", BigId, nullable=False),
        sa.Column("seen_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("scan_run_id", "finding_id", name="pk_observations"),
    )

    op.create_table(
        "quarantine",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("scanner_guess", sa.String(64)),
        sa.Column("format_guess", sa.String(32)),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("scan_run_id", BigId),
        sa.PrimaryKeyConstraint("id", name="pk_quarantine"),
        sa.UniqueConstraint("sha256", name="uq_quarantine_sha256"),
        sa.ForeignKeyConstraint(
            ["scan_run_id"], ["scan_runs.id"], name="fk_quarantine_scan_run_id_scan_runs", ondelete="SET NULL"
        ),
    )

    op.create_table(
        "status_changes",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("finding_id", BigId, nullable=False),
        sa.Column("from_status", sa.String(16)),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("changed_at", TS, nullable=False),
        sa.Column("scan_run_id", BigId),
        sa.PrimaryKeyConstraint("id", name="pk_status_changes"),
        sa.ForeignKeyConstraint(
            ["finding_id"], ["findings.id"], name="fk_status_changes_finding_id_findings", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_status_changes_finding_id", "status_changes", ["finding_id"])

    op.create_table(
        "kev",
        sa.Column("cve_id", sa.String(32), nullable=False),
        sa.Column("vendor_project", sa.Text),
        sa.Column("product", sa.Text),
        sa.Column("vulnerability_name", sa.Text),
        sa.Column("date_added", sa.Date),
        sa.Column("due_date", sa.Date),
        sa.Column("known_ransomware", sa.Boolean),
        sa.Column("loaded_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("cve_id", name="pk_kev"),
    )
    op.create_table(
        "epss",
        sa.Column("cve_id", sa.String(32), nullable=False),
        sa.Column("epss", sa.Float, nullable=False),
        sa.Column("percentile", sa.Float),
        sa.Column("score_date", sa.Date),
        sa.Column("model_version", sa.String(64)),
        sa.Column("loaded_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("cve_id", name="pk_epss"),
    )

    if op.get_bind().dialect.name == "postgresql":
        # Raw reports are large, repetitive JSON/XML: lz4 compresses them several
        # times faster than the default pglz, which kept the bulk ingest waiting.
        # Builds without lz4 support keep pglz (the savepoint keeps the migration going).
        bind = op.get_bind()
        try:
            with bind.begin_nested():
                bind.exec_driver_sql("ALTER TABLE raw_reports ALTER COLUMN body SET COMPRESSION lz4")
                bind.exec_driver_sql("ALTER TABLE quarantine ALTER COLUMN body SET COMPRESSION lz4")
        except sa.exc.DBAPIError:
            pass


def downgrade() -> None:
    for table in ("epss", "kev", "status_changes", "quarantine", "observations", "findings", "raw_reports"):
        op.drop_table(table)
    op.drop_table("scan_runs")

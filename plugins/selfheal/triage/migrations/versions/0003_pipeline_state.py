"""Pipeline state: gateway desired state, patches, deployments, rollout events,
the report inbox and scanner watermarks.

Revision ID: 0003
Revises: 0002

Desired state lives in Postgres and the gateway and backends are reconciled
to it after any restart (gateway_rules, gateway_servers, deployments). The
report inbox carries collected scanner reports from the collect task to the
ingest task by id (never as XCom values); an ingested report's bytes stay in
raw_reports and its inbox row is deleted.

Frozen: later changes go into new revisions. The gateway tables mirror
``selfheal.gateway.state``; the rest mirror ``selfheal.pipeline_state``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "gateway_rules",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("service", sa.String(64), nullable=False, index=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("method", sa.String(16)),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("param", sa.Text),
        sa.Column("attack_class", sa.String(32)),
        sa.Column("cwe", sa.Integer),
        sa.Column("pattern", sa.Text, nullable=False),
        sa.Column("finding", sa.String(128), nullable=False, server_default=""),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "gateway_servers",
        sa.Column("service", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("weight", sa.Integer, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("check", sa.Boolean, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "gateway_audit",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.create_table(
        "patches",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("service", sa.String(64), nullable=False, index=True),
        sa.Column("recipe", sa.String(32), nullable=False),
        sa.Column("state", sa.String(24), nullable=False, index=True),
        sa.Column("finding_ids", JSONType, nullable=False),
        sa.Column("plan", JSONType, nullable=False),
        sa.Column("policy", JSONType),
        sa.Column("branch", sa.String(128)),
        sa.Column("commit", sa.String(64)),
        sa.Column("image", sa.String(256)),
        sa.Column("image_digest", sa.String(128)),
        sa.Column("sandbox", JSONType),
        sa.Column("rollout", JSONType),
        sa.Column("approval", JSONType),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("history", JSONType, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "deployments",
        sa.Column("service", sa.String(64), primary_key=True),
        sa.Column("color", sa.String(16), primary_key=True),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("image", sa.String(256), nullable=False),
        sa.Column("patch_id", sa.String(64)),
        sa.Column("ref", sa.String(128), nullable=False, server_default=""),
        sa.Column("endpoint", sa.String(128)),
        sa.Column("weight", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "rollout_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False, index=True),
        sa.Column("service", sa.String(64), nullable=False, index=True),
        sa.Column("patch_id", sa.String(64), index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("detail", JSONType, nullable=False),
    )
    op.create_table(
        "report_inbox",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("scan_run_id", BigId, sa.ForeignKey("scan_runs.id"), nullable=False, index=True),
        sa.Column("scanner", sa.String(32), nullable=False),
        sa.Column("fmt", sa.String(32), nullable=False),
        sa.Column("service", sa.String(64)),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("received_at", TS, nullable=False),
    )
    op.create_table(
        "scanner_watermarks",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("value", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )


def downgrade() -> None:
    for t in (
        "scanner_watermarks",
        "report_inbox",
        "rollout_events",
        "deployments",
        "patches",
        "gateway_audit",
        "gateway_servers",
        "gateway_rules",
    ):
        op.drop_table(t)

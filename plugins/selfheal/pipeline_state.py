"""Tables for the pipeline's own state beyond triage: patches, deployments,
rollout events, the report inbox and scanner watermarks (migration 0003).

They share the triage schema's MetaData so one `Base.metadata` describes the
whole database; the gateway's desired-state tables live in selfheal.gateway.state.
"""

from __future__ import annotations

import sqlalchemy as sa

from selfheal.triage.schema import Base, BigId, JSONType, UTCDateTime

metadata = Base.metadata

patches = sa.Table(
    "patches",
    metadata,
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
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("service", sa.String(64), primary_key=True),
    sa.Column("color", sa.String(16), primary_key=True),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("image", sa.String(256), nullable=False),
    sa.Column("patch_id", sa.String(64)),
    sa.Column("ref", sa.String(128), nullable=False, server_default=""),
    sa.Column("endpoint", sa.String(128)),
    sa.Column("weight", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

rollout_events = sa.Table(
    "rollout_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime(), nullable=False, index=True),
    sa.Column("service", sa.String(64), nullable=False, index=True),
    sa.Column("patch_id", sa.String(64), index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("detail", JSONType, nullable=False),
)

report_inbox = sa.Table(
    "report_inbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("scan_run_id", BigId, sa.ForeignKey("scan_runs.id"), nullable=False, index=True),
    sa.Column("scanner", sa.String(32), nullable=False),
    sa.Column("fmt", sa.String(32), nullable=False),
    sa.Column("service", sa.String(64)),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("received_at", UTCDateTime(), nullable=False),
)

scanner_watermarks = sa.Table(
    "scanner_watermarks",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("value", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

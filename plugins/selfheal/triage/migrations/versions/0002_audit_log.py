"""Audit ledger: the append-only, hash-chained ``audit_log`` table.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02

The database itself refuses UPDATE, DELETE and TRUNCATE on ``audit_log``:

* PostgreSQL: a statement-level trigger raises for all three (it fires for the
  owner and superusers too; only ALTER TABLE ... DISABLE TRIGGER gets past it,
  and the hash chain catches what is done then), and the pipeline's group
  role ``selfheal_pipeline`` is granted SELECT and INSERT only. The role is
  created when missing (roles are cluster-wide, so it may already exist from
  another database; a migrating user without CREATEROLE skips it with a
  notice and a DBA creates it). Grant it to the login user the pipeline
  connects as: ``GRANT selfheal_pipeline TO <user>``.
* SQLite (embedded default): BEFORE UPDATE / BEFORE DELETE triggers abort
  (SQLite has no TRUNCATE; ``DELETE FROM`` without WHERE fires the trigger too).

Frozen: later changes go into new revisions. The table mirrors
``selfheal.audit.ledger.audit_log``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
PIPELINE_ROLE = "selfheal_pipeline"
REFUSAL = "audit_log is append-only"

PG_UP = [
    f"""
    CREATE FUNCTION audit_log_refuse_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        -- Concatenation, not a RAISE format string: the DBAPI reads percent signs as parameters.
        RAISE EXCEPTION USING MESSAGE = '{REFUSAL}: ' || TG_OP || ' refused',
                  ERRCODE = 'insufficient_privilege',
                  HINT = 'entries are never changed or removed; append a correcting entry instead';
    END
    $$
    """,
    """
    CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change()
    """,
    "REVOKE ALL ON audit_log FROM PUBLIC",
    f"""
    DO $$
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{PIPELINE_ROLE}') THEN
            BEGIN
                CREATE ROLE {PIPELINE_ROLE} NOLOGIN;
            EXCEPTION
                WHEN insufficient_privilege THEN
                    RAISE NOTICE 'cannot create role {PIPELINE_ROLE}: ask a DBA to create it, then re-grant';
                WHEN duplicate_object THEN
                    NULL;  -- created concurrently by a migration of another database
            END;
        END IF;
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{PIPELINE_ROLE}') THEN
            EXECUTE 'GRANT SELECT, INSERT ON audit_log TO {PIPELINE_ROLE}';
            EXECUTE 'REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM {PIPELINE_ROLE}';
        END IF;
    END
    $$
    """,
]

SQLITE_UP = [
    f"""
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, '{REFUSAL}: UPDATE refused'); END
    """,
    f"""
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, '{REFUSAL}: DELETE refused'); END
    """,
]


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("seq", BigId, nullable=False, autoincrement=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(256)),
        sa.Column("idempotency_key", sa.String(256)),
        # json, not jsonb: the stored text is what was hashed, byte for byte in value.
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_log"),
        sa.UniqueConstraint("idempotency_key", name="uq_audit_log_idempotency_key"),
        sa.UniqueConstraint("prev_hash", name="uq_audit_log_prev_hash"),
        sa.UniqueConstraint("hash", name="uq_audit_log_hash"),
        sa.CheckConstraint("seq >= 1", name="ck_audit_log_seq_positive"),
    )
    op.create_index("ix_audit_log_subject", "audit_log", ["subject"])
    op.create_index("ix_audit_log_action", "audit_log", ["action"])
    bind = op.get_bind()
    statements = PG_UP if bind.dialect.name == "postgresql" else SQLITE_UP
    for stmt in statements:
        bind.exec_driver_sql(stmt)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # The role is cluster-wide and may serve other databases: leave it.
        bind.exec_driver_sql("DROP TABLE audit_log")
        bind.exec_driver_sql("DROP FUNCTION audit_log_refuse_change()")
    else:
        op.drop_table("audit_log")  # its triggers go with it

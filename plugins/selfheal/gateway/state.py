"""Desired gateway state: virtual-patch rules and backend servers (with weights).

HAProxy keeps runtime changes in memory only, so the source of truth lives
here and the gateway is reconciled to it after any restart. The interface is
a small protocol with two implementations: an in-memory one for pure unit
tests and a SQLAlchemy one for Postgres (or SQLite on a workstation).

The SQL tables use their own ``MetaData`` and are created with
``create_tables()`` for now; they are meant to be folded into the project's
Alembic migrations (``gateway_rules``, ``gateway_servers``, ``gateway_audit``).
Every change and its audit row are written in one transaction.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, runtime_checkable

import sqlalchemy as sa

RuleAction = Literal["block_injection", "require_auth", "deny"]
ServerState = Literal["ready", "drain", "maint"]
RULE_ACTIONS: tuple[RuleAction, ...] = ("block_injection", "require_auth", "deny")
SERVER_STATES: tuple[ServerState, ...] = ("ready", "drain", "maint")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class VirtualPatch:
    """One gateway rule blocking one attack at one location of one service.

    ``pattern`` is the PCRE that HAProxy matches against the request key
    ``"METHOD decoded-path?raw-query"`` (see include/gateway/haproxy.cfg.j2);
    it starts with ``(?#vp=<id>)`` so live entries can be traced back to rules.
    """

    id: str
    service: str
    action: RuleAction
    path: str
    pattern: str
    method: str | None = None
    param: str | None = None
    attack_class: str | None = None
    cwe: int | None = None
    finding: str = ""
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """A backend server as it should be: address, weight (0..256) and admin state."""

    service: str
    name: str
    address: str
    port: int
    weight: int = 100
    state: ServerState = "ready"
    check: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What changed and why; stored with the change, handed to any audit hook."""

    action: str
    subject: str
    detail: dict[str, Any] = field(default_factory=dict)
    actor: str = "selfheal"
    at: datetime = field(default_factory=_now)


@runtime_checkable
class GatewayStateStore(Protocol):
    """Desired state of the gateway. Each mutation commits atomically with its audit event."""

    def get_rule(self, rule_id: str) -> VirtualPatch | None: ...
    def list_rules(self, service: str | None = None) -> list[VirtualPatch]: ...
    def put_rule(self, rule: VirtualPatch, audit: AuditEvent) -> VirtualPatch | None:
        """Upsert; return the previous version. Writes nothing (no audit) when it equals ``rule``."""
    def delete_rule(self, rule_id: str, audit: AuditEvent) -> bool: ...
    def get_server(self, service: str, name: str) -> ServerSpec | None: ...
    def list_servers(self, service: str | None = None) -> list[ServerSpec]: ...
    def put_server(self, spec: ServerSpec, audit: AuditEvent) -> None: ...
    def delete_server(self, service: str, name: str, audit: AuditEvent) -> bool: ...
    def audit_events(self, limit: int = 100) -> list[AuditEvent]: ...


class InMemoryStateStore:
    """Dict-backed store for unit tests and throwaway runs."""

    def __init__(self) -> None:
        self._rules: dict[str, VirtualPatch] = {}
        self._servers: dict[tuple[str, str], ServerSpec] = {}
        self._audit: list[AuditEvent] = []
        self._lock = threading.Lock()

    def get_rule(self, rule_id: str) -> VirtualPatch | None:
        return self._rules.get(rule_id)

    def list_rules(self, service: str | None = None) -> list[VirtualPatch]:
        return sorted(
            (r for r in self._rules.values() if service is None or r.service == service), key=lambda r: r.id
        )

    def put_rule(self, rule: VirtualPatch, audit: AuditEvent) -> VirtualPatch | None:
        with self._lock:
            old = self._rules.get(rule.id)
            if old != rule:
                self._rules[rule.id] = rule
                self._audit.append(audit)
            return old

    def delete_rule(self, rule_id: str, audit: AuditEvent) -> bool:
        with self._lock:
            found = self._rules.pop(rule_id, None) is not None
            if found:
                self._audit.append(audit)
            return found

    def get_server(self, service: str, name: str) -> ServerSpec | None:
        return self._servers.get((service, name))

    def list_servers(self, service: str | None = None) -> list[ServerSpec]:
        return sorted(
            (s for s in self._servers.values() if service is None or s.service == service),
            key=lambda s: (s.service, s.name),
        )

    def put_server(self, spec: ServerSpec, audit: AuditEvent) -> None:
        with self._lock:
            self._servers[(spec.service, spec.name)] = spec
            self._audit.append(audit)

    def delete_server(self, service: str, name: str, audit: AuditEvent) -> bool:
        with self._lock:
            found = self._servers.pop((service, name), None) is not None
            if found:
                self._audit.append(audit)
            return found

    def audit_events(self, limit: int = 100) -> list[AuditEvent]:
        return list(reversed(self._audit[-limit:]))


# --------------------------------------------------------------------------- SQL

metadata = sa.MetaData()

gateway_rules = sa.Table(
    "gateway_rules",
    metadata,
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
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

gateway_servers = sa.Table(
    "gateway_servers",
    metadata,
    sa.Column("service", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("address", sa.String(64), nullable=False),
    sa.Column("port", sa.Integer, nullable=False),
    sa.Column("weight", sa.Integer, nullable=False),
    sa.Column("state", sa.String(8), nullable=False),
    sa.Column("check", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("weight BETWEEN 0 AND 256", name="ck_gateway_servers_weight"),
    sa.CheckConstraint("state IN ('ready', 'drain', 'maint')", name="ck_gateway_servers_state"),
)

gateway_audit = sa.Table(
    "gateway_audit",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("detail", sa.JSON, nullable=False),
)

_RULE_COLS = ("service", "action", "method", "path", "param", "attack_class", "cwe", "pattern", "finding", "reason")
_RULE_TYPES = {
    "id": "varchar", "service": "varchar", "action": "varchar", "method": "varchar", "path": "text",
    "param": "text", "attack_class": "varchar", "cwe": "integer", "pattern": "text", "finding": "varchar",
    "reason": "text",
}
_cols = ", ".join(_RULE_TYPES)
_vals = ", ".join(f"CAST(:{c} AS {t})" for c, t in _RULE_TYPES.items())
_PG_PUT_RULE = sa.text(
    f"""
    WITH old AS (
        SELECT {_cols} FROM gateway_rules WHERE id = :id FOR UPDATE
    ), changed AS (
        SELECT NOT EXISTS (SELECT 1 FROM old WHERE ROW({_cols}) IS NOT DISTINCT FROM ROW({_vals})) AS yes
    ), up AS (
        INSERT INTO gateway_rules ({_cols}, updated_at)
        SELECT {_vals}, CAST(:updated_at AS timestamptz) WHERE (SELECT yes FROM changed)
        ON CONFLICT (id) DO UPDATE SET {", ".join(f"{c} = EXCLUDED.{c}" for c in _RULE_TYPES if c != "id")},
            updated_at = EXCLUDED.updated_at
        RETURNING 1
    ), aud AS (
        INSERT INTO gateway_audit (at, actor, action, subject, detail)
        SELECT CAST(:a_at AS timestamptz), :a_actor, :a_action, :a_subject, CAST(:a_detail AS json)
        WHERE (SELECT yes FROM changed)
        RETURNING 1
    )
    SELECT {_cols} FROM old
    """
)
_SERVER_COLS = ("address", "port", "weight", "state", "check")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL + NORMAL: a commit costs no fsync of the main file; still crash-safe for the app.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class SqlStateStore:
    """SQLAlchemy Core implementation (Postgres in production, SQLite on a laptop)."""

    def __init__(self, engine: sa.Engine | str) -> None:
        self.engine = sa.create_engine(engine) if isinstance(engine, str) else engine
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif self.engine.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:  # pragma: no cover - the two dialects the project supports
            raise ValueError(f"unsupported database dialect {self.engine.dialect.name!r}")
        self._insert = insert
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._pg_put_rule_sql = str(_PG_PUT_RULE.compile(dialect=self.engine.dialect))

    def create_tables(self) -> None:
        """Create the tables (until the lead folds them into Alembic)."""
        metadata.create_all(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    @staticmethod
    def _audit_row(ev: AuditEvent) -> dict[str, Any]:
        return {"at": ev.at, "actor": ev.actor, "action": ev.action, "subject": ev.subject, "detail": ev.detail}

    def _upsert(self, conn: sa.Connection, table: sa.Table, row: dict[str, Any], keys: Iterable[str]) -> None:
        stmt = self._insert(table).values(**row)
        update = {k: stmt.excluded[k] for k in row if k not in keys}
        conn.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=update))

    # rules
    @staticmethod
    def _rule(row: sa.Row) -> VirtualPatch:
        return VirtualPatch(id=row.id, **{c: getattr(row, c) for c in _RULE_COLS})

    def get_rule(self, rule_id: str) -> VirtualPatch | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(gateway_rules).where(gateway_rules.c.id == rule_id)).first()
        return self._rule(row) if row else None

    def list_rules(self, service: str | None = None) -> list[VirtualPatch]:
        q = sa.select(gateway_rules).order_by(gateway_rules.c.id)
        if service is not None:
            q = q.where(gateway_rules.c.service == service)
        with self.engine.connect() as c:
            return [self._rule(r) for r in c.execute(q)]

    def put_rule(self, rule: VirtualPatch, audit: AuditEvent) -> VirtualPatch | None:
        row = {"id": rule.id, **{c: getattr(rule, c) for c in _RULE_COLS}, "updated_at": audit.at}
        if self.engine.dialect.name == "postgresql":
            return self._put_rule_pg(row, audit)
        with self.engine.begin() as c:
            old = c.execute(sa.select(gateway_rules).where(gateway_rules.c.id == rule.id)).first()
            prev = self._rule(old) if old else None
            if prev != rule:
                self._upsert(c, gateway_rules, row, ["id"])
                c.execute(gateway_audit.insert().values(**self._audit_row(audit)))
        return prev

    def _put_rule_pg(self, row: dict[str, Any], audit: AuditEvent) -> VirtualPatch | None:
        # One statement, one round trip: a data-modifying CTE is atomic on its own, so the
        # previous row is read (and locked), the rule upserted and the audit row written
        # together, or none of it. Virtual patches have a 10 ms budget end to end.
        # The statement goes to the psycopg connection directly: SQLAlchemy's execution layer
        # costs ~0.3-0.7 ms here, a large share of the budget (measured, bench/virtual_patch.py).
        params = {**row, **{f"a_{k}": v for k, v in self._audit_row(audit).items()}}
        params["a_detail"] = json.dumps(audit.detail, default=str)
        with self._autocommit.connect() as c:
            cur = c.connection.driver_connection.execute(self._pg_put_rule_sql, params)  # type: ignore[union-attr]
            old = cur.fetchone()
        if old is None:
            return None
        return VirtualPatch(**dict(zip((d.name for d in cur.description), old, strict=True)))

    def delete_rule(self, rule_id: str, audit: AuditEvent) -> bool:
        with self.engine.begin() as c:
            n = c.execute(gateway_rules.delete().where(gateway_rules.c.id == rule_id)).rowcount
            if n:
                c.execute(gateway_audit.insert().values(**self._audit_row(audit)))
        return bool(n)

    # servers
    @staticmethod
    def _server(row: sa.Row) -> ServerSpec:
        return ServerSpec(service=row.service, name=row.name, **{c: getattr(row, c) for c in _SERVER_COLS})

    def get_server(self, service: str, name: str) -> ServerSpec | None:
        t = gateway_servers
        with self.engine.connect() as c:
            row = c.execute(sa.select(t).where(t.c.service == service, t.c.name == name)).first()
        return self._server(row) if row else None

    def list_servers(self, service: str | None = None) -> list[ServerSpec]:
        t = gateway_servers
        q = sa.select(t).order_by(t.c.service, t.c.name)
        if service is not None:
            q = q.where(t.c.service == service)
        with self.engine.connect() as c:
            return [self._server(r) for r in c.execute(q)]

    def put_server(self, spec: ServerSpec, audit: AuditEvent) -> None:
        row = {**spec.to_dict(), "updated_at": audit.at}
        with self.engine.begin() as c:
            self._upsert(c, gateway_servers, row, ["service", "name"])
            c.execute(gateway_audit.insert().values(**self._audit_row(audit)))

    def delete_server(self, service: str, name: str, audit: AuditEvent) -> bool:
        t = gateway_servers
        with self.engine.begin() as c:
            n = c.execute(t.delete().where(t.c.service == service, t.c.name == name)).rowcount
            if n:
                c.execute(gateway_audit.insert().values(**self._audit_row(audit)))
        return bool(n)

    def audit_events(self, limit: int = 100) -> list[AuditEvent]:
        t = gateway_audit
        with self.engine.connect() as c:
            rows = c.execute(sa.select(t).order_by(t.c.id.desc()).limit(limit)).all()
        return [AuditEvent(action=r.action, subject=r.subject, detail=r.detail, actor=r.actor, at=r.at) for r in rows]


__all__ = [
    "RULE_ACTIONS",
    "SERVER_STATES",
    "AuditEvent",
    "GatewayStateStore",
    "InMemoryStateStore",
    "ServerSpec",
    "SqlStateStore",
    "VirtualPatch",
    "metadata",
]

"""The desired-state store contract, on the in-memory store and on SQLite (Postgres: integration)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from selfheal.gateway.state import (
    AuditEvent,
    GatewayStateStore,
    InMemoryStateStore,
    ServerSpec,
    SqlStateStore,
    VirtualPatch,
)

RULE = VirtualPatch(
    id="vp-1", service="shop", action="block_injection", path="/p", pattern="(?i)(?#vp=vp-1)^GET", method="GET",
    param="q", attack_class="sqli", cwe=89, finding="fp", reason="why",
)
SERVER = ServerSpec(service="shop", name="blue-1", address="127.0.0.1", port=8001, weight=90)


def store_contract(store: GatewayStateStore) -> None:
    assert store.get_rule("vp-1") is None and store.list_rules() == []
    assert store.put_rule(RULE, AuditEvent("gateway.rule.apply", "vp-1", {"a": 1})) is None
    assert store.get_rule("vp-1") == RULE
    assert store.put_rule(RULE, AuditEvent("gateway.rule.apply", "vp-1")) == RULE  # unchanged: no write
    changed = VirtualPatch(**{**RULE.to_dict(), "reason": "new reason", "method": None})
    assert store.put_rule(changed, AuditEvent("gateway.rule.apply", "vp-1")) == RULE  # upsert
    assert store.get_rule("vp-1") == changed
    assert store.put_rule(RULE, AuditEvent("gateway.rule.apply", "vp-1")) == changed
    other = VirtualPatch(id="vp-2", service="billing", action="deny", path="/x", pattern="p")
    store.put_rule(other, AuditEvent("gateway.rule.apply", "vp-2"))
    assert [r.id for r in store.list_rules()] == ["vp-1", "vp-2"]
    assert store.list_rules("billing") == [other]
    assert store.delete_rule("vp-2", AuditEvent("gateway.rule.remove", "vp-2")) is True
    assert store.delete_rule("vp-2", AuditEvent("gateway.rule.remove", "vp-2")) is False

    store.put_server(SERVER, AuditEvent("gateway.server.add", "shop/blue-1"))
    store.put_server(ServerSpec("shop", "green-1", "127.0.0.2", 8002, 10, "drain", False), AuditEvent("x", "y"))
    assert store.get_server("shop", "blue-1") == SERVER
    store.put_server(ServerSpec("shop", "blue-1", "127.0.0.1", 8001, 0), AuditEvent("gateway.server.weight", "s"))
    assert store.get_server("shop", "blue-1").weight == 0  # type: ignore[union-attr]
    assert [s.name for s in store.list_servers("shop")] == ["blue-1", "green-1"]
    assert store.list_servers("billing") == []
    assert store.delete_server("shop", "green-1", AuditEvent("gateway.server.remove", "s")) is True
    assert store.delete_server("shop", "green-1", AuditEvent("gateway.server.remove", "s")) is False

    events = store.audit_events()
    # Newest first; an unchanged put or a delete of nothing writes no audit row.
    assert [e.action for e in events] == [
        "gateway.server.remove", "gateway.server.weight", "x", "gateway.server.add", "gateway.rule.remove",
        "gateway.rule.apply", "gateway.rule.apply", "gateway.rule.apply", "gateway.rule.apply",
    ]
    assert events[-1].detail == {"a": 1}


def test_in_memory_store() -> None:
    store = InMemoryStateStore()
    assert isinstance(store, GatewayStateStore)
    store_contract(store)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqlStateStore]:
    store = SqlStateStore(f"sqlite:///{tmp_path / 'gw.db'}")
    store.create_tables()
    yield store
    store.dispose()


def test_sqlite_store(sqlite_store: SqlStateStore) -> None:
    assert isinstance(sqlite_store, GatewayStateStore)
    store_contract(sqlite_store)


def test_sql_store_refuses_out_of_range_weight(sqlite_store: SqlStateStore) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        sqlite_store.put_server(ServerSpec("shop", "x", "127.0.0.1", 1, 300), AuditEvent("a", "b"))
    assert sqlite_store.list_servers() == [] and sqlite_store.audit_events() == []

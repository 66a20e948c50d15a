"""The desired-state store contract on the real PostgreSQL test cluster."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from selfheal.gateway.state import AuditEvent, ServerSpec, SqlStateStore
from tests.unit.gateway.test_gateway_state import store_contract


@pytest.mark.postgres
def test_postgres_store_contract_and_constraints(pg_url: str) -> None:
    store = SqlStateStore(pg_url)
    try:
        store.create_tables()
        store_contract(store)
        with pytest.raises(sa.exc.IntegrityError):
            store.put_server(ServerSpec("shop", "x", "127.0.0.1", 1, 257), AuditEvent("a", "b"))
        with pytest.raises(sa.exc.IntegrityError):
            store.put_server(ServerSpec("shop", "x", "127.0.0.1", 1, 1, "asleep"), AuditEvent("a", "b"))  # type: ignore[arg-type]
        assert store.get_server("shop", "x") is None
        assert store.audit_events(1)[0].at.tzinfo is not None
    finally:
        store.dispose()

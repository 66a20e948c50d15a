"""The gateway as the rest of selfheal sees it: rules, servers and reconcile in one object."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from selfheal.catalog import Catalog
from selfheal.gateway.config import GatewayPaths, GatewaySettings
from selfheal.gateway.runtime import RuntimeClient
from selfheal.gateway.servers import ServerPool, ServersReconcile
from selfheal.gateway.state import AuditEvent, GatewayStateStore
from selfheal.gateway.virtual_patch import RulesReconcile, VirtualPatcher


@dataclass
class ReconcileReport:
    rules: RulesReconcile
    servers: ServersReconcile
    seconds: float


class Gateway:
    """One HAProxy instance reconciled to one desired-state store."""

    def __init__(
        self,
        paths: GatewayPaths,
        store: GatewayStateStore,
        services: Iterable[str],
        audit_hook: Callable[[AuditEvent], None] | None = None,
        runtime: RuntimeClient | None = None,
        check_inter_ms: Mapping[str, int] | None = None,
    ) -> None:
        self.paths = paths
        self.store = store
        self.services = tuple(services)
        self.runtime = runtime or RuntimeClient(paths.admin_socket)
        self.patches = VirtualPatcher(self.runtime, store, paths, self.services, audit_hook)
        self.servers = ServerPool(self.runtime, store, self.services, audit_hook, check_inter_ms=check_inter_ms)

    @classmethod
    def from_settings(
        cls,
        settings: GatewaySettings,
        catalog: Catalog,
        store: GatewayStateStore,
        audit_hook: Callable[[AuditEvent], None] | None = None,
    ) -> Gateway:
        return cls(
            GatewayPaths(settings.run_dir), store, catalog.names(), audit_hook,
            check_inter_ms={n: settings.for_service(n).check_interval_ms for n in catalog.names()},
        )

    def reconcile(self) -> ReconcileReport:
        """Bring servers, weights and virtual patches back to the desired state (after a restart)."""
        t0 = time.perf_counter()
        servers = self.servers.reconcile()
        rules = self.patches.reconcile()
        return ReconcileReport(rules=rules, servers=servers, seconds=time.perf_counter() - t0)

    def close(self) -> None:
        self.runtime.close()

"""Backend servers at run time: add, weight, drain, remove, with the desired state kept in the store.

Every change is validated first (unknown service or server, weight outside
0..256, address not an IP), then committed with its audit event, then sent to
HAProxy. When HAProxy refuses it, the desired state is put back as it was, so
the store never claims something the gateway rejected.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from selfheal.gateway.runtime import (
    GatewayUnavailable,
    RuntimeAPIError,
    RuntimeClient,
    RuntimeUnavailable,
    check_name,
    check_weight,
)
from selfheal.gateway.state import SERVER_STATES, AuditEvent, GatewayStateStore, ServerSpec


class ServerError(ValueError):
    """A server change was refused before or by HAProxy; live traffic is unchanged."""


@dataclass
class ServersReconcile:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0


class ServerPool:
    def __init__(
        self,
        runtime: RuntimeClient,
        store: GatewayStateStore,
        services: Iterable[str],
        audit_hook: Callable[[AuditEvent], None] | None = None,
        actor: str = "selfheal",
        check_inter_ms: Mapping[str, int] | None = None,
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.services = tuple(services)
        self.audit_hook = audit_hook
        self.actor = actor
        # Dynamic servers do not inherit `default-server`: the interval is passed per server.
        self.check_inter_ms = dict(check_inter_ms or {})

    # ------------------------------------------------------------- validation
    def _check(self, spec: ServerSpec) -> None:
        if spec.service not in self.services:
            raise ServerError(f"unknown service {spec.service!r}; the gateway has: {sorted(self.services)}")
        try:
            check_name("server", spec.name)
            check_weight(spec.weight)
            ipaddress.ip_address(spec.address)
        except ValueError as e:
            raise ServerError(f"server {spec.service}/{spec.name}: {e}") from e
        if not 1 <= spec.port <= 65535:
            raise ServerError(f"server {spec.service}/{spec.name}: port must be 1..65535, got {spec.port}")
        if spec.state not in SERVER_STATES:
            raise ServerError(f"server {spec.service}/{spec.name}: state must be one of {SERVER_STATES}")

    def _get(self, service: str, name: str) -> ServerSpec:
        if service not in self.services:
            raise ServerError(f"unknown service {service!r}; the gateway has: {sorted(self.services)}")
        spec = self.store.get_server(service, name)
        if spec is None:
            raise ServerError(f"unknown server {service}/{name}")
        return spec

    def _event(self, action: str, spec: ServerSpec, **extra: object) -> AuditEvent:
        return AuditEvent(
            action=action, subject=f"{spec.service}/{spec.name}", detail={**spec.to_dict(), **extra},
            actor=self.actor,
        )

    def _commit(self, new: ServerSpec, old: ServerSpec | None, action: str, live: Callable[[], None]) -> None:
        ev = self._event(action, new, previous=old.to_dict() if old else None)
        self.store.put_server(new, ev)
        try:
            live()
        except RuntimeUnavailable as e:
            self._emit(ev)
            raise GatewayUnavailable(f"server {new.service}/{new.name} stored; gateway unreachable") from e
        except RuntimeAPIError as e:
            undo = self._event(f"{action}.refused", new, error=e.message)
            if old is None:
                self.store.delete_server(new.service, new.name, undo)
            else:
                self.store.put_server(old, undo)
            self._emit(undo)
            raise ServerError(f"server {new.service}/{new.name}: haproxy refused: {e.message}") from e
        self._emit(ev)

    def _emit(self, ev: AuditEvent) -> None:
        if self.audit_hook is not None:
            self.audit_hook(ev)

    # --------------------------------------------------------------- changes
    def _add_live(self, spec: ServerSpec) -> None:
        self.runtime.add_server(
            spec.service, spec.name, spec.address, spec.port, weight=spec.weight, check=spec.check,
            check_inter_ms=self.check_inter_ms.get(spec.service),
        )
        self.runtime.set_state(spec.service, spec.name, spec.state)

    def add(self, spec: ServerSpec, wait_healthy: float | None = None) -> None:
        """Register a server.

        HAProxy 2.6 marks a server UP the moment it leaves maintenance, before any
        check. With ``wait_healthy`` (seconds) the server is added in maintenance,
        where checks still run, and only set ready once a check passed; if none
        does in time it is removed again and ServerError is raised: live traffic
        never saw it.
        """
        self._check(spec)
        old = self.store.get_server(spec.service, spec.name)
        if old is not None:
            if old == spec:
                return
            raise ServerError(f"server {spec.service}/{spec.name} already exists; remove it first")
        if wait_healthy is None or not spec.check or spec.state != "ready":
            self._commit(spec, None, "gateway.server.add", lambda: self._add_live(spec))
            return
        staged = replace(spec, state="maint")
        self._commit(staged, None, "gateway.server.add", lambda: self._add_live(staged))
        deadline = time.monotonic() + wait_healthy
        status = ""
        while time.monotonic() < deadline:
            status = self.runtime.check_status(spec.service, spec.name)
            if status in ("L7OK", "L6OK", "L4OK"):
                self.set_state(spec.service, spec.name, "ready")
                return
            time.sleep(0.05)
        self.remove(spec.service, spec.name, reason=f"never healthy in {wait_healthy}s, last check {status!r}")
        raise ServerError(
            f"server {spec.service}/{spec.name} never became healthy within {wait_healthy}s "
            f"(last check: {status or 'none'}); removed, traffic unchanged"
        )

    def set_weight(self, service: str, name: str, weight: int) -> None:
        old = self._get(service, name)
        new = replace(old, weight=weight)
        self._check(new)
        self._commit(new, old, "gateway.server.weight", lambda: self.runtime.set_weight(service, name, weight))

    def set_weights(self, service: str, weights: dict[str, int]) -> None:
        """Several weights of one backend (a canary step); all validated before any is sent."""
        olds = {n: self._get(service, n) for n in weights}
        for n, w in weights.items():
            self._check(replace(olds[n], weight=w))
        for n, w in weights.items():
            self.set_weight(service, n, w)

    def set_state(self, service: str, name: str, state: str) -> None:
        old = self._get(service, name)
        if state not in SERVER_STATES:
            raise ServerError(f"server {service}/{name}: state must be one of {SERVER_STATES}, got {state!r}")
        new = replace(old, state=state)  # type: ignore[arg-type]
        self._commit(new, old, "gateway.server.state", lambda: self.runtime.set_state(service, name, state))

    def remove(self, service: str, name: str, *, reason: str | None = None) -> bool:
        """Delete a server (maintenance, sessions cut, then ``del server``). False when unknown."""
        if service not in self.services:
            raise ServerError(f"unknown service {service!r}; the gateway has: {sorted(self.services)}")
        old = self.store.get_server(service, name)
        if old is None:
            return False
        ev = self._event("gateway.server.remove", old, reason=reason)
        self.store.delete_server(service, name, ev)
        try:
            self.runtime.del_server(service, name)
        except RuntimeUnavailable as e:
            self._emit(ev)
            raise GatewayUnavailable(f"server {service}/{name} removed from desired state; gateway unreachable") from e
        except RuntimeAPIError as e:
            if "no such server" not in e.message.lower():
                undo = self._event("gateway.server.remove.refused", old, error=e.message)
                self.store.put_server(old, undo)
                self._emit(undo)
                raise ServerError(f"server {service}/{name}: haproxy refused removal: {e.message}") from e
        self._emit(ev)
        return True

    # ------------------------------------------------------------- reconcile
    def reconcile(self) -> ServersReconcile:
        """Make live servers of every backend equal the desired ones (add, update, delete)."""
        report = ServersReconcile()
        for svc in self.services:
            desired = {s.name: s for s in self.store.list_servers(svc)}
            live = {s.name: s for s in self.runtime.servers(svc)}
            for name in live:
                if name not in desired:
                    self.runtime.del_server(svc, name)
                    report.removed += 1
            for name, spec in desired.items():
                ls = live.get(name)
                if ls is None:
                    self._add_live(spec)
                    report.added += 1
                    continue
                changed = False
                if (ls.address, ls.port) != (spec.address, spec.port):
                    self.runtime.set_state(svc, name, "maint")
                    self.runtime.command(f"set server {svc}/{name} addr {spec.address} port {spec.port}")
                    changed = True
                if ls.weight != spec.weight:
                    self.runtime.set_weight(svc, name, spec.weight)
                    changed = True
                if changed or ls.state != spec.state:
                    self.runtime.set_state(svc, name, spec.state)
                    changed = True
                report.updated += changed
                report.unchanged += not changed
        return report

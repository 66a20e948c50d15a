"""Kit for the remediation integration tests: a real HAProxy (our own process, loopback ports,
private run dir) in front of a real HTTP backend, its desired state and audit in a migrated
triage database, which is what the ingest task's inline mitigation talks to. Services: ``shop``
(mode mitigate), ``vault`` (mitigate, tier critical: policy asks for approval), ``admin`` (observe)."""

from __future__ import annotations

import http.client
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from selfheal.catalog import Catalog, DeployTarget, DockerTarget, Service
from selfheal.gateway.config import GatewayPaths, GatewaySettings, write_config
from selfheal.gateway.gateway import Gateway
from selfheal.gateway.process import HAProxyProcess
from selfheal.gateway.state import ServerSpec
from selfheal.runtime import open_gateway
from tests.integration.gateway.gateway_kit import EchoBackend, free_port


def make_catalog() -> Catalog:
    def svc(name: str, mode: str, tier: str = "medium") -> Service:
        return Service(
            name=name, base_url=f"http://{name}.localhost", owner="team@example.com", repository="/srv/repo",
            mode=mode, tier=tier,  # type: ignore[arg-type]
            deploy=DeployTarget(kind="docker", docker=DockerTarget(image=f"{name}:1", health_path="/health")),
        )

    return Catalog(
        services=(svc("shop", "mitigate"), svc("vault", "mitigate", "critical"), svc("admin", "observe"))
    )


@dataclass
class Stack:
    engine: sa.Engine
    catalog: Catalog
    settings: GatewaySettings
    paths: GatewayPaths
    haproxy: HAProxyProcess
    backend: EchoBackend
    gw: Gateway

    @property
    def settings_json(self) -> str:
        return self.settings.model_dump_json()

    def status(self, service: str, target: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.settings.http_port, timeout=10)
        try:
            conn.request("GET", target, headers={"Host": f"{service}.localhost"})
            r = conn.getresponse()
            r.read()
            return r.status
        finally:
            conn.close()

    def live_patterns(self, service: str, action: str = "block_injection") -> list[str]:
        return [e.pattern for e in self.gw.runtime.acl_entries(str(self.paths.acl(service, action)))]

    def rows(self, sql: str, **params: object) -> list[sa.Row]:
        with self.engine.connect() as c:
            return list(c.execute(sa.text(sql), params))


def start_stack(engine: sa.Engine) -> Stack:
    run_dir = Path(tempfile.mkdtemp(prefix="shmit-", dir="/tmp"))  # short: Unix socket paths
    catalog = make_catalog()
    settings = GatewaySettings(run_dir=run_dir, http_port=free_port(), stats_port=free_port(), nbthread=1)
    paths = write_config(catalog, settings)
    haproxy = HAProxyProcess(paths).start()
    backend = EchoBackend("v1")
    gw = open_gateway(engine, catalog, settings)
    for name in catalog.names():
        gw.servers.add(ServerSpec(name, "v1", "127.0.0.1", backend.port))
    return Stack(engine, catalog, settings, paths, haproxy, backend, gw)


def stop_stack(s: Stack) -> None:
    s.gw.close()
    s.haproxy.stop()
    s.backend.close()
    shutil.rmtree(s.settings.run_dir, ignore_errors=True)

"""Helpers for the gateway integration tests: real HAProxy, real HTTP backends, loopback only.

Each gateway gets its own private temp dir (short path: Unix socket names are
limited to 108 bytes), free ports, a log collector bound before HAProxy
starts, and is stopped by the PID we started.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from selfheal.catalog import Catalog, DeployTarget, DockerTarget, Service
from selfheal.gateway.config import GatewayPaths, GatewaySettings, ServiceGateway, write_config
from selfheal.gateway.gateway import Gateway
from selfheal.gateway.logs import LogCollector
from selfheal.gateway.process import HAProxyProcess
from selfheal.gateway.state import GatewayStateStore

SERVICES = ("shop", "admin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # HAProxy's health checks close with a reset; that is not a test failure.
        pass


class EchoBackend:
    """A tiny real HTTP service: echoes method, path, params and its own name as JSON."""

    def __init__(self, name: str, status: int = 200, delay: float = 0.0, healthy: bool = True) -> None:
        self.name = name
        self.healthy = healthy
        self.status = status
        self.delay = delay
        self.hits = 0
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self) -> None:
                u = urlsplit(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n).decode() if n else ""
                if u.path == "/health":
                    code, payload = (200, {"ok": True}) if backend.healthy else (503, {"ok": False})
                else:
                    backend.hits += 1
                    if backend.delay:
                        time.sleep(backend.delay)
                    code = backend.status
                    payload = {
                        "server": backend.name, "method": self.command, "path": u.path,
                        "params": dict(parse_qsl(u.query)), "body": body,
                    }
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Powered-By", "echo")
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_HEAD = _reply

            def log_message(self, *a: object) -> None:
                pass

        self.httpd = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class GatewayEnv:
    run_dir: Path
    paths: GatewayPaths
    settings: GatewaySettings
    catalog: Catalog
    haproxy: HAProxyProcess
    logs: LogCollector
    store: GatewayStateStore
    gw: Gateway
    _conns: dict[str, http.client.HTTPConnection] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.settings.http_port

    def request(
        self, service: str, target: str, method: str = "GET", headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        """One request through the gateway (new connection each time: simplest, no stale sockets)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, target, body=body, headers={"Host": f"{service}.localhost", **(headers or {})})
            r = conn.getresponse()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def wait_up(self, service: str, server: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(s.name == server and s.up for s in self.gw.runtime.servers(service)):
                return
            time.sleep(0.02)
        raise AssertionError(f"{service}/{server} not UP after {timeout}s: {self.gw.runtime.servers(service)}")

    def restart(self, kill: bool = True) -> None:
        """Crash (SIGKILL) or stop the gateway and start it again with the same files."""
        if kill:
            self.haproxy.kill()
        else:
            self.haproxy.stop()
        self.haproxy.start()


def make_catalog() -> Catalog:
    return Catalog(
        services=tuple(
            Service(
                name=n, base_url=f"http://{n}.localhost", owner="team", repository="/srv/repo",
                deploy=DeployTarget(kind="docker", docker=DockerTarget(image=f"{n}:1", health_path="/health")),
            )
            for n in SERVICES
        )
    )


def start_gateway(store: GatewayStateStore, **settings_kw: object) -> GatewayEnv:
    run_dir = Path(tempfile.mkdtemp(prefix="shgw-", dir="/tmp"))
    settings = GatewaySettings(
        run_dir=run_dir, http_port=free_port(), stats_port=free_port(), nbthread=1,
        services={"shop": ServiceGateway(check_interval_ms=200)}, **settings_kw,  # type: ignore[arg-type]
    )
    catalog = make_catalog()
    paths = write_config(catalog, settings)
    logs = LogCollector(paths.log_socket).start()
    proc = HAProxyProcess(paths).start()
    gw = Gateway.from_settings(settings, catalog, store)
    return GatewayEnv(run_dir, paths, settings, catalog, proc, logs, store, gw)


def stop_gateway(env: GatewayEnv) -> None:
    env.gw.close()
    env.haproxy.stop()
    env.logs.stop()
    shutil.rmtree(env.run_dir, ignore_errors=True)

"""Virtual patch latency: from the call to the first blocked attack at the real HAProxy.

Each application: derive the rule from a finding, commit it as desired state
with its audit row (Postgres when SELFHEAL_TEST_DATABASE_URL is set, in a
throwaway database of that cluster; else a SQLite file), apply it through the
runtime API, then send the attack through the gateway until it gets 403. The
clock stops at that 403. Outside the clock: a legitimate request to the same
path must still get 200, then the rule is removed. A bare runtime baseline
(`add acl` + blocked request, no derive/store) is measured the same way.

Prints one JSON object: applications, p50_ms, p99_ms (+ breakdown).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

if __name__ == "__main__":  # allow `python bench/virtual_patch.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from selfheal.catalog import Catalog, Service
from selfheal.findings.model import Finding, Location
from selfheal.gateway.config import GatewaySettings, write_config
from selfheal.gateway.gateway import Gateway
from selfheal.gateway.process import HAProxyProcess
from selfheal.gateway.state import ServerSpec, SqlStateStore
from selfheal.gateway.virtual_patch import derive

APPLICATIONS = int(os.environ.get("SELFHEAL_BENCH_VP_APPLICATIONS", "1000"))
WARMUP = 20
ATTACK_VALUE = quote("' OR 1=1--")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@contextmanager
def _store() -> Iterator[tuple[SqlStateStore, str]]:
    url = os.environ.get("SELFHEAL_TEST_DATABASE_URL")
    if url:
        import sqlalchemy as sa

        name = f"bench_vp_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        store = SqlStateStore(url.rpartition("/")[0] + "/" + name)
        try:
            store.create_tables()
            yield store, "postgresql"
        finally:
            store.dispose()
            with admin.connect() as c:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    else:
        d = tempfile.mkdtemp(prefix="shvp-db-")
        store = SqlStateStore(f"sqlite:///{d}/gateway.db")
        try:
            store.create_tables()
            yield store, "sqlite"
        finally:
            store.dispose()
            shutil.rmtree(d, ignore_errors=True)


class _Client:
    """Kept-alive HTTP connection to the gateway (HAProxy keeps it open after a deny)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

    def status(self, target: str) -> int:
        for attempt in (0, 1):
            try:
                self.conn.request("GET", target, headers={"Host": "shop.localhost"})
                r = self.conn.getresponse()
                r.read()
                return r.status
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def _finding(i: int) -> Finding:
    return Finding(
        scanner="zap", rule_id="40018", title="SQL Injection", severity="high", kind="web", cwe=89,
        location=Location(method="GET", path=f"/bench/{i}/products", param="category"), service="shop",
        fingerprint=f"bench-{i}",
    )


def main() -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="shvp-", dir="/tmp"))
    httpd = _QuietServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    catalog = Catalog(services=(Service(name="shop", base_url="http://shop.localhost", owner="b", repository="/r"),))
    settings = GatewaySettings(run_dir=run_dir, http_port=_free_port(), stats_port=_free_port(), nbthread=1)
    paths = write_config(catalog, settings)
    # No log collector in this process: it runs elsewhere in production, and here its thread
    # would only compete for the GIL with the measured path (HAProxy drops unsent logs).
    proc = HAProxyProcess(paths).start()
    try:
        with _store() as (store, store_kind):
            gw = Gateway(paths, store, catalog.names())
            gw.servers.add(ServerSpec("shop", "s1", "127.0.0.1", httpd.server_address[1]))
            client = _Client(settings.http_port)
            total: list[float] = []
            parts: dict[str, list[float]] = {"derive": [], "commit_and_apply": [], "blocked_request": []}
            legit_ok = 0
            for i in range(WARMUP + APPLICATIONS):
                attack = f"/bench/{i}/products?category={ATTACK_VALUE}"
                t0 = time.perf_counter()
                rule = derive(_finding(i))
                t1 = time.perf_counter()
                gw.patches.apply(rule)  # desired state + audit row in one transaction, then `add acl`
                t2 = time.perf_counter()
                while client.status(attack) != 403:
                    pass
                t3 = time.perf_counter()
                if client.status(f"/bench/{i}/products?category=books") == 200:
                    legit_ok += 1
                gw.patches.remove(rule.id)
                if i >= WARMUP:
                    total.append((t3 - t0) * 1e3)
                    parts["derive"].append((t1 - t0) * 1e3)
                    parts["commit_and_apply"].append((t2 - t1) * 1e3)
                    parts["blocked_request"].append((t3 - t2) * 1e3)
            if legit_ok != WARMUP + APPLICATIONS:
                raise AssertionError(f"legitimate requests failed: {WARMUP + APPLICATIONS - legit_ok}")

            # Baseline: the bare runtime update plus the blocked request, nothing of ours around it.
            acl = str(paths.acl("shop", "block_injection"))
            bare: list[float] = []
            for i in range(WARMUP + APPLICATIONS):
                pattern = derive(_finding(100_000 + i)).pattern
                attack = f"/bench/{100_000 + i}/products?category={ATTACK_VALUE}"
                t0 = time.perf_counter()
                gw.runtime.add_acl(acl, pattern)
                while client.status(attack) != 403:
                    pass
                t1 = time.perf_counter()
                gw.runtime.del_acl(acl, pattern)
                if i >= WARMUP:
                    bare.append((t1 - t0) * 1e3)
            version = gw.runtime.version()
            audit_rows = len(store.audit_events(10 * APPLICATIONS))
            gw.close()
    finally:
        proc.stop()
        httpd.shutdown()
        httpd.server_close()
        shutil.rmtree(run_dir, ignore_errors=True)

    return {
        "applications": APPLICATIONS,
        "p50_ms": round(statistics.median(total), 3),
        "p99_ms": round(_pct(total, 0.99), 3),
        "max_ms": round(max(total), 3),
        "store": store_kind,
        "breakdown_p50_ms": {k: round(statistics.median(v), 3) for k, v in parts.items()},
        "breakdown_p99_ms": {k: round(_pct(v, 0.99), 3) for k, v in parts.items()},
        "bare_runtime_p50_ms": round(statistics.median(bare), 3),
        "bare_runtime_p99_ms": round(_pct(bare, 0.99), 3),
        "legitimate_requests_ok": legit_ok,
        "audit_rows": audit_rows,
        "haproxy": version,
    }


if __name__ == "__main__":
    print(json.dumps(main()))

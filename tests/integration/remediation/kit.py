"""Helpers for the remediation tests: a real HAProxy gateway on the triage database, the demo target
live behind it on a private Docker network, traffic through it, and what the tests look at.

Used by tests/integration/remediation (the core, no Airflow) and tests/dags/test_selfheal_remediate.py
(the DAGs under dag.test()). Everything a test starts carries its own run label / PID and is
removed by it: the shared Docker engine and Postgres cluster are never touched beyond that.

The gateway is started the way `make up` starts it (rendered config, ``haproxy -c``, HAProxy as our
child) and nobody listens on its log socket: the rollout task binds it for the rollout's duration,
as in production.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from selfheal.catalog import Catalog, load_catalog
from selfheal.gateway.config import GatewayPaths, GatewaySettings, ServiceGateway, write_config
from selfheal.gateway.process import HAProxyProcess
from selfheal.rollout.load import LoadClient

SERVICE = "demo-target"
HOST = f"{SERVICE}.localhost"
RUN_LABEL = "selfheal.test-run"
SQLI_PROBE = "/api/items?category=books%27%20OR%20%271%27%3D%271"
SQLI_ERROR_PROBE = "/api/items?category=books'"
XSS_PROBE = "/api/items/1/embed?x%20onmouseover%3Dalert(1)%20y=1"
# What the load hits: the health check, a DB-backed route and a static one (a latency regression
# on any of them must show in the canary's samples).
LOAD_PATHS = ("/health", "/api/categories", "/openapi.json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_catalog(path: Path, repo: Path, *, tier: str = "medium", mode: str = "heal",
                  steps: Sequence[int] = (50, 100), strategy: str = "canary") -> Path:
    """The demo target's catalog entry (as include/services.yaml has it) pointing at ``repo``."""
    doc = {"services": [{
        "name": SERVICE,
        "base_url": f"http://{HOST}",
        "scanners": ["wapiti"],
        "tier": tier,
        "owner": "platform-team@example.com",
        "repository": str(repo),
        "dockerfile": "Dockerfile",
        "test_command": "pytest",
        "deploy": {"kind": "docker", "docker": {"image": "selfheal/demo-target", "port": 8000,
                                                 "health_path": "/health"}},
        "rollout": {"strategy": strategy, "steps": list(steps)},
        "mode": mode,
        "traffic_rps": 50,
        "internet_facing": True,
    }]}
    path.write_text(yaml.safe_dump(doc))
    return path


@dataclass
class TestGateway:
    run_dir: Path
    settings: GatewaySettings
    paths: GatewayPaths
    haproxy: HAProxyProcess

    @property
    def settings_json(self) -> str:
        return self.settings.model_dump_json()

    @property
    def port(self) -> int:
        return self.settings.http_port

    def get(self, target: str, host: str = HOST, timeout: float = 10.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", target, headers={"Host": host})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def load(self, **kw: Any) -> LoadClient:
        return LoadClient("127.0.0.1", self.port, host_header=HOST,
                          **{"paths": LOAD_PATHS, "concurrency": 3, "interval_s": 0.03, **kw})


@contextlib.contextmanager
def running_gateway(catalog: Catalog) -> Iterator[TestGateway]:
    """HAProxy for ``catalog`` on free loopback ports, stopped by its PID afterwards."""
    run_dir = Path(tempfile.mkdtemp(prefix="shrm-", dir="/tmp"))  # short: Unix socket paths max 108 bytes
    settings = GatewaySettings(
        run_dir=run_dir, http_port=free_port(), stats_port=free_port(), nbthread=2,
        services={s.name: ServiceGateway(check_interval_ms=1000) for s in catalog.services},
    )
    hap = None
    try:
        paths = write_config(catalog, settings)
        hap = HAProxyProcess(paths).start()
        yield TestGateway(run_dir, settings, paths, hap)
    finally:
        if hap is not None:
            hap.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def rollout_settings(run_id: str, **analysis: Any) -> dict[str, Any]:
    """The ``selfheal_rollout`` document for a test: its own network and label, short analysis windows.

    Thresholds: the default error rate; latency 3x p95 plus 100 ms slack, because on a 2-core machine
    shared with several other test sessions a good release's p95 moves by far more than the default
    10 % between windows (seen: a baseline p95 of 40 ms in one window, 104 ms in the next). A real
    regression, like the bad patch's two seconds per categories request, is far beyond it.
    """
    return {
        # Docker's health check counts from the container's start: 10 tries a second apart give the demo
        # time to start on a busy machine (3 at 0.5 s marked a good release unhealthy under load).
        "docker": {"network": f"shrm-{run_id}", "internal": True, "keep_old_s": 300.0,
                   "health_interval_s": 1.0, "health_retries": 10, "labels": {RUN_LABEL: run_id}},
        "analysis": {"poll_s": 0.25, "min_window_s": 3.0, "max_window_s": 40.0, "baseline_lookback_s": 6.0,
                     "thresholds": {"max_p95_ratio": 3.0, "latency_slack_ms": 100.0, "min_samples": 30},
                     **analysis},
        "lock_timeout_s": 120.0,
    }


def backend_for(engine: sa.Engine, catalog: Catalog, gw: TestGateway, settings: Mapping[str, Any],
                client: Any) -> Any:
    """A Docker backend like the tasks build (same settings, audited gateway on the triage DB)."""
    from selfheal.rollout.backends.docker import DockerBackend, DockerSettings
    from selfheal.runtime import open_gateway

    gateway = open_gateway(engine, catalog, gw.settings)
    return DockerBackend.from_catalog(client, gateway, catalog, settings=DockerSettings(**settings["docker"]))


def deploy_baseline(backend: Any, image: str, version: str = "v1.0.0") -> Any:
    """The live release before any patch: 100 % of the traffic, like `make up` leaves it."""
    backend.ensure_network()
    rel = backend.deploy(SERVICE, version=version, color="blue", image=image, patch_id=None)
    backend.wait_healthy(rel, 120)
    backend.set_traffic(SERVICE, {"blue": 100})
    return rel


def purge(client: Any, run_id: str, network: str) -> None:
    """Remove this test's containers, network and extra image tags (``retag``): nothing else."""
    for c in client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={run_id}"}):
        with contextlib.suppress(Exception):
            c.remove(force=True)
    for img in client.images.list(name="selfheal/demo-target"):
        for tag in img.tags:
            if tag.startswith(f"selfheal/demo-target:test-{run_id}-"):
                with contextlib.suppress(Exception):
                    client.images.remove(tag, noprune=True)
    for n in client.networks.list(names=[network]):
        if n.name == network:
            with contextlib.suppress(Exception):
                n.remove()


def baseline_image(client: Any, repo: Path, base_image: str) -> str:
    """The demo's image at the repository's HEAD, as `make up` and the sandbox's baseline build it."""
    from selfheal.sandbox.build import build_image, resolve_commit

    commit = resolve_commit(repo, "HEAD")
    tag = f"selfheal/demo-target:commit-{commit[:12]}"
    build_image(client, repo, commit, tag, dockerfile="Dockerfile", base_image=base_image, reuse=True,
                labels={"selfheal.service": SERVICE, "selfheal.role": "baseline"})
    return tag


def wait_until(pred: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Env:
    """Everything one test's loop runs against."""

    engine: sa.Engine
    url: str
    catalog_path: Path
    gateway: TestGateway
    run_id: str
    settings: dict[str, Any]
    client: Any
    backend: Any
    baseline: Any
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def catalog(self) -> Catalog:
        return load_catalog(self.catalog_path)

    def weights(self) -> dict[str, int]:
        return {k: v for k, v in self.backend.current_traffic(SERVICE).items() if v}

    def live_image(self) -> str:
        """Id of the image the release taking all the traffic runs (tags can move; ids cannot)."""
        w = self.weights()
        assert len(w) == 1, f"traffic is split: {w}"
        color = next(iter(w))
        ref = next(r.ref for r in self.backend.releases(SERVICE) if r.color == color)
        return self.client.containers.get(ref).attrs["Image"]

    @property
    def baseline_id(self) -> str:
        return self.client.containers.get(self.baseline.ref).attrs["Image"]

    def containers(self) -> list[Any]:
        return self.client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={self.run_id}"})

    def rows(self, table: sa.Table, *where: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(sa.select(table).where(*where))]

    def audit(self, subject: str | None = None, action: str | None = None) -> list[Any]:
        from selfheal.audit import ledger

        return ledger.entries(self.engine, subject=subject, action=action, limit=10_000)


@contextlib.contextmanager
def loop_env(url: str, catalog_path: Path, client: Any, image: str, **analysis: Any) -> Iterator[Env]:
    """Gateway + baseline release for one test (torn down by run label and PID)."""
    run_id = uuid.uuid4().hex[:10]
    settings = rollout_settings(run_id, **analysis)
    catalog = load_catalog(catalog_path)
    engine = sa.create_engine(url)
    try:
        with running_gateway(catalog) as gw:
            backend = backend_for(engine, catalog, gw, settings, client)
            try:
                rel = deploy_baseline(backend, image)
                yield Env(engine, url, catalog_path, gw, run_id, settings, client, backend, rel)
            finally:
                backend.gateway.close()
                purge(client, run_id, settings["docker"]["network"])
    finally:
        engine.dispose()


def ingest(engine: sa.Engine, findings: Sequence[Any]) -> dict[str, int]:
    """Findings into the triage DB as a scan would (then prioritized); {fingerprint: id}."""
    import dataclasses

    from selfheal.findings.fingerprint import fingerprint
    from selfheal.triage import store
    from selfheal.triage.prioritize import prioritize
    from selfheal.triage.schema import findings as F

    found = []
    for f in findings:
        f = f if f.service else dataclasses.replace(f, service=SERVICE)
        found.append(f if f.fingerprint else dataclasses.replace(f, fingerprint=fingerprint(f, f.service)))
    res = store.ingest_findings(engine, found, source=f"test-{uuid.uuid4().hex[:6]}", service=SERVICE)
    assert res.quarantined == 0, res
    prioritize(engine, None)
    with engine.connect() as c:
        return {r.fingerprint: r.id for r in c.execute(sa.select(F.c.fingerprint, F.c.id))}


def statuses(engine: sa.Engine) -> dict[int, str]:
    from selfheal.triage.schema import findings as F

    with engine.connect() as c:
        return dict(c.execute(sa.select(F.c.id, F.c.status)).all())


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)[:6000]


def verified_patch(env: Env, finding_ids: Sequence[int], image: str, *, base_commit: str,
                   decision: str = "auto", recipe: str = "dependency_upgrade", name: str = "") -> str:
    """A patch as the loop leaves it after a passing sandbox and an automatic policy decision,
    deploying ``image`` (the tests use a retag of the live image: a release that behaves like the
    baseline). Returns its id."""
    import hashlib

    from selfheal.patches.model import FindingRef, PatchPlan
    from selfheal.patches.state import PatchRecord
    from selfheal.remediation.store import PatchStore, StoredPatch
    from selfheal.triage.schema import findings as F

    with env.engine.connect() as c:
        rows = c.execute(sa.select(F).where(F.c.id.in_(list(finding_ids)))).all()
    refs = tuple(FindingRef(r.fingerprint, r.rule_id, r.title, r.severity, r.kind, r.scanner, r.id) for r in rows)
    pid = "p" + hashlib.sha256(f"{name}{image}{uuid.uuid4()}".encode()).hexdigest()[:15]
    plan = PatchPlan(id=pid, service=SERVICE, recipe=recipe, findings=refs, title=f"test patch {name}",
                     base_commit=base_commit, delivery="image")
    rec = PatchRecord.new(plan)
    rec.start_verification()
    img = env.client.images.get(image)
    rec.record_sandbox(True, {"image": image, "image_id": img.id, "checks": [], "reason": ""},
                       image=img.id, image_tag=image)
    sp = StoredPatch(rec, list(finding_ids), policy={"final": {"decision": decision, "dry_run": False,
                                                              "reasons": ["test"], "effective_mode": "heal"}})
    PatchStore(env.engine).add(sp)
    return pid


def retag(client: Any, image: str, tag: str) -> str:
    repo, _, t = tag.rpartition(":")
    client.images.get(image).tag(repo, t)
    return tag

"""The local demo stack: HAProxy gateway, the demo target behind it, and an AWS stand-in.

`selfheal stack up` (run by `make up`) brings up, idempotently:

1. the demo service's own git repository (``selfheal.demo.init_repo``, what
   patches are committed to) and a run catalog derived from the services
   catalog in which the demo target's ``base_url`` is the gateway's front door
   (scans must hit what users hit, i.e. what gets patched) and its
   ``repository`` that git repository;
2. the gateway settings document the tasks read ($SELFHEAL_GATEWAY_SETTINGS)
   and HAProxy itself (config rendered from the catalog and checked with
   ``haproxy -c``), then the gateway reconciled to the desired state in the
   triage database (servers whose container is gone are dropped first);
3. the demo target's current image, built offline from its repository's HEAD
   with the sandbox build machinery (tag ``<image>:commit-<sha12>``, the tag
   the sandbox reuses as its baseline), deployed with the Docker backend as
   the baseline release taking 100 % of the traffic;
4. moto in server mode on loopback as the AWS Inspector2 stand-in, seeded
   with the demo's cloud findings.

PIDs, the stack id and what was deployed are kept in
``$SELFHEAL_RUN_DIR/stack/state.json``; `selfheal stack down` stops exactly
those PIDs (checking each is still the process started) and removes the
containers on the stack's network and the network when the stack created it.
Nothing else is touched. This module never imports Airflow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
import yaml

from selfheal import aws_standin
from selfheal.catalog import DEFAULT_CATALOG, Catalog, Service, load_catalog
from selfheal.gateway.config import GatewayPaths, GatewaySettings, SecurityHeaders, ServiceGateway
from selfheal.paths import PROJECT_ROOT

DEMO_SERVICE = "demo-target"
STACK_LABEL = "selfheal.stack"
DEFAULT_MOTO_PORT = 18500
DEFAULT_NETWORK = "selfheal-rollout"  # DockerSettings' default: tasks that build a backend without options agree
ACTOR = "selfheal stack"
# Scanners that run on this machine: Wapiti for real, Inspector2 through the moto stand-in. ZAP and
# Greenbone need their daemons (docker-compose has ZAP); the run catalog leaves them out for the demo target.
LOCAL_SCANNERS = ("wapiti", "inspector")
# The demo host is small and shared (2 cores, other work on them). Request latencies are a few ms with
# ms-resolution logs, so the canary judge gets an absolute slack (a regression users would notice still
# fails it at once) and a longer window to collect its samples at the demo's modest traffic; a Python
# health probe can take seconds to start under load, so releases get more time to prove healthy.
DEMO_ANALYSIS = {"thresholds": {"max_p95_ratio": 1.5, "latency_slack_ms": 50.0}, "max_window_s": 120.0}
DEMO_DOCKER = {"health_check_timeout_s": 10.0, "health_retries": 6}
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; keep a margin for the socket names

Progress = Callable[[str, str, float], None]  # (step, detail, seconds)


class StackError(RuntimeError):
    """A stack step failed; the message names the step and what to do."""


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise StackError(f"${name}: expected a port number, got {raw!r}") from None
    if not 1 <= value <= 65535:
        raise StackError(f"${name}: {value} is not a port number")
    return value


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and listens; everything derives from the run directory and a few ports."""

    run_dir: Path
    database_url: str
    base_image: str = "selfheal/base:bookworm"
    catalog_source: Path = DEFAULT_CATALOG
    http_port: int = 18080
    stats_port: int = 18404
    moto_port: int = DEFAULT_MOTO_PORT
    network: str = DEFAULT_NETWORK
    service: str = DEMO_SERVICE

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackConfig:
        from selfheal.runtime import DEFAULT_HTTP_PORT, DEFAULT_STATS_PORT
        from selfheal.triage.db import database_url

        env = os.environ if env is None else env
        run_dir = Path(env.get("SELFHEAL_RUN_DIR") or PROJECT_ROOT / ".run").resolve()
        derived = run_dir / "stack" / "services.yaml"
        # $SELFHEAL_CATALOG may already name the run catalog this stack wrote (its env is exported
        # for Airflow): the source is then the project's catalog, never the derived copy.
        source = Path(env["SELFHEAL_CATALOG"]) if env.get("SELFHEAL_CATALOG") else DEFAULT_CATALOG
        if source.resolve() == derived:
            source = DEFAULT_CATALOG
        cfg = cls(
            run_dir=run_dir,
            database_url=env.get("SELFHEAL_DATABASE_URL") or database_url(),
            base_image=env.get("SELFHEAL_BASE_IMAGE") or "selfheal/base:bookworm",
            catalog_source=source,
            http_port=_env_int(env, "SELFHEAL_GATEWAY_PORT", DEFAULT_HTTP_PORT),
            stats_port=_env_int(env, "SELFHEAL_GATEWAY_STATS_PORT", DEFAULT_STATS_PORT),
            moto_port=_env_int(env, "SELFHEAL_MOTO_PORT", DEFAULT_MOTO_PORT),
            network=env.get("SELFHEAL_DOCKER_NETWORK") or DEFAULT_NETWORK,
        )
        if len({cfg.http_port, cfg.stats_port, cfg.moto_port}) != 3:
            raise StackError(f"gateway port {cfg.http_port}, stats port {cfg.stats_port} and moto port "
                             f"{cfg.moto_port} must differ")
        return cfg

    # ------------------------------------------------------------------ paths
    @property
    def stack_dir(self) -> Path:
        return self.run_dir / "stack"

    @property
    def state_file(self) -> Path:
        return self.stack_dir / "state.json"

    @property
    def settings_file(self) -> Path:
        return self.stack_dir / "gateway.json"

    @property
    def catalog_file(self) -> Path:
        return self.stack_dir / "services.yaml"

    @property
    def repo_dir(self) -> Path:
        return self.run_dir / "demo" / "target-api"

    @property
    def moto_log(self) -> Path:
        return self.stack_dir / "moto.log"

    @property
    def stack_id(self) -> str:
        """Stable per run directory: labels what this stack made, so `down` removes only that."""
        return hashlib.sha256(str(self.run_dir).encode()).hexdigest()[:10]

    @property
    def gateway_dir(self) -> Path:
        """HAProxy's private directory; under /tmp when the run directory is too deep for a Unix socket."""
        preferred = self.run_dir / "gateway"
        if len(str(preferred / "admin.sock")) <= _SOCKET_PATH_MAX:
            return preferred
        return Path("/tmp") / f"selfheal-gw-{self.stack_id}"  # noqa: S108 - owner-only (0700) directory

    @property
    def front_door(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def moto_url(self) -> str:
        return f"http://127.0.0.1:{self.moto_port}"

    def gateway_settings(self) -> GatewaySettings:
        # The demo target's own response headers pass through unchanged (the gateway would otherwise
        # add them and hide the service's missing-header findings): the loop fixes the service.
        return GatewaySettings(
            run_dir=self.gateway_dir,
            http_port=self.http_port,
            stats_port=self.stats_port,
            default_service=self.service,
            services={self.service: ServiceGateway(security_headers=SecurityHeaders(enabled=False))},
        )

    def docker_settings(self) -> dict[str, Any]:
        """DockerSettings fields shared by the stack and the pipeline's rollouts: one network, and every
        release container labelled with the stack id (what `down` removes)."""
        return {"network": self.network, "labels": {STACK_LABEL: self.stack_id}, **DEMO_DOCKER}

    def rollout_variable(self) -> str:
        """The `selfheal_rollout` Variable (selfheal.remediation.rollout.RolloutSettings) for this stack."""
        return json.dumps({"docker": self.docker_settings(), "analysis": DEMO_ANALYSIS})

    def env(self) -> dict[str, str]:
        """What Airflow (and any task or CLI) needs to find this stack."""
        return {
            "SELFHEAL_GATEWAY_SETTINGS": str(self.settings_file),
            "SELFHEAL_CATALOG": str(self.catalog_file),
            "SELFHEAL_DOCKER_NETWORK": self.network,
            "SELFHEAL_STACK_ID": self.stack_id,
            "AIRFLOW_CONN_AWS_DEFAULT": aws_standin.connection_json(self.moto_url),
            "AIRFLOW_VAR_SELFHEAL_ROLLOUT": self.rollout_variable(),
        }


# ---------------------------------------------------------------------------- state file


def load_state(cfg: StackConfig) -> dict[str, Any]:
    try:
        data = json.loads(cfg.state_file.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise StackError(f"{cfg.state_file}: unreadable stack state ({e}); remove it after checking "
                         "that nothing of the stack still runs") from None
    return data if isinstance(data, dict) else {}


def _save_state(cfg: StackConfig, state: Mapping[str, Any]) -> None:
    cfg.stack_dir.mkdir(parents=True, exist_ok=True)
    tmp = cfg.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True, default=str))
    os.replace(tmp, cfg.state_file)


# ---------------------------------------------------------------------------- catalog


def write_run_catalog(cfg: StackConfig) -> Catalog:
    """The catalog the running stack uses: the source catalog with the demo target behind the gateway.

    Relative repositories are made absolute (the copy lives elsewhere); the demo target's
    base_url/openapi_url point at the front door and its repository at the demo git repository.
    """
    src = cfg.catalog_source
    source_catalog = load_catalog(src)  # validates the source first: its errors name its own file
    raw = yaml.safe_load(src.read_text(encoding="utf-8"))
    entries = []
    for entry, svc in zip(raw["services"], source_catalog.services, strict=True):
        entry = {**entry, "repository": svc.repository}
        if svc.name == cfg.service:
            openapi_path = urlsplit(svc.openapi_url).path if svc.openapi_url else "/openapi.json"
            entry.update(base_url=cfg.front_door, openapi_url=f"{cfg.front_door}{openapi_path}",
                         repository=str(cfg.repo_dir),
                         scanners=[s for s in svc.scanners if s in LOCAL_SCANNERS])
        entries.append(entry)
    if cfg.service not in source_catalog.names():
        raise StackError(f"{src}: the catalog has no service {cfg.service!r} for the demo stack")
    cfg.stack_dir.mkdir(parents=True, exist_ok=True)
    header = (f"# Written by `selfheal stack up` from {src}; edit that file, not this one.\n"
              f"# {cfg.service} is reached through the gateway at {cfg.front_door}.\n")
    tmp = cfg.catalog_file.with_suffix(".tmp")
    tmp.write_text(header + yaml.safe_dump({"services": entries}, sort_keys=False))
    os.replace(tmp, cfg.catalog_file)
    return load_catalog(cfg.catalog_file)


# ---------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _step(progress: Progress | None, name: str, out: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Time one step; `detail` in the yielded dict is what the progress line says."""
    t0 = time.monotonic()
    info: dict[str, Any] = {"detail": ""}
    try:
        yield info
    except StackError:
        raise
    except Exception as e:
        raise StackError(f"stack up: {name}: {' '.join(str(e).split())[:400]}") from e
    seconds = time.monotonic() - t0
    out.setdefault("steps", {})[name] = round(seconds, 2)
    if progress:
        progress(name, str(info["detail"]), seconds)


def _engine(cfg: StackConfig) -> sa.Engine:
    from selfheal.triage.db import make_engine

    return make_engine(cfg.database_url)


def _docker() -> Any:
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as e:  # noqa: BLE001 - docker.errors.DockerException or a socket error
        raise StackError(
            f"docker engine not reachable ({e}); start it with `scripts/services.sh start docker`"
        ) from None
    return client


def _http_get(url: str, timeout: float = 5.0) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback http only
            resp.read()
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers or {})
    except (urllib.error.URLError, OSError):
        return 0, {}


def _git_describe(repo: Path) -> str:
    proc = subprocess.run(["git", "-C", str(repo), "describe", "--tags", "--always"],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() or "unknown"


# ---------------------------------------------------------------------------- HAProxy


def _start_haproxy(cfg: StackConfig, catalog: Catalog, state: dict[str, Any]) -> tuple[int, str]:
    """Render+check the config; keep a running HAProxy of ours when its config did not change."""
    from selfheal.gateway.config import write_config
    from selfheal.gateway.process import HAProxyProcess

    paths = GatewayPaths(cfg.gateway_dir)
    marker = str(paths.config)
    pid = (state.get("haproxy") or {}).get("pid")
    before = paths.config.read_text() if paths.config.is_file() else None
    write_config(catalog, cfg.gateway_settings())
    if aws_standin.pid_running(pid, marker):
        if paths.config.read_text() == before:
            return int(pid), "already running"
        aws_standin.stop_pid(pid, marker)
        how = "restarted (configuration changed)"
    else:
        how = "started"
    for port in (cfg.http_port, cfg.stats_port):
        if aws_standin.port_open(port):
            raise StackError(f"gateway: 127.0.0.1:{port} is already in use; set SELFHEAL_GATEWAY_PORT / "
                             "SELFHEAL_GATEWAY_STATS_PORT to free ports")
    proc = HAProxyProcess(paths).start()
    assert proc.pid is not None
    return proc.pid, how


def _stack_addresses(client: Any, cfg: StackConfig) -> set[str]:
    """IP addresses, on the stack's network, of the running release containers there."""
    from selfheal.rollout.backends.docker import LABEL_MANAGED, MANAGED_BY

    out = set()
    for c in client.containers.list(filters={"label": f"{LABEL_MANAGED}={MANAGED_BY}", "network": cfg.network}):
        net = (c.attrs.get("NetworkSettings", {}).get("Networks") or {}).get(cfg.network) or {}
        if net.get("IPAddress"):
            out.add(net["IPAddress"])
    return out


def _prune_stale_servers(gateway: Any, live: set[str], services: list[str]) -> list[str]:
    """Drop desired servers whose container is gone (after `down` or a crash): reconciling them would
    register dead addresses. Each removal is an audited gateway change."""
    dropped = []
    for svc in services:
        for spec in gateway.store.list_servers(svc):
            if spec.address not in live:
                gateway.servers.remove(svc, spec.name, reason="stack: its container no longer runs")
                dropped.append(f"{svc}/{spec.name}")
    return dropped


# ---------------------------------------------------------------------------- baseline release


@dataclass(frozen=True)
class Wanted:
    """The release the stack puts live when nothing serves the service."""

    image: str
    version: str
    patch_id: str | None = None
    color: str | None = None
    source: str = "HEAD"


def desired_release(engine: sa.Engine, client: Any, service: str) -> tuple[Wanted | None, str]:
    """The release the `deployments` table says takes the traffic (what the pipeline last promoted),
    when its image is still on the Docker host; (None, why) otherwise."""
    from selfheal.pipeline_state import deployments
    from selfheal.sandbox.build import existing_image

    q = (sa.select(deployments).where(deployments.c.service == service, deployments.c.weight > 0)
         .order_by(deployments.c.weight.desc()))
    with engine.connect() as c:
        rows = [r._mapping for r in c.execute(q)]
    if not rows:
        return None, "no recorded deployment"
    for r in rows:
        if existing_image(client, r["image"]) is not None:
            return Wanted(r["image"], r["version"], r["patch_id"], r["color"], "deployments"), ""
    return None, f"recorded release image {rows[0]['image']} is gone from the Docker host"


def record_deployments(engine: sa.Engine, backend: Any, service: str) -> None:
    """The live releases as the desired deployment state (the rows `up` reconciles to next time);
    the same rows the pipeline writes after a promotion."""
    from selfheal.pipeline_state import deployments

    weights = backend.current_traffic(service)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(deployments.delete().where(deployments.c.service == service))
        for r in backend.releases(service):
            conn.execute(deployments.insert().values(
                service=service, color=r.color, version=r.version[:64], image=r.image, patch_id=r.patch_id,
                ref=r.ref, endpoint=r.endpoint, weight=int(weights.get(r.color, 0)), updated_at=now))


def _deploy_baseline(svc: Service, backend: Any, wanted: Wanted, engine: sa.Engine) -> dict[str, Any]:
    """Put `wanted` live at 100 % unless some release already takes the service's traffic."""
    from selfheal.audit import ledger

    name = svc.name
    serving = {c: w for c, w in backend.current_traffic(name).items() if w > 0}
    if serving:
        releases = {r.color: r for r in backend.releases(name)}
        color = max(serving, key=lambda c: serving[c])
        rel = releases.get(color)
        return {"color": color, "version": rel.version if rel else "?", "image": rel.image if rel else "?",
                "weights": serving, "deployed": False}
    registered = {s.name for s in backend.gateway.store.list_servers(name)}
    for rel in backend.releases(name):  # a leftover of an interrupted `up`: never took traffic
        if rel.color not in registered:
            backend.client.containers.get(rel.ref).remove(force=True)
    free = [c for c in ("blue", "green") if c not in registered]
    color = wanted.color if wanted.color in free else free[0]
    rel = backend.deploy(name, version=wanted.version, color=color, image=wanted.image, patch_id=wanted.patch_id)
    backend.wait_healthy(rel, 180.0)
    backend.set_traffic(name, {color: 100})
    record_deployments(engine, backend, name)
    ledger.append(engine, actor=ACTOR, action="deploy.baseline", subject=f"{name}/{color}",
                  payload={"version": wanted.version, "image": wanted.image, "patch_id": wanted.patch_id,
                           "from": wanted.source, "container": rel.ref[:12]},
                  idempotency_key=f"stack-baseline:{name}:{rel.ref}")
    return {"color": color, "version": wanted.version, "image": wanted.image, "weights": {color: 100},
            "deployed": True, "from": wanted.source}


# ---------------------------------------------------------------------------- up / down / status


def up(cfg: StackConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Bring the stack up (idempotent: what already runs and is current is kept). Returns the state."""
    from selfheal import demo
    from selfheal.rollout.backends.docker import DockerBackend, DockerSettings
    from selfheal.runtime import open_gateway, write_gateway_settings
    from selfheal.sandbox.build import build_image, resolve_commit
    from selfheal.triage import migrate

    state = load_state(cfg)
    state.update(stack_id=cfg.stack_id, run_dir=str(cfg.run_dir), network=cfg.network, service=cfg.service)
    out: dict[str, Any] = {}

    with _step(progress, "triage db", out) as s:
        s["detail"] = f"schema {migrate.upgrade(cfg.database_url)}"
    with _step(progress, "demo repository", out) as s:
        demo.init_repo(cfg.repo_dir)
        commit = resolve_commit(cfg.repo_dir, "HEAD")
        version = _git_describe(cfg.repo_dir)
        s["detail"] = f"{cfg.repo_dir} at {version} ({commit[:12]})"
    with _step(progress, "catalog", out) as s:
        catalog = write_run_catalog(cfg)
        svc = catalog.get(cfg.service)
        if svc.deploy.kind != "docker" or svc.deploy.docker is None:
            raise StackError(f"{cfg.catalog_source}: {cfg.service} must deploy with kind: docker for the stack")
        s["detail"] = f"{cfg.catalog_file} ({cfg.service} -> {cfg.front_door})"
    with _step(progress, "gateway", out) as s:
        write_gateway_settings(cfg.gateway_settings(), cfg.settings_file)
        pid, how = _start_haproxy(cfg, catalog, state)
        state["haproxy"] = {"pid": pid, "config": str(GatewayPaths(cfg.gateway_dir).config)}
        _save_state(cfg, state)
        s["detail"] = f"HAProxy {how} (pid {pid}) on {cfg.front_door}, runtime API {cfg.gateway_dir}/admin.sock"

    engine = _engine(cfg)
    client = _docker()
    gateway = open_gateway(engine, catalog, cfg.gateway_settings())
    try:
        with _step(progress, "reconcile", out) as s:
            dropped = _prune_stale_servers(gateway, _stack_addresses(client, cfg), catalog.names())
            rep = gateway.reconcile()
            s["detail"] = (f"desired state applied: {rep.servers.added} servers added, "
                           f"{len(dropped)} stale dropped, {len(gateway.store.list_rules())} virtual patches")
        with _step(progress, "image", out) as s:
            # What the pipeline promoted last (deployments table) comes back after a restart; only a
            # service that never had a release recorded (or whose image is gone) starts from HEAD.
            wanted, why = desired_release(engine, client, svc.name)
            if wanted is not None:
                s["detail"] = f"desired release {wanted.version} ({wanted.image}) from the deployments table"
            else:
                assert svc.deploy.docker is not None
                tag = f"{svc.deploy.docker.image}:commit-{commit[:12]}"
                built = build_image(client, cfg.repo_dir, commit, tag, dockerfile=svc.dockerfile,
                                    base_image=cfg.base_image, reuse=True,
                                    labels={"selfheal.service": svc.name, "selfheal.role": "baseline"})
                wanted = Wanted(tag, version)
                s["detail"] = f"{tag} {'reused' if built.reused else 'built'} ({why}: HEAD of the repository)"
        with _step(progress, "baseline", out) as s:
            backend = DockerBackend.from_catalog(
                client, gateway, catalog,
                settings=DockerSettings(**cfg.docker_settings()),
            )
            backend.ensure_network()
            state["network_owned"] = _network_label(client, cfg) == cfg.stack_id
            release = _deploy_baseline(svc, backend, wanted, engine)
            state["release"] = release
            _save_state(cfg, state)
            s["detail"] = (f"{release['version']} ({release['color']}) "
                           f"{'deployed' if release['deployed'] else 'already live'}, traffic {release['weights']}")
        with _step(progress, "front door", out) as s:
            health = svc.deploy.docker.health_path
            status = 0
            for _ in range(50):
                status, _h = _http_get(f"{cfg.front_door}{health}")
                if status == 200:
                    break
                time.sleep(0.2)
            if status != 200:
                raise StackError(f"front door: GET {cfg.front_door}{health} answered {status or 'nothing'}")
            s["detail"] = f"GET {cfg.front_door}{health} -> 200 through the gateway"
    finally:
        gateway.close()
        client.close()
        engine.dispose()

    with _step(progress, "aws stand-in", out) as s:
        moto = state.get("moto") or {}
        if aws_standin.pid_running(moto.get("pid"), aws_standin.MARKER) and moto.get("port") == cfg.moto_port:
            how = "already running"
        else:
            pid = aws_standin.start_moto(cfg.moto_port, cfg.moto_log)
            state["moto"] = {"pid": pid, "port": cfg.moto_port, "url": cfg.moto_url}
            _save_state(cfg, state)
            n = aws_standin.seed_inspector(cfg.moto_url, aws_standin.demo_findings())
            how = f"started (pid {pid}), {n} Inspector2 findings seeded"
        s["detail"] = f"{aws_standin.LABEL} at {cfg.moto_url}: {how}"

    state["up_at"] = datetime.now(UTC).isoformat()
    state["steps"] = out.get("steps", {})
    _save_state(cfg, state)
    return state


def _network_label(client: Any, cfg: StackConfig) -> str | None:
    for net in client.networks.list(names=[cfg.network]):
        if net.name == cfg.network:
            return (net.attrs.get("Labels") or {}).get(STACK_LABEL)
    return None


def _remove_containers(client: Any, cfg: StackConfig) -> list[str]:
    """Release containers this stack made (its label) or that run on its network (the pipeline's
    canaries): the stack's network exists only for the stack."""
    from selfheal.rollout.backends.docker import LABEL_MANAGED, MANAGED_BY

    found: dict[str, Any] = {}
    for c in client.containers.list(all=True, filters={"label": f"{STACK_LABEL}={cfg.stack_id}"}):
        found[c.id] = c
    if _network_label(client, cfg) == cfg.stack_id:
        for c in client.containers.list(all=True, filters={"label": f"{LABEL_MANAGED}={MANAGED_BY}",
                                                            "network": cfg.network}):
            found[c.id] = c
    removed = []
    for c in found.values():
        with contextlib.suppress(Exception):
            c.remove(force=True)
            removed.append(c.name)
    return sorted(removed)


def _forget_servers(cfg: StackConfig, state: Mapping[str, Any], addresses: set[str]) -> int:
    """The containers are gone: drop their servers from the desired state (audited), so the next
    `up` starts from what really runs. Best effort: `up` prunes the same way."""
    from selfheal.gateway.state import AuditEvent, SqlStateStore
    from selfheal.runtime import ledger_hook

    engine = _engine(cfg)
    try:
        store, hook, n = SqlStateStore(engine), ledger_hook(engine), 0
        for spec in store.list_servers(str(state.get("service") or cfg.service)):
            if spec.address in addresses:
                ev = AuditEvent(action="gateway.server.remove", subject=f"{spec.service}/{spec.name}",
                                detail={**spec.to_dict(), "reason": "stack down: container removed"}, actor=ACTOR)
                if store.delete_server(spec.service, spec.name, ev):
                    hook(ev)
                    n += 1
        return n
    finally:
        engine.dispose()


def down(cfg: StackConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Stop what `up` started (PIDs from the state file, containers by label/network), nothing else."""
    state = load_state(cfg)
    out: dict[str, Any] = {"stopped": []}
    t0 = time.monotonic()
    haproxy = state.get("haproxy") or {}
    if aws_standin.stop_pid(haproxy.get("pid"), str(haproxy.get("config") or "\0")):
        out["stopped"].append(f"haproxy (pid {haproxy['pid']})")
    moto = state.get("moto") or {}
    if aws_standin.stop_pid(moto.get("pid"), aws_standin.MARKER):
        out["stopped"].append(f"moto (pid {moto['pid']})")
    if progress:
        progress("processes", ", ".join(out["stopped"]) or "none running", time.monotonic() - t0)
    t0 = time.monotonic()
    try:
        client = _docker()
    except StackError as e:
        out["docker"] = str(e)
        client = None
    if client is not None:
        try:
            addresses = _stack_addresses(client, cfg) if _network_label(client, cfg) == cfg.stack_id else set()
            out["containers"] = _remove_containers(client, cfg)
            if _network_label(client, cfg) == cfg.stack_id:
                for net in client.networks.list(names=[cfg.network]):
                    if net.name == cfg.network:
                        net.remove()
                        out["network"] = cfg.network
        finally:
            client.close()
        if progress:
            progress("containers", f"{len(out['containers'])} removed"
                     + (f", network {cfg.network} removed" if out.get("network") else ""), time.monotonic() - t0)
        if addresses:
            with contextlib.suppress(Exception):
                out["servers_forgotten"] = _forget_servers(cfg, state, addresses)
    cfg.state_file.unlink(missing_ok=True)
    return out


def status(cfg: StackConfig) -> dict[str, Any]:
    """What runs now: processes, the live traffic split through the runtime API, the front door."""
    state = load_state(cfg)
    haproxy = state.get("haproxy") or {}
    moto = state.get("moto") or {}
    out: dict[str, Any] = {
        "stack_id": cfg.stack_id,
        "haproxy": {"pid": haproxy.get("pid"),
                    "running": aws_standin.pid_running(haproxy.get("pid"), str(haproxy.get("config") or "\0"))},
        "aws_standin": {"pid": moto.get("pid"), "url": moto.get("url"),
                        "running": aws_standin.pid_running(moto.get("pid"), aws_standin.MARKER)},
        "front_door": cfg.front_door,
        "release": state.get("release"),
    }
    if out["haproxy"]["running"]:
        from selfheal.gateway.runtime import RuntimeClient

        rt = RuntimeClient(GatewayPaths(cfg.gateway_dir).admin_socket)
        try:
            out["servers"] = {s.name: {"weight": s.weight, "state": s.state, "address": s.address}
                              for s in rt.servers(cfg.service)}
        except Exception as e:  # noqa: BLE001 - status reports, never fails
            out["servers"] = f"runtime API: {e}"
        finally:
            rt.close()
        code, _headers = _http_get(f"{cfg.front_door}/health")
        out["front_door_health"] = code
    return out


def shell_exports(values: Mapping[str, str]) -> str:
    """`export K='V'` lines a shell can eval."""
    import shlex

    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items())

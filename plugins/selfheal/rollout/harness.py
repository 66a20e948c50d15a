"""A complete local rollout stack on real components, for integration tests, benchmarks and demos.

``LocalStack.start`` renders the gateway configuration for a small catalog,
binds the log collector, starts our own HAProxy (stopped by its PID), and
wires a ``DockerBackend`` on a private, internal Docker network whose
containers all carry a run label, so ``close()`` removes exactly what this
stack started and nothing else.

``knob_image`` builds the tiny knob-driven service (``knob_service.py``)
FROM the offline base image, without network; each variant (version, error
rate, latency...) is the same image plus ``ENV`` lines, so a variant builds
in well under a second from the layer cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import socket
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from selfheal.catalog import Catalog, DeployTarget, DockerTarget, Service
from selfheal.gateway.config import GatewayPaths, GatewaySettings, ServiceGateway, write_config
from selfheal.gateway.gateway import Gateway
from selfheal.gateway.logs import LogCollector
from selfheal.gateway.process import HAProxyProcess
from selfheal.gateway.state import GatewayStateStore, InMemoryStateStore
from selfheal.rollout import knob_service
from selfheal.rollout.backends.docker import DockerBackend, DockerSettings
from selfheal.rollout.load import LoadClient, Wrk
from selfheal.rollout.strategies import (
    AnalysisSettings,
    BlueGreenConfig,
    CanaryConfig,
    GatewayLogSource,
    RolloutResult,
    run_blue_green,
    run_canary,
)

KNOB_REPO = "selfheal/rollout-knob"
KNOB_PORT = 8000
RUN_LABEL = "selfheal.run"

_KNOB_DOCKERFILE = f"""\
ARG BASE_IMAGE
FROM ${{BASE_IMAGE}}
COPY knob_service.py /app/knob_service.py
ENV PYTHONDONTWRITEBYTECODE=1 KNOB_PORT={KNOB_PORT}
USER 65534:65534
EXPOSE {KNOB_PORT}
# bash's /dev/tcp, not `knob_service.py --check`: Docker runs the check every interval for the
# container's whole life, and a bash probe costs a fraction of a Python start-up.
HEALTHCHECK --interval=10s --timeout=2s --retries=3 CMD ["bash", "-c", \
    "exec 3<>/dev/tcp/127.0.0.1/{KNOB_PORT} && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 \
     && read -r s <&3 && [[ $s == *' 200 '* ]]"]
CMD ["python3", "/app/knob_service.py"]
"""


def _tar(files: Mapping[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def _build(
    client: Any, files: Mapping[str, bytes], tag: str, buildargs: Mapping[str, str] | None = None
) -> str:
    from docker.errors import BuildError

    try:
        client.images.build(
            fileobj=_tar(files),
            custom_context=True,
            tag=tag,
            buildargs=dict(buildargs or {}),
            network_mode="none",
            rm=True,
            forcerm=True,
            pull=False,
        )
    except BuildError as e:
        log = "".join(str(c.get("stream", c)) for c in e.build_log)
        raise RuntimeError(f"building {tag} failed: {e}: {log[-1500:]}") from e
    return tag


def knob_image(client: Any, base_image: str = "selfheal/base:bookworm", **env: str | float | int) -> str:
    """Tag of the knob service image with ``KNOB_<NAME>=value`` for each keyword (e.g. error_rate=0.2)."""
    source = Path(knob_service.__file__).read_bytes()
    recipe = source + _KNOB_DOCKERFILE.encode() + base_image.encode()
    base_tag = f"{KNOB_REPO}:base-{hashlib.sha256(recipe).hexdigest()[:12]}"
    try:
        client.images.get(base_tag)
    except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound: build it
        _build(
            client,
            {"Dockerfile": _KNOB_DOCKERFILE.encode(), "knob_service.py": source},
            base_tag,
            {"BASE_IMAGE": base_image},
        )
    if not env:
        return base_tag
    pairs = {f"KNOB_{k.upper()}": str(v) for k, v in sorted(env.items())}
    tag = f"{KNOB_REPO}:{hashlib.sha256((base_tag + json.dumps(pairs)).encode()).hexdigest()[:12]}"
    try:
        client.images.get(tag)
    except Exception:  # noqa: BLE001 - not built yet
        lines = " ".join(f"{k}={json.dumps(v)}" for k, v in pairs.items())
        _build(client, {"Dockerfile": f"FROM {base_tag}\nENV {lines}\n".encode()}, tag)
    return tag


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalStack:
    client: Any
    run_id: str
    run_dir: Path
    settings: GatewaySettings
    catalog: Catalog
    paths: GatewayPaths
    logs: LogCollector
    haproxy: HAProxyProcess
    gateway: Gateway
    backend: DockerBackend
    store: GatewayStateStore
    _closers: list[Any] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        client: Any,
        *,
        services: Iterable[str] = ("shop",),
        store: GatewayStateStore | None = None,
        check_interval_ms: int = 500,
        docker: Mapping[str, Any] | None = None,
        targets: Mapping[str, DockerTarget] | None = None,
        log_capacity: int = 50_000,
    ) -> LocalStack:
        """Gateway + collector + Docker backend; everything is torn down by ``close()`` even on failure."""
        run_id = uuid.uuid4().hex[:10]
        names = tuple(services)
        targets = dict(
            targets or {n: DockerTarget(image="unused", port=KNOB_PORT, health_path="/health") for n in names}
        )
        catalog = Catalog(
            services=tuple(
                Service(
                    name=n,
                    base_url=f"http://{n}.localhost",
                    owner="rollout-tests",
                    repository="/nonexistent",
                    deploy=DeployTarget(kind="docker", docker=targets[n]),
                )
                for n in names
            )
        )
        run_dir = Path(tempfile.mkdtemp(prefix="shro-", dir="/tmp"))  # short: Unix socket paths max 108 bytes
        settings = GatewaySettings(
            run_dir=run_dir,
            http_port=free_port(),
            stats_port=free_port(),
            nbthread=1,
            services={n: ServiceGateway(check_interval_ms=check_interval_ms) for n in names},
        )
        store = store or InMemoryStateStore()
        logs = haproxy = gateway = backend = None
        try:
            paths = write_config(catalog, settings)
            logs = LogCollector(paths.log_socket, capacity=log_capacity).start()
            haproxy = HAProxyProcess(paths).start()
            gateway = Gateway.from_settings(settings, catalog, store)
            ds = DockerSettings(
                **{
                    "network": f"shro-{run_id}",
                    "internal": True,
                    "keep_old_s": 0.0,
                    "health_interval_s": 0.25,
                    "labels": {RUN_LABEL: run_id},
                    **(docker or {}),
                }
            )
            backend = DockerBackend(client, gateway, targets, ds)
            backend.ensure_network()
        except BaseException:
            if backend is not None:
                backend.purge()
            if gateway is not None:
                gateway.close()
            if haproxy is not None:
                haproxy.stop()
            if logs is not None:
                logs.stop()
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        return cls(client, run_id, run_dir, settings, catalog, paths, logs, haproxy, gateway, backend, store)

    # ------------------------------------------------------------------ use
    @property
    def port(self) -> int:
        return self.settings.http_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @staticmethod
    def host(service: str) -> str:
        return f"{service}.localhost"

    @property
    def source(self) -> GatewayLogSource:
        return GatewayLogSource(self.logs)

    def load(self, service: str, **kw: Any) -> LoadClient:
        lc = LoadClient("127.0.0.1", self.port, host_header=self.host(service), **kw)
        self._closers.append(lc)
        return lc

    def wrk(self, service: str, path: str = "/", **kw: Any) -> Wrk:
        w = Wrk(f"http://127.0.0.1:{self.port}{path}", host_header=self.host(service), **kw)
        self._closers.append(w)
        return w

    def restart_gateway(self) -> None:
        """SIGKILL our HAProxy and start it again on the same files: all run-time state is lost."""
        self.haproxy.kill()
        self.haproxy.start()

    def close(self) -> None:
        for c in reversed(self._closers):
            with contextlib.suppress(Exception):
                if isinstance(c, LoadClient):
                    c.stop()
                else:
                    c.__exit__(None, None, None)
        self.backend.purge()
        self.gateway.close()
        self.haproxy.stop()
        self.logs.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- scenarios
# Shared by tests/integration/rollout and bench/: the tests run them small, the benchmarks full size.


def zero_downtime_run(
    stack: LocalStack,
    *,
    images: Sequence[str],
    blue_green: int,
    canary: int,
    service: str = "shop",
    analysis: AnalysisSettings | None = None,
    load: Mapping[str, Any] | None = None,
    wrk: Mapping[str, Any] | None = None,
    cleanup_every: bool = True,
    record: Callable[[dict[str, Any]], None] | None = None,
    pre_check_paths: Sequence[str] = ("/",),
    attempts: int = 3,
) -> dict[str, Any]:
    """``blue_green`` switches then ``canary`` promotions under constant load (own client + wrk).

    Every rollout alternates between ``images`` (so responses show the switch
    happen); a first blue/green puts the initial release live before the
    load starts and is not counted. A good release the judge rolled back (a
    false alarm, e.g. a CPU hiccup in its window) is tried again, up to
    ``attempts`` times; every such rollback is reported under ``rollbacks``
    (its traffic moves count towards the zero-failure check all the same).
    """
    a = analysis or AnalysisSettings()
    backend = stack.backend
    src = stack.source
    if not backend.current_traffic(service):
        first = run_blue_green(
            backend,
            src,
            service,
            image=images[0],
            version="zd-0",
            patch_id="zd-0",
            config=BlueGreenConfig(analysis=a, pre_check_paths=tuple(pre_check_paths)),
        )
        if not first.promoted:
            raise RuntimeError(f"initial release not promoted: {first.reason}")
    lc = stack.load(service, **{"concurrency": 4, **(load or {})})
    wk = stack.wrk(service, **{"duration_s": 600, "connections": 2, **(wrk or {})})
    outcomes: list[RolloutResult] = []
    switch_s: list[float] = []
    lc.start()
    wk.start()
    t0 = time.time()
    try:
        time.sleep(1.0)  # baseline samples for the first analysis
        n = 0
        for kind, count in (("blue_green", blue_green), ("canary", canary)):
            for _ in range(count):
                n += 1
                image = images[n % len(images)]
                for attempt in range(attempts):
                    kw = {
                        "image": image,
                        "version": f"zd-{n}",
                        "patch_id": f"zd-{n}.{attempt}",
                        "record": record,
                    }
                    ts = time.perf_counter()
                    if kind == "blue_green":
                        res = run_blue_green(
                            backend,
                            src,
                            service,
                            config=BlueGreenConfig(analysis=a, pre_check_paths=tuple(pre_check_paths)),
                            **kw,
                        )
                    else:
                        res = run_canary(backend, src, service, config=CanaryConfig(analysis=a), **kw)
                    switch_s.append(time.perf_counter() - ts)
                    outcomes.append(res)
                    if cleanup_every:
                        backend.cleanup_expired()
                    if res.promoted:
                        break
    finally:
        wrk_result = wk.stop()
        lc.stop()
    t1 = time.time()
    own = lc.summary(t0, t1)
    bg = [r for r in outcomes if r.strategy == "blue_green"]
    ca = [r for r in outcomes if r.strategy == "canary"]
    return {
        "switches": sum(r.promoted for r in outcomes),
        "blue_green_switches": sum(r.promoted for r in bg),
        "canary_promotions": sum(r.promoted for r in ca),
        "rollbacks": [{"strategy": r.strategy, "reason": r.reason} for r in outcomes if not r.promoted],
        "requests": own["requests"],
        "failed_requests": own["failed_requests"],
        "own_client": own,
        "wrk": wrk_result.to_dict(),
        "wrk_requests": wrk_result.requests,
        "wrk_failed_requests": wrk_result.failed,
        "seconds": round(t1 - t0, 2),
        "rollout_seconds_p50": round(sorted(switch_s)[len(switch_s) // 2], 2) if switch_s else None,
        "rollout_seconds_max": round(max(switch_s), 2) if switch_s else None,
        "versions_seen": sorted({o.version for o in lc.outcomes(t0, t1) if o.version}),
    }


def rollback_run(
    stack: LocalStack,
    *,
    bad_image: str,
    bad: Literal["errors", "latency"],
    service: str = "shop",
    config: CanaryConfig | None = None,
    load: Mapping[str, Any] | None = None,
    after_s: float = 2.0,
    warmup_s: float = 1.5,
) -> dict[str, Any]:
    """Canary of a bad release under load; measure detection and the damage done.

    - seconds_to_baseline: from the first bad request (the canary's first 5xx,
      or for a slow release its first request) to the moment every weight is
      back on the baseline (the rollback's traffic change returned).
    - failed_share: failed requests (non-2xx or socket error, as the clients
      saw them) over all requests sent in the window [canary start, traffic
      back + ``after_s``], canary start being the first traffic change.
    """
    cfg = config or CanaryConfig()
    events: list[dict[str, Any]] = []
    lc = stack.load(service, **{"concurrency": 20, **(load or {})})
    lc.start()
    try:
        time.sleep(warmup_s)
        res = run_canary(
            stack.backend,
            stack.source,
            service,
            image=bad_image,
            version=f"bad-{bad}",
            patch_id=f"bad-{bad}-{uuid.uuid4().hex[:6]}",
            config=cfg,
            record=events.append,
        )
        back = res.traffic_back_at
        time.sleep(max(0.0, (back or time.time()) + after_s - time.time()))
    finally:
        lc.stop()
    traffic = [e for e in events if e["event"] == "traffic"]
    start = traffic[0]["applied_at"] if traffic else res.started_at
    color = res.release.color
    canary_recs = stack.logs.records(backend=service, server=color, since=start - 0.01)
    bad_recs = [r for r in canary_recs if r.status >= 500] if bad == "errors" else canary_recs
    first_bad = min((r.ts for r in bad_recs), default=None)
    end = (back or time.time()) + after_s
    outs = lc.outcomes(start, end)
    failed = [o for o in outs if not o.ok]
    late = [r for r in canary_recs if back is not None and r.ts > back + 0.05]
    final = [v for v in res.verdicts if v.get("decision")]
    return {
        "scenario": bad,
        "outcome": res.outcome,
        "reason": res.reason,
        "aborted_at_step": final[-1].get("step") if final else None,
        "seconds_to_baseline": round(back - first_bad, 3) if back and first_bad else None,
        "failed_share": round(len(failed) / len(outs), 5) if outs else None,
        "failed_requests": len(failed),
        "requests_in_window": len(outs),
        "window_s": round(end - start, 3),
        "canary_requests": len(canary_recs),
        "canary_requests_after_rollback": len(late),
        "weights_after": stack.backend.current_traffic(service),
        "verdicts": len(res.verdicts),
    }

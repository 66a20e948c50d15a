"""Docker deployment backend: one container per service version, behind the HAProxy gateway.

A release is a container on a dedicated user-defined network, labelled with
its service, version, color and patch id, started with a health check. It is
registered with the gateway (a dynamic server named after its color slot,
addressed by the container's IP, weight 0) only once Docker reports it
healthy AND HAProxy's own check passed, so it can never receive a request
before it answers. Traffic moves only through ``set_traffic``, which raises
weights before it lowers any, so no instant ever has every weight at 0.

Retiring drains first (HAProxy ``drain`` state, wait until the server has
no session), then deletes the server; the container is kept running for
``keep_old_s`` so a rollback is a re-registration, not a cold start
(``reinstate``), and ``cleanup_expired()`` removes it afterwards.

All state lives where it survives a restart of the task that runs this
code: containers and their labels in Docker (a retired container is renamed
``<name>.retired-<epoch>``: labels cannot change after creation, a name can),
servers and weights in the gateway's desired-state store.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from selfheal.catalog import Catalog, DockerTarget
from selfheal.gateway.gateway import Gateway
from selfheal.gateway.runtime import RuntimeAPIError, check_name
from selfheal.gateway.servers import ServerError
from selfheal.gateway.state import ServerSpec
from selfheal.rollout.backends.base import (
    BackendError,
    Release,
    TrafficSnapshot,
    UnhealthyRelease,
    validate_weights,
)

LABEL_MANAGED = "selfheal.managed-by"
MANAGED_BY = "selfheal.rollout.docker"
LABEL_SERVICE = "selfheal.service"
LABEL_VERSION = "selfheal.version"
LABEL_COLOR = "selfheal.color"
LABEL_PATCH = "selfheal.patch-id"
LABEL_KEY = "selfheal.deploy-key"
LABEL_IMAGE = "selfheal.image"
RETIRED = ".retired-"
_RETIRED_RE = re.compile(r"\.retired-(\d+)$")
_NS = 1_000_000_000

# Containers run with the least they need; an image that must write uses /tmp.
HARDENED_RUN: dict[str, Any] = {
    "read_only": True,
    "tmpfs": {"/tmp": "rw,size=64m"},  # noqa: S108 - a private tmpfs inside the container
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
    "mem_limit": "256m",
    "pids_limit": 256,
}


@dataclass(frozen=True)
class DockerSettings:
    network: str = "selfheal-rollout"
    internal: bool = False  # True: containers get no route out (tests); services usually need egress
    keep_old_s: float = 600.0  # how long a retired release stays runnable for an instant rollback
    health_interval_s: float = 1.0  # Docker health check period (also how soon the first check runs)
    health_check_timeout_s: float = 2.0
    health_retries: int = 3
    drain_timeout_s: float = 30.0  # longest wait for in-flight requests before a server is deleted
    run_options: Mapping[str, Any] = field(default_factory=lambda: dict(HARDENED_RUN))
    labels: Mapping[str, str] = field(default_factory=dict)  # extra labels on every container (e.g. a run id)
    allow_pull: bool = False  # no registry is assumed: a missing image is an error, not a pull


def deploy_key(service: str, patch_id: str | None, version: str, color: str) -> str:
    """Identity of a deployment: (service, patch id, color); the version stands in when there is no patch."""
    ident = f"{service}\0{patch_id if patch_id else 'version:' + version}\0{color}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _docker_errors() -> tuple[type[BaseException], ...]:
    import docker.errors
    import requests.exceptions

    return (docker.errors.DockerException, requests.exceptions.RequestException)


class DockerBackend:
    """DeploymentBackend on the local Docker engine, registering releases with one HAProxy gateway."""

    def __init__(
        self,
        client: Any,  # docker.DockerClient
        gateway: Gateway,
        targets: Mapping[str, DockerTarget],
        settings: DockerSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.gateway = gateway
        self.targets = dict(targets)
        self.settings = settings or DockerSettings()
        self.clock = clock
        unknown = set(self.targets) - set(gateway.services)
        if unknown:
            raise BackendError(f"services {sorted(unknown)} have no backend in the gateway configuration")
        self._network_checked = False

    @classmethod
    def from_catalog(cls, client: Any, gateway: Gateway, catalog: Catalog, **kw: Any) -> DockerBackend:
        targets = {
            s.name: s.deploy.docker for s in catalog.services if s.deploy.kind == "docker" and s.deploy.docker
        }
        return cls(client, gateway, targets, **kw)  # type: ignore[arg-type]

    # ----------------------------------------------------------------- helpers
    def _target(self, service: str) -> DockerTarget:
        try:
            return self.targets[service]
        except KeyError:
            raise BackendError(
                f"unknown service {service!r} for the docker backend; known: {sorted(self.targets)}"
            ) from None

    @contextlib.contextmanager
    def _docker(self, what: str) -> Iterator[None]:
        try:
            yield
        except BackendError:
            raise
        except _docker_errors() as e:
            raise BackendError(f"{what}: docker: {' '.join(str(e).split())[:300]}") from e

    def ensure_network(self) -> None:
        """The dedicated user-defined bridge network (created once, labelled as ours)."""
        if self._network_checked:
            return
        s = self.settings
        with self._docker(f"network {s.network}"):
            found = self.client.networks.list(names=[s.network])
            if not any(n.name == s.network for n in found):
                import docker.errors

                try:
                    self.client.networks.create(
                        s.network,
                        driver="bridge",
                        internal=s.internal,
                        check_duplicate=True,
                        labels={LABEL_MANAGED: MANAGED_BY, **s.labels},
                    )
                except docker.errors.APIError as e:
                    if e.status_code != 409:  # created meanwhile by a concurrent task: fine
                        raise
        self._network_checked = True

    def _containers(self, service: str | None = None, *, include_retired: bool = False) -> list[Any]:
        labels = [f"{LABEL_MANAGED}={MANAGED_BY}", *(f"{k}={v}" for k, v in self.settings.labels.items())]
        if service is not None:
            labels.append(f"{LABEL_SERVICE}={service}")
        with self._docker("list containers"):
            found = self.client.containers.list(all=True, filters={"label": labels})
        return [c for c in found if include_retired or not _RETIRED_RE.search(c.name)]

    def _ip(self, container: Any) -> str:
        nets = container.attrs.get("NetworkSettings", {}).get("Networks", {})
        ip = (nets.get(self.settings.network) or {}).get("IPAddress")
        if not ip:
            raise BackendError(
                f"container {container.name} has no address on network {self.settings.network}"
            )
        return ip

    def _release(self, container: Any) -> Release:
        lab = container.labels
        service = lab[LABEL_SERVICE]
        try:
            endpoint = f"{self._ip(container)}:{self._target(service).port}"
        except BackendError:
            endpoint = None  # not running: no address
        return Release(
            service=service,
            version=lab[LABEL_VERSION],
            color=lab[LABEL_COLOR],
            image=lab.get(LABEL_IMAGE, ""),
            patch_id=lab.get(LABEL_PATCH) or None,
            endpoint=endpoint,
            ref=container.id,
        )

    def _get(self, release: Release) -> Any:
        import docker.errors

        try:
            with self._docker(f"container {release.ref[:12]}"):
                return self.client.containers.get(release.ref)
        except BackendError as e:
            if isinstance(e.__cause__, docker.errors.NotFound):
                raise BackendError(
                    f"{release.service}/{release.color} {release.version}: container gone"
                ) from e
            raise

    def _healthcheck(self, image: Any, target: DockerTarget) -> dict[str, Any]:
        """The image's own health test when it has one (it knows best), else an HTTP GET of the
        service's health path. Our interval, so a new release is judged in seconds; the longer of the
        image's and our timeout and retries, so a slow but correct check is not cut short."""
        s = self.settings
        own = (image.attrs.get("Config") or {}).get("Healthcheck") or {}
        test = own.get("Test")
        if not test or test == ["NONE"]:
            url = f"http://127.0.0.1:{target.port}{target.health_path}"
            test = ["CMD", "python3", "-c", f"import urllib.request as u; u.urlopen({url!r}, timeout=2)"]
        return {
            "test": test,
            "interval": int(s.health_interval_s * _NS),
            "timeout": max(int(s.health_check_timeout_s * _NS), int(own.get("Timeout") or 0)),
            "retries": max(s.health_retries, int(own.get("Retries") or 0)),
            "start_period": 0,
        }

    # ------------------------------------------------------------------ deploy
    def deploy(self, service: str, *, version: str, color: str, image: str, patch_id: str | None) -> Release:
        """Start (or find) the container of (service, patch id, color); it takes no traffic yet."""
        target = self._target(service)
        try:
            check_name("color", color)
        except ValueError as e:
            raise BackendError(f"{service}: {e}") from None
        if not version or len(version) > 128:
            raise BackendError(f"{service}/{color}: version must be 1..128 characters")
        import docker.errors

        with self._docker(f"image {image}"):
            try:
                img = self.client.images.get(image)
            except docker.errors.ImageNotFound:
                if not self.settings.allow_pull:
                    raise BackendError(
                        f"{service}/{color}: image {image!r} not found on the docker host"
                    ) from None
                img = self.client.images.pull(image)
        key = deploy_key(service, patch_id, version, color)
        for c in self._containers(service):
            if c.labels.get(LABEL_COLOR) != color:
                continue
            if c.labels.get(LABEL_KEY) == key:
                if c.labels.get(LABEL_IMAGE) != image:
                    raise BackendError(
                        f"{service}/{color}: patch {patch_id!r} is already deployed from image "
                        f"{c.labels.get(LABEL_IMAGE)!r}, not {image!r}"
                    )
                if c.status in ("running", "created", "restarting"):
                    return self._release(c)
                with self._docker(f"remove stopped {c.name}"):
                    c.remove(force=True)  # exited before it ever served: start afresh
                continue
            if self._registered_ref(service, color) is not None or c.status == "running":
                raise BackendError(
                    f"{service}/{color}: the color slot is taken by version {c.labels.get(LABEL_VERSION)!r} "
                    f"(container {c.name}); retire it before deploying {version!r} there"
                )
            with self._docker(f"remove stopped {c.name}"):
                c.remove(force=True)
        self.ensure_network()
        labels = {
            **self.settings.labels,
            LABEL_MANAGED: MANAGED_BY,
            LABEL_SERVICE: service,
            LABEL_VERSION: version,
            LABEL_COLOR: color,
            LABEL_PATCH: patch_id or "",
            LABEL_KEY: key,
            LABEL_IMAGE: image,
        }
        # The backend's scope (network, labels) is part of the name: two stacks on one Docker engine
        # (a workstation's `make up` and a test, say) deploying the same patch must not collide.
        scope = hashlib.sha256(f"{self.settings.network}\0{sorted(self.settings.labels.items())}".encode())
        name = f"selfheal-{service}-{color}-{key[:12]}-{scope.hexdigest()[:6]}"
        with self._docker(f"run {service}/{color} {image}"):
            try:
                c = self.client.containers.run(
                    img.id,
                    name=name,
                    detach=True,
                    labels=labels,
                    network=self.settings.network,
                    healthcheck=self._healthcheck(img, target),
                    **self.settings.run_options,
                )
            except docker.errors.APIError as e:
                if e.status_code != 409:
                    raise
                c = self.client.containers.get(name)  # a concurrent deploy of the same key won
                if c.labels.get(LABEL_KEY) != key or any(c.labels.get(k) != v for k, v in self.settings.labels.items()):
                    raise BackendError(f"{service}/{color}: container name {name} is taken by a container "
                                       "this backend does not manage") from e
            c.reload()
        return self._release(c)

    def _registered_ref(self, service: str, color: str) -> ServerSpec | None:
        return self.gateway.store.get_server(service, color)

    def wait_healthy(self, release: Release, timeout_s: float) -> None:
        """Wait for Docker's health check, then register at weight 0 once HAProxy's check passed too.

        A release that does not get there in time is removed (container and
        server) and UnhealthyRelease raised: live traffic never saw it.
        """
        deadline = time.monotonic() + timeout_s
        c = self._get(release)
        why = ""
        while True:
            with self._docker(f"inspect {c.name}"):
                c.reload()
            state = c.attrs.get("State", {})
            health = (state.get("Health") or {}).get("Status")
            if state.get("Status") in ("exited", "dead"):
                why = f"container exited with code {state.get('ExitCode')}: {self._logs(c)}"
                break
            if health == "healthy":
                why = ""
                break
            if health == "unhealthy":
                why = f"docker health check failed: {self._last_probe(state)}"
                break
            if time.monotonic() >= deadline:
                why = f"health still {health or state.get('Status')!r}: {self._last_probe(state)}"
                break
            time.sleep(0.05)
        if why:
            self._discard(c)
            raise UnhealthyRelease(
                f"{release.service}/{release.color} {release.version} ({release.image}) did not become "
                f"healthy within {timeout_s:g}s ({why}); container removed, live traffic unchanged"
            )
        spec = ServerSpec(
            release.service,
            release.color,
            self._ip(c),
            self._target(release.service).port,
            weight=0,
            state="ready",
        )
        have = self.gateway.store.get_server(release.service, release.color)
        if have is not None:
            if (have.address, have.port) == (spec.address, spec.port):
                return  # registered already (idempotent re-run)
            raise BackendError(
                f"{release.service}/{release.color}: the gateway slot points at {have.address}; "
                f"retire that release first"
            )
        try:
            self.gateway.servers.add(spec, wait_healthy=max(1.0, deadline - time.monotonic()))
        except ServerError as e:
            self._discard(c)
            raise UnhealthyRelease(
                f"{release.service}/{release.color} {release.version}: gateway health check failed ({e}); "
                f"container removed, live traffic unchanged"
            ) from e

    @staticmethod
    def _last_probe(state: Mapping[str, Any]) -> str:
        log = (state.get("Health") or {}).get("Log") or []
        if not log:
            return "no check has run yet"
        last = log[-1]
        return f"exit {last.get('ExitCode')}: {' '.join(str(last.get('Output', '')).split())[:200]!r}"

    def _logs(self, c: Any) -> str:
        with contextlib.suppress(*_docker_errors()):
            return " ".join(c.logs(tail=5).decode(errors="replace").split())[-300:] or "no output"
        return "logs unavailable"

    def _discard(self, c: Any) -> None:
        with self._docker(f"remove {c.name}"):
            c.remove(force=True)

    # ----------------------------------------------------------------- traffic
    def current_traffic(self, service: str) -> dict[str, int]:
        """Percentages by color as HAProxy applies them now (drained or maintenance servers get 0)."""
        self._target(service)
        live = self.gateway.runtime.servers(service)
        eff = {s.name: (s.weight if s.state == "ready" else 0) for s in live}
        total = sum(eff.values())
        return {n: (round(100 * w / total) if total else 0) for n, w in sorted(eff.items())}

    def set_traffic(self, service: str, weights: Mapping[str, int]) -> None:
        """Percentages by color (sum 100). Weights that rise are applied before weights that fall, so
        the backend always has capacity; a failure part-way puts back what was already changed."""
        self._target(service)
        w = validate_weights(weights)
        have = {s.name: s for s in self.gateway.store.list_servers(service)}
        missing = sorted(set(w) - set(have))
        if missing:
            raise BackendError(
                f"{service}: no registered release for color(s) {missing}; registered: {sorted(have)}"
            )
        not_ready = sorted(n for n, p in w.items() if p > 0 and have[n].state != "ready")
        if not_ready:
            raise BackendError(
                f"{service}: color(s) {not_ready} are draining or in maintenance; cannot take traffic"
            )
        target = {n: w.get(n, 0) for n in have}
        self._apply_weights(service, {n: s.weight for n, s in have.items()}, target)

    def _apply_weights(self, service: str, before: Mapping[str, int], target: Mapping[str, int]) -> None:
        ups = [(n, t) for n, t in target.items() if t > before[n]]
        downs = [(n, t) for n, t in target.items() if t < before[n]]
        done: list[tuple[str, int]] = []
        try:
            for n, t in ups + downs:
                self.gateway.servers.set_weight(service, n, t)
                done.append((n, before[n]))
        except BaseException as e:
            for n, old in reversed(done):
                with contextlib.suppress(Exception):
                    self.gateway.servers.set_weight(service, n, old)
            if isinstance(e, Exception):
                raise BackendError(f"{service}: traffic change failed and was undone: {e}") from e
            raise

    def snapshot(self, service: str) -> TrafficSnapshot:
        self._target(service)
        servers = [s.to_dict() for s in self.gateway.store.list_servers(service)]
        return TrafficSnapshot(
            service, self.current_traffic(service), {"servers": servers, "taken_at": self.clock()}
        )

    def restore(self, snapshot: TrafficSnapshot) -> None:
        """Put servers, weights and states back as in ``snapshot``; servers added since then are drained
        and removed. Weights go back first (users are on the old version at once), cleanup after.

        A server that took traffic in the snapshot and cannot be brought back (its container is gone)
        makes the restore refuse before any weight moves: lowering the others then would leave the
        service with nothing to serve it.
        """
        service = snapshot.service
        want = {d["name"]: ServerSpec(**d) for d in snapshot.details.get("servers", [])}
        have = {s.name: s for s in self.gateway.store.list_servers(service)}
        problems: list[str] = []
        for name, spec in want.items():
            if name not in have:  # e.g. the old release was retired before the failure
                try:
                    if not self._unretire(service, spec.address):
                        raise BackendError("no running container of ours has that address any more")
                    self.gateway.servers.add(replace(spec, weight=0, state="ready"), wait_healthy=10.0)
                except (BackendError, ServerError, RuntimeAPIError) as e:
                    problems.append(f"{name}: cannot re-register {spec.address}:{spec.port}: {e}")
        have = {s.name: s for s in self.gateway.store.list_servers(service)}
        lost = sorted(n for n, spec in want.items() if spec.weight > 0 and n not in have)
        if lost:
            raise BackendError(
                f"{service}: cannot restore the snapshot, {lost} took traffic and cannot be re-registered "
                f"({'; '.join(problems)}); traffic left as it is"
            )
        for name, spec in want.items():
            if name in have and spec.state == "ready" and have[name].state != "ready":
                self.gateway.servers.set_state(service, name, "ready")
        target = {n: (want[n].weight if n in want else 0) for n in have}
        self._apply_weights(service, {n: s.weight for n, s in have.items()}, target)
        for name, spec in want.items():
            if name in have and spec.state != "ready" and have[name].state != spec.state:
                self.gateway.servers.set_state(service, name, spec.state)
        for name in sorted(set(have) - set(want)):
            self._drain_and_remove(service, name, reason="restore to the pre-rollout snapshot")
        if problems:
            raise BackendError(f"{service}: restore incomplete: " + "; ".join(problems))

    def _unretire(self, service: str, address: str) -> bool:
        """The running container at ``address`` serves again: drop any retired mark so cleanup_expired()
        leaves it alone. False when no running container of ours has that address."""
        for c in self._containers(service, include_retired=True):
            if c.status != "running" or self._ip_or_none(c) != address:
                continue
            m = _RETIRED_RE.search(c.name)
            if m:
                with self._docker(f"rename {c.name}"):
                    c.rename(c.name[: m.start()])
            return True
        return False

    # ----------------------------------------------------------------- retire
    def sessions(self, service: str, color: str) -> int:
        """Requests the server is handling right now (``show stat`` scur + qcur); 0 when unknown."""
        for row in self.gateway.runtime.stats():
            if row.get("pxname") == service and row.get("svname") == color:
                return int(row.get("scur") or 0) + int(row.get("qcur") or 0)
        return 0

    def _drain_and_remove(self, service: str, color: str, *, reason: str) -> float:
        """Drain, wait for in-flight requests, delete the server. Returns seconds spent waiting."""
        t0 = time.monotonic()
        spec = self.gateway.store.get_server(service, color)
        if spec is None:
            return 0.0
        if spec.state == "ready":
            self.gateway.servers.set_state(service, color, "drain")
        deadline = t0 + self.settings.drain_timeout_s
        left = self.sessions(service, color)
        while left > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
            left = self.sessions(service, color)
        if left:
            reason += f" ({left} requests still running after {self.settings.drain_timeout_s:g}s were cut)"
        self.gateway.servers.remove(service, color, reason=reason)
        return time.monotonic() - t0

    def retire(self, release: Release) -> None:
        """Drain and deregister ``release``; keep its container ``keep_old_s`` for a rollback (0: remove)."""
        service, color = release.service, release.color
        self._target(service)
        try:
            c = self._get(release)
        except BackendError:
            c = None
        spec = self.gateway.store.get_server(service, color)
        address = self._ip_or_none(c) if c is not None else (release.endpoint or "").rpartition(":")[0]
        ours = spec is not None and bool(address) and address == spec.address
        if ours:
            assert spec is not None
            others = [
                s
                for s in self.gateway.store.list_servers(service)
                if s.name != color and s.state == "ready" and s.weight > 0
            ]
            if spec.weight > 0 and not others:
                raise BackendError(
                    f"{service}/{color} {release.version} still takes {spec.weight}% of traffic and no other "
                    f"release does; move traffic first"
                )
            self._drain_and_remove(service, color, reason=f"retired {release.version}")
        if c is None:
            return
        if self.settings.keep_old_s > 0 and c.status == "running":
            with self._docker(f"rename {c.name}"):
                c.rename(f"{c.name}{RETIRED}{int(self.clock())}")
        else:
            self._discard(c)

    def _ip_or_none(self, c: Any) -> str | None:
        try:
            return self._ip(c)
        except BackendError:
            return None

    def reinstate(self, release: Release, timeout_s: float = 30.0) -> Release:
        """Instant rollback: bring a retired, still running release back into its color slot (weight 0)."""
        c = self._get(release)
        m = _RETIRED_RE.search(c.name)
        if m:
            if self.gateway.store.get_server(release.service, release.color) is not None:
                raise BackendError(f"{release.service}/{release.color}: slot is in use; cannot reinstate")
            with self._docker(f"rename {c.name}"):
                c.rename(c.name[: m.start()])
        c.reload()
        rel = self._release(c)
        self.wait_healthy(rel, timeout_s)
        return rel

    def cleanup_expired(self) -> list[str]:
        """Remove retired containers older than ``keep_old_s``; returns their names."""
        now = self.clock()
        removed = []
        serving = {s.address for s in self.gateway.store.list_servers()}
        for c in self._containers(include_retired=True):
            m = _RETIRED_RE.search(c.name)
            if m and now - int(m.group(1)) >= self.settings.keep_old_s and self._ip_or_none(c) not in serving:
                self._discard(c)
                removed.append(c.name)
        return removed

    # ---------------------------------------------------------------- queries
    def releases(self, service: str) -> list[Release]:
        """Deployed (not retired) releases of ``service``, by color."""
        self._target(service)
        return sorted((self._release(c) for c in self._containers(service)), key=lambda r: r.color)

    def retired(self, service: str) -> list[Release]:
        """Retired releases still kept for rollback, newest first."""
        self._target(service)
        cs = [c for c in self._containers(service, include_retired=True) if _RETIRED_RE.search(c.name)]
        cs.sort(key=lambda c: int(_RETIRED_RE.search(c.name).group(1)), reverse=True)  # type: ignore[union-attr]
        return [self._release(c) for c in cs]

    def purge(self) -> int:
        """Remove every container this backend's labels select, then the network (tests and teardown)."""
        n = 0
        for c in self._containers(include_retired=True):
            with contextlib.suppress(*_docker_errors()):
                c.remove(force=True)
                n += 1
        with contextlib.suppress(*_docker_errors()):
            for net in self.client.networks.list(names=[self.settings.network]):
                if net.name == self.settings.network:
                    net.remove()
        self._network_checked = False
        return n

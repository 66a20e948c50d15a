"""Isolated containers for one verification, and the guarantee that they go away.

Isolation (every container a sandbox starts):

* an INTERNAL Docker network created per sandbox (``internal=True``): Docker
  drops everything the bridge would forward (``DOCKER-ISOLATION-STAGE-1``
  rules on the host), so there is no route out, and Docker's DNS resolves
  nothing outside. Docker 20.10 still puts a default route in the container,
  via the bridge address; the bridge just forwards nothing. One-shot
  commands (the service's test suite) get ``network_mode="none"``:
  loopback only, no route at all.
* non-root user (the image's, or ``Limits.fallback_user`` when the image
  would run as root), read-only root filesystem, a small ``/tmp`` tmpfs
  (noexec, nosuid, nodev), every capability dropped, ``no-new-privileges``,
  CPU, memory (no swap) and PID limits.

How checks reach the service: from the orchestrating process on the Docker
host, to the container's address on the internal network. Linux routes the
host to its own bridges, and Docker's internal-network rules only drop
traffic the bridge *forwards*, so the host reaches the sandbox while the
sandbox reaches nothing beyond it. (Verified on this machine, Docker 20.10.)
The one thing ``internal`` does not block is the host itself: a host service
listening on 0.0.0.0 answers on the bridge gateway address. Keep host
services on loopback, or add an INPUT drop rule for the sandbox bridges, or
give sandboxes a dedicated Docker host. This also means the orchestrator
must run on the Docker host (LocalExecutor / ``airflow standalone``); a
containerised worker would have to join the sandbox network.

Cleanup: every container and network carries ``selfheal.sandbox=<id>`` plus
its owner process and deadline. ``Sandbox.close`` removes them in a
``finally``; when the owner was killed (SIGKILL, OOM, a lost worker) or the
daemon was unreachable at the time, ``cleanup_stale`` removes them later: it
runs at the start of every verification and can run as a periodic task.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfheal.sandbox.errors import CheckTimeout, SandboxError, docker_errors
from selfheal.sandbox.spec import Limits

LABEL = "selfheal.sandbox"
LABEL_OWNER = "selfheal.sandbox.owner"
LABEL_CREATED = "selfheal.sandbox.created"
LABEL_DEADLINE = "selfheal.sandbox.deadline"
LABEL_PATCH = "selfheal.patch"
LABEL_ROLE = "selfheal.sandbox.role"
NAME_PREFIX = "selfheal-sbx-"
CLEANUP_GRACE_S = 120
_ROOT_USERS = {"", "0", "root"}


# --- ownership: is the process that made a sandbox still alive? ---------------------------------

def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat): tells a reused PID apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def owner_token(pid: int | None = None) -> str:
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or '?'}"


def owner_alive(token: str) -> bool | None:
    """True/False for an owner on this host; None when it lives elsewhere (cannot tell)."""
    parts = token.split(":")
    if len(parts) < 3:
        return None
    host, pid, start = ":".join(parts[:-2]), parts[-2], parts[-1]
    if host != socket.gethostname() or not pid.isdigit():
        return None
    current = _start_time(int(pid))
    return current is not None and (start == "?" or current == start)


def _is_stale(labels: Mapping[str, str], now: float, max_age_s: float) -> str | None:
    """Why a labelled object is stale, or None if its owner may still be using it."""
    try:
        created = float(labels.get(LABEL_CREATED, "0"))
        deadline = float(labels.get(LABEL_DEADLINE, "0"))
    except ValueError:
        return "unreadable labels"
    if deadline and now > deadline:
        return "past its deadline"
    if now - created > max_age_s:
        return f"older than {max_age_s:g} s"
    if owner_alive(labels.get(LABEL_OWNER, "")) is False:
        return "its owner process is gone"
    return None


def cleanup_stale(
    client: Any, max_age_s: float = 3600.0, *, sandbox_id: str | None = None, now: float | None = None,
) -> dict[str, list[str]]:
    """Remove sandbox containers and networks left by dead, expired or too old runs.

    With ``sandbox_id``, remove that sandbox's objects whatever their state.
    Returns the names removed. Safe to run concurrently with live sandboxes
    (a sandbox whose owner runs on this host and is alive, within its deadline
    and younger than ``max_age_s`` is left alone) and with other cleanups
    (something already gone is skipped). Uses docker-py's low-level API: the
    model layer inspects every listed container and trips over ones removed
    meanwhile.
    """
    import docker.errors

    now = time.time() if now is None else now
    flt = {"label": f"{LABEL}={sandbox_id}" if sandbox_id else LABEL}
    removed: dict[str, list[str]] = {"containers": [], "networks": []}
    api = client.api
    with docker_errors("cleanup"):
        for c in api.containers(all=True, filters=flt):
            if sandbox_id or _is_stale(c.get("Labels") or {}, now, max_age_s):
                try:
                    api.remove_container(c["Id"], force=True, v=True)
                except docker.errors.NotFound:
                    continue
                except docker.errors.APIError as e:
                    if "already in progress" in str(e):
                        continue
                    raise
                removed["containers"].append((c.get("Names") or ["/" + c["Id"][:12]])[0].lstrip("/"))
        for n in api.networks(filters=flt):
            if sandbox_id or _is_stale(n.get("Labels") or {}, now, max_age_s):
                try:
                    attached = api.inspect_network(n["Id"]).get("Containers") or {}
                    for cid in attached:
                        with contextlib.suppress(docker.errors.APIError):  # gone meanwhile
                            api.disconnect_container_from_network(cid, n["Id"], force=True)
                    api.remove_network(n["Id"])
                except docker.errors.NotFound:
                    continue
                removed["networks"].append(n["Name"])
    return removed


def leftovers(client: Any, sandbox_id: str | None = None, *, patch_id: str | None = None) -> dict[str, list[str]]:
    """Names of the sandbox containers and networks that still exist: all, one sandbox's, or one patch's."""
    flt = {"label": [f"{LABEL}={sandbox_id}" if sandbox_id else LABEL]
           + ([f"{LABEL_PATCH}={patch_id[:128]}"] if patch_id else [])}
    with docker_errors("cleanup"):
        return {"containers": [(c.get("Names") or [c["Id"]])[0].lstrip("/")
                               for c in client.api.containers(all=True, filters=flt)],
                "networks": [n["Name"] for n in client.api.networks(filters=flt)]}


# --- one sandbox -----------------------------------------------------------------------------------

@dataclass
class RunningService:
    role: str
    container: Any
    ip: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"


@dataclass
class CommandResult:
    exit_code: int | None
    output: str
    duration_s: float
    timed_out: bool = False


class Sandbox:
    """One verification's network and containers; a context manager that always removes them.

    ``deadline`` (monotonic seconds) is the hard timeout: every wait is capped by it.
    """

    def __init__(self, client: Any, *, patch_id: str, limits: Limits | None = None, sandbox_id: str | None = None,
                 deadline: float | None = None) -> None:
        self.client = client
        self.patch_id = patch_id
        self.limits = limits = limits or Limits()
        self.id = sandbox_id or uuid.uuid4().hex[:12]
        self.deadline = deadline if deadline is not None else time.monotonic() + limits.hard_timeout_s
        created = time.time()
        self.labels = {
            LABEL: self.id,
            LABEL_OWNER: owner_token(),
            LABEL_CREATED: f"{created:.0f}",
            LABEL_DEADLINE: f"{created + (self.deadline - time.monotonic()) + CLEANUP_GRACE_S:.0f}",
            LABEL_PATCH: patch_id[:128],
        }
        self.network: Any = None
        self._users: dict[str, str] = {}

    # -- lifecycle
    def __enter__(self) -> Sandbox:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def network_name(self) -> str:
        return f"{NAME_PREFIX}{self.id}"

    def open(self) -> None:
        with docker_errors("sandbox network"):
            self.network = self.client.networks.create(
                self.network_name, driver="bridge", internal=True, check_duplicate=True, labels=dict(self.labels),
            )

    def close(self) -> dict[str, Any]:
        """Remove every container and the network of this sandbox; report what happened (never raises)."""
        report: dict[str, Any] = {"ok": True, "sandbox_id": self.id, "removed": [], "error": ""}
        try:
            removed = cleanup_stale(self.client, sandbox_id=self.id)
            report["removed"] = removed["containers"] + removed["networks"]
            left = leftovers(self.client, self.id)
            if left["containers"] or left["networks"]:
                report["ok"] = False
                report["error"] = f"still present: {left}"
        except SandboxError as e:
            report["ok"] = False
            report["error"] = (f"{e.reason}; the next cleanup_stale() removes the leftovers "
                               f"(label {LABEL}={self.id})")
        return report

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def cap(self, timeout: float, what: str) -> float:
        """``timeout`` capped by the hard deadline; CheckTimeout when nothing is left."""
        left = self.remaining()
        if left <= 0:
            raise CheckTimeout(what, "timeout: the sandbox's hard timeout was reached")
        return min(timeout, left)

    # -- container settings
    def user_for(self, image: str) -> str:
        """The image's own user unless that is root; then ``Limits.fallback_user``."""
        if image not in self._users:
            with docker_errors("inspect image"):
                user = (self.client.images.get(image).attrs.get("Config") or {}).get("User") or ""
            name = user.split(":", 1)[0]
            self._users[image] = self.limits.fallback_user if name in _ROOT_USERS else user
        return self._users[image]

    def hardened(self, image: str, role: str) -> dict[str, Any]:
        lim = self.limits
        return {
            "user": self.user_for(image),
            "read_only": True,
            "tmpfs": {"/tmp": f"rw,noexec,nosuid,nodev,size={lim.tmpfs_size}"},  # noqa: S108 - the container's /tmp
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "nano_cpus": int(lim.cpus * 1e9),
            "mem_limit": lim.memory,
            "memswap_limit": lim.memory,  # = memory: no swap
            "pids_limit": lim.pids,
            "ipc_mode": "private",
            "labels": {**self.labels, LABEL_ROLE: role},
            "name": f"{NAME_PREFIX}{self.id}-{role}",
            "detach": True,
        }

    # -- services on the internal network
    def launch_service(self, role: str, image: str, port: int,
                       environment: Mapping[str, str] | None = None) -> RunningService:
        """Start ``image`` on the sandbox network (returns at once; see ``wait_service``)."""
        stage = f"start {role}"
        with docker_errors(stage):
            container = self.client.containers.run(
                image, network=self.network_name, environment=dict(environment or {}),
                **self.hardened(image, role),
            )
            container.reload()
            ip = (container.attrs["NetworkSettings"]["Networks"].get(self.network_name) or {}).get("IPAddress")
        if not ip:
            raise SandboxError(stage, f"container has no address on {self.network_name}")
        return RunningService(role, container, ip, port)

    def wait_service(self, svc: RunningService, health_path: str = "/health") -> RunningService:
        """Wait until ``health_path`` answers 200 (SandboxError if the container exits or time runs out)."""
        self._wait_healthy(svc, health_path, self.cap(self.limits.start_timeout_s, f"start {svc.role}"))
        return svc

    def start_service(self, role: str, image: str, port: int, health_path: str = "/health",
                      environment: Mapping[str, str] | None = None) -> RunningService:
        """``launch_service`` then ``wait_service``."""
        return self.wait_service(self.launch_service(role, image, port, environment), health_path)

    def _wait_healthy(self, svc: RunningService, path: str, timeout: float) -> None:
        stage = f"start {svc.role}"
        end = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < end:
            try:
                conn = http.client.HTTPConnection(svc.ip, svc.port, timeout=2)
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                conn.close()
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
            except OSError as e:
                last = str(e)
            with docker_errors(stage):
                svc.container.reload()
                if svc.container.status in ("exited", "dead"):
                    code = svc.container.attrs["State"].get("ExitCode")
                    tail = svc.container.logs(tail=20).decode(errors="replace").strip().splitlines()[-3:]
                    raise SandboxError(stage, f"container exited with code {code}: {' | '.join(tail)}")
            time.sleep(0.1)
        raise SandboxError(stage, f"timeout: {path} not healthy after {timeout:.0f} s ({last})")

    def alive(self, svc: RunningService) -> tuple[bool, str]:
        """Whether ``svc``'s container still runs (and why not)."""
        from docker.errors import NotFound

        with docker_errors(f"inspect {svc.role}"):
            try:
                svc.container.reload()
            except NotFound:
                return False, "container was removed"
        state = svc.container.attrs.get("State") or {}
        if svc.container.status != "running":
            return False, f"container {svc.container.status} (exit code {state.get('ExitCode')}, " \
                          f"OOM killed: {bool(state.get('OOMKilled'))})"
        return True, ""

    # -- one-shot commands, loopback only
    def start_command(self, image: str, command: Sequence[str], role: str) -> Any:
        """Start ``command`` in a fresh hardened container with no network at all; returns the container."""
        with docker_errors(role):
            c = self.client.containers.run(image, list(command), network_mode="none", **self.hardened(image, role))
        return c

    def wait_command(self, container: Any, timeout: float, role: str, started: float | None = None) -> CommandResult:
        """Wait for a ``start_command`` container; kill it at ``timeout`` s after ``started`` (timed out)."""
        import docker.errors

        started = time.monotonic() if started is None else started
        end = started + self.cap(timeout, role)
        timed_out = False
        with docker_errors(role):
            while True:
                container.reload()
                if container.status in ("exited", "dead"):
                    break
                if time.monotonic() > end:
                    timed_out = True
                    with contextlib.suppress(docker.errors.APIError):  # it may have exited just now
                        container.kill()
                    break
                time.sleep(0.1)
            container.reload()
            code = None if timed_out else container.attrs["State"].get("ExitCode")
            output = container.logs(stdout=True, stderr=True, tail=2000).decode(errors="replace")
        return CommandResult(code, output, time.monotonic() - started, timed_out)

    def run_command(self, image: str, command: Sequence[str], timeout: float, role: str) -> CommandResult:
        """``start_command`` then ``wait_command``."""
        started = time.monotonic()
        return self.wait_command(self.start_command(image, command, role), timeout, role, started)

    def exec(self, svc: RunningService, command: Sequence[str]) -> tuple[int, str]:
        """Run ``command`` inside the running service container (same user and restrictions)."""
        with docker_errors(f"exec in {svc.role}"):
            code, out = svc.container.exec_run(list(command), stdout=True, stderr=True)
        return int(code), out.decode(errors="replace")

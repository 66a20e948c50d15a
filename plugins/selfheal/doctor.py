"""Installation checks: each verifies one prerequisite for real and, when it
fails, says what to fix. Used by the `selfheal_doctor` DAG and `selfheal doctor`.

Pure core: no Airflow imports; callers pass URLs and clients in.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa

MIN_HAPROXY = (2, 6)


class CheckFailed(RuntimeError):
    """A prerequisite is missing; the message says what to fix."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def raise_if_failed(self) -> CheckResult:
        if not self.ok:
            raise CheckFailed(f"{self.name}: {self.detail}. To fix: {self.fix}")
        return self


def check_triage_db(url: str) -> CheckResult:
    """The triage DB answers and is migrated to the newest Alembic revision."""
    from selfheal.triage import migrate
    from selfheal.triage.db import masked

    shown = masked(url)
    try:
        current = migrate.current(url)
    except sa.exc.SQLAlchemyError as e:
        first = str(e.orig if getattr(e, "orig", None) else e).strip().splitlines()[0]
        return CheckResult(
            "triage_db", False, f"cannot connect to {shown}: {first}",
            "start PostgreSQL (scripts/services.sh start postgres) or set the `selfheal_triage` "
            "connection / SELFHEAL_DATABASE_URL to a reachable database",
        )
    head = migrate.head()
    if current != head:
        return CheckResult(
            "triage_db", False, f"{shown} is at revision {current or 'none'}, newest is {head}",
            "run `selfheal db upgrade` (or the Airflow task that migrates it)",
        )
    return CheckResult("triage_db", True, f"{shown} reachable, schema at {head}")


def check_docker(client: Any) -> CheckResult:
    """The Docker engine answers (sandboxes and the docker deployment backend need it)."""
    try:
        client.ping()
        version = client.version().get("Version", "?")
    except Exception as e:  # noqa: BLE001 - docker-py raises many types; all mean "not answering"
        return CheckResult(
            "docker_engine", False, f"Docker engine not answering: {e}",
            "start it (scripts/services.sh start docker, or `dockerd &` as root) and check DOCKER_HOST",
        )
    return CheckResult("docker_engine", True, f"Docker engine {version} answering")


def check_base_image(client: Any, tag: str) -> CheckResult:
    """The offline sandbox base image exists (no registry is reachable to pull one)."""
    try:
        image = client.images.get(tag)
    except Exception as e:  # noqa: BLE001 - ImageNotFound or APIError
        return CheckResult(
            "base_image", False, f"sandbox base image {tag} missing ({type(e).__name__})",
            f"build it: include/sandbox/base-image/build.sh {tag}",
        )
    return CheckResult("base_image", True, f"{tag} present ({image.short_id})")


def check_haproxy(binary: str = "haproxy") -> CheckResult:
    """HAProxy >= 2.6 is installed (the gateway needs dynamic servers and runtime ACLs)."""
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/local/sbin")
    fix = "install it: apt-get install -y haproxy (2.6 or newer)"
    if not path:
        return CheckResult("haproxy", False, f"{binary} not found on PATH", fix)
    out = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=10).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    if not m:
        return CheckResult("haproxy", False, f"{path} did not report a version", fix)
    version = (int(m.group(1)), int(m.group(2)))
    if version < MIN_HAPROXY:
        return CheckResult("haproxy", False, f"{path} is {version[0]}.{version[1]}, need >= 2.6", fix)
    return CheckResult("haproxy", True, f"{path} {version[0]}.{version[1]}")


def check_http_endpoint(name: str, url: str, timeout: float = 3.0) -> CheckResult:
    """A scanner API's TCP endpoint accepts connections (auth is checked by its hook)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        return CheckResult(
            name, False, f"{host}:{port} not answering ({e.strerror or e})",
            f"start the scanner or fix the `{name}` Airflow connection's host/port",
        )
    return CheckResult(name, True, f"{host}:{port} answering")


def check_unix_socket(name: str, path: str, timeout: float = 3.0) -> CheckResult:
    """A scanner daemon's Unix socket (gvmd) accepts connections."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except OSError as e:
        return CheckResult(
            name, False, f"socket {path} not answering ({e.strerror or e})",
            f"start the scanner daemon or fix the `{name}` connection's socket path",
        )
    finally:
        s.close()
    return CheckResult(name, True, f"socket {path} answering")

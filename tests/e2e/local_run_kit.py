"""Helpers for the tests that run the README's `make up` / `make down` (scripts/airflow-local.sh)
in a private run directory: free ports, an own Docker network, and the checks that `down` left
nothing running."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port: int, method: str, path: str, token: str | None = None, body: dict | None = None) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
    )
    # Generous: on 2 loaded cores the API server can take seconds to answer its first calls.
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"{}")


def remove_private_postgres(run_dir: Path) -> None:
    """The stopped private cluster scripts/services.sh made for this run directory (under /tmp)."""
    import hashlib
    import shutil

    key = hashlib.sha1(str(run_dir).encode()).hexdigest()[:10]  # the key services.sh uses
    pg = Path(f"/tmp/selfheal-pg-{key}")
    if pg.is_dir() and not (pg / "data" / "postmaster.pid").exists():
        shutil.rmtree(pg, ignore_errors=True)


def stack_env(run_dir: Path) -> dict[str, str]:
    """A private run directory, free ports and an own Docker network: never the user's `make up`."""
    return {"SELFHEAL_RUN_DIR": str(run_dir), "SELFHEAL_GATEWAY_PORT": str(free_port()),
            "SELFHEAL_GATEWAY_STATS_PORT": str(free_port()), "SELFHEAL_MOTO_PORT": str(free_port()),
            "SELFHEAL_DOCKER_NETWORK": f"selfheal-e2e-{uuid.uuid4().hex[:8]}"}


def assert_stack_gone(stack: dict) -> None:
    """HAProxy and the AWS stand-in stopped; the stack's containers and network removed."""
    import docker

    for what in ("haproxy", "moto"):
        pid = stack[what]["pid"]
        assert running_members(pid) == [] and not _runs(pid), f"{what} (pid {pid}) still runs"
    client = docker.from_env()
    try:
        left = client.containers.list(all=True, filters={"label": f"selfheal.stack={stack['stack_id']}"})
        assert left == [], [c.name for c in left]
        assert not [n for n in client.networks.list(names=[stack["network"]]) if n.name == stack["network"]]
    finally:
        client.close()


def _runs(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def running_members(pgid: int) -> list[str]:
    """Group members that still run. A zombie has already exited; it only waits for its
    parent (or PID 1, which in a container may never reap) and holds no resources."""
    members = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    running = []
    for pid in members:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            continue
        if state != "Z":
            running.append(f"{pid} ({state}): {Path(f'/proc/{pid}/cmdline').read_bytes()[:200]!r}")
    return running

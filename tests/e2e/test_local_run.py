"""The README's run command starts Airflow standalone with our DAGs, its UI and
REST API answer on loopback, a DAG runs through the real scheduler, and the
stop command ends the whole process group and the demo stack (gateway, demo
target container, AWS stand-in). The demo run itself is skipped here
(SELFHEAL_DEMO=0); tests/e2e/test_demo.py runs it."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.airflow, pytest.mark.docker, pytest.mark.postgres]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(port: int, method: str, path: str, token: str | None = None, body: dict | None = None) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
    )
    # Generous: on 2 loaded cores the API server can take seconds to answer its first calls.
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"{}")


def test_make_up_starts_airflow_and_make_down_stops_it(tmp_path: Path, base_image: str) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(stack_env(tmp_path / "run"), SELFHEAL_AIRFLOW_PORT=str(port), SELFHEAL_BASE_IMAGE=base_image,
               SELFHEAL_DEMO="0")
    script = str(REPO / "scripts" / "airflow-local.sh")
    pgid = None
    stack: dict = {}
    try:
        up = subprocess.run([script, "up"], env=env, capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, up.stderr[-3000:]
        assert f"http://127.0.0.1:{port}" in up.stdout
        assert "demo run skipped" in up.stderr
        password = re.search(r"password\s+(\S+)", up.stdout).group(1)
        pgid = int((tmp_path / "run" / "airflow.pid").read_text())
        stack = json.loads((tmp_path / "run" / "stack" / "state.json").read_text())
        assert _call(port, "GET", "/api/v2/monitor/health")["metadatabase"]["status"] == "healthy"
        # The demo target answers through the gateway's front door (HAProxy -> container).
        with urllib.request.urlopen(f"http://127.0.0.1:{env['SELFHEAL_GATEWAY_PORT']}/health", timeout=10) as r:
            assert r.status == 200

        token = _call(port, "POST", "/auth/token", body={"username": "admin", "password": password})["access_token"]
        dags = {d["dag_id"]: d for d in _call(port, "GET", "/api/v2/dags", token)["dags"]}
        assert "selfheal_doctor" in dags and not dags["selfheal_doctor"]["is_paused"]
        run = _call(port, "POST", "/api/v2/dags/selfheal_doctor/dagRuns", token, {"logical_date": None})
        deadline = time.monotonic() + 180
        state = run["state"]
        while state not in ("success", "failed") and time.monotonic() < deadline:
            time.sleep(2)
            state = _call(port, "GET", f"/api/v2/dags/selfheal_doctor/dagRuns/{run['dag_run_id']}", token)["state"]
        tis = _call(port, "GET", f"/api/v2/dags/selfheal_doctor/dagRuns/{run['dag_run_id']}/taskInstances", token)
        assert state == "success", {t["task_id"]: t["state"] for t in tis["task_instances"]}
    finally:
        down = subprocess.run([script, "down"], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert pgid is not None
    assert _running_members(pgid) == [], f"processes left in Airflow's group {pgid}"
    assert stack, "make up wrote no stack state"
    assert_stack_gone(stack)
    remove_private_postgres(tmp_path / "run")


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
    return {"SELFHEAL_RUN_DIR": str(run_dir), "SELFHEAL_GATEWAY_PORT": str(_free_port()),
            "SELFHEAL_GATEWAY_STATS_PORT": str(_free_port()), "SELFHEAL_MOTO_PORT": str(_free_port()),
            "SELFHEAL_DOCKER_NETWORK": f"selfheal-e2e-{uuid.uuid4().hex[:8]}"}


def assert_stack_gone(stack: dict) -> None:
    """HAProxy and the AWS stand-in stopped; the stack's containers and network removed."""
    import docker

    for what in ("haproxy", "moto"):
        pid = stack[what]["pid"]
        assert _running_members(pid) == [] and not _runs(pid), f"{what} (pid {pid}) still runs"
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


def _running_members(pgid: int) -> list[str]:
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

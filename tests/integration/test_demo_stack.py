"""`selfheal stack up/down` with the real components: HAProxy, Docker (the demo target's image and
container), PostgreSQL (desired state, deployments, audit), moto in server mode over HTTP.

One test walks the life of a stack: up -> the demo target answers through the gateway and the AWS
stand-in serves the demo's findings to real boto3 -> up again changes nothing -> the gateway is
SIGKILLed and `up` restarts it and reconciles it from the desired state -> down stops exactly what
up started and leaves no process, container or network behind -> up once more redeploys the release
the deployments table records.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from selfheal import aws_standin, stack
from selfheal.gateway.state import SqlStateStore

pytestmark = [pytest.mark.docker, pytest.mark.postgres]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read()


def _wait_gone(pid: int, marker: str, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not aws_standin.pid_running(pid, marker):
            return True
        time.sleep(0.1)
    return False


def test_stack_lifecycle(tmp_path: Path, migrated_triage_url: str, base_image: str, docker_client) -> None:
    cfg = stack.StackConfig.from_env({
        "SELFHEAL_RUN_DIR": str(tmp_path / "run"), "SELFHEAL_DATABASE_URL": migrated_triage_url,
        "SELFHEAL_BASE_IMAGE": base_image, "SELFHEAL_GATEWAY_PORT": str(_free_port()),
        "SELFHEAL_GATEWAY_STATS_PORT": str(_free_port()), "SELFHEAL_MOTO_PORT": str(_free_port()),
        "SELFHEAL_DOCKER_NETWORK": f"selfheal-it-{uuid.uuid4().hex[:8]}",
    })
    lines: list[str] = []
    try:
        first = stack.up(cfg, lambda step, detail, s: lines.append(step))
        assert lines == ["triage db", "demo repository", "catalog", "gateway", "reconcile", "image", "baseline",
                         "front door", "aws stand-in"]
        status, body = _get(f"{cfg.front_door}/api/items?category=books")
        assert status == 200 and json.loads(body)[0]["category"] == "books"
        assert first["release"]["deployed"] and first["release"]["weights"] == {"blue": 100}

        # Desired state and the deployment are in Postgres; the baseline is an audit entry.
        servers = SqlStateStore(migrated_triage_url).list_servers("demo-target")
        assert [(s.name, s.weight, s.state) for s in servers] == [("blue", 100, "ready")]
        engine = sa.create_engine(migrated_triage_url)
        with engine.connect() as c:
            dep = c.execute(sa.text("SELECT color, weight, image FROM deployments")).one()
            actions = c.execute(sa.text("SELECT action FROM audit_log ORDER BY seq")).scalars().all()
        engine.dispose()
        assert (dep.color, dep.weight) == ("blue", 100) and dep.image.startswith("selfheal/demo-target:commit-")
        assert "deploy.baseline" in actions

        # The AWS stand-in answers real boto3 with the demo's Inspector2 findings.
        import boto3

        client = boto3.client("inspector2", endpoint_url=cfg.moto_url, region_name="us-east-1",
                              aws_access_key_id=aws_standin.ACCESS_KEY, aws_secret_access_key=aws_standin.SECRET_KEY)
        found = client.list_findings(maxResults=100)["findings"]
        assert {f["packageVulnerabilityDetails"]["vulnerabilityId"] for f in found} == {
            "CVE-2024-22195", "CVE-2024-34064", "CVE-2025-27516", "CVE-2021-3744"}

        # Re-running changes nothing.
        again = stack.up(cfg)
        assert again["haproxy"]["pid"] == first["haproxy"]["pid"] and again["moto"]["pid"] == first["moto"]["pid"]
        assert again["release"]["deployed"] is False

        # A crashed gateway comes back from the desired state: same container, same weights.
        os.kill(first["haproxy"]["pid"], signal.SIGKILL)
        assert _wait_gone(first["haproxy"]["pid"], "haproxy")
        revived = stack.up(cfg)
        assert revived["haproxy"]["pid"] != first["haproxy"]["pid"]
        assert revived["release"]["deployed"] is False
        assert _get(f"{cfg.front_door}/health")[0] == 200
    finally:
        out = stack.down(cfg)
    state_pids = [(first["haproxy"]["pid"], "haproxy"), (revived["haproxy"]["pid"], "haproxy"),
                  (first["moto"]["pid"], aws_standin.MARKER)]
    assert all(_wait_gone(pid, marker, 1.0) for pid, marker in state_pids)
    assert len(out["containers"]) == 1 and out["network"] == cfg.network
    assert docker_client.containers.list(all=True, filters={"label": f"{stack.STACK_LABEL}={cfg.stack_id}"}) == []
    assert not [n for n in docker_client.networks.list(names=[cfg.network]) if n.name == cfg.network]
    assert SqlStateStore(migrated_triage_url).list_servers("demo-target") == []
    assert not cfg.state_file.exists()
    assert stack.down(cfg)["stopped"] == []  # a second down finds nothing to stop

    # Up again: the release recorded in `deployments` (what the pipeline last promoted) comes back.
    try:
        back = stack.up(cfg)
        assert back["release"]["deployed"] and back["release"]["from"] == "deployments"
        assert back["release"]["image"] == first["release"]["image"]
        assert _get(f"{cfg.front_door}/health")[0] == 200
    finally:
        stack.down(cfg)

"""The README's run command end to end: `make up` (scripts/airflow-local.sh up) starts Airflow
standalone with our DAGs, the services and the demo stack, then runs the demo through the real
scheduler (scan -> triage -> virtual patch -> sandbox -> approval over REST -> canary ->
promotion, then a bad patch rolled back) and prints its stages and JSON summary; the UI and REST
API answer; `up` again is idempotent; `make down` leaves no process, container or network behind.

Slow (a real Airflow, real Wapiti, Docker builds, canaries judged on live traffic): about 8-10
minutes on 2 cores. One test on purpose: a second `make up` would cost as much again.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.local_run_kit import (
    assert_stack_gone,
    call,
    free_port,
    remove_private_postgres,
    running_members,
    stack_env,
)

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.airflow, pytest.mark.docker, pytest.mark.postgres]
DAGS = {"selfheal_doctor", "selfheal_scan", "selfheal_inspector_sync", "selfheal_remediate",
        "selfheal_reviewed_patch", "selfheal_maintenance"}


def test_make_up_runs_the_demo_and_make_down_cleans_up(tmp_path: Path, base_image: str) -> None:
    run = tmp_path / "run"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k != "SELFHEAL_DATABASE_URL"}
    env.update(stack_env(run), SELFHEAL_AIRFLOW_PORT=str(port), SELFHEAL_BASE_IMAGE=base_image, SELFHEAL_DEMO="1")
    script = str(REPO / "scripts" / "airflow-local.sh")
    pgid = None
    stack: dict = {}
    try:
        up = subprocess.run([script, "up"], env=env, capture_output=True, text=True, timeout=3600)
        (tmp_path / "up.stdout").write_text(up.stdout)
        (tmp_path / "up.stderr").write_text(up.stderr)
        stack = json.loads((run / "stack" / "state.json").read_text())
        pgid = int((run / "airflow.pid").read_text())
        assert up.returncode == 0, (up.stdout[-4000:], up.stderr[-3000:])
        assert f"http://127.0.0.1:{port}" in up.stdout
        password = re.search(r"password\s+(\S+)", up.stdout).group(1)

        path = Path(re.search(r"demo summary written to (\S+)", up.stdout).group(1))
        summary = json.loads(path.read_text())
        # One line per stage, with its timing, printed as it finished.
        for stage in ("scan", "virtual patch", "triage", "sandbox", "approval", "canary", "promotion", "rescan",
                      "rollback"):
            assert re.search(rf"✓ {stage}\b.*\d+\.\ds", up.stdout), (stage, up.stdout[-3000:])
        assert summary["findings_total"] > 0 and sum(summary["findings_by_severity"].values()) == \
            summary["findings_total"]
        assert isinstance(summary["exposure_window_s"], int | float) and 0 <= summary["exposure_window_s"] < 5
        assert re.search(r"✓ virtual patch .*probe GET /\S+=.+ -> 403", up.stdout), up.stdout[-3000:]
        assert isinstance(summary["detect_to_prod_s"], int | float) and summary["detect_to_prod_s"] > 0
        patched = {p["recipe"]: p for p in summary["patched"]}
        assert all(p["state"] == "promoted" for p in summary["patched"])
        # The SQL injection's code fix needs a human: approved over the REST API, then promoted by canary.
        assert {"code_fix", "config_hardening", "dependency_upgrade"} <= set(patched), summary["patched"]
        assert re.search(r"answered 'Approve' as user admin through PATCH", up.stdout)
        # The confirming rescan after the code fix no longer sees the SQL injection: resolved.
        fix = patched["code_fix"]["patch_id"]
        rescan = re.search(rf"✓ rescan .*confirming scan after {fix}: (\d+)/(\d+) of its findings resolved", up.stdout)
        assert rescan and rescan.group(1) == rescan.group(2) != "0", up.stdout[-3000:]
        # The deliberately slow release was caught by the canary judge on latency, not for another reason.
        assert summary["rolled_back"] and all(p["state"] == "rolled_back" for p in summary["rolled_back"])
        assert any("latency" in p["reason"] for p in summary["rolled_back"]), summary["rolled_back"]
        # Every rollout and rollback happened under live traffic without hurting it (zero downtime).
        users = summary["user_traffic"]
        assert users["sent"] > 1000 and users["failed"] <= users["sent"] * 0.01, users
        assert summary["ui"]["self_healing_page"].endswith("/plugin/self-healing")
        assert "AWS stand-in" in summary["aws"]

        # Every detection, decision, approval, sandbox result, traffic change, promotion and rollback of the
        # demo went to the hash-chained audit log, and the chain verifies.
        db = f"postgresql+psycopg://postgres@127.0.0.1:{(run / 'pg.port').read_text().strip()}/selfheal"
        audit = subprocess.run([str(REPO / ".venv" / "bin" / "selfheal"), "audit", "verify", "--json", "--url", db],
                               capture_output=True, text=True, timeout=120)
        assert audit.returncode == 0, (audit.stdout, audit.stderr)
        chain = json.loads(audit.stdout)
        assert chain["ok"] and chain["count"] > 50 and not chain["breaks"], chain

        # Airflow stays up for the user: REST API and UI answer, every DAG loaded and unpaused.
        assert call(port, "GET", "/api/v2/monitor/health")["metadatabase"]["status"] == "healthy"
        token = call(port, "POST", "/auth/token", body={"username": "admin", "password": password})["access_token"]
        dags = {d["dag_id"]: d for d in call(port, "GET", "/api/v2/dags?limit=100", token)["dags"]}
        assert set(dags) >= DAGS and not any(dags[d]["is_paused"] for d in DAGS)
        with urllib.request.urlopen(f"http://127.0.0.1:{env['SELFHEAL_GATEWAY_PORT']}/health", timeout=10) as r:
            assert r.status == 200  # the demo target through the gateway's front door

        # `make up` again on a running stack is idempotent (SELFHEAL_DEMO=0: not the whole demo again).
        again = subprocess.run([script, "up"], env={**env, "SELFHEAL_DEMO": "0"}, capture_output=True, text=True,
                               timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "already running" in again.stderr and "demo run skipped" in again.stderr
        assert int((run / "airflow.pid").read_text()) == pgid
    finally:
        down = subprocess.run([script, "down"], env=env, capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stderr
    assert pgid is not None and running_members(pgid) == [], f"processes left in Airflow's group {pgid}"
    assert stack, "make up wrote no stack state"
    assert_stack_gone(stack)
    remove_private_postgres(run)

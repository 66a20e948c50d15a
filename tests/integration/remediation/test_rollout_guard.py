"""The rollout step and its guard for real: Postgres, the Docker engine, HAProxy, the demo target.

* A rollout process SIGKILLed in the middle of a canary leaves traffic split; the guard (the DAG's
  teardown) puts 100 % back on the last good version, retires the half-deployed release and
  records the rollback with its reason; the finding is open again for a human.
* Re-running a finished rollout deploys nothing: no container, no traffic change, no new event
  or audit entry.
* One rollout per gateway: a second one waits for the lock and gives up with GatewayBusy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from selfheal.audit import ledger
from selfheal.patches.git import git
from selfheal.pipeline_state import rollout_events
from selfheal.policy.gate import default_gate
from selfheal.remediation import finalize
from selfheal.remediation import rollout as core
from selfheal.remediation.errors import GatewayBusy
from selfheal.remediation.store import PatchStore
from selfheal.runtime import gateway_settings
from tests.integration.remediation.kit import (
    SERVICE,
    Env,
    dump,
    ingest,
    retag,
    statuses,
    verified_patch,
    wait_until,
)
from tests.integration.sandbox.kit import demo_findings

pytestmark = [pytest.mark.docker, pytest.mark.postgres]

CHILD = Path(__file__).with_name("rollout_child.py")
REPO_ROOT = Path(__file__).resolve().parents[3]


def _jinja_finding(env: Env) -> int:
    ids = ingest(env.engine, [f for f in demo_findings() if f.kind == "dependency"])
    return next(iter(ids.values()))


def _patch(env: Env, demo_repo: Path, name: str) -> str:
    fid = _jinja_finding(env)
    image = retag(env.client, env.baseline.image, f"selfheal/demo-target:test-{env.run_id}-{name}")
    return verified_patch(env, [fid], image, base_commit=git(demo_repo, "rev-parse", "HEAD"), name=name)


def _settings(env: Env) -> tuple[object, core.RolloutSettings]:
    return gateway_settings(env.gateway.settings_json), core.RolloutSettings.from_json(json.dumps(env.settings))


def test_sigkill_mid_canary_then_guard_restores_the_last_good_version(env: Env, demo_repo: Path) -> None:
    pid = _patch(env, demo_repo, "kill")
    finding = PatchStore(env.engine).require(pid).finding_ids[0]
    # A long analysis window: the canary holds at 50 % (no load, so no verdict) until the kill.
    slow = {**env.settings, "analysis": {**env.settings["analysis"], "min_window_s": 120.0, "max_window_s": 300.0}}
    args = {"url": env.url, "catalog": str(env.catalog_path), "gateway": env.gateway.settings_json,
            "rollout": json.dumps(slow), "patch_id": pid}
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), json.dumps(args)], cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'plugins'}:{REPO_ROOT}"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        def split() -> bool:
            with env.engine.connect() as c:
                kinds = [r.detail.get("weights") for r in c.execute(
                    sa.select(rollout_events.c.detail).where(rollout_events.c.patch_id == pid,
                                                             rollout_events.c.kind == "traffic"))]
            return any(w and min(w.values()) > 0 for w in kinds)

        wait_until(lambda: split() or proc.poll() is not None, 180, "the canary's first traffic step")
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # Killed half way: the strategy's own restore never ran.
    split_weights = env.weights()
    assert len(split_weights) == 2 and set(split_weights.values()) == {50}, split_weights
    sp = PatchStore(env.engine).require(pid)
    assert sp.state == "deploying" and statuses(env.engine)[finding] == "patching"

    gw, settings = _settings(env)
    t0 = time.monotonic()
    out = core.guard(env.engine, env.catalog, pid, gw_settings=gw, settings=settings, client=env.client,
                     why="the rollout task was killed")
    print(json.dumps({"guard_s": round(time.monotonic() - t0, 2), "out": out}))
    assert out["action"] == "restored", out
    assert env.weights() == {"blue": 100}
    assert env.live_image() == env.baseline_id
    assert [r.color for r in env.backend.releases(SERVICE)] == ["blue"]  # the half-deployed one retired
    status, _ = env.gateway.get("/health")
    assert status == 200
    sp = PatchStore(env.engine).require(pid)
    assert sp.state == "rolled_back" and "killed" in sp.record.reason, sp.record.reason
    assert statuses(env.engine)[finding] == "open"  # no virtual patch for a dependency: open for a human
    rb = env.audit(subject=f"patch:{pid}", action="rollback")
    assert len(rb) == 1 and "killed" in rb[0].payload["reason"] and rb[0].payload["restored_weights"] == {"blue": 100}
    restores = [e for e in env.audit(subject=f"patch:{pid}", action="traffic_change")
                if "restore" in e.payload["reason"]]
    assert restores and restores[-1].payload["weights"] == {"blue": 100}
    # A second guard (a retried teardown) changes nothing.
    before = len(env.audit())
    again = core.guard(env.engine, env.catalog, pid, gw_settings=gw, settings=settings, client=env.client)
    assert again["action"] == "none" or again["action"] == "checked", again
    assert len(env.audit()) == before
    assert ledger.verify(env.engine).ok


def test_a_finished_rollout_run_again_deploys_nothing(env: Env, demo_repo: Path) -> None:
    pid = _patch(env, demo_repo, "rerun")
    gw, settings = _settings(env)
    load = env.gateway.load().start()
    try:
        time.sleep(2)  # baseline samples
        out = core.run(env.engine, env.catalog, pid, gate=default_gate(), gw_settings=gw, settings=settings,
                       client=env.client)
    finally:
        load.stop()
    sp = PatchStore(env.engine).require(pid)
    assert out["outcome"] == "promoted" and out["deployed_now"], dump({"out": out, "rollout": sp.record.rollout})
    finalize.promote(env.engine, env.catalog, pid, gateway=env.backend.gateway, backend=env.backend)
    assert PatchStore(env.engine).require(pid).state == "promoted"
    live = env.live_image()
    containers = sorted(c.id for c in env.containers())
    with env.engine.connect() as c:
        events = c.execute(sa.select(sa.func.count()).select_from(rollout_events)).scalar_one()
    audit_n = len(env.audit())

    again = core.run(env.engine, env.catalog, pid, gate=default_gate(), gw_settings=gw, settings=settings,
                     client=env.client)
    assert again == {"outcome": "promoted", "reason": sp.record.reason or again["reason"], "deployed_now": False}
    assert finalize.promote(env.engine, env.catalog, pid, gateway=env.backend.gateway) is not None
    assert sorted(c.id for c in env.containers()) == containers
    assert env.live_image() == live
    with env.engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(rollout_events)).scalar_one() == events
    assert len(env.audit()) == audit_n
    assert ledger.verify(env.engine).ok


def test_one_rollout_per_gateway(env: Env, demo_repo: Path) -> None:
    pid = _patch(env, demo_repo, "busy")
    gw, settings = _settings(env)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with core.gateway_lock(gw.run_dir, 5):
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    try:
        assert held.wait(5)
        quick = core.RolloutSettings(settings.docker, settings.analysis, lock_timeout_s=0.5)
        with pytest.raises(GatewayBusy, match="another rollout"):
            core.run(env.engine, env.catalog, pid, gate=default_gate(), gw_settings=gw, settings=quick,
                     client=env.client)
    finally:
        release.set()
        t.join(10)
    sp = PatchStore(env.engine).require(pid)
    assert sp.state == "verified" and env.weights() == {"blue": 100}  # nothing moved


def test_observe_mode_verifies_but_only_reports_what_it_would_deploy(env: Env, demo_repo: Path,
                                                                     tmp_path: Path) -> None:
    from selfheal.catalog import load_catalog
    from selfheal.remediation import approval
    from tests.integration.remediation.kit import write_catalog

    observe = load_catalog(write_catalog(tmp_path / "observe.yaml", demo_repo, mode="observe"))
    pid = _patch(env, demo_repo, "observe")
    with PatchStore(env.engine).edit(pid) as sp:
        sp.policy = {}  # the real policy decides, with the service in observe mode
    containers = sorted(c.id for c in env.containers())
    step = approval.prepare(env.engine, default_gate(), observe, pid)
    assert step.action == "pass" and "dry run" in step.reason, step
    gw, settings = _settings(env)
    out = core.prepare(env.engine, observe, pid, gw_settings=gw, settings=settings, client=env.client)
    assert out["action"] == "dry_run" and "no traffic touched" in out["reason"], out
    ran = core.run(env.engine, observe, pid, gate=default_gate(), gw_settings=gw, settings=settings,
                   client=env.client)
    assert ran["outcome"] == "skip" and not ran["deployed_now"]
    sp = PatchStore(env.engine).require(pid)
    assert sp.state == "verified" and sp.policy["final"]["effective_mode"] == "observe"
    assert sp.policy["final"]["dry_run"] is True and "snapshot" not in sp.record.rollout
    (dry,) = env.audit(subject=f"patch:{pid}", action="dry_run")
    assert dry.payload["would"]["image"] == sp.record.image_tag and dry.payload["would"]["strategy"] == "canary"
    assert env.weights() == {"blue": 100} and sorted(c.id for c in env.containers()) == containers
    with env.engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(rollout_events)).scalar_one() == 0

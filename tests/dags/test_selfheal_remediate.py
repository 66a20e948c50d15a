"""selfheal_remediate and selfheal_reviewed_patch for real under dag.test(): the real triage database
(Postgres), the real Docker engine (sandbox builds and the demo target's releases), a real HAProxy
in front of them, the real Wapiti for the sandbox's rescan, the demo target's documented flaws.

* happy path: the SQL injection and the Jinja2 CVE are ingested; the instant virtual patch blocks the
  exploit at the gateway; the code fix is verified, sent to a human by policy, approved (answered
  here through Airflow's own HITL response handler, as the Required Actions page does) and promoted
  by canary; the dependency upgrade, re-planned on top of what now runs, is verified and promoted
  automatically; confirming rescans are requested; the audit chain verifies. Clearing and
  re-running the rollout task then deploys nothing.
* a bad patch (a latency regression on a route the sandbox's own latency probe does not exercise) is rolled
  back by the canary analysis: the virtual patch stays, the finding is back with a reason for a
  human, the audit says why.
* a rejection in the approval step deploys nothing.
* a rollout task that fails mid-canary (its execution timeout fires while traffic is split) leaves
  100 % on the last good version: the guard teardown restores it. (The SIGKILL case, where nothing in
  the task runs, is tests/integration/remediation/test_rollout_guard.py: the same guard.)
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from airflow.utils.state import DagRunState, TaskInstanceState

from selfheal import demo
from selfheal.audit import ledger
from selfheal.patches.diffs import changed_files
from selfheal.patches.git import git
from selfheal.patches.model import plan_id
from selfheal.pipeline_state import rollout_events
from selfheal.remediation.planning import store_plan
from selfheal.remediation.store import PatchStore
from selfheal.triage.schema import findings as F
from selfheal.triage.schema import status_changes
from tests.integration.remediation.kit import (
    SERVICE,
    SQLI_ERROR_PROBE,
    SQLI_PROBE,
    XSS_PROBE,
    Env,
    baseline_image,
    dump,
    ingest,
    loop_env,
    retag,
    statuses,
    verified_patch,
    write_catalog,
)
from tests.integration.sandbox.kit import PARAMETERIZED, VULNERABLE, demo_findings, make_commit

pytestmark = [pytest.mark.airflow, pytest.mark.docker, pytest.mark.postgres]

DAG_ID = "selfheal_remediate"
REVIEWED = "selfheal_reviewed_patch"
APPROVER = "alice"
# The route the bad patch slows down: hit by the live load, not by the sandbox's latency probe.
SLOW_ROUTE = "def categories(conn: Conn) -> list[dict[str, Any]]:"


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def demo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo.init_repo(tmp_path_factory.mktemp("remediate-dag") / "target-api")


@pytest.fixture(scope="module")
def catalog_path(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_catalog(tmp_path_factory.mktemp("catalog") / "services.yaml", demo_repo)


@pytest.fixture(scope="module")
def demo_baseline(docker_client, base_image: str, demo_repo: Path) -> str:
    return baseline_image(docker_client, demo_repo, base_image)


@pytest.fixture
def loop(airflow_db, migrated_triage_url: str, catalog_path: Path, docker_client, demo_baseline: str,
         wapiti_bin: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """The demo target live behind its gateway; the DAG's Variables and settings pointing at them."""
    monkeypatch.setenv("SELFHEAL_CATALOG", str(catalog_path))
    monkeypatch.setenv("SELFHEAL_DATABASE_URL", migrated_triage_url)
    monkeypatch.setenv("SELFHEAL_WAPITI", str(wapiti_bin))
    with loop_env(migrated_triage_url, catalog_path, docker_client, demo_baseline) as env:
        monkeypatch.setenv("AIRFLOW_VAR_SELFHEAL_GATEWAY", env.gateway.settings_json)
        monkeypatch.setenv("AIRFLOW_VAR_SELFHEAL_ROLLOUT", json.dumps(env.settings))
        yield env


class Responder(threading.Thread):
    """A human at the Required Actions page: answers each HITL request of the run as ``choose`` says,
    through Airflow's own response handler (the function behind PATCH .../hitlDetails)."""

    def __init__(self, choose: Callable[[dict[str, Any]], str], seen: Callable[[dict[str, Any]], None] | None = None):
        super().__init__(daemon=True)
        self.choose, self.seen = choose, seen
        self.requests: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
        from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
        from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
        from airflow.models.hitl import HITLDetail
        from airflow.models.taskinstance import TaskInstance as TI
        from airflow.utils.session import create_session

        answered: set[str] = set()
        while not self.stop.wait(0.5):
            try:
                with create_session() as s:
                    for ti in s.query(TI).filter(TI.state == TaskInstanceState.AWAITING_INPUT).all():
                        if str(ti.id) in answered:
                            continue
                        d = s.query(HITLDetail).filter(HITLDetail.ti_id == ti.id).one_or_none()
                        if d is None:
                            continue
                        req = {"dag_id": ti.dag_id, "task_id": ti.task_id, "map_index": ti.map_index,
                               "subject": d.subject, "body": d.body, "options": list(d.options)}
                        if self.seen is not None:
                            self.seen(req)
                        req["answer"] = choice = self.choose(req)
                        self.requests.append(req)
                        update_hitl_detail(
                            ti.dag_id, ti.run_id, ti.task_id,
                            UpdateHITLDetailPayload(chosen_options=[choice], params_input={}),
                            user=SimpleAuthManagerUser(username=APPROVER, role="admin"), session=s,
                            map_index=ti.map_index,
                        )
                        answered.add(str(ti.id))
            except Exception as e:  # noqa: BLE001 - reported by the test, never swallowed silently
                self.errors.append(f"{type(e).__name__}: {e}")

    def __enter__(self) -> Responder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(10)


def _run(dag: Any, env: Env, responder: Responder | None = None, **kw: Any) -> tuple[Any, dict, float]:
    """One dag.test() run under steady load through the gateway; (dag run, {(task, index): state}, seconds)."""
    load = env.gateway.load().start()
    t0 = time.monotonic()
    try:
        time.sleep(1.0)  # baseline samples for the canary's first window
        if responder is not None:
            with responder:
                dr = dag.test(**kw)
        else:
            dr = dag.test(**kw)
    finally:
        load.stop()
    seconds = time.monotonic() - t0
    states = {(ti.task_id, ti.map_index): ti.state for ti in dr.get_task_instances()}
    if responder is not None:
        assert not responder.errors, responder.errors
    return dr, states, seconds


def _patch_states(dr: Any) -> dict[str, str]:
    """patch.<task> -> state, for a run that mapped exactly one patch."""
    out = {}
    for ti in dr.get_task_instances():
        if ti.task_id.startswith("patch."):
            assert ti.map_index == 0, f"more than one patch mapped: {ti.task_id}[{ti.map_index}]"
            out[ti.task_id.removeprefix("patch.")] = ti.state
    return out


def _mapped_patch_ids(dr: Any) -> list[str]:
    return dr.get_task_instance("policy").xcom_pull(task_ids="policy")


def _findings(env: Env) -> dict[str, int]:
    """The demo's SQL injection (Wapiti's recorded report, with its request) and Jinja2 CVE, ingested."""
    ids = ingest(env.engine, demo_findings())
    with env.engine.connect() as c:
        rows = c.execute(sa.select(F.c.id, F.c.kind)).all()
    assert len(ids) == 2
    return {r.kind: r.id for r in rows}


def _exploit_works(env: Env) -> None:
    status, body = env.gateway.get(SQLI_ERROR_PROBE)
    assert status == 500 and b"sqlite3.OperationalError" in body, (status, body[:200])
    status, body = env.gateway.get(XSS_PROBE)
    assert status == 200 and b"data-x onmouseover=alert(1)" in body, (status, body[:200])


def _timed(name: str, seconds: float) -> None:
    print(json.dumps({"dag_test": name, "seconds": round(seconds, 1)}))


# ------------------------------------------------------------------------------------ tests


def test_dag_shape_serialization_and_failure_semantics(dagbag) -> None:
    dag = dagbag.get_dag(DAG_ID)
    assert dag is not None and dag.max_active_runs == 1 and "selfheal" in dag.tags
    assert dag.timetable.asset_condition.name == "selfheal_findings"  # event-driven (plus an hourly catch-up)
    group = ["sandbox", "approval", "prepare_rollout", "rollout", "analysis", "promote", "rollback",
             "request_rescan", "guard"]
    assert {t.task_id for t in dag.tasks} == {"mitigate", "select_findings", "plan", "policy",
                                             *(f"patch.{t}" for t in group)}
    rollout = dag.get_task("patch.rollout")
    assert rollout.max_active_tis_per_dagrun == 1
    guard = dag.get_task("patch.guard")
    assert guard.is_teardown and guard.trigger_rule == "all_done_setup_success"
    assert dag.get_task("patch.prepare_rollout").is_setup
    assert {"patch.prepare_rollout", "patch.rollback", "patch.request_rescan"} <= guard.upstream_task_ids
    policy = rollout.retry_policy
    from selfheal.remediation.errors import GatewayBusy, UnknownPatch

    assert policy.evaluate(GatewayBusy("busy"), 1, 3).action.value == "retry"
    assert policy.evaluate(sa.exc.OperationalError("x", {}, ConnectionError()), 1, 3).action.value == "retry"
    assert policy.evaluate(UnknownPatch("p"), 1, 3).action.value == "fail"
    assert policy.evaluate(ValueError("bug"), 1, 3).action.value == "fail"
    reviewed = dagbag.get_dag(REVIEWED)
    assert set(reviewed.params.keys()) == {"patch_id", "strategy", "confirm"}
    assert reviewed.get_task("guard").is_teardown and reviewed.get_task("rollout").max_active_tis_per_dagrun == 1


def test_happy_path_virtual_patch_then_code_fix_approved_and_dependency_upgrade_promoted(
    dagbag, loop: Env, demo_repo: Path
) -> None:
    env = loop
    dag = dagbag.get_dag(DAG_ID)
    ids = _findings(env)
    _exploit_works(env)
    probes: dict[str, Any] = {}

    def seen(req: dict[str, Any]) -> None:
        # While the human reads the form, the virtual patch (applied by the run's first task) holds.
        probes["sqli"] = env.gateway.get(SQLI_PROBE)[0]
        probes["sqli_error"] = env.gateway.get(SQLI_ERROR_PROBE)[0]
        probes["legit"] = env.gateway.get("/api/items?category=books")[0]

    # Run 1: one patch per service per run, the highest priority first: the SQL injection's code fix.
    responder = Responder(lambda req: "Approve", seen)
    dr, states, s1 = _run(dag, env, responder)
    _timed("happy run 1", s1)
    assert dr.state == DagRunState.SUCCESS, states
    assert probes == {"sqli": 403, "sqli_error": 403, "legit": 200}, probes
    store = PatchStore(env.engine)
    (code_fix,) = _mapped_patch_ids(dr)
    sp = store.require(code_fix)
    assert sp.record.recipe == "code_fix" and sp.finding_ids == [ids["web"]]
    ps = _patch_states(dr)
    assert ps["promote"] == ps["request_rescan"] == ps["guard"] == TaskInstanceState.SUCCESS, ps
    assert ps["rollback"] == TaskInstanceState.SKIPPED, ps
    # The form: finding, diff, sandbox checks, policy reasons.
    (req,) = responder.requests
    assert req["subject"] == f"Approve patch {code_fix} (code_fix) for {SERVICE}?"
    assert "code fixes always need a human review" in req["body"]
    assert "CWE-89" in req["body"] and "exploit\\_replay: passed" in req["body"] and "rescan: passed" in req["body"]
    assert "+" in req["body"] and PARAMETERIZED.split("\n")[0].split("=")[0] in req["body"]
    assert sp.state == "promoted" and sp.approval["approved"] is True and sp.approval["by"] == APPROVER
    assert sp.record.rollout["strategy"] == "canary" and sp.record.rollout["outcome"] == "promoted"
    # Promoted: the fix runs, the rule is off, the finding waits for its confirming rescan.
    assert env.live_image() == sp.record.image and env.weights() == {"green": 100}  # the verified image id
    assert env.backend.gateway.store.list_rules(SERVICE) == []
    status, body = env.gateway.get(SQLI_ERROR_PROBE)
    assert status == 200 and b"sqlite3" not in body, (status, body[:200])
    assert statuses(env.engine)[ids["web"]] == "patching"

    # Run 2: the dependency upgrade was planned on the old HEAD; re-planned on the live code fix,
    # verified and promoted automatically (no human asked: dependency upgrade on a medium tier).
    responder2 = Responder(lambda req: "Reject")
    dr2, states2, s2 = _run(dag, env, responder2)
    _timed("happy run 2", s2)
    assert dr2.state == DagRunState.SUCCESS, states2
    assert responder2.requests == []
    (dep,) = _mapped_patch_ids(dr2)
    dsp = store.require(dep)
    assert dsp.record.recipe == "dependency_upgrade" and dsp.state == "promoted", dump(dsp.record.to_dict())
    assert dsp.record.plan.base_commit == sp.record.commit  # built on what ran, so the code fix stays
    superseded = [p for p in store.list(states=["failed"]) if p.record.recipe == "dependency_upgrade"]
    assert len(superseded) == 1 and f"superseded by {dep}" in superseded[0].record.reason
    assert env.live_image() == dsp.record.image
    status, body = env.gateway.get(XSS_PROBE)  # Jinja2 3.1.6 refuses the key: HTTP 400, no card rendered
    assert status == 400 and b"<div" not in body, (status, body[:200])
    status, body = env.gateway.get(SQLI_ERROR_PROBE)
    assert status == 200 and b"sqlite3" not in body
    assert statuses(env.engine) == {ids["web"]: "patching", ids["dependency"]: "patching"}

    # Confirming rescans of the service were requested, one per promoted patch.
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as s:
        rescans = {r.run_id: r.conf for r in s.query(DagRun).filter(DagRun.dag_id == "selfheal_scan")}
    assert rescans == {f"rescan__{code_fix}": {"service": SERVICE}, f"rescan__{dep}": {"service": SERVICE}}

    # Audit: every step, with who and why; the chain verifies.
    acts = {e.action for e in env.audit()}
    assert {"detection", "mitigation", "decision", "sandbox_result", "approval", "admission", "traffic_change",
            "analysis", "promotion", "mitigation_removed", "rescan", "patch.superseded"} <= acts, acts
    (appr,) = env.audit(subject=f"patch:{code_fix}", action="approval")
    assert appr.actor == f"user:{APPROVER}" and appr.payload["by"] == APPROVER
    decisions = env.audit(subject=f"patch:{code_fix}", action="decision")
    assert any(d.payload["decision"] == "approval" and d.payload["phase"] == "final" for d in decisions)
    assert len(env.audit(action="detection")) == 2
    assert ledger.verify(env.engine).ok

    # (d) Clear the finished rollout task of run 2 and run it again: nothing is deployed twice.
    containers = sorted(c.id for c in env.containers())
    with env.engine.connect() as c:
        events = c.execute(sa.select(sa.func.count()).select_from(rollout_events)).scalar_one()
    entries = len(env.audit())
    _rerun_task(dag, dr2, "patch.rollout", 0)
    _rerun_task(dag, dr2, "patch.promote", 0)
    assert sorted(c.id for c in env.containers()) == containers
    assert env.live_image() == dsp.record.image and len(env.weights()) == 1
    with env.engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(rollout_events)).scalar_one() == events
    assert len(env.audit()) == entries
    assert store.require(dep).state == "promoted"


def _rerun_task(dag: Any, dr: Any, task_id: str, map_index: int) -> None:
    """Clear one finished task instance and run it again the way dag.test() runs a scheduled one."""
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.sdk.definitions.dag import _run_task
    from airflow.utils.session import create_session

    with create_session() as s:
        ti = s.query(TI).filter(TI.dag_id == dag.dag_id, TI.run_id == dr.run_id, TI.task_id == task_id,
                                TI.map_index == map_index).one()
        assert ti.state == TaskInstanceState.SUCCESS
        ti.try_number += 1
        ti.state = TaskInstanceState.SCHEDULED
        s.commit()
        s.refresh(ti)
        s.expunge(ti)
    _run_task(ti=ti, task=dag.task_dict[task_id])
    with create_session() as s:
        state = s.query(TI.state).filter(TI.id == ti.id).scalar()
    assert state == TaskInstanceState.SUCCESS, f"{task_id} re-run ended {state}"


def test_bad_patch_is_rolled_back_virtual_patch_stays_finding_back_to_a_human(
    dagbag, loop: Env, demo_repo: Path
) -> None:
    """The code fix plus a two-second sleep in the categories route: tests, exploit replay, rescan and the
    sandbox's latency probe (health and the finding's own path) all pass; live traffic does not."""
    env = loop
    dag = dagbag.get_dag(DAG_ID)
    ids = _findings(env)
    sqli = ids["web"]
    # The patch engine's plan for the finding, and a commit that also slows an unrelated route.
    from selfheal.catalog import load_catalog
    from selfheal.patches.planner import plan_repository
    from selfheal.remediation.planning import with_evidence
    from selfheal.remediation.selection import finding_rows

    service = load_catalog(env.catalog_path).get(SERVICE)
    found = with_evidence(env.engine, finding_rows(env.engine, [sqli]))
    (good,) = [p for p in plan_repository(list(found.values()), service, demo_repo) if p.recipe == "code_fix"]
    base = git(demo_repo, "rev-parse", "HEAD")

    def slow(text: str) -> str:
        assert SLOW_ROUTE in text
        return text.replace(SLOW_ROUTE, SLOW_ROUTE + "\n        time.sleep(2.0)").replace(
            "import sqlite3", "import sqlite3\nimport time", 1)

    edits = {"demo_api/db.py": lambda t: t.replace(VULNERABLE, PARAMETERIZED), "demo_api/main.py": slow}
    bad_commit = make_commit(demo_repo, base, f"slow-{env.run_id}", edits)
    diff = git(demo_repo, "diff", base, bad_commit) + "\n"
    bad = plan_id(SERVICE, "code_fix", [f.fingerprint for f in good.findings], base, diff)
    bad_plan = dataclasses.replace(good, id=bad, diff=diff, files=changed_files(diff),
                                   title="Parameterize the category query (and slow)")
    store_plan(env.engine, PatchStore(env.engine), bad_plan, str(demo_repo), [sqli], actor="test:planner")

    dr, states, seconds = _run(dag, env, Responder(lambda req: "Approve"))
    _timed("bad patch", seconds)
    assert dr.state == DagRunState.SUCCESS, states
    assert _mapped_patch_ids(dr) == [bad]
    ps = _patch_states(dr)
    sp = PatchStore(env.engine).require(bad)
    assert ps["rollback"] == TaskInstanceState.SUCCESS and ps["promote"] == TaskInstanceState.SKIPPED, ps
    assert sp.record.sandbox["passed"] is True, dump(sp.record.sandbox)
    assert sp.state == "rolled_back" and "p95 latency" in sp.record.reason, sp.record.reason
    # Traffic on the last good version, the virtual patch still blocks the exploit.
    assert env.weights() == {"blue": 100} and env.live_image() == env.baseline_id
    assert len(env.backend.gateway.store.list_rules(SERVICE)) == 1
    assert env.gateway.get(SQLI_ERROR_PROBE)[0] == 403
    # The finding is back in a human's queue, with the reason.
    assert statuses(env.engine)[sqli] == "mitigated"
    last = env.rows(status_changes, status_changes.c.finding_id == sqli)[-1]
    assert last["from_status"] == "patching" and "rolled back" in last["reason"] and "p95" in last["reason"]
    (rb,) = env.audit(subject=f"patch:{bad}", action="rollback")
    assert "p95 latency" in rb.payload["reason"] and rb.payload["virtual_patches_kept"]
    assert ledger.verify(env.engine).ok


def test_rejection_in_approval_deploys_nothing(dagbag, loop: Env) -> None:
    env = loop
    dag = dagbag.get_dag(DAG_ID)
    ids = _findings(env)
    containers = sorted(c.id for c in env.containers())
    dr, states, seconds = _run(dag, env, Responder(lambda req: "Reject"))
    _timed("rejection", seconds)
    assert dr.state == DagRunState.SUCCESS, states
    (pid,) = _mapped_patch_ids(dr)
    ps = _patch_states(dr)
    assert ps["approval"] == TaskInstanceState.SUCCESS
    assert {ps[t] for t in ("prepare_rollout", "rollout", "analysis", "promote", "rollback", "request_rescan",
                            "guard")} == {TaskInstanceState.SKIPPED}, ps
    sp = PatchStore(env.engine).require(pid)
    assert sp.state == "failed" and sp.record.reason.startswith(f"rejected by user:{APPROVER}")
    assert sp.approval["approved"] is False and sp.approval["by"] == APPROVER
    assert sorted(c.id for c in env.containers()) == containers and env.weights() == {"blue": 100}
    with env.engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(rollout_events)).scalar_one() == 0
    assert env.audit(action="traffic_change") == [] and env.audit(action="promotion") == []
    (rej,) = env.audit(subject=f"patch:{pid}", action="rejection")
    assert rej.actor == f"user:{APPROVER}"
    assert statuses(env.engine)[ids["web"]] == "mitigated"  # the virtual patch still protects it
    assert env.gateway.get(SQLI_ERROR_PROBE)[0] == 403


def test_rollout_failing_mid_canary_leaves_traffic_on_the_last_good_version(
    dagbag, loop: Env, demo_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = loop
    dag = dagbag.get_dag(DAG_ID)
    ids = ingest(env.engine, [f for f in demo_findings() if f.kind == "dependency"])
    fid = next(iter(ids.values()))
    image = retag(env.client, env.baseline.image, f"selfheal/demo-target:test-{env.run_id}-timeout")
    pid = verified_patch(env, [fid], image, base_commit=git(demo_repo, "rev-parse", "HEAD"), name="timeout")
    # The canary holds its 50 % step (a long analysis window) until the task's execution timeout fires.
    slow = {**env.settings, "analysis": {**env.settings["analysis"], "min_window_s": 300.0, "max_window_s": 600.0}}
    monkeypatch.setenv("AIRFLOW_VAR_SELFHEAL_ROLLOUT", json.dumps(slow))
    task = dag.get_task("patch.rollout")
    monkeypatch.setattr(task, "execution_timeout", timedelta(seconds=25))
    dr, states, seconds = _run(dag, env)
    _timed("rollout failure", seconds)
    assert dr.state == DagRunState.FAILED, states
    ps = _patch_states(dr)
    assert ps["rollout"] == TaskInstanceState.FAILED and ps["guard"] == TaskInstanceState.SUCCESS, ps
    with env.engine.connect() as c:
        moves = [r.detail["weights"] for r in c.execute(
            sa.select(rollout_events.c.detail).where(rollout_events.c.patch_id == pid,
                                                     rollout_events.c.kind == "traffic").order_by(rollout_events.c.id))]
    assert any(min(w.values()) > 0 for w in moves), moves  # traffic really was split when it failed
    assert env.weights() == {"blue": 100} and env.live_image() == env.baseline_id
    assert [r.color for r in env.backend.releases(SERVICE)] == ["blue"]
    sp = PatchStore(env.engine).require(pid)
    assert sp.state == "rolled_back" and "did not finish" in sp.record.reason, sp.record.reason
    assert statuses(env.engine)[fid] == "open"
    assert ledger.verify(env.engine).ok


def test_reviewed_patch_refuses_an_unverified_patch_and_an_unconfirmed_run(dagbag, loop: Env, demo_repo: Path) -> None:
    env = loop
    dag = dagbag.get_dag(REVIEWED)
    ids = ingest(env.engine, [f for f in demo_findings() if f.kind == "dependency"])
    fid = next(iter(ids.values()))
    image = retag(env.client, env.baseline.image, f"selfheal/demo-target:test-{env.run_id}-reviewed")
    pid = verified_patch(env, [fid], image, base_commit=git(demo_repo, "rev-parse", "HEAD"), name="reviewed")
    with PatchStore(env.engine).edit(pid) as sp:  # the sandbox did not pass on it after all
        sp.record.sandbox = {**sp.record.sandbox, "passed": False, "reason": "tests: 2 failed",
                             "checks": [{"name": "tests", "status": "failed", "reason": "2 failed"}]}
    dr = dag.test(run_conf={"patch_id": pid, "strategy": "blue_green", "confirm": True})
    assert dr.state == DagRunState.FAILED
    assert dr.get_task_instance("accept_review").state == TaskInstanceState.FAILED
    assert env.weights() == {"blue": 100} and len(env.containers()) == 1
    dr = dag.test(run_conf={"patch_id": pid, "strategy": "catalog", "confirm": False})
    assert dr.state == DagRunState.FAILED and env.audit(action="approval") == []


def test_reviewed_patch_rolls_out_blue_green_with_the_same_tasks(dagbag, loop: Env, demo_repo: Path) -> None:
    env = loop
    dag = dagbag.get_dag(REVIEWED)
    ids = ingest(env.engine, [f for f in demo_findings() if f.kind == "dependency"])
    fid = next(iter(ids.values()))
    image = retag(env.client, env.baseline.image, f"selfheal/demo-target:test-{env.run_id}-bg")
    pid = verified_patch(env, [fid], image, base_commit=git(demo_repo, "rev-parse", "HEAD"), name="bg",
                         decision="approval")
    load = env.gateway.load().start()
    try:
        time.sleep(1.0)
        dr = dag.test(run_conf={"patch_id": pid, "strategy": "blue_green", "confirm": True})
    finally:
        load.stop()
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert dr.state == DagRunState.SUCCESS, states
    sp = PatchStore(env.engine).require(pid)
    assert sp.state == "promoted" and sp.record.rollout["strategy"] == "blue_green", dump(sp.record.rollout)
    assert sp.approval["by"] == "dag_test" and sp.approval["via"] == "selfheal_reviewed_patch"
    assert env.live_image() == sp.record.image and states["rollback"] == TaskInstanceState.SKIPPED
    assert ledger.verify(env.engine).ok

"""The DAGs are executor-agnostic: the remediation loop runs green on a real CeleryExecutor with two
worker processes (Redis from Debian as the broker, Postgres as metadata DB and result backend).

Each worker has its own AIRFLOW_HOME, TMPDIR and working directory (see celery_stack), so a
task that leaves a file where the next task looks for it by a relative or $TMPDIR path fails when
the next one lands on the other worker; an absolute local path handed over in an XCom is caught
by the XCom check (one machine shares one filesystem, so reading it would not fail). The workers
have no metadata-DB credentials: a task reaching into Airflow's DB directly fails anywhere.
Configuration travels as Airflow Variables and Connections set through the REST API. The test
checks that the run succeeded, that BOTH workers ran task instances (the TI `hostname` from the
REST API, cross-checked against each worker's own Celery log and the Postgres result backend),
that every XCom is small and none is a local file path, and the DAG's own outcome.

The DAG under test and its setup are one parameter (DAG_UNDER_TEST -> a scenario fixture).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.e2e.celery_stack import REPO, CeleryStack

pytestmark = [pytest.mark.airflow, pytest.mark.postgres, pytest.mark.docker]

# The DAG under test; its setup is the scenario fixture SCENARIOS names. SELFHEAL_CELERY_DAGS
# (comma-separated) runs others, e.g. selfheal_doctor for a quick check of the harness itself.
DAG_UNDER_TEST = "selfheal_remediate"
CELERY_DAGS = [d for d in os.environ.get("SELFHEAL_CELERY_DAGS", DAG_UNDER_TEST).split(",") if d]
MAX_XCOM_BYTES = 64 * 1024
NOT_RUN = {"skipped", "upstream_failed", "removed", None}


@dataclass
class Scenario:
    """What a DAG needs on the stack. Configuration goes where a distributed deployment keeps it:
    Airflow Variables and Connections (set through the REST API, read by the workers through the
    execution API); `env` only for what a deployment mounts (catalog file, scanner binary).
    `during` wraps the run (load, a human answering), `verify` checks the outcome."""

    dag_id: str
    env: dict[str, str] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    connections: dict[str, dict[str, Any]] = field(default_factory=dict)
    conf: dict[str, Any] = field(default_factory=dict)
    during: Callable[[CeleryStack, str], contextlib.AbstractContextManager] | None = None
    verify: Callable[[CeleryStack, str], None] | None = None
    run_timeout_s: float = 240


def triage_connection(url: str) -> dict[str, Any]:
    """The `selfheal_triage` connection (TriageDbHook reads it first) for a database URL."""
    u = sa.engine.make_url(url)
    return {"conn_type": "postgres", "host": u.host, "port": u.port, "login": u.username,
            "password": u.password or "", "schema": u.database}


# ---------------------------------------------------------------------- scenarios
@pytest.fixture
def doctor_scenario(migrated_triage_url: str, base_image: str) -> Scenario:
    """selfheal_doctor: seven real checks (Postgres, Docker, a network-less container, HAProxy,
    Wapiti), four of them parallel: a quick proof of the harness itself."""
    return Scenario(
        "selfheal_doctor",
        variables={"selfheal_base_image": base_image},
        connections={"selfheal_triage": triage_connection(migrated_triage_url)},
    )


@pytest.fixture
def remediate_scenario(tmp_path: Path, migrated_triage_url: str, docker_client: Any, base_image: str,
                       wapiti_bin: Path) -> Iterator[Scenario]:
    """selfheal_remediate, the loop, as tests/dags/test_selfheal_remediate.py's happy path sets it up
    (its kit): the demo target live behind a real HAProxy, its SQL injection and Jinja2 CVE in the
    triage DB. The run mitigates, plans, verifies the code fix in the Docker sandbox, asks a human
    (answered here through the REST API, as the Required Actions page does) and rolls it out by
    canary under live load through the gateway."""
    from selfheal import demo
    from tests.integration.remediation.kit import (
        SQLI_ERROR_PROBE,
        SQLI_PROBE,
        baseline_image,
        ingest,
        loop_env,
        write_catalog,
    )
    from tests.integration.sandbox.kit import demo_findings

    repo = demo.init_repo(tmp_path / "target-api")
    catalog = write_catalog(tmp_path / "services.yaml", repo)
    image = baseline_image(docker_client, repo, base_image)
    with loop_env(migrated_triage_url, catalog, docker_client, image) as env:
        ids = ingest(env.engine, demo_findings())
        assert env.gateway.get(SQLI_ERROR_PROBE)[0] == 500  # exploitable before the run

        def probe() -> dict[str, int]:
            # While the human reads the form, the virtual patch (the run's first task) holds.
            targets = {"sqli": SQLI_PROBE, "sqli_error": SQLI_ERROR_PROBE,
                       "legit": "/api/items?category=books"}
            return {k: env.gateway.get(t)[0] for k, t in targets.items()}

        approver = HitlApprover("selfheal_remediate", answer="Approve", before_answer=probe)

        @contextlib.contextmanager
        def during(stack: CeleryStack, run_id: str) -> Iterator[None]:
            load = env.gateway.load().start()
            try:
                with approver.running(stack, run_id):
                    yield
            finally:
                load.stop()

        yield Scenario(
            "selfheal_remediate",
            env={"SELFHEAL_CATALOG": str(catalog), "SELFHEAL_WAPITI": str(wapiti_bin)},
            variables={"selfheal_gateway": env.gateway.settings_json,
                       "selfheal_rollout": json.dumps(env.settings), "selfheal_base_image": base_image},
            connections={"selfheal_triage": triage_connection(migrated_triage_url)},
            during=during,
            verify=lambda stack, run_id: _verify_remediated(env, ids, approver, stack, run_id),
            run_timeout_s=900,
        )


def _verify_remediated(env: Any, ids: dict[str, int], approver: HitlApprover, stack: CeleryStack,
                       run_id: str) -> None:
    """The loop's outcome, as the dag.test() happy path checks it: the code fix was approved by the
    human who answered through the REST API, promoted by canary, and the exploit is gone."""
    from selfheal.audit import ledger
    from selfheal.remediation.store import PatchStore
    from tests.integration.remediation.kit import SQLI_ERROR_PROBE, statuses

    assert not approver.errors, approver.errors
    q = urllib.parse.quote(run_id, safe="")
    (patch_id,) = stack.api("GET", f"/api/v2/dags/selfheal_remediate/dagRuns/{q}/taskInstances/policy"
                                   "/xcomEntries/return_value")["value"]
    sp = PatchStore(env.engine).require(patch_id)
    assert sp.record.recipe == "code_fix" and sp.state == "promoted", (sp.state, sp.record.reason)
    assert [r["task_id"] for r in approver.answered] == ["patch.approval"], approver.answered
    assert approver.answered[0]["seen"] == {"sqli": 403, "sqli_error": 403, "legit": 200}, approver.answered
    assert sp.approval["approved"] is True and sp.approval["by"] == "admin", sp.approval
    assert sp.record.rollout["strategy"] == "canary" and sp.record.rollout["outcome"] == "promoted"
    assert env.live_image() == sp.record.image and env.weights() == {"green": 100}  # the verified image id
    status, body = env.gateway.get(SQLI_ERROR_PROBE)
    assert status == 200 and b"sqlite3" not in body, (status, body[:200])
    now = statuses(env.engine)
    assert sp.finding_ids and all(now[i] == "patching" for i in sp.finding_ids), now
    assert set(sp.finding_ids) <= set(ids.values())
    rescan = stack.api("GET", f"/api/v2/dags/selfheal_scan/dagRuns/rescan__{patch_id}")
    assert rescan["conf"] == {"service": "demo-target"}
    assert ledger.verify(env.engine).ok


class HitlApprover:
    """A human at the Required Actions page: answers each pending HITL request of the run through
    the REST API (GET .../hitlDetails, PATCH .../taskInstances/{task}/{index}/hitlDetails)."""

    def __init__(self, dag_id: str, answer: str, before_answer: Callable[[], Any] | None = None) -> None:
        self.dag_id, self.answer, self.before_answer = dag_id, answer, before_answer
        self.answered: list[dict[str, Any]] = []
        self.errors: list[str] = []

    @contextlib.contextmanager
    def running(self, stack: CeleryStack, run_id: str) -> Iterator[HitlApprover]:
        stop = threading.Event()
        t = threading.Thread(target=self._loop, args=(stack, run_id, stop), daemon=True)
        t.start()
        try:
            yield self
        finally:
            stop.set()
            t.join(30)

    def _loop(self, stack: CeleryStack, run_id: str, stop: threading.Event) -> None:
        q = urllib.parse.quote(run_id, safe="")
        base = f"/api/v2/dags/{self.dag_id}/dagRuns/{q}"
        while not stop.wait(1.0):
            try:
                pending = stack.api("GET", f"{base}/hitlDetails?response_received=false")["hitl_details"]
                for d in pending:
                    ti = d["task_instance"]
                    seen = self.before_answer() if self.before_answer else None
                    stack.api("PATCH", f"{base}/taskInstances/{ti['task_id']}/{ti['map_index']}/hitlDetails",
                              {"chosen_options": [self.answer], "params_input": {}})
                    self.answered.append({"task_id": ti["task_id"], "subject": d["subject"], "seen": seen})
            except Exception as e:  # noqa: BLE001 - reported by the test's verify step, never lost
                self.errors.append(f"{type(e).__name__}: {e}")


SCENARIOS = {"selfheal_doctor": "doctor_scenario", "selfheal_remediate": "remediate_scenario"}


@pytest.fixture
def scenario(request: pytest.FixtureRequest) -> Scenario:
    return request.getfixturevalue(SCENARIOS[request.param])


@pytest.fixture
def celery_stack(scenario: Scenario, tmp_path: Path, pg_admin_url: str) -> Iterator[CeleryStack]:
    assert shutil.which("redis-server"), "redis-server missing: run scripts/bootstrap.sh (Debian's package)"
    stack = CeleryStack(tmp_path / "celery", pg_admin_url, env=scenario.env)
    try:
        yield stack.start()
    finally:
        left = stack.stop()  # a no-op when the test already stopped it
        assert left == [], f"processes left running in the stack's sessions: {left}"


# ---------------------------------------------------------------------- the test
@pytest.mark.timeout(1500)  # a cold sandbox image build included
@pytest.mark.parametrize("scenario", CELERY_DAGS, indirect=True)
def test_dag_runs_green_on_two_celery_workers(scenario: Scenario, celery_stack: CeleryStack) -> None:
    stack = celery_stack
    dag_id = scenario.dag_id
    stack.wait_for_dag(dag_id)
    for key, value in scenario.variables.items():
        stack.set_variable(key, value)
    for conn_id, fields in scenario.connections.items():
        stack.set_connection(conn_id, fields)
    t_run = time.monotonic()
    run_id = stack.trigger(dag_id, scenario.conf)
    with scenario.during(stack, run_id) if scenario.during else contextlib.nullcontext():
        state = stack.wait_for_run(dag_id, run_id, scenario.run_timeout_s)
    run_s = time.monotonic() - t_run
    tis = stack.task_instances(dag_id, run_id)
    if state != "success":
        bad = [t for t in tis if t["state"] != "success"]
        logs = "\n".join(f"--- {t['task_id']}[{t['map_index']}] {t['state']} on {t['hostname']}\n"
                         f"{stack.task_log(t)}" for t in bad if t["state"] not in NOT_RUN)
        pytest.fail(f"{dag_id} ended {state}: {[(t['task_id'], t['state']) for t in bad]}\n{logs}")

    # Both workers ran task instances, and nothing ran anywhere else.
    ran = [t for t in tis if t["state"] not in NOT_RUN]
    hosts = Counter(t["hostname"] for t in ran)
    assert set(hosts) == set(stack.workers), f"task instances per host: {dict(hosts)}"
    assert all(t["state"] == "success" for t in ran)

    # Celery's own records agree with Airflow's: each TI's Celery task succeeded in the log of
    # the worker its hostname names (and only there), and the result backend has it as SUCCESS.
    # The TI is marked success from inside the task, a moment before its Celery task returns:
    # give the last ones a few seconds.
    celery_ids = stack.celery_task_ids(dag_id, run_id)
    assert all(celery_ids[(t["task_id"], t["map_index"])] for t in ran), celery_ids
    deadline = time.monotonic() + 60
    while True:
        outcomes = {w: stack.worker_outcomes(w) for w in stack.workers}
        results = stack.result_backend_states()
        finished = all(results.get(cid := celery_ids[(t["task_id"], t["map_index"])]) == "SUCCESS"
                       and outcomes.get(t["hostname"], {}).get(cid) == "succeeded" for t in ran)
        if finished or time.monotonic() > deadline:
            break
        time.sleep(1)
    for t in ran:
        cid = celery_ids[(t["task_id"], t["map_index"])]
        seen_by = {w for w, o in outcomes.items() if cid in o}
        assert seen_by == {t["hostname"]}, (t["task_id"], cid, seen_by)
        assert outcomes[t["hostname"]][cid] == "succeeded", (t["task_id"], cid, outcomes[t["hostname"]][cid])
        assert results.get(cid) == "SUCCESS", (t["task_id"], cid, results.get(cid))

    # XComs: small, and never a path into some machine's filesystem.
    xcoms = stack.xcoms(dag_id, run_id)
    roots = [stack.root, REPO, Path(tempfile.gettempdir()), Path.home()]
    for x in xcoms:
        where = f"{x['task_id']}[{x['map_index']}].{x['key']}"
        size = len(json.dumps(x["value"]).encode())
        assert size <= MAX_XCOM_BYTES, f"XCom {where} is {size} bytes (limit {MAX_XCOM_BYTES})"
        paths = local_paths(x["value"], roots)
        assert not paths, f"XCom {where} carries local file paths: {paths}"

    if scenario.verify is not None:
        scenario.verify(stack, run_id)

    t_stop = time.monotonic()
    left = stack.stop()
    assert left == [], f"processes left running in the stack's sessions: {left}"
    stop_s = time.monotonic() - t_stop
    print(f"\n{dag_id} on CeleryExecutor: stack ready {stack.timings['ready_s']:.0f} s "
          f"(migrate {stack.timings['migrate_s']:.0f} s), run {run_s:.0f} s, stop {stop_s:.0f} s; "
          f"{len(ran)} task instances per worker {dict(hosts)}; {len(xcoms)} XComs, "
          f"largest {max((len(json.dumps(x['value'])) for x in xcoms), default=0)} bytes")


def local_paths(value: Any, roots: list[Path]) -> list[str]:
    """Strings in an XCom value that name a local file: a file:// URL, or a whitespace-free
    absolute path that exists here or lies under a local root (the stack, the repo, the temp
    dir, home). URL paths like "/search" are neither, and messages with a path inside are prose."""
    found: list[str] = []
    stack: list[Any] = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
        elif isinstance(v, str):
            s = v.strip()
            if s.startswith("file:"):
                found.append(s)
            elif s.startswith("/") and len(s) > 1 and not any(c.isspace() for c in s):
                p = Path(s)
                if any(p.is_relative_to(r) for r in roots) or p.exists():
                    found.append(s)
    return found


def test_local_paths_finds_file_paths_and_leaves_url_paths_alone(tmp_path: Path) -> None:
    """The XCom path check can fail: it catches a temp file, a file:// URL and an existing path."""
    f = tmp_path / "report.json"
    f.write_text("{}")
    value = {"report": str(f), "nested": [{"url": "file:///etc/passwd"}], "bin": "/usr/bin/env",
             "route": "/search", "root": "/", "msg": f"wrote {f} ok", "n": 3}
    assert sorted(local_paths(value, [tmp_path])) == sorted([str(f), "file:///etc/passwd", "/usr/bin/env"])

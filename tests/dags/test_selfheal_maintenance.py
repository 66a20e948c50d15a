"""selfheal_maintenance runs for real (dag.test()) against the real Postgres triage DB, the real
Docker engine, and KEV/EPSS feeds served from a loopback HTTP server (never the internet)."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from airflow.utils.state import DagRunState, TaskInstanceState

from selfheal import audit
from selfheal.catalog import load_catalog
from selfheal.findings.model import SEVERITIES
from selfheal.rollout.backends.docker import (
    LABEL_COLOR,
    LABEL_MANAGED,
    LABEL_SERVICE,
    LABEL_VERSION,
    MANAGED_BY,
)
from selfheal.sandbox.isolation import LABEL, LABEL_CREATED, LABEL_DEADLINE, LABEL_OWNER, owner_token
from selfheal.tasks import maintenance
from selfheal.triage import intel, lifecycle, store
from selfheal.triage.prioritize import PriorityConfig, prioritize
from selfheal.triage.schema import epss, findings, kev

pytestmark = [pytest.mark.airflow, pytest.mark.docker, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "tests" / "fixtures" / "scanner-samples"
INTEL = REPO / "tests" / "fixtures" / "intel"
DAG_ID = "selfheal_maintenance"
# jQuery's XSS, reported by the Dependency-Check sample; CISA added it to KEV on 2025-01-23.
NEW_KEV = {
    "cveID": "CVE-2020-11023",
    "vendorProject": "JQuery",
    "product": "JQuery",
    "vulnerabilityName": "JQuery Cross-Site Scripting (XSS) Vulnerability",
    "dateAdded": "2025-01-23",
    "dueDate": "2025-02-13",
    "knownRansomwareCampaignUse": "Unknown",
}
NEW_EPSS = ("CVE-2019-11358", 0.31337, 0.9712)  # another CVE of the same sample: EPSS above the threshold


# ------------------------------------------------------------------------------------ fixtures


class FeedServer:
    """Loopback HTTP server whose routes (path -> (status, body)) each test sets."""

    def __init__(self) -> None:
        routes: dict[str, tuple[int, bytes]] = {}
        self.routes = routes
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                hits.append(self.path)
                status, body = routes.get(path, (404, b"not found"))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def feeds() -> Iterator[FeedServer]:
    server = FeedServer()
    yield server
    server.close()


@pytest.fixture
def triage(migrated_triage_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[sa.Engine]:
    monkeypatch.setenv("SELFHEAL_DATABASE_URL", migrated_triage_url)
    engine = sa.create_engine(migrated_triage_url)
    yield engine
    engine.dispose()


def _serve_feeds(feeds: FeedServer, monkeypatch: pytest.MonkeyPatch, *, with_new_intel: bool) -> None:
    """Serve the fixture feeds (plus the new KEV entry and EPSS row when asked) and point the Variables there.

    The KEV URL carries a token in its query string: it must reach neither the logs nor the audit entry."""
    doc = json.loads((INTEL / "kev.json").read_bytes())
    csv_text = (INTEL / "epss.csv").read_text()
    if with_new_intel:
        doc["vulnerabilities"].append(NEW_KEV)
        doc["count"] += 1
        csv_text += "{},{},{}\n".format(*NEW_EPSS)
    tag = uuid.uuid4().hex[:8]
    feeds.routes[f"/{tag}/kev.json"] = (200, json.dumps(doc).encode())
    feeds.routes[f"/{tag}/epss.csv"] = (200, csv_text.encode())
    monkeypatch.setenv("AIRFLOW_VAR_SELFHEAL_KEV_URL", feeds.url(f"/{tag}/kev.json?token=s3cret-feed-token"))
    monkeypatch.setenv("AIRFLOW_VAR_SELFHEAL_EPSS_URL", feeds.url(f"/{tag}/epss.csv"))


def _seed(engine: sa.Engine) -> dict[str, int]:
    """Real sample reports at three ages, yesterday's intel (the fixture feeds), prioritized once.

    Dependency-Check (13 mediums) first seen 100 days ago: past the 90-day medium SLA. The OpenVAS
    critical 10 days ago: past the 7-day critical SLA. The Inspector2 medium today: within SLA.
    One old finding is risk-accepted, another marked a false positive: neither counts as a breach."""
    now = datetime.now(UTC)
    for rel, age in (
        ("sarif/dependency_check.sarif", 100),
        ("openvas/report_detail_v2.xml", 10),
        ("aws_inspector2/aws_inspector2_one_vul.json", 0),
    ):
        res = store.ingest_reports(engine, [store.ReportIn((SAMPLES / rel).read_bytes(), rel)],
                                   now=now - timedelta(days=age))
        assert res.quarantined == 0 and res.new > 0, rel
    intel.load_kev(engine, INTEL / "kev.json")
    intel.load_epss(engine, INTEL / "epss.csv")
    prioritize(engine, load_catalog())
    with engine.connect() as c:
        rows = c.execute(sa.select(findings.c.id, findings.c.cves, findings.c.severity)).all()
    by_cve = {cve: r.id for r in rows for cve in r.cves}
    critical = next(r.id for r in rows if r.severity == "critical")
    others = [r.id for r in rows if not r.cves or not {NEW_KEV["cveID"], NEW_EPSS[0]} & set(r.cves)]
    old_mediums = [r.id for r in rows if r.severity == "medium" and r.id in others and r.id != critical]
    store.set_status(engine, old_mediums[0], "accepted", actor="test:owner", reason="compensating control")
    store.set_status(engine, old_mediums[1], "false_positive", actor="test:owner", reason="not shipped")
    return {"kev_finding": by_cve[NEW_KEV["cveID"]], "epss_finding": by_cve[NEW_EPSS[0]],
            "critical": critical, "accepted": old_mediums[0], "false_positive": old_mediums[1]}


def _expected_breaches(engine: sa.Engine, now: datetime) -> dict[str, int]:
    """Recount from first_seen and the SLA policy (not from sla_due, which the DAG writes)."""
    days = PriorityConfig().sla
    out: dict[str, int] = {}
    with engine.connect() as c:
        for r in c.execute(sa.select(findings.c.severity, findings.c.status, findings.c.first_seen)):
            d = getattr(days, r.severity)
            if r.status in lifecycle.ACTIVE and d is not None and r.first_seen + timedelta(days=d) < now:
                out[r.severity] = out.get(r.severity, 0) + 1
    return {s: out[s] for s in SEVERITIES if s in out}


def _finding(engine: sa.Engine, fid: int) -> Any:
    with engine.connect() as c:
        return c.execute(sa.select(findings).where(findings.c.id == fid)).one()


def _priorities(engine: sa.Engine) -> dict[int, float]:
    with engine.connect() as c:
        return dict(c.execute(sa.select(findings.c.id, findings.c.priority)).all())


def _output(capfd: pytest.CaptureFixture[str]) -> str:
    """What the tasks printed (a failed task's exception goes to stderr, not through logging)."""
    out = capfd.readouterr()
    return out.out + out.err


def _states(dr) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in dr.get_task_instances()}


def _xcom(dr, task_id: str, key: str = "return_value") -> Any:
    return dr.get_task_instance(task_id).xcom_pull(task_ids=task_id, key=key)


def _maintenance_entries(engine: sa.Engine) -> list[audit.AuditEntry]:
    return audit.entries(engine, action=maintenance.AUDIT_ACTION, limit=1000)


def _as_superuser_bypassing_trigger(engine: sa.Engine, *statements: str) -> None:
    """The attack verify exists for: a superuser switches the guard off, edits, switches it back on."""
    with engine.begin() as c:
        c.exec_driver_sql("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        for s in statements:
            c.exec_driver_sql(s)
        c.exec_driver_sql("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")


@pytest.fixture
def leftovers(docker_client, base_image) -> Iterator[dict[str, str]]:
    """Docker objects of every kind the cleanup tasks must remove or must leave alone (created, never
    started: labels and names are all the cleanup looks at). Removed afterwards by name."""
    uid = uuid.uuid4().hex[:8]
    now = time.time()
    managed = {LABEL_MANAGED: MANAGED_BY, LABEL_SERVICE: f"mtest{uid}", LABEL_VERSION: "v1"}
    dead_owner = f"{socket.gethostname()}:1:0"  # pid 1 with another start time: not the owner
    sandbox_old = {LABEL: f"mt{uid}a", LABEL_OWNER: dead_owner, LABEL_CREATED: str(now - 60),
                   LABEL_DEADLINE: str(now - 30)}
    sandbox_live = {LABEL: f"mt{uid}b", LABEL_OWNER: owner_token(), LABEL_CREATED: str(now),
                    LABEL_DEADLINE: str(now + 900)}
    blue, green = {**managed, LABEL_COLOR: "blue"}, {**managed, LABEL_COLOR: "green"}
    specs = {
        "expired_release": (f"selfheal-mt{uid}-blue.retired-{int(now) - 7200}", blue),
        "recently_retired": (f"selfheal-mt{uid}-green.retired-{int(now) - 30}", green),
        "deployed_release": (f"selfheal-mt{uid}-blue", blue),
        "not_ours": (f"selfheal-mt{uid}-other.retired-{int(now) - 7200}", {"example.owner": "someone-else"}),
        "stale_sandbox": (f"selfheal-sbx-mt{uid}-old", sandbox_old),
        "live_sandbox": (f"selfheal-sbx-mt{uid}-live", sandbox_live),
    }
    names = {}
    try:
        for key, (name, labels) in specs.items():
            docker_client.containers.create(base_image, ["true"], name=name, labels=labels)
            names[key] = name
        names["stale_network"] = f"selfheal-sbx-mt{uid}-net"
        docker_client.networks.create(names["stale_network"], internal=True, labels=sandbox_old)
        yield names
    finally:
        for name in names.values():
            for c in docker_client.containers.list(all=True, filters={"name": f"^/{name}$"}):
                c.remove(force=True)
            for n in docker_client.networks.list(names=[name]):
                if n.name == name:
                    n.remove()


def _exists(docker_client, name: str) -> bool:
    return bool(docker_client.containers.list(all=True, filters={"name": f"^/{name}$"})) or bool(
        [n for n in docker_client.networks.list(names=[name]) if n.name == name]
    )


# --------------------------------------------------------------------------------------- tests


def test_dag_shape_schedule_and_retry_policy(dagbag) -> None:
    dag = dagbag.get_dag(DAG_ID)
    assert dag is not None and dag.catchup is False and "selfheal" in dag.tags and dag.doc_md
    assert {t.task_id for t in dag.tasks} == {*maintenance.WORK_TASKS, "record_run", "watcher"}
    assert set(dag.get_task("record_run").upstream_task_ids) == set(maintenance.WORK_TASKS)
    assert dag.get_task("reprioritize").upstream_task_ids == {"refresh_kev", "refresh_epss"}
    fetch = dag.get_task("refresh_kev")
    assert fetch.retries >= 3 and fetch.retry_exponential_backoff == 2.0 and fetch.max_retry_delay
    policy = fetch.retry_policy
    # Network trouble is retried; a wrong format or a broken chain is not.
    assert policy.evaluate(maintenance.TransientError("feed down"), 1, 5).action.value == "retry"
    assert policy.evaluate(sa.exc.OperationalError("x", {}, ConnectionError()), 1, 5).action.value == "retry"
    assert policy.evaluate(ValueError("bad feed"), 1, 5).action.value == "fail"


def test_happy_path_refreshes_intel_reprioritizes_reports_breaches_verifies_and_cleans(
    dagbag, triage, feeds, leftovers, docker_client, monkeypatch, capfd
) -> None:
    ids = _seed(triage)
    before = _priorities(triage)
    kev_before = _finding(triage, ids["kev_finding"])
    assert kev_before.kev is not True
    audit.append(triage, actor="test", action="detection", subject="finding:1", payload={"n": 1})
    _serve_feeds(feeds, monkeypatch, with_new_intel=True)
    dag = dagbag.get_dag(DAG_ID)

    t0 = time.monotonic()
    dr = dag.test()
    first_run_s = time.monotonic() - t0
    states = _states(dr)
    assert dr.state == DagRunState.SUCCESS, states
    assert states["watcher"] == TaskInstanceState.SKIPPED
    assert {states[t] for t in maintenance.WORK_TASKS} == {TaskInstanceState.SUCCESS}

    # Intel: only the changed rows were rewritten.
    assert _xcom(dr, "refresh_kev")["changed"] == 1 and _xcom(dr, "refresh_epss")["changed"] == 1
    assert _xcom(dr, "refresh_kev")["skipped"] == 1  # the fixture's malformed entry
    # The finding whose CVE became KEV: flagged, exploitation active, priority up by the KEV threat weight.
    after = _finding(triage, ids["kev_finding"])
    assert after.kev is True
    assert after.priority >= kev_before.priority + 20, (kev_before.priority, after.priority)
    epss_after = _finding(triage, ids["epss_finding"])
    assert epss_after.epss == pytest.approx(NEW_EPSS[1])
    assert epss_after.priority > before[ids["epss_finding"]]
    # Findings without a new KEV/EPSS CVE keep their priority (the SLA clock moved by seconds).
    prio = _priorities(triage)
    unchanged = [f for f in before if f not in (ids["kev_finding"], ids["epss_finding"])]
    assert max(abs((prio[f] or 0) - (before[f] or 0)) for f in unchanged) <= 0.2

    # SLA breaches: counts by severity match a recount from first_seen; human decisions excluded.
    sla = _xcom(dr, "report_sla_breaches")
    expected = _expected_breaches(triage, datetime.now(UTC))
    assert sla["by_severity"] == expected and sla["breached"] == sum(expected.values()) > 0
    assert expected.get("critical") == 1 and "medium" in expected
    assert sla["worst_ids"][0] == ids["critical"]
    assert ids["accepted"] not in sla["worst_ids"] and ids["false_positive"] not in sla["worst_ids"]
    assert len(sla["worst_ids"]) == min(10, sla["breached"])

    # The chain verified; one summary entry was appended, and it holds no secret.
    ver = _xcom(dr, "verify_audit")
    assert ver["ok"] is True and ver["count"] >= 1
    (entry,) = _maintenance_entries(triage)
    assert entry.subject == f"maintenance:{dr.run_id}"
    assert entry.payload["sla"]["breached"] == sla["breached"]
    assert entry.payload["kev"]["changed"] == 1
    assert set(entry.payload["tasks"].values()) == {"success"}
    assert "s3cret" not in json.dumps(entry.payload) and "s3cret" not in _output(capfd)
    assert any("s3cret" in h for h in feeds.hits)  # it was sent to the server, only not recorded

    # Cleanup touched only expired, selfheal-labelled objects.
    assert not _exists(docker_client, leftovers["expired_release"])
    assert not _exists(docker_client, leftovers["stale_sandbox"])
    assert not _exists(docker_client, leftovers["stale_network"])
    for keep in ("recently_retired", "deployed_release", "not_ours", "live_sandbox"):
        assert _exists(docker_client, leftovers[keep]), keep
    assert leftovers["expired_release"] in _xcom(dr, "cleanup_old_releases")["names"]

    # Re-running the whole DAG changes nothing more: idempotent loads, scores and cleanups.
    t0 = time.monotonic()
    dr2 = dag.test()
    second_run_s = time.monotonic() - t0
    assert dr2.state == DagRunState.SUCCESS, _states(dr2)
    assert _xcom(dr2, "refresh_kev")["changed"] == 0 and _xcom(dr2, "refresh_epss")["changed"] == 0
    assert _finding(triage, ids["kev_finding"]).priority == after.priority
    assert leftovers["expired_release"] not in (_xcom(dr2, "cleanup_old_releases")["names"])
    for keep in ("recently_retired", "deployed_release", "not_ours", "live_sandbox"):
        assert _exists(docker_client, leftovers[keep]), keep
    assert _xcom(dr2, "verify_audit")["anchor_seq"] == entry.seq  # the first run's head was checked
    assert len(_maintenance_entries(triage)) == 2  # one entry per run
    print(json.dumps({"first_run_s": round(first_run_s, 2), "second_run_s": round(second_run_s, 2)}))


def test_tampered_audit_row_fails_verify_naming_the_seq(dagbag, triage, feeds, monkeypatch, capfd) -> None:
    for i in range(5):
        audit.append(triage, actor="pipeline", action="decision", subject=f"patch:p-{i}", payload={"i": i})
    _serve_feeds(feeds, monkeypatch, with_new_intel=False)
    dag = dagbag.get_dag(DAG_ID)
    assert dag.test().state == DagRunState.SUCCESS

    _as_superuser_bypassing_trigger(
        triage, "UPDATE audit_log SET payload = '{\"i\": 99}'::json WHERE seq = 3"
    )
    dr = dag.test()
    states = _states(dr)
    assert dr.state == DagRunState.FAILED
    assert states["verify_audit"] == TaskInstanceState.FAILED
    assert states["watcher"] == TaskInstanceState.FAILED  # the run is failed, not hidden by record_run
    assert states["record_run"] == TaskInstanceState.SUCCESS
    for t in set(maintenance.WORK_TASKS) - {"verify_audit"}:
        assert states[t] == TaskInstanceState.SUCCESS, t
    broken = "audit chain broken: modified at seq 3: entry content does not match its stored hash"
    assert broken in _output(capfd)
    assert dr.get_task_instance("verify_audit").try_number == 1  # not retried: retrying cannot fix it
    # The run's entry records where the chain broke.
    last = _maintenance_entries(triage)[-1]
    assert last.subject == f"maintenance:{dr.run_id}"
    assert last.payload["audit"] == {"ok": False, "breaks": [
        {"kind": "modified", "seq": 3, "detail": "entry content does not match its stored hash"}]}
    assert last.payload["tasks"]["verify_audit"] == "failed"


def test_cut_off_tail_is_caught_by_the_anchor(dagbag, triage, feeds, monkeypatch, capfd) -> None:
    """Deleting the newest entries leaves a valid chain; the head the last good run recorded says
    otherwise."""
    audit.append(triage, actor="pipeline", action="promotion", subject="patch:p-1", payload={"ok": True})
    _serve_feeds(feeds, monkeypatch, with_new_intel=False)
    dag = dagbag.get_dag(DAG_ID)
    assert dag.test().state == DagRunState.SUCCESS
    anchor_seq = _maintenance_entries(triage)[-1].seq
    _as_superuser_bypassing_trigger(triage, f"DELETE FROM audit_log WHERE seq = {anchor_seq}")
    assert audit.verify(triage).ok  # the chain alone cannot tell

    cut = f"audit chain broken: deleted at seq {anchor_seq}: anchored entry {anchor_seq} is gone"
    capfd.readouterr()
    dr = dag.test()
    assert _states(dr)["verify_audit"] == TaskInstanceState.FAILED
    assert cut in _output(capfd)
    # A failed verification does not move the anchor: the next run still fails, although that run's
    # own entry now sits at the cut seq (a different entry: its hash is not the anchored one).
    dr = dag.test()
    assert _states(dr)["verify_audit"] == TaskInstanceState.FAILED
    replaced = f"modified at seq {anchor_seq}: entry {anchor_seq} differs from its anchored hash"
    assert f"audit chain broken: {replaced}" in _output(capfd)


def test_feed_down_fails_refresh_and_leaves_stored_intel_untouched(
    dagbag, triage, feeds, monkeypatch, capfd
) -> None:
    ids = _seed(triage)
    with triage.connect() as c:
        kev_rows = c.execute(sa.select(kev).order_by(kev.c.cve_id)).all()
        epss_rows = c.execute(sa.select(epss).order_by(epss.c.cve_id)).all()
    kev_before = _finding(triage, ids["kev_finding"])
    # KEV: the server answers 503 (transient: retried with backoff, then failed).
    feeds.routes["/down/kev.json"] = (503, b"<html>maintenance</html>")
    monkeypatch.setenv("AIRFLOW_VAR_SELFHEAL_KEV_URL", feeds.url("/down/kev.json"))
    # EPSS: a 200 answer that is an HTML error page, not a feed (permanent: failed at once, no retry).
    feeds.routes["/down/epss.csv"] = (200, b"<html><body>Please log in</body></html>")
    monkeypatch.setenv("AIRFLOW_VAR_SELFHEAL_EPSS_URL", feeds.url("/down/epss.csv"))
    dag = dagbag.get_dag(DAG_ID)
    # The real schedule waits minutes between retries; keep the count, shrink the wait.
    kev_task = dag.get_task("refresh_kev")
    monkeypatch.setattr(kev_task, "retries", 2)
    monkeypatch.setattr(kev_task, "retry_delay", timedelta(seconds=0))
    monkeypatch.setattr(kev_task, "retry_exponential_backoff", 0)

    dr = dag.test()
    states = _states(dr)
    assert dr.state == DagRunState.FAILED
    assert states["refresh_kev"] == states["refresh_epss"] == TaskInstanceState.FAILED
    assert dr.get_task_instance("refresh_kev").try_number == 3  # transient: retried
    assert dr.get_task_instance("refresh_epss").try_number == 1  # wrong format: not retried
    out = _output(capfd)
    kev_url = feeds.url("/down/kev.json")
    assert f"KEV feed: {kev_url}: cannot download: HTTP Error 503: Service Unavailable; " in out
    assert "stored KEV data left unchanged" in out
    assert f"EPSS feed: {feeds.url('/down/epss.csv')}: not an EPSS CSV" in out
    assert "stored EPSS data left unchanged" in out
    # Stored intel untouched (loaded_at included), so the finding's KEV/EPSS view did not move.
    with triage.connect() as c:
        assert c.execute(sa.select(kev).order_by(kev.c.cve_id)).all() == kev_rows
        assert c.execute(sa.select(epss).order_by(epss.c.cve_id)).all() == epss_rows
    after = _finding(triage, ids["kev_finding"])
    assert after.kev == kev_before.kev and after.priority == pytest.approx(kev_before.priority, abs=0.2)
    # Everything that does not depend on a fresh feed still ran.
    for t in set(maintenance.WORK_TASKS) - {"refresh_kev", "refresh_epss"}:
        assert states[t] == TaskInstanceState.SUCCESS, t
    assert states["watcher"] == TaskInstanceState.FAILED
    entry = _maintenance_entries(triage)[-1]
    assert entry.payload["tasks"]["refresh_kev"] == "failed" and entry.payload["kev"] is None

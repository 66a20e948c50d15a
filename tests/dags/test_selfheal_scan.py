"""selfheal_scan, run for real with dag.test(): the ZAP and Greenbone doubles, moto for
Inspector2, and the REAL Wapiti against the demo target service fill the triage table."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from airflow.utils.state import DagRunState, TaskInstanceState

from selfheal import demo
from selfheal.pipeline_state import report_inbox
from selfheal.scanners import inbox
from selfheal.tasks import scan as scan_tasks
from selfheal.triage import store
from selfheal.triage.schema import findings, quarantine, raw_reports, scan_runs
from tests.doubles.gmp_double import GmpDouble
from tests.doubles.inspector_moto import MotoInspector2, connection_json, sample_findings
from tests.doubles.zap_api_double import ZapApiDouble

pytestmark = [pytest.mark.airflow, pytest.mark.postgres]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "scanner-samples"


@pytest.fixture
def demo_target() -> Iterator[str]:
    with demo.local_server() as url:
        yield url


@pytest.fixture
def scanners(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """The three doubles, and the Airflow connections (env JSON form) pointing at them."""
    zap = ZapApiDouble(spider_seconds=0.3, ascan_seconds=0.8, pscan_seconds=0.2)
    sock_dir = Path(tempfile.mkdtemp(prefix="gmp-"))  # AF_UNIX paths must stay short
    gmp = GmpDouble(sock_dir / "gvmd.sock", scan_seconds=0.8)
    moto = MotoInspector2().start()
    moto.queue_results(sample_findings("aws_inspector2/aws_inspector2_package_vuln_metadata.json"))
    monkeypatch.setenv("AIRFLOW_CONN_ZAP_DEFAULT", json.dumps(
        {"conn_type": "zap", "host": "127.0.0.1", "port": zap.port, "password": zap.api_key}))
    monkeypatch.setenv("AIRFLOW_CONN_GVM_DEFAULT", json.dumps(
        {"conn_type": "gvm", "login": gmp.username, "password": gmp.password,
         "extra": {"socket_path": str(sock_dir / "gvmd.sock")}}))
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", connection_json(moto.endpoint_url))
    try:
        yield {"zap": zap, "gmp": gmp, "moto": moto}
    finally:
        zap.close()
        gmp.close()
        moto.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.fixture
def catalog(tmp_path: Path, demo_target: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "services.yaml"
    path.write_text(yaml.safe_dump({"services": [{
        "name": "demo-target", "base_url": demo_target, "openapi_url": f"{demo_target}/openapi.json",
        "scanners": ["zap", "gvm", "wapiti", "inspector"], "owner": "platform@example.com",
        "repository": str(demo.TARGET_DIR), "tier": "medium",
        "scan": {"wapiti_modules": ["sql"], "wapiti_max_scan_s": 60, "poke_interval_s": 1},
    }]}))
    monkeypatch.setenv("SELFHEAL_CATALOG", str(path))
    return path


def _states(dr) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ti in dr.get_task_instances():
        out.setdefault(ti.task_id, []).append(ti.state)
    return out


def test_scan_fills_the_triage_table_from_all_four_scanners(
    dagbag, migrated_triage_url, scanners, catalog, wapiti_bin, monkeypatch
) -> None:
    monkeypatch.setenv("SELFHEAL_DATABASE_URL", migrated_triage_url)
    monkeypatch.setenv("SELFHEAL_WAPITI", str(wapiti_bin))
    dag = dagbag.get_dag("selfheal_scan")
    started = time.monotonic()
    dr = dag.test(run_conf={"service": "demo-target", "scanners": ["zap", "gvm", "wapiti", "inspector"]})
    elapsed = time.monotonic() - started
    states = _states(dr)
    assert dr.state == DagRunState.SUCCESS, states
    assert states["ingest"] == [TaskInstanceState.SUCCESS] * 4

    engine = sa.create_engine(migrated_triage_url)
    with engine.connect() as c:
        runs = c.execute(sa.select(scan_runs.c.scanner, scan_runs.c.status, scan_runs.c.finished_at)).all()
        assert sorted(r.scanner for r in runs) == ["gvm", "inspector", "wapiti", "zap"]
        assert all(r.status == "succeeded" and r.finished_at is not None for r in runs), runs
        assert c.execute(sa.select(sa.func.count()).select_from(raw_reports)).scalar() == 4
        assert c.execute(sa.select(sa.func.count()).select_from(report_inbox)).scalar() == 0
        rows = c.execute(sa.select(findings.c.sources, findings.c.service, findings.c.cwe,
                                   findings.c.param, findings.c.kind)).all()
    seen = {s for r in rows for s in r.sources}
    assert {"zap", "gvm", "wapiti", "inspector"} <= seen, seen
    assert {r.service for r in rows} == {"demo-target"}
    # The SQL injection on ?category= is found by both ZAP (double) and Wapiti (real): one row, two sources.
    sqli = [r for r in rows if r.cwe == 89 and r.param == "category"]
    assert len(sqli) == 1 and {"zap", "wapiti"} <= set(sqli[0].sources), sqli
    assert any(r.kind == "dependency" for r in rows) and any(r.kind == "host" for r in rows)
    print(f"full scan cycle of 1 service x 4 scanners: {elapsed:.1f} s")


def test_a_report_that_fails_to_parse_is_quarantined_and_the_rest_ingested(migrated_triage_url) -> None:
    engine = sa.create_engine(migrated_triage_url)
    run_id = store.start_scan_run(engine, "zap", "demo-target", scope="http://x")
    good = (FIXTURES / "handmade" / "zap_api_alerts.json").read_bytes()
    ids = [
        inbox.put(engine, scan_run_id=run_id, scanner="zap", fmt="zap-api", service="demo-target",
                  source="zap:good", body=good),
        inbox.put(engine, scan_run_id=run_id, scanner="zap", fmt="zap-api", service="demo-target",
                  source="zap:truncated", body=good[: len(good) // 2]),
    ]
    out = scan_tasks.ingest_inbox(engine, {"scan_run_id": run_id, "service": "demo-target", "scanner": "zap",
                                           "inbox_ids": ids}, complete_scope=False)
    assert out["quarantined"] == 1 and out["findings"] > 0
    with engine.connect() as c:
        q = c.execute(sa.select(quarantine.c.source, quarantine.c.error)).one()
        assert q.source == "zap:truncated" and q.error
        assert c.execute(sa.select(sa.func.count()).select_from(findings)).scalar() > 0
        assert c.execute(sa.select(sa.func.count()).select_from(report_inbox)).scalar() == 0
    # Re-running the ingest task (e.g. a cleared task) changes nothing: the inbox rows are gone.
    again = scan_tasks.ingest_inbox(engine, {"scan_run_id": run_id, "service": "demo-target", "scanner": "zap",
                                             "inbox_ids": ids}, complete_scope=False)
    assert again["new"] == 0 and again["findings"] == 0


def test_due_services_follow_each_service_schedule() -> None:
    from datetime import UTC, datetime

    from selfheal.catalog import Service

    every6h = Service(name="a", base_url="http://a", owner="o", repository="/r", schedule="0 */6 * * *")
    hourly = Service(name="b", base_url="http://b", owner="o", repository="/r", schedule="0 * * * *")
    none = Service(name="c", base_url="http://c", owner="o", repository="/r")
    start, end = datetime(2026, 1, 1, 5, 45, tzinfo=UTC), datetime(2026, 1, 1, 6, 0, tzinfo=UTC)
    assert [s.name for s in scan_tasks.due_services([every6h, hourly, none], start, end)] == ["a", "b"]
    start, end = datetime(2026, 1, 1, 6, 45, tzinfo=UTC), datetime(2026, 1, 1, 7, 0, tzinfo=UTC)
    assert [s.name for s in scan_tasks.due_services([every6h, hourly, none], start, end)] == ["b"]


def test_a_complete_scan_whose_report_is_bad_or_repeated_resolves_nothing(migrated_triage_url) -> None:
    """Auto-resolve trusts a complete scan only when its reports were really read this run."""
    engine = sa.create_engine(migrated_triage_url)
    good = (FIXTURES / "handmade" / "zap_api_alerts.json").read_bytes()

    def scan(body: bytes, source: str) -> dict:
        run_id = store.start_scan_run(engine, "zap", "demo-target", scope="http://x")
        ids = [inbox.put(engine, scan_run_id=run_id, scanner="zap", fmt="zap-api", service="demo-target",
                         source=source, body=body)]
        return scan_tasks.ingest_inbox(engine, {"scan_run_id": run_id, "service": "demo-target",
                                                "scanner": "zap", "inbox_ids": ids}, complete_scope=True)

    first = scan(good, "zap:first")
    assert first["new"] > 0
    for body, source in ((good[:100], "zap:truncated"), (good, "zap:same-bytes-again")):
        out = scan(body, source)
        assert out["resolved"] == 0, (source, out)
    with engine.connect() as c:
        statuses = c.execute(sa.select(findings.c.status).distinct()).scalars().all()
        runs = c.execute(sa.select(scan_runs.c.status).order_by(scan_runs.c.id)).scalars().all()
    assert "resolved" not in statuses
    assert runs == ["succeeded", "partial", "partial"]


def test_inspector_sync_ingests_what_changed_and_stores_the_watermark(
    dagbag, migrated_triage_url, catalog, monkeypatch
) -> None:
    from selfheal.scanners.inspector import InspectorHook, watermark_key

    moto = MotoInspector2().start()
    try:
        page = sample_findings("aws_inspector2/aws_inspector2_package_vuln_metadata.json")
        # moto answers each distinct ListFindings query with the next queued list: one for
        # the sensor's probe (maxResults=1), one for the sync's paginated read.
        moto.queue_results(page, page)
        monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", connection_json(moto.endpoint_url))
        monkeypatch.setenv("SELFHEAL_DATABASE_URL", migrated_triage_url)
        dr = dagbag.get_dag("selfheal_inspector_sync").test()
        states = _states(dr)
        assert dr.state == DagRunState.SUCCESS, states
        assert states["inspector_ingest"] == [TaskInstanceState.SUCCESS]
        engine = sa.create_engine(migrated_triage_url)
        with engine.connect() as c:
            rows = c.execute(sa.select(findings.c.sources, findings.c.service, findings.c.kind)).all()
            run = c.execute(sa.select(scan_runs.c.scanner, scan_runs.c.status)).one()
        assert rows and all(r.sources == ["inspector"] for r in rows)
        # The catalog has exactly one service using Inspector2: its findings are attributed to it.
        assert {r.service for r in rows} == {"demo-target"}
        assert run.scanner == "inspector" and run.status == "succeeded"
        hook = InspectorHook()
        assert inbox.PgWatermarkStore(engine).get(watermark_key(hook.aws_conn_id, hook.region_name)) is not None
    finally:
        moto.stop()

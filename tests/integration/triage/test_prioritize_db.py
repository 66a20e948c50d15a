"""prioritize(engine): intel joined through CVEs, results stored, only changed rows rewritten."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from triage_reports import SQLI, inspector_json, zap_json

from selfheal.triage import intel, prioritize, store
from selfheal.triage.schema import findings

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "intel"
T0 = datetime(2025, 6, 1, tzinfo=UTC)
SERVICES = {"shop": {"tier": "critical", "traffic_rps": 100.0, "internet_facing": True}}


def _rows(engine: sa.Engine) -> dict[str, sa.Row]:
    with engine.connect() as c:
        return {(r.package_name or r.path_template): r for r in c.execute(sa.select(findings))}


def test_prioritize_uses_kev_and_epss_and_writes_back_only_changes(engine: sa.Engine) -> None:
    reports = [
        store.ReportIn(
            inspector_json([("CVE-2021-44228", "log4j-core", "2.14.0"), ("CVE-2022-0001", "requests", "2.0")]),
            "insp.json",
            service="shop",
        ),
        store.ReportIn(zap_json("shop.test", [(SQLI, "GET", "/items/1", "q")]), "zap.json", service="shop"),
    ]
    store.ingest_reports(engine, reports, now=T0)
    first = prioritize.prioritize(engine, SERVICES, now=T0)
    assert (first.rows, first.changed) == (3, 3)
    rows = _rows(engine)
    assert all(r.priority is not None and r.ssvc_decision and r.sla_due for r in rows.values())
    assert rows["log4j-core"].kev in (None, False)
    assert rows["log4j-core"].sla_due == T0 + timedelta(days=30)  # high (inspectorScore 7.5)

    # nothing changed: nothing written
    assert prioritize.prioritize(engine, SERVICES, now=T0).changed == 0

    # KEV and EPSS arrive: the log4j finding becomes actively exploited, requests gets a score
    intel.load_kev(engine, FIXTURES / "kev.json")
    intel.load_epss(engine, FIXTURES / "epss.csv")
    before = rows["log4j-core"].priority
    again = prioritize.prioritize(engine, SERVICES, now=T0)
    rows = _rows(engine)
    log4j = rows["log4j-core"]
    assert log4j.kev is True
    assert abs(log4j.epss - 0.94358) < 1e-9
    assert log4j.priority > before
    assert log4j.ssvc_decision == "Act"  # active, automatable (AV:N/PR:N/UI:N), high mission (critical tier)
    assert abs(rows["requests"].epss - 0.00071) < 1e-9
    assert again.changed == 2  # the web finding has no CVE: untouched

    # resolved findings are not scored
    store.set_status(engine, log4j.id, "resolved", "test")
    assert prioritize.prioritize(engine, SERVICES, now=T0).rows == 2


def test_prioritize_on_an_empty_table(engine: sa.Engine) -> None:
    res = prioritize.prioritize(engine, None, now=T0)
    assert (res.rows, res.changed) == (0, 0)

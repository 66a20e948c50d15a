"""Prometheus metrics from the seeded triage database, read back with prometheus_client's own parser."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import sqlalchemy as sa
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from selfheal.findings.model import SEVERITIES
from selfheal.pipeline_state import patches
from selfheal.triage.lifecycle import STATUSES
from selfheal.triage.schema import findings as F
from selfheal.triage.schema import quarantine
from selfheal.web.metrics import DURATION_BUCKETS, METRICS, SelfhealCollector, exported_names, make_registry

pytestmark = pytest.mark.postgres


def scrape(engine: sa.Engine, **kwargs) -> dict[str, list]:
    """name -> samples, parsed from the text exposition format."""
    text = generate_latest(make_registry(SelfhealCollector(lambda: engine, **kwargs))).decode()
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        out.setdefault(fam.name, []).extend(fam.samples)
    return out


def value(samples: list, name: str, **labels: str) -> float:
    hits = [
        s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


def test_every_family_is_exported_with_conventional_names(web_db) -> None:
    m = scrape(web_db.engine)
    names = {s.name for samples in m.values() for s in samples}
    assert names <= exported_names()
    assert {n for n, kind in METRICS.items() if kind != "histogram"} <= names
    assert {f"{n}_bucket" for n, kind in METRICS.items() if kind == "histogram"} <= names
    for name, kind in METRICS.items():
        assert name.startswith("selfheal_") and name == name.lower()
        assert name.endswith("_total") == (kind == "counter"), name
        if kind == "histogram" or "duration" in name or "age" in name:
            assert name.endswith("_seconds"), name
    assert value(m["selfheal_up"], "selfheal_up") == 1


def test_findings_gauge_matches_the_table(web_db) -> None:
    m = scrape(web_db.engine)["selfheal_findings"]
    with web_db.engine.connect() as c:
        rows = Counter((s, st) for s, st in c.execute(sa.select(F.c.severity, F.c.status)))
    for sev, st in itertools.product(SEVERITIES, STATUSES):
        assert value(m, "selfheal_findings", severity=sev, status=st) == rows.get((sev, st), 0)
    assert sum(s.value for s in m) == web_db.seeded.findings


def test_exposure_histogram_counts_closed_windows_in_buckets(web_db) -> None:
    m = scrape(web_db.engine)["selfheal_finding_exposure_window_seconds"]
    with web_db.engine.connect() as c:
        rows = c.execute(sa.select(F).where(F.c.status != "false_positive")).all()
    per: dict[str, list[float]] = {}
    for r in rows:
        ends = [t for t in (r.mitigated_at, r.resolved_at) if t is not None]
        if ends:
            per.setdefault(r.severity, []).append((min(ends) - r.first_seen).total_seconds())
    for sev in SEVERITIES:
        vals = per.get(sev, [])
        buckets = [
            (float(s.labels["le"]), s.value)
            for s in m
            if s.name.endswith("_bucket") and s.labels["severity"] == sev
        ]
        assert [le for le, _ in buckets] == [*map(float, DURATION_BUCKETS), float("inf")]
        for le, n in buckets:
            assert n == sum(1 for v in vals if v <= le), (sev, le)
        assert value(m, "selfheal_finding_exposure_window_seconds_count", severity=sev) == len(vals)
        assert value(m, "selfheal_finding_exposure_window_seconds_sum", severity=sev) == pytest.approx(
            sum(vals)
        )
    assert (
        sum(len(v) for v in per.values()) == len(web_db.seeded.mitigated_ids) + 1
    )  # + the resolved dependency


def test_remediation_patches_rollbacks_sandbox_and_scanner_errors(web_db) -> None:
    m = scrape(web_db.engine)
    assert (
        value(
            m["selfheal_finding_time_to_remediate_seconds"],
            "selfheal_finding_time_to_remediate_seconds_count",
            severity="high",
        )
        >= 1
    )
    ttr_total = sum(
        s.value for s in m["selfheal_finding_time_to_remediate_seconds"] if s.name.endswith("_count")
    )
    assert ttr_total == len(web_db.seeded.resolved_ids)
    assert value(m["selfheal_patches"], "selfheal_patches", state="promoted") == 1
    assert value(m["selfheal_patches"], "selfheal_patches", state="verifying") == 0
    outcomes = {s.labels["outcome"]: s.value for s in m["selfheal_patch_outcomes"]}
    assert outcomes == {"promoted": 1, "rolled_back": 1, "failed": 1}
    assert [(s.labels, s.value) for s in m["selfheal_rollbacks"]] == [({"service": "orders"}, 1)]
    sb = m["selfheal_sandbox_duration_seconds"]
    assert value(sb, "selfheal_sandbox_duration_seconds_count", result="passed") == 2
    assert value(sb, "selfheal_sandbox_duration_seconds_sum", result="passed") == pytest.approx(42 + 95.5)
    assert value(sb, "selfheal_sandbox_duration_seconds_bucket", result="passed", le="60.0") == 1
    assert value(sb, "selfheal_sandbox_duration_seconds_count", result="failed") == 1
    errs = m["selfheal_scanner_errors"]
    assert value(errs, "selfheal_scanner_errors_total", scanner="inspector", kind="quarantined_report") == 1
    assert value(errs, "selfheal_scanner_errors_total", scanner="inspector", kind="failed_run") == 1
    assert value(m["selfheal_virtual_patches"], "selfheal_virtual_patches", service="shop") == 1
    assert value(m["selfheal_rollout_events"], "selfheal_rollout_events_total", kind="rollback") == 1
    assert value(m["selfheal_audit_entries"], "selfheal_audit_entries_total") > 10
    assert value(
        m["selfheal_scan_last_success_timestamp_seconds"],
        "selfheal_scan_last_success_timestamp_seconds",
        scanner="zap",
    ) == pytest.approx(web_db.seeded.now.timestamp() - 86400 + 120)
    assert (
        value(m["selfheal_findings_sla_overdue"], "selfheal_findings_sla_overdue", severity="critical") == 1
    )


def test_results_are_cached_for_the_ttl(web_db) -> None:
    clock = [1000.0]
    queries: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        queries.append(statement)

    sa.event.listen(web_db.engine, "before_cursor_execute", count)
    try:
        reg = make_registry(SelfhealCollector(lambda: web_db.engine, ttl=15, clock=lambda: clock[0]))
        generate_latest(reg)
        n = len(queries)
        assert n > 5
        clock[0] += 10
        generate_latest(reg)
        assert len(queries) == n, "a scrape within the TTL must not query the database"
        clock[0] += 6
        generate_latest(reg)
        assert len(queries) == 2 * n
    finally:
        sa.event.remove(web_db.engine, "before_cursor_execute", count)


def test_unreadable_database_reports_up_zero(tmp_path) -> None:
    from selfheal.triage.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'never-migrated.db'}")  # no tables: every query fails
    m = scrape(engine)
    assert list(m) == ["selfheal_up"] and value(m["selfheal_up"], "selfheal_up") == 0
    engine.dispose()


def test_empty_database_exports_zeros(empty_pg_url: str) -> None:
    from selfheal.triage.db import make_engine

    engine = make_engine(empty_pg_url)
    try:
        m = scrape(engine)
    finally:
        engine.dispose()
    assert sum(s.value for s in m["selfheal_findings"]) == 0
    assert len(m["selfheal_findings"]) == len(SEVERITIES) * len(STATUSES)
    assert (
        value(
            m["selfheal_finding_exposure_window_seconds"],
            "selfheal_finding_exposure_window_seconds_count",
            severity="critical",
        )
        == 0
    )
    assert m["selfheal_rollbacks"] == []


def test_a_malformed_sandbox_record_is_skipped_not_fatal(web_db, empty_pg_url: str) -> None:
    from datetime import UTC, datetime

    from selfheal.triage.db import make_engine

    engine = make_engine(empty_pg_url)
    now = datetime.now(UTC)
    try:
        with engine.begin() as c:
            for i, sandbox in enumerate(
                [{"duration_s": "soon", "passed": True}, {"duration_s": 7.5}, ["not", "a", "dict"]]
            ):
                c.execute(
                    patches.insert().values(
                        id=f"p{i}",
                        service="shop",
                        recipe="r",
                        state="failed",
                        finding_ids=[],
                        plan={},
                        sandbox=sandbox,
                        history=[],
                        created_at=now,
                        updated_at=now,
                    )
                )
            c.execute(
                quarantine.insert().values(
                    received_at=now, source="x", error="bad", body=b"x", size=1, sha256="0" * 64
                )
            )
        m = scrape(engine)
    finally:
        engine.dispose()
    assert value(m["selfheal_up"], "selfheal_up") == 1
    assert (
        value(
            m["selfheal_sandbox_duration_seconds"], "selfheal_sandbox_duration_seconds_count", result="failed"
        )
        == 1
    )
    assert (
        value(
            m["selfheal_scanner_errors"],
            "selfheal_scanner_errors_total",
            scanner="unknown",
            kind="quarantined_report",
        )
        == 1
    )

"""Instant mitigations applied right after the triage commit, against a real HAProxy and a real
backend, the desired state and the audit ledger in a real triage database (Postgres and SQLite)."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from selfheal.audit import ledger
from selfheal.catalog import Catalog
from selfheal.findings.model import Finding, Location, Package
from selfheal.remediation.mitigate import apply_instant_mitigations, prepare_inline, summarize
from selfheal.triage import store
from tests.integration.remediation.mitigate_kit import make_catalog

pytestmark = [pytest.mark.postgres]

ZAP_ALERTS = Path(__file__).resolve().parents[2] / "fixtures/scanner-samples/handmade/zap_api_alerts.json"
EXPLOIT = "/api/items/42?q=" + quote("1' OR '1'='1")
LEGIT = "/api/items/42?q=books"


def web(service: str, *, cwe: int | None = 89, path: str = "/api/items/42", param: str | None = "q",
        confidence: str = "medium", fp: str | None = None) -> Finding:
    return Finding(
        scanner="zap", rule_id="40018", title="SQL Injection", severity="high", kind="web", cwe=cwe,
        confidence=confidence, service=service, fingerprint=fp or f"{service}-{cwe}-{path}-{param}",
        location=Location(method="GET", path=path, param=param, url=f"http://{service}.localhost{path}"),
    )


def ingest(engine: sa.Engine, found: list[Finding], source: str) -> store.IngestResult:
    """The real ingest path (raw report kept, COPY/upsert, observations), committed on return."""
    return store.ingest_findings(engine, found, source=source, scanner="zap")


def logged(caplog, capsys) -> str:
    """Log text, wherever it went (Airflow's import routes logging through structlog to stdout)."""
    out = capsys.readouterr()
    return caplog.text + out.out + out.err


def ledger_count(stack, subject: str | None = None) -> int:
    sql = "SELECT count(*) AS n FROM audit_log" + (" WHERE subject = :s" if subject else "")
    return stack.rows(sql, s=subject)[0].n


def test_an_ingested_injection_finding_is_blocked_at_the_gateway_and_legit_traffic_passes(stack) -> None:
    assert stack.status("shop", EXPLOIT) == 200  # exposed before: the block below is ours
    result = ingest(stack.engine, [web("shop")], "zap:scan-1")
    assert len(result.new_ids) == 1
    fid = result.new_ids[0]

    mitigator = prepare_inline(stack.engine, stack.catalog, stack.settings_json)
    try:
        out = mitigator(result.new_ids)
    finally:
        mitigator.close()

    assert [(r["finding_id"], r["outcome"]) for r in out] == [(fid, "applied")], out
    rule_id = out[0]["rule_id"]
    assert rule_id and "CWE-89" in out[0]["reason"]
    assert stack.status("shop", EXPLOIT) == 403
    hits = stack.backend.hits
    assert stack.status("shop", LEGIT) == 200 and stack.backend.hits == hits + 1
    # The rule is scoped to its parameter and its path: other parameters and routes pass.
    assert stack.status("shop", "/api/items/42?other=" + quote("' OR 1=1--")) == 200
    assert stack.status("shop", "/api/orders?q=" + quote("' OR 1=1--")) == 200

    row = stack.rows("SELECT status, mitigated_at FROM findings WHERE id = :i", i=fid)[0]
    assert row.status == "mitigated" and row.mitigated_at is not None
    hist = stack.rows(
        "SELECT from_status, to_status, actor, reason FROM status_changes WHERE finding_id = :i", i=fid
    )
    assert [(h.from_status, h.to_status, h.actor) for h in hist] == [("new", "mitigated", "selfheal:ingest")]
    assert rule_id in hist[0].reason
    assert [r.id for r in stack.rows("SELECT id FROM gateway_rules")] == [rule_id]
    entries = ledger.entries(stack.engine, subject=f"finding:{fid}")
    assert [e.action for e in entries] == ["mitigation"]
    p = entries[0].payload
    assert p["rule_id"] == rule_id and p["from_status"] == "new" and p["decision"] == "auto"
    assert any("CWE-89" in r for r in p["reasons"]) and p["effective_mode"] == "mitigate"
    assert [e.action for e in ledger.entries(stack.engine, subject=rule_id)] == ["gateway.gateway.rule.apply"]
    assert ledger.verify(stack.engine).ok


def test_rerunning_changes_nothing(stack) -> None:
    result = ingest(stack.engine, [web("shop")], "zap:scan-1")
    first = apply_instant_mitigations(stack.engine, stack.gw, stack.catalog, result.new_ids)
    assert summarize(first)["applied"] == 1
    before = (
        ledger_count(stack),
        stack.rows("SELECT count(*) AS n FROM status_changes")[0].n,
        stack.rows("SELECT count(*) AS n FROM gateway_audit")[0].n,
        stack.live_patterns("shop"),
    )
    again = apply_instant_mitigations(stack.engine, stack.gw, stack.catalog, result.new_ids)
    assert [(r["outcome"], r["rule_id"]) for r in again] == [("unchanged", first[0]["rule_id"])]
    # The sweep (what the remediation DAG's first step runs) finds nothing left to do.
    assert apply_instant_mitigations(stack.engine, stack.gw, stack.catalog) == []
    # Re-ingesting the same findings (another report) creates nothing new to mitigate.
    assert ingest(stack.engine, [web("shop")], "zap:scan-2").new_ids == []
    after = (
        ledger_count(stack),
        stack.rows("SELECT count(*) AS n FROM status_changes")[0].n,
        stack.rows("SELECT count(*) AS n FROM gateway_audit")[0].n,
        stack.live_patterns("shop"),
    )
    assert after == before and len(after[3]) == 1
    assert stack.status("shop", EXPLOIT) == 403


def test_observe_mode_and_policy_approval_leave_traffic_alone(stack) -> None:
    result = ingest(stack.engine, [web("admin"), web("vault")], "zap:scan-1")
    by_service = {r["service"]: r for r in
                  apply_instant_mitigations(stack.engine, stack.gw, stack.catalog, result.new_ids)}

    observe = by_service["admin"]
    assert observe["outcome"] == "skipped" and "observe" in observe["reason"], observe
    critical = by_service["vault"]
    assert critical["outcome"] == "skipped" and critical["rule_id"], critical
    assert "policy: approval" in critical["reason"] and "tier critical" in critical["reason"], critical

    for svc in ("admin", "vault"):
        assert stack.status(svc, EXPLOIT) == 200
        assert stack.live_patterns(svc) == []
    assert stack.rows("SELECT count(*) AS n FROM gateway_rules")[0].n == 0
    assert {r.status for r in stack.rows("SELECT status FROM findings")} == {"new"}
    # Observe: nothing recorded here (the remediation DAG reports what would be done). Approval:
    # the policy's decision is recorded once, a re-run adds nothing.
    vault_id = critical["finding_id"]
    assert ledger_count(stack, f"finding:{observe['finding_id']}") == 0
    decisions = ledger.entries(stack.engine, subject=f"finding:{vault_id}")
    assert [(e.action, e.payload["decision"]) for e in decisions] == [("decision", "approval")]
    apply_instant_mitigations(stack.engine, stack.gw, stack.catalog, result.new_ids)
    assert ledger_count(stack, f"finding:{vault_id}") == 1


def test_findings_without_a_rule_are_skipped_with_the_reason_and_the_batch_goes_on(stack) -> None:
    found = [
        web("shop", cwe=1021, param=None, fp="clickjacking"),   # no virtual patch recipe for the CWE
        web("shop", cwe=None, fp="no-cwe"),
        web("shop", cwe=89, path="/search", confidence="low", fp="weak"),  # injection, not exploitable
        Finding(scanner="inspector", rule_id="CVE-2023-1", title="old lib", severity="high",
                kind="dependency", service="shop", fingerprint="dep", cves=("CVE-2023-1",),
                package=Package("lib", "1.0", "1.1")),
        web("ghost", fp="unknown-service"),
        web("shop", fp="sqli"),
    ]
    result = ingest(stack.engine, found, "mixed")
    out = apply_instant_mitigations(stack.engine, stack.gw, stack.catalog, result.new_ids)
    ids = dict(stack.rows("SELECT fingerprint, id FROM findings"))
    got = {r["finding_id"]: r for r in out}
    assert got[ids["sqli"]]["outcome"] == "applied"
    reason = {fp: got[ids[fp]]["reason"] for fp in ids if fp != "sqli"}
    assert all(got[ids[fp]]["outcome"] == "skipped" for fp in reason), out
    assert "CWE-1021 has no virtual patch recipe" in reason["clickjacking"]
    assert "no CWE" in reason["no-cwe"]
    assert "policy: approval" in reason["weak"] and "without evidence of exploitability" in reason["weak"]
    assert "kind 'dependency'" in reason["dep"]
    assert "not in the catalog" in reason["unknown-service"]
    assert stack.status("shop", EXPLOIT) == 403
    assert stack.status("shop", "/search?q=" + quote("' OR 1=1--")) == 200


def test_gateway_down_the_ingest_commits_and_a_catch_up_sweep_applies_later(pg_stack, caplog, capsys) -> None:
    """Through the scan DAG's own ingest function: HAProxy is down when the ingest runs."""
    from selfheal.scanners import inbox
    from selfheal.tasks import scan as scan_tasks

    stack = pg_stack
    stack.haproxy.stop()
    engine = stack.engine
    run_id = store.start_scan_run(engine, "zap", "shop", scope="http://shop.localhost")
    # A real ZAP API report (its SQL injection is on GET /api/items/42, parameter q).
    ids = [inbox.put(engine, scan_run_id=run_id, scanner="zap", fmt="zap-api", service="shop",
                     source="zap:scan-1", body=ZAP_ALERTS.read_bytes())]
    caplog.set_level(logging.WARNING)
    mitigator = prepare_inline(engine, stack.catalog, stack.settings_json)
    try:
        out = scan_tasks.ingest_inbox(engine, {"scan_run_id": run_id, "service": "shop", "scanner": "zap",
                                               "inbox_ids": ids}, complete_scope=True, mitigator=mitigator)
    finally:
        mitigator.close()
    assert out["new"] == 6 and out["mitigations"]["failed"] == 1 and out["mitigations"]["applied"] == 0, out
    assert "gateway unreachable" in logged(caplog, capsys)
    assert {r.status for r in stack.rows("SELECT status FROM findings")} == {"new"}  # committed, not claimed
    (row,) = stack.rows("SELECT id FROM findings WHERE cwe = 89")

    # The gateway comes back; the remediation DAG's first step (the sweep) catches up.
    stack.haproxy.start()
    stack.gw.reconcile()  # servers back (HAProxy keeps runtime state in memory only)
    out = apply_instant_mitigations(engine, stack.gw, stack.catalog)
    assert [r["finding_id"] for r in out if r["outcome"] == "applied"] == [row.id]
    assert {r["outcome"] for r in out if r["finding_id"] != row.id} == {"skipped"}  # no rule for those
    assert stack.status("shop", EXPLOIT) == 403
    assert stack.rows("SELECT status FROM findings WHERE id = :i", i=row.id)[0].status == "mitigated"


def test_no_gateway_configured_the_ingest_still_commits(pg_engine, caplog, capsys) -> None:
    caplog.set_level(logging.WARNING)
    mitigator = prepare_inline(pg_engine, make_catalog(), '{"run_dir": 7}')
    assert mitigator.active and mitigator.gateway is None
    assert "gateway not configured" in logged(caplog, capsys)
    result = ingest(pg_engine, [web("shop")], "zap:scan-1")
    out = mitigator(result.new_ids)
    assert [r["outcome"] for r in out] == ["failed"] and "not configured" in out[0]["reason"]
    with pg_engine.connect() as c:
        assert c.execute(sa.text("SELECT status FROM findings")).scalar_one() == "new"


def test_an_observe_only_catalog_prepares_nothing(pg_engine) -> None:
    observe_only = Catalog(services=tuple(s for s in make_catalog().services if s.mode == "observe"))
    mitigator = prepare_inline(pg_engine, observe_only, '{"run_dir": "/nonexistent"}')
    assert not mitigator.active and mitigator.gateway is None
    result = ingest(pg_engine, [web("admin")], "zap:scan-1")
    assert mitigator(result.new_ids) == []

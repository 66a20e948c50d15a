"""The remediation core on the real triage database (Postgres) and the demo's real git repository:
the patch store, the selection of findings, planning and the per-run batches."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from selfheal.audit import ledger
from selfheal.catalog import load_catalog
from selfheal.findings.model import Finding, Location
from selfheal.patches.git import git, read_trailers
from selfheal.patches.model import FindingRef, PatchPlan
from selfheal.patches.state import PatchRecord
from selfheal.remediation.planning import one_per_service, pending_patches, plan_findings, supersede
from selfheal.remediation.selection import audit_detections, finding_from_row, finding_rows, select_findings
from selfheal.remediation.store import PatchStore, StoredPatch
from selfheal.triage.schema import findings as F
from tests.integration.remediation.kit import SERVICE, ingest
from tests.integration.sandbox.kit import demo_findings

pytestmark = pytest.mark.postgres


@pytest.fixture
def engine(migrated_triage_url: str, catalog_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SELFHEAL_CATALOG", str(catalog_path))
    e = sa.create_engine(migrated_triage_url)
    yield e
    e.dispose()


def _web(i: int) -> Finding:
    return Finding(scanner="zap", rule_id=f"r{i}", title=f"XSS {i}", severity="high", kind="web", cwe=79,
                   location=Location(url=f"http://demo-target.localhost/p{i}?q=1", method="GET", path=f"/p{i}",
                                     param="q"), service=SERVICE)


def _record(pid: str, finding_ids: list[int], state: str = "planned") -> StoredPatch:
    plan = PatchPlan(id=pid, service=SERVICE, recipe="dependency_upgrade",
                     findings=(FindingRef("fp", "r", "t", "high", "dependency", db_id=finding_ids[0]),),
                     title="t", diff="diff --git a/x b/x\n", base_commit="abc")
    rec = PatchRecord.new(plan)
    rec.commit, rec.branch = "c0ffee", "selfheal/patch-" + pid
    if state != "planned":
        rec.start_verification()
        rec.record_sandbox(True, {"image": "img:1"}, image="sha256:1", image_tag="img:1")
    return StoredPatch(rec, finding_ids)


def test_store_adds_once_round_trips_and_edits_under_a_lock(engine) -> None:
    store = PatchStore(engine)
    sp, created = store.add(_record("p000000000000001", [1, 2]))
    assert created
    again, created2 = store.add(_record("p000000000000001", [9]))
    assert not created2 and again.finding_ids == [1, 2]  # the stored one wins: idempotent by plan id
    with store.edit(sp.id) as cur:
        cur.record.start_verification()
        cur.policy = {"pre": {"decision": "auto"}}
    got = store.require(sp.id)
    assert got.state == "verifying" and got.decision == "auto"
    assert got.record.commit == "c0ffee" and got.record.plan == sp.record.plan
    assert [t.to_state for t in got.record.history] == ["planned", "verifying"]
    with engine.connect() as c:
        row = c.execute(sa.text("select image, image_digest, finding_ids from patches")).one()
    assert row.finding_ids == [1, 2]
    with pytest.raises(Exception, match="no such patch"):
        store.require("p0000000000000ff")
    assert store.covered_finding_ids() == {1, 2}


def test_selection_takes_the_highest_priority_first_caps_the_batch_and_skips_covered(engine) -> None:
    ids = ingest(engine, [_web(i) for i in range(8)])
    by_title = {}
    with engine.begin() as c:
        for n, (_fp, fid) in enumerate(sorted(ids.items(), key=lambda kv: kv[1])):
            c.execute(F.update().where(F.c.id == fid).values(priority=10.0 * n))
        by_title = dict(c.execute(sa.select(F.c.id, F.c.priority)).all())
    order = sorted(by_title, key=lambda i: -by_title[i])
    store = PatchStore(engine)
    store.add(_record("p000000000000002", [order[0]]))  # the top one already has a patch
    sel = select_findings(engine, [SERVICE], 3, store=store)
    assert sel.finding_ids == order[1:4] and sel.covered == 1 and sel.deferred == 4
    assert select_findings(engine, ["another-service"], 3).finding_ids == []
    # Detections are audited once per finding, however often it is selected.
    assert audit_detections(engine, sel.finding_ids, "test") == 3
    audit_detections(engine, sel.finding_ids, "test")
    assert len(ledger.entries(engine, action="detection")) == 3
    # The triage row round-trips into the Finding the recipes read.
    row = finding_rows(engine, [order[1]])[order[1]]
    f = finding_from_row(row)
    assert f.fingerprint == row["fingerprint"] and f.location.param == "q" and f.cwe == 79


def test_planning_is_idempotent_commits_on_branches_and_recovers_scanner_evidence(
    engine, demo_repo: Path, catalog_path: Path
) -> None:
    catalog = load_catalog(catalog_path)
    ids = ingest(engine, demo_findings())
    report = plan_findings(engine, catalog, sorted(ids.values()), actor="test")
    assert not report.errors and report.mitigations_skipped == 1, report
    assert len(report.created) == 2 and report.existing == []
    store = PatchStore(engine)
    recipes = {store.require(p).record.recipe: store.require(p) for p in report.created}
    assert set(recipes) == {"code_fix", "dependency_upgrade"}
    code = recipes["code_fix"]
    # The SQL injection's plan replays Wapiti's own request (recovered from the raw report).
    sources = {a.source for a in code.record.plan.verification.exploit_replay}
    assert any("wapiti" in s for s in sources), sources
    trailers = read_trailers(demo_repo, code.record.commit)
    assert trailers["Patch-Id"] == [code.id] and code.record.branch == f"selfheal/patch-{code.id}"
    assert git(demo_repo, "rev-parse", code.record.branch) == code.record.commit
    # Planning the same findings again changes nothing.
    again = plan_findings(engine, catalog, sorted(ids.values()), actor="test")
    assert again.created == [] and sorted(again.existing) == sorted(report.created)
    assert len(ledger.entries(engine, action="patch.planned")) == 2
    # A run takes one patch per service (highest priority first); the other waits.
    pending, deferred, _ = pending_patches(engine, store, 10, services=[SERVICE])
    assert sorted(pending) == sorted(report.created) and deferred == 0
    keep, held = one_per_service(store, pending)
    assert len(keep) == 1 and len(held) == 1
    capped, deferred, _ = pending_patches(engine, store, 1, services=[SERVICE])
    assert len(capped) == 1 and deferred == 1
    # Once the code fix runs, the dependency upgrade planned on the old HEAD is re-planned on top of it.
    dep = recipes["dependency_upgrade"]
    new = supersede(engine, catalog, store, dep.id, code.record.commit, actor="test")
    assert len(new) == 1 and store.require(dep.id).state == "failed"
    assert store.require(new[0]).record.plan.base_commit == code.record.commit
    assert f"superseded by {new[0]}" in store.require(dep.id).record.reason
    commit = store.require(new[0]).record.commit
    show = subprocess.run(["git", "-C", str(demo_repo), "show", f"{commit}:demo_api/db.py"],
                          capture_output=True, text=True, check=True).stdout
    assert "WHERE category = ?" in show  # the upgrade's commit carries the code fix it was built on


def test_pending_leaves_out_what_needs_a_human(engine) -> None:
    store = PatchStore(engine)
    store.add(_record("p000000000000003", [1], state="verified"))
    human = _record("p000000000000004", [2])
    human.record.plan = dataclasses.replace(human.record.plan, needs_human=True, reason="no recipe")
    store.add(human)
    ids, _, left = pending_patches(engine, store, 10, services=[SERVICE])
    assert ids == ["p000000000000003"] and "needs a human" in left["p000000000000004"]

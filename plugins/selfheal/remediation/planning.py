"""Plan patches for selected findings, commit them, and pick the patches a run works on.

``plan_findings``: per service, the patch engine plans against a clean
checkout of the service's repository (``plan_repository``); each source
change becomes one commit on its own branch (``commit_plan``, which works in
a private clone and never touches the repository's working tree). Plans are
stored by their deterministic id: planning the same findings again finds the
stored patch and changes nothing. Virtual-patch plans are not stored here:
the mitigation step (``remediation.mitigate``) owns gateway rules.

The triage table keeps a finding's normalized fields, not the scanner's raw
evidence (the request Wapiti sent, ZAP's attack value). The exploit replay
check wants that evidence, so it is recovered from the raw report the
finding came from (``raw_reports``, kept verbatim) and matched by fingerprint.

``pending_patches``: the patches a run maps over, highest finding priority
first, at most ``limit`` (the rest wait for the next run).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from selfheal.audit import ledger
from selfheal.catalog import Catalog
from selfheal.findings.model import Finding, Location, Package
from selfheal.patches.git import GitError, commit_plan
from selfheal.patches.model import PatchPlan
from selfheal.patches.planner import plan_repository
from selfheal.patches.recipes import PlanContext
from selfheal.patches.state import PatchRecord
from selfheal.remediation.selection import finding_from_row, finding_rows
from selfheal.remediation.store import PatchStore, StoredPatch
from selfheal.triage.schema import observations, raw_reports

log = logging.getLogger(__name__)

MITIGATION_RECIPES = frozenset({"virtual_patch"})
MAX_EVIDENCE_REPORTS = 20  # raw reports re-read per run to recover scanner evidence
# States a run may pick a patch up in (see pending_patches).
PENDING_STATES = ("planned", "verifying", "verified", "deploying")


@dataclass
class PlanningReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    needs_human: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    mitigations_skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------ evidence


def _finding_from_dict(d: Mapping[str, Any]) -> Finding:
    """A Finding from its ``to_dict`` form (the JSON-lines reports ``ingest_findings`` keeps)."""
    loc = Location(**d["location"]) if isinstance(d.get("location"), dict) else None
    pkg = Package(**d["package"]) if isinstance(d.get("package"), dict) else None
    names = {f.name for f in dataclasses.fields(Finding)} - {"location", "package"}
    kw = {k: v for k, v in d.items() if k in names}
    for k in ("cves", "references"):
        kw[k] = tuple(kw.get(k) or ())
    return Finding(location=loc, package=pkg, **kw)


def _parse_report(body: bytes, source: str, fmt: str, service: str | None) -> list[Finding]:
    if fmt == "findings":
        from selfheal.findings.fingerprint import fingerprint

        out = []
        for line in body.splitlines():
            if line.strip():
                f = _finding_from_dict(json.loads(line))
                out.append(dataclasses.replace(f, fingerprint=f.fingerprint or fingerprint(f, service)))
        return out
    from selfheal.findings import parse_bytes

    return parse_bytes(body, source, "auto" if fmt in ("", "auto") else fmt, service=service)


def with_evidence(engine: sa.Engine, rows: Mapping[int, Mapping[str, Any]]) -> dict[int, Finding]:
    """Findings for triage rows, with the scanner's evidence (``extra``) from their newest raw report.

    Best effort and bounded: a report that no longer parses, or a finding not found in it, keeps
    the row's fields only (the recipes then synthesize a probe from the location).
    """
    out = {fid: finding_from_row(row) for fid, row in rows.items()}
    if not rows:
        return out
    obs, raw = observations, raw_reports
    q = (
        sa.select(obs.c.finding_id, raw.c.id, raw.c.format, raw.c.source, raw.c.body)
        .join(raw, raw.c.scan_run_id == obs.c.scan_run_id)
        .where(obs.c.finding_id.in_(list(rows)))
        .order_by(raw.c.id.desc())
    )
    wanted: dict[int, list[int]] = defaultdict(list)
    reports: dict[int, tuple[str, str, bytes]] = {}
    with engine.connect() as c:
        for fid, rid, fmt, source, body in c.execute(q):
            if rid not in reports and len(reports) >= MAX_EVIDENCE_REPORTS:
                continue
            reports.setdefault(rid, (fmt, source, body))
            wanted[rid].append(fid)
    found: set[int] = set()
    for rid, fids in wanted.items():
        todo = [f for f in fids if f not in found]
        if not todo:
            continue
        fmt, source, body = reports[rid]
        services = {rows[f].get("service") for f in todo}
        for service in services:
            try:
                parsed = _parse_report(body, source, fmt, service)
            except Exception as e:  # noqa: BLE001 - evidence is optional; the row's fields still plan
                log.info("raw report %s (%s): no evidence recovered: %s", rid, source, e)
                continue
            by_fp = {p.fingerprint: p for p in parsed}
            for f in todo:
                p = by_fp.get(rows[f].get("fingerprint") or "")
                if p is not None and rows[f].get("service") == service:
                    base = out[f]
                    out[f] = dataclasses.replace(
                        base, extra=dict(p.extra), description=p.description, references=tuple(p.references),
                        evidence=base.evidence or p.evidence,
                    )
                    found.add(f)
    return out


# ------------------------------------------------------------------------------------ planning


def _audit_planned(engine: sa.Engine, sp: StoredPatch, actor: str) -> None:
    r = sp.record
    plan = r.plan
    ledger.append(
        engine, actor=actor, action="patch.planned", subject=ledger.subject("patch", r.id),
        payload={
            "title": plan.title, "recipe": plan.recipe, "service": plan.service, "state": r.state,
            "finding_ids": sp.finding_ids, "fingerprints": [f.fingerprint for f in plan.findings],
            "base_commit": plan.base_commit, "commit": r.commit, "branch": r.branch, "files": list(plan.files),
            "delivery": plan.delivery, "needs_human": plan.needs_human, "reason": r.reason,
        },
        idempotency_key=f"patch.planned:{r.id}",
    )


def store_plan(
    engine: sa.Engine, store: PatchStore, plan: PatchPlan, repo: str, finding_ids: Sequence[int], actor: str
) -> tuple[StoredPatch, bool]:
    """Commit ``plan`` (source changes) and store it; an already stored plan is returned as is."""
    existing = store.get(plan.id)
    if existing is not None:
        return existing, False
    rec = PatchRecord.new(plan, actor=actor)
    if rec.state == "planned" and not plan.needs_human and plan.changes_source:
        try:
            done = commit_plan(repo, plan)
        except GitError as e:
            rec.to("failed", actor=actor, reason=f"commit: {e}")
        else:
            rec.committed(done.commit, done.branch)
    sp, created = store.add(StoredPatch(rec, [int(i) for i in finding_ids]))
    if created:
        _audit_planned(engine, sp, actor)
    return sp, created


def plan_findings(
    engine: sa.Engine,
    catalog: Catalog,
    finding_ids: Sequence[int],
    *,
    store: PatchStore | None = None,
    ctx_factory: Callable[[], PlanContext] | None = None,
    actor: str = "selfheal",
    live_commits: Mapping[str, str | None] | None = None,
) -> PlanningReport:
    """Plan, commit and store patches for ``finding_ids`` (grouped by service); see the module docstring.

    ``live_commits``: per service, the commit its live release was built from: plans are made
    against what runs (a promoted patch is on its own branch, not on the repository's HEAD);
    HEAD when unknown. One service's problem (repository missing, a recipe crash) is reported
    in ``errors`` and does not stop the others.
    """
    store = store or PatchStore(engine)
    report = PlanningReport()
    rows = finding_rows(engine, finding_ids)
    by_service: dict[str, list[int]] = defaultdict(list)
    for fid in finding_ids:
        if fid in rows:
            by_service[str(rows[fid]["service"])].append(fid)
    known = set(catalog.names())
    for service_name, ids in sorted(by_service.items()):
        if service_name not in known:
            report.errors.append(f"service {service_name!r}: not in the catalog; {len(ids)} findings not planned")
            continue
        service = catalog.get(service_name)
        found = with_evidence(engine, {i: rows[i] for i in ids})
        ctx = ctx_factory() if ctx_factory else PlanContext()
        ctx.db_ids = {found[i].fingerprint: i for i in ids}
        try:
            ref = (live_commits or {}).get(service_name) or "HEAD"
            plans = plan_repository([found[i] for i in ids], service, service.repository, ref=ref, ctx=ctx)
        except GitError as e:
            report.errors.append(f"service {service_name}: {e}")
            continue
        for plan in plans:
            if plan.recipe in MITIGATION_RECIPES:
                report.mitigations_skipped += 1
                continue
            fids = [ref.db_id for ref in plan.findings if ref.db_id is not None]
            sp, created = store_plan(engine, store, plan, service.repository, fids, actor)
            (report.created if created else report.existing).append(sp.id)
            if sp.state == "failed":
                report.failed.append(sp.id)
            elif plan.needs_human:
                report.needs_human.append(sp.id)
    return report


# ------------------------------------------------------------------------------------ batching


def _deliverable(sp: StoredPatch) -> tuple[bool, str]:
    """Whether this DAG can take the patch further: an image to build and deploy, no human needed."""
    plan = sp.record.plan
    if plan.needs_human or plan.failed:
        return False, f"needs a human: {plan.reason}"
    if "image" not in plan.delivery:
        return False, f"delivery {plan.delivery!r}: nothing to build or deploy"
    if plan.changes_source and not sp.record.commit:
        return False, "no commit to build"
    return True, ""


def pending_patches(
    engine: sa.Engine,
    store: PatchStore,
    limit: int,
    *,
    services: Iterable[str],
    mode_allows_deploy: Callable[[str], bool] | None = None,
) -> tuple[list[str], int, dict[str, str]]:
    """The patches a run works on: (ids, deferred count, {id: why left out}).

    Picked up: planned, verifying (a sandbox that died), verified, deploying (a rollout whose
    run died; the rollout step recovers it). Not: waiting for a human (``awaiting_approval``,
    needs-human plans; ``selfheal_reviewed_patch`` handles them), terminal states, and
    verified patches already reported as a dry run while their service's mode still forbids
    deploying (else every run would re-report them).
    """
    names = set(services)
    cands = [sp for sp in store.list(states=PENDING_STATES) if sp.service in names]
    skipped: dict[str, str] = {}
    keep: list[StoredPatch] = []
    for sp in cands:
        ok, why = _deliverable(sp)
        dry = ok and sp.state == "verified" and sp.record.rollout.get("dry_run")
        if dry and (mode_allows_deploy is None or not mode_allows_deploy(sp.service)):
            ok, why = False, "dry run already reported; the service's mode still forbids deploying"
        if ok:
            keep.append(sp)
        else:
            skipped[sp.id] = why
    rows = finding_rows(engine, sorted({i for sp in keep for i in sp.finding_ids}))

    def key(sp: StoredPatch) -> tuple[float, str, str]:
        prio = max((rows[i].get("priority") or 0.0 for i in sp.finding_ids if i in rows), default=0.0)
        return (-float(prio), sp.record.created_at.isoformat(), sp.id)

    keep.sort(key=key)
    return [sp.id for sp in keep[:limit]], max(0, len(keep) - limit), skipped


# ------------------------------------------------------------------------------------ stale plans


def one_per_service(store: PatchStore, ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """Keep the first (highest-priority) patch of each service; the others wait for a later run.

    Each patch is built on what its service runs; rolling two out one after the other would
    replace the first with an image that lacks it. The next run re-plans the rest on top of the
    new live release (``supersede``)."""
    seen: set[str] = set()
    keep, held = [], []
    for pid in ids:
        sp = store.require(pid)
        if sp.service in seen and sp.state != "deploying":
            held.append(pid)
        else:
            seen.add(sp.service)
            keep.append(pid)
    return keep, held


def supersede(
    engine: sa.Engine,
    catalog: Catalog,
    store: PatchStore,
    patch_id: str,
    live_commit: str,
    *,
    ctx_factory: Callable[[], PlanContext] | None = None,
    actor: str = "selfheal",
) -> list[str]:
    """Re-plan a patch whose base commit is no longer what runs, on top of ``live_commit``.

    The old patch stops (``failed``, or ``awaiting_approval`` for a verified one, which the
    lifecycle cannot fail; admission refuses it anyway as stale) naming its successors; the
    new plans are stored and returned. None when the live release already fixes the findings.
    """
    sp = store.require(patch_id)
    service = catalog.get(sp.service)
    rows = finding_rows(engine, sp.finding_ids)
    found = with_evidence(engine, rows)
    ctx = ctx_factory() if ctx_factory else PlanContext()
    ctx.db_ids = {f.fingerprint: i for i, f in found.items()}
    new_ids: list[str] = []
    if found:
        plans = plan_repository(list(found.values()), service, service.repository, ref=live_commit, ctx=ctx)
        for plan in plans:
            if plan.recipe in MITIGATION_RECIPES or plan.id == patch_id:
                continue
            fids = [ref.db_id for ref in plan.findings if ref.db_id is not None]
            nsp, _ = store_plan(engine, store, plan, service.repository, fids, actor)
            new_ids.append(nsp.id)
    base = sp.record.plan.base_commit or "?"
    why = (f"superseded by {', '.join(new_ids) or 'nothing (the live release needs no such change)'}: "
           f"{service.name} now runs {live_commit[:12]}, not this patch's base {base[:12]}")
    with store.edit(patch_id) as cur:
        if cur.state in ("planned", "verifying"):
            cur.record.to("failed", actor=actor, reason=why)
        elif cur.state == "verified":
            cur.record.to("awaiting_approval", actor=actor, reason=why)
    ledger.append(
        engine, actor=actor, action="patch.superseded", subject=ledger.subject("patch", patch_id),
        payload={"by": new_ids, "live_commit": live_commit, "base_commit": sp.record.plan.base_commit,
                 "finding_ids": sp.finding_ids, "reason": why},
        idempotency_key=f"patch.superseded:{patch_id}:{live_commit}",
    )
    return new_ids

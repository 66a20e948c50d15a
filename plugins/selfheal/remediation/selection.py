"""Which findings a remediation run works on, and the triage rows as domain Findings.

Actionable: still open in the lifecycle (new, open, mitigated, reopened; not
``patching``, which a patch is already rolling out, nor resolved or a human
decision), of a service the catalog knows, and not already addressed by a
patch (see ``PatchStore.covered_finding_ids``). Order: highest priority first,
then the nearest SLA due date, then the oldest id, so a tie never reorders
between runs. At most ``limit`` per run: the rest are counted and picked up
by the next run, which keeps any batch far below Airflow's mapped-task limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from selfheal.findings.model import Finding, Location, Package
from selfheal.remediation.store import PatchStore
from selfheal.triage.schema import findings as F

ACTIONABLE: tuple[str, ...] = ("new", "open", "mitigated", "reopened")
PAGE = 1000


@dataclass(frozen=True)
class Selection:
    finding_ids: list[int]
    deferred: int  # actionable findings left for the next run
    covered: int  # actionable findings a patch already addresses
    sla_breached: list[int] = field(default_factory=list)  # selected ones already past their SLA due date

    def to_dict(self) -> dict[str, Any]:
        return {"finding_ids": self.finding_ids, "deferred": self.deferred, "covered": self.covered,
                "sla_breached": self.sla_breached}


def _order() -> list[Any]:
    return [F.c.priority.desc().nulls_last(), F.c.sla_due.asc().nulls_last(), F.c.id.asc()]


def select_findings(
    engine: sa.Engine,
    services: Iterable[str],
    limit: int,
    *,
    store: PatchStore | None = None,
    now: datetime | None = None,
) -> Selection:
    """Up to ``limit`` actionable findings of ``services`` in priority order (see module docstring)."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    names = sorted(set(services))
    covered_ids = (store or PatchStore(engine)).covered_finding_ids()
    picked: list[int] = []
    breached: list[int] = []
    deferred = covered = 0
    q = (
        sa.select(F.c.id, F.c.sla_due)
        .where(F.c.status.in_(ACTIONABLE), F.c.service.in_(names))
        .order_by(*_order())
    )
    with engine.connect() as c:
        # Streamed in pages: a backlog of 100,000 findings costs memory for one page only.
        result = c.execution_options(yield_per=PAGE).execute(q)
        for fid, sla_due in result:
            if fid in covered_ids:
                covered += 1
            elif len(picked) < limit:
                picked.append(fid)
                if now is not None and sla_due is not None and sla_due < now:
                    breached.append(fid)
            else:
                deferred += 1
    return Selection(picked, deferred, covered, breached)


def finding_rows(engine: sa.Engine, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Triage rows by id (as plain dicts: the policy and the approval form read them)."""
    if not ids:
        return {}
    with engine.connect() as c:
        rows = c.execute(sa.select(F).where(F.c.id.in_(list(ids)))).all()
    return {r.id: dict(r._mapping) for r in rows}


def finding_from_row(row: Any) -> Finding:
    """The domain Finding a triage row stands for (the patch recipes work on these)."""
    m = row if isinstance(row, dict) else dict(row._mapping)
    loc = None
    if m.get("path_template") or m.get("url") or m.get("method") or m.get("line") is not None:
        loc = Location(
            url=m.get("url"), method=m.get("method"), path=m.get("path_template"), param=m.get("param"),
            host=m.get("host"), port=m.get("port"), line=m.get("line"),
        )
    pkg = None
    if m.get("package_name"):
        pkg = Package(
            name=m["package_name"], version=m.get("package_version"), fixed_version=m.get("fixed_version"),
            ecosystem=m.get("package_ecosystem"), file_path=m.get("file_path"),
        )
    return Finding(
        scanner=m.get("scanner") or "",
        rule_id=m.get("rule_id") or "",
        title=m.get("title") or "",
        severity=m.get("severity") or "info",
        kind=m.get("kind") or "web",
        confidence=m.get("confidence"),
        cwe=m.get("cwe"),
        cves=tuple(m.get("cves") or ()),
        cvss_score=m.get("cvss_score"),
        cvss_vector=m.get("cvss_vector"),
        location=loc,
        package=pkg,
        evidence=m.get("evidence") or "",
        solution=m.get("solution") or "",
        service=m.get("service"),
        epss=m.get("epss"),
        kev=m.get("kev"),
        exploit_available=m.get("exploit_available"),
        fix_available=m.get("fix_available"),
        fingerprint=m.get("fingerprint") or "",
    )


def audit_detections(engine: sa.Engine, finding_ids: Sequence[int], actor: str) -> int:
    """One ``detection`` entry per finding when the loop first takes it up (keyed by fingerprint and
    first sighting: selecting it again writes nothing; a finding that comes back after being resolved
    is a new detection). Returns how many ids were looked at."""
    from selfheal.audit import ledger

    rows = finding_rows(engine, finding_ids)

    def since(r: dict[str, Any]) -> str:
        return r["first_seen"].isoformat() if r.get("first_seen") else ""

    entries = [
        ledger.NewEntry(
            actor=actor, action="detection", subject=ledger.subject("finding", fid),
            payload={
                "fingerprint": r["fingerprint"], "service": r["service"], "kind": r["kind"],
                "rule_id": r["rule_id"], "title": r["title"], "severity": r["severity"], "cwe": r["cwe"],
                "cves": list(r.get("cves") or []), "sources": list(r.get("sources") or []),
                "first_seen": since(r) or None,
                "priority": r.get("priority"), "ssvc": r.get("ssvc_decision"), "status": r["status"],
            },
            idempotency_key=f"detection:{r['fingerprint']}:{since(r)}",
        )
        for fid, r in sorted(rows.items())
    ]
    if entries:
        ledger.append_many(engine, entries)
    return len(entries)

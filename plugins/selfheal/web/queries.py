"""Read-only queries behind the Self-Healing page, its JSON API and the metrics.

Plain SQLAlchemy Core over the triage database (PostgreSQL, or SQLite as the
embedded default): no Airflow, no FastAPI, so tests call these directly.
Everything a page shows is bounded (``limit``) and aggregated in SQL where
the table can be large (findings, observations, status changes): a scrape or
a page view never pulls the whole findings table into Python.

Two derived notions, defined once here:

* **exposure window** of a finding: ``first_seen`` until the first of
  ``mitigated_at`` (a virtual patch blocks the attack) and ``resolved_at``;
  still open while neither is set. False positives were never exposures and
  are left out; accepted risks stay exposed (that is what accepting means).
* **open findings at time t**: findings first seen by ``t`` whose status at
  ``t`` was active (``lifecycle.ACTIVE``). Replayed from ``status_changes``:
  every finding starts active (``new``) at ``first_seen`` and each recorded
  change moves it in or out of the active set, so the curve is exact, not an
  estimate from the current status.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from selfheal.audit.ledger import audit_log
from selfheal.findings.model import KINDS, SEVERITIES
from selfheal.gateway.state import gateway_rules
from selfheal.pipeline_state import patches, rollout_events
from selfheal.triage.lifecycle import ACTIVE, STATUSES
from selfheal.triage.schema import findings as F
from selfheal.triage.schema import observations, raw_reports, scan_runs, status_changes

# Higher = worse; sorting "desc" puts the most urgent first.
SEVERITY_WEIGHT: dict[str, int] = {s: len(SEVERITIES) - 1 - i for i, s in enumerate(SEVERITIES)}
SSVC_DECISIONS: tuple[str, ...] = ("Act", "Attend", "Track*", "Track")
SSVC_WEIGHT: dict[str, int] = {d: len(SSVC_DECISIONS) - 1 - i for i, d in enumerate(SSVC_DECISIONS)}
MAX_LIMIT = 500
MAX_TEXT_FILTER = 200
MAX_SERIES_POINTS = 400
HISTORY_LIMIT = 200  # observations / audit entries / status changes shown per finding


class QueryError(ValueError):
    """A request the queries refuse (unknown sort key, bad range): the message is for the caller."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(v: datetime | None) -> datetime | None:
    """Timestamps from columns typed without UTCDateTime come back naive on SQLite."""
    if v is None:
        return None
    return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)


# --------------------------------------------------------------------------- SQL helpers


def epoch(col: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[float]:
    """Seconds since 1970 of a timestamp column, in SQL (durations and time buckets)."""
    if dialect == "postgresql":
        return sa.cast(sa.extract("epoch", col), sa.Float)
    if dialect == "sqlite":
        # UTCDateTime stores naive UTC text on SQLite; julianday() reads it as UTC. Its float
        # arithmetic is off by microseconds: round to the millisecond so whole seconds stay whole
        # (an event exactly at a bucket edge must land in that bucket, as on PostgreSQL).
        return sa.func.round((sa.func.julianday(col) - 2440587.5) * 86400.0, 3)
    raise NotImplementedError(f"the web queries support PostgreSQL and SQLite, not {dialect}")


def _ceil(x: sa.ColumnElement[float], dialect: str) -> sa.ColumnElement[int]:
    """ceil(x) for x >= 0 on both backends (PostgreSQL's int cast rounds, SQLite's truncates)."""
    if dialect == "postgresql":
        return sa.cast(sa.func.ceil(x), sa.Integer)
    t = sa.cast(x, sa.Integer)
    return t + sa.case((x > t, 1), else_=0)


def exposure_end() -> sa.ColumnElement[datetime]:
    """The first of mitigated_at / resolved_at (NULL while the finding is still exposed)."""
    m, r = F.c.mitigated_at, F.c.resolved_at
    return sa.case((sa.and_(m.is_not(None), sa.or_(r.is_(None), m <= r)), m), else_=r)


def _weight_case(col: sa.ColumnElement[Any], weights: Mapping[str, int]) -> sa.ColumnElement[int]:
    return sa.case(*[(col == k, v) for k, v in weights.items()], else_=-1)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# --------------------------------------------------------------------------- triage queue


@dataclass(frozen=True)
class QueueFilter:
    """Filters of the triage queue; empty tuples mean "any". Values within one field are OR-ed."""

    service: tuple[str, ...] = ()
    severity: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    ssvc: tuple[str, ...] = ()
    kind: tuple[str, ...] = ()
    q: str | None = None

    def __post_init__(self) -> None:
        for name, allowed in (("severity", SEVERITIES), ("status", STATUSES), ("kind", KINDS)):
            bad = [v for v in getattr(self, name) if v not in allowed]
            if bad:
                raise QueryError(f"unknown {name} {bad[0]!r:.60}; expected one of {', '.join(allowed)}")
        if self.q is not None and len(self.q) > MAX_TEXT_FILTER:
            raise QueryError(f"search text is longer than {MAX_TEXT_FILTER} characters")

    def clauses(self) -> list[sa.ColumnElement[bool]]:
        out: list[sa.ColumnElement[bool]] = []
        if self.service:
            out.append(F.c.service.in_(self.service))
        if self.severity:
            out.append(F.c.severity.in_(self.severity))
        if self.status:
            out.append(F.c.status.in_(self.status))
        if self.ssvc:
            out.append(F.c.ssvc_decision.in_(self.ssvc))
        if self.kind:
            out.append(F.c.kind.in_(self.kind))
        if self.q and self.q.strip():
            pat = f"%{_escape_like(self.q.strip().lower())}%"
            out.append(
                sa.or_(
                    *(
                        sa.func.lower(c).like(pat, escape="\\")
                        for c in (
                            F.c.title,
                            F.c.rule_id,
                            F.c.path_template,
                            F.c.url,
                            F.c.package_name,
                            F.c.host,
                        )
                    ),
                    F.c.fingerprint == self.q.strip(),
                )
            )
        return out


SORT_COLUMNS: dict[str, sa.ColumnElement[Any]] = {
    "priority": F.c.priority,
    "severity": _weight_case(F.c.severity, SEVERITY_WEIGHT),
    "ssvc": _weight_case(F.c.ssvc_decision, SSVC_WEIGHT),
    "cvss": F.c.cvss_score,
    "epss": F.c.epss,
    "first_seen": F.c.first_seen,
    "last_seen": F.c.last_seen,
    "status": F.c.status,
    "service": F.c.service,
    "title": F.c.title,
    "sla_due": F.c.sla_due,
    "id": F.c.id,
}

SUMMARY_COLUMNS = (
    F.c.id,
    F.c.fingerprint,
    F.c.service,
    F.c.scanner,
    F.c.sources,
    F.c.kind,
    F.c.rule_id,
    F.c.cwe,
    F.c.cves,
    F.c.title,
    F.c.severity,
    F.c.confidence,
    F.c.cvss_score,
    F.c.epss,
    F.c.kev,
    F.c.method,
    F.c.path_template,
    F.c.param,
    F.c.host,
    F.c.port,
    F.c.package_name,
    F.c.package_version,
    F.c.fixed_version,
    F.c.file_path,
    F.c.status,
    F.c.priority,
    F.c.ssvc_decision,
    F.c.sla_due,
    F.c.first_seen,
    F.c.last_seen,
    F.c.mitigated_at,
    F.c.resolved_at,
)


def _finding_dict(m: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    d = dict(m)
    d["path"] = d.pop("path_template", None)
    end = exposure_end_py(d.get("mitigated_at"), d.get("resolved_at"))
    d["exposure_end"] = end
    d["exposure_seconds"] = max(0.0, ((end or now) - d["first_seen"]).total_seconds())
    d["sla_overdue"] = bool(d.get("sla_due") and d["status"] in ACTIVE and d["sla_due"] < now)
    return d


def exposure_end_py(mitigated_at: datetime | None, resolved_at: datetime | None) -> datetime | None:
    ends = [t for t in (mitigated_at, resolved_at) if t is not None]
    return min(ends) if ends else None


def triage_queue(
    conn: sa.Connection,
    filt: QueueFilter = QueueFilter(),
    *,
    sort: str = "priority",
    order: str = "desc",
    limit: int = 50,
    offset: int = 0,
    now: datetime | None = None,
) -> dict[str, Any]:
    """One page of the triage queue: ``{"total", "limit", "offset", "items"}`` (server-side paging).

    Ties (and NULL priorities, always last) are broken by id so pages never overlap.
    """
    if sort not in SORT_COLUMNS:
        raise QueryError(f"unknown sort key {sort!r:.40}; expected one of {', '.join(SORT_COLUMNS)}")
    if order not in ("asc", "desc"):
        raise QueryError(f"order must be asc or desc, not {order!r:.20}")
    if not 1 <= limit <= MAX_LIMIT or offset < 0:
        raise QueryError(f"limit must be 1..{MAX_LIMIT} and offset >= 0")
    now = now or utcnow()
    where = filt.clauses()
    total = conn.execute(sa.select(sa.func.count()).select_from(F).where(*where)).scalar_one()
    col = SORT_COLUMNS[sort]
    key = (col.desc() if order == "desc" else col.asc()).nulls_last()
    tie = F.c.id.desc() if order == "desc" else F.c.id.asc()
    rows = conn.execute(
        sa.select(*SUMMARY_COLUMNS).where(*where).order_by(key, tie).limit(limit).offset(offset)
    ).all()
    return {
        "total": total,
        "limit": limit,
        "offset": offset,
        "items": [_finding_dict(r._mapping, now) for r in rows],
    }


def facets(conn: sa.Connection) -> dict[str, Any]:
    """Values the filters offer, with counts (services and SSVC decisions come from the data)."""

    def counts(col: sa.ColumnElement[Any]) -> dict[str, int]:
        rows = conn.execute(sa.select(col, sa.func.count()).group_by(col)).all()
        return {str(k): n for k, n in rows if k is not None}

    sev, st, kind = counts(F.c.severity), counts(F.c.status), counts(F.c.kind)
    return {
        "service": counts(F.c.service),
        "severity": {s: sev.get(s, 0) for s in SEVERITIES},
        "status": {s: st.get(s, 0) for s in STATUSES},
        "ssvc": counts(F.c.ssvc_decision),
        "kind": {k: kind.get(k, 0) for k in KINDS},
    }


# --------------------------------------------------------------------------- finding history


def _audit_rows(
    conn: sa.Connection, subjects: Sequence[str], limit: int = HISTORY_LIMIT
) -> list[dict[str, Any]]:
    if not subjects:
        return []
    rows = conn.execute(
        sa.select(
            audit_log.c.seq,
            audit_log.c.ts,
            audit_log.c.actor,
            audit_log.c.action,
            audit_log.c.subject,
            audit_log.c.payload,
            audit_log.c.hash,
        )
        .where(audit_log.c.subject.in_(list(subjects)))
        .order_by(audit_log.c.seq.desc())
        .limit(limit)
    ).all()
    return [dict(r._mapping) for r in reversed(rows)]


def _patch_refs(finding_ids: Any, plan_findings: Any) -> set[str]:
    """Every identifier a patch row uses for the findings it addresses (ids, fingerprints)."""
    refs: set[str] = set()
    for v in _list(finding_ids):
        refs.add(str(v))
    for f in _list(plan_findings):
        if isinstance(f, Mapping):
            for k in ("fingerprint", "db_id"):
                if f.get(k) is not None:
                    refs.add(str(f[k]))
    return refs


PATCH_LIST_COLUMNS = (
    patches.c.id,
    patches.c.service,
    patches.c.recipe,
    patches.c.state,
    patches.c.finding_ids,
    patches.c.plan["title"].as_string().label("title"),
    patches.c.plan["findings"].label("plan_findings"),
    patches.c.plan["delivery"].as_string().label("delivery"),
    patches.c.branch,
    patches.c.commit,
    patches.c.image,
    patches.c.image_digest,
    patches.c.sandbox,
    patches.c.rollout,
    patches.c.approval,
    patches.c.reason,
    patches.c.history,
    patches.c.created_at,
    patches.c.updated_at,
)


def _list(v: Any) -> list[Any]:
    """A JSON array written by another component, or nothing (never iterate a stray string or number)."""
    return v if isinstance(v, list) else []


def _text(v: Any) -> str | None:
    return None if v is None else str(v)


def num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _ts(v: Any) -> datetime | None:
    """A rollout time: epoch seconds (RolloutResult) or ISO text."""
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return datetime.fromtimestamp(v, UTC)
    if isinstance(v, str):
        try:
            return aware(datetime.fromisoformat(v))
        except ValueError:
            return None
    return None


def sandbox_summary(sandbox: Any, *, outputs: bool = False) -> dict[str, Any] | None:
    """The sandbox verdict of a patch (checks without their outputs unless asked)."""
    if not isinstance(sandbox, Mapping) or not sandbox:
        return None
    checks = []
    for c in _list(sandbox.get("checks")):
        if not isinstance(c, Mapping):
            continue
        item = {
            "name": str(c.get("name", "")),
            "status": str(c.get("status", "")),
            "reason": str(c.get("reason") or ""),
            "duration_s": num(c.get("duration_s")),
        }
        if outputs:
            item["output"] = str(c.get("output") or "")
            item["details"] = c.get("details") if isinstance(c.get("details"), Mapping) else {}
        checks.append(item)
    return {
        "passed": sandbox.get("passed") is True,
        "reason": str(sandbox.get("reason") or ""),
        "failed_check": _text(sandbox.get("failed_check")),
        "duration_s": num(sandbox.get("duration_s")),
        "image": _text(sandbox.get("image")) or None,
        "started_at": _text(sandbox.get("started_at")) or None,
        "checks": checks,
    }


def rollout_summary(rollout: Any, *, verdicts: bool = False) -> dict[str, Any] | None:
    """The rollout result of a patch: strategy, outcome, timings, verdicts."""
    if not isinstance(rollout, Mapping) or not rollout:
        return None
    started, finished = _ts(rollout.get("started_at")), _ts(rollout.get("finished_at"))
    vs = [v for v in _list(rollout.get("verdicts")) if isinstance(v, Mapping)]
    out = {
        "strategy": _text(rollout.get("strategy")),
        "outcome": _text(rollout.get("outcome")),
        "reason": str(rollout.get("reason") or ""),
        "started_at": started,
        "finished_at": finished,
        "duration_s": (finished - started).total_seconds() if started and finished else None,
        "traffic_back_at": _ts(rollout.get("traffic_back_at")),
        "verdict_count": len(vs),
        "last_verdict": _text(vs[-1].get("verdict")) if vs else None,
    }
    if verdicts:
        out["verdicts"] = vs
    return out


def _patch_dict(m: Mapping[str, Any], *, full: bool = False) -> dict[str, Any]:
    d = {
        "id": m["id"],
        "service": m["service"],
        "recipe": m["recipe"],
        "state": m["state"],
        "title": m.get("title") or (m.get("plan") or {}).get("title") or "",
        "delivery": m.get("delivery") or (m.get("plan") or {}).get("delivery"),
        "finding_ids": [str(v) for v in _list(m["finding_ids"])],
        "branch": m["branch"],
        "commit": m["commit"],
        "image": m["image"],
        "image_digest": m["image_digest"],
        "reason": m["reason"] or "",
        "approval": m["approval"] if isinstance(m["approval"], Mapping) else None,
        "sandbox": sandbox_summary(m["sandbox"], outputs=full),
        "rollout": rollout_summary(m["rollout"], verdicts=full),
        "history": [h for h in _list(m["history"]) if isinstance(h, Mapping)],
        "created_at": aware(m["created_at"]),
        "updated_at": aware(m["updated_at"]),
    }
    if full:
        plan = m.get("plan") if isinstance(m.get("plan"), Mapping) else {}
        d["plan"] = {
            k: plan.get(k)
            for k in (
                "title",
                "description",
                "diff",
                "files",
                "base_commit",
                "verification",
                "rollout",
                "gateway",
                "needs_human",
                "failed",
                "reason",
                "findings",
            )
        }
        d["policy"] = m["policy"] if isinstance(m.get("policy"), Mapping) else None
    return d


def finding_detail(
    conn: sa.Connection, finding_id: int, *, now: datetime | None = None
) -> dict[str, Any] | None:
    """A finding with its whole history: sources, observations, reports, status changes,
    patches addressing it, virtual patches, audit entries. None if there is no such finding."""
    now = now or utcnow()
    row = conn.execute(sa.select(F).where(F.c.id == finding_id)).first()
    if row is None:
        return None
    f = _finding_dict(row._mapping, now)
    f.pop("content_hash", None)

    # Per scanner: how often and when it saw this finding (scan runs that observed it).
    by_scanner = conn.execute(
        sa.select(
            scan_runs.c.scanner,
            sa.func.count().label("observations"),
            sa.func.min(observations.c.seen_at).label("first_observed"),
            sa.func.max(observations.c.seen_at).label("last_observed"),
        )
        .select_from(observations.join(scan_runs, scan_runs.c.id == observations.c.scan_run_id))
        .where(observations.c.finding_id == finding_id)
        .group_by(scan_runs.c.scanner)
        .order_by(scan_runs.c.scanner)
    ).all()
    rules = [str(r) for r in (f.get("rule_ids") or [])]
    sources = []
    seen = set()
    for r in by_scanner:
        seen.add(r.scanner)
        sources.append(
            {
                "scanner": r.scanner,
                "rules": [x.split(":", 1)[1] for x in rules if x.startswith(f"{r.scanner}:")],
                "observations": r.observations,
                "first_observed": r.first_observed,
                "last_observed": r.last_observed,
            }
        )
    for s in f.get("sources") or []:  # a source without observation rows (e.g. imported history)
        if s not in seen:
            sources.append(
                {
                    "scanner": s,
                    "rules": [x.split(":", 1)[1] for x in rules if x.startswith(f"{s}:")],
                    "observations": 0,
                    "first_observed": None,
                    "last_observed": None,
                }
            )

    obs_total = conn.execute(
        sa.select(sa.func.count()).select_from(observations).where(observations.c.finding_id == finding_id)
    ).scalar_one()
    obs = conn.execute(
        sa.select(
            observations.c.scan_run_id,
            observations.c.seen_at,
            scan_runs.c.scanner,
            scan_runs.c.scope,
            scan_runs.c.status.label("run_status"),
            scan_runs.c.complete,
        )
        .select_from(observations.join(scan_runs, scan_runs.c.id == observations.c.scan_run_id))
        .where(observations.c.finding_id == finding_id)
        .order_by(observations.c.seen_at.desc(), observations.c.scan_run_id.desc())
        .limit(HISTORY_LIMIT)
    ).all()
    run_ids = sorted({o.scan_run_id for o in obs})
    reports = []
    if run_ids:
        reports = [
            dict(r._mapping)
            for r in conn.execute(
                sa.select(
                    raw_reports.c.id,
                    raw_reports.c.scan_run_id,
                    raw_reports.c.scanner,
                    raw_reports.c.format,
                    raw_reports.c.source,
                    raw_reports.c.sha256,
                    raw_reports.c.size,
                    raw_reports.c.received_at,
                )
                .where(raw_reports.c.scan_run_id.in_(run_ids))
                .order_by(raw_reports.c.received_at.desc(), raw_reports.c.id.desc())
                .limit(50)
            )
        ]

    changes = [
        dict(r._mapping)
        for r in conn.execute(
            sa.select(
                status_changes.c.id,
                status_changes.c.from_status,
                status_changes.c.to_status,
                status_changes.c.actor,
                status_changes.c.reason,
                status_changes.c.changed_at,
                status_changes.c.scan_run_id,
            )
            .where(status_changes.c.finding_id == finding_id)
            .order_by(status_changes.c.changed_at, status_changes.c.id)
            .limit(HISTORY_LIMIT)
        )
    ]

    ident = {str(finding_id), f["fingerprint"]}
    q = sa.select(*PATCH_LIST_COLUMNS).order_by(patches.c.updated_at.desc()).limit(MAX_LIMIT)
    if f["service"] is not None:
        q = q.where(patches.c.service == f["service"])
    addressing = [
        _patch_dict(p._mapping)
        for p in conn.execute(q)
        if _patch_refs(p.finding_ids, p.plan_findings) & ident
    ]

    rules_q = sa.select(gateway_rules).where(
        gateway_rules.c.finding.in_([f["fingerprint"], str(finding_id), f"finding:{finding_id}"])
    )
    vpatches = []
    for r in conn.execute(rules_q):
        d = dict(r._mapping)
        d["updated_at"] = aware(d["updated_at"])
        vpatches.append(d)

    subjects = [f"finding:{finding_id}", f"finding:{f['fingerprint']}"] + [
        f"patch:{p['id']}" for p in addressing
    ]
    return {
        "finding": f,
        "sources": sources,
        "observations": {"total": obs_total, "items": [dict(o._mapping) for o in obs]},
        "reports": reports,
        "status_changes": changes,
        "patches": addressing,
        "virtual_patches": vpatches,
        "audit": _audit_rows(conn, subjects),
    }


# --------------------------------------------------------------------------- patches


PATCH_STATES: tuple[str, ...] = (
    "planned",
    "verifying",
    "verified",
    "failed",
    "awaiting_approval",
    "deploying",
    "promoted",
    "rolled_back",
)  # (mirrors selfheal.patches.state.STATES without importing the planner's dependencies)


def list_patches(
    conn: sa.Connection,
    *,
    state: Sequence[str] = (),
    service: Sequence[str] = (),
    limit: int = 50,
    offset: int = 0,
) -> dict[str, Any]:
    """One page of patches, newest first, with their sandbox and rollout results."""
    bad = [s for s in state if s not in PATCH_STATES]
    if bad:
        raise QueryError(f"unknown patch state {bad[0]!r:.40}; expected one of {', '.join(PATCH_STATES)}")
    if not 1 <= limit <= MAX_LIMIT or offset < 0:
        raise QueryError(f"limit must be 1..{MAX_LIMIT} and offset >= 0")
    where = []
    if state:
        where.append(patches.c.state.in_(list(state)))
    if service:
        where.append(patches.c.service.in_(list(service)))
    total = conn.execute(sa.select(sa.func.count()).select_from(patches).where(*where)).scalar_one()
    rows = conn.execute(
        sa.select(*PATCH_LIST_COLUMNS)
        .where(*where)
        .order_by(patches.c.updated_at.desc(), patches.c.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return {
        "total": total,
        "limit": limit,
        "offset": offset,
        "items": [_patch_dict(r._mapping) for r in rows],
    }


def patch_detail(conn: sa.Connection, patch_id: str) -> dict[str, Any] | None:
    """A patch with its plan, full sandbox checks (bounded outputs), rollout verdicts and events."""
    row = conn.execute(sa.select(patches).where(patches.c.id == patch_id)).first()
    if row is None:
        return None
    d = _patch_dict(row._mapping, full=True)
    events = conn.execute(
        sa.select(rollout_events)
        .where(rollout_events.c.patch_id == patch_id)
        .order_by(rollout_events.c.at, rollout_events.c.id)
        .limit(HISTORY_LIMIT)
    ).all()
    d["events"] = [dict(e._mapping) for e in events]
    d["audit"] = _audit_rows(conn, [f"patch:{patch_id}"])
    return d


# --------------------------------------------------------------------------- time series


def _edges(start: datetime, end: datetime, points: int) -> list[datetime]:
    if end <= start:
        raise QueryError("the series' end must be after its start")
    if not 2 <= points <= MAX_SERIES_POINTS:
        raise QueryError(f"points must be 2..{MAX_SERIES_POINTS}")
    step = (end - start) / (points - 1)
    return [start + step * i for i in range(points)]


def _bucketed(
    conn: sa.Connection,
    ts_col: sa.ColumnElement[datetime],
    cols: Iterable[sa.ColumnElement[Any]],
    where: Iterable[sa.ColumnElement[bool]],
    start: datetime,
    end: datetime,
    points: int,
) -> dict[int, tuple[Any, ...]]:
    """Sums of ``cols`` per edge index k: events in (t_{k-1}, t_k] (k = 0: at or before start)."""
    d = conn.dialect.name
    step = (end - start).total_seconds() / (points - 1)
    x = (epoch(ts_col, d) - start.timestamp()) / step
    k = sa.case((ts_col <= start, 0), else_=_ceil(x, d)).label("k")
    cols = list(cols)
    inner = (
        sa.select(k, *[c.label(f"c{i}") for i, c in enumerate(cols)]).where(ts_col <= end, *where).subquery()
    )
    q = sa.select(inner.c.k, *[sa.func.sum(inner.c[f"c{i}"]) for i in range(len(cols))]).group_by(inner.c.k)
    out: dict[int, tuple[Any, ...]] = {}
    for row in conn.execute(q):
        # Float rounding can put an event exactly at t_k one bucket late; clamp into range.
        kk = min(max(int(row[0]), 0), points - 1)
        prev = out.get(kk)
        vals = tuple(int(v or 0) for v in row[1:])
        out[kk] = vals if prev is None else tuple(a + b for a, b in zip(prev, vals, strict=True))
    return out


def open_series(conn: sa.Connection, start: datetime, end: datetime, points: int = 60) -> dict[str, Any]:
    """Open (active) findings at each of ``points`` evenly spaced instants, plus per-interval
    counts of new, mitigated and resolved findings (see the module docstring)."""
    edges = _edges(start, end, points)
    active = sorted(ACTIVE)
    one = sa.literal(1)
    new = _bucketed(conn, F.c.first_seen, [one], [], start, end, points)
    sc = status_changes.c
    from_active = sa.case((sc.from_status.is_(None), 1), (sc.from_status.in_(active), 1), else_=0)
    to_active = sa.case((sc.to_status.in_(active), 1), else_=0)
    changes = _bucketed(
        conn,
        sc.changed_at,
        [
            to_active - from_active,
            sa.case((sc.to_status == "mitigated", 1), else_=0),
            sa.case((sc.to_status == "resolved", 1), else_=0),
        ],
        [],
        start,
        end,
        points,
    )
    open_, new_, mitigated_, resolved_ = [], [], [], []
    running = 0
    for i in range(points):
        n = new.get(i, (0,))[0]
        delta, mit, res = changes.get(i, (0, 0, 0))
        running += n + delta
        open_.append(running)
        # index 0 aggregates everything before the range: report interval counts from index 1 on
        new_.append(n if i else 0)
        mitigated_.append(mit if i else 0)
        resolved_.append(res if i else 0)
    return {"t": edges, "open": open_, "new": new_, "mitigated": mitigated_, "resolved": resolved_}


def _quantile(sorted_vals: Sequence[float], q: float) -> float | None:
    """Linear-interpolated quantile (numpy's default), hand-written: numpy is not worth importing for it."""
    if not sorted_vals:
        return None
    pos = (len(sorted_vals) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def exposure_windows(
    conn: sa.Connection,
    start: datetime,
    end: datetime,
    filt: QueueFilter = QueueFilter(),
    *,
    limit: int = 200,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Exposure windows overlapping [start, end] (newest first, at most ``limit``) and, per
    severity, statistics of the windows that closed in the range."""
    if end <= start:
        raise QueryError("the range's end must be after its start")
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit must be 1..{MAX_LIMIT}")
    now = now or utcnow()
    e = exposure_end()
    where = [
        F.c.first_seen <= end,
        sa.or_(e.is_(None), e >= start),
        F.c.status != "false_positive",
        *filt.clauses(),
    ]
    total = conn.execute(sa.select(sa.func.count()).select_from(F).where(*where)).scalar_one()
    rows = conn.execute(
        sa.select(
            F.c.id,
            F.c.title,
            F.c.severity,
            F.c.service,
            F.c.status,
            F.c.first_seen,
            F.c.mitigated_at,
            F.c.resolved_at,
        )
        .where(*where)
        .order_by(F.c.first_seen.desc(), F.c.id.desc())
        .limit(limit)
    ).all()
    windows = []
    for r in rows:
        end_t = exposure_end_py(r.mitigated_at, r.resolved_at)
        windows.append(
            {
                "id": r.id,
                "title": r.title,
                "severity": r.severity,
                "service": r.service,
                "status": r.status,
                "start": r.first_seen,
                "end": end_t,
                "ended_by": None
                if end_t is None
                else ("mitigated" if end_t == r.mitigated_at else "resolved"),
                "seconds": max(0.0, ((end_t or now) - r.first_seen).total_seconds()),
            }
        )
    d = conn.dialect.name
    dur = (epoch(e, d) - epoch(F.c.first_seen, d)).label("d")
    closed = conn.execute(
        sa.select(F.c.severity, dur).where(
            e.is_not(None), e >= start, e <= end, F.c.status != "false_positive", *filt.clauses()
        )
    ).all()
    per: dict[str, list[float]] = {}
    for sev, secs in closed:
        per.setdefault(sev, []).append(max(0.0, float(secs)))
    open_now = dict(
        conn.execute(
            sa.select(F.c.severity, sa.func.count())
            .where(e.is_(None), F.c.status != "false_positive", *filt.clauses())
            .group_by(F.c.severity)
        ).all()
    )
    summary = []
    for sev in SEVERITIES:
        vals = sorted(per.get(sev, []))
        summary.append(
            {
                "severity": sev,
                "closed": len(vals),
                "open": open_now.get(sev, 0),
                "p50_s": _quantile(vals, 0.5),
                "p90_s": _quantile(vals, 0.9),
                "max_s": vals[-1] if vals else None,
                "mean_s": (sum(vals) / len(vals)) if vals else None,
            }
        )
    return {"start": start, "end": end, "total": total, "windows": windows, "summary": summary}


# --------------------------------------------------------------------------- overview


def overview(conn: sa.Connection, *, now: datetime | None = None) -> dict[str, Any]:
    """Headline numbers for the page: active findings by severity, statuses, patches, scanners."""
    now = now or utcnow()
    by = conn.execute(
        sa.select(F.c.severity, F.c.status, sa.func.count()).group_by(F.c.severity, F.c.status)
    ).all()
    active = dict.fromkeys(SEVERITIES, 0)
    status = dict.fromkeys(STATUSES, 0)
    for sev, st, n in by:
        status[st] = status.get(st, 0) + n
        if st in ACTIVE:
            active[sev] = active.get(sev, 0) + n
    overdue = conn.execute(
        sa.select(sa.func.count()).select_from(F).where(F.c.status.in_(sorted(ACTIVE)), F.c.sla_due < now)
    ).scalar_one()
    unmitigated = conn.execute(
        sa.select(sa.func.count())
        .select_from(F)
        .where(F.c.status.in_(sorted(ACTIVE)), F.c.mitigated_at.is_(None))
    ).scalar_one()
    pstates = dict.fromkeys(PATCH_STATES, 0)
    for st, n in conn.execute(sa.select(patches.c.state, sa.func.count()).group_by(patches.c.state)):
        pstates[st] = n
    scanners = [
        {"scanner": r.scanner, "last_run": aware(r.last_run), "runs": r.runs, "failed": int(r.failed or 0)}
        for r in conn.execute(
            sa.select(
                scan_runs.c.scanner,
                sa.func.max(scan_runs.c.started_at).label("last_run"),
                sa.func.count().label("runs"),
                sa.func.sum(sa.case((failed_run(), 1), else_=0)).label("failed"),
            )
            .group_by(scan_runs.c.scanner)
            .order_by(scan_runs.c.scanner)
        )
    ]
    return {
        "generated_at": now,
        "active_by_severity": active,
        "by_status": status,
        "active_total": sum(active.values()),
        "unmitigated_active": unmitigated,
        "sla_overdue": overdue,
        "patches_by_state": pstates,
        "scanners": scanners,
    }


def failed_run() -> sa.ColumnElement[bool]:
    """A scan run that finished without succeeding (the store writes 'succeeded' or a failure status)."""
    return sa.and_(scan_runs.c.finished_at.is_not(None), scan_runs.c.status != "succeeded")

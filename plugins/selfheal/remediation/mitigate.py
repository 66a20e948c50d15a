"""Instant mitigations: the virtual patch for a fresh injection finding, applied right after the
triage commit (issue 7's exposure window, commit -> exploit blocked: target p99 under 100 ms).

Why inline in the ingest task and not only in ``selfheal_remediate``: a DAG run scheduled on the
findings Asset starts seconds later, and the ingest task already holds the ids it just wrote. The
remediation DAG's first step calls the same ``apply_instant_mitigations`` over every open
unmitigated finding, so whatever this path could not do (gateway down, a crash after the commit)
is caught up there; both are idempotent.

One batch, in this order, so the rules are live as early as possible:

1. one SELECT for the findings (autocommit, on the connection that also does step 6);
2. the service's mode: catalog ``observe`` never touches traffic (no policy call at all);
   otherwise the policy's effective mode, once per service (``prepare_inline`` evaluates it
   before the ingest commits);
3. the rule (``selfheal.gateway.virtual_patch.derive``, pure); a finding without one is
   skipped with the reason, the batch goes on;
4. the policy decision for recipe ``virtual_patch``, evaluated once per distinct policy input
   (id and fingerprint left out): only ``auto`` outside a dry run is applied;
5. ``gateway.patches.apply`` per rule (desired state and its row in one statement, then
   ``add acl`` on the kept runtime connection). The patcher's audit events are held back and
   handed to its hook once every rule is live, so the ledger's serialized appends never sit
   between two rules;
6. one transaction: one statement moves the findings to ``mitigated`` and writes their
   history rows, and the ledger gets one ``mitigation`` entry per finding (``decision`` entries
   for what policy kept back), each with an idempotency key: a re-run adds nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa

from selfheal.audit import ledger
from selfheal.catalog import Catalog, Service
from selfheal.findings.model import Finding, Location
from selfheal.gateway.gateway import Gateway
from selfheal.gateway.runtime import GatewayUnavailable, RuntimeAPIError
from selfheal.gateway.state import AuditEvent, VirtualPatch
from selfheal.gateway.virtual_patch import RuleError, derive
from selfheal.policy.engine import PolicyError
from selfheal.policy.gate import (
    MODES,
    ModeResult,
    PolicyDecision,
    PolicyGate,
    default_gate,
    finding_input,
    needed_mode,
)
from selfheal.triage import lifecycle
from selfheal.triage.schema import findings as F
from selfheal.triage.schema import status_changes

log = logging.getLogger(__name__)

RECIPE = "virtual_patch"
INGEST_ACTOR = "selfheal:ingest"
#: Statuses an instant mitigation moves to ``mitigated`` (every one a lifecycle transition).
MITIGATE_FROM: frozenset[str] = frozenset({"new", "open", "reopened"})
if not all("mitigated" in lifecycle.TRANSITIONS[s] for s in MITIGATE_FROM):  # pragma: no cover
    raise RuntimeError("MITIGATE_FROM holds a status the lifecycle does not let become 'mitigated'")
# Fields unique to one finding: left out of the policy cache key (findings of one scanner rule
# share everything else), and out of what the policy sees, so it cannot decide by them unseen.
_IDENTITY = frozenset({"id", "fingerprint"})
_COLUMNS = (
    "id", "fingerprint", "service", "scanner", "kind", "rule_id", "cwe", "title", "severity",
    "confidence", "cvss_score", "epss", "kev", "exploit_available", "ssvc_decision", "method",
    "path_template", "param", "url", "status", "status_changed_at",
)
_ID_CHUNK = 5000


class NoGateway(RuntimeError):
    """There is no gateway to apply rules to (not configured, or unreachable); says which."""


_Mark = tuple[Any, VirtualPatch, PolicyDecision, dict[str, Any]]
Outcome = Literal["applied", "unchanged", "skipped", "failed"]
GatewayArg = Gateway | Callable[[], Gateway] | None


def _result(row: Any, outcome: Outcome, reason: str, rule: VirtualPatch | None = None) -> dict[str, Any]:
    return {
        "finding_id": row.id, "service": row.service, "rule_id": rule.id if rule else None,
        "outcome": outcome, "reason": reason,
    }


def _as_finding(row: Any) -> Finding:
    """The parts of a triage row ``derive`` reads (the stored path is already a template)."""
    return Finding(
        scanner=row.scanner, rule_id=row.rule_id, title=row.title, severity=row.severity, kind=row.kind,
        confidence=row.confidence, cwe=row.cwe, service=row.service, fingerprint=row.fingerprint,
        location=Location(url=row.url, method=row.method, path=row.path_template, param=row.param),
    )


def _load(conn: sa.Connection, finding_ids: Sequence[int] | None) -> list[Any]:
    cols = [F.c[c] for c in _COLUMNS]
    if finding_ids is None:
        # Only web findings can get a gateway rule: the catch-up sweep does not list the rest.
        q = (
            sa.select(*cols)
            .where(F.c.status.in_(sorted(MITIGATE_FROM)), F.c.mitigated_at.is_(None), F.c.kind == "web")
            .order_by(F.c.priority.desc().nulls_last(), F.c.id)
        )
        return list(conn.execute(q))
    ids = list(dict.fromkeys(int(i) for i in finding_ids))
    found: dict[int, Any] = {}
    for i in range(0, len(ids), _ID_CHUNK):
        for r in conn.execute(sa.select(*cols).where(F.c.id.in_(ids[i : i + _ID_CHUNK]))):
            found[r.id] = r
    return [found[i] for i in ids if i in found]


@dataclass
class _Batch:
    """Policy answers and gateway state shared by every finding of one call."""

    gate: PolicyGate
    gateway: GatewayArg
    modes: dict[str, ModeResult | PolicyError] = field(default_factory=dict)
    decisions: dict[tuple[Any, ...], PolicyDecision | PolicyError] = field(default_factory=dict)
    gw: Gateway | None = None
    gateway_down: str | None = None
    held: list[AuditEvent] = field(default_factory=list)
    hook: Callable[[AuditEvent], None] | None = None  # the patcher's own, while its events are held

    def mode(self, service: Service) -> ModeResult | PolicyError:
        if service.name not in self.modes:
            try:
                self.modes[service.name] = self.gate.effective_mode(service)
            except PolicyError as e:
                self.modes[service.name] = e
        return self.modes[service.name]

    def decide(self, row: Any, service: Service) -> PolicyDecision | PolicyError:
        doc = {k: v for k, v in finding_input(row._mapping).items() if k not in _IDENTITY}
        key = (service.name, *sorted(doc.items()))
        if key not in self.decisions:
            try:
                self.decisions[key] = self.gate.decide(finding=doc, service=service, recipe=RECIPE)
            except PolicyError as e:
                self.decisions[key] = e
        return self.decisions[key]

    def gateway_client(self) -> Gateway | None:
        """The gateway, opened on first use (a batch with nothing to apply never touches it)."""
        if self.gw is None and self.gateway_down is None:
            try:
                gw = self.gateway() if callable(self.gateway) else self.gateway
            except NoGateway as e:
                gw, self.gateway_down = None, str(e)
            except Exception as e:  # noqa: BLE001 - any failure to open it means "no gateway" for this batch
                gw, self.gateway_down = None, f"gateway not available: {' '.join(str(e).split())[:300]}"
            if gw is None:
                self.gateway_down = self.gateway_down or "no gateway configured"
                return None
            self.gw = gw
            # Hold the patcher's audit events back until every rule of the batch is live.
            self.hook, gw.patches.audit_hook = gw.patches.audit_hook, self.held.append
        return self.gw

    def release_audit(self) -> None:
        """Give the patcher its hook back and hand it the events held during the batch."""
        if self.gw is None:
            return
        self.gw.patches.audit_hook = hook = self.hook
        for ev in self.held if hook is not None else ():
            try:
                hook(ev)
            except Exception:  # the rule is live and has its row in gateway_audit: log, go on
                log.exception("audit hook failed for %s %s", ev.action, ev.subject)
        self.held.clear()


def apply_instant_mitigations(
    engine: sa.Engine,
    gateway: GatewayArg,
    catalog: Catalog,
    finding_ids: Iterable[int] | None = None,
    *,
    gate: PolicyGate | None = None,
    actor: str = "selfheal",
    modes: Mapping[str, ModeResult] | None = None,
) -> list[dict[str, Any]]:
    """Apply the automatic virtual patches for ``finding_ids`` (None: every open unmitigated web
    finding) and mark those findings ``mitigated``; one small dict per finding considered.

    ``gateway``: a Gateway, a callable opening one on first need, or None (not configured).
    Each result: ``finding_id``, ``service``, ``rule_id``, ``outcome`` (``applied``: the rule
    went live or the finding became mitigated now; ``unchanged``: both were so already;
    ``skipped``: not this path's to do, e.g. observe mode, policy asks for approval, no rule
    fits; ``failed``: should have been applied but the gateway could not take it), ``reason``.
    ``modes``: effective modes per service evaluated earlier (``prepare_inline`` does it
    before the ingest commits); others are evaluated here, once per service.
    Never raises for one finding's problem; database errors do propagate.
    """
    ids = None if finding_ids is None else list(finding_ids)
    if ids is not None and not ids:
        return []
    # One connection for the read and the final write, and the read in autocommit (no BEGIN):
    # a checkout, its return and a BEGIN each cost a round trip, on the critical path here.
    with engine.connect() as conn:
        default_isolation = conn.get_isolation_level()
        conn.execution_options(isolation_level="AUTOCOMMIT")
        rows = _load(conn, ids)
        conn.rollback()  # ends SQLAlchemy's logical transaction; nothing to roll back in autocommit
        conn.execution_options(isolation_level=default_isolation)
        results, to_mark, held_back = _apply(rows, gateway, catalog, gate, actor, modes)
        _mark_mitigated(conn, to_mark, held_back, actor)
    return results


def _apply(
    rows: list[Any],
    gateway: GatewayArg,
    catalog: Catalog,
    gate: PolicyGate | None,
    actor: str,
    modes: Mapping[str, ModeResult] | None,
) -> tuple[list[dict[str, Any]], list[_Mark], list[ledger.NewEntry]]:
    batch = _Batch(gate or default_gate(), gateway, modes=dict(modes or {}))
    services = {s.name: s for s in catalog.services}
    needed = MODES.index(needed_mode(RECIPE))
    results: list[dict[str, Any]] = []
    to_mark: list[_Mark] = []
    held_back: list[ledger.NewEntry] = []
    try:
        for row in rows:
            if row.status not in MITIGATE_FROM and row.status != "mitigated":
                results.append(_result(row, "skipped", f"status {row.status}: not for an instant mitigation"))
                continue
            svc = services.get(row.service or "")
            if svc is None:
                why = "no service" if not row.service else f"service {row.service!r} is not in the catalog"
                results.append(_result(row, "skipped", why))
                continue
            if MODES.index(svc.mode) < needed:  # policy can only lower a mode: no need to ask it
                results.append(_result(row, "skipped", f"catalog mode {svc.mode}: never touches traffic"))
                continue
            mode = batch.mode(svc)
            if isinstance(mode, PolicyError):
                results.append(_result(row, "skipped", f"policy error (mode): {mode}"))
                continue
            if MODES.index(mode.effective_mode) < needed:
                why = f"effective mode {mode.effective_mode} ({'; '.join(mode.reasons)}): no traffic change"
                results.append(_result(row, "skipped", why))
                continue
            try:
                rule = derive(_as_finding(row), svc.name)
            except RuleError as e:
                results.append(_result(row, "skipped", f"no virtual patch: {e}"))
                continue
            decision = batch.decide(row, svc)
            if isinstance(decision, PolicyError):
                results.append(_result(row, "skipped", f"policy error: {decision}", rule))
                continue
            if decision.decision != "auto" or decision.dry_run:
                why = "; ".join(decision.reasons if decision.decision != "auto" else decision.mode_reasons)
                results.append(_result(row, "skipped", f"policy: {decision.decision}: {why}", rule))
                held_back.append(_decision_entry(row, rule, decision, actor))
                continue
            gw = batch.gateway_client()
            if gw is None or batch.gateway_down:
                results.append(_result(row, "failed", batch.gateway_down or "no gateway", rule))
                continue
            try:
                changed = gw.patches.apply(rule)
            except GatewayUnavailable as e:
                batch.gateway_down = f"{e}; the remediation DAG marks the finding once the rule is live"
                results.append(_result(row, "failed", batch.gateway_down, rule))
                continue
            except (RuleError, RuntimeAPIError, ValueError) as e:
                results.append(_result(row, "failed", f"gateway refused the rule: {e}", rule))
                continue
            res = _result(row, "applied" if changed else "unchanged", rule.reason, rule)
            results.append(res)
            if row.status in MITIGATE_FROM:
                to_mark.append((row, rule, decision, res))
    finally:
        batch.release_audit()
    return results, to_mark, held_back


def _decision_entry(row: Any, rule: VirtualPatch, d: PolicyDecision, actor: str) -> ledger.NewEntry:
    """Policy kept an automatic mitigation back: that is a decision, recorded once per policy version."""
    return ledger.NewEntry(
        actor=actor, action="decision", subject=ledger.subject("finding", row.id),
        payload={
            "recipe": RECIPE, "rule_id": rule.id, "decision": d.decision, "reasons": list(d.reasons),
            "effective_mode": d.effective_mode, "mode_reasons": list(d.mode_reasons), "dry_run": d.dry_run,
            "policy_digest": d.policy_digest, "inline": True,
        },
        idempotency_key=f"decision:{RECIPE}:finding:{row.id}:{rule.id}:{d.policy_digest}:{d.decision}:{d.dry_run}",
    )


def _mark_mitigated(
    conn: sa.Connection,
    to_mark: list[_Mark],
    entries: list[ledger.NewEntry],
    actor: str,
) -> None:
    """One transaction: the status change of every finding (one statement) and the ledger entries."""
    if not to_mark and not entries:
        return
    now = datetime.now(UTC)
    with conn.begin():
        reasons = [(row.id, f"virtual patch {rule.id}: {rule.reason}") for row, rule, _, _ in to_mark]
        moved = _move_status(conn, reasons, actor, now)
        for row, rule, d, res in to_mark:
            frm = moved.get(row.id)
            if frm is None:
                res["reason"] += " (the finding's status changed meanwhile: left as it is)"
                continue
            res["outcome"] = "applied"
            # The key names this episode (the status the finding had since a given moment), so a
            # re-run writes nothing, and a later reopen + mitigation is a new entry.
            since = row.status_changed_at.isoformat() if row.status_changed_at else "-"
            entries.append(ledger.NewEntry(
                actor=actor, action="mitigation", subject=ledger.subject("finding", row.id),
                payload={
                    "recipe": RECIPE, "rule_id": rule.id, "service": rule.service, "action": rule.action,
                    "method": rule.method, "path": rule.path, "param": rule.param,
                    "attack_class": rule.attack_class, "cwe": rule.cwe, "from_status": frm,
                    "to_status": "mitigated", "decision": d.decision, "reasons": list(d.reasons),
                    "effective_mode": d.effective_mode, "policy_digest": d.policy_digest, "inline": True,
                },
                idempotency_key=f"mitigation:finding:{row.id}:{rule.id}:{since}",
            ))
        if entries:
            ledger.append_many(conn, entries)


_PG_MOVE = sa.text(
    """
    WITH cand AS (
        SELECT f.id, f.status AS from_status, v.reason
        FROM findings f
        JOIN unnest(CAST(:ids AS bigint[]), CAST(:reasons AS text[])) AS v(id, reason) ON v.id = f.id
        WHERE f.status = ANY(CAST(:from_statuses AS text[]))
        FOR UPDATE OF f
    ), up AS (
        UPDATE findings f SET status = 'mitigated', status_changed_at = :now, mitigated_at = :now
        FROM cand WHERE f.id = cand.id
        RETURNING f.id
    ), hist AS (
        INSERT INTO status_changes (finding_id, from_status, to_status, actor, reason, changed_at)
        SELECT cand.id, cand.from_status, 'mitigated', :actor, cand.reason, :now
        FROM cand JOIN up ON up.id = cand.id
    )
    SELECT cand.id, cand.from_status FROM cand JOIN up ON up.id = cand.id
    """
)


def _move_status(
    conn: sa.Connection, items: list[tuple[int, str]], actor: str, now: datetime
) -> dict[int, str]:
    """Move findings still in MITIGATE_FROM to ``mitigated`` with a history row; returns id -> old status.

    PostgreSQL: one statement (one round trip) whatever the batch size. Elsewhere (SQLite)
    the same in three statements inside the caller's transaction.
    """
    if not items:
        return {}
    if lifecycle.timestamp_updates("mitigated", now) != {"mitigated_at": now}:  # pragma: no cover
        raise RuntimeError("lifecycle timestamps for 'mitigated' changed: update _PG_MOVE")
    if conn.dialect.name == "postgresql":
        rows = conn.execute(_PG_MOVE, {
            "ids": [i for i, _ in items], "reasons": [r for _, r in items],
            "from_statuses": sorted(MITIGATE_FROM), "actor": actor, "now": now,
        })
        return {r.id: r.from_status for r in rows}
    reasons = dict(items)
    current = conn.execute(
        sa.select(F.c.id, F.c.status).where(F.c.id.in_(list(reasons)), F.c.status.in_(sorted(MITIGATE_FROM)))
    ).all()
    moved = {r.id: r.status for r in current}
    if moved:
        stamps = lifecycle.timestamp_updates("mitigated", now)
        values = {"status": "mitigated", "status_changed_at": now, **stamps}
        conn.execute(F.update().where(F.c.id.in_(list(moved))).values(**values))
        conn.execute(status_changes.insert(), [
            {"finding_id": i, "from_status": frm, "to_status": "mitigated", "actor": actor,
             "reason": reasons[i], "changed_at": now}
            for i, frm in moved.items()
        ])
    return moved


def summarize(results: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Counts per outcome, for task logs and XCom."""
    out = {"applied": 0, "unchanged": 0, "skipped": 0, "failed": 0}
    for r in results:
        out[r["outcome"]] = out.get(r["outcome"], 0) + 1
    return out


# --------------------------------------------------------------------------- the ingest task's side


@dataclass
class InlineMitigator:
    """What the ingest task prepares *before* its commit, so the path after it is short.

    Preparing compiles the policy (about 0.5 s the first time in a process), evaluates each
    service's mode, connects to the database and opens the gateway's runtime connection; with
    no service in a mode above ``observe`` it does none of that and calling it does nothing.
    """

    engine: sa.Engine
    catalog: Catalog
    gateway: Gateway | None = None
    gate: PolicyGate | None = None
    unavailable: str | None = None
    actor: str = INGEST_ACTOR
    modes: dict[str, ModeResult] = field(default_factory=dict)
    owned_engine: sa.Engine | None = None

    @property
    def active(self) -> bool:
        return self.gate is not None

    def __call__(self, finding_ids: Sequence[int]) -> list[dict[str, Any]]:
        if not self.active or not finding_ids:
            return []
        if self.gateway is not None and self.unavailable:
            try:  # it may be back since the task started (a refused connect fails in microseconds)
                self.gateway.runtime.version()
                self.unavailable = None
            except RuntimeAPIError:
                pass
        gw: GatewayArg = self.gateway
        if gw is None or self.unavailable:
            why = self.unavailable or "no gateway configured"

            def gw() -> Gateway:
                raise NoGateway(why)

        return apply_instant_mitigations(
            self.engine, gw, self.catalog, finding_ids, gate=self.gate, actor=self.actor, modes=self.modes
        )

    def close(self) -> None:
        if self.gateway is not None:
            self.gateway.close()
        if self.owned_engine is not None:
            self.owned_engine.dispose()


def prepare_inline(
    engine: sa.Engine,
    catalog: Catalog,
    gateway_settings_raw: str | None = None,
    *,
    gate: PolicyGate | None = None,
) -> InlineMitigator:
    """An InlineMitigator for one ingest task: policy compiled, gateway connected (or why not).

    ``gateway_settings_raw`` is the ``selfheal_gateway`` Variable's text (None: the
    $SELFHEAL_GATEWAY_SETTINGS file or the local default, see ``selfheal.runtime``).
    A gateway that is not configured or not reachable is logged as a warning and leaves
    the ingest alone: the remediation DAG's first step applies the rules later.
    """
    from selfheal import runtime
    from selfheal.triage.db import make_engine

    m = InlineMitigator(engine, catalog)
    needed = MODES.index(needed_mode(RECIPE))
    active = [s for s in catalog.services if MODES.index(s.mode) >= needed]
    if not active:
        return m  # every service observes: nothing to prepare, nothing to do
    t0 = time.perf_counter()
    m.gate = gate or default_gate()
    try:
        # Compiled and evaluated now, not after the commit. A mode evaluated a few seconds
        # before it is used is as good as one evaluated after (it depends on the service only).
        m.modes = {s.name: m.gate.effective_mode(s) for s in active}
    except PolicyError as e:
        m.gate, m.unavailable = None, f"policy error: {e}"
        log.warning("instant mitigations disabled for this ingest: %s", m.unavailable)
        return m
    # Its own two connections, opened now and not pinged on checkout (the task's engine pings:
    # a round trip per checkout, twice on the critical path). A connection that died since is
    # an error the caller logs; the remediation DAG catches up.
    m.engine = m.owned_engine = make_engine(engine.url, pool_pre_ping=False, pool_size=2)
    with m.engine.connect() as c1, m.engine.connect() as c2:
        c1.exec_driver_sql("SELECT 1")
        c2.exec_driver_sql("SELECT 1")
    try:
        settings = runtime.gateway_settings(gateway_settings_raw)
        m.gateway = runtime.open_gateway(m.engine, catalog, settings)
    except Exception as e:  # noqa: BLE001 - settings or store errors: no gateway; the ingest must go on
        m.unavailable = f"gateway not configured: {' '.join(str(e).split())[:300]}"
    else:
        try:
            m.gateway.runtime.version()  # connects now; the connection is kept for the applies
        except RuntimeAPIError as e:
            m.unavailable = f"gateway unreachable: {e.message}"
    if m.unavailable:
        log.warning(
            "instant mitigations: %s; findings this ingest commits stay unmitigated until the "
            "remediation DAG's first step applies their rules", m.unavailable,
        )
    log.debug("instant mitigations prepared in %.1f ms", (time.perf_counter() - t0) * 1e3)
    return m

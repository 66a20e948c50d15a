"""The end of a rollout: promote (the fix is live) or roll back (it is not), each once.

Promote: the virtual patches for the patch's findings come off the gateway
(the code is fixed now, and the confirming rescan must test the code, not the
rule), the findings stay ``patching`` until that rescan resolves them, the
live release is recorded in ``deployments``, and the patch is ``promoted``.

Roll back: traffic is already on the last good version (the strategy or the
guard put it there); the virtual patches stay, the findings go back to
``mitigated`` (a rule still blocks the attack) or ``open`` for a human, with
the reason, and the patch is ``rolled_back`` (terminal: it is never tried
again as is; a human re-plans or rolls out a reviewed patch).

Both write their audit entries with idempotency keys: running either twice
changes nothing the second time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from selfheal.audit import ledger
from selfheal.catalog import Catalog
from selfheal.pipeline_state import deployments
from selfheal.remediation.store import PatchStore
from selfheal.triage import lifecycle
from selfheal.triage.schema import findings as F
from selfheal.triage.store import set_status

log = logging.getLogger(__name__)

RESCAN_DAG = "selfheal_scan"


def findings_to(engine: sa.Engine, finding_ids: Iterable[int], status: str, *, actor: str, reason: str,
                patch_id: str | None = None) -> dict[int, str]:
    """Move each finding to ``status`` where the lifecycle allows; {id: outcome} (moved/unchanged/why not)."""
    out: dict[int, str] = {}
    for fid in finding_ids:
        try:
            moved = set_status(engine, fid, status, actor, reason)
        except (lifecycle.InvalidTransition, LookupError) as e:
            out[fid] = f"left as is: {e}"
            continue
        out[fid] = "moved" if moved else "unchanged"
        if moved:
            ledger.append(
                engine, actor=actor, action="finding_status", subject=ledger.subject("finding", fid),
                payload={"status": status, "reason": reason, "patch_id": patch_id},
                idempotency_key=f"finding_status:{fid}:{status}:{patch_id or ''}:{reason[:80]}",
            )
    return out


def _fingerprints(engine: sa.Engine, ids: Iterable[int]) -> dict[str, int]:
    ids = list(ids)
    if not ids:
        return {}
    with engine.connect() as c:
        return {r.fingerprint: r.id for r in c.execute(sa.select(F.c.id, F.c.fingerprint).where(F.c.id.in_(ids)))}


def _record_deployments(engine: sa.Engine, backend: Any, service: str) -> None:
    """The live releases as the desired deployment state (what a restart reconciles to)."""
    weights = backend.current_traffic(service)
    now = datetime.now(UTC)
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    with engine.begin() as conn:
        conn.execute(deployments.delete().where(deployments.c.service == service))
        for r in backend.releases(service):
            row = {"service": service, "color": r.color, "version": r.version[:64], "image": r.image,
                   "patch_id": r.patch_id, "ref": r.ref, "endpoint": r.endpoint,
                   "weight": int(weights.get(r.color, 0)), "updated_at": now}
            conn.execute(insert(deployments).values(row).on_conflict_do_nothing())


def promote(
    engine: sa.Engine, catalog: Catalog, patch_id: str, *, gateway: Any, backend: Any = None,
    store: PatchStore | None = None, actor: str = "selfheal",
) -> dict[str, Any] | None:
    """Finalize a promoted rollout; returns the rescan request ({"conf", "run_id"}), None if not promoted."""
    store = store or PatchStore(engine)
    sp = store.require(patch_id)
    ro = sp.record.rollout
    if sp.state not in ("deploying", "promoted") or (sp.state == "deploying" and ro.get("outcome") != "promoted"):
        return None
    service = sp.service
    fps = _fingerprints(engine, sp.finding_ids)
    removed = []
    for rule in gateway.store.list_rules(service):
        if rule.finding in fps:
            gateway.patches.remove(rule.id)  # desired state first; a gateway that is down reconciles later
            removed.append(rule.id)
            ledger.append(
                engine, actor=actor, action="mitigation_removed", subject=ledger.subject("finding", fps[rule.finding]),
                payload={"rule_id": rule.id, "patch_id": patch_id, "reason": f"patch {patch_id} promoted"},
                idempotency_key=f"mitigation_removed:{patch_id}:{rule.id}",
            )
    if sp.state == "deploying":
        with store.edit(patch_id) as cur:
            cur.record.to("promoted", actor=actor, reason=str(ro.get("reason") or "rollout passed"))
    findings_to(engine, sp.finding_ids, "patching", actor=actor, patch_id=patch_id,
                reason=f"patch {patch_id} promoted; a confirming rescan resolves the finding")
    if backend is not None:
        _record_deployments(engine, backend, service)
    release = ro.get("release") or {}
    ledger.append(
        engine, actor=actor, action="promotion", subject=ledger.subject("patch", patch_id),
        payload={"service": service, "strategy": ro.get("strategy"), "reason": ro.get("reason"),
                 "image": release.get("image") or sp.record.image_tag, "color": release.get("color"),
                 "finding_ids": sp.finding_ids, "virtual_patches_removed": removed,
                 "verdicts": len(ro.get("verdicts") or [])},
        idempotency_key=f"promotion:{patch_id}",
    )
    request = {"conf": {"service": service}, "run_id": f"rescan__{patch_id}"}
    ledger.append(
        engine, actor=actor, action="rescan", subject=ledger.subject("patch", patch_id),
        payload={"dag_id": RESCAN_DAG, **request, "finding_ids": sp.finding_ids},
        idempotency_key=f"rescan:{patch_id}",
    )
    return request


def rollback(
    engine: sa.Engine, catalog: Catalog, patch_id: str, *, gateway: Any, reason: str | None = None,
    store: PatchStore | None = None, actor: str = "selfheal",
) -> bool:
    """Finalize a rolled-back rollout (traffic is already restored); False when there is nothing to do."""
    store = store or PatchStore(engine)
    sp = store.require(patch_id)
    ro = sp.record.rollout
    if sp.state != "deploying":
        return False
    why = reason or str(ro.get("reason") or "rolled back")
    with store.edit(patch_id) as cur:
        cur.record.to("rolled_back", actor=actor, reason=why)
    fps = _fingerprints(engine, sp.finding_ids)
    ruled = {r.finding: r.id for r in gateway.store.list_rules(sp.service) if r.finding in fps}
    kept = sorted(ruled.values())
    for fp, fid in fps.items():
        target = "mitigated" if fp in ruled else "open"
        findings_to(engine, [fid], target, actor=actor, patch_id=patch_id,
                    reason=f"reopened for a human: patch {patch_id} rolled back: {why}"[:1000])
    snap = (ro.get("snapshot") or {}).get("weights")
    ledger.append(
        engine, actor=actor, action="rollback", subject=ledger.subject("patch", patch_id),
        payload={"service": sp.service, "reason": why, "strategy": ro.get("strategy"),
                 "traffic_back_at": ro.get("traffic_back_at"), "restored_weights": snap,
                 "virtual_patches_kept": kept, "finding_ids": sp.finding_ids,
                 "last_verdict": (ro.get("verdicts") or [{}])[-1].get("verdict") if ro.get("verdicts") else None},
        idempotency_key=f"rollback:{patch_id}",
    )
    return True

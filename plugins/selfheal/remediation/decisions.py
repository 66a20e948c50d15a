"""Policy decisions for stored patches, kept on the patch and in the audit ledger.

Two phases: ``pre`` (before the sandbox: is this plan something policy would
ever let go out, and in which mode) and ``final`` (with the sandbox result:
``auto``, ``approval`` or ``manual_only``). Each is stored in the patch's
``policy`` column and audited once per distinct answer (the idempotency key
holds the policy digest and the answer, so re-running with the same policy
writes nothing, and a policy change is recorded).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import sqlalchemy as sa

from selfheal.audit import ledger
from selfheal.catalog import Catalog
from selfheal.policy.gate import PolicyDecision, PolicyGate, primary_finding, sandbox_input
from selfheal.remediation.selection import finding_rows
from selfheal.remediation.store import PatchStore, StoredPatch

Phase = Literal["pre", "final"]


def _summary(d: PolicyDecision) -> dict[str, Any]:
    return {
        "decision": d.decision,
        "reasons": list(d.reasons),
        "effective_mode": d.effective_mode,
        "mode_reasons": list(d.mode_reasons),
        "dry_run": d.dry_run,
        "sandbox_required": d.sandbox_required,
        "policy_digest": d.policy_digest,
    }


def evaluate(
    gate: PolicyGate,
    catalog: Catalog,
    sp: StoredPatch,
    rows: Mapping[int, Mapping[str, Any]],
    phase: Phase,
) -> PolicyDecision:
    """The policy's answer for one patch (pure apart from the policy evaluation)."""
    service = catalog.get(sp.service)
    found = [rows[i] for i in sp.finding_ids if i in rows] or list(sp.record.plan.findings)
    primary = primary_finding(found)
    if isinstance(primary, Mapping):
        primary = {**primary, "ssvc": primary.get("ssvc_decision")}
    sandbox = sp.record.sandbox if phase == "final" and sp.record.sandbox else None
    return gate.decide(finding=primary, service=service, plan=sp.record.plan, sandbox=sandbox)


def decide(
    engine: sa.Engine,
    gate: PolicyGate,
    catalog: Catalog,
    patch_id: str,
    phase: Phase,
    *,
    store: PatchStore | None = None,
    actor: str = "selfheal:policy",
) -> dict[str, Any]:
    """Evaluate, store on the patch (``policy[phase]``) and audit; returns the stored summary."""
    store = store or PatchStore(engine)
    sp = store.require(patch_id)
    rows = finding_rows(engine, sp.finding_ids)
    d = evaluate(gate, catalog, sp, rows, phase)
    summary = _summary(d)
    summary["sandbox_passed"] = sandbox_input(sp.record.sandbox or None)["passed"] if phase == "final" else None
    with store.edit(patch_id) as cur:
        cur.policy = {**cur.policy, phase: summary}
    key = (
        f"decision:{patch_id}:{phase}:{d.policy_digest[:16]}:{d.decision}:{d.effective_mode}:{d.dry_run}"
        f":{summary['sandbox_passed']}"
    )
    ledger.append(
        engine, actor=actor, action="decision", subject=ledger.subject("patch", patch_id),
        payload={"phase": phase, "recipe": sp.record.recipe, "service": sp.service,
                 "finding_ids": sp.finding_ids, **summary},
        idempotency_key=key,
    )
    return summary

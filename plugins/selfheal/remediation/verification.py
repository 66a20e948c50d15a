"""The sandbox step for a stored patch: verify once, store the verdict, audit it.

Idempotent: a patch already past verification (verified, awaiting approval,
deploying, promoted, rolled back, failed) is not verified again; a patch
left ``verifying`` by a killed attempt is verified afresh (the sandbox
cleans up its own leftovers by label).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from selfheal.audit import ledger
from selfheal.catalog import Catalog
from selfheal.remediation.errors import TransientError
from selfheal.remediation.store import PatchStore

DONE = frozenset({"verified", "awaiting_approval", "deploying", "promoted", "rolled_back", "failed"})


def sandbox_summary(sandbox: dict[str, Any]) -> dict[str, Any]:
    """What the audit entry and the approval form say about a verification (no outputs)."""
    return {
        "passed": sandbox.get("passed") is True,
        "reason": sandbox.get("reason") or "",
        "failed_check": sandbox.get("failed_check"),
        "image": sandbox.get("image"),
        "image_id": sandbox.get("image_id"),
        "commit": sandbox.get("commit"),
        "duration_s": sandbox.get("duration_s"),
        "checks": [
            {"name": c.get("name"), "status": c.get("status"), "reason": c.get("reason") or ""}
            for c in sandbox.get("checks") or []
            if isinstance(c, dict)
        ],
    }


def verify(
    engine: sa.Engine,
    catalog: Catalog,
    patch_id: str,
    *,
    store: PatchStore | None = None,
    client: Any = None,
    progress: Callable[[str], None] | None = None,
    actor: str = "selfheal:sandbox",
    verifier: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Verify ``patch_id`` in the sandbox unless that was done; returns {"state", "passed", "reason"}."""
    store = store or PatchStore(engine)
    sp = store.require(patch_id)
    if sp.state in DONE:
        return {"state": sp.state, "passed": sp.record.sandbox.get("passed") is True,
                "reason": sp.record.reason, "verified_now": False}
    if sp.state == "planned" and sp.record.plan.needs_human:
        return {"state": sp.state, "passed": False, "reason": sp.record.reason, "verified_now": False}
    service = catalog.get(sp.service)
    with store.edit(patch_id) as cur:
        cur.record.start_verification(actor=actor)
        commit = cur.record.commit
        plan = cur.record.plan
    if verifier is None:
        from selfheal.sandbox import verify_patch as verifier
    if commit is None:
        commit = plan.base_commit or "HEAD"  # a plan without source change: its base is what is verified
    result = verifier(plan, repo=service.repository, commit=commit, service=service, client=client,
                      progress=progress)
    if not result.passed and "docker daemon" in (result.reason or ""):
        # The daemon went away (verify_patch reports it as a reason, not a type): nothing is known
        # about the patch; leave it verifying and retry later.
        raise TransientError(f"patch {patch_id}: sandbox could not run: {result.reason}")
    data = result.to_dict()
    with store.edit(patch_id) as cur:
        if cur.state == "verifying":
            cur.record.record_sandbox(result.passed, data, image=result.image_id or None,
                                      image_tag=result.image or None, actor=actor)
        state, reason = cur.state, cur.record.reason
    ledger.append(
        engine, actor=actor, action="sandbox_result", subject=ledger.subject("patch", patch_id),
        payload={"finding_ids": sp.finding_ids, **sandbox_summary(data)},
        idempotency_key=f"sandbox_result:{patch_id}:{result.image_id or result.started_at}:{result.passed}",
    )
    return {"state": state, "passed": result.passed, "reason": reason, "verified_now": True}

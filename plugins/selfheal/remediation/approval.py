"""The approval step: does a human have to approve this patch, the form they see, and their answer.

The final policy decision (with the sandbox result) says ``auto``,
``approval`` or ``manual_only``. Only ``approval`` waits for a human; the form
shows the findings, the diff, the sandbox checks and the policy's reasons.

Everything on the form that a scanner, a repository or a finding could have
written is attacker-controlled text: free text is reduced to one line and
every ASCII punctuation character is backslash-escaped (CommonMark renders
any escaped punctuation literally, so no link, image, emphasis, HTML tag or
entity can be formed), and the diff sits in a fenced code block whose fence
is longer than any backtick run inside it (so it cannot be closed early).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa

from selfheal.audit import ledger
from selfheal.catalog import Catalog
from selfheal.policy.gate import PolicyGate
from selfheal.remediation import decisions
from selfheal.remediation.selection import finding_rows
from selfheal.remediation.store import PatchStore, StoredPatch
from selfheal.remediation.verification import sandbox_summary

MAX_DIFF_CHARS = 12_000
MAX_TEXT_CHARS = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_PUNCT = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character
_BACKTICKS = re.compile(r"`+")

Action = Literal["pass", "wait", "skip"]


def md_text(value: Any, limit: int = MAX_TEXT_CHARS) -> str:
    """Untrusted text as inert Markdown: one line, bounded, all punctuation escaped."""
    text = " ".join(_CONTROL.sub(" ", str(value if value is not None else "")).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return _PUNCT.sub(r"\\\1", text)


def md_code(text: str, info: str = "", limit: int = MAX_DIFF_CHARS) -> str:
    """Untrusted text as a fenced code block that its content cannot close."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub(lambda m: "".join(c if c in "\n\t" else "\ufffd" for c in m.group()), text)
    cut = ""
    if len(text) > limit:
        cut = f"\n... {len(text) - limit} more characters (see the patch branch)"
        text = text[:limit]
    longest = max((len(m.group()) for m in _BACKTICKS.finditer(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}{cut}\n{fence}"


def _where(row: Mapping[str, Any]) -> str:
    if row.get("package_name"):
        return f"{row['package_name']} {row.get('package_version') or ''}".strip()
    parts = [row.get("method"), row.get("path_template") or row.get("url")]
    where = " ".join(str(p) for p in parts if p)
    if row.get("param"):
        where += f" (parameter {row['param']})"
    return where


def form(sp: StoredPatch, rows: Mapping[int, Mapping[str, Any]], catalog: Catalog) -> tuple[str, str]:
    """Subject and Markdown body of the approval request."""
    plan = sp.record.plan
    service = catalog.get(sp.service)
    final = sp.policy.get("final") or sp.policy.get("pre") or {}
    strategy = sp.approval.get("strategy") or service.rollout.strategy
    subject = f"Approve patch {sp.id} ({plan.recipe}) for {service.name}?"
    lines = [
        f"### {md_text(plan.title)}",
        "",
        f"Patch `{sp.id}` · service **{md_text(service.name)}** (tier {md_text(service.tier)}, owner "
        f"{md_text(service.owner)}) · recipe {md_text(plan.recipe)} · rollout {md_text(strategy)} "
        f"{md_text(list(service.rollout.steps)) if strategy == 'canary' else ''}",
        "",
        "#### Why a human is asked",
        f"Policy decision: **{md_text(final.get('decision'))}** (mode {md_text(final.get('effective_mode'))})",
        *[f"- {md_text(r)}" for r in final.get("reasons") or []],
        "",
        "#### Findings",
    ]
    for fid in sp.finding_ids:
        row = rows.get(fid)
        if row is None:
            lines.append(f"- finding {fid}: no longer in the triage database")
            continue
        cwe = f"CWE-{row['cwe']}" if row.get("cwe") else md_text(row.get("rule_id"))
        cves = ", ".join(row.get("cves") or [])
        lines.append(
            f"- finding {fid}: **{md_text(row.get('severity'))}** {cwe} {md_text(cves)} — "
            f"{md_text(row.get('title'))} at {md_text(_where(row))} (status {md_text(row.get('status'))}, "
            f"priority {md_text(row.get('priority'))}, seen by {md_text(', '.join(row.get('sources') or []))})"
        )
    sb = sandbox_summary(sp.record.sandbox or {})
    lines += [
        "",
        "#### Sandbox",
        f"{'Passed' if sb['passed'] else 'FAILED'} in {md_text(sb['duration_s'])} s: image "
        f"{md_text(sb['image'])} ({md_text(sb['image_id'])}), commit {md_text(sb['commit'])}"
        + (f" — {md_text(sb['reason'])}" if sb["reason"] else ""),
        *[f"- {md_text(c['name'])}: {md_text(c['status'])}" + (f" ({md_text(c['reason'])})" if c["reason"] else "")
          for c in sb["checks"]],
        "",
        f"#### Diff ({md_text(', '.join(plan.files))}; branch {md_text(sp.record.branch)})",
        md_code(plan.diff or "(no source change)", "diff"),
    ]
    if plan.description:
        lines += ["", "#### Notes from the patch engine", md_code(plan.description, "text", 4000)]
    return subject, "\n".join(lines)


@dataclass(frozen=True)
class ApprovalStep:
    action: Action  # pass: go on without a human; wait: ask one; skip: nothing to deploy
    reason: str
    subject: str = ""
    body: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reason": self.reason}


def prepare(
    engine: sa.Engine,
    gate: PolicyGate,
    catalog: Catalog,
    patch_id: str,
    *,
    store: PatchStore | None = None,
) -> ApprovalStep:
    """Decide (final policy phase) whether the patch waits for a human; moves it to awaiting_approval if so."""
    store = store or PatchStore(engine)
    sp = store.require(patch_id)
    if sp.state in ("promoted", "rolled_back"):
        return ApprovalStep("skip", f"patch already {sp.state}")
    if sp.state == "deploying":
        return ApprovalStep("pass", "rollout already started (approved or automatic earlier)")
    if sp.state not in ("verified", "awaiting_approval"):
        return ApprovalStep("skip", f"patch is {sp.state}: {sp.record.reason or 'not verified'}")
    final = decisions.decide(engine, gate, catalog, patch_id, "final", store=store)
    if final["decision"] == "manual_only":
        return ApprovalStep("skip", "policy: only a human can fix this: " + "; ".join(final["reasons"]))
    if final["dry_run"]:
        return ApprovalStep("pass", "dry run (mode " + final["effective_mode"] + "): nothing will be deployed")
    if final["decision"] == "auto":
        with store.edit(patch_id) as cur:
            if cur.approval.get("approved") is not True:
                cur.approval = {**cur.approval, "approved": None, "by": "policy", "decision": "auto",
                                "reasons": final["reasons"]}
        return ApprovalStep("pass", "policy: automatic: " + "; ".join(final["reasons"]))
    if sp.approval.get("approved") is True:
        return ApprovalStep("pass", f"approved by {sp.approval.get('by')}")
    with store.edit(patch_id) as cur:
        if cur.state == "verified":
            cur.record.to("awaiting_approval", actor="selfheal:policy", reason="; ".join(final["reasons"]))
        sp = cur
    subject, body = form(sp, finding_rows(engine, sp.finding_ids), catalog)
    return ApprovalStep("wait", "policy: approval: " + "; ".join(final["reasons"]), subject, body)


def record_response(
    engine: sa.Engine,
    patch_id: str,
    *,
    approved: bool,
    by: str,
    at: datetime | None = None,
    comment: str = "",
    via: str = "hitl",
    strategy: str | None = None,
    store: PatchStore | None = None,
) -> dict[str, Any]:
    """A human's answer: approval kept on the patch (the rollout's admission reads it), rejection fails it.

    Idempotent per answer (the audit key holds the time of the answer).
    """
    store = store or PatchStore(engine)
    at = at or datetime.now(UTC)
    by = by or "unknown"
    with store.edit(patch_id) as cur:
        if cur.state not in ("verified", "awaiting_approval"):
            return {"state": cur.state, "recorded": False, "reason": f"patch is {cur.state}; answer ignored"}
        if approved:
            cur.approval = {"approved": True, "by": by, "at": at.isoformat(), "via": via,
                            **({"comment": comment} if comment else {}),
                            **({"strategy": strategy} if strategy else {})}
        else:
            cur.approval = {"approved": False, "by": by, "at": at.isoformat(), "via": via,
                            **({"comment": comment} if comment else {})}
            cur.record.reject(actor=f"user:{by}", reason=comment or f"rejected in {via}")
        state, finding_ids = cur.state, cur.finding_ids
    ledger.append(
        engine, actor=f"user:{by}", action="approval" if approved else "rejection",
        subject=ledger.subject("patch", patch_id),
        payload={"approved": approved, "by": by, "at": at.isoformat(), "via": via, "comment": comment,
                 "finding_ids": finding_ids, **({"strategy": strategy} if strategy else {})},
        idempotency_key=f"{'approval' if approved else 'rejection'}:{patch_id}:{at.isoformat()}",
    )
    return {"state": state, "recorded": True}


def approver(sp: StoredPatch) -> str:
    """Who let the patch go out: the human who approved it, else the policy."""
    a = sp.approval
    return f"user:{a['by']}" if a.get("approved") is True and a.get("by") else "selfheal:policy"


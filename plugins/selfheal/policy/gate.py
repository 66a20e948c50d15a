"""The policy gate the remediation DAG calls: decisions, admission, modes.

Python's part is small on purpose: build the policy input from the domain
objects (findings, catalog services, patch plans, sandbox results), evaluate
the Rego entrypoint, check the answer's shape, and enforce the two rules no
policy edit may break:

* a mode is never raised: the effective mode is the lower of the catalog mode
  and whatever the policy says (an unknown catalog mode counts as observe);
* a dry run stays a dry run: if the enforced mode does not allow touching
  traffic for this recipe, ``dry_run`` is true whatever the policy returned.

Everything else (which recipe is automatic where, what needs approval) is in
``include/policies/*.rego``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from selfheal.policy.engine import PolicyEngine, PolicyError, engine_for
from selfheal.policy.window import in_window

Decision = Literal["auto", "approval", "manual_only"]
Mode = Literal["observe", "mitigate", "heal"]
DECISIONS: tuple[Decision, ...] = ("auto", "approval", "manual_only")
MODES: tuple[Mode, ...] = ("observe", "mitigate", "heal")
RECIPES = (
    "virtual_patch",
    "dependency_upgrade",
    "config_hardening",
    "base_image_refresh",
    "code_fix",
    "manual",
    "none",
)


def lower_mode(a: str | None, b: str | None) -> Mode:
    """The lower of two modes; anything unknown counts as observe (the safe end)."""
    ra = MODES.index(a) if a in MODES else 0
    rb = MODES.index(b) if b in MODES else 0
    return MODES[min(ra, rb)]


def needed_mode(recipe: str) -> Mode:
    """Virtual patches touch the gateway (mitigate); everything else deploys (heal)."""
    return "mitigate" if recipe == "virtual_patch" else "heal"


def _get(obj: Any, *names: str, default: Any = None) -> Any:
    """First present attribute/key among ``names`` of a mapping or an object."""
    for n in names:
        if isinstance(obj, Mapping):
            if obj.get(n) is not None:
                return obj[n]
        elif getattr(obj, n, None) is not None:
            return getattr(obj, n)
    return default


def finding_input(finding: Any) -> dict[str, Any]:
    """The policy's view of a finding: a selfheal Finding, a triage row (mapping) or FindingRef."""
    cwe = _get(finding, "cwe")
    if isinstance(cwe, str) and cwe.removeprefix("CWE-").isdigit():
        cwe = int(cwe.removeprefix("CWE-"))
    return {
        "id": _get(finding, "id", "db_id"),
        "fingerprint": _get(finding, "fingerprint"),
        "rule_id": _get(finding, "rule_id"),
        "title": _get(finding, "title"),
        "severity": _get(finding, "severity"),
        "kind": _get(finding, "kind"),
        "cwe": cwe if isinstance(cwe, int) else None,
        "confidence": _get(finding, "confidence"),
        "ssvc": _get(finding, "ssvc", "ssvc_decision"),
        "kev": _get(finding, "kev"),
        "exploit_available": _get(finding, "exploit_available"),
        "exploitation": _get(finding, "exploitation"),
        "epss": _get(finding, "epss"),
        "cvss_score": _get(finding, "cvss_score"),
    }


def service_input(service: Any, now: datetime | None = None) -> dict[str, Any]:
    """The policy's view of a catalog service (``selfheal.catalog.Service`` or a mapping)."""
    window = _get(service, "change_window")
    return {
        "name": _get(service, "name"),
        "tier": _get(service, "tier"),
        "owner": _get(service, "owner"),
        "mode": _get(service, "mode"),
        "internet_facing": _get(service, "internet_facing"),
        "change_window": window,
        "in_change_window": in_window(window, now),
    }


def sandbox_input(sandbox: Any) -> dict[str, Any]:
    """``passed`` (None: not run yet), the names of failed checks, and the image that was verified."""
    if sandbox is None:
        return {"passed": None, "failed_checks": [], "image": None}
    passed = _get(sandbox, "passed", "ok")
    failed = _get(sandbox, "failed_checks", "failed", default=None)
    if failed is None:
        checks = _get(sandbox, "checks", default=()) or ()
        items = checks.items() if isinstance(checks, Mapping) else ((_get(c, "name"), c) for c in checks)
        failed = [name for name, c in items if _get(c, "passed", "ok") is False]
    if passed is not None and not isinstance(passed, bool):
        raise PolicyError(f"sandbox result: 'passed' must be true, false or null, got {passed!r}")
    return {
        "passed": passed,
        "failed_checks": sorted(str(x) for x in failed),
        "image": _get(sandbox, "image", "image_ref", "image_id"),
    }


def plan_input(plan: Any) -> dict[str, Any]:
    if plan is None:
        return {"id": None, "needs_human": False, "failed": False, "reason": ""}
    return {
        "id": _get(plan, "id"),
        "needs_human": bool(_get(plan, "needs_human", default=False)),
        "failed": bool(_get(plan, "failed", default=False)),
        "reason": _get(plan, "reason", default="") or "",
    }


@dataclass(frozen=True)
class PolicyDecision:
    decision: Decision
    reasons: tuple[str, ...]
    effective_mode: Mode
    mode_reasons: tuple[str, ...]
    dry_run: bool
    sandbox_required: bool
    policy_digest: str
    input: dict[str, Any] = field(repr=False, compare=False)

    def to_audit(self) -> dict[str, Any]:
        """The payload of the ``decision`` audit entry: what was decided, why, and on what input."""
        return asdict(self)


@dataclass(frozen=True)
class AdmissionResult:
    allow: bool
    reasons: tuple[str, ...]
    policy_digest: str
    input: dict[str, Any] = field(repr=False, compare=False)

    def to_audit(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModeResult:
    effective_mode: Mode
    reasons: tuple[str, ...]
    policy_digest: str


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise PolicyError(f"{what}: expected a list of strings, got {value!r:.200}")
    return tuple(value)


class PolicyGate:
    """Decisions for patch plans against the policies of one directory."""

    def __init__(self, policy_dir: Path | str | None = None, engine: PolicyEngine | None = None) -> None:
        self.engine = engine or engine_for(policy_dir)

    def _mode(self, catalog_mode: Any, policy_mode: Any, reasons: list[str]) -> Mode:
        enforced = lower_mode(catalog_mode, policy_mode)
        if policy_mode not in MODES:
            reasons.append(f"policy returned mode {policy_mode!r}: not a mode, observe enforced")
        elif MODES.index(policy_mode) > MODES.index(enforced):
            reasons.append(
                f"policy proposed mode {policy_mode} above the catalog mode {catalog_mode}: "
                "ignored (policy can only lower a mode)"
            )
        return enforced

    def effective_mode(
        self, service: Any, context: Mapping[str, Any] | None = None, now: datetime | None = None
    ) -> ModeResult:
        doc = {"service": service_input(service, now), "context": dict(context or {})}
        out, digest = self.engine.evaluate("selfheal/modes/result", doc)
        reasons = list(_strings(out.get("reasons"), "modes.reasons"))
        mode = self._mode(doc["service"]["mode"], out.get("effective_mode"), reasons)
        return ModeResult(mode, tuple(reasons), digest)

    def decide(
        self,
        *,
        finding: Any,
        service: Any,
        plan: Any = None,
        recipe: str | None = None,
        sandbox: Any = None,
        context: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> PolicyDecision:
        """auto / approval / manual_only for one plan, with reasons and the enforced mode.

        ``recipe`` defaults to ``plan.recipe``; ``sandbox`` is None before the
        sandbox ran (the policy then answers "auto once the sandbox passes"
        where that applies) and the sandbox result afterwards.
        """
        recipe = recipe or _get(plan, "recipe") or "none"
        if not isinstance(recipe, str):
            raise PolicyError(f"recipe must be a string, got {recipe!r}")
        doc = {
            "finding": finding_input(finding),
            "service": service_input(service, now),
            "recipe": recipe,
            "plan": plan_input(plan),
            "sandbox": sandbox_input(sandbox),
            "context": dict(context or {}),
        }
        out, digest = self.engine.evaluate("selfheal/remediation/result", doc)
        decision = out.get("decision")
        if decision not in DECISIONS:
            raise PolicyError(
                f"remediation policy returned decision {decision!r}; expected one of {DECISIONS}"
            )
        reasons = _strings(out.get("reasons"), "remediation.reasons")
        if not reasons:
            raise PolicyError("remediation policy returned a decision without reasons")
        mode_reasons = list(_strings(out.get("mode_reasons"), "remediation.mode_reasons"))
        mode = self._mode(doc["service"]["mode"], out.get("effective_mode"), mode_reasons)
        dry_run = out.get("dry_run") is not False or MODES.index(mode) < MODES.index(needed_mode(recipe))
        return PolicyDecision(
            decision=decision,
            reasons=reasons,
            effective_mode=mode,
            mode_reasons=tuple(mode_reasons),
            dry_run=dry_run,
            sandbox_required=out.get("sandbox_required") is not False,
            policy_digest=digest,
            input=doc,
        )

    def admit(
        self,
        *,
        plan: Any,
        service: Any,
        decision: str,
        sandbox: Any,
        rollout_image: str | None,
        approval: Mapping[str, Any] | None = None,
        strategy: str | None = None,
        context: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> AdmissionResult:
        """May this rollout start? Refused (with reasons) unless the sandbox passed on this very image,
        the decision allows it (approval given where required) and the enforced mode is heal."""
        doc = {
            "patch": {
                "id": _get(plan, "id"),
                "recipe": _get(plan, "recipe"),
                "service": _get(plan, "service"),
            },
            "service": service_input(service, now),
            "sandbox": sandbox_input(sandbox),
            "rollout": {"image": rollout_image, "strategy": strategy},
            "decision": decision,
            "approval": dict(approval or {"approved": None, "by": None}),
            "context": dict(context or {}),
        }
        out, digest = self.engine.evaluate("selfheal/admission/result", doc)
        reasons = list(_strings(out.get("reasons"), "admission.reasons"))
        allow = out.get("allow") is True and not reasons
        # Never raise: admission needs heal, enforced in Python as well.
        mode = lower_mode(doc["service"]["mode"], "heal")
        if allow and mode != "heal":
            allow = False
            reasons.append(f"catalog mode {doc['service']['mode']} does not allow deployments")
        return AdmissionResult(allow, tuple(reasons), digest, doc)


def primary_finding(findings: Sequence[Any]) -> Any:
    """The finding a multi-finding plan is judged by: KEV first, then severity, then CVSS."""
    order = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}
    if not findings:
        raise PolicyError("a plan needs at least one finding to be judged")
    return min(
        findings,
        key=lambda f: (
            _get(f, "kev") is not True,
            order.get(_get(f, "severity"), 5),
            -(_get(f, "cvss_score") or 0.0),
        ),
    )


_default: PolicyGate | None = None


def default_gate() -> PolicyGate:
    """The gate over ``include/policies`` (or $SELFHEAL_POLICY_DIR), shared per process."""
    import os

    global _default
    wanted = os.environ.get("SELFHEAL_POLICY_DIR")
    if _default is None or (wanted and Path(wanted).resolve() != _default.engine.policy_dir.resolve()):
        _default = PolicyGate(wanted or None)
    return _default

"""virtual_patch: the gateway rule for a web finding, as an instant and reversible mitigation.

The rule itself is derived by ``selfheal.gateway.virtual_patch.derive`` (the
gateway owns rule semantics: parameter-scoped injection blocks, require-auth
and deny rules); this recipe only wraps it as a plan so the mitigation goes
through the same record, state machine and audit trail as real patches.
Reverting is removing the rule by its id (``details["revert"]``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path

from selfheal.catalog import Service
from selfheal.findings.model import Finding
from selfheal.gateway.virtual_patch import RuleError, derive
from selfheal.patches.attack import attack_requests
from selfheal.patches.model import GatewayChange, PatchPlan, Verification
from selfheal.patches.recipes import PlanContext, Recipe


class VirtualPatchRecipe(Recipe):
    name = "virtual_patch"
    role = "mitigation"
    delivery = "gateway"

    def applies(self, finding: Finding, service: Service) -> bool:
        try:
            derive(finding, service.name)
        except RuleError:
            return False
        return True

    def group_key(self, finding: Finding) -> Hashable:
        # Findings that map to the same rule (ZAP and Wapiti on one parameter) share one plan.
        try:
            return derive(finding, finding.service or "x").id
        except RuleError:
            return finding.fingerprint

    def plan(
        self, findings: Sequence[Finding], service: Service, workdir: Path | None, ctx: PlanContext
    ) -> PatchPlan:
        try:
            rule = derive(findings[0], service.name)
        except RuleError as e:
            return self.make_plan(
                findings, service, ctx, title="Virtual patch: not possible", failed=True, reason=str(e)
            )
        where = f"{rule.method or 'ANY'} {rule.path}" + (f" ({rule.param})" if rule.param else "")
        return self.make_plan(
            findings,
            service,
            ctx,
            title=f"Virtual patch {rule.id}: {rule.action} at {where}",
            description=rule.reason,
            # Replayed through the gateway: blocked (403/401) means not reproduced.
            verification=Verification(exploit_replay=tuple(r for f in findings for r in attack_requests(f))),
            gateway=GatewayChange(service=service.name, rule=rule.to_dict()),
            details={
                "rule_id": rule.id,
                "action": rule.action,
                "attack_class": rule.attack_class,
                "cwe": rule.cwe,
                "revert": {"remove_rule": rule.id},
            },
        )

"""code_fix: source-level fixes, one ``SourceRecipe`` per weakness pattern.

A source recipe finds the flawed code for a finding in the working copy and
returns the new text of the files it rewrites. It raises ``NotFixable`` with
a reason when the code is not in the one shape it knows how to fix safely;
the plan then needs a human, with that reason. Today there is one source
recipe, ``sql_parameterize`` (CWE-89); findings of other classes fall through
to the planner's ``manual`` plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from selfheal.catalog import Service
from selfheal.findings.model import Finding
from selfheal.patches.attack import attack_requests
from selfheal.patches.diffs import make_diff
from selfheal.patches.model import PatchPlan, RescanCheck, Verification
from selfheal.patches.recipes import PlanContext, Recipe, image_checks, web_paths


class NotFixable(Exception):
    """The source recipe cannot fix this safely; the message is the reason a human reads."""


@dataclass
class SourceFix:
    edits: dict[str, str]  # relative path -> new text
    sites: list[str]  # human-readable "file:line function(): what changed"
    notes: list[str] = field(default_factory=list)
    rescan_modules: tuple[str, ...] = ()


class SourceRecipe:
    name = ""

    def applies(self, finding: Finding) -> bool:
        raise NotImplementedError

    def fix(self, findings: Sequence[Finding], workdir: Path) -> SourceFix:
        raise NotImplementedError


def source_recipes() -> list[SourceRecipe]:
    from selfheal.patches.recipes.code_fix.sql_parameterize import SqlParameterize

    return [SqlParameterize()]


class CodeFix(Recipe):
    name = "code_fix"
    delivery = "image"

    def _recipe(self, finding: Finding) -> SourceRecipe | None:
        return next((r for r in source_recipes() if r.applies(finding)), None)

    def applies(self, finding: Finding, service: Service) -> bool:
        return self._recipe(finding) is not None

    def group_key(self, finding: Finding) -> tuple[str, str]:
        r = self._recipe(finding)
        return (r.name if r else "", finding.fingerprint)

    def plan(
        self, findings: Sequence[Finding], service: Service, workdir: Path, ctx: PlanContext
    ) -> PatchPlan:
        recipe = self._recipe(findings[0])
        assert recipe is not None
        first = findings[0]
        label = f"{first.title} ({f'CWE-{first.cwe}' if first.cwe else first.rule_id})"
        try:
            fix = recipe.fix(findings, workdir)
        except NotFixable as e:
            return self.make_plan(
                findings,
                service,
                ctx,
                title=f"{label}: needs a human",
                needs_human=True,
                reason=f"{recipe.name}: {e}",
                details={"source_recipe": recipe.name},
            )
        paths = web_paths(findings)
        checks = image_checks(service, paths)
        diff = make_diff(workdir, fix.edits)
        verification = Verification(
            tests=checks["tests"],
            exploit_replay=tuple(r for f in findings for r in attack_requests(f)),
            rescan=RescanCheck(
                scanner="wapiti",
                modules=fix.rescan_modules,
                paths=tuple(paths),
                cwes=tuple(sorted({f.cwe for f in findings if f.cwe})),
            )
            if fix.rescan_modules and paths
            else None,
            latency=checks["latency"],
        )
        return self.make_plan(
            findings,
            service,
            ctx,
            title=f"Fix {label} by {recipe.name.replace('_', ' ')}",
            description="\n".join([*(f"- {s}" for s in fix.sites), *(f"Note: {n}" for n in fix.notes)]),
            diff=diff,
            verification=verification,
            details={"source_recipe": recipe.name, "sites": fix.sites, "notes": fix.notes},
        )

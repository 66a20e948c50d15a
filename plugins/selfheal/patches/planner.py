"""Turn a batch of findings into patch plans: the entry point the patch DAG calls.

For every finding: each applicable *mitigation* (the virtual patch) and the
first applicable *remedy* (dependency upgrade, base image refresh, config
hardening, code fix, in that order). Findings a recipe fixes together are
grouped into one plan (all CVEs of one package, all header findings of one
service). A finding no remedy covers gets a ``manual`` plan that needs a
human, with the reason. A recipe that crashes becomes a failed plan naming
the crash: one bad finding never sinks the batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path

from selfheal.catalog import Service
from selfheal.findings.fingerprint import fingerprint
from selfheal.findings.model import Finding
from selfheal.patches.git import clean_checkout
from selfheal.patches.model import PatchPlan
from selfheal.patches.recipes import PlanContext, Recipe, registry
from selfheal.patches.recipes.base_image_refresh import is_kernel_package


class ManualRecipe(Recipe):
    """The catch-all: says why no recipe applies, so a human can pick it up from the review queue."""

    name = "manual"
    delivery = "none"

    def applies(self, finding: Finding, service: Service) -> bool:
        return True

    def plan(
        self, findings: Sequence[Finding], service: Service, workdir: Path | None, ctx: PlanContext
    ) -> PatchPlan:
        f = findings[0]
        what = f"CWE-{f.cwe}" if f.cwe else f.rule_id
        where = ""
        if f.location is not None:
            loc = f.location
            path = (loc.path or loc.url or "") + (f":{loc.line}" if loc.line else "")
            where = " at " + " ".join(x for x in (loc.method, path) if x)
            if loc.param:
                where += f" ({loc.param})"
        elif f.package is not None:
            where = f" in {f.package.name} {f.package.version or ''}".rstrip()
            if not f.package.fixed_version:
                where += " (no fixed version published)"
        reason = f"no recipe fixes {f.kind} finding {what}{where}"
        if f.package is not None and is_kernel_package(f.package.name):
            reason += "; a kernel package belongs to the host (containers share its kernel): patch the host"
        elif f.kind == "dependency" and f.package and f.package.ecosystem:
            reason += f"; ecosystem {f.package.ecosystem!r} has no upgrade recipe"
        return self.make_plan(
            findings, service, ctx, title=f"{f.title}: needs a human", needs_human=True, reason=reason
        )


def _with_fingerprint(f: Finding, service: Service) -> Finding:
    if f.fingerprint and f.service:
        return f
    return dataclasses.replace(
        f, fingerprint=f.fingerprint or fingerprint(f, service.name), service=f.service or service.name
    )


def plan_patches(
    findings: Iterable[Finding],
    service: Service,
    workdir: Path,
    ctx: PlanContext | None = None,
    recipes: Sequence[Recipe] | None = None,
) -> list[PatchPlan]:
    """Plans for ``findings`` of ``service`` from the working copy ``workdir`` (read only)."""
    ctx = ctx or PlanContext()
    recipes = list(recipes) if recipes is not None else registry()
    mitigations = [r for r in recipes if r.role == "mitigation"]
    remedies = [r for r in recipes if r.role != "mitigation"]
    manual = ManualRecipe()
    groups: dict[tuple[str, Hashable], tuple[Recipe, list[Finding]]] = {}

    def add(recipe: Recipe, f: Finding) -> None:
        key = (recipe.name, recipe.group_key(f))
        groups.setdefault(key, (recipe, []))[1].append(f)

    for raw in findings:
        f = _with_fingerprint(raw, service)
        for r in mitigations:
            if _safe_applies(r, f, service):
                add(r, f)
        remedy = next((r for r in remedies if _safe_applies(r, f, service)), manual)
        add(remedy, f)
    plans = []
    for recipe, members in groups.values():
        # Duplicates (same fingerprint from two scanners) are one finding for the plan.
        unique = list({f.fingerprint: f for f in members}.values())
        try:
            plans.append(recipe.plan(unique, service, workdir, ctx))
        except Exception as e:  # noqa: BLE001 - a recipe bug must not sink the batch; it is reported as a failed plan
            plans.append(
                recipe.make_plan(
                    unique,
                    service,
                    ctx,
                    title=f"{recipe.name}: internal error",
                    failed=True,
                    reason=f"recipe {recipe.name} crashed: {type(e).__name__}: {e}",
                )
            )
    # A human reading a manual plan wants to know whether the hole is at least blocked meanwhile.
    rules = {
        f.fingerprint: p.details.get("rule_id")
        for p in plans
        if p.recipe == "virtual_patch" and not p.failed
        for f in p.findings
    }
    for i, p in enumerate(plans):
        blocked = sorted({rules[f.fingerprint] for f in p.findings if rules.get(f.fingerprint)})
        if p.recipe == "manual" and blocked:
            plans[i] = dataclasses.replace(
                p, reason=f"{p.reason}; mitigated meanwhile by {', '.join(blocked)}"
            )
    return plans


def _safe_applies(recipe: Recipe, f: Finding, service: Service) -> bool:
    try:
        return recipe.applies(f, service)
    except Exception:  # noqa: BLE001 - attacker-shaped input must not crash selection; the recipe just does not apply
        return False


def plan_repository(
    findings: Iterable[Finding],
    service: Service,
    repo: Path | str | None = None,
    ref: str = "HEAD",
    ctx: PlanContext | None = None,
) -> list[PatchPlan]:
    """Plan against a clean checkout of the service's repository at ``ref`` (base commit recorded)."""
    ctx = ctx or PlanContext()
    with clean_checkout(repo or service.repository, ref) as (work, commit):
        ctx.base_commit = commit
        return plan_patches(findings, service, work, ctx)

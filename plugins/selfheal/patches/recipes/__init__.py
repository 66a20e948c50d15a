"""Patch recipes: one module per kind of fix, behind one small interface.

A recipe says whether it ``applies`` to a finding, which findings it fixes
together (``group_key``), and turns a group into a ``PatchPlan`` from a
read-only working copy (``plan``); ``apply`` writes a plan's diff into a
working copy. Recipes never raise for bad input: a recipe that matches but
cannot produce a safe change returns a plan with ``failed``/``needs_human``
and the reason, so the pipeline records it instead of crashing the batch.

Two roles: *mitigations* (``virtual_patch``: a gateway rule, instant and
reversible) and *remedies* (``dependency_upgrade``, ``base_image_refresh``,
``config_hardening``, ``code_fix``). A finding gets every applicable
mitigation and the first applicable remedy; a finding no remedy covers gets a
``manual`` plan that needs a human (see ``selfheal.patches.planner``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from selfheal.catalog import Service
from selfheal.findings.model import Finding
from selfheal.patches.diffs import apply_diff, changed_files
from selfheal.patches.model import (
    Delivery,
    FindingRef,
    LatencyCheck,
    PatchPlan,
    TestsCheck,
    Verification,
    plan_id,
)

if TYPE_CHECKING:
    from selfheal.patches.recipes.base_image_refresh import ImageSource
    from selfheal.patches.versions import Resolver, VersionSource


@dataclass
class PlanContext:
    """What recipes may consult besides the working copy; everything external is injectable.

    ``versions`` defaults to the real package index (``PipIndexVersions``);
    ``resolver`` (pip's resolver) and ``images`` (base image digests) are
    only used when given.
    """

    versions: VersionSource | None = None
    resolver: Resolver | None = None
    images: ImageSource | None = None
    base_commit: str | None = None
    db_ids: Mapping[str, int] = field(default_factory=dict)

    def version_source(self) -> VersionSource:
        if self.versions is None:
            from selfheal.patches.versions import PipIndexVersions

            self.versions = PipIndexVersions()
        return self.versions


class Recipe:
    """Base class: subclasses set ``name``/``role``/``delivery`` and implement ``applies`` and ``plan``."""

    name: ClassVar[str] = ""
    role: ClassVar[str] = "remedy"  # "remedy" or "mitigation"
    delivery: ClassVar[Delivery] = "image"

    def applies(self, finding: Finding, service: Service) -> bool:
        raise NotImplementedError

    def group_key(self, finding: Finding) -> Hashable:
        """Findings with equal keys are fixed by one plan (default: each finding alone)."""
        return finding.fingerprint or id(finding)

    def plan(
        self, findings: Sequence[Finding], service: Service, workdir: Path, ctx: PlanContext
    ) -> PatchPlan:
        raise NotImplementedError

    def apply(self, plan: PatchPlan, workdir: Path) -> tuple[str, ...]:
        """Write the plan's change into ``workdir``; returns the changed files."""
        return apply_diff(workdir, plan.diff)

    # -------------------------------------------------------------- helpers for subclasses
    def make_plan(
        self,
        findings: Sequence[Finding],
        service: Service,
        ctx: PlanContext,
        *,
        title: str,
        description: str = "",
        diff: str = "",
        verification: Verification | None = None,
        delivery: Delivery | None = None,
        needs_human: bool = False,
        failed: bool = False,
        reason: str = "",
        details: dict[str, Any] | None = None,
        gateway: Any = None,
    ) -> PatchPlan:
        refs = tuple(FindingRef.of(f, ctx.db_ids.get(f.fingerprint)) for f in findings)
        delivery = delivery or self.delivery
        if failed or needs_human:
            needs_human = True
        return PatchPlan(
            id=plan_id(
                service.name,
                self.name,
                [r.fingerprint for r in refs],
                ctx.base_commit,
                diff,
                extra=reason if not diff else "",
            ),
            service=service.name,
            recipe=self.name,
            findings=refs,
            title=title,
            description=description,
            diff=diff,
            files=changed_files(diff),
            base_commit=ctx.base_commit,
            verification=verification or Verification(),
            rollout=rollout_of(service),
            delivery=delivery,
            gateway=gateway,
            needs_human=needs_human,
            failed=failed,
            reason=reason,
            details=details or {},
        )


def rollout_of(service: Service) -> dict[str, Any]:
    """The catalog's rollout strategy for the service, JSON-ready."""
    r = service.rollout
    return {"strategy": r.strategy, "steps": list(r.steps)}


def image_checks(service: Service, paths: Sequence[str] = ()) -> dict[str, Any]:
    """The checks every image-changing plan carries: the service's tests and the latency smoke test."""
    health = service.deploy.docker.health_path if service.deploy.docker else "/health"
    latency_paths = tuple(dict.fromkeys([health, *[p for p in paths if p and "{" not in p]]))
    return {
        "tests": TestsCheck(service.test_command) if service.test_command else None,
        "latency": LatencyCheck(paths=latency_paths),
    }


def web_paths(findings: Sequence[Finding]) -> list[str]:
    """Request paths (no query) of the web findings, for latency and re-scan targets."""
    out = []
    for f in findings:
        if f.location is not None and f.location.path and f.location.path.startswith("/"):
            out.append(f.location.path.split("?", 1)[0])
    return list(dict.fromkeys(out))


def registry() -> list[Recipe]:
    """Every recipe, remedies in the order they are tried."""
    from selfheal.patches.recipes.base_image_refresh import BaseImageRefresh
    from selfheal.patches.recipes.code_fix import CodeFix
    from selfheal.patches.recipes.config_hardening import ConfigHardening
    from selfheal.patches.recipes.dependency_upgrade import DependencyUpgrade
    from selfheal.patches.recipes.virtual_patch import VirtualPatchRecipe

    return [VirtualPatchRecipe(), DependencyUpgrade(), BaseImageRefresh(), ConfigHardening(), CodeFix()]


def get(name: str) -> Recipe:
    for r in registry():
        if r.name == name:
            return r
    raise KeyError(f"unknown recipe {name!r}; known: {', '.join(r.name for r in registry())}")


__all__ = ["PlanContext", "Recipe", "get", "image_checks", "registry", "rollout_of", "web_paths"]

"""What the sandbox needs to verify one patch, and the resource limits it runs under.

``SandboxSpec`` is deliberately small and built from a ``PatchPlan``
(``spec_from_plan``) plus the catalog entry, so the sandbox core does not
depend on every field of a plan; the check types themselves are the plan's
(``selfheal.patches.model``) so the expected verification is written once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from selfheal.patches.model import (
    AttackRequest,
    DependencyVersionCheck,
    LatencyCheck,
    PatchPlan,
    RescanCheck,
)
from selfheal.sandbox import DEFAULT_BASE_IMAGE

SQLI_CWES = frozenset({89, 564})
XSS_CWES = frozenset({79, 80, 83, 87})
_TAG_SAFE = re.compile(r"[^a-z0-9_.-]+")


class SpecError(ValueError):
    """The plan cannot be verified as given (e.g. no commit, bad field); the message says which."""


@dataclass(frozen=True)
class Limits:
    """Resource limits and timeouts of one sandbox (every container in it gets the same caps).

    Defaults fit a 2-core machine running two services side by side. ``hard_timeout_s`` bounds the
    whole verification; every wait uses the smaller of its own timeout and what is left of it.
    """

    cpus: float = 1.0
    memory: str = "384m"
    pids: int = 256
    tmpfs_size: str = "64m"
    build_timeout_s: float = 600.0
    start_timeout_s: float = 30.0
    test_timeout_s: float = 180.0
    request_timeout_s: float = 5.0
    rescan_timeout_s: float = 90.0
    hard_timeout_s: float = 900.0
    fallback_user: str = "65534:65534"  # used when an image would run as root
    latency_warmup: int = 20
    latency_rounds: int = 2  # a round failing only on speed is measured again; all rounds must fail
    latency_abs_slack_ms: float = 1.0


@dataclass(frozen=True)
class SandboxSpec:
    """One patch to verify: where its image comes from and which checks apply."""

    patch_id: str
    service: str
    test_command: str | None = None
    exploits: tuple[AttackRequest, ...] = ()
    sqli_differential: bool = False  # add boolean-based probes (the plan addresses an SQL injection)
    xss: bool = False  # reflected payloads count only in markup responses (the plan addresses XSS)
    rescan: RescanCheck | None = None
    fingerprints: tuple[str, ...] = ()  # the findings that must not reappear in the re-scan
    dependency_versions: tuple[DependencyVersionCheck, ...] = ()
    latency: LatencyCheck | None = None
    dockerfile: str = "Dockerfile"
    port: int = 8000
    health_path: str = "/health"
    openapi_path: str | None = None
    base_image: str = field(default_factory=lambda: os.environ.get("SELFHEAL_BASE_IMAGE", DEFAULT_BASE_IMAGE))
    build_args: Mapping[str, str] = field(default_factory=dict)
    # The base the patched image is built on when the plan changes it (base_image_refresh); the
    # baseline stays on ``base_image``, the one the running version was built on.
    patched_base_image: str | None = None
    no_cache: bool = False
    pull: bool = False  # base_image_refresh asks for the refreshed base tag (needs a registry)

    def applicable(self) -> list[str]:
        """The checks that run, in order (the same names as ``Verification.applicable``)."""
        out = []
        if self.test_command:
            out.append("tests")
        if self.exploits:
            out.append("exploit_replay")
        if self.rescan is not None:
            out.append("rescan")
        if self.dependency_versions:
            out.append("dependency_version")
        if self.latency is not None:
            out.append("latency")
        return out

    @property
    def image_repo(self) -> str:
        return f"selfheal/{_TAG_SAFE.sub('-', self.service.lower()).strip('-.') or 'service'}"

    @property
    def image_tag(self) -> str:
        return f"{self.image_repo}:patch-{_TAG_SAFE.sub('-', self.patch_id.lower())[:100]}"

    def baseline_tag(self, commit: str) -> str:
        return f"{self.image_repo}:commit-{commit[:12]}"

    def with_(self, **changes: Any) -> SandboxSpec:
        return replace(self, **changes)


def spec_from_plan(plan: PatchPlan | Mapping[str, Any], service: Any = None, **overrides: Any) -> SandboxSpec:
    """The sandbox spec for ``plan`` (a PatchPlan or its ``to_dict`` form) and its catalog ``service``.

    Mapping: ``verification.tests.command`` (else the catalog's ``test_command``: an image change
    always runs the service's own suite), ``exploit_replay``, ``rescan`` (+ the plan's finding
    fingerprints), ``dependency_version``, ``latency``, ``build.no_cache``/``pull``/``base_image``
    (the patched image's base, when the plan changes it); the catalog gives the
    Dockerfile, port, health path and OpenAPI path. ``overrides`` replace fields of the result.
    """
    if not isinstance(plan, PatchPlan):
        plan = PatchPlan.from_dict(dict(plan))
    if plan.needs_human or plan.failed:
        raise SpecError(f"plan {plan.id}: needs a human ({plan.reason or 'no automatic change'}); nothing to verify")
    if plan.delivery == "gateway" or plan.delivery == "none":
        raise SpecError(f"plan {plan.id}: delivery {plan.delivery!r} builds no image; the sandbox verifies images")
    v = plan.verification
    test_command = v.tests.command if v.tests else None
    kw: dict[str, Any] = {}
    if service is not None:
        test_command = test_command or getattr(service, "test_command", None)
        kw["dockerfile"] = getattr(service, "dockerfile", None) or "Dockerfile"
        docker = getattr(getattr(service, "deploy", None), "docker", None)
        if docker is not None:
            kw["port"] = docker.port
            kw["health_path"] = docker.health_path
        openapi = getattr(service, "openapi_url", None)
        if openapi:
            kw["openapi_path"] = urlsplit(openapi).path or None
    cwes = {f.cwe for f in plan.findings if f.cwe is not None}
    if v.rescan is not None:
        cwes |= set(v.rescan.cwes)
    spec = SandboxSpec(
        patch_id=plan.id,
        service=plan.service,
        test_command=test_command,
        exploits=tuple(v.exploit_replay),
        sqli_differential=bool(cwes & SQLI_CWES),
        xss=bool(cwes & XSS_CWES),
        rescan=v.rescan,
        fingerprints=tuple(f.fingerprint for f in plan.findings if f.fingerprint),
        dependency_versions=tuple(v.dependency_version),
        latency=v.latency,
        no_cache=bool(v.build.get("no_cache", False)),
        pull=bool(v.build.get("pull", False)),
        patched_base_image=_base_ref(v.build.get("base_image"), plan.id),
        **kw,
    )
    return replace(spec, **overrides) if overrides else spec


_IMAGE_REF = re.compile(r"^[a-z0-9][a-z0-9._/:@-]{0,254}$", re.IGNORECASE)


def _base_ref(value: Any, plan_id: str) -> str | None:
    """``build.base_image`` of a plan: an image reference, or None when the plan keeps the base."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _IMAGE_REF.match(value):
        raise SpecError(f"plan {plan_id}: build.base_image {value!r} is not an image reference")
    return value

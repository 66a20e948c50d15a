"""What a patch plan is: the findings it addresses, the change, and how to prove it works.

Plain frozen dataclasses with ``to_dict`` / ``from_dict`` (JSON-ready), so the
plan can be stored in the ``patches`` table, passed between Airflow tasks as
XCom, and read by the sandbox and rollout steps without importing recipes.

The sandbox step reads ``PatchPlan.verification`` (``Verification``): every
non-empty check in it applies, and a patch passes only if all of them pass.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from selfheal.findings.model import SEVERITIES, Finding

Delivery = Literal["image", "gateway", "image+gateway", "none"]
DELIVERIES: tuple[Delivery, ...] = ("image", "gateway", "image+gateway", "none")


class PlanError(ValueError):
    """A recipe cannot produce a patch for this input; the message names the file/package and why."""


@dataclass(frozen=True, slots=True)
class FindingRef:
    """The part of a finding a plan and its commit trailers need (identity, not content)."""

    fingerprint: str
    rule_id: str
    title: str
    severity: str
    kind: str
    scanner: str = ""
    db_id: int | None = None
    cwe: int | None = None
    cves: tuple[str, ...] = ()
    package: str | None = None

    @classmethod
    def of(cls, finding: Finding, db_id: int | None = None) -> FindingRef:
        return cls(
            fingerprint=finding.fingerprint,
            rule_id=finding.rule_id,
            title=finding.title,
            severity=finding.severity,
            kind=finding.kind,
            scanner=finding.scanner,
            db_id=db_id,
            cwe=finding.cwe,
            cves=tuple(finding.cves),
            package=finding.package.name if finding.package else None,
        )


@dataclass(frozen=True, slots=True)
class Oracle:
    """When a replayed request counts as "the attack still works".

    Any one matching condition means reproduced. The sandbox sends the same
    request to the unpatched and the patched image side by side: it must be
    reproduced on the first and not on the second, else the check proves nothing.
    """

    status_in: tuple[int, ...] = ()
    body_patterns: tuple[str, ...] = ()  # Python regexes, searched in the decoded body
    headers_absent: tuple[str, ...] = ()  # reproduced if any of these response headers is missing
    headers_present: tuple[str, ...] = ()  # reproduced if any of these response headers is present

    def reproduced(self, status: int, headers: dict[str, str], body: str) -> bool:
        """Evaluate the oracle on one response (header names are compared case-insensitively)."""
        present = {k.lower() for k in headers}
        if status in self.status_in:
            return True
        if any(re.search(p, body) for p in self.body_patterns):
            return True
        if any(h.lower() not in present for h in self.headers_absent):
            return True
        return any(h.lower() in present for h in self.headers_present)


@dataclass(frozen=True, slots=True)
class AttackRequest:
    """One HTTP request that demonstrates a finding, relative to the service's base URL."""

    method: str
    path: str  # path plus raw query string, e.g. "/api/items?category=x%27"
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""
    oracle: Oracle = Oracle()
    source: str = ""  # where it came from: "wapiti http_request", "curl_command", "synthesized probe"


@dataclass(frozen=True, slots=True)
class TestsCheck:
    command: str  # the service's own test command, run inside the patched image


@dataclass(frozen=True, slots=True)
class RescanCheck:
    """Targeted re-scan: these scanner modules against these paths must not report the finding again."""

    scanner: str
    modules: tuple[str, ...]
    paths: tuple[str, ...] = ()
    cwes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class DependencyVersionCheck:
    """The installed version of ``package`` in the image must be >= ``min_version``."""

    package: str
    min_version: str
    expected_version: str | None = None  # the version the plan pinned
    ecosystem: str = "pypi"  # "pypi": compare with PEP 440; "os": dpkg --compare-versions


@dataclass(frozen=True, slots=True)
class LatencyCheck:
    """p95 of the patched image within ``max_ratio`` of the current image, measured in the same run."""

    paths: tuple[str, ...] = ("/health",)
    max_ratio: float = 1.10
    requests: int = 200


@dataclass(frozen=True, slots=True)
class Verification:
    """The checks a plan expects; ``applicable()`` lists the ones the sandbox must run."""

    tests: TestsCheck | None = None
    exploit_replay: tuple[AttackRequest, ...] = ()
    rescan: RescanCheck | None = None
    dependency_version: tuple[DependencyVersionCheck, ...] = ()
    latency: LatencyCheck | None = None
    # Image build options: "no_cache" (rebuild every layer), "pull" (refresh the base first; best effort:
    # a base that exists only locally, like the offline one, is used as is), "build_args".
    build: dict[str, Any] = field(default_factory=dict)

    def applicable(self) -> list[str]:
        out = []
        if self.tests is not None:
            out.append("tests")
        if self.exploit_replay:
            out.append("exploit_replay")
        if self.rescan is not None:
            out.append("rescan")
        if self.dependency_version:
            out.append("dependency_version")
        if self.latency is not None:
            out.append("latency")
        return out


@dataclass(frozen=True, slots=True)
class GatewayChange:
    """Gateway data for the plan: response headers to set/delete, and/or a virtual-patch rule.

    ``set_headers``/``delete_headers`` are what ``selfheal.gateway.config``
    renders (``http-after-response set-header/del-header``); ``security_headers``
    is the same as keyword arguments of ``gateway.config.SecurityHeaders``.
    ``rule`` is a ``gateway.state.VirtualPatch`` as a dict.
    """

    service: str
    set_headers: tuple[tuple[str, str], ...] = ()
    delete_headers: tuple[str, ...] = ()
    security_headers: dict[str, Any] = field(default_factory=dict)
    rule: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class PatchPlan:
    """One proposed change for one service, addressing one or more findings.

    ``diff`` is a git-style unified diff against ``base_commit`` of the
    service's repository (empty when the change is gateway-only). A plan with
    ``needs_human`` is never applied automatically; ``failed`` says a recipe
    matched but could not produce a safe patch (``reason`` says why).
    """

    id: str
    service: str
    recipe: str
    findings: tuple[FindingRef, ...]
    title: str
    description: str = ""
    diff: str = ""
    files: tuple[str, ...] = ()
    base_commit: str | None = None
    verification: Verification = Verification()
    rollout: dict[str, Any] = field(default_factory=dict)
    delivery: Delivery = "image"
    gateway: GatewayChange | None = None
    needs_human: bool = False
    failed: bool = False
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def changes_source(self) -> bool:
        return bool(self.diff)

    @property
    def severity(self) -> str:
        """The highest severity among the addressed findings."""
        ranks = [SEVERITIES.index(f.severity) for f in self.findings if f.severity in SEVERITIES]
        return SEVERITIES[min(ranks)] if ranks else "info"

    @property
    def cves(self) -> tuple[str, ...]:
        return tuple(sorted({c for f in self.findings for c in f.cves}))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["severity"] = self.severity
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PatchPlan:
        """Inverse of ``to_dict`` (accepts the JSON form: lists instead of tuples)."""
        return _build(cls, data)


def plan_id(
    service: str, recipe: str, fingerprints: list[str], base_commit: str | None, diff: str, extra: str = ""
) -> str:
    """Deterministic id: the same findings planned on the same commit give the same id (and branch)."""
    key = "\0".join([service, recipe, ",".join(sorted(fingerprints)), base_commit or "", diff, extra])
    return "p" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:15]


# ------------------------------------------------------------------ from_dict support
def _tuple_of(value: Any, item: Any = None) -> tuple:
    if value is None:
        return ()
    return tuple(item(v) if item else (tuple(v) if isinstance(v, list) else v) for v in value)


def _build(cls: type, data: dict[str, Any]) -> Any:
    if not isinstance(data, dict):
        raise PlanError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    kw = {k: v for k, v in data.items() if k in names}
    if cls is PatchPlan:
        kw["findings"] = _tuple_of(kw.get("findings"), lambda v: _build(FindingRef, v))
        kw["files"] = _tuple_of(kw.get("files"))
        if kw.get("verification") is not None:
            kw["verification"] = _build(Verification, kw["verification"])
        if kw.get("gateway") is not None:
            kw["gateway"] = _build(GatewayChange, kw["gateway"])
    elif cls is FindingRef:
        kw["cves"] = _tuple_of(kw.get("cves"))
    elif cls is Verification:
        if kw.get("tests") is not None:
            kw["tests"] = _build(TestsCheck, kw["tests"])
        kw["exploit_replay"] = _tuple_of(kw.get("exploit_replay"), lambda v: _build(AttackRequest, v))
        if kw.get("rescan") is not None:
            kw["rescan"] = _build(RescanCheck, kw["rescan"])
        kw["dependency_version"] = _tuple_of(
            kw.get("dependency_version"), lambda v: _build(DependencyVersionCheck, v)
        )
        if kw.get("latency") is not None:
            kw["latency"] = _build(LatencyCheck, kw["latency"])
    elif cls is AttackRequest:
        kw["headers"] = _tuple_of(kw.get("headers"))
        if kw.get("oracle") is not None:
            kw["oracle"] = _build(Oracle, kw["oracle"])
    elif cls is Oracle:
        for k in ("status_in", "body_patterns", "headers_absent", "headers_present"):
            kw[k] = _tuple_of(kw.get(k))
    elif cls is RescanCheck:
        for k in ("modules", "paths", "cwes"):
            kw[k] = _tuple_of(kw.get(k))
    elif cls is LatencyCheck:
        kw["paths"] = _tuple_of(kw.get("paths", ["/health"]))
    elif cls is GatewayChange:
        kw["set_headers"] = _tuple_of(kw.get("set_headers"))
        kw["delete_headers"] = _tuple_of(kw.get("delete_headers"))
    try:
        return cls(**kw)
    except TypeError as e:
        raise PlanError(f"{cls.__name__}: {e}") from e

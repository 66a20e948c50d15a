"""The normalized finding: the one shape every scanner's output is turned into.

Pure data, no Airflow and no database imports, so parsers, the triage store,
patch recipes and tests all share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

Severity = Literal["critical", "high", "medium", "low", "info"]
Kind = Literal["web", "dependency", "host", "code"]

SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium", "low", "info")
KINDS: tuple[Kind, ...] = ("web", "dependency", "host", "code")


class ParseError(Exception):
    """The one error a parser may raise: names the input and says what is wrong.

    Anything else escaping a parser is a bug (the fuzz tests enforce this).
    """

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


@dataclass(frozen=True, slots=True)
class Location:
    """Where a web or code finding lives. ``path`` is the raw path; the
    fingerprint normalizes it to a template."""

    url: str | None = None
    method: str | None = None
    path: str | None = None
    param: str | None = None
    host: str | None = None
    port: str | None = None
    line: int | None = None


@dataclass(frozen=True, slots=True)
class Package:
    """A vulnerable dependency: what is installed and the lowest version that fixes it."""

    name: str
    version: str | None = None
    fixed_version: str | None = None
    ecosystem: str | None = None
    file_path: str | None = None


@dataclass(slots=True)
class Finding:
    """One actionable issue instance: one (rule, location) or (CVE, package) pair."""

    scanner: str
    rule_id: str
    title: str
    severity: Severity
    kind: Kind
    confidence: str | None = None
    cwe: int | None = None
    cves: tuple[str, ...] = ()
    cvss_score: float | None = None
    cvss_vector: str | None = None
    location: Location | None = None
    package: Package | None = None
    evidence: str = ""
    solution: str = ""
    description: str = ""
    references: tuple[str, ...] = ()
    service: str | None = None
    # Threat intelligence some scanners ship with the finding (Inspector2).
    epss: float | None = None
    kev: bool | None = None
    exploit_available: bool | None = None
    fix_available: bool | None = None
    scanner_status: str | None = None
    fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the `selfheal parse` line format).

        Same result as ``dataclasses.asdict`` (plus tuples as lists), built by
        hand because asdict deep-copies field by field (~20x slower), which
        matters when 200,000 findings are ingested or printed.
        """
        d = {name: getattr(self, name) for name in _FINDING_FIELDS}
        loc, pkg = self.location, self.package
        d["location"] = None if loc is None else {name: getattr(loc, name) for name in _LOCATION_FIELDS}
        d["package"] = None if pkg is None else {name: getattr(pkg, name) for name in _PACKAGE_FIELDS}
        d["cves"] = list(self.cves)
        d["references"] = list(self.references)
        d["extra"] = _plain(self.extra)
        return d


def _plain(value: Any) -> Any:
    """Copy of nested dicts/lists/tuples (what asdict does for ``extra``)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


_FINDING_FIELDS = tuple(f.name for f in fields(Finding))
_LOCATION_FIELDS = tuple(f.name for f in fields(Location))
_PACKAGE_FIELDS = tuple(f.name for f in fields(Package))

"""Finding identity: a fingerprint that survives re-scans and matches across scanners.

The fingerprint is the triage table's unique key, so it decides whether a
re-scan updates an existing row (``last_seen``), whether a fixed issue is
auto-resolved when a scan no longer reports it, and whether ZAP and Wapiti
reporting the same flaw make one row or two. It is the SHA-256 of a key built
only from *structured identifiers*:

``v1 | scope | kind | class | location``

* **scope**: the service name. Without one (ad-hoc ``selfheal parse``), web
  findings fall back to the URL's ``host[:port]`` so two different sites never
  collide; other kinds use an empty scope.
* **class**: *what* is wrong, in a vocabulary scanners share:

  - web and code findings: ``cwe:<id>``; the CWE is the one identifier ZAP,
    Wapiti, SARIF tools and Inspector's code scanning all emit. Some CWEs are
    too broad to identify a weakness (CWE-16 "Configuration", CWE-200
    "Information Exposure", CWE-693 "Protection Mechanism Failure" and the
    other pillars/categories in ``GENERIC_CWES``): ZAP files a dozen unrelated
    rules under each, so for those the scanner's rule is added to the class
    (cross-scanner matching is only claimed where it is meaningful).
    No CWE: the single CVE if there is exactly one, else the rule family.
  - dependency and host findings: ``cve:<id>`` when the finding names exactly
    one CVE (Inspector2, Dependency-Check, single-CVE NVTs), so the same CVE
    in the same package matches across scanners. Otherwise the rule family
    ``rule:<scanner>:<rule id>``: a Greenbone NVT that bundles 90 CVEs (a
    Windows KB roll-up) is one fix and one row, and picking one of its CVEs
    would be arbitrary and would change whenever the feed adds a CVE.
* **location**: *where*, normalized so that incidental variation is ignored:

  - web: HTTP method, ``path_template(path)`` (numeric ids, UUIDs and long hex
    hashes collapsed to ``{id}``/``{uuid}``/``{hash}``, query string,
    fragment, ``;jsessionid=`` path parameters and the trailing slash
    removed), and the parameter name, lower-cased: header names are
    case-insensitive and scanners disagree on their case (ZAP writes
    ``x-frame-options``, Wapiti ``X-Frame-Options``); two query parameters
    differing only in case on one endpoint are rare enough to merge. Host
    and scheme are deliberately *not* part of it: a service scanned as
    ``localhost:8080`` by one scanner and ``api.internal`` by another is
    still one service.
  - dependency: ecosystem and package name (lower-cased; PyPI names PEP 503
    normalized). Not the version: upgrading to a still-vulnerable version is
    the same open issue, and the fixed version makes it disappear.
  - host: host and port/protocol (``10.0.0.5`` + ``443/tcp``).
  - code: file path plus an anchor that survives edits elsewhere in the file:
    the tool's own stable fingerprint (SARIF ``fingerprints`` /
    ``partialFingerprints``) when present, else the flagged line's text, else
    the line number.

What is *not* in the key, and why: evidence, descriptions, titles, attack
strings, timestamps, scan or alert ids, and scores. DefectDojo's
``hash_code`` hashes a field list configured per parser
(``HASHCODE_FIELDS_PER_SCANNER``: "ZAP Scan" uses title, cwe and severity;
"Mend Scan" title, severity and description; "Clair Scan" adds the
description too) and, for parsers without an entry, a legacy hash of title,
cwe, line, file path and *description*. Those fields are dynamic: scanners
put matched evidence and version strings into descriptions, retitle rules
between releases (ZAP 2.9 "X-Frame-Options Header Not Set" is "Missing
Anti-clickjacking Header" today), and a CVSS re-score or a risk change moves
the severity. Each such change yields a "new" finding and closes the old one,
so a single unchanged flaw churns through the triage table and loses its
history, SLA clock and human decisions. Hashing only identifiers (class +
normalized location) keeps the identity fixed while the text around it
changes; it also makes cross-scanner matching possible at all, since no two
scanners word a finding the same way. The price is that two genuinely
different issues with the same class at the same location merge; that is the
desired outcome for patching (one fix), and ``dedupe`` keeps every source for
review.

The key starts with a version (``v1``) so a future change of scheme can be
migrated deliberately rather than silently re-keying the table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from selfheal.findings.model import SEVERITIES, Finding

try:
    # CPython's own SHA-256 (3.11: _sha256, 3.12+: _sha2): the same digest as
    # hashlib.sha256, without OpenSSL's per-call context setup and copy on
    # hexdigest(), which cost more than hashing a 60-byte key (~20% of a fingerprint).
    from _sha256 import sha256 as _sha256
except ImportError:  # pragma: no cover - other Python versions / builds
    try:
        from _sha2 import sha256 as _sha256
    except ImportError:
        from hashlib import sha256 as _sha256

__all__ = ["GENERIC_CWES", "dedupe", "fingerprint", "fingerprint_key", "path_template", "scope_of"]

# CWE pillars and categories (MITRE marks them "discouraged" for vulnerability
# mapping) plus the broad classes scanners use as catch-alls.
GENERIC_CWES: frozenset[int] = frozenset(
    {16, 17, 18, 19, 20, 200, 254, 264, 275, 284, 310, 320, 399, 435, 664, 668, 682, 691, 693, 697, 703,
     707, 710}
)

_SEP = "\x1f"  # unit separator: never appears in the identifiers we join
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# 16+ hex characters with at least one digit: md5/sha*/ObjectId-style tokens, not words like "deadbeefcafe".
_HEX_RE = re.compile(r"(?=[a-fA-F]*[0-9])[0-9a-fA-F]{16,}")
_PYPI_NAME_RE = re.compile(r"[-_.]+")
_DIGIT_RE = re.compile(r"[0-9]")
_NUM_SEG_RE = re.compile(r"/[0-9]+(?=/|\Z)")  # a whole path segment of digits
_SIMPLE_PATH_RE = re.compile(r"(?:/[^/;?#]{1,15})+\Z")
_SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}


def _template(path: str) -> str:
    if path.isascii() and _SIMPLE_PATH_RE.match(path):
        # The common shape, checked in C: "/seg/seg", each segment 1-15 characters
        # (too short for a UUID or a hash), no query, fragment, ";" or empty
        # segment; only all-digit segments to collapse. (ASCII only: str.isdigit,
        # below, also accepts other scripts' digits, which [0-9] does not.)
        return _NUM_SEG_RE.sub("/{id}", path)
    if "://" in path:
        path = urlsplit(path).path
    for sep in ("?", "#"):
        cut = path.find(sep)
        if cut >= 0:
            path = path[:cut]
    if path.startswith("/") and "//" not in path and ";" not in path and (len(path) == 1 or not path.endswith("/")):
        if not _DIGIT_RE.search(path):
            return path  # nothing to collapse (the common static path)
        # No empty segment (but the leading one) and no matrix parameter: the
        # loop below as one comprehension (this runs once per distinct path).
        return "/".join([
            "{id}" if seg.isdigit() else _long_segment(seg) if len(seg) >= 16 else seg for seg in path.split("/")
        ])
    segments = []
    for seg in path.split("/"):
        if not seg:
            continue  # collapses "//" and the trailing slash
        semi = seg.find(";")
        if semi >= 0:  # ;jsessionid=... and other matrix parameters are per-session
            seg = seg[:semi]
            if not seg:
                continue
        if seg.isdigit():
            seg = "{id}"
        elif len(seg) >= 16:
            seg = _long_segment(seg)
        segments.append(seg)
    return "/" + "/".join(segments)


def _long_segment(seg: str) -> str:
    if len(seg) == 36 and _UUID_RE.fullmatch(seg):
        return "{uuid}"
    if _HEX_RE.fullmatch(seg):
        return "{hash}"
    return seg


# A plain dict (cleared when full) rather than lru_cache: paths with ids are
# mostly unique, and a dict lookup is the cheapest possible cache check.
_TEMPLATES: dict[str, str] = {}
_TEMPLATES_MAX = 1 << 16


def path_template(path: str | None) -> str:
    """Normalize a URL path (or a whole URL) into a template that identifies the
    endpoint, not the request: ``/api/users/42/orders/9f1c...?page=2`` ->
    ``/api/users/{id}/orders/{hash}``. Memoized: scanners report the same paths
    over and over."""
    if not path:
        return "/"
    template = _TEMPLATES.get(path)
    if template is None:
        template = _template(path)
        if len(_TEMPLATES) >= _TEMPLATES_MAX:
            _TEMPLATES.clear()
        _TEMPLATES[path] = template
    return template


@lru_cache(maxsize=1 << 14)
def _netloc(url: str) -> str:
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:  # malformed port or IPv6 literal: fall back to the raw netloc
        return url.split("://", 1)[-1].split("/", 1)[0].lower()
    if port is None or (parts.scheme, port) in (("http", 80), ("https", 443)):
        return host
    return f"{host}:{port}"


def scope_of(finding: Finding, service: str | None) -> str:
    """The identity scope: the service, or for an unscoped web finding its host."""
    if service:
        return service
    loc = finding.location
    if finding.kind == "web" and loc is not None and loc.url and "://" in loc.url:
        return "host:" + _netloc(loc.url)
    return ""


def _package_key(ecosystem: str | None, name: str) -> str:
    eco = (ecosystem or "").lower()
    name = name.strip().lower()
    if eco == "pypi":
        name = _PYPI_NAME_RE.sub("-", name)
    return eco + _SEP + name


def fingerprint_key(finding: Finding, service: str | None) -> str:
    """The readable identity behind ``fingerprint`` (fields separated by U+001F):
    ``v1 | scope | kind | class | location`` as the module docstring describes.
    One function rather than one per field: it runs once per finding parsed."""
    kind = finding.kind
    loc = finding.location
    scope = service or scope_of(finding, service)
    # class: what is wrong
    cwe = finding.cwe
    if cwe and (kind == "web" or kind == "code"):
        cls = f"cwe:{cwe}" if cwe not in GENERIC_CWES else f"cwe:{cwe}:rule:{finding.scanner}:{finding.rule_id}"
    elif len(finding.cves) == 1:
        cls = "cve:" + finding.cves[0]
    else:
        cls = f"rule:{finding.scanner}:{finding.rule_id}"
    # location: where, normalized
    if kind == "dependency":
        pkg = finding.package
        if pkg is not None:
            where = _package_key(pkg.ecosystem, pkg.name)
        else:
            where = _SEP + ((loc.path or "") if loc is not None else "")
    elif loc is None:
        where = ""
    elif kind == "web":
        where = _SEP.join(((loc.method or "").upper(), path_template(loc.path), (loc.param or "").strip().lower()))
    elif kind == "host":
        where = (loc.host or "").lower() + _SEP + (loc.port or "")
    else:  # code
        anchor = finding.extra.get("anchor")
        if not anchor:
            anchor = f"L{loc.line}" if loc.line is not None else ""
        path = loc.path or ""
        if path.startswith("file://"):
            path = path[7:]
        where = path + _SEP + str(anchor)
    return _SEP.join(("v1", scope, kind, cls, where))


def fingerprint(finding: Finding, service: str | None) -> str:
    """Stable identity of ``finding`` within ``service``: 64 hex chars (SHA-256)."""
    return _sha256(fingerprint_key(finding, service).encode("utf-8", "surrogatepass")).hexdigest()


def _source(f: Finding) -> dict[str, Any]:
    loc = f.location
    pkg = f.package
    src: dict[str, Any] = {"scanner": f.scanner, "rule_id": f.rule_id, "title": f.title, "severity": f.severity}
    if loc is not None:
        src["url"] = loc.url or loc.path
    if pkg is not None:
        src["package"] = pkg.name
        src["version"] = pkg.version
    if f.evidence:
        src["evidence"] = f.evidence[:256]
    group = f.extra.get("group")
    if group is not None:
        src["group"] = group
    return src


def dedupe(findings: Iterable[Finding]) -> list[Finding]:
    """Merge findings with the same fingerprint (one batch, possibly several scanners).

    The first occurrence is kept (and updated in place) as the representative;
    every occurrence is recorded in ``extra["sources"]`` (scanner, rule, title,
    severity, URL or package, a short evidence excerpt). The representative
    takes the highest severity and CVSS score, the union of CVEs and
    references, and the first non-empty evidence/solution/CWE of the group.
    Findings without a fingerprint are fingerprinted without a service.
    Order: first appearance.
    """
    merged: dict[str, Finding] = {}
    for f in findings:
        fp = f.fingerprint or fingerprint(f, f.service)
        f.fingerprint = fp
        rep = merged.get(fp)
        if rep is None:
            f.extra["sources"] = [_source(f)]
            merged[fp] = f
            continue
        rep.extra["sources"].append(_source(f))
        if _SEVERITY_RANK[f.severity] < _SEVERITY_RANK[rep.severity]:
            rep.severity = f.severity
        if f.cvss_score is not None and (rep.cvss_score is None or f.cvss_score > rep.cvss_score):
            rep.cvss_score = f.cvss_score
            rep.cvss_vector = f.cvss_vector
        if f.cves and f.cves != rep.cves:
            rep.cves = tuple(dict.fromkeys(rep.cves + f.cves))
        if f.references and f.references != rep.references:
            rep.references = tuple(dict.fromkeys(rep.references + f.references))
        if rep.cwe is None and f.cwe is not None:
            rep.cwe = f.cwe
        if not rep.evidence and f.evidence:
            rep.evidence = f.evidence
        if not rep.solution and f.solution:
            rep.solution = f.solution
        if f.epss is not None and (rep.epss is None or f.epss > rep.epss):
            rep.epss = f.epss
        for flag in ("kev", "exploit_available", "fix_available"):
            if getattr(f, flag) and not getattr(rep, flag):
                setattr(rep, flag, True)
    return list(merged.values())

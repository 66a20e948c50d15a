"""SARIF 2.1.0 (OASIS): ``runs[].results[]`` from any SAST/SCA tool.

Per result: ``ruleId`` / ``ruleIndex`` / ``rule`` (a reference into
``tool.driver.rules`` or an extension's rules), ``level`` (default from the
rule's ``defaultConfiguration``, else "warning"), ``kind`` ("pass" and
"notApplicable" results are not findings), ``message`` (text, or a
``messageStrings`` template with arguments), the first location's
``physicalLocation.artifactLocation.uri`` (or ``index`` into
``run.artifacts``) and ``region.startLine``/``snippet``, ``fingerprints`` /
``partialFingerprints`` (the code anchor of the fingerprint), ``suppressions``.
From the rule: CWE (``properties.tags`` such as ``CWE-79`` or
``external/cwe/cwe-079``, or ``relationships`` into the CWE taxonomy),
``properties.security-severity`` (GitHub's score convention),
``properties.precision`` (confidence), ``help``/``helpUri``.

A result is a ``dependency`` finding when it names a package (a purl in the
artifact's properties, as OWASP Dependency-Check writes) or a CVE rule id
(Dependency-Check, Trivy, Grype); otherwise ``code``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import msgspec

from selfheal.findings.limits import EVIDENCE_MAX_CHARS, SHORT_MAX_CHARS, TEXT_MAX_CHARS, TITLE_MAX_CHARS, clip
from selfheal.findings.model import Finding, Package, Severity
from selfheal.findings.parsers._base import (
    Empty,
    Report,
    ReportFormat,
    cves_in,
    first_cwe,
    new_location,
    new_package,
    text,
    to_float,
)
from selfheal.findings.severity import SARIF_LEVELS, confidence_from_label, from_label, from_score

Scalar = str | int | float | bool | None
_ARG_RE = re.compile(r"\{(\d{1,3})\}")
_CWE_TAG_RE = re.compile(r"cwe[-/_:]?0*(\d{1,6})\b", re.IGNORECASE)
_SKIP_KINDS = frozenset({"pass", "notApplicable"})
_CVSS3 = (  # Dependency-Check property -> CVSS v3 vector metric, value abbreviations
    ("AV", "cvssv3_attackVector", {"NETWORK": "N", "ADJACENT_NETWORK": "A", "ADJACENT": "A", "LOCAL": "L",
                                   "PHYSICAL": "P"}),
    ("AC", "cvssv3_attackComplexity", {"LOW": "L", "HIGH": "H"}),
    ("PR", "cvssv3_privilegesRequired", {"NONE": "N", "LOW": "L", "HIGH": "H"}),
    ("UI", "cvssv3_userInteraction", {"NONE": "N", "REQUIRED": "R"}),
    ("S", "cvssv3_scope", {"UNCHANGED": "U", "CHANGED": "C"}),
    ("C", "cvssv3_confidentialityImpact", {"NONE": "N", "LOW": "L", "HIGH": "H"}),
    ("I", "cvssv3_integrityImpact", {"NONE": "N", "LOW": "L", "HIGH": "H"}),
    ("A", "cvssv3_availabilityImpact", {"NONE": "N", "LOW": "L", "HIGH": "H"}),
)


class _Text(msgspec.Struct, gc=False):
    text: Scalar = ""


class _Message(msgspec.Struct, gc=False):
    text: Scalar = ""
    id: Scalar = ""
    arguments: list[Scalar] | None = None


class _Config(msgspec.Struct, gc=False):
    level: Scalar = ""


class _ComponentRef(msgspec.Struct, gc=False):
    name: Scalar = ""
    index: int | None = None


class _DescriptorRef(msgspec.Struct, gc=False):
    id: Scalar = ""
    index: int | None = None
    toolComponent: _ComponentRef | None = None


class _Relationship(msgspec.Struct, gc=False):
    target: _DescriptorRef | None = None


class _Rule(msgspec.Struct, gc=False):
    id: Scalar = ""
    name: Scalar = ""
    shortDescription: _Text | None = None
    fullDescription: _Text | None = None
    help: _Text | None = None
    helpUri: Scalar = ""
    defaultConfiguration: _Config | None = None
    properties: dict[str, Any] | None = None
    relationships: list[_Relationship] | None = None
    messageStrings: dict[str, _Text] | None = None


class _Component(msgspec.Struct, gc=False):
    name: Scalar = ""
    rules: list[_Rule] | None = None


class _Tool(msgspec.Struct, gc=False):
    driver: _Component | None = None
    extensions: list[_Component] | None = None


class _ArtifactLocation(msgspec.Struct, gc=False):
    uri: Scalar = ""
    index: int | None = None


class _Region(msgspec.Struct, gc=False):
    startLine: int | None = None
    snippet: _Text | None = None


class _Physical(msgspec.Struct, gc=False):
    artifactLocation: _ArtifactLocation | None = None
    region: _Region | None = None


class _Location(msgspec.Struct, gc=False):
    physicalLocation: _Physical | None = None


class _Suppression(msgspec.Struct, gc=False):
    status: Scalar = ""


class _Result(msgspec.Struct, gc=False):
    ruleId: Scalar = ""
    ruleIndex: int | None = None
    rule: _DescriptorRef | None = None
    kind: Scalar = ""
    level: Scalar = ""
    message: _Message | None = None
    locations: list[_Location] | None = None
    fingerprints: dict[str, Scalar] | None = None
    partialFingerprints: dict[str, Scalar] | None = None
    properties: dict[str, Any] | None = None
    suppressions: list[_Suppression] | None = None
    taxa: list[_DescriptorRef] | None = None


class _Artifact(msgspec.Struct, gc=False):
    location: _ArtifactLocation | None = None
    properties: dict[str, Any] | None = None


class _Run(msgspec.Struct, gc=False):
    tool: _Tool | None = None
    results: list[_Result] | None = None
    artifacts: list[_Artifact] | None = None


class _CountRun(msgspec.Struct, gc=False):
    results: list[Empty] | None = None


def detect(keys: frozenset[str]) -> bool:
    return "runs" in keys and ("version" in keys or "$schema" in keys)


def parse_purl(purl: str) -> Package | None:
    """Minimal package-URL parser (type, namespace, name, version): all we need,
    so not worth the packageurl-python dependency."""
    if not purl.startswith("pkg:"):
        return None
    rest = purl[4:].lstrip("/").split("#", 1)[0].split("?", 1)[0]
    version = None
    if "@" in rest:
        rest, version = rest.rsplit("@", 1)
        version = unquote(version) or None
    parts = [unquote(p) for p in rest.split("/") if p]
    if len(parts) < 2:
        return None
    ptype, name, namespace = parts[0].lower(), parts[-1], "/".join(parts[1:-1])
    if namespace:
        name = f"{namespace}:{name}" if ptype == "maven" else f"{namespace}/{name}"
    return Package(name=clip(name, SHORT_MAX_CHARS), version=clip(version or "", 256) or None,
                   ecosystem=clip(ptype, 32))


def _cvss3_vector(props: dict[str, Any]) -> str | None:
    version = text(props.get("cvssv3_version")) or "3.1"
    metrics = []
    for metric, key, values in _CVSS3:
        abbrev = values.get(text(props.get(key)).upper())
        if abbrev is None:
            return None
        metrics.append(f"{metric}:{abbrev}")
    return f"CVSS:{version}/" + "/".join(metrics)


def _cwe_of_rule(rule: _Rule) -> int | None:
    props = rule.properties or {}
    tags = props.get("tags")
    if isinstance(tags, list):
        for tag in tags:
            m = _CWE_TAG_RE.search(text(tag)) if isinstance(tag, str) else None
            if m:
                return int(m.group(1))
    for rel in rule.relationships or ():
        tgt = rel.target
        if tgt is not None and tgt.toolComponent is not None and text(tgt.toolComponent.name).upper() == "CWE":
            m = _CWE_TAG_RE.search("CWE-" + text(tgt.id))
            if m:
                return int(m.group(1))
    return None


def _result_cwe(result: _Result) -> int | None:
    for taxon in result.taxa or ():
        if taxon.toolComponent is not None and text(taxon.toolComponent.name).upper() == "CWE":
            m = _CWE_TAG_RE.search("CWE-" + text(taxon.id))
            if m:
                return int(m.group(1))
    props = result.properties or {}
    cwe = props.get("cwe")
    return first_cwe(text(cwe)) if isinstance(cwe, str) else None


def _message(result: _Result, rule: _Rule | None) -> str:
    msg = result.message
    if msg is None:
        return ""
    if msg.text:
        template = text(msg.text)
    elif msg.id and rule is not None and rule.messageStrings and text(msg.id) in rule.messageStrings:
        template = text(rule.messageStrings[text(msg.id)].text)
    else:
        return ""
    args = [text(a) for a in msg.arguments or ()]
    if args and "{" in template:
        template = _ARG_RE.sub(lambda m: args[int(m.group(1))] if int(m.group(1)) < len(args) else m.group(0),
                               template)
    return template


def _severity(level: str, rule_props: dict[str, Any], props: dict[str, Any]) -> tuple[Severity, float | None]:
    if not props:  # the common code result: only the rule can say more than the level
        score = to_float(rule_props.get("security-severity")) if rule_props else None
        return (from_score(score), score) if score is not None else (SARIF_LEVELS.get(level, "medium"), None)
    for bag in (props, rule_props):
        score = to_float(bag.get("security-severity"))
        if score is not None:
            return from_score(score), score
    for key in ("cvssv3_baseScore", "cvssv2_score", "cvss_score", "cvss"):
        score = to_float(props.get(key))
        if score is not None:
            return from_score(score), score
    label = props.get("severity") or props.get("issue_severity")
    if isinstance(label, str) and label.strip():
        return from_label(label, SARIF_LEVELS.get(level, "medium")), None
    return SARIF_LEVELS.get(level, "medium"), None


def _anchor(result: _Result, snippet: str) -> str:
    """Tool-provided identity of the flagged code. ``fingerprints`` are stable by
    definition; of ``partialFingerprints`` prefer the location-based ones
    (``primaryLocationLineHash``...) over whole-file hashes, which change on
    any edit to the file."""
    prints = result.fingerprints
    if not prints and result.partialFingerprints:
        prints = result.partialFingerprints
        located = {k: v for k, v in prints.items() if "location" in k.lower()}
        prints = located or prints
    if prints:
        return clip(";".join(f"{k}={text(prints[k])}" for k in sorted(prints)), 256)
    if snippet:
        return clip("snippet=" + " ".join(snippet.split()), 256)
    return ""


def _scanner_name(run: _Run) -> str:
    name = text(run.tool.driver.name) if run.tool is not None and run.tool.driver is not None else ""
    name = "-".join(name.lower().split())
    return clip(name, 64) or "sarif"


class _RunIndex:
    """Rules and artifacts of one run, indexed once."""

    def __init__(self, run: _Run) -> None:
        tool = run.tool or _Tool()
        self.driver_rules = (tool.driver.rules if tool.driver is not None else None) or []
        self.extensions = tool.extensions or []
        self.by_id = {text(r.id): r for r in self.driver_rules if r.id}
        for ext in self.extensions:
            for r in ext.rules or ():
                self.by_id.setdefault(text(r.id), r)
        self.artifacts = run.artifacts or []
        self.infos: dict[int, _RuleInfo] = {}

    def rule(self, result: _Result) -> _Rule | None:
        ref = result.rule
        if ref is not None and ref.toolComponent is not None and ref.toolComponent.index is not None:
            comp_i = ref.toolComponent.index
            if 0 <= comp_i < len(self.extensions) and ref.index is not None:
                rules = self.extensions[comp_i].rules or []
                if 0 <= ref.index < len(rules):
                    return rules[ref.index]
        index = result.ruleIndex if result.ruleIndex is not None else (ref.index if ref is not None else None)
        if index is not None and 0 <= index < len(self.driver_rules):
            return self.driver_rules[index]
        rid = text(result.ruleId) or (text(ref.id) if ref is not None else "")
        if rid:
            return self.by_id.get(rid) or self.by_id.get(rid.split("/", 1)[0])
        return None

    def artifact(self, index: int | None) -> _Artifact | None:
        if index is not None and 0 <= index < len(self.artifacts):
            return self.artifacts[index]
        return None

    def info(self, rule: _Rule | None) -> _RuleInfo:
        """What a result takes from its rule, worked out once per rule (a run
        reports the same few rules over and over). Keyed by identity: the rules
        live as long as the run."""
        if rule is None:
            return _NO_RULE
        info = self.infos.get(id(rule))
        if info is None:
            info = self.infos[id(rule)] = _RuleInfo(rule)
        return info


_ASK_RESULT: Any = object()


class _RuleInfo:
    __slots__ = ("confidence", "cwe", "description", "id", "level", "props", "refs", "solution", "title")

    def __init__(self, rule: _Rule | None) -> None:
        self.id = text(rule.id) if rule is not None else ""
        self.props: dict[str, Any] = (rule.properties if rule is not None else None) or {}
        self.level = text(rule.defaultConfiguration.level) if rule is not None and rule.defaultConfiguration else ""
        title = ""
        if rule is not None:
            title = text(rule.shortDescription.text) if rule.shortDescription is not None else ""
            title = title or text(rule.name)
        self.title = title
        precision = text(self.props.get("precision"))
        # the rule's precision decides when it has one, else each result's issue_confidence
        self.confidence = confidence_from_label(precision) if precision else _ASK_RESULT
        self.cwe = _cwe_of_rule(rule) if rule is not None else None
        self.refs = (clip(text(rule.helpUri), SHORT_MAX_CHARS),) if rule is not None and rule.helpUri else ()
        self.solution = clip(text(rule.help.text), TEXT_MAX_CHARS) if rule is not None and rule.help is not None \
            else ""
        full = rule.fullDescription if rule is not None else None
        self.description = text(full.text) if full is not None else ""


_NO_RULE = _RuleInfo(None)


def _purl(artifact: _Artifact | None) -> tuple[str, str | None, str] | None:
    """(name, version, ecosystem) from the first package URL of the artifact's properties."""
    if artifact is None or not artifact.properties:
        return None
    for value in artifact.properties.values():
        if isinstance(value, str) and value.startswith("pkg:"):
            pkg = parse_purl(value)
            if pkg is not None:
                return pkg.name, pkg.version, pkg.ecosystem  # type: ignore[return-value]
    return None


def _result(run_i: int, res_i: int, result: _Result, idx: _RunIndex, scanner: str) -> Finding | None:
    if result.kind and text(result.kind) in _SKIP_KINDS:
        return None
    rule = idx.rule(result)
    info = idx.info(rule)
    rule_id = text(result.ruleId) or (text(result.rule.id) if result.rule is not None else "") or info.id
    props = result.properties or {}
    level = text(result.level) or info.level or "warning"
    severity, score = _severity(level, info.props, props)
    message = _message(result, rule)

    uri, line, snippet, artifact = "", None, "", None
    if result.locations:
        phys = result.locations[0].physicalLocation
        if phys is not None:
            art_loc = phys.artifactLocation
            if art_loc is not None:
                artifact = idx.artifact(art_loc.index)
                uri = text(art_loc.uri)
                if not uri and artifact is not None and artifact.location is not None:
                    uri = text(artifact.location.uri)
            if phys.region is not None:
                line = phys.region.startLine
                if phys.region.snippet is not None:
                    snippet = text(phys.region.snippet.text)

    cves = cves_in(rule_id)
    purl = _purl(artifact)
    file_path = clip(uri, SHORT_MAX_CHARS) or None
    if purl is not None:
        kind = "dependency"
        package: Package | None = new_package(purl[0], purl[1], None, purl[2], file_path)
    elif cves:
        kind = "dependency"
        name = uri.rstrip("/").rsplit("/", 1)[-1] or rule_id
        package = new_package(clip(name, SHORT_MAX_CHARS), None, None, None, file_path)
    else:
        kind = "code"
        package = None

    title = info.title or message.split("\n", 1)[0] or rule_id
    vector = _cvss3_vector(props) if "cvssv3_baseScore" in props else None
    confidence = info.confidence
    if confidence is _ASK_RESULT:
        confidence = confidence_from_label(text(props.get("issue_confidence")))
    extra: dict[str, Any] = {"group": f"runs[{run_i}].results[{res_i}]"}
    anchor = _anchor(result, snippet)
    if anchor:
        extra["anchor"] = anchor
    suppressed = any(text(s.status) != "rejected" for s in result.suppressions) if result.suppressions else False
    cwe = info.cwe
    if cwe is None:
        cwe = _result_cwe(result)
    # Positional arguments in Finding's / Location's field order (a test pins it): hot path.
    return Finding(
        scanner, clip(rule_id, SHORT_MAX_CHARS) or "unknown", clip(title, TITLE_MAX_CHARS), severity, kind,
        confidence, cwe, cves, score, vector, new_location(None, None, file_path, None, None, None, line), package,
        clip(snippet or message, EVIDENCE_MAX_CHARS), info.solution, clip(message or info.description, TEXT_MAX_CHARS),
        info.refs, None, None, None, None, None, "suppressed" if suppressed else None, "", extra,
    )


class _Log(msgspec.Struct, gc=False):
    version: Scalar = None
    runs: list[_Run] | None = None


class _CountLog(msgspec.Struct, gc=False):
    runs: list[_CountRun] | None = None


def parse(report: Report) -> Iterator[Finding]:
    report.check_json_items(_CountLog, lambda log: sum(len(r.results or ()) for r in log.runs or ()))
    log = report.decode_doc(_Log)
    if log.runs is None:
        raise report.error("not a SARIF log: no top-level 'runs' list")
    version = text(log.version)
    if version and not version.startswith("2."):
        raise report.error(f"unsupported SARIF version {version[:32]!r}; expected 2.1.0")
    for run_i, run in enumerate(log.runs):
        idx = _RunIndex(run)
        scanner = _scanner_name(run)
        for res_i, result in enumerate(run.results or ()):
            finding = _result(run_i, res_i, result, idx, scanner)
            if finding is not None:
                yield finding


FORMAT = ReportFormat(
    name="sarif",
    scanner="sarif",
    syntax="json",
    summary="SARIF 2.1.0 log (runs[].results[]; SAST and SCA tools)",
    detect=detect,
    parse=parse,
    first_keys=frozenset({"$schema", "runs", "version"}),
)

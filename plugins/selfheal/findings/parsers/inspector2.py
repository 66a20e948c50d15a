"""AWS Inspector2: one ``ListFindings`` response page (``{"findings": [...], "nextToken"?}``).

Finding types:

* ``PACKAGE_VULNERABILITY``: one Finding per (vulnerability, vulnerable
  package): ``packageVulnerabilityDetails.vulnerablePackages[]`` with
  ``name``/``version``/``fixedInVersion`` ("NotAvailable" means no fix) and
  ``packageManager`` (mapped to a purl-style ecosystem). Kind ``dependency``.
* ``CODE_VULNERABILITY`` (Lambda code scanning): CWE list, detector, file path
  and line. Kind ``code``.
* ``NETWORK_REACHABILITY``: an open port range reachable over a network path.
  Kind ``host``: the host is the resource id (an EC2 instance id survives IP
  changes), the port is ``begin[-end]/protocol``.

Also read: ``inspectorScore`` (+ its CVSS vector), ``epss.score``,
``exploitAvailable``, ``fixAvailable``, ``status`` (ACTIVE, SUPPRESSED,
CLOSED), the first resource (id, type, ECR repository / Lambda function).
``findingArn`` is kept in ``extra["group"]``: it is the unit DefectDojo
counts. An AWS error document (``{"__type": ..., "message": ...}``) and a
document without ``findings`` (e.g. ``{}``) are rejected with ParseError.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from selfheal.findings.limits import EVIDENCE_MAX_CHARS, SHORT_MAX_CHARS, TEXT_MAX_CHARS, TITLE_MAX_CHARS, clip
from selfheal.findings.model import Finding, Kind, Location, Package, Severity
from selfheal.findings.parsers._base import Empty, Report, ReportFormat, cves_in, cwe_id, new_package, text
from selfheal.findings.severity import from_label, from_score

SCANNER = "inspector"
Scalar = str | int | float | None

# Inspector2 packageManager -> purl type, so names compare across scanners.
ECOSYSTEMS: dict[str, str] = {
    "PIP": "pypi", "POETRY": "pypi", "PIPENV": "pypi", "PYTHONPKG": "pypi", "PYTHON": "pypi",
    "NPM": "npm", "YARN": "npm", "PNPM": "npm", "NODEPKG": "npm", "NODE": "npm",
    "JAR": "maven", "POM": "maven", "GRADLE": "maven", "MAVEN": "maven",
    "GOBINARY": "golang", "GOMOD": "golang", "GO": "golang",
    "NUGET": "nuget", "DOTNET_CORE": "nuget",
    "BUNDLER": "gem", "GEMSPEC": "gem",
    "CARGO": "cargo", "COMPOSER": "composer", "OS": "os", "GENERIC": "generic",
}
_NO_FIX = frozenset({"", "NotAvailable", "None"})


class _Cvss(msgspec.Struct, gc=False):
    baseScore: float | None = None
    scoringVector: Scalar = ""
    version: Scalar = ""


class _Package(msgspec.Struct, gc=False):
    name: Scalar = ""
    version: Scalar = ""
    epoch: Scalar = None
    release: Scalar = ""
    fixedInVersion: Scalar = ""
    packageManager: Scalar = ""
    filePath: Scalar = ""
    remediation: Scalar = ""


class _PackageDetails(msgspec.Struct, gc=False):
    vulnerabilityId: Scalar = ""
    vulnerablePackages: list[_Package] | None = None
    cvss: list[_Cvss] | None = None
    relatedVulnerabilities: list[Scalar] | None = None
    referenceUrls: list[Scalar] | None = None
    sourceUrl: Scalar = ""
    vendorSeverity: Scalar = ""


class _PortRange(msgspec.Struct, gc=False):
    begin: int | None = None
    end: int | None = None


class _NetworkDetails(msgspec.Struct, gc=False):
    openPortRange: _PortRange | None = None
    protocol: Scalar = ""


class _FilePath(msgspec.Struct, gc=False):
    fileName: Scalar = ""
    filePath: Scalar = ""
    startLine: int | None = None
    endLine: int | None = None


class _CodeDetails(msgspec.Struct, gc=False):
    cwes: list[Scalar] | None = None
    detectorId: Scalar = ""
    detectorName: Scalar = ""
    ruleId: Scalar = ""
    filePath: _FilePath | None = None
    referenceUrls: list[Scalar] | None = None


class _AdjustedCvss(msgspec.Struct, gc=False):
    score: float | None = None
    scoringVector: Scalar = ""


class _ScoreDetails(msgspec.Struct, gc=False):
    adjustedCvss: _AdjustedCvss | None = None


class _Epss(msgspec.Struct, gc=False):
    score: float | None = None


class _Recommendation(msgspec.Struct, gc=False):
    text: Scalar = ""


class _Remediation(msgspec.Struct, gc=False):
    recommendation: _Recommendation | None = None


class _Ec2(msgspec.Struct, gc=False):
    ipV4Addresses: list[Scalar] | None = None


class _Ecr(msgspec.Struct, gc=False):
    repositoryName: Scalar = ""
    imageTags: list[Scalar] | None = None


class _Lambda(msgspec.Struct, gc=False):
    functionName: Scalar = ""


class _ResourceDetails(msgspec.Struct, gc=False):
    awsEc2Instance: _Ec2 | None = None
    awsEcrContainerImage: _Ecr | None = None
    awsLambdaFunction: _Lambda | None = None


class _Resource(msgspec.Struct, gc=False):
    type: Scalar = ""
    id: Scalar = ""
    details: _ResourceDetails | None = None


class _Finding(msgspec.Struct, gc=False):
    findingArn: Scalar = ""
    type: Scalar = ""
    title: Scalar = ""
    description: Scalar = ""
    severity: Scalar = ""
    status: Scalar = ""
    inspectorScore: float | None = None
    inspectorScoreDetails: _ScoreDetails | None = None
    epss: _Epss | None = None
    exploitAvailable: Scalar = ""
    fixAvailable: Scalar = ""
    remediation: _Remediation | None = None
    resources: list[_Resource] | None = None
    packageVulnerabilityDetails: _PackageDetails | None = None
    networkReachabilityDetails: _NetworkDetails | None = None
    codeVulnerabilityDetails: _CodeDetails | None = None


def detect(keys: frozenset[str]) -> bool:
    return "findings" in keys or "__type" in keys


def _yes(value: Scalar) -> bool | None:
    v = text(value).upper()
    if v in ("YES", "PARTIAL"):
        return True
    if v == "NO":
        return False
    return None


def _version(pkg: _Package) -> str:
    version = text(pkg.version)
    release = text(pkg.release)
    if version and release:
        version = f"{version}-{release}"
    epoch = text(pkg.epoch)
    if version and epoch not in ("", "0"):
        version = f"{epoch}:{version}"
    return version


def _fixed(pkg: _Package) -> str | None:
    fixed = text(pkg.fixedInVersion).strip()
    if fixed in _NO_FIX:
        return None
    return fixed[2:] if fixed.startswith("0:") else fixed


def _score_and_vector(f: _Finding) -> tuple[float | None, str]:
    score = f.inspectorScore
    vector = ""
    details = f.inspectorScoreDetails
    if details is not None and details.adjustedCvss is not None:
        vector = text(details.adjustedCvss.scoringVector)
        if score is None:
            score = details.adjustedCvss.score
    pvd = f.packageVulnerabilityDetails
    if pvd is not None and pvd.cvss and (not vector or score is None):
        best = max(pvd.cvss, key=lambda c: text(c.version))  # prefer CVSS 4.0/3.x over 2.0
        vector = vector or text(best.scoringVector)
        score = best.baseScore if score is None else score
    return score, vector


class _Common:
    """What every Finding made from one Inspector2 finding shares, computed once."""

    __slots__ = ("description", "epss", "exploit", "extra", "fix", "resource_id", "score", "severity", "solution",
                 "status", "title", "vector")

    def __init__(self, f: _Finding, index: int) -> None:
        score, vector = _score_and_vector(f)
        self.score = score
        self.vector = clip(vector, 256) or None
        self.severity: Severity = from_score(score) if score is not None else from_label(text(f.severity))
        recommendation = f.remediation.recommendation if f.remediation is not None else None
        solution = text(recommendation.text) if recommendation is not None else ""
        self.solution = "" if solution == "None Provided" else clip(solution, TEXT_MAX_CHARS)
        self.title = clip(text(f.title), TITLE_MAX_CHARS) or "Inspector finding"
        self.description = clip(text(f.description), TEXT_MAX_CHARS)
        self.epss = f.epss.score if f.epss is not None else None
        self.exploit = _yes(f.exploitAvailable)
        self.fix = _yes(f.fixAvailable)
        self.status = clip(text(f.status).lower(), 32) or None
        extra: dict[str, Any] = {"group": clip(text(f.findingArn), SHORT_MAX_CHARS) or f"findings[{index}]"}
        self.resource_id = ""
        if f.resources:
            res = f.resources[0]
            self.resource_id = clip(text(res.id), SHORT_MAX_CHARS)
            extra["resource"] = self.resource_id
            extra["resource_type"] = clip(text(res.type), 64)
            d = res.details
            if d is not None:
                if d.awsEcrContainerImage is not None:
                    extra["image"] = clip(text(d.awsEcrContainerImage.repositoryName), SHORT_MAX_CHARS)
                if d.awsLambdaFunction is not None:
                    extra["function"] = clip(text(d.awsLambdaFunction.functionName), SHORT_MAX_CHARS)
        self.extra = extra

    def finding(
        self,
        rule_id: str,
        kind: Kind,
        *,
        cwe: int | None = None,
        cves: tuple[str, ...] = (),
        location: Location | None = None,
        package: Package | None = None,
        evidence: str = "",
        solution: str = "",
        references: tuple[str, ...] = (),
        extra: dict[str, Any] | None = None,
    ) -> Finding:
        more = dict(self.extra)
        if extra:
            more.update(extra)
        # Positional arguments in Finding's field order (a test pins it): hot path.
        return Finding(
            SCANNER, rule_id, self.title, self.severity, kind, None, cwe, cves, self.score, self.vector,
            location, package, evidence, self.solution or solution, self.description, references, None,
            self.epss, None, self.exploit, self.fix, self.status, "", more,
        )


def _package_findings(f: _Finding, c: _Common) -> Iterator[Finding]:
    pvd = f.packageVulnerabilityDetails or _PackageDetails()
    vuln_id = clip(text(pvd.vulnerabilityId).strip(), SHORT_MAX_CHARS) or "unknown"
    related = [text(r) for r in pvd.relatedVulnerabilities] if pvd.relatedVulnerabilities else ()
    cves = cves_in(vuln_id, *related)
    refs = [clip(text(u), SHORT_MAX_CHARS) for u in pvd.referenceUrls] if pvd.referenceUrls else []
    source_url = text(pvd.sourceUrl)
    if source_url and source_url not in refs:
        refs.insert(0, clip(source_url, SHORT_MAX_CHARS))
    references = tuple(refs)
    extra = {"vendor_severity": clip(text(pvd.vendorSeverity), 64)} if pvd.vendorSeverity else None
    if not pvd.vulnerablePackages:
        yield c.finding(vuln_id, "dependency", cves=cves, references=references, extra=extra)
        return
    for pkg in pvd.vulnerablePackages:
        manager = text(pkg.packageManager).upper()
        name = clip(text(pkg.name), SHORT_MAX_CHARS) or "unknown"
        version = clip(_version(pkg), 256) or None
        fixed = clip(_fixed(pkg) or "", 256) or None
        package = new_package(name, version, fixed, ECOSYSTEMS.get(manager, manager.lower() or None),
                          clip(text(pkg.filePath), SHORT_MAX_CHARS) or None)
        evidence = f"{name} {version or '?'} installed" + (f"; fixed in {fixed}" if fixed else "")
        yield c.finding(
            vuln_id, "dependency", cves=cves, package=package, evidence=clip(evidence, EVIDENCE_MAX_CHARS),
            solution=clip(text(pkg.remediation), TEXT_MAX_CHARS), references=references, extra=extra,
        )


def _code_finding(f: _Finding, c: _Common) -> Finding:
    cvd = f.codeVulnerabilityDetails or _CodeDetails()
    cwes = [n for n in (cwe_id(text(x)) for x in cvd.cwes or ()) if n is not None]
    fp = cvd.filePath or _FilePath()
    return c.finding(
        clip(text(cvd.ruleId) or text(cvd.detectorId), SHORT_MAX_CHARS) or "unknown",
        "code",
        cwe=cwes[0] if cwes else None,
        location=Location(path=clip(text(fp.filePath) or text(fp.fileName), SHORT_MAX_CHARS) or None,
                          line=fp.startLine),
        references=tuple(clip(text(u), SHORT_MAX_CHARS) for u in cvd.referenceUrls or ()),
        extra={"detector": clip(text(cvd.detectorId), SHORT_MAX_CHARS)} if cvd.detectorId else None,
    )


def _network_finding(f: _Finding, c: _Common) -> Finding:
    nrd = f.networkReachabilityDetails or _NetworkDetails()
    rng = nrd.openPortRange or _PortRange()
    proto = clip(text(nrd.protocol).lower(), 16) or "tcp"
    if rng.begin is None:
        port = proto
    elif rng.end is None or rng.end == rng.begin:
        port = f"{rng.begin}/{proto}"
    else:
        port = f"{rng.begin}-{rng.end}/{proto}"
    return c.finding("NETWORK_REACHABILITY", "host", location=Location(host=c.resource_id or None, port=port))


class _Page(msgspec.Struct, gc=False):
    findings: list[_Finding] | None = None
    error_type: Scalar = msgspec.field(default=None, name="__type")
    message: Scalar = None


class _CountPage(msgspec.Struct, gc=False):
    findings: list[Empty] | None = None


def parse(report: Report) -> Iterator[Finding]:
    report.check_json_items(_CountPage, lambda p: len(p.findings or ()))
    page = report.decode_doc(_Page)
    if page.error_type is not None:
        raise report.error(f"AWS error response, not findings: {text(page.error_type)}: {text(page.message)}")
    if page.findings is None:
        keys = ", ".join(sorted(report.json_top())[:10]) or "none"
        raise report.error(f"not an Inspector2 ListFindings page: no 'findings' list (top-level keys: {keys})")
    for i, f in enumerate(page.findings):
        ftype = text(f.type)
        common = _Common(f, i)
        if ftype == "PACKAGE_VULNERABILITY" or (not ftype and f.packageVulnerabilityDetails is not None):
            yield from _package_findings(f, common)
        elif ftype == "CODE_VULNERABILITY":
            yield _code_finding(f, common)
        elif ftype == "NETWORK_REACHABILITY":
            yield _network_finding(f, common)
        else:  # a type AWS adds later: keep it (resource-level) rather than drop the page
            yield common.finding(
                clip(ftype, SHORT_MAX_CHARS) or "unknown", "host",
                location=Location(host=common.resource_id or None), extra={"inspector_type": clip(ftype, 64)},
            )


FORMAT = ReportFormat(
    name="inspector2",
    scanner=SCANNER,
    syntax="json",
    summary="AWS Inspector2 ListFindings page ({\"findings\": [...]})",
    detect=detect,
    parse=parse,
    first_keys=frozenset({"findings", "__type"}),
)

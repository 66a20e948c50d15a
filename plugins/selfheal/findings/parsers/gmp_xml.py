"""Greenbone / OpenVAS: a GMP ``get_report`` XML report (XML report format).

Accepted envelopes: ``<get_reports_response status="200"><report ...><report>``,
the bare outer ``<report id= format_id= content_type="text/xml">`` as saved by
the web UI, and the inner ``<report id=>``. Findings are
``report/results/result`` (nested ``delta/result`` elements of delta reports
are skipped). Per result: ``host`` (text, plus ``hostname``), ``port``
(``443/tcp``, ``general/tcp``), ``nvt/@oid``, ``nvt/name``,
``nvt/refs/ref[@type='cve']/@id`` (GMP 8+; GMP 7 used ``nvt/cve``),
``severity`` (CVSS score; overrides applied), ``threat``, ``qod/value``,
``nvt/solution``, the CVSS vector from ``nvt/severities/severity/value`` or the
``cvss_base_vector=`` entry of ``nvt/tags``, EPSS from ``nvt/epss/max_epss``,
and ``description`` (the detection output, our evidence).

Streamed: each result is processed and discarded at its end tag.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from xml.etree.ElementTree import Element

from selfheal.findings.limits import EVIDENCE_MAX_CHARS, SHORT_MAX_CHARS, TEXT_MAX_CHARS, TITLE_MAX_CHARS, clip
from selfheal.findings.model import Finding, Location
from selfheal.findings.parsers._base import Report, ReportFormat, XmlHead, cves_in, elem_text, to_float, to_int
from selfheal.findings.severity import confidence_from_qod, from_label, from_score

SCANNER = "gvm"
_GMP_CHILDREN = frozenset({"owner", "name", "report", "results", "gmp", "report_format", "task", "scan_run_status"})


def detect(head: XmlHead) -> bool:
    if head.root == "get_reports_response":
        return True
    if head.root != "report" or head.attrib.get("type") == "security" or head.first_child == "report_infos":
        return False
    return bool({"format_id", "content_type", "id"} & head.attrib.keys()) or head.first_child in _GMP_CHILDREN


def _tags(value: str) -> dict[str, str]:
    """NVT tags: ``key=value|key=value`` (values are free text)."""
    out: dict[str, str] = {}
    for part in value.split("|"):
        key, sep, val = part.partition("=")
        if sep:
            out[key.strip()] = val.strip()
    return out


def _result(res: Element) -> Finding:
    nvt = res.find("nvt")
    if nvt is None:
        nvt = Element("nvt")
    oid = nvt.get("oid", "").strip()
    title = (elem_text(nvt, "name") or elem_text(res, "name")).strip()
    host_el = res.find("host")
    host = (host_el.text or "").strip() if host_el is not None else ""
    hostname = elem_text(host_el, "hostname").strip() if host_el is not None else ""
    port = elem_text(res, "port").strip()
    threat = elem_text(res, "threat").strip()
    score = to_float(elem_text(res, "severity"))
    severity = from_score(score) if score is not None else from_label(threat)
    tags = _tags(elem_text(nvt, "tags"))

    cves: dict[str, None] = {}
    references: list[str] = []
    for ref in nvt.iterfind("refs/ref"):
        rtype, rid = ref.get("type", "").lower(), ref.get("id", "").strip()
        if rtype == "cve" and rid:
            cves[rid.upper()] = None
        elif rtype == "url" and rid:
            references.append(clip(rid, SHORT_MAX_CHARS))
    for old in cves_in(elem_text(nvt, "cve")):  # GMP 7: "CVE-1, CVE-2" or "NOCVE"
        cves[old] = None

    vector = ""
    for sev in nvt.iterfind("severities/severity"):
        if sev.get("type", "").startswith("cvss_base"):
            vector = elem_text(sev, "value").strip()
            break
    if not vector:
        vector = tags.get("cvss_base_vector", "")
    if vector in ("", "None"):
        vector = ""

    sol_el = nvt.find("solution")
    solution = ((sol_el.text or "").strip() if sol_el is not None else "") or tags.get("solution", "")
    description = "\n\n".join(v for v in (tags.get("summary"), tags.get("insight"), tags.get("impact")) if v)
    qod = to_int(elem_text(res, "qod/value"))
    epss = to_float(elem_text(nvt, "epss/max_epss/score"))

    extra: dict[str, Any] = {"group": res.get("id") or f"{oid}|{host}|{port}", "threat": threat}
    if qod is not None:
        extra["qod"] = qod
    if hostname:
        extra["hostname"] = clip(hostname, SHORT_MAX_CHARS)
    family = elem_text(nvt, "family").strip()
    if family:
        extra["family"] = clip(family, SHORT_MAX_CHARS)
    solution_type = tags.get("solution_type") or (sol_el.get("type", "") if sol_el is not None else "")
    if solution_type:
        extra["solution_type"] = clip(solution_type, 64)

    return Finding(
        scanner=SCANNER,
        rule_id=clip(oid or title or "unknown", SHORT_MAX_CHARS),
        title=clip(title or oid or "Greenbone result", TITLE_MAX_CHARS),
        severity=severity,
        kind="host",
        confidence=confidence_from_qod(qod) if qod is not None else None,
        cves=tuple(cves),
        cvss_score=score if score is not None and score >= 0 else None,
        cvss_vector=clip(vector, 256) or None,
        location=Location(host=clip(host, 256) or None, port=clip(port, 64) or None),
        evidence=clip(elem_text(res, "description").strip(), EVIDENCE_MAX_CHARS),
        solution=clip(solution, TEXT_MAX_CHARS),
        description=clip(description, TEXT_MAX_CHARS),
        references=tuple(references),
        epss=epss,
        scanner_status="false_positive" if threat.lower() == "false positive" else None,
        extra=extra,
    )


def parse(report: Report) -> Iterator[Finding]:
    report.check_xml_items("result")
    stack: list[Element] = []
    for event, elem in report.xml_events():
        if event == "start":
            if not stack:
                _check_root(report, elem)
            elif elem.tag == "report" and "content_type" in elem.attrib:
                _check_content_type(report, elem)
            stack.append(elem)
            continue
        stack.pop()
        if elem.tag == "result" and stack and stack[-1].tag == "results":
            yield _result(elem)
            elem.clear()
            stack[-1].remove(elem)


def _check_root(report: Report, root: Element) -> None:
    if root.tag == "get_reports_response":
        status = root.get("status", "")
        if status and not status.startswith("2"):
            raise report.error(f"GMP error response: status {status} {root.get('status_text', '')}")
        return
    if root.tag != "report":
        raise report.error(f"not a GMP report: root element is <{root.tag}>, expected <report>")
    if "content_type" in root.attrib:
        _check_content_type(report, root)


def _check_content_type(report: Report, elem: Element) -> None:
    ctype = elem.get("content_type", "")
    if ctype and ctype != "text/xml":
        raise report.error(f"GMP report in format {ctype!r}; request it with the XML report format")


FORMAT = ReportFormat(
    name="gmp-xml",
    scanner=SCANNER,
    syntax="xml",
    summary="Greenbone/OpenVAS GMP get_report XML (get_reports_response or bare <report>)",
    detect=detect,
    parse=parse,
)

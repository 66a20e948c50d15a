"""Wapiti XML report (``wapiti -f xml``, the format DefectDojo imports).

Shape (wapitiCore/report/xmlreportgenerator.py): ``<report type="security">
<report_infos><info name="target">..</info>..</report_infos>
<vulnerabilities><vulnerability name="SQL Injection"><description/>
<solution/><references><reference><title/><url/></reference></references>
<entries><entry><method/><path/><level/><parameter/><info/><referer/>
<module/><http_request/><curl_command/><wstg><code/></wstg></entry></entries>
</vulnerability></vulnerabilities><anomalies><anomaly ..>..</anomalies>
<additionals><additional ..>..</additionals></report>``. Older versions
(3.0.x) omit module/wstg/referer. Streamed per category element.
"""

from __future__ import annotations

from collections.abc import Iterator
from xml.etree.ElementTree import Element

from selfheal.findings.model import Finding
from selfheal.findings.parsers import _wapiti
from selfheal.findings.parsers._base import Report, ReportFormat, XmlHead, elem_text

_CATEGORY_TAGS = {"vulnerability": "vulnerabilities", "anomaly": "anomalies", "additional": "additionals"}


def detect(head: XmlHead) -> bool:
    return head.root == "report" and (head.attrib.get("type") == "security" or head.first_child == "report_infos")


def _category(elem: Element, section: str, origin: str) -> Iterator[Finding]:
    refs = [(elem_text(r, "title"), elem_text(r, "url")) for r in elem.iterfind("references/reference")]
    cat = _wapiti.Category(elem.get("name", ""), elem_text(elem, "description"), elem_text(elem, "solution"), refs)
    for entry in elem.iterfind("entries/entry"):
        yield _wapiti.build(
            cat,
            section,
            origin,
            method=elem_text(entry, "method"),
            path=elem_text(entry, "path"),
            info=elem_text(entry, "info"),
            lvl=elem_text(entry, "level"),
            parameter=elem_text(entry, "parameter"),
            http_request=elem_text(entry, "http_request"),
            module=elem_text(entry, "module"),
            wstg=[c.text or "" for c in entry.iterfind("wstg/code")],
        )


def parse(report: Report) -> Iterator[Finding]:
    report.check_xml_items("entry")
    stack: list[Element] = []
    origin = ""
    for event, elem in report.xml_events():
        if event == "start":
            if not stack and elem.tag != "report":
                raise report.error(f"not a Wapiti XML report: root element is <{elem.tag}>, expected <report>")
            stack.append(elem)
            continue
        stack.pop()
        tag = elem.tag
        if tag == "report_infos" and len(stack) == 1:
            for info in elem.iterfind("info"):
                if info.get("name") == "target":
                    origin = _wapiti.target_origin(info.text or "")
        elif tag in _CATEGORY_TAGS and len(stack) == 2 and stack[-1].tag == _CATEGORY_TAGS[tag]:
            yield from _category(elem, tag, origin)
            elem.clear()
            stack[-1].remove(elem)


FORMAT = ReportFormat(
    name="wapiti-xml",
    scanner=_wapiti.SCANNER,
    syntax="xml",
    summary="Wapiti XML report (<report type=\"security\">)",
    detect=detect,
    parse=parse,
)

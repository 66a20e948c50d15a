"""OWASP ZAP XML report: "Traditional XML" (``-x``), its "plus" variant with
requests/responses, and the legacy 2.9-era core report.

Shape: ``<OWASPZAPReport version=..><site name host port ssl><alerts>
<alertitem><pluginid/><alertRef/><alert/><name/><riskcode/><confidence/>
<desc/><instances><instance><uri/><method/><param/><attack/><evidence/>
<otherinfo/>[<requestheader/><requestbody/><responseheader/><responsebody/>]
</instance></instances><solution/><otherinfo/><reference/><cweid/><wascid/>
[<tags><tag><tag>CWE-565</tag><link/></tag></tags>]</alertitem>...``.
Streamed: each ``alertitem`` is processed and discarded at its end tag, so
memory does not grow with the number of alerts. Response bodies are ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from xml.etree.ElementTree import Element

from selfheal.findings.model import Finding
from selfheal.findings.parsers import _zap
from selfheal.findings.parsers._base import Report, ReportFormat, XmlHead, elem_text

ROOT = "OWASPZAPReport"


def detect(head: XmlHead) -> bool:
    return head.root == ROOT


def _alertitem(item: Element, site_name: str) -> Iterator[Finding]:
    t = _zap.AlertType(
        plugin_id=elem_text(item, "pluginid"), alert_ref=elem_text(item, "alertRef"),
        name=elem_text(item, "name") or elem_text(item, "alert"), risk_value=elem_text(item, "riskcode"),
        confidence_value=elem_text(item, "confidence"), cwe=elem_text(item, "cweid"),
        wasc=elem_text(item, "wascid"), description=elem_text(item, "desc"),
        solution=elem_text(item, "solution"), reference=elem_text(item, "reference"),
        tag_names=tuple(tag.text or "" for tag in item.iterfind("tags/tag/tag")),
    )
    alert_other = elem_text(item, "otherinfo").strip()
    instances = item.findall("instances/instance")
    if not instances and item.find("uri") is not None:
        instances = [item]  # ZAP before 2.5 wrote one instance's fields directly in <alertitem>
    for inst in instances:
        request = elem_text(inst, "requestheader")
        if request:
            request += elem_text(inst, "requestbody")
        yield _zap.instance(
            t, site_name, elem_text(inst, "uri").strip(), elem_text(inst, "method").strip(),
            elem_text(inst, "param"), elem_text(inst, "attack"), elem_text(inst, "evidence"),
            elem_text(inst, "otherinfo").strip() or alert_other, request.strip(),
        )


def parse(report: Report) -> Iterator[Finding]:
    report.check_xml_items("instance")
    report.check_xml_items("alertitem")  # legacy reports: one finding per alertitem
    stack: list[Element] = []
    site_name = ""
    seen_root = False
    for event, elem in report.xml_events():
        if event == "start":
            if not seen_root:
                if elem.tag != ROOT:
                    raise report.error(f"not a ZAP XML report: root element is <{elem.tag}>, expected <{ROOT}>")
                seen_root = True
            elif elem.tag == "site" and len(stack) == 1:
                site_name = elem.get("name", "")
            stack.append(elem)
            continue
        stack.pop()
        if elem.tag == "alertitem" and len(stack) >= 1 and stack[-1].tag == "alerts":
            yield from _alertitem(elem, site_name)
            elem.clear()
            stack[-1].remove(elem)


FORMAT = ReportFormat(
    name="zap-xml",
    scanner=_zap.SCANNER,
    syntax="xml",
    summary="OWASP ZAP XML report (traditional, XML plus, legacy)",
    detect=detect,
    parse=parse,
)

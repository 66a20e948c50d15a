"""OWASP ZAP "Traditional JSON" report (``-J report.json``, report-generation add-on).

Shape: ``{"@programName", "@version", "site": [{"@name", "@host", "@port",
"alerts": [{"pluginid", "alertRef", "name", "riskcode", "confidence", "desc",
"solution", "reference", "cweid", "wascid", "instances": [{"uri", "method",
"param", "attack", "evidence", "otherinfo", ...}]}]}]}``. ``riskcode`` and
``confidence`` are integer codes, written as strings by ZAP and as numbers by
some converters: both are accepted. Older converters write a single site or
instance as an object instead of a one-element list: accepted too. The "plus"
variant adds ``request-header``/``request-body`` per instance (kept, clipped).
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from selfheal.findings.model import Finding
from selfheal.findings.parsers import _zap
from selfheal.findings.parsers._base import Empty, Report, ReportFormat, text

Scalar = str | int | float | None


class _Instance(msgspec.Struct, gc=False):
    uri: Scalar = ""
    method: Scalar = ""
    param: Scalar = ""
    attack: Scalar = ""
    evidence: Scalar = ""
    otherinfo: Scalar = ""
    request_header: Scalar = msgspec.field(default="", name="request-header")
    request_body: Scalar = msgspec.field(default="", name="request-body")


class _Tag(msgspec.Struct, gc=False):
    tag: Scalar = ""
    link: Scalar = ""


class _Alert(msgspec.Struct, gc=False):
    pluginid: Scalar = ""
    alertRef: Scalar = ""
    name: Scalar = ""
    alert: Scalar = ""
    riskcode: Scalar = ""
    confidence: Scalar = ""
    desc: Scalar = ""
    solution: Scalar = ""
    otherinfo: Scalar = ""
    reference: Scalar = ""
    cweid: Scalar = ""
    wascid: Scalar = ""
    instances: list[_Instance] | _Instance | None = None
    tags: list[_Tag] | None = None


class _Site(msgspec.Struct, gc=False):
    name: Scalar = msgspec.field(default="", name="@name")
    alerts: list[_Alert] | None = None


class _Report(msgspec.Struct, gc=False):
    site: list[_Site] | _Site | None = None


class _CountAlert(msgspec.Struct, gc=False):
    instances: list[Empty] | Empty | None = None


class _CountSite(msgspec.Struct, gc=False):
    alerts: list[_CountAlert] | None = None


class _CountReport(msgspec.Struct, gc=False):
    site: list[_CountSite] | _CountSite | None = None


def _count(doc: _CountReport) -> int:
    sites = doc.site if isinstance(doc.site, list) else [doc.site] if doc.site is not None else []
    n = 0
    for s in sites:
        for a in s.alerts or ():
            inst = a.instances
            n += len(inst) if isinstance(inst, list) else int(inst is not None)
    return n


def detect(keys: frozenset[str]) -> bool:
    return "site" in keys


def _instances(alert: _Alert) -> list[_Instance]:
    inst = alert.instances
    if inst is None:
        return []
    return inst if isinstance(inst, list) else [inst]


def parse(report: Report) -> Iterator[Finding]:
    report.check_json_items(_CountReport, _count)
    doc = report.decode_doc(_Report)
    if doc.site is None:
        raise report.error("not a ZAP JSON report: no top-level 'site' list")
    sites: list[_Site] = doc.site if isinstance(doc.site, list) else [doc.site]
    instance = _zap.instance
    for site in sites:
        site_name = text(site.name).strip()
        for alert in site.alerts or ():
            t = _zap.AlertType(
                plugin_id=text(alert.pluginid), alert_ref=text(alert.alertRef),
                name=text(alert.name) or text(alert.alert), risk_value=text(alert.riskcode),
                confidence_value=text(alert.confidence), cwe=alert.cweid, wasc=alert.wascid,
                description=text(alert.desc), solution=text(alert.solution), reference=text(alert.reference),
                tag_names=tuple(text(t.tag) for t in alert.tags) if alert.tags else (),
            )
            alert_other = text(alert.otherinfo)
            for inst in _instances(alert):
                request = text(inst.request_header)
                if request and inst.request_body:
                    request += text(inst.request_body)
                yield instance(
                    t, site_name, text(inst.uri), text(inst.method), text(inst.param), text(inst.attack),
                    text(inst.evidence), text(inst.otherinfo) or alert_other, request,
                )


FORMAT = ReportFormat(
    name="zap-json",
    scanner=_zap.SCANNER,
    syntax="json",
    summary="OWASP ZAP traditional JSON report (site[].alerts[].instances[])",
    detect=detect,
    parse=parse,
    first_keys=frozenset({"@programName", "@version", "@generated", "site"}),
)

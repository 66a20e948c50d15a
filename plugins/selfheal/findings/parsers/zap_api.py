"""OWASP ZAP API alerts: the JSON of ``/JSON/core/view/alerts/`` (or ``alert/view/alerts``).

Shape: ``{"alerts": [{...}, ...]}``, one object per alert *instance*; every
field is a string (``risk``/``confidence`` are labels such as "High"), except
``sourceMessageId`` (a number) and ``tags`` (``{"CWE-89": url, ...}``). The
fields we read: pluginId, alertRef, name/alert, risk, confidence, url, method,
param, attack, evidence, other (``otherinfo`` in some clients), description,
solution, reference, cweid, wascid, tags. Alert ids and message ids are
session-local and deliberately ignored.

Decoding is strict first (all strings, as ZAP writes them: the fast path);
a page from another producer with numbers or nulls in those fields is then
decoded leniently, so it is accepted too.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from selfheal.findings.model import Finding, ParseError
from selfheal.findings.parsers import _zap
from selfheal.findings.parsers._base import Empty, Report, ReportFormat, text

Scalar = str | int | float | bool | None
_FIELDS = ("pluginId", "alertRef", "name", "alert", "risk", "confidence", "url", "method", "param", "attack",
           "evidence", "other", "otherinfo", "description", "solution", "reference", "cweid", "wascid")


class _Alert(msgspec.Struct, gc=False):
    pluginId: str = ""
    alertRef: str = ""
    name: str = ""
    alert: str = ""
    risk: str = ""
    confidence: str = ""
    url: str = ""
    method: str = ""
    param: str = ""
    attack: str = ""
    evidence: str = ""
    other: str = ""
    otherinfo: str = ""
    description: str = ""
    solution: str = ""
    reference: str = ""
    cweid: str = ""
    wascid: str = ""
    tags: dict[str, str] | None = None


class _Page(msgspec.Struct, gc=False):
    alerts: list[_Alert] | None = None


class _LooseAlert(msgspec.Struct, gc=False):
    pluginId: Scalar = ""
    alertRef: Scalar = ""
    name: Scalar = ""
    alert: Scalar = ""
    risk: Scalar = ""
    confidence: Scalar = ""
    url: Scalar = ""
    method: Scalar = ""
    param: Scalar = ""
    attack: Scalar = ""
    evidence: Scalar = ""
    other: Scalar = ""
    otherinfo: Scalar = ""
    description: Scalar = ""
    solution: Scalar = ""
    reference: Scalar = ""
    cweid: Scalar = ""
    wascid: Scalar = ""
    tags: dict[str, Scalar] | None = None


class _LoosePage(msgspec.Struct, gc=False):
    alerts: list[_LooseAlert] | None = None


class _CountPage(msgspec.Struct, gc=False):
    alerts: list[Empty] | None = None


def detect(keys: frozenset[str]) -> bool:
    return "alerts" in keys and "site" not in keys


def _alerts(report: Report) -> list[_Alert]:
    try:
        page = report.decode_doc(_Page)
    except ParseError:
        loose = report.decode_doc(_LoosePage)  # raises the lenient (real) error if this fails too
        page = _Page(None if loose.alerts is None else [
            _Alert(**{f: text(getattr(a, f)) for f in _FIELDS},
                   tags={k: text(v) for k, v in a.tags.items()} if a.tags else None)
            for a in loose.alerts
        ])
    if page.alerts is None:
        raise report.error("not a ZAP API alerts response: no top-level 'alerts' list")
    return page.alerts


def parse(report: Report) -> Iterator[Finding]:
    report.check_json_items(_CountPage, lambda p: len(p.alerts or ()))
    types: dict[tuple[str, ...], _zap.AlertType] = {}
    instance = _zap.instance
    for a in _alerts(report):
        tag_names = tuple(a.tags) if a.tags else ()
        key = (a.pluginId, a.alertRef, a.name, a.alert, a.risk, a.confidence, a.cweid, a.wascid, a.description,
               a.solution, a.reference, *tag_names)
        t = types.get(key)
        if t is None:
            t = types[key] = _zap.AlertType(
                plugin_id=a.pluginId, alert_ref=a.alertRef, name=a.name or a.alert, risk_value=a.risk,
                confidence_value=a.confidence, cwe=a.cweid, wasc=a.wascid, description=a.description,
                solution=a.solution, reference=a.reference, tag_names=tag_names,
            )
        yield instance(t, None, a.url, a.method, a.param, a.attack, a.evidence, a.other or a.otherinfo)


FORMAT = ReportFormat(
    name="zap-api",
    scanner=_zap.SCANNER,
    syntax="json",
    summary="OWASP ZAP API alerts JSON (core/view/alerts: {\"alerts\": [...]})",
    detect=detect,
    parse=parse,
    first_keys=frozenset({"alerts"}),
)

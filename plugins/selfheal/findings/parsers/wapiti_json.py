"""Wapiti JSON report (``wapiti -f json``).

Shape (wapitiCore/report/jsonreportgenerator.py): ``{"classifications":
{category: {"desc", "sol", "ref": {title: url}, "wstg": [...]}},
"vulnerabilities": {category: [{"method", "path", "info", "level",
"parameter", "referer", "module", "http_request", "curl_command", "wstg",
"detail"?}]}, "anomalies": {...}, "additionals": {...}, "infos": {"target",
"version", ...}}``. ``path`` is the path without the host; the host comes from
``infos.target``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from selfheal.findings.model import Finding
from selfheal.findings.parsers import _wapiti
from selfheal.findings.parsers._base import Empty, Report, ReportFormat, text

Scalar = str | int | float | None


class _Ref(msgspec.Struct, gc=False):
    title: Scalar = ""
    url: Scalar = ""


class _Classification(msgspec.Struct, gc=False):
    desc: Scalar = ""
    sol: Scalar = ""
    ref: dict[str, Scalar] | list[_Ref] | None = None


class _Entry(msgspec.Struct, gc=False):
    method: Scalar = ""
    path: Scalar = ""
    info: Scalar = ""
    level: Scalar = 0
    parameter: Scalar = ""
    module: Scalar = ""
    http_request: Scalar = ""
    wstg: list[Scalar] | Scalar = None


class _Infos(msgspec.Struct, gc=False):
    target: Scalar = ""


def detect(keys: frozenset[str]) -> bool:
    return "vulnerabilities" in keys and ("classifications" in keys or "infos" in keys)


def _refs(ref: Any) -> list[tuple[str, str]]:
    if ref is None:
        return []
    if isinstance(ref, dict):
        return [(k, text(v)) for k, v in ref.items()]
    return [(text(r.title), text(r.url)) for r in ref]


class _Report(msgspec.Struct, gc=False):
    classifications: dict[str, _Classification] | None = None
    vulnerabilities: dict[str, list[_Entry]] | None = None
    anomalies: dict[str, list[_Entry]] | None = None
    additionals: dict[str, list[_Entry]] | None = None
    infos: _Infos | None = None


class _CountReport(msgspec.Struct, gc=False):
    vulnerabilities: dict[str, list[Empty]] | None = None
    anomalies: dict[str, list[Empty]] | None = None
    additionals: dict[str, list[Empty]] | None = None


def _count(doc: _CountReport) -> int:
    return sum(len(v) for sec in (doc.vulnerabilities, doc.anomalies, doc.additionals) for v in (sec or {}).values())


def parse(report: Report) -> Iterator[Finding]:
    report.check_json_items(_CountReport, _count)
    doc = report.decode_doc(_Report)
    if doc.vulnerabilities is None:
        raise report.error("not a Wapiti JSON report: no top-level 'vulnerabilities' object")
    classes = doc.classifications or {}
    origin = _wapiti.target_origin(text(doc.infos.target) if doc.infos is not None else "")
    sections = (("vulnerability", doc.vulnerabilities), ("anomaly", doc.anomalies or {}),
                ("additional", doc.additionals or {}))
    categories: dict[str, _wapiti.Category] = {}
    for section, entries in sections:
        for name, items in entries.items():
            cat = categories.get(name)
            if cat is None:
                cls = classes.get(name) or _Classification()
                cat = categories[name] = _wapiti.Category(name, text(cls.desc), text(cls.sol), _refs(cls.ref))
            for e in items:
                wstg = e.wstg if isinstance(e.wstg, list) else ([e.wstg] if e.wstg else [])
                yield _wapiti.build(
                    cat,
                    section,
                    origin,
                    method=text(e.method),
                    path=text(e.path),
                    info=text(e.info),
                    lvl=e.level,
                    parameter=text(e.parameter),
                    http_request=text(e.http_request),
                    module=text(e.module),
                    wstg=[text(w) for w in wstg],
                )


FORMAT = ReportFormat(
    name="wapiti-json",
    scanner=_wapiti.SCANNER,
    syntax="json",
    summary="Wapiti JSON report (vulnerabilities/anomalies/additionals by category)",
    detect=detect,
    parse=parse,
    first_keys=frozenset({"classifications", "vulnerabilities"}),
)

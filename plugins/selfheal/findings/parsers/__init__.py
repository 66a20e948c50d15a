"""Scanner report parsers: the registry, format detection and the entry points.

``parse_bytes(data, source, fmt="auto", service=None)`` turns one report
into normalized findings with ``service`` and ``fingerprint`` set;
``iter_findings`` is the streaming variant. Every failure is a
``ParseError(source, problem)``; nothing else escapes (a bug in a parser is
converted too, and says so). Pure Python: no Airflow, no database.

Formats (``--format`` names; a scanner name such as ``zap`` or ``wapiti``
auto-detects among that scanner's formats)::

    zap-api      ZAP API alerts JSON        gmp-xml      Greenbone GMP report XML
    zap-json     ZAP traditional JSON       inspector2   AWS Inspector2 ListFindings
    zap-xml      ZAP XML report             wapiti-json  Wapiti JSON report
    sarif        SARIF 2.1.0                wapiti-xml   Wapiti XML report

Detection (``auto``): the first non-blank byte says JSON or XML. For JSON the
first member name is read from the raw bytes (every scanner writes its
defining key first: ``{"alerts"``, ``{"findings"``, ``{"runs"``...), so the
document is decoded only once, by the chosen parser; otherwise the top level
is decoded (members left raw) and each format's ``detect`` looks at the keys.
For XML the root element and its first child decide (``<report>`` is both
Greenbone's and Wapiti's root). An explicit XML format is checked the same
way before streaming.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import NoReturn

from selfheal.findings.fingerprint import fingerprint
from selfheal.findings.limits import MAX_FINDINGS, MAX_REPORT_BYTES
from selfheal.findings.model import Finding, ParseError
from selfheal.findings.parsers import (
    gmp_xml,
    inspector2,
    sarif,
    wapiti_json,
    wapiti_xml,
    zap_api,
    zap_json,
    zap_xml,
)
from selfheal.findings.parsers._base import Report, ReportFormat

__all__ = [
    "ALIASES",
    "FORMATS",
    "Report",
    "ReportFormat",
    "detect_format",
    "iter_findings",
    "parse_bytes",
]

# Detection order matters only for documents that could match two formats;
# the predicates are written to be disjoint on real reports.
FORMATS: dict[str, ReportFormat] = {
    f.name: f
    for f in (
        sarif.FORMAT,
        inspector2.FORMAT,
        zap_json.FORMAT,
        zap_api.FORMAT,
        wapiti_json.FORMAT,
        zap_xml.FORMAT,
        gmp_xml.FORMAT,
        wapiti_xml.FORMAT,
    )
}
ALIASES: dict[str, str] = {
    "openvas": "gmp-xml",
    "greenbone": "gmp-xml",
    "gmp": "gmp-xml",
    "gvm": "gmp-xml",
    "inspector": "inspector2",
    "sarif-2.1.0": "sarif",
}
_SCANNERS = {f.scanner for f in FORMATS.values()}


def _syntax(report: Report) -> str:
    head = report.data[:64].lstrip()
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:].lstrip()
    if head[:1] in (b"{", b"["):
        return "json"
    if head[:1] == b"<":
        return "xml"
    if not head:
        raise report.error("empty input")
    raise report.error(f"not a JSON or XML document (starts with {bytes(head[:16])!r})")


def _detect(report: Report, candidates: list[ReportFormat]) -> ReportFormat:
    syntax = _syntax(report)
    pool = [f for f in candidates if f.syntax == syntax]
    if syntax == "json":
        first = report.first_key()
        for fmt in pool:
            if first in fmt.first_keys:
                return fmt
        keys = frozenset(report.json_top())
        for fmt in pool:
            if fmt.detect(keys):
                return fmt
        if not keys:
            raise report.error("empty JSON object ({}): not a scanner report")
        shown = ", ".join(sorted(keys)[:8])
        raise report.error(
            f"unrecognised JSON report (top-level keys: {shown}); expected one of "
            + ", ".join(f.name for f in pool)
        )
    head = report.xml_head()
    for fmt in pool:
        if fmt.detect(head):
            return fmt
    raise report.error(
        f"unrecognised XML report (root element <{head.root[:64]}>); expected one of "
        + ", ".join(f.name for f in pool)
    )


def resolve(report: Report, fmt: str) -> ReportFormat:
    """The ReportFormat for ``fmt`` (a format name, alias, scanner name or "auto")."""
    name = ALIASES.get(fmt, fmt)
    if name in FORMATS:
        chosen = FORMATS[name]
        if chosen.syntax == "xml" and _syntax(report) == "xml":
            # The XML formats share root names (<report> is both GMP and Wapiti):
            # check the document really is the one asked for before streaming it.
            head = report.xml_head()
            if not chosen.detect(head):
                raise report.error(f"not a {name} document (root element <{head.root[:64]}>)")
        return chosen
    if name == "auto":
        return _detect(report, list(FORMATS.values()))
    if name in _SCANNERS:
        return _detect(report, [f for f in FORMATS.values() if f.scanner == name])
    raise report.error(f"unknown format {fmt!r}; use auto or one of {', '.join(FORMATS)}")


def detect_format(data: bytes, source: str = "<input>") -> str:
    """Name of the format of ``data`` (e.g. ``"zap-xml"``); ParseError if none fits.
    Cheap: usually the first JSON key or the XML root decides (see above)."""
    return _detect(Report(source, _check_input(data, source, MAX_REPORT_BYTES)), list(FORMATS.values())).name


def _check_input(data: bytes, source: str, max_bytes: int) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ParseError(source, f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise ParseError(source, f"report is {len(data)} bytes, over the limit of {max_bytes} bytes")
    return bytes(data)


def _iter_unguarded(
    data: bytes,
    source: str,
    fmt: str = "auto",
    service: str | None = None,
    *,
    max_bytes: int = MAX_REPORT_BYTES,
    max_findings: int = MAX_FINDINGS,
) -> Iterator[Finding]:
    """The parse pipeline without the last-resort guard (the fuzz tests use this
    so that a parser bug shows up as the bug it is)."""
    report = Report(source, _check_input(data, source, max_bytes), max_findings)
    parser = resolve(report, fmt)
    for n, finding in enumerate(parser.parse(report), 1):
        if n > max_findings:
            report.check_count(n)
        finding.service = service
        finding.fingerprint = fingerprint(finding, service)
        yield finding


def iter_findings(
    data: bytes,
    source: str,
    fmt: str = "auto",
    service: str | None = None,
    *,
    max_bytes: int = MAX_REPORT_BYTES,
    max_findings: int = MAX_FINDINGS,
) -> Iterator[Finding]:
    """Parse ``data`` lazily. Findings come out one at a time (XML reports are
    streamed); a ParseError can still arrive after some findings (e.g. a
    truncated XML file), so callers that must be all-or-nothing use parse_bytes.
    """
    try:
        yield from _iter_unguarded(data, source, fmt, service, max_bytes=max_bytes, max_findings=max_findings)
    except Exception as exc:  # noqa: BLE001 - translated, see _guard
        _guard(source, exc)


def _guard(source: str, exc: Exception) -> NoReturn:
    """Re-raise what a parser raised as the documented ParseError."""
    if isinstance(exc, ParseError):
        raise exc
    if isinstance(exc, RecursionError):
        raise ParseError(source, "document nested too deeply") from None
    if isinstance(exc, MemoryError):
        raise ParseError(source, "out of memory while parsing") from None
    # last line of defence: the contract is "only ParseError"
    raise ParseError(source, f"internal parser error ({type(exc).__name__}: {exc}); please report this bug") from exc


def parse_bytes(
    data: bytes,
    source: str,
    fmt: str = "auto",
    service: str | None = None,
    *,
    max_bytes: int = MAX_REPORT_BYTES,
    max_findings: int = MAX_FINDINGS,
) -> list[Finding]:
    """Parse one report into findings (all or nothing), each with ``service`` and
    ``fingerprint`` set. Raises ParseError naming ``source`` on any problem.

    The cyclic garbage collector is paused while the list is built: findings are
    acyclic (plain data), but each one adds tracked objects, and repeated
    collections over a growing list of them cost ~20% at 100,000 findings.
    It is re-enabled afterwards (unless the caller had disabled it)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        # _iter_unguarded itself, not iter_findings: one generator less per finding
        return list(_iter_unguarded(data, source, fmt, service, max_bytes=max_bytes, max_findings=max_findings))
    except Exception as exc:  # noqa: BLE001 - translated, see _guard
        _guard(source, exc)
    finally:
        if was_enabled:
            gc.enable()

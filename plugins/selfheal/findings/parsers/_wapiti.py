"""What Wapiti's JSON and XML reports share: levels, CWE lookup, one Finding per entry.

Both reports list, per category ("SQL Injection", "Secure Flag cookie", ...),
a classification (description, solution, references as title -> URL) and the
entries found (method, path, parameter, level, info, http_request,
curl_command, wstg, module). Sections: ``vulnerabilities``, ``anomalies``
(server errors, timeouts) and ``additionals`` (technology fingerprints, level
0). DefectDojo reads only ``vulnerabilities``; we keep all three and say which
in ``extra["section"]``.

Missing-header and cookie-flag entries carry no parameter: the header or
cookie is only named in ``info`` ("X-Frame-Options is not set", "... on the
cookie 'sid' ..."). Those two fixed phrasings are turned into the parameter,
so that each missing header is its own finding (they need separate fixes)
and can match ZAP, which reports the header/cookie name as the parameter.
"""

from __future__ import annotations

import re
from typing import Any

from selfheal.findings.limits import EVIDENCE_MAX_CHARS, SHORT_MAX_CHARS, TEXT_MAX_CHARS, TITLE_MAX_CHARS, clip
from selfheal.findings.model import Finding
from selfheal.findings.parsers._base import first_cwe, new_location, url_origin, url_path
from selfheal.findings.severity import WAPITI_LEVELS

SCANNER = "wapiti"

_HEADER_INFO_RE = re.compile(r"^([A-Za-z][A-Za-z0-9-]{1,63}) (?:is not set|header is missing|is missing)")
_CSP_INFO_RE = re.compile(r"^CSP\b")
# "... on the cookie: 'sid' set at ..." (3.1) and "... in the cookie : sid" (3.2)
_COOKIE_INFO_RE = re.compile(r"the cookie\s*:?\s*['\"]?([^'\"\s]{1,256})", re.IGNORECASE)

# Categories whose references name no CWE (Wapiti 3.2): the CWE the weakness is
# filed under elsewhere (ZAP uses the same ones), so that both scanners' findings
# share a class. Only used when the report's references give none.
CATEGORY_CWES: dict[str, int] = {
    "Clickjacking Protection": 1021,
    "HttpOnly Flag cookie": 1004,
    "Secure Flag cookie": 614,
    "HTTP Strict Transport Security (HSTS)": 319,
    "Cross Site Request Forgery": 352,
    "Cross Site Scripting": 79,
    "Stored Cross Site Scripting": 79,
    "SQL Injection": 89,
    "Blind SQL Injection": 89,
    "Command execution": 78,
    "Path Traversal": 22,
    "Open Redirect": 601,
    "Server Side Request Forgery": 918,
    "XML External Entity": 611,
    "CRLF Injection": 93,
}


def param_from_info(info: str) -> str | None:
    """The header or cookie an entry without a parameter is about, if its info says."""
    if _CSP_INFO_RE.match(info):
        return "Content-Security-Policy"
    m = _HEADER_INFO_RE.match(info)
    if m:
        return m.group(1)
    m = _COOKIE_INFO_RE.search(info)
    if m:
        return m.group(1)
    return None


def level(value: Any) -> str:
    return WAPITI_LEVELS.get(str(value).strip(), "info")


class Category:
    """A classification, resolved once per category and shared by its entries."""

    __slots__ = ("cwe", "description", "name", "references", "solution", "title")

    def __init__(self, name: str, description: str, solution: str, refs: list[tuple[str, str]]) -> None:
        self.name = clip(name, SHORT_MAX_CHARS) or "unknown"
        self.title = clip(self.name, TITLE_MAX_CHARS)
        self.description = clip(description.strip(), TEXT_MAX_CHARS)
        self.solution = clip(solution.strip(), TEXT_MAX_CHARS)
        self.references = tuple(clip(url.strip(), SHORT_MAX_CHARS) for _title, url in refs if url.strip())
        # The first CWE named in the reference titles ("CWE-89: Improper ..."), else the table.
        self.cwe = first_cwe(*(title for title, _url in refs)) or CATEGORY_CWES.get(name)


def build(
    cat: Category,
    section: str,
    origin: str,
    *,
    method: str,
    path: str,
    info: str,
    lvl: Any,
    parameter: str,
    http_request: str,
    module: str,
    wstg: list[str],
) -> Finding:
    path = path.strip()
    if "://" in path:  # some versions write absolute URLs
        url, path = path, url_path(path)
    else:
        url = origin + path if origin else path
    param = parameter.strip() or param_from_info(info)
    severity = level(lvl)
    extra: dict[str, Any] = {"group": f"{cat.name}|{severity}|{info}", "section": section}
    if http_request:
        extra["http_request"] = clip(http_request, EVIDENCE_MAX_CHARS)
    if module:
        extra["module"] = clip(module, 64)
    if wstg:
        extra["wstg"] = [clip(w, 64) for w in wstg[:16]]
    location = new_location(
        clip(url, SHORT_MAX_CHARS),
        clip(method.strip().upper(), 32) or None,
        clip(path, SHORT_MAX_CHARS) or "/",
        clip(param, SHORT_MAX_CHARS) if param else None,
    )
    # Positional arguments in Finding's field order (a test pins it): hot path.
    return Finding(
        SCANNER, cat.name, cat.title, severity, "web", None, cat.cwe, (), None, None, location, None,
        clip(info, EVIDENCE_MAX_CHARS), cat.solution, cat.description, cat.references, None, None, None, None,
        None, None, "", extra,
    )


def target_origin(target: str) -> str:
    return url_origin(target.strip())

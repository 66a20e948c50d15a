"""The attack requests a plan's exploit replay sends, and when each counts as reproduced.

Scanner evidence is attacker-influenced text: it is parsed defensively (size
bounded, header names validated) and only ever turned into data, never run.
Sources, best first: the raw request the scanner recorded (Wapiti's
``http_request``, ZAP's ``request`` header block), ZAP's attack string on the
finding's URL, and a synthesized probe for the finding's class. The
synthesized probe is always added for injection classes because scanners
often keep a boolean-blind request as the representative one, and a
boolean-blind request proves nothing on its own.
"""

from __future__ import annotations

import re
import shlex
from urllib.parse import quote, urlencode, urlsplit

from selfheal.findings.model import Finding
from selfheal.patches.model import AttackRequest, Oracle

MAX_REQUEST_CHARS = 16_384
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
_METHOD = re.compile(r"^[A-Z]{1,16}$")
# Headers a replay must not copy: they describe the scanner's connection, not the attack.
_DROP_HEADERS = {
    "host",
    "connection",
    "content-length",
    "accept-encoding",
    "transfer-encoding",
    "keep-alive",
    "upgrade",
    "proxy-connection",
    "te",
}

SQL_ERROR_PATTERNS: tuple[str, ...] = (
    r"(?i)sqlite3?\.\w*Error",
    r"(?i)\bOperationalError\b",
    r"(?i)\bProgrammingError\b",
    r"(?i)unrecognized token",
    r"(?i)unterminated quoted string",
    r"(?i)syntax error at or near",
    r"(?i)You have an error in your SQL syntax",
    r"(?i)\bSQLSTATE\[",
    r"\bORA-\d{5}\b",
    r"(?i)quoted string not properly terminated",
)
SQLI_CWES = frozenset({89, 564})
XSS_CWES = frozenset({79, 80, 83, 87})
AUTH_CWES = frozenset({306, 287, 862, 285, 284, 425, 639})
_XSS_PROBE = '"><svg data-selfheal-probe onload=alert(1)>'


def oracle_for(finding: Finding, attack: str | None = None) -> Oracle:
    """What "the attack worked" looks like for this finding's class."""
    cwe = finding.cwe
    if cwe in SQLI_CWES:
        return Oracle(status_in=(500,), body_patterns=SQL_ERROR_PATTERNS)
    if cwe in XSS_CWES:
        payload = attack or _XSS_PROBE
        return Oracle(body_patterns=(re.escape(payload),))
    if cwe in AUTH_CWES:
        return Oracle(status_in=(200,))
    return Oracle()


def parse_raw_request(text: str, source: str) -> AttackRequest | None:
    """A raw HTTP/1.x request ("GET /p?q HTTP/1.1\\nheader: v\\n\\nbody") as an AttackRequest.

    Returns None when it is not a well-formed request line (the caller falls back).
    """
    if not text or len(text) > MAX_REQUEST_CHARS:
        return None
    head, _, body = text.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _METHOD.match(parts[0]) or not parts[2].startswith("HTTP/"):
        return None
    target = parts[1]
    if "://" in target:  # absolute-form (proxies, ZAP): keep path and query only
        s = urlsplit(target)
        target = (s.path or "/") + (f"?{s.query}" if s.query else "")
    if not target.startswith("/") or any(ord(c) < 0x21 for c in target):
        return None
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not _TOKEN.match(name) or name.lower() in _DROP_HEADERS:
            continue
        value = value.strip()
        if any(ord(c) < 0x20 for c in value):
            continue
        headers.append((name, value))
    return AttackRequest(method=parts[0], path=target, headers=tuple(headers), body=body, source=source)


def parse_curl(command: str, source: str = "curl_command") -> AttackRequest | None:
    """The request of a simple ``curl [-X M] [-H h] [-d body] URL`` command (Wapiti's curl_command)."""
    if not command or len(command) > MAX_REQUEST_CHARS:
        return None
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    if not argv or argv[0] != "curl":
        return None
    method, url, body = None, None, ""
    headers: list[tuple[str, str]] = []
    it = iter(argv[1:])
    for arg in it:
        if arg in ("-X", "--request"):
            method = next(it, "").upper()
        elif arg in ("-H", "--header"):
            name, _, value = next(it, "").partition(":")
            if _TOKEN.match(name.strip()) and name.strip().lower() not in _DROP_HEADERS:
                headers.append((name.strip(), value.strip()))
        elif arg in ("-d", "--data", "--data-raw", "--data-binary"):
            body = next(it, "")
        elif not arg.startswith("-"):
            url = arg
    if not url:
        return None
    s = urlsplit(url)
    path = (s.path or "/") + (f"?{s.query}" if s.query else "")
    method = method or ("POST" if body else "GET")
    if not _METHOD.match(method):
        return None
    return AttackRequest(method=method, path=path, headers=tuple(headers), body=body, source=source)


def _probe(finding: Finding) -> AttackRequest | None:
    """A minimal request that shows the class of flaw at the finding's location."""
    loc = finding.location
    if loc is None:
        return None
    path = loc.path or (urlsplit(loc.url).path if loc.url else None)
    if not path or not path.startswith("/") or "{" in path:
        return None
    method = (loc.method or "GET").upper()
    if finding.cwe in SQLI_CWES and loc.param:
        value = "selfheal'\"("  # unbalanced quotes: a syntax error in any string-built query
    elif finding.cwe in XSS_CWES and loc.param:
        value = _XSS_PROBE
    elif finding.cwe in AUTH_CWES:
        return AttackRequest(
            method=method,
            path=path,
            oracle=Oracle(status_in=(200,)),
            source="synthesized probe: no credentials",
        )
    else:
        return None
    query = urlencode({loc.param: value}, quote_via=quote)
    if method in ("GET", "HEAD", "DELETE"):
        return AttackRequest(
            method=method, path=f"{path}?{query}", oracle=oracle_for(finding), source="synthesized probe"
        )
    return AttackRequest(
        method=method,
        path=path,
        headers=(("Content-Type", "application/x-www-form-urlencoded"),),
        body=query,
        oracle=oracle_for(finding),
        source="synthesized probe",
    )


def _zap_request(finding: Finding) -> AttackRequest | None:
    """ZAP keeps the attack value and the URL it was sent to (for GET, the URL holds it)."""
    attack = finding.extra.get("attack")
    loc = finding.location
    if not isinstance(attack, str) or not attack or loc is None or not loc.url or not loc.param:
        return None
    s = urlsplit(loc.url)
    method = (loc.method or "GET").upper()
    if not _METHOD.match(method):
        return None
    if method == "GET":
        query = s.query
        if attack not in query:
            query = "&".join(x for x in (query, urlencode({loc.param: attack}, quote_via=quote)) if x)
        return AttackRequest(
            method=method,
            path=(s.path or "/") + f"?{query}",
            oracle=oracle_for(finding, attack),
            source="zap attack",
        )
    return AttackRequest(
        method=method,
        path=s.path or "/",
        headers=(("Content-Type", "application/x-www-form-urlencoded"),),
        body=urlencode({loc.param: attack}, quote_via=quote),
        oracle=oracle_for(finding, attack),
        source="zap attack",
    )


def attack_requests(finding: Finding) -> tuple[AttackRequest, ...]:
    """Every replayable request for ``finding``, scanner evidence first; () when none can be built."""
    out: list[AttackRequest] = []
    oracle = oracle_for(
        finding, finding.extra.get("attack") if isinstance(finding.extra.get("attack"), str) else None
    )
    for key in ("http_request", "request"):
        raw = finding.extra.get(key)
        if isinstance(raw, str):
            req = parse_raw_request(raw, f"{finding.scanner} {key}")
            if req is not None:
                out.append(AttackRequest(req.method, req.path, req.headers, req.body, oracle, req.source))
                break
    if not out and isinstance(finding.extra.get("curl_command"), str):
        req = parse_curl(finding.extra["curl_command"])
        if req is not None:
            out.append(AttackRequest(req.method, req.path, req.headers, req.body, oracle, req.source))
    if not out:
        req = _zap_request(finding)
        if req is not None:
            out.append(req)
    probe = _probe(finding)
    if probe is not None and all(
        (probe.method, probe.path, probe.body) != (r.method, r.path, r.body) for r in out
    ):
        out.append(probe)
    # A request with an empty oracle could never be judged: leave it out.
    return tuple(r for r in out if r.oracle != Oracle())

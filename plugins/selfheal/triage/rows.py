"""Finding -> triage row: normalization, the content hash, and the COPY encoding.

Pure functions with no database handle, so the ingest pipeline runs them in
worker processes next to the parsers and the main process only relays bytes
to PostgreSQL.

The **content hash** (BLAKE2b-128 of the row's content columns, in their COPY
text encoding) is how a re-import recognizes an unchanged finding: the upsert
compares 32 hex characters instead of thirty columns and leaves unchanged
rows alone (no new tuple, no WAL, no index churn). It excludes the fingerprint
(the key), ``sources``/``rule_ids`` (merged separately, see store) and every
triage field (status, timestamps, priority), which the scanner does not own.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from typing import Any

from selfheal.findings.fingerprint import path_template
from selfheal.findings.limits import EVIDENCE_MAX_CHARS, SHORT_MAX_CHARS, clip
from selfheal.findings.model import KINDS, SEVERITIES, Finding

# (column, PostgreSQL type) of the values a scanner provides, in COPY order.
# ``fingerprint`` first and ``content_hash`` last; then MERGED_COLUMNS: sources
# and rule_ids (merged across duplicates) and ``merge_only`` (a later
# occurrence in the same batch: it adds its source but does not overwrite the
# content the batch's first occurrence wrote).
INCOMING_COLUMNS: tuple[tuple[str, str], ...] = (
    ("fingerprint", "varchar(128)"),  # the type of findings.fingerprint: no cast in the join
    ("service", "text"),
    ("scanner", "text"),
    ("kind", "text"),
    ("rule_id", "text"),
    ("cwe", "integer"),
    ("cves", "jsonb"),
    ("title", "text"),
    ("severity", "text"),
    ("confidence", "text"),
    ("cvss_vector", "text"),
    ("cvss_score", "double precision"),
    ("epss", "double precision"),
    ("kev", "boolean"),
    ("exploit_available", "boolean"),
    ("fix_available", "boolean"),
    ("method", "text"),
    ("path_template", "text"),
    ("param", "text"),
    ("url", "text"),
    ("host", "text"),
    ("port", "text"),
    ("line", "integer"),
    ("package_name", "text"),
    ("package_version", "text"),
    ("fixed_version", "text"),
    ("package_ecosystem", "text"),
    ("file_path", "text"),
    ("evidence", "text"),
    ("solution", "text"),
    ("content_hash", "text"),
)
MERGED_COLUMNS: tuple[tuple[str, str], ...] = (("sources", "jsonb"), ("rule_ids", "jsonb"), ("merge_only", "boolean"))
STAGE_COLUMNS = INCOMING_COLUMNS + MERGED_COLUMNS
INCOMING_NAMES: tuple[str, ...] = tuple(c for c, _ in INCOMING_COLUMNS)
#: Columns the owning scanner may overwrite when its content changes.
CONTENT_NAMES: tuple[str, ...] = INCOMING_NAMES[1:-1]
#: Scanner-provided threat intelligence: a later report without it keeps the known value.
KEEP_IF_NULL: frozenset[str] = frozenset({"epss", "kev", "exploit_available", "fix_available"})

TITLE_MAX = 1024
SOLUTION_MAX = 4096
NULL = "\\N"

_SEVERITIES = frozenset(SEVERITIES)
_KINDS = frozenset(KINDS)


def _clip(value: str | None, limit: int) -> str | None:
    # Parsers already clip (selfheal.findings.limits); this is the guard for
    # findings built elsewhere, so it costs one len() in the common case.
    if not value:
        return None
    if not isinstance(value, str):
        value = str(value)
    return value if len(value) <= limit else clip(value, limit)


def _score(value: float | None, top: float) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and 0.0 <= v <= top else None


def _flag(value: bool | None) -> bool | None:
    return value if value is True or value is False else None


def row_values(f: Finding, service: str | None = None) -> tuple[Any, ...]:
    """The content columns (CONTENT_NAMES order) for ``f``, bounded and typed.

    Raises ValueError for a finding the table cannot hold (no fingerprint,
    unknown severity or kind): those are parser bugs, not scanner input.
    """
    if not f.fingerprint:
        raise ValueError(f"{f.scanner}:{f.rule_id}: finding has no fingerprint")
    kind = f.kind
    if f.severity not in _SEVERITIES or kind not in _KINDS:
        raise ValueError(f"{f.scanner}:{f.rule_id}: bad severity {f.severity!r} or kind {kind!r}")
    loc = f.location
    pkg = f.package
    S = SHORT_MAX_CHARS
    method = path = param = url = host = port = line = None
    file_path = _clip(pkg.file_path, S) if pkg is not None else None
    if loc is not None:
        if loc.method:
            method = _clip(loc.method.upper(), 16)
        raw_path = loc.path
        if kind == "web":
            raw = raw_path or loc.url
            path = path_template(raw) if raw else None
        elif kind == "code":
            file_path = _clip(raw_path, S)
        else:
            path = _clip(raw_path, S)
        param, url, host, port = _clip(loc.param, S), _clip(loc.url, S), _clip(loc.host, S), _clip(loc.port, 32)
        ln = loc.line
        line = ln if type(ln) is int and -(2**31) < ln < 2**31 else None
    cwe = f.cwe if type(f.cwe) is int and 0 < f.cwe < 2**31 else None
    cves = f.cves
    if cves:
        cves = tuple(c for c in cves if isinstance(c, str) and len(c) < 32)
    return (
        _clip(service if service is not None else f.service, 128),
        _clip(f.scanner, 64) or "unknown",
        kind,
        _clip(f.rule_id, S) or "",
        cwe,
        cves or (),
        _clip(f.title, TITLE_MAX) or "",
        f.severity,
        _clip(f.confidence, 32),
        _clip(f.cvss_vector, 256),
        _score(f.cvss_score, 10.0),
        _score(f.epss, 1.0),
        _flag(f.kev),
        _flag(f.exploit_available),
        _flag(f.fix_available),
        method,
        path if path is None or len(path) <= S else clip(path, S),
        param,
        url,
        host,
        port,
        line,
        _clip(pkg.name, S) if pkg is not None else None,
        _clip(pkg.version, 256) if pkg is not None else None,
        _clip(pkg.fixed_version, 256) if pkg is not None else None,
        _clip(pkg.ecosystem, 64) if pkg is not None else None,
        file_path,
        _clip(f.evidence, EVIDENCE_MAX_CHARS) or "",
        _clip(f.solution, SOLUTION_MAX) or "",
    )


def _escape(s: str) -> str:
    # PostgreSQL COPY text format: backslash, tab, newline and CR are the only
    # specials. Hand-written because the workers have no connection to borrow
    # psycopg's (private) row formatter from.
    if "\\" in s:
        s = s.replace("\\", "\\\\")
    if "\t" in s:
        s = s.replace("\t", "\\t")
    if "\n" in s:
        s = s.replace("\n", "\\n")
    if "\r" in s:
        s = s.replace("\r", "\\r")
    return s


def encode(value: Any) -> str:
    """One value in COPY text format."""
    if value is None:
        return NULL
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, str):
        return _escape(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list | frozenset | set):
        return _escape(json.dumps(sorted(value) if isinstance(value, frozenset | set) else list(value)))
    raise TypeError(f"cannot COPY-encode {type(value).__name__}")


def _fast_line(values: tuple[Any, ...]) -> str | None:
    """The COPY encoding of ``values`` in a constant number of C-level string
    operations: join with NUL as the separator and SOH for NULL, escape the
    whole line once, then turn NUL/SOH into tab and ``\\N``. Returns None when a
    value itself contains NUL or SOH (then ``encode`` per value is used)."""
    parts = []
    nulls = 0
    for v in values:
        t = type(v)
        if t is str:
            parts.append(v)
        elif v is None:
            parts.append("\x01")
            nulls += 1
        elif t is bool:
            parts.append("t" if v else "f")
        elif t is int or t is float:
            parts.append(repr(v))
        elif t is tuple:
            parts.append(json.dumps(v) if v else "[]")
        else:
            return None
    s = "\x00".join(parts)
    if s.count("\x00") != len(parts) - 1 or s.count("\x01") != nulls:
        return None
    if "\\" in s:
        s = s.replace("\\", "\\\\")
    if "\t" in s:
        s = s.replace("\t", "\\t")
    if "\n" in s:
        s = s.replace("\n", "\\n")
    if "\r" in s:
        s = s.replace("\r", "\\r")
    s = s.replace("\x00", "\t")
    return s.replace("\x01", NULL) if nulls else s


def encode_line(values: tuple[Any, ...]) -> str:
    """Tab-separated COPY text line of ``values`` (no newline). NUL characters,
    which PostgreSQL text cannot hold, become U+FFFD."""
    line = _fast_line(values)
    if line is None:
        line = "\t".join(encode(v.replace("\x00", "\ufffd") if type(v) is str else v) for v in values)
    return line


# A row travels from the parser workers to the database loop as a plain tuple
# (cheap to pickle): (fingerprint, data, sources, rule_ids) where ``data`` is
# either the complete COPY line (``copy_rows``) or (values, content_hash)
# (``value_rows``). sources / rule_ids: frozensets of scanner names and
# "scanner:rule_id" of every occurrence merged into the row.
Row = tuple[str, Any, frozenset[str], frozenset[str]]


def _encoded(f: Finding, service: str | None) -> tuple[tuple[Any, ...], bytes, str]:
    values = row_values(f, service)
    text = encode_line(values).encode("utf-8", "surrogatepass")
    if len(f.fingerprint) > 128:
        raise ValueError(f"{f.scanner}:{f.rule_id}: fingerprint longer than 128 characters")
    return values, text, hashlib.blake2b(text, digest_size=16).hexdigest()


def _merged(findings: Iterable[Finding], service: str | None) -> dict[str, list[Any]]:
    # One entry per fingerprint: the first occurrence wins, later ones only add
    # their source (and are not encoded at all).
    merged: dict[str, list[Any]] = {}
    for f in findings:
        have = merged.get(f.fingerprint)
        if have is None:
            values, text, digest = _encoded(f, service)
            merged[f.fingerprint] = [values, text, digest, {values[1]}, {f"{values[1]}:{values[3]}"}]
        else:
            scanner = _clip(f.scanner, 64) or "unknown"
            have[3].add(scanner)
            have[4].add(f"{scanner}:{_clip(f.rule_id, SHORT_MAX_CHARS) or ''}")
    return merged


# The NULL placeholder of the fused encoder: built at run time so that it is a
# distinct object (markers are counted by identity: a one-character string
# would be CPython's shared singleton, the same object as a scanner's "\x01").
_NULL_MARK = "".join(["\x01", "\x01"])


def _fast_copy_text(f: Finding, service: str | None) -> str | None:
    """``encode_line(row_values(f, service))`` for the common case, fused into one
    pass of inline expressions (the ingest benchmark's hot loop: about three
    times faster than building the tuple and encoding it). Returns None when the
    finding needs the careful path: a value over its bound, a NUL or SOH
    character, an unexpected type. Kept identical to the reference by a test."""
    kind = f.kind
    if f.severity not in _SEVERITIES or kind not in _KINDS or not f.fingerprint:
        return None
    X = _NULL_MARK
    loc = f.location
    pkg = f.package
    svc = service if service is not None else f.service
    scanner = f.scanner
    title = f.title
    evidence = f.evidence
    solution = f.solution
    conf = f.confidence
    vector = f.cvss_vector
    if (
        (svc and len(svc) > 128)
        or not scanner
        or len(scanner) > 64
        or len(title) > TITLE_MAX
        or len(evidence) > EVIDENCE_MAX_CHARS
        or len(solution) > SOLUTION_MAX
        or len(f.rule_id) > SHORT_MAX_CHARS
        or (conf and len(conf) > 32)
        or (vector and len(vector) > 256)
    ):
        return None
    score = f.cvss_score
    epss = f.epss
    cwe = f.cwe
    cves = f.cves
    if score is not None and (type(score) is not float or not 0.0 <= score <= 10.0):
        return None
    if epss is not None and (type(epss) is not float or not 0.0 <= epss <= 1.0):
        return None
    if cwe is not None and (type(cwe) is not int or not 0 < cwe < 2**31):
        return None
    kev, exploit, fix = f.kev, f.exploit_available, f.fix_available
    parts = [
        svc or X,
        scanner,
        kind,
        f.rule_id,
        X if cwe is None else repr(cwe),
        json.dumps(cves) if cves else "[]",
        title,
        f.severity,
        conf or X,
        vector or X,
        X if score is None else repr(score),
        X if epss is None else repr(epss),
        X if kev is None else ("t" if kev is True else "f" if kev is False else None),
        X if exploit is None else ("t" if exploit is True else "f" if exploit is False else None),
        X if fix is None else ("t" if fix is True else "f" if fix is False else None),
    ]
    if cves and not all(type(c) is str and len(c) < 32 for c in cves):
        return None
    file_path = pkg.file_path if pkg is not None else None
    if loc is None:
        parts += (X, X, X, X, X, X, X)
    else:
        method, path, param, url, host, port, line = (
            loc.method,
            loc.path,
            loc.param,
            loc.url,
            loc.host,
            loc.port,
            loc.line,
        )
        if method:
            method = method.upper()
        if kind == "web":
            raw = path or url
            path = path_template(raw) if raw else None
        elif kind == "code":
            file_path, path = path, None
        if (
            (method and len(method) > 16)
            or (port and len(port) > 32)
            or (path and len(path) > SHORT_MAX_CHARS)
            or (param and len(param) > SHORT_MAX_CHARS)
            or (url and len(url) > SHORT_MAX_CHARS)
            or (host and len(host) > SHORT_MAX_CHARS)
            or (line is not None and (type(line) is not int or not -(2**31) < line < 2**31))
        ):
            return None
        parts += (
            method or X,
            path or X,
            param or X,
            url or X,
            host or X,
            port or X,
            X if line is None else repr(line),
        )
    if file_path and len(file_path) > SHORT_MAX_CHARS:
        return None
    if pkg is None:
        parts += (X, X, X, X, file_path or X)
    else:
        name, version, fixed, eco = pkg.name, pkg.version, pkg.fixed_version, pkg.ecosystem
        if (
            (name and len(name) > SHORT_MAX_CHARS)
            or (version and len(version) > 256)
            or (fixed and len(fixed) > 256)
            or (eco and len(eco) > 64)
        ):
            return None
        parts += (name or X, version or X, fixed or X, eco or X, file_path or X)
    parts.append(evidence)
    parts.append(solution)
    try:
        text = "\x00".join(parts)
    except TypeError:  # a non-string where a string belongs (a bool flag that is not a bool, ...)
        return None
    # Every separator and NULL marker accounted for: no value holds NUL or SOH.
    if text.count("\x00") != 28 or text.count("\x01") != 2 * len([p for p in parts if p is X]):
        return None
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\t" in text:
        text = text.replace("\t", "\\t")
    if "\n" in text:
        text = text.replace("\n", "\\n")
    if "\r" in text:
        text = text.replace("\r", "\\r")
    return text.replace("\x00", "\t").replace(_NULL_MARK, NULL)


def copy_rows(findings: Iterable[Finding], service: str | None) -> list[Row]:
    """Rows for one report with their complete staging COPY line (merge_only = f).

    One per fingerprint: the first occurrence wins, later ones only add their
    source (and are not encoded at all)."""
    first: dict[str, list[Any]] = {}
    for f in findings:
        fp = f.fingerprint
        have = first.get(fp)
        if have is None:
            text = _fast_copy_text(f, service)
            if text is None:
                values = row_values(f, service)
                text = encode_line(values)
                scanner, rule_id = values[1], values[3]
            else:
                scanner, rule_id = f.scanner, f.rule_id
            if len(fp) > 128:
                raise ValueError(f"{f.scanner}:{f.rule_id}: fingerprint longer than 128 characters")
            first[fp] = [text, scanner, f"{scanner}:{rule_id}", None]
        else:
            scanner = _clip(f.scanner, 64) or "unknown"
            key = f"{scanner}:{_clip(f.rule_id, SHORT_MAX_CHARS) or ''}"
            if have[3] is None:
                have[3] = ({have[1]}, {have[2]})
            have[3][0].add(scanner)
            have[3][1].add(key)
    out: list[Row] = []
    blake2b = hashlib.blake2b
    singles = _SINGLES
    for fp, (text, scanner, rule_key, merged) in first.items():
        data = text.encode("utf-8", "surrogatepass")
        digest = blake2b(data, digest_size=16).hexdigest().encode()
        if merged is None:
            src = singles.get(scanner) or singles.setdefault(scanner, frozenset((scanner,)))
            rules = frozenset((rule_key,))
        else:
            src, rules = frozenset(merged[0]), frozenset(merged[1])
        head = fp.encode("utf-8", "surrogatepass") if fp.isalnum() else _escape(fp).encode("utf-8", "surrogatepass")
        out.append((fp, b"%s\t%s\t%s\t%s\t%s\tf\n" % (head, data, digest, json_set(src), json_set(rules)), src, rules))
    return out


_SINGLES: dict[str, frozenset[str]] = {}


def value_rows(findings: Iterable[Finding], service: str | None) -> list[Row]:
    """Rows for one report as Python values (the portable, non-COPY path)."""
    return [
        (fp, (values, digest), frozenset(src), frozenset(rules))
        for fp, (values, _text, digest, src, rules) in _merged(findings, service).items()
    ]


def merged_tail(sources: frozenset[str], rule_ids: frozenset[str], merge_only: bool) -> bytes:
    """The COPY encoding of the columns after content_hash: sources, rule_ids, merge_only."""
    return b"\t%s\t%s\t%s" % (json_set(sources), json_set(rule_ids), b"t" if merge_only else b"f")


def relined(
    line: bytes,
    old: tuple[frozenset[str], frozenset[str]],
    new: tuple[frozenset[str], frozenset[str]],
    merge_only: bool,
) -> bytes:
    """``line`` (from copy_rows) with other sources / rule ids / merge_only."""
    tail = merged_tail(old[0], old[1], False) + b"\n"
    return line[: len(line) - len(tail)] + merged_tail(new[0], new[1], merge_only) + b"\n"


_JSON_CACHE: dict[frozenset[str], bytes] = {}


def json_set(values: frozenset[str]) -> bytes:
    """Sorted JSON array of ``values`` in COPY encoding (cached: few distinct sets repeat)."""
    out = _JSON_CACHE.get(values)
    if out is None:
        out = encode(values).encode("utf-8", "surrogatepass")
        if len(_JSON_CACHE) < 65536:
            _JSON_CACHE[values] = out
    return out

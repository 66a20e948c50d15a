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
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from selfheal.findings.fingerprint import path_template
from selfheal.findings.limits import EVIDENCE_MAX_CHARS, SHORT_MAX_CHARS, clip
from selfheal.findings.model import KINDS, SEVERITIES, Finding

# (column, PostgreSQL type) of the values a scanner provides, in COPY order.
# ``fingerprint`` first and ``content_hash`` last; then MERGED_COLUMNS: sources
# and rule_ids (merged across duplicates) and ``merge_only`` (a later
# occurrence in the same batch: it adds its source but does not overwrite the
# content the batch's first occurrence wrote); then ``known_id``, the id of
# the stored row the classifying probe found (NULL: a new finding).
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
STAGE_COLUMNS = INCOMING_COLUMNS + MERGED_COLUMNS + (("known_id", "bigint"),)
#: The narrow staging row every incoming finding gets: enough to decide whether
#: the stored row already says it all (a merge-only row proposes scanner '').
KEY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("fingerprint", "varchar(128)"),
    ("scanner", "text"),
    ("content_hash", "text"),
    ("sources", "jsonb"),
    ("rule_ids", "jsonb"),
)
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


escape = _escape  # public: the store escapes fingerprints with it


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


# On the portable path a row travels from the parser workers to the database
# loop as a plain tuple: (fingerprint, (values, content_hash), sources,
# rule_ids); sources / rule_ids: frozensets of scanner names and
# "scanner:rule_id" of every occurrence merged into the row. The COPY path
# ships a whole report as one Encoded instead.
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


# Printable ASCII but the quote and the backslash: what json.dumps writes as is.
_JSON_PLAIN = re.compile(r"[ !#-\[\]-~]*")


def _cves_json(cves: Any) -> str | None:
    """``json.dumps(list(cves))`` for CVE ids (None if one is not a short string):
    plain ids are joined directly, json.dumps costs more than the rest of a row."""
    for c in cves:
        if type(c) is not str or len(c) >= 32:
            return None
    if _JSON_PLAIN.fullmatch("".join(cves)) is None:
        return json.dumps(list(cves))
    return '["' + '", "'.join(cves) + '"]'


def _fast_copy_text(f: Finding, service: str | None) -> str | None:
    """``encode_line(row_values(f, service))`` for the common case, fused into one
    pass of inline expressions (the ingest benchmark's hot loop: about three
    times faster than building the tuple and encoding it). Returns None when the
    finding needs the careful path: a value over its bound, a NUL or SOH
    character, an unexpected type. Kept identical to the reference by a test.

    Bounds: the small ones (service, scanner, confidence, vector, method, port,
    versions, ecosystem) are checked per value; the large ones (title 1024,
    identifiers, URLs and paths 2048, evidence and solution 4096) only when the
    whole line is longer than the smallest of them, which a typical row is not."""
    kind = f.kind
    if f.severity not in _SEVERITIES or kind not in _KINDS or not f.fingerprint:
        return None
    X = _NULL_MARK
    svc = service if service is not None else f.service
    scanner = f.scanner
    conf = f.confidence
    vector = f.cvss_vector
    if (
        not scanner
        or len(scanner) > 64
        or (svc and len(svc) > 128)
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
    if cves:
        cves_json = _cves_json(cves)
        if cves_json is None:
            return None
    else:
        cves_json = "[]"
    kev, exploit, fix = f.kev, f.exploit_available, f.fix_available
    # NULL markers are counted as they are placed (checked after the join)
    nulls = (
        (not svc) + (cwe is None) + (not conf) + (not vector) + (score is None) + (epss is None)
        + (kev is None) + (exploit is None) + (fix is None)
    )
    loc = f.location
    pkg = f.package
    file_path = pkg.file_path if pkg is not None else None
    if loc is None:
        tail: tuple[str | None, ...] = (X, X, X, X, X, X, X)
        nulls += 7
    else:
        method, path, param, url, host, port, line = (
            loc.method, loc.path, loc.param, loc.url, loc.host, loc.port, loc.line,
        )
        if method:
            method = method.upper()
            if len(method) > 16:
                return None
        if kind == "web":
            raw = path or url
            path = path_template(raw) if raw else None
        elif kind == "code":
            file_path, path = path, None
        if (port and len(port) > 32) or (line is not None and (type(line) is not int or not -(2**31) < line < 2**31)):
            return None
        tail = (
            method or X, path or X, param or X, url or X, host or X, port or X, X if line is None else repr(line),
        )
        nulls += (not method) + (not path) + (not param) + (not url) + (not host) + (not port) + (line is None)
    if pkg is None:
        tail += (X, X, X, X, file_path or X)
        nulls += 4 + (not file_path)
        name = None
    else:
        name, version, fixed, eco = pkg.name, pkg.version, pkg.fixed_version, pkg.ecosystem
        if (version and len(version) > 256) or (fixed and len(fixed) > 256) or (eco and len(eco) > 64):
            return None
        tail += (name or X, version or X, fixed or X, eco or X, file_path or X)
        nulls += (not name) + (not version) + (not fixed) + (not eco) + (not file_path)
    title = f.title
    evidence = f.evidence
    solution = f.solution
    rule_id = f.rule_id
    try:
        text = "\x00".join(
            (
                svc or X,
                scanner,
                kind,
                rule_id,
                X if cwe is None else repr(cwe),
                cves_json,
                title,
                f.severity,
                conf or X,
                vector or X,
                X if score is None else repr(score),
                X if epss is None else repr(epss),
                X if kev is None else ("t" if kev is True else "f" if kev is False else None),  # type: ignore[arg-type]
                X if exploit is None else ("t" if exploit is True else "f" if exploit is False else None),  # type: ignore[arg-type]
                X if fix is None else ("t" if fix is True else "f" if fix is False else None),  # type: ignore[arg-type]
                *tail,
                evidence,
                solution,
            )
        )
    except TypeError:  # a non-string where a string belongs (a bool flag that is not a bool, ...)
        return None
    if len(text) > TITLE_MAX:  # one of the large bounds may be exceeded: check them
        S = SHORT_MAX_CHARS
        if (
            len(title) > TITLE_MAX
            or len(evidence) > EVIDENCE_MAX_CHARS
            or len(solution) > SOLUTION_MAX
            or len(rule_id) > S
            or any(v is not X and len(v) > S for v in tail)  # type: ignore[arg-type]
        ):
            return None
    # Every separator and NULL marker accounted for: no value holds NUL or SOH.
    if text.count("\x00") != 28 or text.count("\x01") != 2 * nulls:
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


#: The COPY suffix of a staged row that is new to the batch: ``merge_only`` false,
#: ``known_id`` NULL (see store._stage); most rows are staged with exactly this.
STAGE_TAIL = b"\tf\t\\N\n"


@dataclass(slots=True)
class Encoded:
    """One report's rows for the PostgreSQL path: one per fingerprint (the first
    occurrence wins; later ones only add their source and are not encoded).

    Flat lists of str / bytes / int: the trip from a parser worker to the
    database loop is cheap to pickle, and the loop copies lines without
    looking inside them. Row ``i``:

    * ``keys[i]``: its KEY_COLUMNS line (no newline), for the narrow classifying COPY;
    * ``lines[i]``: its STAGE_COLUMNS line up to ``rule_ids``, then STAGE_TAIL
      (``merge_only`` f, ``known_id`` NULL, newline): staged as is when the row
      is new to the table and the batch, only when it is new or changed;
    * ``tagsets[tags[i]]``: its (sources, rule_ids); a report has few distinct ones.
    """

    fps: list[str]
    keys: list[bytes]
    lines: list[bytes]
    tags: list[int]
    tagsets: list[tuple[frozenset[str], frozenset[str]]]

    def sets(self, i: int) -> tuple[frozenset[str], frozenset[str]]:
        return self.tagsets[self.tags[i]]


def _tag_tails(owner_scanner: str, sets: tuple[frozenset[str], frozenset[str]]) -> tuple[bytes, bytes]:
    """(key line middle ``\\tscanner\\t``, ``\\tsources\\trule_ids``) of one tag."""
    return (
        b"\t%s\t" % _escape(owner_scanner).encode("utf-8", "surrogatepass"),
        b"\t%s\t%s" % (json_set(sets[0]), json_set(sets[1])),
    )


def encode_report(findings: Iterable[Finding], service: str | None) -> Encoded:
    """The COPY lines of one report's findings (see Encoded), in one pass: rows are
    encoded with the owner's own (sources, rule_ids); the few that a later
    occurrence merges into are re-tagged at the end."""
    first: dict[str, int] = {}
    fps: list[str] = []
    keys: list[bytes] = []
    lines: list[bytes] = []
    tags: list[int] = []
    tagsets: list[tuple[frozenset[str], frozenset[str]]] = []
    tails: list[tuple[bytes, bytes]] = []
    owners: list[tuple[str, str]] = []  # per tag: (scanner, rule_id) of the owner
    tag_of: dict[Any, int] = {}
    merged: dict[int, tuple[set[str], set[str]]] = {}
    hasher = _CONTENT_HASH.copy  # a copy of a configured hasher: no keyword parsing per row
    fast = _fast_copy_text
    stage_tail = STAGE_TAIL
    for f in findings:
        fp = f.fingerprint
        i = first.get(fp)
        if i is None:
            text = fast(f, service)
            if text is None:
                values = row_values(f, service)
                text = encode_line(values)
                owner = (values[1], values[3])
            else:
                owner = (f.scanner, f.rule_id)
            if len(fp) > 128:
                raise ValueError(f"{f.scanner}:{f.rule_id}: fingerprint longer than 128 characters")
            data = text.encode("utf-8", "surrogatepass")
            h = hasher()
            h.update(data)
            digest = h.hexdigest().encode()
            fpb = fp.encode() if fp.isalnum() else _escape(fp).encode("utf-8", "surrogatepass")
            t = tag_of.get(owner)
            if t is None:
                t = tag_of[owner] = len(tagsets)
                sets = (frozenset((owner[0],)), frozenset((f"{owner[0]}:{owner[1]}",)))
                tagsets.append(sets)
                tails.append(_tag_tails(owner[0], sets))
                owners.append(owner)
            middle, tail = tails[t]
            first[fp] = len(fps)
            fps.append(fp)
            tags.append(t)
            lines.append(b"%s\t%s\t%s%s%s" % (fpb, data, digest, tail, stage_tail))
            keys.append(b"%s%s%s%s" % (fpb, middle, digest, tail))
            continue
        scanner = _clip(f.scanner, 64) or "unknown"
        rule_id = _clip(f.rule_id, SHORT_MAX_CHARS) or ""
        have = merged.get(i)
        if have is None:
            owner = owners[tags[i]]
            if scanner == owner[0] and rule_id == owner[1]:
                continue  # the same source again: nothing to merge
            have = merged[i] = ({owner[0]}, {f"{owner[0]}:{owner[1]}"})
        have[0].add(scanner)
        have[1].add(f"{scanner}:{rule_id}")
    for i, (src, rules) in merged.items():
        owner = owners[tags[i]]
        tkey = (owner[0], owner[1], frozenset(src), frozenset(rules))
        t = tag_of.get(tkey)
        if t is None:
            t = tag_of[tkey] = len(tagsets)
            sets = (tkey[2], tkey[3])
            tagsets.append(sets)
            tails.append(_tag_tails(owner[0], sets))
            owners.append(owner)
        tail = tails[t][1]
        tags[i] = t
        lines[i] = b"%s%s%s" % (lines[i].rsplit(b"\t", 4)[0], tail, stage_tail)
        keys[i] = b"%s%s" % (keys[i].rsplit(b"\t", 2)[0], tail)
    return Encoded(fps, keys, lines, tags, tagsets)


def value_rows(findings: Iterable[Finding], service: str | None) -> list[Row]:
    """Rows for one report as Python values (the portable, non-COPY path)."""
    return [
        (fp, (values, digest), frozenset(src), frozenset(rules))
        for fp, (values, _text, digest, src, rules) in _merged(findings, service).items()
    ]


def rekey(key: bytes, sets: tuple[frozenset[str], frozenset[str]], merge_only: bool) -> bytes:
    """``key`` (an Encoded key line) with other sources / rule ids; a merge-only
    row (its fingerprint was staged earlier in the batch) proposes scanner ''
    so that it never counts as the owner."""
    fp, scanner, digest, _ = key.split(b"\t", 3)
    return b"%s\t%s\t%s\t%s\t%s" % (fp, b"" if merge_only else scanner, digest, json_set(sets[0]), json_set(sets[1]))


def reline(line: bytes, sets: tuple[frozenset[str], frozenset[str]]) -> bytes:
    """``line`` (an Encoded line) with other sources / rule ids, up to ``rule_ids``
    (without STAGE_TAIL)."""
    return b"%s\t%s\t%s" % (line.rsplit(b"\t", 4)[0], json_set(sets[0]), json_set(sets[1]))


def unstaged(line: bytes) -> bytes:
    """``line`` (an Encoded line) up to ``rule_ids``, without STAGE_TAIL."""
    return line[: -len(STAGE_TAIL)]


#: BLAKE2b-128, the content hash (copied per row).
_CONTENT_HASH = hashlib.blake2b(digest_size=16)

_JSON_CACHE: dict[frozenset[str], bytes] = {}


def json_set(values: frozenset[str]) -> bytes:
    """Sorted JSON array of ``values`` in COPY encoding (cached: few distinct sets repeat)."""
    out = _JSON_CACHE.get(values)
    if out is None:
        items = sorted(values)
        if items and _JSON_PLAIN.fullmatch("".join(items)) is not None:  # nothing to escape for JSON or COPY
            out = ('["' + '", "'.join(items) + '"]').encode()
        else:
            out = encode(values).encode("utf-8", "surrogatepass")
        if len(_JSON_CACHE) < 65536:
            _JSON_CACHE[values] = out
    return out

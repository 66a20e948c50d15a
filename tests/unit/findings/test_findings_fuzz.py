"""Property-based fuzzing: whatever the bytes, a parser returns findings or raises ParseError.

The fuzz targets call ``_iter_unguarded``: the pipeline without the
last-resort guard that turns unexpected exceptions into ParseError, so a
parser bug fails here as the bug it is (KeyError, TypeError, ...). Inputs:
the real samples mutated byte-wise and structurally, and random JSON/XML
trees built from each format's vocabulary so that they reach deep into the
parsers rather than failing at the first key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfheal.findings.limits import EVIDENCE_MAX_CHARS, SHORT_MAX_CHARS, TEXT_MAX_CHARS, TITLE_MAX_CHARS
from selfheal.findings.model import KINDS, SEVERITIES, Finding, ParseError
from selfheal.findings.parsers import FORMATS, _iter_unguarded

SAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "scanner-samples"
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

JSON_SAMPLES = {
    "zap-api": "handmade/zap_api_alerts.json",
    "zap-json": "handmade/zap_traditional.json",
    "inspector2": "handmade/inspector2_mixed.json",
    "wapiti-json": "handmade/wapiti_report.json",
    "sarif": "handmade/sarif_codeql.sarif",
}
XML_SAMPLES = {
    "zap-xml": "zap/some_2.9.0.xml",
    "gmp-xml": "openvas/one_vuln.xml",
    "wapiti-xml": "wapiti/cwe.xml",
    "wapiti-xml-3.2.3": "wapiti-3.2.3/report.xml",
}
ALL_SAMPLES = {**JSON_SAMPLES, **XML_SAMPLES, "sarif-dc": "sarif/dependency_check.sarif",
               "inspector-real": "aws_inspector2/aws_inspector2_package_vuln_metadata.json",
               "zap-xml-plus": "zap/zap-xml-plus-format.xml"}
_BYTES = {name: (SAMPLES / rel).read_bytes() for name, rel in ALL_SAMPLES.items()}
_MARKER_ROOM = 40


def check(data: bytes, fmt: str = "auto") -> None:
    """The property: findings that are well-formed and bounded, or a one-line ParseError."""
    try:
        for f in _iter_unguarded(data, "fuzz", fmt, "svc"):
            assert isinstance(f, Finding)
            assert f.severity in SEVERITIES and f.kind in KINDS
            assert len(f.fingerprint) == 64 and f.service == "svc"
            assert f.cwe is None or isinstance(f.cwe, int)
            assert len(f.evidence) <= EVIDENCE_MAX_CHARS + _MARKER_ROOM
            assert len(f.description) <= TEXT_MAX_CHARS + _MARKER_ROOM
            assert len(f.solution) <= TEXT_MAX_CHARS + _MARKER_ROOM
            assert len(f.title) <= TITLE_MAX_CHARS + _MARKER_ROOM
            assert len(f.rule_id) <= SHORT_MAX_CHARS + _MARKER_ROOM
            msgspec.json.encode(f.to_dict())  # the CLI line: must always encode
    except ParseError as exc:
        assert exc.source == "fuzz"
        assert exc.problem and "\n" not in exc.problem


# ----------------------------------------------------------------------------- byte mutations


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "duplicate"]))
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 64))]
        elif op == "insert":
            data[i:i] = draw(st.sampled_from([b"{", b"}", b"[", b"]", b'"', b",", b"<", b">", b"</", b"&", b"\x00",
                                              b"\xff", b"&amp;", b"<![CDATA[", b"null", b"-1", b"1e999"]))
        elif op == "truncate":
            del data[i:]
        else:
            j = draw(st.integers(i, min(len(data), i + 200)))
            data[j:j] = data[i:j]
    return bytes(data)


@pytest.mark.parametrize("name", sorted(ALL_SAMPLES))
def test_fuzz_byte_mutations(name):
    base = _BYTES[name]
    fmt = next((f for f in FORMATS if name.startswith(f)), "auto")  # e.g. "sarif-dc" -> sarif

    @FUZZ
    @given(data=mutated(base))
    def run(data: bytes) -> None:
        check(data, fmt)
        check(data, "auto")

    run()


# ----------------------------------------------------------------------------- structural JSON mutations

JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40), st.sampled_from(["", "-1", "0", "3", "High", "CVE-2024-1234", "CWE-89", "http://h/1?x",
                                           "NotAvailable", "PACKAGE_VULNERABILITY", "error", "pass", "2.1.0"]),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=12), children, max_size=4)),
    max_leaves=12,
)


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every node's path in a decoded JSON document."""
    out = [prefix]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, (*prefix, i))
    return out


def _replace(tree: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, dict) and head in tree:
        return {**tree, head: _replace(tree[head], rest, value)}
    if isinstance(tree, list) and isinstance(head, int) and head < len(tree):
        return [*tree[:head], _replace(tree[head], rest, value), *tree[head + 1 :]]
    return tree


def _get(tree: Any, path: tuple) -> Any:
    for step in path:
        tree = tree[step]
    return tree


@st.composite
def mutated_tree(draw: st.DrawFn, tree: Any, paths: list[tuple]) -> Any:
    """A decoded sample with a few changes: mostly a scalar leaf replaced by a
    scalar of another type or value (keeps the document decodable, so the
    parser's own logic is exercised), sometimes a member removed or any node
    replaced by a random JSON tree."""
    leaves = [p for p in paths if not isinstance(_get(tree, p), (dict, list))] or paths
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.integers(0, 9))
        path = draw(st.sampled_from(leaves if action >= 3 else paths))
        try:
            parent = _get(tree, path[:-1]) if path else None
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation replaced an ancestor
        if action <= 1 and path and isinstance(parent, dict):
            tree = _replace(tree, path[:-1], {k: v for k, v in parent.items() if k != path[-1]})
        elif action == 2:
            tree = _replace(tree, path, draw(JSON_VALUES))
        else:
            tree = _replace(tree, path, draw(JSON_SCALARS))
    return tree


@pytest.mark.parametrize("fmt", sorted(JSON_SAMPLES))
def test_fuzz_json_structure(fmt):
    tree = json.loads(_BYTES[fmt])
    paths = _paths(tree)

    @FUZZ
    @given(doc=mutated_tree(tree, paths))
    def run(doc: Any) -> None:
        data = json.dumps(doc).encode()
        check(data, fmt)
        check(data, "auto")

    run()


VOCAB = {
    "zap-api": ["alerts"],
    "zap-json": ["site", "@name", "alerts", "instances", "uri", "riskcode", "tags"],
    "inspector2": ["findings", "__type", "type", "packageVulnerabilityDetails", "vulnerablePackages", "resources",
                   "networkReachabilityDetails", "openPortRange", "codeVulnerabilityDetails", "filePath",
                   "vulnerabilityId", "name", "version", "epoch", "release", "fixedInVersion", "packageManager",
                   "inspectorScore", "cvss", "begin", "end", "cwes", "startLine"],
    "wapiti-json": ["vulnerabilities", "classifications", "anomalies", "additionals", "infos", "ref", "target"],
    "sarif": ["version", "runs", "results", "tool", "driver", "rules", "locations", "physicalLocation",
              "artifactLocation", "region", "artifacts", "properties", "message", "ruleIndex", "rule"],
}


def vocab_json(keys: list[str]) -> st.SearchStrategy[Any]:
    """Objects three levels deep keyed by the format's own member names, so the
    parser gets past detection. Fixed depth: st.recursive is slow to draw."""
    key = st.sampled_from(keys)
    scalar = JSON_SCALARS
    level3 = st.dictionaries(key, scalar, max_size=4)
    level2 = st.dictionaries(key, scalar | level3 | st.lists(level3, max_size=3), max_size=4)
    return st.dictionaries(key, scalar | level2 | st.lists(level2, max_size=3), min_size=1, max_size=3)


@pytest.mark.parametrize("fmt", sorted(VOCAB))
def test_fuzz_random_json_trees(fmt):
    @FUZZ
    @given(doc=vocab_json(VOCAB[fmt]))
    def run(doc: Any) -> None:
        data = json.dumps(doc).encode()
        check(data, fmt)
        check(data, "auto")

    run()


# ----------------------------------------------------------------------------- random XML trees

XML_TAGS = {
    "zap-xml": ["OWASPZAPReport", "site", "alerts", "alertitem", "pluginid", "alertRef", "name", "alert", "riskcode",
                "confidence", "desc", "instances", "instance", "uri", "method", "param", "attack", "evidence",
                "otherinfo", "requestheader", "requestbody", "solution", "reference", "cweid", "wascid", "tags",
                "tag", "link"],
    "gmp-xml": ["get_reports_response", "report", "results", "result", "host", "hostname", "port", "nvt", "name",
                "refs", "ref", "severity", "severities", "value", "threat", "qod", "tags", "solution",
                "description", "epss", "max_epss", "score", "delta", "cve"],
    "wapiti-xml": ["report", "report_infos", "info", "vulnerabilities", "vulnerability", "anomalies", "anomaly",
                   "additionals", "additional", "description", "solution", "references", "reference", "title",
                   "url", "entries", "entry", "method", "path", "level", "parameter", "http_request", "module",
                   "wstg", "code"],
}
XML_ATTRS = ["name", "oid", "type", "id", "status", "status_text", "content_type", "format_id", "score", "host"]
XML_TEXT = st.text(max_size=30) | st.sampled_from(["1", "-1", "9.8", "cve", "CVE-2024-1", "http://h/a/1?b", "GET",
                                                   "security", "text/xml", "200", "3", "CWE-89: x", ""])


def xml_elements(tags: list[str]) -> st.SearchStrategy[str]:
    """Element trees three levels deep (four with the root) over a format's tag names (fixed depth:
    st.recursive is slow to draw)."""

    def element(children: st.SearchStrategy[list[str]]) -> st.SearchStrategy[str]:
        return st.builds(
            lambda tag, attrs, text, kids: (
                f"<{tag}{''.join(f' {k}={quoteattr(v)}' for k, v in attrs.items())}>{escape(text)}"
                f"{''.join(kids)}</{tag}>"
            ),
            st.sampled_from(tags), st.dictionaries(st.sampled_from(XML_ATTRS), XML_TEXT, max_size=2), XML_TEXT,
            children,
        )

    tree = element(st.just([]))
    for _ in range(2):
        tree = element(st.lists(tree, max_size=3))
    return tree


@pytest.mark.parametrize("fmt", sorted(XML_TAGS))
def test_fuzz_random_xml_trees(fmt):
    roots = {"zap-xml": "OWASPZAPReport", "gmp-xml": "report", "wapiti-xml": "report"}

    @FUZZ
    @given(body=st.lists(xml_elements(XML_TAGS[fmt]), max_size=2), attrs=st.sampled_from(
        ["", ' type="security"', ' id="r" content_type="text/xml"', ' status="200"']))
    def run(body: list[str], attrs: str) -> None:
        root = roots[fmt]
        data = f"<{root}{attrs}>{''.join(body)}</{root}>".encode()
        check(data, fmt)
        check(data, "auto")

    run()

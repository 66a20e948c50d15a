"""Hostile and broken input: every failure is a ParseError naming the input, nothing else.

Scanner output is attacker-controlled (a compromised target writes the
evidence; a compromised scanner writes everything), so these are the cases a
real adversary would try: truncation, wrong formats, XML entity attacks,
invalid UTF-8, huge fields, huge reports, deep nesting.
"""

from __future__ import annotations

import json
import threading
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from selfheal.findings import detect_format, parse_bytes
from selfheal.findings import parsers as parsers_pkg
from selfheal.findings.limits import EVIDENCE_MAX_CHARS, MAX_FINDINGS, TRUNCATION_MARKER
from selfheal.findings.model import ParseError

JSON_SAMPLES = [
    "aws_inspector2/aws_inspector2_package_vuln_metadata.json",
    "sarif/dependency_check.sarif",
    "handmade/zap_api_alerts.json",
    "handmade/zap_traditional.json",
    "handmade/wapiti_report.json",
]
XML_SAMPLES = [
    "zap/dvwa_baseline_dojo.xml",
    "zap/zap_2.16.1_with_req_resp.xml",
    "openvas/report_detail_v2.xml",
    "handmade/gmp_get_reports_response.xml",
    "wapiti/example.xml",
]


def _fails(data: bytes, fmt: str = "auto", **kw) -> ParseError:
    with pytest.raises(ParseError) as err:
        parse_bytes(data, "input.bin", fmt, **kw)
    assert err.value.source == "input.bin"
    assert "\n" not in err.value.problem  # one line on a terminal or in a log
    return err.value


@pytest.mark.parametrize("path", JSON_SAMPLES + XML_SAMPLES)
def test_truncated_reports(sample, path):
    data = sample(path)
    for cut in (len(data) // 3, len(data) // 2, len(data) - 10):
        problem = _fails(data[:cut]).problem
        assert problem.startswith(("invalid JSON", "invalid XML")), problem


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "empty input"),
        (b"   \n\t ", "empty input"),
        (b"hello world", "not a JSON or XML document"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not a JSON or XML document"),
        (b"[1, 2, 3]", "expected a JSON object at the top level, got array"),
        (b'{"alerts": "none"}', "alerts: Expected `array | null`, got `str`"),
        (b'{"something": "else"}', "unrecognised JSON report (top-level keys: something)"),
        (b"<html><body>502 Bad Gateway</body></html>", "unrecognised XML report (root element <html>)"),
        (b'{"alerts": [}', "invalid JSON"),
        (b"<OWASPZAPReport><site></OWASPZAPReport>", "invalid XML"),
        (b'{"findings": [{"inspectorScore": "high"}]}', "findings[0].inspectorScore: Expected `float | null`"),
        (b'{"site": [{"alerts": [{"instances": [1]}]}]}', "site[0].alerts[0].instances[0]"),
    ],
)
def test_malformed_input(data, expected):
    assert expected in _fails(data).problem


def test_non_bytes_input_is_a_parse_error():
    with pytest.raises(ParseError, match="expected bytes, got str"):
        parse_bytes("{}", "s")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("path", "wrong"),
    [
        ("handmade/zap_api_alerts.json", "zap-xml"),
        ("handmade/zap_api_alerts.json", "inspector2"),
        ("handmade/zap_api_alerts.json", "sarif"),
        ("handmade/wapiti_report.json", "zap-json"),
        ("zap/some_2.9.0.xml", "gmp-xml"),
        ("openvas/one_vuln.xml", "wapiti-xml"),
        ("wapiti/example.xml", "zap-xml"),
        ("sarif/appendix_k.sarif", "wapiti-json"),
    ],
)
def test_wrong_format_given_explicitly(sample, path, wrong):
    problem = _fails(sample(path), wrong).problem
    assert "not a" in problem or "invalid" in problem or "no top-level" in problem, problem


def test_unknown_format_name():
    assert "unknown format 'nessus'" in _fails(b"{}", "nessus").problem


def test_scanner_name_restricts_detection(sample):
    assert parse_bytes(sample("handmade/wapiti_report.json"), "w", "wapiti")
    assert "expected one of zap-json, zap-api" in _fails(sample("handmade/wapiti_report.json"), "zap").problem


# ----------------------------------------------------------------------------- XML attacks

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
]>
<OWASPZAPReport><site name="http://h"><alerts><alertitem><pluginid>1</pluginid><name>&lol9;</name>
<instances><instance><uri>http://h/</uri><evidence>&lol9;</evidence></instance></instances></alertitem>
</alerts></site></OWASPZAPReport>"""


@pytest.mark.parametrize("fmt", ["auto", "zap-xml", "gmp-xml", "wapiti-xml"])
def test_billion_laughs_is_refused(fmt):
    assert "refused unsafe XML" in _fails(BILLION_LAUGHS, fmt).problem


@pytest.fixture
def canary_server():
    """A loopback HTTP server that records every request: an external entity or
    DTD pointing at it proves whether the parser fetched anything."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = b"<!ENTITY leak 'fetched'>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "template",
    [
        # classic XXE: an external general entity
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "{url}/xxe">]>'
        b'<report type="security"><report_infos/><vulnerabilities><vulnerability name="x"><entries><entry>'
        b"<info>&xxe;</info></entry></entries></vulnerability></vulnerabilities></report>",
        # a parameter entity pulling an external DTD
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY % dtd SYSTEM "{url}/dtd"> %dtd;]>'
        b"<get_reports_response><report/></get_reports_response>",
        # an external DTD subset
        b'<?xml version="1.0"?><!DOCTYPE OWASPZAPReport SYSTEM "{url}/ext.dtd"><OWASPZAPReport/>',
        # local file disclosure
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY f SYSTEM "file:///etc/passwd">]>'
        b"<OWASPZAPReport><site><alerts><alertitem><name>&f;</name></alertitem></alerts></site></OWASPZAPReport>",
    ],
)
def test_external_entities_are_refused_and_nothing_is_fetched(canary_server, template):
    url, hits = canary_server
    doc = template.replace(b"{url}", url.encode())
    for fmt in ("auto", "zap-xml", "gmp-xml", "wapiti-xml"):
        err = _fails(doc, fmt)
        assert "refused unsafe XML" in err.problem
        assert "root:" not in err.problem
    assert hits == []


def test_detect_format_refuses_entities_too():
    with pytest.raises(ParseError, match="refused unsafe XML"):
        detect_format(BILLION_LAUGHS, "lol.xml")


# ----------------------------------------------------------------------------- encodings


def test_invalid_utf8_json():
    doc = b'{"alerts": [{"pluginId": "1", "url": "http://h/\xff\xfe", "name": "x"}]}'
    assert "invalid JSON" in _fails(doc).problem and "UTF-8" in _fails(doc).problem


def test_invalid_utf8_xml():
    doc = b'<?xml version="1.0" encoding="UTF-8"?><OWASPZAPReport><site name="\xff\xfe"/></OWASPZAPReport>'
    assert "invalid XML" in _fails(doc).problem


def test_unknown_xml_encoding():
    doc = b'<?xml version="1.0" encoding="x-klingon"?><OWASPZAPReport/>'
    assert "XML" in _fails(doc, "zap-xml").problem


def test_declared_latin1_xml_is_decoded(sample):
    doc = ('<?xml version="1.0" encoding="ISO-8859-1"?><OWASPZAPReport><site name="http://h"><alerts>'
           "<alertitem><pluginid>1</pluginid><name>Caf\u00e9</name><riskcode>1</riskcode><instances><instance>"
           "<uri>http://h/</uri><method>GET</method></instance></instances></alertitem></alerts></site>"
           "</OWASPZAPReport>").encode("latin-1")
    (f,) = parse_bytes(doc, "latin1")
    assert f.title == "Caf\u00e9"


def test_utf8_bom_is_accepted(sample):
    for path in ("handmade/zap_api_alerts.json", "zap/some_2.9.0.xml"):
        plain = parse_bytes(sample(path), "p")
        bom = parse_bytes(b"\xef\xbb\xbf" + sample(path), "p")
        assert [f.fingerprint for f in bom] == [f.fingerprint for f in plain]


def test_nul_characters_are_replaced():
    doc = b'{"alerts": [{"pluginId": "1", "name": "a\\u0000b", "url": "http://h/x", "evidence": "e\\u0000"}]}'
    (f,) = parse_bytes(doc, "nul")
    assert "\x00" not in json.dumps(f.to_dict()).encode().decode("unicode_escape")
    assert f.title == "a\ufffdb" and f.evidence == "e\ufffd"


# ----------------------------------------------------------------------------- sizes


def test_fifty_megabyte_evidence_is_truncated_json():
    huge = "A" * (50 * 1024 * 1024)
    doc = json.dumps({"alerts": [{"pluginId": "1", "name": "x", "url": "http://h/", "evidence": huge,
                                  "other": huge}]}).encode()
    (f,) = parse_bytes(doc, "huge.json")
    marker = TRUNCATION_MARKER.format(n=len(huge) - EVIDENCE_MAX_CHARS)
    assert f.evidence == "A" * EVIDENCE_MAX_CHARS + marker
    assert len(f.extra["other_info"]) == len(f.evidence)


def test_fifty_megabyte_evidence_is_truncated_xml():
    huge = b"B" * (50 * 1024 * 1024)
    doc = (b'<OWASPZAPReport><site name="http://h"><alerts><alertitem><pluginid>1</pluginid><name>x</name>'
           b"<instances><instance><uri>http://h/</uri><evidence>" + huge + b"</evidence></instance></instances>"
           b"</alertitem></alerts></site></OWASPZAPReport>")
    (f,) = parse_bytes(doc, "huge.xml")
    assert f.evidence.startswith("B" * 100) and f.evidence.endswith("chars]")
    assert len(f.evidence) < EVIDENCE_MAX_CHARS + 40


def test_report_over_the_size_limit(sample):
    data = sample("zap/dvwa_baseline_dojo.xml")
    problem = _fails(data, max_bytes=len(data) - 1).problem
    assert problem == f"report is {len(data)} bytes, over the limit of {len(data) - 1} bytes"
    assert parse_bytes(data, "ok", max_bytes=len(data))


def _tracemalloc_peak(doc: bytes) -> int:
    """Peak Python memory while ``doc`` is refused."""
    tracemalloc.start()
    try:
        with pytest.raises(ParseError):
            parse_bytes(doc, "million")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    ("head", "item", "tail"),
    [
        (b'{"alerts": [', b"{}", b"]}"),
        (b'{"findings": [', b"{}", b"]}"),
        (b'{"version": "2.1.0", "runs": [{"results": [', b"{}", b"]}]}"),
        (b'{"site": [{"alerts": [{"instances": [', b"{}", b"]}]}]}"),
        (b'{"vulnerabilities": {"SQL Injection": [', b"{}", b']}, "infos": {}}'),
    ],
)
def test_a_million_json_results_fail_fast(head, item, tail):
    doc = head + b",".join([item] * 1_000_000) + tail
    with pytest.raises(ParseError) as err:
        parse_bytes(doc, "million.json")
    assert f"report has 1000000 findings, over the limit of {MAX_FINDINGS} per report" in err.value.problem


def test_a_million_json_results_are_counted_in_bounded_memory():
    doc = b'{"alerts": [' + b",".join([b"{}"] * 1_000_000) + b"]}"
    peak = _tracemalloc_peak(doc)
    assert peak < 64 * 1024 * 1024  # 24-byte placeholders per item; no finding is built


@pytest.mark.parametrize(
    ("head", "item", "tail"),
    [
        (b"<report><report><results>", b"<result/>", b"</results></report></report>"),
        (b'<OWASPZAPReport><site name="h"><alerts><alertitem><instances>', b"<instance/>",
         b"</instances></alertitem></alerts></site></OWASPZAPReport>"),
        (b'<report type="security"><vulnerabilities><vulnerability name="x"><entries>', b"<entry/>",
         b"</entries></vulnerability></vulnerabilities></report>"),
    ],
)
def test_a_million_xml_results_fail_fast(head, item, tail):
    doc = head + item * 1_000_000 + tail
    peak = _tracemalloc_peak(doc)
    assert peak < 8 * 1024 * 1024  # counted in the raw bytes before parsing
    with pytest.raises(ParseError, match=f"report has 1000000 findings, over the limit of {MAX_FINDINGS} per"):
        parse_bytes(doc, "million.xml")


def test_the_limit_is_exact_and_configurable():
    doc = b'{"alerts": [' + b",".join([b'{"url": "http://h/a", "name": "x"}'] * 1000) + b"]}"
    assert len(parse_bytes(doc, "ok", max_findings=1000)) == 1000
    assert "report has 1000 findings, over the limit of 999" in _fails(doc, max_findings=999).problem


def test_expanded_findings_count_against_the_limit():
    """Inspector2 emits one finding per vulnerable package: the limit applies to findings."""
    pkgs = [{"name": f"p{i}", "version": "1"} for i in range(20)]
    doc = json.dumps({"findings": [{"type": "PACKAGE_VULNERABILITY", "packageVulnerabilityDetails": {
        "vulnerabilityId": "CVE-2024-1", "vulnerablePackages": pkgs}}] * 10}).encode()
    assert len(parse_bytes(doc, "ok", max_findings=200)) == 200
    assert "over the limit of 199" in _fails(doc, max_findings=199).problem


def test_deep_nesting():
    deep = b"[" * 100_000 + b"]" * 100_000
    assert "nested too deeply" in _fails(b'{"alerts": [], "x": ' + deep + b"}").problem  # skipped member
    assert "nested too deeply" in _fails(b'{"x": ' + deep + b', "alerts": []}').problem  # detection pass
    assert "alerts[0]: Expected `object`, got `array`" in _fails(b'{"alerts": ' + deep + b"}").problem
    xml = b"<OWASPZAPReport>" + b"<a>" * 50_000 + b"</a>" * 50_000 + b"</OWASPZAPReport>"
    assert parse_bytes(xml, "deep.xml") == []  # expat is iterative: deep but harmless


# ----------------------------------------------------------------------------- scanner-level errors


def test_gmp_error_response():
    doc = b'<get_reports_response status="404" status_text="Failed to find report"/>'
    assert "GMP error response: status 404 Failed to find report" in _fails(doc).problem


def test_gmp_report_in_a_non_xml_format():
    doc = b'<get_reports_response status="200"><report id="x" content_type="application/pdf">JVBERi0=</report>' \
          b"</get_reports_response>"
    assert "GMP report in format 'application/pdf'" in _fails(doc).problem


def test_aws_error_document():
    doc = (b'{"__type": "AccessDeniedException", '
           b'"message": "User is not authorized to perform: inspector2:ListFindings"}')
    problem = _fails(doc).problem
    assert problem.startswith("AWS error response, not findings: AccessDeniedException: User is not authorized")


def test_sarif_version_1_is_refused():
    assert "unsupported SARIF version '1.0.0'" in _fails(b'{"version": "1.0.0", "runs": []}').problem


def test_unexpected_exceptions_become_parse_errors(monkeypatch):
    """The last line of defence: a parser bug still honours the ParseError contract."""
    fmt = parsers_pkg.FORMATS["zap-api"]

    def broken(report):
        raise KeyError("boom")
        yield  # pragma: no cover

    monkeypatch.setitem(parsers_pkg.FORMATS, "zap-api", type(fmt)(**{**{s: getattr(fmt, s) for s in fmt.__slots__},
                                                                     "parse": broken}))
    err = _fails(b'{"alerts": []}', "zap-api")
    assert "internal parser error (KeyError: 'boom')" in err.problem

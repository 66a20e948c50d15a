"""Fingerprints: stable across re-scans, shared across scanners, distinct where the fix differs."""

from __future__ import annotations

import json

import pytest

from selfheal.findings import dedupe, parse_bytes, path_template
from selfheal.findings.fingerprint import fingerprint, fingerprint_key
from selfheal.findings.model import Finding, Location, Package
from selfheal.findings.parsers._base import split_url


@pytest.mark.parametrize(
    ("raw", "template"),
    [
        ("/api/users/42", "/api/users/{id}"),
        ("/api/users/42/", "/api/users/{id}"),
        ("/api/users/42/orders/7?page=2&sort=asc", "/api/users/{id}/orders/{id}"),
        ("/api/users/8c6f2f0e-5b7a-4f1e-9d3b-2a1c0e9b7f44", "/api/users/{uuid}"),
        ("/api/users/8C6F2F0E-5B7A-4F1E-9D3B-2A1C0E9B7F44/avatar", "/api/users/{uuid}/avatar"),
        ("/blobs/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "/blobs/{hash}"),
        ("/o/5f3e1a2b9c8d7e6f5a4b3c2d", "/o/{hash}"),  # a Mongo ObjectId
        ("/static/app.3f9a1c.js", "/static/app.3f9a1c.js"),  # short hex inside a name: kept
        ("/api/v2/deadbeefcafebabe", "/api/v2/deadbeefcafebabe"),  # 16 hex letters without a digit: a word
        ("/cart;jsessionid=0AB3F1/checkout", "/cart/checkout"),
        ("//double//slashes//", "/double/slashes"),
        ("https://shop.example.com:8443/a/1#frag", "/a/{id}"),
        ("", "/"),
        ("/", "/"),
        ("relative/12", "/relative/{id}"),
        ("/v1/items", "/v1/items"),  # "v1" is not an id
        # the boundaries of the ASCII fast path: the result is the same either way
        ("/a/\u0661\u0662/b", "/a/\u0661\u0662/b"),  # no ASCII digit: nothing to collapse
        ("/a/\u0661\u0662/7", "/a/{id}/{id}"),  # Arabic-Indic digits are digits too (str.isdigit)
        ("/a/12x/3", "/a/12x/{id}"),
        ("/a/123456789012345", "/a/{id}"),  # 15 characters
        ("/a/1234567890123456", "/a/{id}"),  # 16: past the fast path, still all digits
        ("/a/abcdef0123456789", "/a/{hash}"),
        ("/a/1\n2", "/a/1\n2"),
        ("/caf\u00e9/7", "/caf\u00e9/{id}"),
    ],
)
def test_path_template(raw, template):
    assert path_template(raw) == template


@pytest.mark.parametrize(
    ("url", "origin", "path"),
    [
        ("https://h:8443/a/b?x=1#f", "https://h:8443", "/a/b"),
        ("http://h", "http://h", "/"),
        ("http://h?x=1", "http://h", "/"),
        ("/a/b?next=http://evil/x", "", "/a/b"),
        ("", "", "/"),
        ("://h/a", "", "://h/a"),  # no scheme: not an origin
        ("a/b://h/c", "", "a/b://h/c"),
        ("https://h\u00e9/a?x", "https://h\u00e9", "/a"),  # non-ASCII: the general path, same result
        ("h\u00e9ll\u00f6://x/y", "h\u00e9ll\u00f6://x", "/y"),  # str.isalnum accepts letters beyond ASCII
    ],
)
def test_split_url(url, origin, path):
    assert split_url(url) == (origin, path)


def _web(**kw) -> Finding:
    base = dict(scanner="zap", rule_id="40018", title="SQL Injection", severity="high", kind="web", cwe=89,
                location=Location(url="http://h/api/items/1?q=a", method="GET", path="/api/items/1", param="q"))
    base.update(kw)
    return Finding(**base)


def test_key_layout_names_class_and_location():
    key = fingerprint_key(_web(), "shop")
    assert key.split("\x1f") == ["v1", "shop", "web", "cwe:89", "GET", "/api/items/{id}", "q"]
    upper = _web(location=Location(url="http://h/api/items/1", method="GET", path="/api/items/1", param="Q"))
    assert fingerprint(upper, "shop") == fingerprint(_web(), "shop")
    assert fingerprint(_web(), "shop") == fingerprint(_web(), "shop")
    assert len(fingerprint(_web(), "shop")) == 64


def test_rescan_noise_does_not_change_identity():
    """What DefectDojo's hash_code includes and we do not: texts, evidence, scores, ids."""
    first = _web(evidence="You have an error in your SQL syntax near 'a'", description="SQL injection may be possible.",
                 extra={"attack": "a'"})
    again = _web(
        title="SQL Injection - MySQL",  # the rule was renamed in a ZAP update
        evidence="You have an error in your SQL syntax near 'zz'",
        description="SQL injection may be possible (time based).",
        severity="critical", cvss_score=9.1, confidence="high",
        location=Location(url="http://h/api/items/977?q=zz&x=1", method="get", path="/api/items/977", param="q"),
        extra={"attack": "zz' OR 1=1 --"},
    )
    assert fingerprint(first, "shop") == fingerprint(again, "shop")


@pytest.mark.parametrize(
    "change",
    [
        {"location": Location(url="http://h/api/items/1", method="POST", path="/api/items/1", param="q")},
        {"location": Location(url="http://h/api/items/1", method="GET", path="/api/items/1", param="name")},
        {"location": Location(url="http://h/api/carts/1", method="GET", path="/api/carts/1", param="q")},
        {"cwe": 79},
    ],
)
def test_a_different_fix_is_a_different_identity(change):
    assert fingerprint(_web(), "shop") != fingerprint(_web(**change), "shop")


def test_service_scopes_identity():
    assert fingerprint(_web(), "shop") != fingerprint(_web(), "billing")
    # Without a service, web findings are scoped by host so two sites never collide.
    other_host = _web(location=Location(url="http://other/api/items/1", method="GET", path="/api/items/1", param="q"))
    assert fingerprint(_web(), None) != fingerprint(other_host, None)
    default_port = _web(location=Location(url="http://h:80/api/items/5", method="GET", path="/api/items/5", param="q"))
    assert fingerprint(_web(), None) == fingerprint(default_port, None)


def test_generic_cwe_keeps_rules_apart():
    """ZAP files unrelated rules under CWE-16/200/693; those must not merge."""
    same_place = Location(url="http://h/", method="GET", path="/", param="sid")
    samesite = _web(rule_id="10054", cwe=16, location=same_place)
    httponly = _web(rule_id="10010", cwe=16, location=same_place)
    assert fingerprint(samesite, "s") != fingerprint(httponly, "s")
    assert fingerprint_key(samesite, "s").split("\x1f")[3] == "cwe:16:rule:zap:10054"


def test_zap_and_wapiti_report_the_same_sql_injection_as_one_finding(sample):
    """ZAP (API JSON and traditional JSON) and Wapiti (JSON report) all find the SQL
    injection in GET /api/items/42 ?q= : one fingerprint, one triage row."""
    zap_api = parse_bytes(sample("handmade/zap_api_alerts.json"), "zap-api", service="shop")
    zap_json = parse_bytes(sample("handmade/zap_traditional.json"), "zap-json", service="shop")
    wapiti = parse_bytes(sample("handmade/wapiti_report.json"), "wapiti", service="shop")
    z1 = next(f for f in zap_api if f.cwe == 89)
    z2 = next(f for f in zap_json if f.cwe == 89)
    w = next(f for f in wapiti if f.cwe == 89)
    assert (z1.scanner, w.scanner) == ("zap", "wapiti")
    assert z1.location.url != w.location.url  # ZAP reports the attack URL with its query string
    assert z1.fingerprint == z2.fingerprint == w.fingerprint
    # Unscoped (no --service) they still agree: both name localhost:8080.
    assert parse_bytes(sample("handmade/zap_api_alerts.json"), "z")[0].fingerprint == \
        parse_bytes(sample("handmade/wapiti_report.json"), "w")[0].fingerprint
    # The missing anti-clickjacking header (CWE-1021) on that page matches too, although
    # ZAP names the header in lower case and Wapiti only mentions it in its info text.
    zap_xfo = next(f for f in zap_api if f.cwe == 1021)
    wapiti_xfo = next(f for f in wapiti if f.cwe == 1021)
    assert zap_xfo.location.param == "x-frame-options" and wapiti_xfo.location.param == "X-Frame-Options"
    assert zap_xfo.fingerprint == wapiti_xfo.fingerprint
    # Different weaknesses on the same cookie stay apart: HttpOnly (CWE-1004) vs Secure (CWE-614).
    zap_cookie = next(f for f in zap_api if f.location.param == "sessionid")
    wapiti_cookie = next(f for f in wapiti if f.location.param == "sessionid")
    assert zap_cookie.fingerprint != wapiti_cookie.fingerprint


def test_real_wapiti_scan_matches_zap_on_the_same_injection(sample):
    """The same check with Wapiti's real output (a scan of a loopback app on another
    port): what identifies the finding is service + CWE + GET /api/items/{id} + q."""
    zap = next(f for f in parse_bytes(sample("handmade/zap_api_alerts.json"), "z", service="shop") if f.cwe == 89)
    real = parse_bytes(sample("wapiti-3.2.3/report.json"), "w", service="shop")[-1]
    assert real.scanner == "wapiti" and real.cwe == 89
    assert real.location.url.startswith("http://127.0.0.1:18477/") and zap.location.url.startswith("http://localhost")
    assert real.fingerprint == zap.fingerprint


def test_dedupe_merges_scanners_and_keeps_every_source(sample):
    batch = (parse_bytes(sample("handmade/zap_api_alerts.json"), "a", service="shop")
             + parse_bytes(sample("handmade/zap_traditional.json"), "b", service="shop")
             + parse_bytes(sample("handmade/wapiti_report.json"), "c", service="shop"))
    merged = dedupe(batch)
    assert len(merged) < len(batch)
    assert len({f.fingerprint for f in merged}) == len(merged)
    sqli = next(f for f in merged if f.cwe == 89)
    sources = sqli.extra["sources"]
    assert [s["scanner"] for s in sources] == ["zap", "zap", "wapiti"]
    assert sqli.severity == "critical"  # Wapiti rated it level 4, ZAP "High": the worst wins
    assert sources[2]["evidence"].startswith("SQL Injection (DBMS: MySQL)")
    assert json.dumps(sqli.to_dict())  # still JSON-ready
    singles = [f for f in merged if len(f.extra["sources"]) == 1]
    assert singles and all(s.extra["sources"][0]["scanner"] == s.scanner for s in singles)


def test_dedupe_is_idempotent_and_order_preserving(sample):
    fs = parse_bytes(sample("zap/dvwa_baseline_dojo.xml"), "dvwa", service="dvwa")
    once = dedupe(fs)
    fps = [f.fingerprint for f in once]
    assert fps == list(dict.fromkeys(f.fingerprint for f in fs))
    assert sum(len(f.extra["sources"]) for f in once) == len(fs)
    again = dedupe(parse_bytes(sample("zap/dvwa_baseline_dojo.xml"), "dvwa", service="dvwa"))
    assert [f.fingerprint for f in again] == fps


def test_same_cve_in_same_package_matches_across_scanners(sample):
    inspector = parse_bytes(sample("handmade/inspector2_mixed.json"), "i", service="shop")[0]
    sarif = {
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "Trivy", "rules": [{"id": "CVE-2023-43804"}]}},
            "results": [{"ruleId": "CVE-2023-43804", "level": "warning", "message": {"text": "urllib3 1.26.5"},
                         "locations": [{"physicalLocation": {"artifactLocation": {"uri": "app/requirements.txt",
                                                                                  "index": 0}}}]}],
            "artifacts": [{"location": {"uri": "app/requirements.txt"},
                           "properties": {"purl": "pkg:pypi/URLLIB3@1.26.5"}}],
        }],
    }
    trivy = parse_bytes(json.dumps(sarif).encode(), "t", service="shop")[0]
    assert trivy.kind == "dependency" and trivy.package.ecosystem == "pypi"
    assert trivy.fingerprint == inspector.fingerprint


def test_dependency_identity_ignores_version_and_normalizes_pypi_names():
    def dep(name: str, version: str) -> Finding:
        return Finding(scanner="x", rule_id="CVE-2024-1", title="t", severity="high", kind="dependency",
                       cves=("CVE-2024-1",), package=Package(name=name, version=version, ecosystem="pypi"))

    assert fingerprint(dep("Flask_Cors", "3.0.0"), "s") == fingerprint(dep("flask-cors", "3.0.9"), "s")
    assert fingerprint(dep("flask-cors", "3.0.0"), "s") != fingerprint(dep("flask", "3.0.0"), "s")


def test_host_identity_is_cve_or_rule_on_host_and_port(sample):
    fs = parse_bytes(sample("handmade/gmp_get_reports_response.xml"), "g", service="shop")
    ssh, tls, _log = fs
    assert fingerprint_key(ssh, "shop").split("\x1f")[3:] == ["cve:CVE-2024-6387", "10.0.0.5", "22/tcp"]
    # Three CVEs in one NVT: the NVT is the class (one fix), not an arbitrary one of its CVEs.
    assert fingerprint_key(tls, "shop").split("\x1f")[3] == "rule:gvm:1.3.6.1.4.1.25623.1.0.103440"
    moved = Finding(scanner="gvm", rule_id=ssh.rule_id, title=ssh.title, severity="high", kind="host",
                    cves=ssh.cves, location=Location(host="10.0.0.5", port="2222/tcp"))
    assert fingerprint(moved, "shop") != ssh.fingerprint


def test_code_identity_survives_line_shifts(sample):
    data = json.loads(sample("handmade/sarif_codeql.sarif"))
    before = parse_bytes(json.dumps(data).encode(), "a")[0]
    data["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] = 90
    after = parse_bytes(json.dumps(data).encode(), "b")[0]
    assert before.location.line != after.location.line and before.fingerprint == after.fingerprint
    data["runs"][0]["results"][0]["partialFingerprints"]["primaryLocationLineHash"] = "0000000000000000:1"
    assert parse_bytes(json.dumps(data).encode(), "c")[0].fingerprint != before.fingerprint

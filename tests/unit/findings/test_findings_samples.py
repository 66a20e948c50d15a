"""Every real sample parsed, with the counts DefectDojo reports compared to ours.

We emit one Finding per (rule, location) instance, the row the triage table
patches; DefectDojo emits one per "alert type" (ZAP) or per scanner finding
(Inspector2). ``extra["group"]`` names that unit, so DefectDojo's count is
``len({f.extra["group"]})`` and is asserted next to our instance count. The
per-rule view (group by scanner + rule_id) is asserted too, and every place
where the three differ is explained next to the numbers.
"""

from __future__ import annotations

from collections import Counter

import pytest

from selfheal.findings import detect_format, parse_bytes
from selfheal.findings.model import KINDS, SEVERITIES, Finding, ParseError


def groups(fs: list[Finding]) -> int:
    return len({f.extra["group"] for f in fs})


def rules(fs: list[Finding]) -> int:
    return len({(f.scanner, f.rule_id) for f in fs})


# path, format, instances (ours), DefectDojo's count (= our groups), per-rule count
COUNTS = [
    ("zap/empty_2.9.0.xml", "zap-xml", 0, 0, 0),
    # 7 alert types, 17 instances (URL + parameter each).
    ("zap/some_2.9.0.xml", "zap-xml", 17, 7, 7),
    # 4 alert types (a 5th alertitem is inside an XML comment), 12 instances.
    ("zap/0_zap_sample.xml", "zap-xml", 12, 4, 4),
    # 19 alert types and 124 listed instances. Per rule there are 18: ZAP files
    # "Information Disclosure - Suspicious Comments" (10027) twice, at Low and at
    # Medium confidence, and DefectDojo counts each alertitem. Plugin 10096
    # says count=67 but the baseline report lists only 20 instances: we can
    # only emit what is listed.
    ("zap/dvwa_baseline_dojo.xml", "zap-xml", 124, 19, 18),
    ("zap/zap_2.16.1_with_req_resp.xml", "zap-xml", 13, 4, 4),
    ("zap/zap-xml-plus-format.xml", "zap-xml", 1, 1, 1),
    ("openvas/no_vuln.xml", "gmp-xml", 0, 0, 0),
    ("openvas/one_vuln.xml", "gmp-xml", 1, 1, 1),
    ("openvas/report_detail_v2.xml", "gmp-xml", 1, 1, 1),
    ("aws_inspector2/aws_inspector2_zero_vul.json", "inspector2", 0, 0, 0),
    ("aws_inspector2/aws_inspector2_one_vul.json", "inspector2", 1, 1, 1),
    # 28 Inspector findings (DefectDojo's count) but 31 instances: three findings
    # list two vulnerable packages each, and we emit one Finding per
    # (CVE, package) because each package is patched separately. 28 distinct
    # vulnerability ids (rules).
    ("aws_inspector2/aws_inspector2_package_vuln_metadata.json", "inspector2", 31, 28, 28),
    # Wapiti: one finding per entry, as DefectDojo (its title+description+severity
    # dedupe key differs for all 5). Per rule: 2 categories (CSP, HTTP Secure Headers).
    ("wapiti/example.xml", "wapiti-xml", 5, 5, 2),
    ("wapiti/cwe.xml", "wapiti-xml", 1, 1, 1),
    # SARIF: one Finding per result, as DefectDojo.
    ("sarif/appendix_k.sarif", "sarif", 1, 1, 1),
    ("sarif/bash-report.sarif", "sarif", 27, 27, 5),
    ("sarif/dependency_check.sarif", "sarif", 13, 13, 9),
]


@pytest.mark.parametrize(("path", "fmt", "instances", "dojo", "per_rule"), COUNTS, ids=[c[0] for c in COUNTS])
def test_sample_counts_match_defectdojo(sample, path, fmt, instances, dojo, per_rule):
    data = sample(path)
    assert detect_format(data) == fmt
    fs = parse_bytes(data, path)
    assert len(fs) == instances
    assert groups(fs) == dojo
    assert rules(fs) == per_rule
    # Same result when the format is given instead of detected.
    assert [f.fingerprint for f in parse_bytes(data, path, fmt)] == [f.fingerprint for f in fs]


@pytest.mark.parametrize("path", [c[0] for c in COUNTS])
def test_every_finding_is_well_formed(sample, path):
    for f in parse_bytes(sample(path), path, service="svc"):
        assert f.severity in SEVERITIES and f.kind in KINDS
        assert f.rule_id and f.title and f.scanner
        assert len(f.fingerprint) == 64 and f.service == "svc"
        assert f.cwe is None or isinstance(f.cwe, int)
        assert all(c.startswith("CVE-") for c in f.cves)
        assert (f.location is not None) or (f.package is not None) or f.kind == "dependency"
        d = f.to_dict()
        for key in ("fingerprint", "scanner", "rule_id", "title", "severity", "confidence", "cwe", "cves",
                    "cvss_score", "cvss_vector", "kind", "location", "package", "evidence", "solution"):
            assert key in d


def test_empty_with_error_is_rejected(sample):
    with pytest.raises(ParseError) as err:
        parse_bytes(sample("aws_inspector2/empty_with_error.json"), "empty_with_error.json")
    assert err.value.source == "empty_with_error.json"
    assert "not a scanner report" in err.value.problem
    with pytest.raises(ParseError, match="no 'findings' list"):
        parse_bytes(sample("aws_inspector2/empty_with_error.json"), "x.json", "inspector2")


# ----------------------------------------------------------------------------- ZAP


def test_zap_dvwa_first_and_last_alert_types(sample):
    fs = parse_bytes(sample("zap/dvwa_baseline_dojo.xml"), "dvwa")
    by_group = Counter(f.extra["group"] for f in fs)
    order = list(dict.fromkeys(f.extra["group"] for f in fs))
    first = [f for f in fs if f.extra["group"] == order[0]]
    last = [f for f in fs if f.extra["group"] == order[-1]]
    assert first[0].title == "X-Frame-Options Header Not Set" and first[0].rule_id == "10020"
    assert first[0].severity == "medium" and by_group[order[0]] == 11
    assert last[0].title == "Private IP Disclosure" and last[0].rule_id == "2"
    assert last[0].severity == "low" and by_group[order[-1]] == 3
    xfo = first[0]
    assert xfo.kind == "web" and xfo.cwe == 16 and xfo.confidence == "medium"
    assert xfo.location.method == "GET" and xfo.location.param == "X-Frame-Options"
    assert xfo.location.url == "http://172.17.0.2/vulnerabilities/brute/"
    assert xfo.location.path == "/vulnerabilities/brute/"
    assert xfo.extra["wasc"] == 15
    assert xfo.description.startswith("X-Frame-Options header is not included")  # <p> stripped
    assert xfo.references == ("https://developer.mozilla.org/en-US/docs/Web/HTTP/Headers/X-Frame-Options",)


def test_zap_commented_out_alert_is_not_parsed(sample):
    fs = parse_bytes(sample("zap/0_zap_sample.xml"), "zap")
    assert "zap4: Cookie No HttpOnly Flag" not in {f.title for f in fs}
    assert {f.rule_id for f in fs} == {"10011", "10054", "10055", "10096"}


def test_zap_2_16_tags_request_and_cwe(sample):
    fs = parse_bytes(sample("zap/zap_2.16.1_with_req_resp.xml"), "zap216")
    auth = fs[0]
    assert auth.rule_id == "10111" and auth.severity == "info" and auth.confidence == "low"
    assert auth.cwe is None  # cweid -1 means "no CWE"
    assert auth.location.method == "POST" and auth.location.param == "user_identifier"
    assert auth.extra["request"].startswith("POST https://example-domain.com/cpapi/api/account/verifypasswordless")
    assert "userParam=user_identifier" in auth.extra["other_info"]
    poisoning = [f for f in fs if f.rule_id == "10029"]
    assert poisoning and all(f.cwe == 565 for f in poisoning)
    assert poisoning[0].location.path == "/cpapi/api/redirect/getPrefillOtuTokenData"  # query removed


def test_zap_xml_plus(sample):
    (f,) = parse_bytes(sample("zap/zap-xml-plus-format.xml"), "plus")
    assert f.rule_id == "90028" and f.title == "Insecure HTTP Method - PUT"
    assert f.location.method == "PUT" and f.location.param is None
    assert f.evidence == "response code 403 for potentially insecure HTTP METHOD"
    assert f.extra["request"].startswith("PUT http://localhost:8080/bodgeit/js/qndto7n63d HTTP/1.1")
    assert f.extra["request"].endswith('"J0O0glajHdR0Mgp":"UToh9IpCY5zh3CB"')
    assert "responsebody" not in f.extra and "Apache Tomcat" not in str(f.to_dict())


def test_zap_legacy_xml_without_instances():
    doc = (b'<OWASPZAPReport version="2.4.3"><site name="http://h" host="h" port="80" ssl="false"><alerts>'
           b"<alertitem><pluginid>40012</pluginid><alert>Cross Site Scripting (Reflected)</alert><riskcode>3</riskcode>"
           b"<confidence>2</confidence><uri>http://h/search?q=x</uri><param>q</param><attack>&lt;script&gt;</attack>"
           b"<cweid>79</cweid></alertitem></alerts></site></OWASPZAPReport>")
    (f,) = parse_bytes(doc, "zap-2.4")
    assert f.title == "Cross Site Scripting (Reflected)" and f.cwe == 79 and f.severity == "high"
    assert f.location.path == "/search" and f.location.param == "q" and f.extra["attack"] == "<script>"


def test_zap_api_alerts(sample):
    fs = parse_bytes(sample("handmade/zap_api_alerts.json"), "api", service="shop")
    assert len(fs) == 6
    sqli = fs[0]
    assert (sqli.scanner, sqli.rule_id, sqli.title) == ("zap", "40018", "SQL Injection - MySQL")
    assert sqli.severity == "high" and sqli.confidence == "medium" and sqli.cwe == 89
    assert sqli.location.url == "http://localhost:8080/api/items/42?q=test%27"
    assert sqli.location.path == "/api/items/42" and sqli.location.param == "q"
    assert sqli.extra["attack"] == "test'" and sqli.extra["wasc"] == 19
    assert sqli.evidence.startswith("You have an error in your SQL syntax")
    assert "SLEEP(5)" in sqli.extra["other_info"]
    xfo = fs[1]
    assert xfo.rule_id == "10020-1" and xfo.extra["plugin_id"] == "10020" and xfo.cwe == 1021
    csp = fs[2]
    assert len(csp.references) == 2
    log4shell = fs[4]
    assert log4shell.cves == ("CVE-2021-44228",) and log4shell.cwe == 117
    assert log4shell.location.path == "/api/users/8c6f2f0e-5b7a-4f1e-9d3b-2a1c0e9b7f44"
    info = fs[5]
    assert info.severity == "info" and info.cwe is None and info.location.param is None


def test_zap_api_accepts_numbers_where_zap_writes_strings():
    lax = b'{"alerts": [{"pluginId": 40018, "risk": "High", "confidence": "Medium", "cweid": 89, ' \
          b'"url": "http://h/a?x=1", "method": "GET", "param": "x", "name": "SQLi", "wascid": null}]}'
    (f,) = parse_bytes(lax, "lax")
    assert f.rule_id == "40018" and f.cwe == 89 and f.severity == "high"


def test_zap_traditional_json(sample):
    fs = parse_bytes(sample("handmade/zap_traditional.json"), "trad", service="shop")
    assert len(fs) == 4 and groups(fs) == 3
    sqli, xfo1, xfo2, csp = fs
    assert sqli.severity == "high" and sqli.confidence == "medium" and sqli.cwe == 89
    assert sqli.solution == "Do not trust client side input, even if there is client side validation in place.\n" \
                            "Use prepared statements."
    # riskcode/confidence written as integers are read the same as strings
    assert xfo1.severity == "medium" and xfo1.confidence == "medium"
    assert xfo1.extra["group"] == xfo2.extra["group"]
    # /api/items/42 and /api/items/43 are one endpoint, /api/items/{id}: one identity.
    assert xfo1.location.url != xfo2.location.url and xfo1.fingerprint == xfo2.fingerprint
    assert csp.extra["group"].startswith("https://api.example.com:8443|")
    assert csp.location.path == "/v1/orders/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08/items"


def test_zap_json_legacy_single_objects():
    """Older XML-to-JSON converters write a lone site/instance as an object."""
    doc = (b'{"@version": "2.7.0", "site": {"@name": "http://h", "alerts": [{"pluginid": "10020", '
           b'"name": "X-Frame-Options Header Not Set", "riskcode": "2", "confidence": "2", "cweid": "16", '
           b'"instances": {"uri": "http://h/a", "method": "GET", "param": "X-Frame-Options"}}]}}')
    (f,) = parse_bytes(doc, "legacy")
    assert f.location.url == "http://h/a" and f.severity == "medium"


# ----------------------------------------------------------------------------- Greenbone


def test_gmp_one_vuln(sample):
    (f,) = parse_bytes(sample("openvas/one_vuln.xml"), "gmp")
    assert f.scanner == "gvm" and f.kind == "host"
    assert f.rule_id == "1.3.6.1.4.1.25623.1.0.832260"
    assert f.title == "Mozilla Firefox Security Update (mfsa_2023-32_2023-36) - Windows"
    assert f.severity == "critical" and f.cvss_score == 10.0  # CVSS 10.0; GMP's threat label says "High"
    assert f.extra["threat"] == "High" and f.extra["qod"] == 97 and f.confidence == "high"
    assert len(f.cves) == 12 and f.cves[0] == "CVE-2023-4573"
    assert f.location.host == "10.0.101.2" and f.location.port == "general/tcp"
    assert f.solution.startswith("Upgrade to version 117 or later")  # from the NVT tags
    assert f.evidence.startswith("Installed version: 116.0.3")
    assert f.references == ("https://www.mozilla.org/en-US/security/advisories/mfsa2023-34/",)


def test_gmp_report_detail_v2_cvss3(sample):
    (f,) = parse_bytes(sample("openvas/report_detail_v2.xml"), "gmp")
    assert f.cvss_score == 9.8 and f.severity == "critical"
    assert f.cvss_vector == "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"
    assert f.epss == 0.09023  # max EPSS over the NVT's CVEs
    assert f.location.host == "10.99.99.99" and f.location.port == "42/tcp"
    assert f.extra["hostname"] == "server99" and f.extra["solution_type"] == "VendorFix"
    assert len(f.cves) == 93 and f.cves[0] == "CVE-2025-49659"


def test_gmp_get_reports_response_envelope(sample):
    fs = parse_bytes(sample("handmade/gmp_get_reports_response.xml"), "gmp")
    assert [f.severity for f in fs] == ["high", "medium", "info"]
    ssh, tls, log = fs
    assert ssh.cves == ("CVE-2024-6387",) and ssh.cvss_score == 8.1 and ssh.confidence == "medium"
    assert ssh.epss == 0.33061 and ssh.location.port == "22/tcp"
    assert tls.cves == ("CVE-2013-2566", "CVE-2015-2808", "CVE-2015-4000") and tls.confidence == "high"
    assert log.cvss_score == 0.0 and log.extra["threat"] == "Log"
    # The envelope and the bare report give the same findings.
    bare = sample("handmade/gmp_get_reports_response.xml")
    start = bare.index(b"<report ")
    end = bare.rindex(b"</report>") + len(b"</report>")
    assert [f.fingerprint for f in parse_bytes(bare[start:end], "bare")] == [f.fingerprint for f in fs]


def test_gmp_skips_nested_delta_results():
    doc = (b'<report id="r"><report id="r"><results><result id="a"><host>10.0.0.1</host><port>80/tcp</port>'
           b'<nvt oid="1.2.3"><name>Old</name></nvt><severity>5.0</severity>'
           b'<delta>changed<result id="b"><host>10.0.0.1</host><nvt oid="1.2.3"/><severity>4.0</severity></result>'
           b'</delta></result></results></report></report>')
    (f,) = parse_bytes(doc, "delta")
    assert f.extra["group"] == "a" and f.severity == "medium"


# ----------------------------------------------------------------------------- Inspector2


def test_inspector_one_vul(sample):
    (f,) = parse_bytes(sample("aws_inspector2/aws_inspector2_one_vul.json"), "insp")
    assert (f.scanner, f.kind, f.rule_id) == ("inspector", "dependency", "CVE-2021-3744")
    assert f.cves == ("CVE-2021-3744",) and f.severity == "medium" and f.cvss_score == 5.5
    assert f.cvss_vector == "CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:N/I:N/A:H"
    assert f.package.name == "linux" and f.package.version == "4.19.118-2"
    assert f.package.fixed_version == "4.19.232-1" and f.package.ecosystem == "os"
    assert f.epss == 0.00075 and f.exploit_available is False and f.fix_available is True
    assert f.scanner_status == "active" and f.solution == "apt-get update && apt-get upgrade"
    assert f.extra["image"] == "my-awesome-docker-image"


def test_inspector_metadata_sample_types(sample):
    fs = parse_bytes(sample("aws_inspector2/aws_inspector2_package_vuln_metadata.json"), "insp")
    kinds = Counter(f.kind for f in fs)
    assert kinds == {"dependency": 30, "code": 1}
    code = next(f for f in fs if f.kind == "code")
    assert code.cwe == 117 and code.rule_id == "python-log-injection"
    assert code.location.path == "src/project_api/service/api_client.py" and code.location.line == 268
    assert Counter(f.severity for f in fs)["critical"] == 1


def test_inspector_mixed_types(sample):
    fs = parse_bytes(sample("handmade/inspector2_mixed.json"), "insp", service="shop")
    pkg1, pkg2, net, code = fs
    assert pkg1.package.ecosystem == "pypi" and pkg1.package.fixed_version == "1.26.18"
    assert pkg2.package.fixed_version is None  # "NotAvailable"
    assert pkg1.cvss_vector.startswith("CVSS:3.1/")  # v3 preferred over the v2 entry
    assert pkg1.solution == "pip install --upgrade urllib3==1.26.18"
    assert pkg1.fingerprint == pkg2.fingerprint  # same CVE in the same package (two requirement files)
    assert net.kind == "host" and net.location.host == "i-0abcd1234efgh5678" and net.location.port == "22/tcp"
    assert code.kind == "code" and code.cwe == 89 and code.scanner_status == "suppressed"


# ----------------------------------------------------------------------------- Wapiti


def test_wapiti_example_xml(sample):
    fs = parse_bytes(sample("wapiti/example.xml"), "wapiti")
    assert {f.rule_id for f in fs} == {"Content Security Policy Configuration", "HTTP Secure Headers"}
    assert all(f.severity == "low" and f.kind == "web" for f in fs)  # level 1
    assert [f.location.param for f in fs] == [
        "Content-Security-Policy", "X-Frame-Options", "X-XSS-Protection", "X-Content-Type-Options",
        "Strict-Transport-Security",
    ]
    # Four missing headers on the same page are four findings (four fixes), not one.
    assert len({f.fingerprint for f in fs}) == 5
    assert all(f.location.url == "https://example.org/" for f in fs)


def test_wapiti_cwe_from_references(sample):
    (f,) = parse_bytes(sample("wapiti/cwe.xml"), "wapiti")
    assert f.rule_id == "Cross Site Request Forgery" and f.cwe == 352


def test_wapiti_json_report(sample):
    fs = parse_bytes(sample("handmade/wapiti_report.json"), "wapiti", service="shop")
    sqli, xfo, cookie, error, tech = fs
    assert sqli.severity == "critical" and sqli.cwe == 89 and sqli.location.param == "q"
    assert sqli.location.url == "http://localhost:8080/api/items/42" and sqli.extra["module"] == "sql"
    assert sqli.extra["wstg"] == ["WSTG-INPV-05"] and sqli.extra["section"] == "vulnerability"
    assert xfo.location.param == "X-Frame-Options" and xfo.cwe == 1021
    assert cookie.location.param == "sessionid" and cookie.cwe == 614
    assert error.extra["section"] == "anomaly" and error.severity == "high" and error.location.method == "POST"
    assert tech.extra["section"] == "additional" and tech.severity == "info"


def test_real_wapiti_3_2_3_json_and_xml(sample):
    """Unedited Wapiti 3.2.3 output (see the fixture's README): both formats give the
    same findings; the XML's undeclared xsi: prefix is tolerated."""
    js = parse_bytes(sample("wapiti-3.2.3/report.json"), "r.json", service="demo")
    xml = parse_bytes(sample("wapiti-3.2.3/report.xml"), "r.xml", service="demo")
    assert b"xsi:nil" in sample("wapiti-3.2.3/report.xml") and b"xmlns:xsi" not in sample("wapiti-3.2.3/report.xml")
    assert [f.fingerprint for f in js] == [f.fingerprint for f in xml]
    assert [(f.rule_id, f.location.param, f.cwe) for f in js] == [
        ("Content Security Policy Configuration", "Content-Security-Policy", None),
        ("Clickjacking Protection", "X-Frame-Options", 1021),  # CWE from the category table
        ("MIME Type Confusion", "X-Content-Type-Options", None),
        ("HttpOnly Flag cookie", "sessionid", 1004),  # "... in the cookie : sessionid"
        ("Secure Flag cookie", "sessionid", 614),
        ("SQL Injection", "q", 89),
    ]
    sqli = js[-1]
    assert sqli.severity == "critical" and sqli.location.url == "http://127.0.0.1:18477/api/items/42"
    assert sqli.extra["http_request"].startswith("GET /api/items/42?q=apple%C2%BF%27%22%28 HTTP/1.1")
    assert [f.extra["module"] for f in xml] == ["csp", "http_headers", "http_headers", "cookieflags", "cookieflags",
                                                "sql"]


# ----------------------------------------------------------------------------- SARIF


def test_sarif_appendix_k(sample):
    (f,) = parse_bytes(sample("sarif/appendix_k.sarif"), "sarif")
    assert f.scanner == "codescanner" and f.rule_id == "C2001" and f.kind == "code"
    assert f.severity == "high"  # level error
    assert f.description == 'Variable "ptr" was used without being initialized. It was declared [here](0).'
    assert f.location.path == "collections/list.h" and f.location.line == 15
    assert f.scanner_status == "suppressed"


def test_sarif_bash_report(sample):
    fs = parse_bytes(sample("sarif/bash-report.sarif"), "sarif")
    assert Counter(f.rule_id for f in fs) == {"2077": 14, "2072": 8, "1035": 3, "2076": 1, "2071": 1}
    assert all(f.severity == "low" and f.confidence == "high" and f.kind == "code" for f in fs)
    # 27 results, 12 distinct issues: ShellCheck reports some lines several times.
    assert len({f.fingerprint for f in fs}) == 12


def test_sarif_dependency_check(sample):
    fs = parse_bytes(sample("sarif/dependency_check.sarif"), "dc")
    assert all(f.kind == "dependency" for f in fs)
    assert sum(1 for f in fs if f.cves) == 9
    jq = next(f for f in fs if f.rule_id == "CVE-2015-9251")
    assert jq.package.name == "jquery" and jq.package.version == "1.8.0.min" and jq.package.ecosystem == "javascript"
    assert jq.cvss_score == 6.1 and jq.severity == "medium"
    assert jq.cvss_vector == "CVSS:3.0/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N"
    retire = fs[0]
    assert retire.cves == () and retire.package.name == "handlebars" and retire.severity == "low"
    assert len(retire.title) <= 300


def test_sarif_codeql(sample):
    fs = parse_bytes(sample("handmade/sarif_codeql.sarif"), "codeql")
    assert len(fs) == 2  # the "pass" result is not a finding
    sqli, logging = fs
    assert sqli.scanner == "codeql" and sqli.cwe == 89 and sqli.cvss_score == 8.8 and sqli.severity == "high"
    assert sqli.confidence == "high" and sqli.solution == "Use parameterized queries."
    assert "primaryLocationLineHash=4d0b7a6c2f3e1a90:1" in sqli.extra["anchor"]
    assert logging.cwe == 312  # the first CWE tag

"""Deriving virtual patches from findings, and what their patterns match (Python's re, same syntax as PCRE2).

The live behaviour through real HAProxy is in tests/integration/gateway.
"""

from __future__ import annotations

import re

import pytest

from selfheal.findings.model import Finding, Location
from selfheal.gateway.virtual_patch import (
    ATTACKS,
    INJECTION_CWES,
    RuleError,
    build_pattern,
    check_rule,
    derive,
    normalize_path,
    rule_id_of,
)


def web(cwe: int | None, path: str | None = "/products", param: str | None = "category", method: str | None = "GET",
        service: str | None = "shop", kind: str = "web") -> Finding:
    return Finding(
        scanner="zap", rule_id="r1", title="t", severity="high", kind=kind, cwe=cwe,  # type: ignore[arg-type]
        location=Location(method=method, path=path, param=param), service=service, fingerprint="fp1",
    )


def matches(rule, key: str) -> bool:
    """Match as HAProxy does: PCRE2 without UTF mode works on the request's bytes."""
    return re.search(rule.pattern.encode(), key.encode()) is not None


SQLI_ATTACKS = [
    "' OR 1=1--", "%27%20OR%201%3D1--", "1 or 1=1", "1+OR+1=1", "1%20AND%20sleep(5)", "x\"", "1;drop table x",
    "1 UNION SELECT password FROM users", "1/**/union/**/select", "1%2F*", "1 || 2", "a%23", "0 or true",
    "1) waitfor delay '0:0:5'", "char(65)",
]
SQLI_LEGIT = ["books", "garden-tools", "42", "books or magazines", "Selection", "union-jack", "fromage", "a.b_c"]


@pytest.mark.parametrize("value", SQLI_ATTACKS)
def test_sqli_rule_blocks_attack_values(value: str) -> None:
    rule = derive(web(89))
    assert matches(rule, f"GET /products?category={value}")
    assert matches(rule, f"GET /products?page=2&category={value}&sort=asc")


@pytest.mark.parametrize("value", SQLI_LEGIT)
def test_sqli_rule_lets_legitimate_values_through(value: str) -> None:
    assert not matches(derive(web(89)), f"GET /products?category={value}&q=O'Reilly")


def test_rule_is_scoped_to_method_path_and_parameter() -> None:
    rule = derive(web(89))
    assert not matches(rule, "GET /other?category='")
    assert not matches(rule, "GET /products/extra?category='")
    assert not matches(rule, "POST /products?category='")
    assert not matches(rule, "GET /products?q='&category=books")
    assert not matches(rule, "GET /products?xcategory='")
    # HEAD runs the GET handler; slashes and encodings an app normalizes still match.
    assert matches(rule, "HEAD /products?category='")
    assert matches(rule, "GET //products/?category='")
    assert matches(rule, "GET /products?cat%65gory=%27")
    assert matches(rule, "GET /products?CATEGORY=%27")
    assert matches(rule, "GET /products?category[]='")


@pytest.mark.parametrize(
    ("cwe", "attack", "legit"),
    [
        (78, "a;id", "report-2024.pdf"),
        (78, "a%7Ccat%20/etc/passwd", "quarterly"),
        (78, "%60id%60", "x"),
        (78, "$(id)", "abc"),
        (78, "a%26id", "a-b"),
        (79, "<script>alert(1)</script>", "hello"),
        (79, "%3Cimg%20src=x%20onerror=alert(1)%3E", "a b"),
        (79, "javascript:alert(1)", "javanese"),
        (79, "x onmouseover=alert(1)", "online"),
        (22, "../../etc/passwd", "report.pdf"),
        (22, "%2e%2e%2fetc%2fpasswd", "a.b.c"),
        (22, "/etc/passwd", "docs/readme.txt"),
        (22, "..%5c..%5cwindows", "x"),
        (22, "C:%5Cwindows", "c-drive"),
        (22, "file.txt%00.png", "file.txt"),
        (94, "__import__('os')", "plain"),
        (94, "{{7*7}}", "seven"),
        (94, "${7*7}", "x7"),
        (601, "//evil.example", "/home"),
        (601, "https://evil.example", "dashboard"),
        (918, "http://169.254.169.254/latest", "example"),
        (113, "x%0d%0aSet-Cookie:a=b", "x"),
        (90, "*)(uid=*", "alice"),
    ],
)
def test_each_injection_class_blocks_its_attack_only(cwe: int, attack: str, legit: str) -> None:
    rule = derive(web(cwe, param="q"))
    assert rule.attack_class == INJECTION_CWES[cwe]
    assert matches(rule, f"GET /products?q={attack}"), rule.attack_class
    assert not matches(rule, f"GET /products?q={legit}"), rule.attack_class


def test_nosql_operator_in_brackets_is_blocked() -> None:
    rule = derive(web(943, param="user"))
    assert matches(rule, "GET /products?user[$ne]=x")
    assert matches(rule, "GET /products?user=%7B%22$gt%22:%22%22%7D")
    assert not matches(rule, "GET /products?user=alice")


def test_injection_without_parameter_covers_every_parameter() -> None:
    rule = derive(web(89, param=None))
    assert rule.param is None
    assert matches(rule, "GET /products?anything='")
    assert not matches(rule, "GET /products?anything=books")


def test_path_templates_match_one_segment() -> None:
    rule = derive(web(89, path="/items/{id}/reviews", param="sort"))
    assert matches(rule, "GET /items/42/reviews?sort='")
    assert not matches(rule, "GET /items/42/x/reviews?sort='")
    assert not matches(rule, "GET /items/reviews?sort='")


def test_missing_auth_and_exposure_rules() -> None:
    auth = derive(web(306, path="/admin/users", param=None, method=None))
    assert auth.action == "require_auth" and auth.param is None
    assert matches(auth, "GET /admin/users?")
    assert matches(auth, "DELETE /admin/users?id=1")
    assert not matches(auth, "GET /admin/users2?")
    deny = derive(web(538, path="/.git/", param=None, method="GET"))
    assert deny.action == "deny"
    assert matches(deny, "GET /.git/config?") and matches(deny, "GET /.git?")
    assert not matches(deny, "GET /.github/x?")
    explicit = derive(web(200, path="/debug", param=None), action="deny")
    assert explicit.action == "deny"


def test_rule_id_is_deterministic_and_embedded() -> None:
    a, b = derive(web(89)), derive(web(89))
    assert a == b and a.id.startswith("vp-")
    assert rule_id_of(a.pattern) == a.id
    assert derive(web(89, param="other")).id != a.id
    assert derive(web(89), service="other-svc").id != a.id
    assert "CWE-89" in a.reason and a.finding == "fp1"


@pytest.mark.parametrize(
    ("finding", "message"),
    [
        (web(89, path="products"), "must start with '/'"),
        (web(89, path="/a b"), "malformed path"),
        (web(89, path="/a\x00b"), "malformed path"),
        (web(89, path="/a{b"), "braces"),
        (web(89, path="/a%0ab"), "malformed path"),
        (web(89, path=None), "no location path"),
        (web(89, method="G T"), "malformed HTTP method"),
        (web(89, param="a&b"), "malformed parameter"),
        (web(None), "no CWE"),
        (web(1021), "no virtual patch recipe"),
        (web(89, kind="dependency"), "kind 'dependency'"),
        (web(89, service=None), "no service"),
        (web(89, service="Bad Name"), "malformed service"),
    ],
)
def test_bad_findings_raise_clear_errors(finding: Finding, message: str) -> None:
    with pytest.raises(RuleError, match=re.escape(message)):
        derive(finding)


def test_path_from_full_url_and_query_is_stripped() -> None:
    assert normalize_path("http://host:8080/p/q?x=1") == ("/p/q", False)
    assert normalize_path("/caf%C3%A9") == ("/café", False)
    rule = derive(web(89, path="/caf%C3%A9"))
    assert matches(rule, "GET /café?category='")


def test_check_rule_refuses_unknown_service_and_tampered_pattern() -> None:
    rule = derive(web(89))
    check_rule(rule, ["shop"])
    with pytest.raises(RuleError, match="unknown service 'shop'"):
        check_rule(rule, ["billing"])
    bad = build_pattern("vp-other", "block_injection", "GET", "/p", "x", "sqli")
    from dataclasses import replace

    with pytest.raises(RuleError, match="rule id marker"):
        check_rule(replace(rule, pattern=bad), ["shop"])
    with pytest.raises(RuleError, match="line breaks"):
        check_rule(replace(rule, pattern=rule.pattern + "\n"), ["shop"])


def test_every_attack_class_compiles_and_is_reachable_from_a_cwe() -> None:
    assert set(INJECTION_CWES.values()) == set(ATTACKS)
    for cls in ATTACKS:
        re.compile(build_pattern("vp-x", "block_injection", None, "/", "p", cls))

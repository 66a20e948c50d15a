"""Virtual patches derived from findings, applied through the runtime API of the real HAProxy."""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import quote

import pytest
from gateway_kit import GatewayEnv

from selfheal.findings.model import Finding, Location
from selfheal.gateway.state import ServerSpec
from selfheal.gateway.virtual_patch import RuleError, derive

ATTACK = "/products?category=" + quote("' OR 1=1--")


def finding(cwe: int, path: str = "/products", param: str | None = "category", method: str | None = "GET",
            service: str = "shop") -> Finding:
    return Finding(
        scanner="zap", rule_id="40018", title="SQL Injection", severity="high", kind="web", cwe=cwe,
        location=Location(url=f"http://shop.localhost{path}", method=method, path=path, param=param),
        service=service, fingerprint=f"fp-{cwe}-{path}",
    )


@pytest.fixture
def served(gateway: GatewayEnv, echo_backend) -> GatewayEnv:
    shop, admin = echo_backend("shop-1"), echo_backend("admin-1")
    gateway.gw.servers.add(ServerSpec("shop", "s1", "127.0.0.1", shop.port))
    gateway.gw.servers.add(ServerSpec("admin", "a1", "127.0.0.1", admin.port))
    gateway.wait_up("shop", "s1")
    gateway.wait_up("admin", "a1")
    return gateway


def test_sqli_patch_blocks_attack_only_at_its_location(served: GatewayEnv) -> None:
    gw = served.gw
    assert served.request("shop", ATTACK).status == 200  # vulnerable before

    rule = gw.patches.apply_finding(finding(89))
    assert rule.action == "block_injection" and rule.param == "category"

    blocked = served.request("shop", ATTACK)
    assert blocked.status == 403
    assert blocked.json() == {"error": "forbidden", "reason": "virtual patch"}
    assert blocked.headers["x-content-type-options"] == "nosniff"  # headers on gateway-made responses too
    assert served.request("shop", "/products?category=%27").status == 403
    assert served.request("shop", "/products?page=2&category=1%20or%201=1").status == 403
    assert served.request("shop", "/products?cat%65gory=%27%20OR%201=1--").status == 403

    ok = served.request("shop", "/products?category=books")
    assert ok.status == 200 and ok.json()["params"] == {"category": "books"}
    assert served.request("shop", "/products?category=books&q=O%27Reilly").status == 200
    assert served.request("shop", "/other?category=" + quote("' OR 1=1--")).status == 200
    assert served.request("admin", ATTACK).status == 200  # another service, same path
    assert served.request("shop", ATTACK, method="POST").status == 200  # finding was on GET only

    # Denied requests are logged like any other, without a server.
    denied = [r for r in served.logs.wait_for(1, backend="shop", server="<NOSRV>") if r.status == 403]
    assert denied and denied[0].path == "/products" and denied[0].tr_ms == -1

    assert gw.patches.remove(rule.id) is True
    assert served.request("shop", ATTACK).status == 200
    assert gw.patches.remove(rule.id) is False


def test_form_body_parameter_is_checked_too(served: GatewayEnv) -> None:
    served.gw.patches.apply_finding(finding(89, path="/login", param="user", method="POST"))
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert served.request("shop", "/login", "POST", form, b"user=admin%27--&pw=x").status == 403
    ok = served.request("shop", "/login", "POST", form, b"user=admin&pw=x%27")
    assert ok.status == 200 and ok.json()["body"] == "user=admin&pw=x%27"


def test_apply_and_remove_are_idempotent_by_rule_id(served: GatewayEnv) -> None:
    gw = served.gw
    rule = derive(finding(89))
    acl = str(served.paths.acl("shop", "block_injection"))
    assert gw.patches.apply(rule) is True
    audit = len(served.store.audit_events())
    assert gw.patches.apply(rule) is False
    assert gw.patches.apply(derive(finding(89))) is False
    assert [e.pattern for e in gw.runtime.acl_entries(acl)] == [rule.pattern]
    assert len(served.store.audit_events()) == audit  # a no-op is not a change

    gw.runtime.del_acl(acl, rule.pattern)  # live entry lost behind our back
    assert gw.patches.apply(rule) is True
    assert served.request("shop", ATTACK).status == 403
    assert gw.patches.live_rule_ids() == {rule.id}

    assert gw.patches.remove(rule) is True
    assert gw.patches.remove(rule) is False
    assert gw.runtime.acl_entries(acl) == [] and served.store.list_rules() == []


def test_missing_auth_and_exposure_rules(served: GatewayEnv) -> None:
    gw = served.gw
    auth = gw.patches.apply_finding(finding(306, path="/admin/users", param=None, method=None))
    r = served.request("shop", "/admin/users")
    assert r.status == 401 and r.headers["www-authenticate"] == "Bearer"
    assert served.request("shop", "/admin/users", "DELETE").status == 401
    assert served.request("shop", "/admin/users", headers={"Authorization": "Bearer t"}).status == 200
    assert served.request("shop", "/admin/userz").status == 200

    deny = gw.patches.apply_finding(finding(538, path="/.git/", param=None))
    assert served.request("shop", "/.git/config").status == 403
    assert served.request("shop", "/.git/config", headers={"Authorization": "Bearer t"}).status == 403
    assert served.request("shop", "/.github").status == 200

    gw.patches.remove(auth.id)
    gw.patches.remove(deny.id)
    assert served.request("shop", "/admin/users").status == 200
    assert served.request("shop", "/.git/config").status == 200


@pytest.mark.parametrize(
    ("cwe", "attack", "legit"),
    [(22, "../../etc/passwd", "report.pdf"), (79, "<script>alert(1)</script>", "hello"), (78, "x;id", "x")],
)
def test_other_injection_classes_live(served: GatewayEnv, cwe: int, attack: str, legit: str) -> None:
    served.gw.patches.apply_finding(finding(cwe, path="/files", param="name"))
    assert served.request("shop", "/files?name=" + quote(attack)).status == 403
    assert served.request("shop", "/files?name=" + quote(legit)).status == 200


def test_bad_rules_change_nothing_live(served: GatewayEnv) -> None:
    gw = served.gw
    good = gw.patches.apply_finding(finding(89))
    live_before = {a: gw.runtime.acl_entries(str(served.paths.acl(s, a)))
                   for s in ("shop", "admin") for a in ("block_injection", "require_auth", "deny")}
    audit_before = len(served.store.audit_events())

    with pytest.raises(RuleError, match="unknown service 'billing'"):
        gw.patches.apply(derive(finding(89), service="billing"))
    with pytest.raises(RuleError, match="malformed path"):
        gw.patches.apply_finding(finding(89, path="/pro ducts"))
    with pytest.raises(RuleError, match="must start with '/'"):
        gw.patches.apply_finding(finding(89, path="products"))
    # Valid for Python's re, refused by HAProxy's PCRE2: the desired state is rolled back.
    odd = replace(good, id="vp-odd", pattern="(?i)(?#vp=vp-odd)^GET\\x20/\\N{LATIN SMALL LETTER A}")
    with pytest.raises(RuleError, match="haproxy refused"):
        gw.patches.apply(odd)
    assert served.store.get_rule("vp-odd") is None
    assert served.store.audit_events()[0].action == "gateway.rule.refused"

    live_after = {a: gw.runtime.acl_entries(str(served.paths.acl(s, a)))
                  for s in ("shop", "admin") for a in ("block_injection", "require_auth", "deny")}
    assert live_after == live_before
    assert [r.id for r in served.store.list_rules()] == [good.id]
    assert len(served.store.audit_events()) == audit_before + 2  # the refused apply and its undo
    assert served.request("shop", ATTACK).status == 403
    assert served.request("shop", "/products?category=books").status == 200

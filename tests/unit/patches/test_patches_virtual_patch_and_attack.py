"""virtual_patch recipe (reuses the gateway's rule derivation) and the attack requests plans carry."""

from __future__ import annotations

from patches_kit import dep, make_service, wapiti_demo_findings, web

from selfheal.gateway.virtual_patch import derive
from selfheal.patches.attack import attack_requests, parse_curl, parse_raw_request
from selfheal.patches.model import Oracle
from selfheal.patches.recipes import PlanContext
from selfheal.patches.recipes.virtual_patch import VirtualPatchRecipe


def sqli():
    return next(f for f in wapiti_demo_findings() if f.cwe == 89)


def test_virtual_patch_plan_is_the_gateway_rule() -> None:
    f = sqli()
    plan = VirtualPatchRecipe().plan([f], make_service(), None, PlanContext())
    rule = derive(f, "shop")
    assert plan.gateway is not None and plan.gateway.rule == rule.to_dict()
    assert plan.delivery == "gateway" and plan.diff == "" and not plan.needs_human
    assert plan.details["revert"] == {"remove_rule": rule.id}
    assert rule.action == "block_injection" and rule.param == "category" and rule.attack_class == "sqli"
    assert plan.verification.applicable() == ["exploit_replay"]


def test_virtual_patch_applies_to_missing_auth_not_to_dependencies() -> None:
    r, svc = VirtualPatchRecipe(), make_service()
    auth = web(306, "/admin/users", None)
    assert r.applies(auth, svc)
    plan = r.plan([auth], svc, None, PlanContext())
    assert plan.details["action"] == "require_auth"
    assert [(a.path, a.oracle.status_in) for a in plan.verification.exploit_replay] == [
        ("/admin/users", (200,))
    ]
    assert not r.applies(dep("jinja2", "3.1.2", "3.1.3"), svc)
    assert not r.applies(web(693, "/", "X-Frame-Options"), svc)


def test_wapiti_request_is_replayed_first_then_a_probe() -> None:
    reqs = attack_requests(sqli())
    assert reqs[0].source == "wapiti http_request"
    assert reqs[0].method == "GET" and reqs[0].path == "/api/items?category=default%C2%BF%27%22%28"
    assert all(name.lower() not in ("host", "connection", "accept-encoding") for name, _ in reqs[0].headers)
    assert reqs[-1].source == "synthesized probe" and reqs[-1].path.startswith("/api/items?category=selfheal")
    oracle = reqs[0].oracle
    assert oracle.reproduced(500, {}, '{"detail": "sqlite3.OperationalError: unrecognized token"}')
    assert not oracle.reproduced(200, {}, "[]")


def test_raw_request_parsing_is_defensive() -> None:
    assert parse_raw_request("garbage", "x") is None
    assert (
        parse_raw_request("GET http://evil/p?q=1 HTTP/1.1\nX-Ok: 1\nBad Header: x\n\nbody", "x").path
        == "/p?q=1"
    )
    req = parse_raw_request("POST /login HTTP/1.1\r\nContent-Type: a/b\r\n\r\nuser='", "x")
    assert (req.method, req.headers, req.body) == ("POST", (("Content-Type", "a/b"),), "user='")
    assert parse_raw_request("GET /" + "a" * 20000 + " HTTP/1.1", "x") is None


def test_curl_and_zap_attack_sources() -> None:
    req = parse_curl("curl -X PUT -H 'X-Key: 1' -d 'a=1' \"http://h:1/p?x=%27\"")
    assert (req.method, req.path, req.headers, req.body) == ("PUT", "/p?x=%27", (("X-Key", "1"),), "a=1")
    zap = web(79, "/search", "q", extra={"attack": "<script>alert(1)</script>"})
    reqs = attack_requests(zap)
    assert reqs[0].source == "zap attack" and "q=%3Cscript%3E" in reqs[0].path
    assert reqs[0].oracle.reproduced(200, {}, "<p><script>alert(1)</script></p>")
    assert not reqs[0].oracle.reproduced(200, {}, "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>")


def test_findings_without_a_judgeable_request_get_none() -> None:
    assert attack_requests(dep("jinja2", "3.1.2", "3.1.3")) == ()
    assert attack_requests(web(16, "/", "X-Frame-Options")) == ()
    assert Oracle().reproduced(500, {}, "anything") is False

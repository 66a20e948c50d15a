"""A crashed gateway loses every run-time change; reconcile from Postgres brings all of it back."""

from __future__ import annotations

import json
import time
from collections import Counter
from urllib.parse import quote

import pytest
from gateway_kit import EchoBackend, start_gateway, stop_gateway

from selfheal.findings.model import Finding, Location
from selfheal.gateway.state import ServerSpec, SqlStateStore
from selfheal.gateway.virtual_patch import derive

RULES = 60


def web(cwe: int, path: str, param: str | None) -> Finding:
    return Finding(scanner="wapiti", rule_id="x", title="t", severity="high", kind="web", cwe=cwe,
                   location=Location(method="GET", path=path, param=param), service="shop")


@pytest.mark.postgres
def test_kill_restart_reconcile_restores_rules_and_weights(pg_url: str, echo_backend) -> None:
    store = SqlStateStore(pg_url)
    store.create_tables()
    env = start_gateway(store)
    try:
        blue: EchoBackend = echo_backend("blue")
        green: EchoBackend = echo_backend("green")
        spare: EchoBackend = echo_backend("spare")
        gw = env.gw
        gw.servers.add(ServerSpec("shop", "blue", "127.0.0.1", blue.port, weight=30))
        gw.servers.add(ServerSpec("shop", "green", "127.0.0.1", green.port, weight=90))
        gw.servers.add(ServerSpec("shop", "spare", "127.0.0.1", spare.port, weight=10, state="maint"))
        rules = [derive(web(89, f"/products/{i}", "category")) for i in range(RULES - 2)]
        rules.append(derive(web(306, "/admin", None)))
        rules.append(derive(web(538, "/.git/", None)))
        for r in rules:
            gw.patches.apply(r)
        assert gw.patches.live_rule_ids() == {r.id for r in rules}

        env.restart(kill=True)  # SIGKILL: nothing is flushed, all run-time state is gone
        assert gw.runtime.servers("shop") == []
        assert gw.patches.live_rule_ids() == set()

        t0 = time.perf_counter()
        report = gw.reconcile()
        env.wait_up("shop", "blue")
        env.wait_up("shop", "green")
        seconds = time.perf_counter() - t0
        print(json.dumps({"gateway_restart_reconcile_seconds": round(report.seconds, 4),
                          "until_servers_up_seconds": round(seconds, 4), "rules_restored": report.rules.added}))

        assert report.rules.added == RULES and report.rules.removed == 0
        assert report.servers.added == 3
        assert gw.patches.live_rule_ids() == {r.id for r in rules}
        live = {s.name: (s.weight, s.state) for s in gw.runtime.servers("shop")}
        assert live == {"blue": (30, "ready"), "green": (90, "ready"), "spare": (10, "maint")}

        assert env.request("shop", "/products/7?category=" + quote("' OR 1=1--")).status == 403
        assert env.request("shop", "/products/7?category=books").status == 200
        assert env.request("shop", "/admin").status == 401
        assert env.request("shop", "/.git/config").status == 403
        spread = Counter(env.request("shop", f"/x?i={i}").json()["server"] for i in range(120))
        assert spread == Counter(blue=30, green=90)

        again = gw.reconcile()
        assert (again.rules.added, again.rules.removed, again.servers.added, again.servers.updated) == (0, 0, 0, 0)
        assert again.rules.unchanged == RULES and again.servers.unchanged == 3
    finally:
        stop_gateway(env)
        store.dispose()


def test_reconcile_removes_what_is_not_desired(gateway, echo_backend) -> None:
    blue = echo_backend("blue")
    rt = gateway.gw.runtime
    rt.add_server("shop", "stray", "127.0.0.1", blue.port)
    rt.add_acl(str(gateway.paths.acl("shop", "deny")), "(?#vp=vp-stray)^GET")
    gateway.gw.servers.add(ServerSpec("shop", "blue", "127.0.0.1", blue.port, weight=20))
    rt.set_weight("shop", "blue", 200)  # drifted by hand

    report = gateway.gw.reconcile()
    assert report.servers.removed == 1 and report.servers.updated == 1 and report.rules.removed == 1
    assert [(s.name, s.weight) for s in rt.servers("shop")] == [("blue", 20)]
    assert rt.acl_entries(str(gateway.paths.acl("shop", "deny"))) == []

"""Servers added, weighted, drained and removed at run time (no reload), with real traffic."""

from __future__ import annotations

from collections import Counter

import pytest
from gateway_kit import GatewayEnv

from selfheal.gateway.runtime import RuntimeAPIError, RuntimeClient, RuntimeUnavailable
from selfheal.gateway.servers import ServerError
from selfheal.gateway.state import ServerSpec


def spread(env: GatewayEnv, n: int = 40) -> Counter[str]:
    return Counter(env.request("shop", f"/w?i={i}").json()["server"] for i in range(n))


def test_add_weight_drain_remove_with_traffic(gateway: GatewayEnv, echo_backend) -> None:
    blue, green = echo_backend("blue"), echo_backend("green")
    pid = gateway.haproxy.pid
    pool = gateway.gw.servers
    pool.add(ServerSpec("shop", "blue", "127.0.0.1", blue.port, weight=100))
    pool.add(ServerSpec("shop", "green", "127.0.0.1", green.port, weight=100))
    gateway.wait_up("shop", "blue")
    gateway.wait_up("shop", "green")

    both = spread(gateway)
    assert both["blue"] == both["green"] == 20  # roundrobin, equal weights

    pool.set_weight("shop", "green", 0)
    assert spread(gateway) == Counter(blue=40)
    assert {s.name: s.weight for s in gateway.gw.runtime.servers("shop")} == {"blue": 100, "green": 0}

    pool.set_weights("shop", {"blue": 75, "green": 25})
    split = spread(gateway, 80)
    assert split["green"] == 20 and split["blue"] == 60

    pool.set_state("shop", "blue", "drain")
    assert spread(gateway) == Counter(green=40)
    assert {s.name: s.state for s in gateway.gw.runtime.servers("shop")} == {"blue": "drain", "green": "ready"}
    pool.set_state("shop", "blue", "maint")
    assert spread(gateway) == Counter(green=40)
    pool.set_state("shop", "blue", "ready")
    assert set(spread(gateway)) == {"blue", "green"}

    assert pool.remove("shop", "green") is True
    assert pool.remove("shop", "green") is False
    assert [s.name for s in gateway.gw.runtime.servers("shop")] == ["blue"]
    assert spread(gateway) == Counter(blue=40)
    assert gateway.haproxy.pid == pid and gateway.haproxy.proc.poll() is None  # no reload, same process

    # Desired state followed every step and each change is audited.
    assert gateway.store.list_servers("shop") == [ServerSpec("shop", "blue", "127.0.0.1", blue.port, 75, "ready")]
    actions = [e.action for e in gateway.store.audit_events()]
    assert actions.count("gateway.server.weight") == 3 and "gateway.server.remove" in actions


def test_bad_server_changes_are_refused_and_change_nothing(gateway: GatewayEnv, echo_backend) -> None:
    blue = echo_backend("blue")
    pool = gateway.gw.servers
    pool.add(ServerSpec("shop", "blue", "127.0.0.1", blue.port, weight=50))
    gateway.wait_up("shop", "blue")
    live_before = gateway.gw.runtime.servers()
    audit_before = len(gateway.store.audit_events())

    with pytest.raises(ServerError, match=r"0\.\.256"):
        pool.set_weight("shop", "blue", 300)
    with pytest.raises(ServerError, match=r"0\.\.256"):
        pool.set_weight("shop", "blue", -1)
    with pytest.raises(ServerError, match="unknown server shop/ghost"):
        pool.set_weights("shop", {"blue": 10, "ghost": 5})
    with pytest.raises(ServerError, match="unknown service 'billing'"):
        pool.add(ServerSpec("billing", "b1", "127.0.0.1", blue.port))
    with pytest.raises(ServerError, match="does not appear to be an IPv4 or IPv6 address"):
        pool.add(ServerSpec("shop", "b2", "blue.example", blue.port))
    with pytest.raises(ServerError, match="already exists"):
        pool.add(ServerSpec("shop", "blue", "127.0.0.1", blue.port + 1))
    with pytest.raises(ServerError, match="state must be"):
        pool.set_state("shop", "blue", "sleepy")

    assert gateway.gw.runtime.servers() == live_before
    assert gateway.store.get_server("shop", "blue").weight == 50  # type: ignore[union-attr]
    assert len(gateway.store.audit_events()) == audit_before
    assert gateway.request("shop", "/still").json()["server"] == "blue"


def test_haproxy_refusal_rolls_desired_state_back(gateway: GatewayEnv, echo_backend) -> None:
    blue = echo_backend("blue")
    # Created behind the pool's back: HAProxy will refuse the pool's add with its own message.
    gateway.gw.runtime.add_server("shop", "taken", "127.0.0.1", blue.port)
    with pytest.raises(ServerError, match="Already exists a server with the same name"):
        gateway.gw.servers.add(ServerSpec("shop", "taken", "127.0.0.1", blue.port))
    assert gateway.store.get_server("shop", "taken") is None
    assert [e.action for e in gateway.store.audit_events()[:2]] == ["gateway.server.add.refused", "gateway.server.add"]


def test_runtime_client_errors_acl_and_map_commands(gateway: GatewayEnv) -> None:
    rt = gateway.gw.runtime
    with pytest.raises(RuntimeAPIError, match="No such backend"):
        rt.add_server("nope", "x", "127.0.0.1", 1)
    with pytest.raises(RuntimeAPIError, match="Unknown command"):
        rt.command("frobnicate now")
    acl = str(gateway.paths.acl("shop", "deny"))
    rt.add_acl(acl, "(?#vp=t)^GET\\x20/a b;c")
    assert [e.pattern for e in rt.acl_entries(acl)] == ["(?#vp=t)^GET\\x20/a b;c"]
    assert rt.match_acl(acl, "GET /a b;c") is True and rt.match_acl(acl, "GET /b") is False
    assert rt.del_acl(acl, "(?#vp=t)^GET\\x20/a b;c") is True
    assert rt.del_acl(acl, "(?#vp=t)^GET\\x20/a b;c") is False
    with pytest.raises(RuntimeAPIError, match=r"regex .* is invalid"):
        rt.add_acl(acl, "([")
    with pytest.raises(RuntimeAPIError, match="Unknown ACL identifier"):
        rt.add_acl("/no/such.acl", "x")
    rt.replace_acl(acl, ["one", "two"])
    assert sorted(e.pattern for e in rt.acl_entries(acl)) == ["one", "two"]
    rt.clear_acl(acl)
    assert rt.acl_entries(acl) == []

    hosts = str(gateway.paths.hosts_map)
    assert ("shop.localhost", "shop") in [(k, v) for _, k, v in rt.map_entries(hosts)]
    rt.add_map(hosts, "store.localhost", "shop")
    assert gateway.request("store", "/").status == 503  # routed to shop, which has no server yet
    rt.set_map(hosts, "store.localhost", "admin")
    assert rt.del_map(hosts, "store.localhost") is True and rt.del_map(hosts, "store.localhost") is False
    assert gateway.request("store", "/").status == 404

    stats = rt.stats()
    assert {"HTTP_IN", "shop", "admin", "STATS"} <= {r["pxname"] for r in stats}
    assert int(rt.info()["Nbthread"]) == 1


def test_kept_connection_survives_a_restart_and_reports_a_dead_socket(gateway: GatewayEnv) -> None:
    rt = gateway.gw.runtime
    assert rt.version()
    gateway.restart()
    assert rt.version()  # reconnected once, transparently
    gateway.haproxy.stop()
    with pytest.raises(RuntimeUnavailable, match=r"admin\.sock"):
        rt.version()
    with pytest.raises(RuntimeUnavailable):
        RuntimeClient(gateway.run_dir / "nothing.sock").version()


def test_server_joins_only_once_healthy_and_a_never_healthy_one_changes_nothing(
    gateway: GatewayEnv, echo_backend
) -> None:
    blue, sick = echo_backend("blue"), echo_backend("sick", healthy=False)
    pool = gateway.gw.servers
    pool.add(ServerSpec("shop", "blue", "127.0.0.1", blue.port), wait_healthy=5)
    assert {s.name: (s.state, s.up) for s in gateway.gw.runtime.servers("shop")} == {"blue": ("ready", True)}
    assert gateway.gw.runtime.check_status("shop", "blue") == "L7OK"
    live_before = gateway.gw.runtime.servers("shop")

    with pytest.raises(ServerError, match=r"never became healthy within 1.0s \(last check: L7STS\)"):
        pool.add(ServerSpec("shop", "sick", "127.0.0.1", sick.port), wait_healthy=1.0)
    assert sick.hits == 0  # not one request reached it
    assert gateway.gw.runtime.servers("shop") == live_before
    assert gateway.store.get_server("shop", "sick") is None
    last = gateway.store.audit_events()[0]
    assert last.action == "gateway.server.remove" and "never healthy" in last.detail["reason"]
    assert spread(gateway, 10) == Counter(blue=10)

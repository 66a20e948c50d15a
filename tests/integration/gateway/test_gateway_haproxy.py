"""Rendering, validation, socket, metrics, headers and per-request logs with the real HAProxy 2.6."""

from __future__ import annotations

import os
import stat
import subprocess
import urllib.request
from pathlib import Path

import pytest
from gateway_kit import GatewayEnv, make_catalog

from selfheal.gateway.config import ConfigError, GatewaySettings, ServiceGateway, validate_config, write_config
from selfheal.gateway.state import ServerSpec


def test_rendered_config_passes_haproxy_check(tmp_path: Path) -> None:
    paths = write_config(make_catalog(), GatewaySettings(run_dir=tmp_path / "gw"))
    proc = subprocess.run(["haproxy", "-c", "-f", str(paths.config)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Configuration file is valid" in proc.stdout
    assert stat.S_IMODE(os.stat(paths.run_dir).st_mode) == 0o700
    assert paths.acl("shop", "block_injection").read_text() == ""


def test_config_haproxy_rejects_is_a_clear_error_and_keeps_the_old_file(tmp_path: Path) -> None:
    good = write_config(make_catalog(), GatewaySettings(run_dir=tmp_path / "gw"))
    before = good.config.read_text()
    bad = GatewaySettings(run_dir=tmp_path / "gw", services={"shop": ServiceGateway(balance="fastest-please")})
    with pytest.raises(ConfigError) as e:
        write_config(make_catalog(), bad)
    msg = str(e.value)
    assert "haproxy -c rejected" in msg and "ALERT" in msg and "balance only supports" in msg
    assert good.config.read_text() == before
    assert not (tmp_path / "gw" / "haproxy.cfg.new").exists()
    with pytest.raises(ConfigError, match="HAProxy binary not found"):
        validate_config(good.config, haproxy="no-such-haproxy-binary")


def test_runtime_socket_is_owner_only_admin(gateway: GatewayEnv) -> None:
    mode = os.stat(gateway.paths.admin_socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert gateway.gw.runtime.command("show cli level") == "admin"
    assert gateway.gw.runtime.version().startswith("2.6")


def test_prometheus_exporter_and_monitor_uri(gateway: GatewayEnv) -> None:
    base = f"http://127.0.0.1:{gateway.settings.stats_port}"
    with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'haproxy_backend_http_requests_total{proxy="shop"}' in text
    assert 'haproxy_backend_http_requests_total{proxy="admin"}' in text
    assert 'haproxy_frontend_http_requests_total{proxy="HTTP_IN"}' in text
    with urllib.request.urlopen(base + "/healthz", timeout=5) as r:
        assert r.status == 200


def test_routing_by_host_security_headers_and_logs(gateway: GatewayEnv, echo_backend) -> None:
    shop, admin = echo_backend("shop-1"), echo_backend("admin-1")
    gateway.gw.servers.add(ServerSpec("shop", "s1", "127.0.0.1", shop.port))
    gateway.gw.servers.add(ServerSpec("admin", "a1", "127.0.0.1", admin.port))
    gateway.wait_up("shop", "s1")
    gateway.wait_up("admin", "a1")

    r = gateway.request("shop", "/products?category=books")
    assert r.status == 200 and r.json()["server"] == "shop-1" and r.json()["params"] == {"category": "books"}
    assert gateway.request("admin", "/x").json()["server"] == "admin-1"
    assert gateway.request("nobody", "/x").status == 404

    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["strict-transport-security"].startswith("max-age=")
    assert r.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert "server" not in r.headers and "x-powered-by" not in r.headers

    recs = gateway.logs.wait_for(1, backend="shop", server="s1")
    rec = recs[-1]
    assert (rec.status, rec.backend, rec.server, rec.method, rec.path) == (200, "shop", "s1", "GET", "/products")
    assert rec.ta_ms >= 0 and rec.tr_ms >= 0
    assert gateway.logs.wait_for(1, backend="admin")[-1].server == "a1"

"""Rendering haproxy.cfg from the catalog (pure; `haproxy -c` runs in tests/integration/gateway)."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfheal.catalog import Catalog, Service
from selfheal.gateway.config import (
    ConfigError,
    GatewaySettings,
    SecurityHeaders,
    ServiceGateway,
    hosts_map_text,
    render_config,
)
from selfheal.gateway.runtime import check_weight, quote_arg


def catalog(*names: str) -> Catalog:
    return Catalog(services=tuple(Service(name=n, base_url=f"http://{n}", owner="o", repository="/r") for n in names))


def settings(**kw) -> GatewaySettings:
    return GatewaySettings(run_dir=Path("/run/gw"), http_port=9000, stats_port=9001, **kw)


def test_one_frontend_one_backend_per_service_and_runtime_hooks() -> None:
    text = render_config(catalog("shop", "billing"), settings())
    lines = [ln.strip() for ln in text.splitlines()]
    assert lines.count("frontend HTTP_IN") == 1
    assert "backend shop" in lines and "backend billing" in lines
    assert "stats socket /run/gw/admin.sock mode 600 level admin" in lines
    assert "log /run/gw/log.sock len 8192 format raw local0 info" in lines
    assert "http-request use-service prometheus-exporter if { path /metrics }" in lines
    assert "bind 127.0.0.1:9000" in lines and "bind 127.0.0.1:9001" in lines
    for svc in ("shop", "billing"):
        for action in ("block_injection", "require_auth", "deny"):
            assert f"/run/gw/vp/{svc}.{action}.acl" in text
    assert not [ln for ln in lines if ln.startswith(("server ", "server-template "))]  # added at run time


def test_security_headers_rendered_escaped_and_overridable() -> None:
    custom = SecurityHeaders(csp="default-src 'self'; report-uri /r?a=%x \"q\" ${HOME}", hsts=None)
    text = render_config(
        catalog("shop", "legacy", "api"),
        settings(services={"shop": ServiceGateway(security_headers=custom),
                           "legacy": ServiceGateway(security_headers=SecurityHeaders(enabled=False))}),
    )
    shop = text.split("backend shop")[1].split("backend legacy")[0]
    legacy = text.split("backend legacy")[1].split("backend api")[0]
    api = text.split("backend api")[1]
    assert 'set-header Content-Security-Policy "default-src \'self\'; report-uri /r?a=%%x \\"q\\" \\${HOME}"' in shop
    assert "Strict-Transport-Security" not in shop and "X-Frame-Options \"DENY\"" in shop
    assert "del-header Server" in shop
    assert "set-header" not in legacy and "del-header Server" not in legacy
    assert 'set-header X-Content-Type-Options "nosniff"' in api
    assert 'set-header Strict-Transport-Security "max-age=31536000; includeSubDomains"' in api


def test_hosts_map_and_default_service() -> None:
    cat = catalog("shop", "billing")
    s = settings(domain="example.test", default_service="shop",
                 services={"billing": ServiceGateway(hosts=("pay.example.test",))})
    assert hosts_map_text(cat, s) == (
        "shop.example.test shop\nbilling.example.test billing\npay.example.test billing\n"
    )
    assert "default_backend shop" in render_config(cat, s)
    assert "default_backend NO_ROUTE" in render_config(cat, settings())


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"services": {"nope": ServiceGateway()}}, "missing from the catalog"),
        ({"default_service": "nope"}, "not in the catalog"),
        ({"domain": "bad domain"}, "invalid gateway domain"),
        ({"services": {"shop": ServiceGateway(hosts=("billing.localhost",))}}, "claimed by both"),
        ({"services": {"shop": ServiceGateway(health_path="/h ealth")}}, "invalid health path"),
        ({"services": {"shop": ServiceGateway(security_headers=SecurityHeaders(csp="a\nb"))}}, "invalid name or value"),
    ],
)
def test_bad_settings_are_clear_errors(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        render_config(catalog("shop", "billing"), settings(**kw))


def test_same_ports_refused() -> None:
    with pytest.raises(ConfigError, match="must differ"):
        render_config(catalog("shop"), GatewaySettings(run_dir=Path("/x"), http_port=1, stats_port=1))


def test_cli_argument_quoting_and_weight_bounds() -> None:
    assert quote_arg(r"a b;c\d") == r"a\ b\;c\\d"
    for bad in ("", "a\nb", "a\rb", "a\0"):
        with pytest.raises(ValueError):
            quote_arg(bad)
    assert check_weight(0) == 0 and check_weight(256) == 256
    for bad in (-1, 257, 1.5, True, "10"):
        with pytest.raises(ValueError, match=r"0\.\.256"):
            check_weight(bad)  # type: ignore[arg-type]

"""ZapHook against the ZAP API double, through the real zaproxy client (zapv2)."""

from __future__ import annotations

import json
import time

import pytest
from zapv2 import ZAPv2

from selfheal.findings.parsers import parse_bytes
from selfheal.scanners.errors import ScannerAuthError, ScannerTransientError
from selfheal.scanners.zap import ZapApiError, ZapAuthError, ZapHook, ZapNotFoundError, ZapTransientError


def _hook(conn_id: str) -> ZapHook:
    return ZapHook(conn_id)


def _wait_complete(hook: ZapHook, spider_id: str, ascan_id: str, limit_s: float = 10.0) -> list:
    seen = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        p = hook.progress(spider_id, ascan_id)
        seen.append(p)
        if p.complete:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"scan not complete: {seen[-1]}")


def test_full_scan_cycle_with_openapi_and_policy(zap, target, zap_conn):
    hook = _hook(zap_conn())
    assert hook.test_connection() == (True, f"ZAP 2.16.1 at {zap.url}")
    assert "API-Minimal" in hook.scan_policy_names()

    scan = hook.start_scan(target.url, openapi_url=target.openapi_url, policy="API-Minimal")
    assert scan.spider_id.isdigit() and scan.ascan_id.isdigit()
    # what the client really sent: the definition, with the target as host override, and the named policy
    params = {path: p for path, p, _ in zap.calls}
    assert params["JSON/openapi/action/importUrl"] == {"url": target.openapi_url, "hostOverride": target.url}
    assert params["JSON/ascan/action/scan"]["scanPolicyName"] == "API-Minimal"

    seen = _wait_complete(hook, scan.spider_id, scan.ascan_id)
    assert not seen[0].complete  # progress advanced over time, it was not complete at once
    assert any(0 < p.active < 100 or 0 < p.spider < 100 or p.passive_queue > 0 for p in seen)

    raw = hook.alerts_json(target.url, page_size=40)
    alerts = json.loads(raw)["alerts"]
    assert len(alerts) == zap.alert_count() == 125  # 124 passive instances of the sample + 1 SQLi
    assert len({a["id"] for a in alerts}) == len(alerts)
    assert all(
        isinstance(v, str) for a in alerts for k, v in a.items() if k not in ("tags", "sourceMessageId")
    )
    sqli = [a for a in alerts if a["pluginId"] == "40018"]
    assert len(sqli) == 1
    assert (sqli[0]["cweid"], sqli[0]["method"], sqli[0]["param"], sqli[0]["risk"]) == (
        "89",
        "GET",
        "q",
        "High",
    )
    assert sqli[0]["url"].startswith(f"{target.url}/api/items?q=")

    findings = parse_bytes(raw, "zap-alerts.json", fmt="zap-api", service="demo")
    assert len(findings) == 125
    assert any(f.rule_id == "40018" and f.location.param == "q" for f in findings)

    hook.remove_scans(spider_id=scan.spider_id, ascan_id=scan.ascan_id)
    with pytest.raises(ZapNotFoundError, match="does_not_exist"):
        hook.progress(scan.spider_id, scan.ascan_id)
    hook.remove_scans(spider_id=scan.spider_id, ascan_id=scan.ascan_id)  # idempotent
    assert len(json.loads(hook.alerts_json(target.url))["alerts"]) == 125  # ZAP keeps alerts of removed scans


def test_api_key_travels_in_the_header_only(zap, target, zap_conn):
    hook = _hook(zap_conn())
    hook.start_scan(target.url)
    for path, params, headers in zap.calls:
        assert "apikey" not in params, path
        assert headers.get("x-zap-api-key") == zap.api_key, path
        assert zap.api_key not in json.dumps(params), path


def test_alert_paging_returns_each_alert_once(zap, target, zap_conn):
    hook = _hook(zap_conn())
    scan = hook.start_scan(target.url, openapi_url=target.openapi_url)
    _wait_complete(hook, scan.spider_id, scan.ascan_id)
    z = ZAPv2(apikey=zap.api_key, proxies={"http": zap.url})
    for page_size in (1, 7, 50, 124, 125, 1000):
        ids = [a["id"] for a in hook.iter_alerts(target.url, page_size=page_size)]
        assert len(ids) == len(set(ids)) == 125, page_size
        # ZAP's start is 1-based (0 and 1 both begin at the first alert): 0-based offsets repeat one
        first, second = (
            z.core.alerts(target.url, 0, page_size),
            z.core.alerts(target.url, page_size, page_size),
        )
        if page_size > 1 and len(first) == page_size and second:
            assert first[-1]["id"] == second[0]["id"]


def test_alerts_outside_baseurl_are_not_collected(zap, target, zap_conn):
    hook = _hook(zap_conn())
    scan = hook.start_scan(target.url)
    _wait_complete(hook, scan.spider_id, scan.ascan_id)
    assert json.loads(hook.alerts_json("http://other.invalid"))["alerts"] == []


@pytest.mark.parametrize("report_perm_errors", [False, True], ids=["empty-reply", "bad_api_key-json"])
def test_wrong_api_key_is_a_clear_auth_error(zap, zap_conn, report_perm_errors):
    zap.report_perm_errors = report_perm_errors
    hook = _hook(zap_conn(password="not-the-key"))
    with pytest.raises(ZapAuthError) as err:
        hook.version()
    assert isinstance(err.value, ScannerAuthError)
    assert "API key" in str(err.value)
    assert "not-the-key" not in str(err.value)
    ok, message = hook.test_connection()
    assert not ok and "API key" in message


def test_api_errors_name_the_problem(zap, target, zap_conn):
    hook = _hook(zap_conn())
    with pytest.raises(ZapApiError) as err:
        hook.active_scan(target.url)  # nothing in the sites tree yet
    assert err.value.code == "url_not_found"
    hook.access_url(target.url)
    with pytest.raises(ZapNotFoundError, match="scanPolicyName"):
        hook.active_scan(target.url, policy="No Such Policy")
    with pytest.raises(ZapApiError, match="Failed to access the target"):
        hook.import_openapi("http://127.0.0.1:9/openapi.json")


def test_5xx_and_refused_are_transient(zap, zap_conn):
    hook = _hook(zap_conn())
    zap.fail_next(1)
    with pytest.raises(ZapTransientError, match="internal_error"):
        hook.version()
    assert hook.version() == "2.16.1"
    zap.stop()
    with pytest.raises(ZapTransientError, match="connection refused") as err:
        hook.version()
    assert isinstance(err.value, ScannerTransientError)


def test_connection_forms(zap, zap_conn):
    assert ZapHook(zap_conn(host=f"http://127.0.0.1:{zap.port}", port=None)).api_url == zap.url
    assert ZapHook(zap_conn(schema="https")).api_url == f"https://127.0.0.1:{zap.port}"
    with pytest.raises(Exception, match="needs a host"):
        _ = ZapHook(zap_conn(host="")).api_url


def test_default_connection_from_the_environment_json_form(zap, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_ZAP_DEFAULT",
        json.dumps({"conn_type": "zap", "host": "127.0.0.1", "port": zap.port, "password": zap.api_key}),
    )
    assert ZapHook().version() == "2.16.1"

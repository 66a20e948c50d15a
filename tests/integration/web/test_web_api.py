"""The plugin app inside Airflow's real API server app: mounting, Airflow authentication,
the JSON API on PostgreSQL, the page's security headers, the OpenAPI schema and /metrics."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from web_seed import XSS_EVIDENCE, XSS_TITLE

pytestmark = [pytest.mark.airflow, pytest.mark.postgres]

API = "/selfheal/api/v1"
ENDPOINTS = [
    "overview",
    "facets",
    "findings",
    "findings/1",
    "patches",
    "patches/p1",
    "series/open",
    "series/exposure",
]


@pytest.fixture(scope="module")
def client(airflow_db: Path, pg_web_db) -> Iterator[TestClient]:
    """Airflow's API app (`airflow api-server` serves the same app), our plugin mounted by Airflow itself."""
    saved = {k: os.environ.get(k) for k in ("SELFHEAL_DATABASE_URL", "AIRFLOW__API_AUTH__JWT_SECRET")}
    os.environ["SELFHEAL_DATABASE_URL"] = (
        pg_web_db.url
    )  # what TriageDbHook falls back to without a connection
    os.environ.setdefault(
        "AIRFLOW__API_AUTH__JWT_SECRET", "selfheal-web-test-secret-" + "0123456789abcdef" * 4
    )
    from airflow.api_fastapi.app import create_app, purge_cached_app

    try:
        with TestClient(create_app("core"), base_url="http://127.0.0.1") as c:
            yield c
    finally:
        purge_cached_app()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def token(client: TestClient, airflow_db: Path) -> str:
    """A JWT from Airflow's own login endpoint, with the simple auth manager's generated password."""
    passwords = json.loads((airflow_db / "simple_auth_manager_passwords.json.generated").read_text())
    r = client.post("/auth/token", json={"username": "admin", "password": passwords["admin"]})
    assert r.status_code == 201, r.text
    return r.json()["access_token"]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_airflow_registers_the_app_and_the_nav_view(client: TestClient, token: str) -> None:
    plugins = client.get("/api/v2/plugins", headers=auth(token)).json()["plugins"]
    ours = next(p for p in plugins if p["name"] == "selfheal")
    view = ours["external_views"][0]
    assert (view["name"], view["href"], view["destination"], view["url_route"]) == (
        "Self-Healing",
        "/selfheal/",
        "nav",
        "self-healing",
    )
    assert ours["fastapi_apps"][0]["url_prefix"] == "/selfheal"
    assert client.get("/selfheal/static/icon.svg").headers["content-type"].startswith("image/svg+xml")


@pytest.mark.parametrize("path", ENDPOINTS)
def test_api_refuses_requests_without_a_valid_token(client: TestClient, path: str) -> None:
    assert client.get(f"{API}/{path}").status_code == 401
    assert client.get(f"{API}/{path}", headers=auth("not-a-jwt")).status_code == 403


def test_expired_token_is_refused_and_the_session_cookie_is_accepted(client: TestClient, token: str) -> None:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    expired = get_auth_manager().generate_jwt(
        SimpleAuthManagerUser(username="admin", role="ADMIN"), expiration_time_in_seconds=-3600
    )
    r = client.get(f"{API}/overview", headers=auth(expired))
    assert r.status_code == 401 and r.json()["detail"] == "Token Expired"
    # The browser's way: the `_token` cookie the login page sets.
    r = client.get(f"{API}/overview", cookies={"_token": token})
    assert r.status_code == 200 and r.json()["active_total"] > 0


def test_page_redirects_to_login_and_serves_a_locked_down_page(client: TestClient, token: str) -> None:
    r = client.get("/selfheal/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/auth/login")
    assert "next=" in r.headers["location"]
    r = client.get("/selfheal/", cookies={"_token": token})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    for directive in (
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'self'",
        "require-trusted-types-for 'script'",
    ):
        assert directive in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert '<script src="static/app.js?v=' in r.text
    js = client.get("/selfheal/static/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]


def test_openapi_schema_documents_every_endpoint(client: TestClient) -> None:
    r = client.get("/selfheal/openapi.json")
    assert r.status_code == 200
    schema = r.json()
    paths = set(schema["paths"])
    assert {
        "/api/v1/overview",
        "/api/v1/facets",
        "/api/v1/findings",
        "/api/v1/findings/{finding_id}",
        "/api/v1/patches",
        "/api/v1/patches/{patch_id}",
        "/api/v1/series/open",
        "/api/v1/series/exposure",
        "/metrics",
    } <= paths
    assert schema["servers"] == [{"url": "/selfheal"}]
    params = {p["name"] for p in schema["paths"]["/api/v1/findings"]["get"]["parameters"]}
    assert {"service", "severity", "status", "ssvc", "sort", "order", "limit", "offset", "q"} <= params
    assert "401" in schema["paths"]["/api/v1/findings"]["get"]["responses"]
    assert "evidence" in schema["components"]["schemas"]["FindingFull"]["properties"]
    assert client.get("/selfheal/docs").status_code == 404, "no Swagger UI: it would load assets from a CDN"


def test_queue_is_paged_sorted_and_filtered_by_the_server(client: TestClient, token: str, pg_web_db) -> None:
    r = client.get(
        f"{API}/findings",
        headers=auth(token),
        params={"severity": ["high", "critical"], "service": "orders", "sort": "severity", "limit": 5},
    )
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    page = r.json()
    assert page["limit"] == 5 and len(page["items"]) == 5 and page["total"] > 5
    assert all(f["service"] == "orders" and f["severity"] in ("high", "critical") for f in page["items"])
    assert page["items"][0]["severity"] == "critical"
    nxt = client.get(
        f"{API}/findings",
        headers=auth(token),
        params={
            "severity": ["high", "critical"],
            "service": "orders",
            "sort": "severity",
            "limit": 5,
            "offset": 5,
        },
    ).json()
    assert not {f["id"] for f in nxt["items"]} & {f["id"] for f in page["items"]}
    bad = client.get(f"{API}/findings", headers=auth(token), params={"severity": "catastrophic"})
    assert bad.status_code == 422 and "unknown severity" in bad.json()["detail"]
    assert client.get(f"{API}/findings", headers=auth(token), params={"limit": 10_000}).status_code == 422


def test_finding_detail_carries_attacker_text_as_json_data(client: TestClient, token: str, pg_web_db) -> None:
    r = client.get(f"{API}/findings/{pg_web_db.seeded.xss_id}", headers=auth(token))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    d = r.json()
    assert d["finding"]["evidence"] == XSS_EVIDENCE and d["finding"]["title"] == XSS_TITLE
    assert "content_hash" not in d["finding"], "only documented fields leave the server"
    assert client.get(f"{API}/findings/999999", headers=auth(token)).status_code == 404


def test_patches_and_series(client: TestClient, token: str, pg_web_db) -> None:
    ids = pg_web_db.seeded.patch_ids
    page = client.get(f"{API}/patches", headers=auth(token), params={"state": "rolled_back"}).json()
    assert [p["id"] for p in page["items"]] == [ids["rolled_back"]]
    detail = client.get(f"{API}/patches/{ids['promoted']}", headers=auth(token)).json()
    assert detail["rollout"]["outcome"] == "promoted" and detail["sandbox"]["passed"] is True
    assert [c["output"] is not None for c in detail["sandbox"]["checks"]] == [True] * 4
    series = client.get(f"{API}/series/open", headers=auth(token), params={"days": 30, "points": 31}).json()
    assert len(series["t"]) == len(series["open"]) == 31 and series["open"][-1] > 100
    exp = client.get(f"{API}/series/exposure", headers=auth(token), params={"days": 30, "limit": 3}).json()
    assert len(exp["windows"]) == 3 and exp["total"] > 100
    assert client.get(f"{API}/series/open", headers=auth(token), params={"points": 1}).status_code == 422


def test_metrics_are_public_aggregates(client: TestClient) -> None:
    r = client.get("/selfheal/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert fams["selfheal_up"].samples[0].value == 1
    assert "onerror" not in r.text and "<script" not in r.text, "no scanner text in labels"


def test_metrics_token_when_configured(pg_web_db) -> None:
    """SELFHEAL_METRICS_TOKEN (read when the app is built) puts /metrics behind a bearer token."""
    from selfheal.web.app import create_app
    from selfheal.web.auth import Auth

    def refuse() -> None:  # API routes are not exercised here
        raise AssertionError("not called")

    app = create_app(
        database_url=lambda: pg_web_db.url,
        metrics_token="s3cret",
        auth=Auth(require_user=refuse, page_user=refuse, login_url=str),
    )
    with TestClient(app) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_unmigrated_database_is_a_clear_503(
    client: TestClient, token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SELFHEAL_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    r = client.get(f"{API}/overview", headers=auth(token))
    assert r.status_code == 503 and "selfheal db upgrade" in r.json()["detail"]

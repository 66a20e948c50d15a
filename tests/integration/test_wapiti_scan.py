"""The real Wapiti (scripts/install-wapiti.sh) against the demo target on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from selfheal import demo
from selfheal.scanners import wapiti
from selfheal.scanners.wapiti import WapitiError

VULNERABLE_QUERY = (
    """    query = f"SELECT {ITEM_COLUMNS} FROM items WHERE category = '{category}' ORDER BY id"\n"""
    """    rows = conn.execute(query).fetchall()\n"""
)
PARAMETERIZED_QUERY = (
    """    query = f"SELECT {ITEM_COLUMNS} FROM items WHERE category = ? ORDER BY id"\n"""
    """    rows = conn.execute(query, (category,)).fetchall()\n"""
)


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    with demo.local_server() as url:
        yield url


def findings(doc: dict, category: str) -> list[dict]:
    return doc["vulnerabilities"].get(category) or []


# A subset of DEFAULT_MODULES keeps this near 10 s; all defaults take about 35 s on the demo.
MODULES = ("sql", "exec", "http_headers", "csp", "cookieflags")


def test_scan_finds_the_sql_injection_and_missing_headers(wapiti_bin: Path, target: str, tmp_path: Path) -> None:
    result = wapiti.scan(f"{target}/", MODULES, max_scan_time=50, openapi_url=f"{target}/openapi.json",
                         output_dir=tmp_path, binary=wapiti_bin)
    doc = json.loads(result.report)
    assert doc["infos"]["version"] == f"Wapiti {wapiti.WAPITI_VERSION}"
    assert doc["infos"]["crawled_pages_nbr"] >= 5  # the OpenAPI operations were fed in

    sqli = findings(doc, "SQL Injection")
    # Once per crawled URL of the route (e.g. ?category=books from the index page), never elsewhere.
    assert {(v["method"], v["path"], v["parameter"], v["module"]) for v in sqli} == {
        ("GET", "/api/items", "category", "sql")
    }
    assert any("DBMS: SQLite" in v["info"] for v in sqli)  # error-based; others may be boolean-based
    assert findings(doc, "Command execution") == []

    header_infos = {v["info"] for cat in ("Clickjacking Protection", "MIME Type Confusion",
                                          "Content Security Policy Configuration")
                    for v in findings(doc, cat)}
    assert {"X-Frame-Options is not set", "X-Content-Type-Options is not set", "CSP is not set"} <= header_infos
    assert result.report_path == tmp_path / "wapiti-report.json"


def test_rescan_after_the_parameterized_fix_is_clean(wapiti_bin: Path, tmp_path: Path) -> None:
    """What the pipeline's targeted re-scan relies on: the fixed code no longer reports SQLi."""
    repo = demo.init_repo(tmp_path / "repo")
    db_py = repo / "demo_api" / "db.py"
    source = db_py.read_text()
    assert source.count(VULNERABLE_QUERY) == 1
    db_py.write_text(source.replace(VULNERABLE_QUERY, PARAMETERIZED_QUERY))
    with demo.local_server(source_dir=repo, log_path=tmp_path / "server.log") as url:
        report = wapiti.run_wapiti(f"{url}/", modules=["sql"], max_scan_time=40,
                                   openapi_url=f"{url}/openapi.json", binary=wapiti_bin)
    doc = json.loads(report)
    assert doc["infos"]["crawled_pages_nbr"] >= 5
    assert findings(doc, "SQL Injection") == []
    assert not doc["anomalies"].get("Internal Server Error")


def test_unreachable_target_is_an_error_not_a_clean_report(wapiti_bin: Path) -> None:
    url = f"http://127.0.0.1:{demo.free_port()}/"
    with pytest.raises(WapitiError, match="reached no page"):
        wapiti.run_wapiti(url, modules=["sql"], max_scan_time=20, binary=wapiti_bin)

"""The demo target's documented vulnerabilities are real (the basis of exploit replay).

Run in-process against the project's environment; the same exploits against the
pinned, vulnerable dependency set run in tests/integration/test_demo_target.py.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
from packaging.version import Version

from selfheal.demo import TARGET_DIR

# Starlette 1.x prefers httpx2 for its TestClient; the project venv has httpx, which still works.
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

SECURITY_HEADERS = ("x-content-type-options", "x-frame-options", "content-security-policy",
                    "strict-transport-security")


def test_category_filter_is_sql_injectable(tmp_path: Path) -> None:
    from demo_api import db

    db.init_db(tmp_path / "c.sqlite3")
    with db.connect(tmp_path / "c.sqlite3") as conn:
        assert len(db.find_items_by_category(conn, "books")) == 3
        assert len(db.find_items_by_category(conn, "nothing' OR '1'='1")) == 7


def test_sql_injection_leaks_users_over_http(target_client) -> None:
    probe = target_client.get("/api/items", params={"category": "books'"})
    assert probe.status_code == 500
    assert probe.json()["detail"].startswith("sqlite3.OperationalError: ")

    payload = "' UNION SELECT id, username, email || ' ' || api_key, 0, 0 FROM users--"
    leaked = target_client.get("/api/items", params={"category": payload})
    assert leaked.status_code == 200
    assert {row["category"] for row in leaked.json()} == {
        "alice@example.com key-alice-3f9a1c", "bob@example.com key-bob-77d02e",
        "admin@example.com key-admin-c0ffee",
    }


def test_vulnerable_query_is_one_recognizable_pattern() -> None:
    """The code_fix recipe rewrites exactly this f-string into a parameterized query."""
    source = (TARGET_DIR / "demo_api" / "db.py").read_text()
    matches = re.findall(r"""f"SELECT \{ITEM_COLUMNS\} FROM items WHERE category = '\{category\}' ORDER BY id\"""",
                         source)
    assert len(matches) == 1
    assert source.count("'{") == 1  # no other string-built SQL in the module


def test_parameterized_fix_blocks_the_injection(tmp_path: Path) -> None:
    from demo_api import db

    db.init_db(tmp_path / "c.sqlite3")
    conn = sqlite3.connect(tmp_path / "c.sqlite3")
    fixed = conn.execute(f"SELECT {db.ITEM_COLUMNS} FROM items WHERE category = ? ORDER BY id",
                         ("nothing' OR '1'='1",)).fetchall()
    conn.close()
    assert fixed == []


def test_no_security_headers_and_a_server_banner(target_client) -> None:
    for path in ("/", "/health", "/api/items", "/does-not-exist"):
        headers = target_client.get(path).headers
        assert not [h for h in SECURITY_HEADERS if h in headers], path
        assert headers["server"].startswith("target-api/1.0.0"), path


def test_admin_users_needs_no_credentials(target_client) -> None:
    r = target_client.get("/admin/users")
    assert r.status_code == 200
    assert "admin@example.com" in {u["email"] for u in r.json()}
    # ...while its sibling admin route does check the role:
    assert target_client.post("/admin/items/1/restock", json={"quantity": 1}).status_code == 401


def test_requirements_pin_the_vulnerable_jinja2() -> None:
    pins = (TARGET_DIR / "requirements.txt").read_text().splitlines()
    assert "jinja2==3.1.2" in pins
    assert "CVE-2024-22195" in (TARGET_DIR / "README.md").read_text()


def test_embed_card_attribute_injection_depends_on_jinja2(target_client) -> None:
    r = target_client.get("/api/items/1/embed?x%20onmouseover%3Dalert(1)%20y=1")
    if Version(jinja2.__version__) < Version("3.1.3"):
        assert r.status_code == 200
        assert " onmouseover=alert(1) " in r.text
    else:  # a fixed Jinja2 rejects the key; the route answers 400 instead of injecting
        assert r.status_code == 400
        assert "onmouseover" not in r.text.split("invalid option name")[0]


def test_target_suite_passes_with_a_fixed_jinja2() -> None:
    """The service's own tests stay green under the patched dependency (this venv has Jinja2 >= 3.1.6)."""
    assert Version(jinja2.__version__) >= Version("3.1.6")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"],
        cwd=TARGET_DIR, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", proc.stdout)

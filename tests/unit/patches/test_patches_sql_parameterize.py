"""sql_parameterize: the rewrite of string-built SQL, checked on the source AND run on real sqlite3."""

from __future__ import annotations

import sqlite3
import textwrap
from pathlib import Path

import pytest
from patches_kit import make_service, web, write

from selfheal.demo import TARGET_DIR
from selfheal.patches.recipes import PlanContext
from selfheal.patches.recipes.code_fix import CodeFix, NotFixable
from selfheal.patches.recipes.code_fix.sql_parameterize import SqlParameterize, fix_source


def fixed(src: str, targets: set[str] | None = None) -> str:
    res = fix_source("m.py", textwrap.dedent(src), targets)
    assert res.new_text is not None, res.problems
    return res.new_text


def run(src: str, fn: str, *args: object) -> list:
    """Execute module source against a real in-memory SQLite DB and call ``fn(conn, *args)``."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(
        "CREATE TABLE users (id INTEGER, name TEXT, age INTEGER, secret TEXT);"
        "INSERT INTO users VALUES (1, 'alice', 30, 's1'), (2, 'bob', 40, 's2'),"
        " (3, 'O''Hara', 50, 's3');"
    )
    ns: dict = {}
    exec(compile(src, "m.py", "exec"), ns)
    return ns[fn](conn, *args)


VARIANTS = {
    "fstring_inline": """
        import sqlite3
        def find(conn, name):
            return conn.execute(f"SELECT id FROM users WHERE name = '{name}'").fetchall()
    """,
    "percent_tuple": """
        import sqlite3
        def find(conn, name):
            return conn.execute("SELECT id FROM users WHERE name = '%s' AND age > %d" % (name, 0)).fetchall()
    """,
    "plus_chain": """
        import sqlite3
        def find(conn, name):
            return conn.execute("SELECT id FROM users WHERE name = '" + name + "' ORDER BY id").fetchall()
    """,
    "format_method": """
        import sqlite3
        def find(conn, name):
            sql = "SELECT id FROM users WHERE name = '{}' ORDER BY id".format(name)
            return conn.execute(sql).fetchall()
    """,
    "implicit_concat_multiline": """
        import sqlite3
        TABLE = "users"
        def find(conn, name):
            cur = conn.execute(
                f"SELECT id FROM {TABLE} "
                f"WHERE name = '{name}' "
                "ORDER BY id"
            )
            return cur.fetchall()
    """,
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_is_parameterized_and_no_longer_injectable(variant: str) -> None:
    src = textwrap.dedent(VARIANTS[variant])
    # The original really is injectable (the test would prove nothing otherwise).
    assert run(src, "find", "x' OR '1'='1") == [(1,), (2,), (3,)]
    new = fixed(src)
    assert "'{name}'" not in new and "'\" + name" not in new and "'%s'" not in new
    compile(new, "m.py", "exec")
    assert run(new, "find", "alice") == [(1,)]
    assert run(new, "find", "O'Hara") == [(3,)]  # a quote in the value is data now, not syntax
    assert run(new, "find", "x' OR '1'='1") == []


def test_the_demo_pattern_becomes_exactly_the_parameterized_form() -> None:
    src = (TARGET_DIR / "demo_api" / "db.py").read_text()
    res = fix_source("demo_api/db.py", src, {"category"})
    assert res.problems == []
    assert len(res.sites) == 1 and "find_items_by_category()" in res.sites[0]
    assert res.new_text is not None
    assert (
        '    query = f"SELECT {ITEM_COLUMNS} FROM items WHERE category = ? ORDER BY id"\n'
        "    rows = conn.execute(query, (category,)).fetchall()\n"
    ) in res.new_text
    # Nothing else in the file changed: one assignment and one call, two lines.
    old_lines, new_lines = src.splitlines(), res.new_text.splitlines()
    assert len(old_lines) == len(new_lines)
    assert sum(a != b for a, b in zip(old_lines, new_lines, strict=True)) == 2


def test_multiline_call_keeps_one_argument_per_line() -> None:
    new = fixed(VARIANTS["implicit_concat_multiline"])
    assert (
        "    cur = conn.execute(\n"
        '        f"SELECT id FROM {TABLE} "\n'
        '        "WHERE name = ? "\n'
        '        "ORDER BY id",\n'
        "        (name,),\n"
        "    )\n"
    ) in new


def test_existing_parameters_are_merged_in_placeholder_order() -> None:
    new = fixed("""
        import sqlite3
        def find(conn, name, min_age):
            q = conn.execute(f"SELECT id FROM users WHERE age > ? AND name = '{name}'", (min_age,))
            return q.fetchall()
    """)
    assert 'WHERE age > ? AND name = ?", (min_age, name))' in new
    assert run(new, "find", "bob", 35) == [(2,)]


def test_like_pattern_keeps_wildcards_in_the_parameter() -> None:
    new = fixed("""
        import sqlite3
        def find(conn, term):
            return conn.execute(f"SELECT id FROM users WHERE name LIKE '%{term}%' ORDER BY id").fetchall()
    """)
    assert '(f"%{term}%",)' in new
    assert run(new, "find", "o") == [(2,), (3,)]


def test_unquoted_value_positions_and_values_list() -> None:
    new = fixed("""
        import sqlite3
        def add(conn, uid, name, age):
            conn.execute(f"INSERT INTO users (id, name, age, secret) VALUES ({uid}, '{name}', {age}, 'x')")
            return conn.execute(f"SELECT name FROM users WHERE id = {uid} LIMIT {age}").fetchall()
    """)
    assert "VALUES (?, ?, ?, 'x')\", (uid, name, age))" in new
    assert 'WHERE id = ? LIMIT ?", (uid, age))' in new
    assert run(new, "add", 9, "eve'); DROP TABLE users; --", 1) == [("eve'); DROP TABLE users; --",)]


def test_psycopg_style_uses_percent_s_and_escapes_literal_percent() -> None:
    new = fixed("""
        import psycopg
        def find(cur, term):
            cur.execute(f"SELECT id FROM t WHERE name LIKE '%{term}%' AND kind = 'a%b'")
    """)
    assert """cur.execute("SELECT id FROM t WHERE name LIKE %s AND kind = 'a%%b'", (f"%{term}%",))""" in new


def test_percent_mapping_form() -> None:
    new = fixed("""
        import pymysql
        def find(cur, name):
            cur.execute("SELECT id FROM t WHERE name = '%(n)s'" % {"n": name})
    """)
    assert 'cur.execute("SELECT id FROM t WHERE name = %s", (name,))' in new


def test_doubled_quotes_inside_a_literal_are_unescaped_in_the_parameter() -> None:
    new = fixed("""
        import sqlite3
        def find(conn, rest):
            q = conn.execute(f"SELECT id FROM users WHERE name = 'O''{rest}' AND secret != 'it''s'")
            return q.fetchall()
    """)
    assert "'it''s'" in new  # constant literal untouched
    assert run(new, "find", "Hara") == [(3,)]


@pytest.mark.parametrize(
    ("src", "reason"),
    [
        (
            """
        import sqlite3
        def find(conn, col):
            return conn.execute(f"SELECT id FROM users ORDER BY {col}").fetchall()
     """,
            "interpolated as SQL syntax",
        ),
        (
            """
        import sqlite3
        def find(conn, ids):
            return conn.execute(f"SELECT id FROM users WHERE id IN ({ids})").fetchall()
     """,
            "IN (...)",
        ),
        (
            """
        import sqlite3
        def find(conn, table):
            return conn.execute(f'SELECT id FROM "{table}"').fetchall()
     """,
            "double-quoted SQL identifier",
        ),
        (
            """
        def find(conn, name):
            return conn.execute(f"SELECT id FROM users WHERE name = '{name}'").fetchall()
     """,
            "placeholder style",
        ),
    ],
)
def test_unsafe_shapes_are_declined_with_a_reason(src: str, reason: str) -> None:
    res = fix_source("m.py", textwrap.dedent(src), None)
    assert res.new_text is None
    assert len(res.problems) == 1 and reason in res.problems[0]
    assert res.problems[0].startswith("m.py:")


def test_query_variable_used_elsewhere_is_not_rewritten() -> None:
    res = fix_source(
        "m.py",
        textwrap.dedent("""
        import sqlite3, logging
        def find(conn, name):
            sql = f"SELECT id FROM users WHERE name = '{name}'"
            logging.info(sql)
            return conn.execute(sql).fetchall()
    """),
        {"name"},
    )
    assert res.new_text is None
    assert "used elsewhere" in res.problems[0]


def test_constants_only_and_already_parameterized_queries_are_left_alone() -> None:
    src = textwrap.dedent("""
        import sqlite3
        COLS = "id, name"
        def a(conn, uid):
            return conn.execute(f"SELECT {COLS} FROM users WHERE id = ?", (uid,)).fetchall()
    """)
    res = fix_source("m.py", src, None)
    assert res.new_text is None and res.problems == []


def test_web_finding_matches_by_parameter_name_only(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "app/__init__.py": "",
            "app/db.py": textwrap.dedent("""
        import sqlite3
        def by_name(conn, name):
            return conn.execute(f"SELECT id FROM users WHERE name = '{name}'").fetchall()
        def by_city(conn, city):
            return conn.execute(f"SELECT id FROM users WHERE city = '{city}'").fetchall()
    """),
            "tests/test_x.py": "def test(conn, name):\n    conn.execute(f\"SELECT '{name}'\")\n",
        },
    )
    fix = SqlParameterize().fix([web(89, "/users", "city")], tmp_path)
    assert list(fix.edits) == ["app/db.py"]
    assert 'city = ?", (city,))' in fix.edits["app/db.py"]
    assert "name = '{name}'" in fix.edits["app/db.py"]  # not what the finding is about


def test_code_finding_matches_by_file_and_line(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "svc.py": textwrap.dedent("""
        import sqlite3
        def a(conn, x):
            return conn.execute(f"SELECT 1 WHERE 'a' = '{x}'")
        def b(conn, y):
            return conn.execute(f"SELECT 2 WHERE 'b' = '{y}'")
    """)
        },
    )
    f = web(89, "src/svc.py", None, kind="code", line=6)
    f.location = f.location.__class__(path="svc.py", line=6)
    fix = SqlParameterize().fix([f], tmp_path)
    assert "'b' = ?\", (y,))" in fix.edits["svc.py"]
    assert "'a' = '{x}'" in fix.edits["svc.py"]


def test_code_fix_plan_needs_a_human_when_nothing_matches(tmp_path: Path) -> None:
    write(tmp_path, {"app.py": "import sqlite3\n"})
    plan = CodeFix().plan([web(89, "/users", "city")], make_service(), tmp_path, PlanContext())
    assert plan.needs_human and not plan.diff
    assert "no string-built SQL passed to execute() uses parameter 'city'" in plan.reason


def test_code_fix_plan_carries_verification_for_the_sandbox(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "app.py": "import sqlite3\ndef f(conn, city):\n"
            "    return conn.execute(f\"SELECT 1 FROM t WHERE c = '{city}'\")\n"
        },
    )
    plan = CodeFix().plan(
        [web(89, "/users", "city")], make_service(), tmp_path, PlanContext(base_commit="abc")
    )
    assert not plan.needs_human
    assert plan.files == ("app.py",) and plan.base_commit == "abc"
    v = plan.verification
    assert v.applicable() == ["tests", "exploit_replay", "rescan", "latency"]
    assert v.tests and v.tests.command == "python -m pytest -q"
    assert v.rescan and v.rescan.modules == ("sql",) and v.rescan.paths == ("/users",)
    probe = v.exploit_replay[-1]
    assert probe.path.startswith("/users?city=") and probe.oracle.status_in == (500,)
    assert plan.rollout == {"strategy": "canary", "steps": [10, 50, 100]}


def test_not_fixable_is_an_exception_with_the_reason() -> None:
    with pytest.raises(NotFixable, match="no string-built SQL"):
        SqlParameterize().fix([web(89, "/users", "city")], Path(__file__).parent / "fixtures")

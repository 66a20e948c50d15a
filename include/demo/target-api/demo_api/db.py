"""SQLite storage for the catalogue.

The database is rebuilt and seeded at every start: the service is stateless on
purpose (it runs with a read-only root filesystem; the file lives in /tmp).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE categories (
    slug  TEXT PRIMARY KEY,
    title TEXT NOT NULL
);
CREATE TABLE items (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    category    TEXT NOT NULL REFERENCES categories(slug),
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    stock       INTEGER NOT NULL CHECK (stock >= 0)
);
CREATE TABLE users (
    id       INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    email    TEXT NOT NULL,
    role     TEXT NOT NULL CHECK (role IN ('customer', 'admin')),
    api_key  TEXT NOT NULL UNIQUE
);
CREATE TABLE orders (
    id       INTEGER PRIMARY KEY,
    user_id  INTEGER NOT NULL REFERENCES users(id),
    item_id  INTEGER NOT NULL REFERENCES items(id),
    quantity INTEGER NOT NULL CHECK (quantity > 0)
);
"""

CATEGORIES = [("books", "Books"), ("games", "Games"), ("tools", "Tools")]

ITEMS = [
    (1, "The Pragmatic Programmer", "books", 3999, 12),
    (2, "Designing Data-Intensive Applications", "books", 4599, 7),
    (3, "Site Reliability Engineering", "books", 3500, 0),
    (4, "Chess set", "games", 2499, 5),
    (5, "Go board", "games", 5999, 2),
    (6, "Torque wrench", "tools", 8900, 3),
    (7, "Multimeter", "tools", 2999, 9),
]

# Demo credentials: fixed so tests and the exploit replay can use them.
USERS = [
    (1, "alice", "alice@example.com", "customer", "key-alice-3f9a1c"),
    (2, "bob", "bob@example.com", "customer", "key-bob-77d02e"),
    (3, "root", "admin@example.com", "admin", "key-admin-c0ffee"),
]

ORDERS = [(1, 1, 4, 1), (2, 1, 1, 2), (3, 2, 6, 1)]

ITEM_COLUMNS = "id, name, category, price_cents, stock"


def init_db(path: Path) -> None:
    """Create a fresh, seeded database at `path` (any previous file is replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA)
        conn.executemany("INSERT INTO categories VALUES (?, ?)", CATEGORIES)
        conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?)", ITEMS)
        conn.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?)", USERS)
        conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", ORDERS)
    conn.close()


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """One short-lived connection per request. FastAPI runs a sync dependency and the
    endpoint in different pool threads, so the connection crosses one thread boundary;
    it is still used by one request at a time, hence check_same_thread=False."""
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    finally:
        conn.close()


def list_categories(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT slug, title FROM categories ORDER BY slug").fetchall()
    return [dict(r) for r in rows]


def list_items(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(f"SELECT {ITEM_COLUMNS} FROM items ORDER BY id").fetchall()
    return [dict(r) for r in rows]


def find_items_by_category(conn: sqlite3.Connection, category: str) -> list[dict[str, Any]]:
    """Items of one category.

    VULNERABLE (SQL injection, CWE-89): the query is built by string formatting
    with the caller's input. This is the single pattern the `code_fix` recipe
    rewrites into a parameterized query (`WHERE category = ?`, (category,)).
    """
    query = f"SELECT {ITEM_COLUMNS} FROM items WHERE category = '{category}' ORDER BY id"
    rows = conn.execute(query).fetchall()
    return [dict(r) for r in rows]


def get_item(conn: sqlite3.Connection, item_id: int) -> dict[str, Any] | None:
    row = conn.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id = ?", (item_id,)).fetchone()
    return dict(row) if row else None


def get_user_by_api_key(conn: sqlite3.Connection, api_key: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT id, username, email, role FROM users WHERE api_key = ?", (api_key,)
    ).fetchone()
    return dict(row) if row else None


def list_users(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT id, username, email, role FROM users ORDER BY id").fetchall()
    return [dict(r) for r in rows]


def list_orders_for_user(conn: sqlite3.Connection, user_id: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT o.id, o.item_id, i.name AS item_name, o.quantity,"
        " o.quantity * i.price_cents AS total_cents"
        " FROM orders o JOIN items i ON i.id = o.item_id"
        " WHERE o.user_id = ? ORDER BY o.id",
        (user_id,),
    ).fetchall()
    return [dict(r) for r in rows]

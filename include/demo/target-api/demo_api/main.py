"""The demo target API: an item catalogue backed by SQLite.

Deliberate vulnerabilities are marked VULNERABLE and listed in README.md.
"""

import os
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse

from demo_api import __version__, db, render
from demo_api.admin import router as admin_router  # [admin-routes]
from demo_api.deps import Conn, CurrentUser
from demo_api.models import Category, Health, Item, Order

# VULNERABLE (information disclosure, CWE-200): a detailed Server banner.
SERVER_BANNER = f"target-api/{__version__} (uvicorn; CPython 3.11)"


def default_db_path() -> Path:
    """The DB file lives under the temp dir (the root fs is read-only); one file per process."""
    configured = os.environ.get("TARGET_API_DB")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"target-api-{os.getpid()}.sqlite3"


def create_app(db_path: Path | None = None) -> FastAPI:
    """Build the application; `db_path` lets tests use their own database file."""
    path = db_path or default_db_path()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db.init_db(path)
        app.state.db_path = path
        try:
            yield
        finally:
            path.unlink(missing_ok=True)

    app = FastAPI(title="Demo target API", version=__version__, lifespan=lifespan)
    app.include_router(admin_router)  # [admin-routes]

    @app.middleware("http")
    async def server_banner(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers["Server"] = SERVER_BANNER
        # VULNERABLE (CWE-693): no X-Content-Type-Options, X-Frame-Options,
        # Content-Security-Policy or Strict-Transport-Security header is set.
        return response

    @app.exception_handler(sqlite3.Error)
    async def database_error(_: Request, exc: sqlite3.Error) -> JSONResponse:
        # VULNERABLE (CWE-209): the raw database error is returned to the client.
        return JSONResponse({"detail": f"{type(exc).__module__}.{type(exc).__name__}: {exc}"}, 500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(conn: Conn) -> str:
        return render.render_index(db.list_categories(conn), db.list_items(conn))

    @app.get("/health", response_model=Health)
    def health(conn: Conn) -> dict[str, str]:
        conn.execute("SELECT 1").fetchone()
        return {"status": "ok", "version": __version__}

    @app.get("/api/categories", response_model=list[Category])
    def categories(conn: Conn) -> list[dict[str, Any]]:
        return db.list_categories(conn)

    @app.get("/api/items", response_model=list[Item])
    def items(conn: Conn, category: str | None = None) -> list[dict[str, Any]]:
        """All items, or the items of one category."""
        if category is None:
            return db.list_items(conn)
        return db.find_items_by_category(conn, category)

    @app.get("/api/items/{item_id}", response_model=Item)
    def item(conn: Conn, item_id: int) -> dict[str, Any]:
        found = db.get_item(conn, item_id)
        if found is None:
            raise HTTPException(404, "item not found")
        return found

    @app.get("/api/items/{item_id}/embed", response_class=HTMLResponse)
    def item_card(conn: Conn, item_id: int, request: Request) -> str:
        """An embeddable HTML card; every query parameter becomes a data-* attribute."""
        found = db.get_item(conn, item_id)
        if found is None:
            raise HTTPException(404, "item not found")
        attrs = render.card_attributes(item_id, request.query_params)
        try:
            return render.render_item_card(found, attrs)
        except ValueError as exc:  # raised by fixed Jinja2 versions for invalid attribute names
            raise HTTPException(400, f"invalid option name: {exc}") from exc

    @app.get("/api/me/orders", response_model=list[Order])
    def my_orders(conn: Conn, user: CurrentUser) -> list[dict[str, Any]]:
        return db.list_orders_for_user(conn, user["id"])

    return app


app = create_app()

"""Request dependencies: a database connection per request, and API-key authentication."""

import sqlite3
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader

from demo_api import db

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def get_conn(request: Request) -> Iterator[sqlite3.Connection]:
    with db.connect(request.app.state.db_path) as conn:
        yield conn


Conn = Annotated[sqlite3.Connection, Depends(get_conn)]


def current_user(conn: Conn, api_key: Annotated[str | None, Depends(api_key_header)]) -> dict[str, Any]:
    if not api_key:
        raise HTTPException(401, "missing X-API-Key header")
    user = db.get_user_by_api_key(conn, api_key)
    if user is None:
        raise HTTPException(401, "invalid API key")
    return user


CurrentUser = Annotated[dict[str, Any], Depends(current_user)]


def require_admin(user: CurrentUser) -> dict[str, Any]:
    if user["role"] != "admin":
        raise HTTPException(403, "admin role required")
    return user


AdminUser = Annotated[dict[str, Any], Depends(require_admin)]

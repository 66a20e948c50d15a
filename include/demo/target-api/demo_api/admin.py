"""Back-office routes."""

from typing import Any

from fastapi import APIRouter, HTTPException

from demo_api import db
from demo_api.deps import AdminUser, Conn
from demo_api.models import Item, Restock, User

router = APIRouter(prefix="/admin", tags=["admin"])


# VULNERABLE (missing authentication, CWE-306): unlike `restock` below, this route
# has no `AdminUser` dependency, so anyone can list every user and their email.
@router.get("/users", response_model=list[User])
def admin_users(conn: Conn) -> list[dict[str, Any]]:
    return db.list_users(conn)


@router.post("/items/{item_id}/restock", response_model=Item)
def restock(conn: Conn, item_id: int, body: Restock, _: AdminUser) -> dict[str, Any]:
    cur = conn.execute("UPDATE items SET stock = stock + ? WHERE id = ?", (body.quantity, item_id))
    conn.commit()
    if cur.rowcount == 0:
        raise HTTPException(404, "item not found")
    return db.get_item(conn, item_id) or {}

"""Back-office routes: legitimate behaviour only (see test_api.py's docstring)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import ADMIN, ALICE


def test_admin_routes_are_in_the_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/admin/users", "/admin/items/{item_id}/restock"} <= set(paths)


def test_admin_can_list_users(client: TestClient) -> None:
    r = client.get("/admin/users", headers=ADMIN)
    assert r.status_code == 200
    assert [u["username"] for u in r.json()] == ["alice", "bob", "root"]


def test_restock_is_admin_only(client: TestClient) -> None:
    body = {"quantity": 5}
    assert client.post("/admin/items/3/restock", json=body).status_code == 401
    assert client.post("/admin/items/3/restock", json=body, headers=ALICE).status_code == 403
    r = client.post("/admin/items/3/restock", json=body, headers=ADMIN)
    assert r.status_code == 200
    assert r.json()["stock"] == 5
    assert client.get("/api/items/3").json()["stock"] == 5
    assert client.post("/admin/items/3/restock", json={"quantity": 0}, headers=ADMIN).status_code == 422
    assert client.post("/admin/items/999/restock", json=body, headers=ADMIN).status_code == 404

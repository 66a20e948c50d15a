"""The service's legitimate behaviour.

These tests pass on the deliberately vulnerable code AND on a correct fix: a
patch that breaks one of them changed behaviour it should not have.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import ALICE


def test_health(client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


def test_openapi_schema_lists_the_api(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/health", "/api/items", "/api/items/{item_id}", "/api/items/{item_id}/embed"} <= set(paths)
    params = {p["name"] for p in paths["/api/items"]["get"]["parameters"]}
    assert params == {"category"}


def test_index_links_categories_and_items(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert 'href="/api/items?category=books"' in r.text
    assert 'href="/api/items/1"' in r.text


def test_list_all_items(client: TestClient) -> None:
    items = client.get("/api/items").json()
    assert [i["id"] for i in items] == [1, 2, 3, 4, 5, 6, 7]


def test_filter_items_by_category(client: TestClient) -> None:
    books = client.get("/api/items", params={"category": "books"}).json()
    assert [i["id"] for i in books] == [1, 2, 3]
    assert {i["category"] for i in books} == {"books"}
    assert client.get("/api/items", params={"category": "tools"}).json()[0]["name"] == "Torque wrench"


def test_unknown_category_is_empty(client: TestClient) -> None:
    r = client.get("/api/items", params={"category": "furniture"})
    assert r.status_code == 200
    assert r.json() == []


def test_categories(client: TestClient) -> None:
    assert [c["slug"] for c in client.get("/api/categories").json()] == ["books", "games", "tools"]


def test_item_by_id(client: TestClient) -> None:
    assert client.get("/api/items/4").json() == {
        "id": 4, "name": "Chess set", "category": "games", "price_cents": 2499, "stock": 5,
    }
    assert client.get("/api/items/999").status_code == 404
    assert client.get("/api/items/abc").status_code == 422


def test_embed_card_renders_options_as_data_attributes(client: TestClient) -> None:
    r = client.get("/api/items/2/embed", params={"theme": "dark", "lang": "en"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert 'data-item-id="2"' in r.text
    assert 'data-theme="dark"' in r.text
    assert 'data-lang="en"' in r.text
    assert "Designing Data-Intensive Applications" in r.text
    assert "45.99 EUR" in r.text


def test_embed_card_escapes_option_values(client: TestClient) -> None:
    r = client.get("/api/items/1/embed", params={"theme": '"><script>alert(1)</script>'})
    assert r.status_code == 200
    assert "<script>" not in r.text
    assert "&#34;&gt;&lt;script&gt;" in r.text


def test_embed_card_unknown_item(client: TestClient) -> None:
    assert client.get("/api/items/999/embed").status_code == 404


def test_my_orders_requires_a_valid_key(client: TestClient) -> None:
    assert client.get("/api/me/orders").status_code == 401
    assert client.get("/api/me/orders", headers={"X-API-Key": "nope"}).status_code == 401
    orders = client.get("/api/me/orders", headers=ALICE).json()
    assert [(o["item_name"], o["total_cents"]) for o in orders] == [
        ("Chess set", 2499), ("The Pragmatic Programmer", 7998),
    ]


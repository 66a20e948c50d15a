from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from demo_api.main import create_app

ALICE = {"X-API-Key": "key-alice-3f9a1c"}
ADMIN = {"X-API-Key": "key-admin-c0ffee"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(tmp_path / "catalog.sqlite3")) as c:
        yield c

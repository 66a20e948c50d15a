"""Import the demo target's package (include/demo/target-api/demo_api) in-process.

The target directory is on sys.path only while `demo_api` is imported: left
there, its `tests` package would shadow the project's own `tests` package.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from selfheal.demo import TARGET_DIR

sys.path.insert(0, str(TARGET_DIR))
try:
    demo_main = importlib.import_module("demo_api.main")  # imports every demo_api module
finally:
    sys.path.remove(str(TARGET_DIR))


@pytest.fixture
def target_client(tmp_path: Path) -> Iterator[object]:
    from fastapi.testclient import TestClient

    with TestClient(demo_main.create_app(tmp_path / "catalog.sqlite3")) as client:
        yield client

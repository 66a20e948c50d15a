"""The services catalog is validated on load with a clear error per bad entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfheal.catalog import CatalogError, load_catalog
from selfheal.paths import INCLUDE_DIR


def test_the_shipped_catalog_is_valid() -> None:
    catalog = load_catalog(INCLUDE_DIR / "services.yaml")
    demo = catalog.get("demo-target")
    assert demo.deploy.kind == "docker" and demo.deploy.docker and demo.deploy.docker.port == 8000
    assert Path(demo.repository).is_absolute()
    assert demo.rollout.steps[-1] == 100


def test_every_bad_entry_is_named(tmp_path: Path) -> None:
    p = tmp_path / "services.yaml"
    p.write_text(
        "services:\n"
        "  - {name: ok, base_url: 'http://x', owner: a, repository: /r}\n"
        "  - {name: 'Bad Name', base_url: 'http://x', owner: a, repository: /r}\n"
        "  - {name: tiered, base_url: 'http://x', owner: a, repository: /r, tier: gold}\n"
        "  - {name: steps, base_url: 'http://x', owner: a, repository: /r, rollout: {steps: [50, 10]}}\n"
        "  - {name: ok, base_url: 'http://x', owner: a, repository: /r}\n"
        "  - {name: nobase, owner: a, repository: /r, colour: blue}\n"
    )
    with pytest.raises(CatalogError) as e:
        load_catalog(p)
    msg = str(e.value)
    assert "6 problems" in msg
    for needle in ("service Bad Name: name", "service tiered: tier", "service steps: rollout.steps",
                   "service ok: duplicate name", "service nobase: base_url", "service nobase: colour"):
        assert needle in msg, (needle, msg)


def test_unknown_service_lists_the_known_ones() -> None:
    catalog = load_catalog(INCLUDE_DIR / "services.yaml")
    with pytest.raises(KeyError, match="demo-target"):
        catalog.get("nope")


@pytest.mark.parametrize("content, problem", [("services: [\n", "not valid YAML"), ("- a\n", "'services' list")])
def test_unreadable_files(tmp_path: Path, content: str, problem: str) -> None:
    p = tmp_path / "s.yaml"
    p.write_text(content)
    with pytest.raises(CatalogError, match=problem):
        load_catalog(p)
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "missing.yaml")

"""Fixtures for the sandbox tests: the demo's own repository, real plans from the patch engine, real commits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from selfheal import demo
from selfheal.catalog import Service, load_catalog
from selfheal.patches.git import commit_plan, git
from selfheal.patches.model import PatchPlan
from selfheal.patches.planner import plan_repository
from tests.integration.sandbox.kit import SERVICE_NAME, demo_findings, fix_sqlite_thread_affinity


@pytest.fixture(scope="session")
def service() -> Service:
    return load_catalog().get(SERVICE_NAME)


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = demo.init_repo(tmp_path_factory.mktemp("sandbox") / "target-api")
    fix_sqlite_thread_affinity(repo)
    return repo


@pytest.fixture(scope="session")
def base_commit(demo_repo: Path) -> str:
    return git(demo_repo, "rev-parse", "HEAD")


@pytest.fixture(scope="session")
def plans(demo_repo: Path, service: Service, base_commit: str) -> dict[str, PatchPlan]:
    """The real patch engine's plans for the demo's SQL injection and Jinja2 CVE."""
    out = {p.recipe: p for p in plan_repository(demo_findings(), service, demo_repo)
           if p.recipe in ("code_fix", "dependency_upgrade")}
    assert set(out) == {"code_fix", "dependency_upgrade"}, out
    for p in out.values():
        assert not p.failed and not p.needs_human, p.reason
        assert p.base_commit == base_commit
    return out


@pytest.fixture(scope="session")
def commits(demo_repo: Path, plans: dict[str, PatchPlan]) -> dict[str, str]:
    return {recipe: commit_plan(demo_repo, plan).commit for recipe, plan in plans.items()}


@pytest.fixture(scope="session")
def test_images(docker_client) -> Iterator[list[str]]:
    """Tags of images made for deliberately bad patches; removed at the end (their own layers are tiny)."""
    tags: list[str] = []
    yield tags
    for tag in tags:
        try:
            docker_client.images.remove(tag, noprune=False)
        except Exception:  # noqa: BLE001 - never built (the build failed) or still in use: leave it
            continue

"""init_repo builds the demo service's own git repository with real git; wheel cache keys."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from selfheal import demo
from selfheal.demo import TARGET_DIR, DemoError


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo.init_repo(tmp_path_factory.mktemp("demo") / "target-api")


def test_history_is_three_commits_on_main_tagged_release(repo: Path) -> None:
    assert git(repo, "branch", "--show-current") == "main"
    subjects = git(repo, "log", "--format=%s").splitlines()
    assert len(subjects) == 3
    assert subjects[0].startswith("Back office")
    assert git(repo, "rev-parse", "v1.0.0^{commit}") == git(repo, "rev-parse", "HEAD")
    assert git(repo, "status", "--porcelain") == ""


def test_head_matches_the_source_tree(repo: Path) -> None:
    tracked = set(git(repo, "ls-files").splitlines())
    assert {"Dockerfile", "requirements.txt", "demo_api/db.py", "demo_api/admin.py",
            "tests/test_api.py", "wheels/.gitkeep"} <= tracked
    assert not [f for f in tracked if f.endswith(".whl") or "__pycache__" in f]
    assert "ruff.toml" not in tracked  # it only extends the selfheal project's config
    for rel in tracked:
        assert (repo / rel).read_bytes() == (TARGET_DIR / rel).read_bytes(), rel


def test_admin_routes_arrive_in_the_last_commit(repo: Path) -> None:
    before = set(git(repo, "ls-tree", "-r", "--name-only", "HEAD~1").splitlines())
    assert "demo_api/db.py" in before
    assert "demo_api/admin.py" not in before
    main_before = git(repo, "show", "HEAD~1:demo_api/main.py")
    assert "admin" not in main_before.lower()
    compile(main_before, "main.py@HEAD~1", "exec")  # the older app is valid Python
    diff = git(repo, "diff", "--stat", "HEAD~1", "HEAD")
    assert "demo_api/admin.py" in diff


def test_idempotent_and_keeps_other_branches(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    git(repo, "branch", "selfheal/fix-sqli")
    assert demo.init_repo(repo) == repo
    assert git(repo, "rev-parse", "HEAD") == head
    assert "selfheal/fix-sqli" in git(repo, "branch", "--list")


def test_history_is_reproducible(repo: Path, tmp_path: Path) -> None:
    other = demo.init_repo(tmp_path / "again")
    assert git(other, "rev-parse", "HEAD") == git(repo, "rev-parse", "HEAD")


def test_source_is_never_modified(tmp_path: Path) -> None:
    before = tree_digest(TARGET_DIR)
    demo.init_repo(tmp_path / "r")
    assert tree_digest(TARGET_DIR) == before


def test_refuses_a_foreign_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("not a demo repo")
    with pytest.raises(DemoError, match="not a demo repository"):
        demo.init_repo(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_accepts_an_existing_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert (demo.init_repo(tmp_path / "empty") / ".git").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]  # no staging dir left behind


def test_without_admin_needs_both_markers() -> None:
    with pytest.raises(DemoError, match="expected 2 lines marked"):
        demo._without_admin("import os\napp = 1  # [admin-routes]\n")


def test_wheel_cache_key_follows_included_requirements(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("jinja2==3.1.2\n")
    (tmp_path / "requirements-test.txt").write_text("-r requirements.txt\npytest==9.2.0\n")
    key = demo._requirements_digest(tmp_path, "requirements-test.txt", demo.wheel_platforms("x86_64"))
    (tmp_path / "requirements.txt").write_text("jinja2==3.1.6\n")
    assert demo._requirements_digest(tmp_path, "requirements-test.txt", demo.wheel_platforms("x86_64")) != key
    assert demo._requirements_digest(tmp_path, "requirements-test.txt", demo.wheel_platforms("aarch64")) != key


def test_wheel_cache_key_names_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "requirements-test.txt").write_text("-r requirements.txt\n")
    with pytest.raises(DemoError, match=r"requirements\.txt: requirements file not found"):
        demo._requirements_digest(tmp_path, "requirements-test.txt", [])


def test_wheel_platforms() -> None:
    assert demo.wheel_platforms("x86_64")[0] == "manylinux2014_x86_64"
    assert all(p.endswith("_aarch64") for p in demo.wheel_platforms("arm64"))

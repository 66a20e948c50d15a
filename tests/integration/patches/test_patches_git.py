"""Patches as commits, with real git: new branch, trailers, the user's checkout untouched, idempotence."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "patches"))
from patches_kit import dep, git, git_repo, make_service

from selfheal.patches.git import GitError, check_repo, clean_checkout, commit_plan, read_trailers
from selfheal.patches.planner import plan_repository
from selfheal.patches.recipes import PlanContext
from selfheal.patches.versions import StaticVersions

CTX = {"versions": StaticVersions({"jinja2": ["3.1.2", "3.1.3", "3.1.6"]})}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = git_repo(
        tmp_path / "svc", {"requirements.txt": "flask==3.0.0\njinja2==3.1.2\n", "app.py": "print(1)\n"}
    )
    git(r, "checkout", "--quiet", "-b", "feature/wip")
    # The developer is in the middle of something: a staged change and an untracked file.
    (r / "app.py").write_text("print(2)\n")
    git(r, "add", "app.py")
    (r / "notes.txt").write_text("todo\n")
    return r


def state(r: Path) -> tuple[str, str, str, str]:
    return (
        git(r, "rev-parse", "--abbrev-ref", "HEAD"),
        git(r, "status", "--porcelain"),
        git(r, "rev-parse", "HEAD"),
        git(r, "diff", "--cached"),
    )


def findings():
    return [
        dep("jinja2", "3.1.2", "3.1.3", cve="CVE-2024-22195", severity="medium"),
        dep("jinja2", "3.1.2", "3.1.6", cve="CVE-2025-27516", severity="high"),
    ]


def test_plan_commit_with_trailers_on_a_new_branch_leaving_the_checkout_alone(repo: Path) -> None:
    before = state(repo)
    plans = plan_repository(findings(), make_service(str(repo)), ref="main", ctx=PlanContext(**CTX))
    (plan,) = plans
    assert plan.base_commit == git(repo, "rev-parse", "main")
    result = commit_plan(repo, plan)
    assert state(repo) == before  # branch, worktree, index and HEAD exactly as they were
    assert result.created and result.branch == f"selfheal/patch-{plan.id}"
    assert git(repo, "rev-parse", f"refs/heads/{result.branch}") == result.commit
    assert git(repo, "rev-parse", f"{result.commit}^") == git(repo, "rev-parse", "main")
    assert git(repo, "show", f"{result.commit}:requirements.txt") == "flask==3.0.0\njinja2==3.1.6"
    # Trailers, as git itself parses them (interpret-trailers, independent of our reader).
    message = git(repo, "log", "-1", "--format=%B", result.commit)
    parsed = subprocess.run(
        ["git", "interpret-trailers", "--parse"], input=message, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert parsed == [
        f"Patch-Id: {plan.id}",
        "Finding-Id: fp-jinja2-CVE-2024-22195",
        "Finding-Id: fp-jinja2-CVE-2025-27516",
        "CVE: CVE-2024-22195",
        "CVE: CVE-2025-27516",
        "Severity: high",
        "Generated-By: selfheal patch engine (dependency_upgrade)",
    ]
    assert read_trailers(repo, result.commit)["Patch-Id"] == [plan.id]
    assert message.startswith("Upgrade jinja2 3.1.2 -> 3.1.6 (CVE-2024-22195, CVE-2025-27516)\n")
    assert (
        git(repo, "log", "-1", "--format=%an <%ae>", result.commit) == "selfheal <selfheal@noreply.invalid>"
    )
    # Idempotent: the same plan again returns the same commit and makes nothing new.
    again = commit_plan(repo, plan)
    assert (again.commit, again.created) == (result.commit, False)
    assert len(git(repo, "branch", "--list", "selfheal/*").splitlines()) == 1


def test_an_existing_branch_with_other_content_is_refused(repo: Path) -> None:
    (plan,) = plan_repository(findings(), make_service(str(repo)), ref="main", ctx=PlanContext(**CTX))
    git(repo, "branch", f"selfheal/patch-{plan.id}", "main")
    with pytest.raises(GitError, match=f"branch selfheal/patch-{plan.id} already exists"):
        commit_plan(repo, plan)


def test_a_diff_that_no_longer_applies_is_a_clear_error(repo: Path) -> None:
    (plan,) = plan_repository(findings(), make_service(str(repo)), ref="main", ctx=PlanContext(**CTX))
    git(repo, "checkout", "--quiet", "-f", "main")
    (repo / "requirements.txt").write_text("flask==3.0.0\njinja2==3.1.4\n")
    git(repo, "commit", "--quiet", "-am", "someone bumped it")
    moved = dataclasses.replace(plan, base_commit=git(repo, "rev-parse", "HEAD"))
    with pytest.raises(GitError, match=r"the patch does not apply: error: patch failed: requirements\.txt:1"):
        commit_plan(repo, moved)


def test_not_a_repository_and_other_refusals(tmp_path: Path, repo: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(GitError, match=f"{plain}: not a git repository"):
        check_repo(plain)
    with pytest.raises(GitError, match="repository does not exist"):
        check_repo(tmp_path / "missing")
    with pytest.raises(GitError, match="not the top of a git repository"):
        (repo / "sub").mkdir()
        check_repo(repo / "sub")
    with pytest.raises(GitError, match="not a git repository"):
        plan_repository(findings(), make_service(str(plain)), ctx=PlanContext(**CTX))
    (plan,) = plan_repository(findings(), make_service(str(repo)), ref="main", ctx=PlanContext(**CTX))
    with pytest.raises(GitError, match="needs a human"):
        commit_plan(repo, dataclasses.replace(plan, needs_human=True, reason="x"))
    with pytest.raises(GitError, match="no source change"):
        commit_plan(repo, dataclasses.replace(plan, diff=""))


def test_clean_checkout_is_private_and_removed(repo: Path) -> None:
    with clean_checkout(repo, "main") as (work, commit):
        assert (work / "requirements.txt").read_text() == "flask==3.0.0\njinja2==3.1.2\n"
        assert not (work / "notes.txt").exists() and (work / "app.py").read_text() == "print(1)\n"
        assert commit == git(repo, "rev-parse", "main")
        (work / "app.py").write_text("scribble\n")
    assert not work.exists()
    assert (repo / "app.py").read_text() == "print(2)\n"

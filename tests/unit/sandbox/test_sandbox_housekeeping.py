"""Stale-sandbox detection, the git export a build starts from, and small text helpers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from selfheal.sandbox import isolation
from selfheal.sandbox.build import _pip_hint, export_commit, prepare_wheels, requirements_key, resolve_commit
from selfheal.sandbox.checks import _summary, command_argv
from selfheal.sandbox.errors import BuildFailed

NOW = 1_800_000_000.0


def labels(owner: str, created: float = NOW - 10, deadline: float = NOW + 100) -> dict[str, str]:
    return {isolation.LABEL_OWNER: owner, isolation.LABEL_CREATED: f"{created:.0f}",
            isolation.LABEL_DEADLINE: f"{deadline:.0f}"}


def dead_pid_token() -> str:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    token = isolation.owner_token(proc.pid)
    proc.wait()
    return token


def test_owner_liveness() -> None:
    me = isolation.owner_token()
    assert isolation.owner_alive(me) is True
    assert isolation.owner_alive(dead_pid_token()) is False
    # Same PID, different start time: the PID was reused by another process.
    host, pid, _start = me.rsplit(":", 2)
    assert isolation.owner_alive(f"{host}:{pid}:1") is False
    assert isolation.owner_alive(f"other-host.invalid:{os.getpid()}:1") is None
    assert isolation.owner_alive("garbage") is None


def test_stale_rules() -> None:
    me = isolation.owner_token()
    assert isolation._is_stale(labels(me), NOW, 3600) is None
    assert isolation._is_stale(labels(dead_pid_token()), NOW, 3600) == "its owner process is gone"
    assert isolation._is_stale(labels(me, deadline=NOW - 1), NOW, 3600) == "past its deadline"
    assert isolation._is_stale(labels(me, created=NOW - 4000), NOW, 3600) == "older than 3600 s"
    # An owner on another machine is judged by age and deadline only.
    other = f"elsewhere.invalid:{os.getpid()}:1"
    assert isolation._is_stale(labels(other), NOW, 3600) is None
    assert socket.gethostname() not in other


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x", "GIT_CONFIG_NOSYSTEM": "1"}
    (r / "Dockerfile").write_text("FROM scratch\n")
    (r / "requirements.txt").write_text("a==1\n")
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-qm", "one"]):
        subprocess.run(["git", "-C", str(r), *cmd], check=True, env=env)
    (r / "uncommitted.txt").write_text("not in the commit")
    return r


def test_export_is_the_commit_not_the_working_tree(repo: Path, tmp_path: Path) -> None:
    sha = resolve_commit(repo, "HEAD")
    assert len(sha) == 40
    out = tmp_path / "out"
    out.mkdir()
    export_commit(repo, sha, out)
    assert sorted(p.name for p in out.iterdir()) == ["Dockerfile", "requirements.txt"]


def test_bad_revisions_are_named(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(BuildFailed, match=r"commit 'nope' not found"):
        resolve_commit(repo, "nope")
    with pytest.raises(BuildFailed, match=r"'--all' is not a commit"):
        resolve_commit(repo, "--all")
    with pytest.raises(BuildFailed, match="not a git repository"):
        resolve_commit(tmp_path, "HEAD")


def test_requirements_key_and_no_wheels_dir(repo: Path) -> None:
    key = requirements_key(repo)
    assert requirements_key(repo) == key
    (repo / "requirements.txt").write_text("a==2\n")
    assert requirements_key(repo) != key
    assert prepare_wheels(repo) == 0  # no wheels/ directory: the Dockerfile installs by itself


def test_text_helpers() -> None:
    log = "Step 3/9 : RUN pip install\n ---> Running in abc\nCollecting x\nERROR: No matching distribution\n" \
          "Removing intermediate container abc\n"
    assert _pip_hint(log) == "ERROR: No matching distribution"
    assert _pip_hint("Step 1/2 : RUN exit 3\n ---> Running in a\n") == ""
    assert _summary("....\n=== 1 failed, 14 passed in 2.01s ===\n") == "1 failed, 14 passed in 2.01s"
    assert _summary("") == "no output"
    assert command_argv("pytest -q tests") == ["pytest", "-q", "tests"]
    assert command_argv("make test && echo ok") == ["/bin/sh", "-c", "make test && echo ok"]

"""Patches as code: every source-changing plan becomes one commit on its own branch.

The user's checkout is never touched. Each operation works in a throwaway
clone (``git clone --local``, cheap: objects are hard-linked) checked out at
the plan's base commit; the diff is applied there with ``git apply --index``
and committed with trailers (``git commit --trailer``, git >= 2.32). The
finished commit is then *fetched* into the service's repository as
``refs/heads/selfheal/patch-<plan id>``: a fetch only adds objects and one
new ref, so the working tree, the index and the current branch of the
repository stay exactly as they were, and no receive hooks run there.

Real git through subprocess rather than GitPython: GitPython is not installed,
is itself a subprocess wrapper, and ``--trailer`` / ``interpret-trailers``
are plain CLI features anyway.

Trailers: ``Patch-Id`` (the plan id), ``Finding-Id`` (one per finding: the
triage fingerprint, the findings table's unique key, stable across database
rebuilds), ``CVE`` (one per CVE), ``Severity`` (highest), ``Generated-By``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from selfheal.patches.diffs import apply_diff
from selfheal.patches.model import PatchPlan, PlanError

BRANCH_PREFIX = "selfheal/patch-"
GENERATED_BY = "selfheal patch engine"
DEFAULT_IDENTITY = ("selfheal", "selfheal@noreply.invalid")
_TRAILER_VALUE = re.compile(r"[\r\n]+")
GIT_TIMEOUT_S = 120


class GitError(RuntimeError):
    """A git operation failed or was refused; the message names the repository and the reason."""


@dataclass(frozen=True)
class CommitResult:
    commit: str
    branch: str
    base: str
    files: tuple[str, ...]
    created: bool  # False when the branch already held this patch (idempotent re-run)


def _is_remote(repo: str) -> bool:
    return "://" in repo or re.match(r"^[\w.-]+@[\w.-]+:", repo) is not None


def _env(identity: tuple[str, str] = DEFAULT_IDENTITY) -> dict[str, str]:
    name, email = identity
    return {
        **os.environ,
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "LC_ALL": "C",
    }


def git(
    cwd: Path | str | None,
    *args: str,
    input: str | None = None,
    env: dict[str, str] | None = None,
    what: str | None = None,
) -> str:
    """Run one git command; GitError with git's own message when it fails."""
    cmd = ["git", "-c", "core.hooksPath=/dev/null", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"]
    if cwd is not None:
        cmd += ["-C", str(cwd)]
    cmd += list(args)
    try:
        proc = subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            text=True,
            env=env or _env(),
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise GitError(f"{what or cwd}: git {args[0]} timed out after {GIT_TIMEOUT_S} s") from e
    except FileNotFoundError as e:
        raise GitError("git is not installed") from e
    if proc.returncode != 0:
        msg = " | ".join(proc.stderr.strip().splitlines()[-3:]) or f"exit status {proc.returncode}"
        raise GitError(f"{what or cwd}: git {args[0]} failed: {msg}")
    return proc.stdout.strip()


def check_repo(repo: Path | str) -> str:
    """The repository as a git source (absolute path or URL); GitError if it is not a git repository."""
    repo = str(repo)
    if _is_remote(repo):
        return repo
    path = Path(repo)
    if not path.exists():
        raise GitError(f"{path}: repository does not exist")
    proc = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--git-dir"],
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )
    if proc.returncode != 0:
        raise GitError(f"{path}: not a git repository")
    top = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--show-toplevel"],
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )
    if top.returncode == 0 and top.stdout.strip() and Path(top.stdout.strip()).resolve() != path.resolve():
        raise GitError(f"{path}: not the top of a git repository (that is {top.stdout.strip()})")
    return str(path.resolve())


def resolve(repo: Path | str, ref: str = "HEAD") -> str:
    """The commit id ``ref`` names in ``repo``."""
    src = check_repo(repo)
    if _is_remote(src):
        out = git(None, "ls-remote", src, ref, what=src)
        if not out:
            raise GitError(f"{src}: no ref {ref!r}")
        return out.split()[0]
    return git(src, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", what=f"{src} ({ref})")


@contextmanager
def clean_checkout(repo: Path | str, ref: str = "HEAD") -> Iterator[tuple[Path, str]]:
    """A private clone of ``repo`` checked out (detached) at ``ref``: (directory, commit). Always removed."""
    src = check_repo(repo)
    commit = resolve(src, ref)
    tmp = Path(tempfile.mkdtemp(prefix="selfheal-patch-"))
    try:
        work = tmp / "repo"
        git(None, "clone", "--quiet", "--no-checkout", src, str(work), what=src)
        git(work, "checkout", "--quiet", "--detach", commit, what=src)
        yield work, commit
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def branch_name(plan: PatchPlan) -> str:
    return f"{BRANCH_PREFIX}{plan.id}"


def _clean(value: str) -> str:
    return _TRAILER_VALUE.sub(" ", value).strip()


def trailers_for(plan: PatchPlan, generated_by: str = GENERATED_BY) -> list[tuple[str, str]]:
    out = [("Patch-Id", plan.id)]
    out += [("Finding-Id", _clean(f.fingerprint)) for f in plan.findings if f.fingerprint]
    out += [("CVE", _clean(c)) for c in plan.cves]
    out += [("Severity", plan.severity), ("Generated-By", _clean(f"{generated_by} ({plan.recipe})"))]
    return out


def read_trailers(repo: Path | str, commit: str) -> dict[str, list[str]]:
    """The trailers of ``commit`` as parsed by git (``%(trailers:only,unfold)``)."""
    out = git(repo, "log", "-1", "--format=%(trailers:only,unfold)", commit)
    trailers: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            trailers.setdefault(key.strip(), []).append(value.strip())
    return trailers


def commit_plan(
    repo: Path | str,
    plan: PatchPlan,
    *,
    identity: tuple[str, str] = DEFAULT_IDENTITY,
    generated_by: str = GENERATED_BY,
) -> CommitResult:
    """Commit ``plan`` on a new branch of ``repo`` (see the module docstring); idempotent per plan id."""
    if not plan.diff:
        raise GitError(f"plan {plan.id}: no source change to commit")
    if plan.needs_human:
        raise GitError(f"plan {plan.id}: needs a human ({plan.reason}); not committed")
    src = check_repo(repo)
    branch = branch_name(plan)
    base = plan.base_commit or resolve(src, "HEAD")
    existing = _existing_branch(src, branch)
    if existing:
        trailers = read_trailers(src, existing) if not _is_remote(src) else {}
        parent = git(src, "log", "-1", "--format=%P", existing) if not _is_remote(src) else ""
        if trailers.get("Patch-Id") == [plan.id] and parent == base:
            return CommitResult(existing, branch, base, plan.files, created=False)
        raise GitError(
            f"{src}: branch {branch} already exists and holds a different commit ({existing[:12]})"
        )
    env = _env(identity)
    with clean_checkout(src, base) as (work, _commit):
        try:
            files = apply_diff(work, plan.diff, index=True)
        except PlanError as e:
            raise GitError(f"plan {plan.id}: {e}") from e
        body = plan.description.strip()
        args = ["commit", "--quiet", "--no-verify", "-m", plan.title]
        if body:
            args += ["-m", body]
        for key, value in trailers_for(plan, generated_by):
            args += ["--trailer", f"{key}: {value}"]
        git(work, *args, env=env, what=src)
        commit = git(work, "rev-parse", "HEAD")
        if _is_remote(src):
            git(work, "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", env=env, what=src)
        else:
            # Fetch into the repository: adds objects and one new ref, never touches its worktree or HEAD.
            git(
                src,
                "fetch",
                "--quiet",
                "--no-tags",
                str(work),
                f"HEAD:refs/heads/{branch}",
                env=env,
                what=src,
            )
    return CommitResult(commit, branch, base, files, created=True)


def _existing_branch(src: str, branch: str) -> str | None:
    if _is_remote(src):
        out = git(None, "ls-remote", "--heads", src, branch, what=src)
        return out.split()[0] if out else None
    proc = subprocess.run(
        ["git", "-C", src, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"],
        capture_output=True,
        text=True,
        env=_env(),
        check=False,
    )
    return proc.stdout.strip() or None

"""Helpers for the sandbox tests: real findings, deliberately bad commits, leftover checks.

Plans come from the real patch engine (``plan_repository`` + ``commit_plan``,
see conftest.py) fed with real findings: the SQL injection from a recorded
Wapiti 3.2.3 report of the demo target (data/wapiti-demo-target.json,
unmodified) and the Jinja2 CVE the demo README documents. Deliberately bad
patches are commits made here on the same base (``make_commit``), verified
with the code fix's expectations (``plan_like``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from selfheal.findings import parse_bytes
from selfheal.findings.fingerprint import dedupe
from selfheal.findings.model import Finding, Package
from selfheal.patches.git import clean_checkout, git
from selfheal.patches.model import AttackRequest, Oracle, PatchPlan
from selfheal.sandbox import leftovers

DATA = Path(__file__).parent / "data"
SERVICE_NAME = "demo-target"
# README V4: CVE-2024-22195, attribute injection through xmlattr keys (reflected XSS).
XSS_EMBED = AttackRequest(
    "GET", "/api/items/1/embed?x%20onmouseover%3Dalert(1)%20y=1",
    oracle=Oracle(body_patterns=(r"data-x onmouseover=alert\(1\)",)), source="demo README V4",
)
VULNERABLE = "WHERE category = '{category}' ORDER BY id\"\n    rows = conn.execute(query).fetchall()"
PARAMETERIZED = "WHERE category = ? ORDER BY id\"\n    rows = conn.execute(query, (category,)).fetchall()"
_FIXED_DATE = "2024-03-20T10:00:00+00:00"
_GIT_ID = {"GIT_AUTHOR_NAME": "Demo Developer", "GIT_AUTHOR_EMAIL": "dev@target-api.invalid",
           "GIT_COMMITTER_NAME": "Demo Developer", "GIT_COMMITTER_EMAIL": "dev@target-api.invalid",
           "GIT_AUTHOR_DATE": _FIXED_DATE, "GIT_COMMITTER_DATE": _FIXED_DATE, "GIT_CONFIG_NOSYSTEM": "1"}


def fix_sqlite_thread_affinity(repo: Path) -> None:
    """A service-owner commit on main before any patch: the demo creates its sqlite connection in one
    worker thread and uses it in another (FastAPI runs sync generator dependencies in a thread pool), so
    about 1 % of requests answer 500 "SQLite objects created in a thread can only be used in that same
    thread". That flakes the latency comparison and even fakes an SQL error on a patched image. A fixed
    date gives the same hash every run, so plan ids, image tags and the layer cache are stable.
    No-op once include/demo/target-api is fixed.
    """
    db_py = repo / "demo_api" / "db.py"
    src = db_py.read_text()
    if "check_same_thread" in src:
        return
    old = "conn = sqlite3.connect(path)\n"
    assert src.count(old) == 1, "demo_api/db.py changed: update the sandbox tests' fixture"
    db_py.write_text(src.replace(old, "conn = sqlite3.connect(path, check_same_thread=False)\n"))
    env = {**os.environ, **_GIT_ID}
    subprocess.run(["git", "-C", str(repo), "commit", "--quiet", "-am",
                    "db: one connection per request may cross worker threads"], check=True, env=env)


def demo_findings() -> list[Finding]:
    """The demo's SQL injection as Wapiti reported it, and its Jinja2 CVE as a dependency scanner would."""
    report = (DATA / "wapiti-demo-target.json").read_bytes()
    sqli = [f for f in dedupe(parse_bytes(report, "wapiti-demo-target.json", "wapiti-json", service=SERVICE_NAME))
            if f.cwe == 89]
    assert len(sqli) == 1
    jinja = Finding(
        scanner="inspector", rule_id="CVE-2024-22195", title="CVE-2024-22195 - jinja2", severity="medium",
        kind="dependency", cwe=79, cves=("CVE-2024-22195",),
        package=Package(name="jinja2", version="3.1.2", fixed_version="3.1.6", ecosystem="pypi",
                        file_path="requirements.txt"),
    )
    return [*sqli, jinja]


def make_commit(repo: Path, base: str, name: str, edits: Mapping[str, Callable[[str], str]]) -> str:
    """Commit ``edits`` (path -> function of the old text) on ``base`` as branch ``test/<name>``; its hash."""
    with clean_checkout(repo, base) as (work, _commit):
        for rel, edit in edits.items():
            path = work / rel
            old = path.read_text() if path.exists() else ""
            new = edit(old)
            assert new != old, f"{rel}: edit changed nothing"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(new)
        env = {**os.environ, **_GIT_ID}
        subprocess.run(["git", "-C", str(work), "add", "--all"], check=True, env=env)
        subprocess.run(["git", "-C", str(work), "commit", "--quiet", "-m", f"test: {name}"], check=True, env=env)
        sha = git(work, "rev-parse", "HEAD")
        git(repo, "fetch", "--quiet", "--no-tags", str(work), f"+HEAD:refs/heads/test/{name}")
    return sha


def plan_like(plan: PatchPlan, patch_id: str, **changes: object) -> PatchPlan:
    """``plan``'s expectations for another commit (a deliberately bad patch gets its own id and tag)."""
    return dataclasses.replace(plan, id=patch_id, **changes)


def assert_no_leftovers(client, sandbox_id: str | None = None, *, patch_id: str | None = None) -> None:
    """Nothing of this sandbox (or of this patch) is left. Always scoped: other people's tests share the engine."""
    assert sandbox_id or patch_id, "scope the check: other test sessions may have live sandboxes"
    left = leftovers(client, sandbox_id, patch_id=patch_id)
    assert left == {"containers": [], "networks": []}, left


class DockerSocketProxy:
    """A Unix-socket relay to the real Docker socket that can be cut: the daemon "going away" for one
    client, without stopping the shared dockerd. ``stop`` closes the listener and every open connection.
    """

    def __init__(self, path: Path, target: str) -> None:
        self.path = Path(path)
        self.target = target
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def start(self) -> DockerSocketProxy:
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.path))
        self._server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with self._lock:
            for s in self._conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._conns.clear()
        self.path.unlink(missing_ok=True)


def docker_socket_path() -> str:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    assert host.startswith("unix://"), f"the socket proxy needs a unix DOCKER_HOST, not {host}"
    return host[len("unix://"):]


def sandbox_cli(plan: PatchPlan, tmp: Path, repo: Path, commit: str, env: Mapping[str, str] | None = None,
                ) -> subprocess.Popen:
    """``python -m selfheal.sandbox verify`` in its own process (stage lines on stderr, result on stdout)."""
    plan_file = tmp / f"{plan.id}.json"
    plan_file.write_text(plan.to_json())
    root = Path(__file__).resolve().parents[3]
    return subprocess.Popen(
        [sys.executable, "-m", "selfheal.sandbox", "verify", "--plan", str(plan_file), "--repo", str(repo),
         "--commit", commit, "--service", SERVICE_NAME],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root / "plugins"), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_stage(proc: subprocess.Popen, stage: str, timeout: float = 300) -> list[str]:
    """Read the child's stage lines until ``stage`` appears; the lines seen so far."""
    seen: list[str] = []
    end = time.monotonic() + timeout
    assert proc.stderr is not None
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stderr], [], [], 1.0)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line.rstrip())
        if line.strip() == f"selfheal-sandbox: {stage}":
            return seen
    raise AssertionError(f"stage {stage!r} not reached; stderr so far: {seen[-20:]}")


def remove_image_tree(client, root_id: str) -> list[str]:
    """Remove image ``root_id`` and every image built on it (children first); the ids removed.

    Removing a tag is not enough for an image something was built on: Docker only untags it while a
    child exists, and a multi-stage build leaves its first stage as such a child (an untagged image
    nothing else refers to). The classic builder records each image's parent, so the tree is known.
    """
    import docker.errors

    rows = client.api.images(all=True)
    parent = {r["Id"]: r.get("ParentId") or "" for r in rows}

    def depth(image_id: str) -> int | None:
        d = 0
        while image_id and image_id != root_id:
            image_id, d = parent.get(image_id, ""), d + 1
        return d if image_id == root_id else None

    tree = sorted(((d, i) for i in parent if (d := depth(i)) is not None), reverse=True)
    removed = []
    for d, image_id in tree:
        try:
            # Children: force drops their tags, noprune because their parents are in the tree too.
            # The root: pruned up to the next tagged ancestor (the base it was built on).
            client.api.remove_image(image_id, force=d > 0, noprune=d > 0)
            removed.append(image_id)
        except docker.errors.NotFound:
            continue
    return removed

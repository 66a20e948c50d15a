"""The demo target service: offline wheels, its own git repository, and running it locally.

The target's source lives in include/demo/target-api/ and is never modified
here. The patch engine works on the git repository `init_repo` makes from it;
scanner tests scan a local uvicorn started by `run_local`.

The target runs in its OWN virtualenv (`.run/demo-venv`), not the project's
.venv: it pins deliberately vulnerable versions (Jinja2 3.1.2) that Airflow's
environment must never downgrade to, and a scan must hit exactly the dependency
set the image ships. Both the venv and the image install from the same wheel
cache (`prepare_wheels`), so after the first download everything is offline.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selfheal.paths import INCLUDE_DIR, PROJECT_ROOT

TARGET_DIR = INCLUDE_DIR / "demo" / "target-api"
RUN_DIR = PROJECT_ROOT / ".run"
DEMO_VENV = RUN_DIR / "demo-venv"
REQUIREMENTS = "requirements-test.txt"  # includes requirements.txt via -r
PYTHON_VERSION = "3.11"
# glibc 2.36 in Debian bookworm: accept wheels up to manylinux_2_36.
_MANYLINUX = ("manylinux2014", "manylinux_2_17", "manylinux_2_28", "manylinux_2_34", "manylinux_2_36")
_STAMP = ".requirements.sha256"
_ADMIN_MARK = "# [admin-routes]"
# Fixed identity and dates make the demo history (and so its commit ids) reproducible.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "Demo Developer",
    "GIT_AUTHOR_EMAIL": "dev@target-api.invalid",
    "GIT_COMMITTER_NAME": "Demo Developer",
    "GIT_COMMITTER_EMAIL": "dev@target-api.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}
RELEASE_TAG = "v1.0.0"


class DemoError(RuntimeError):
    """A demo-target operation failed; the message says what and where."""


@contextmanager
def _locked(what: Path) -> Iterator[None]:
    """Serialize concurrent preparers (e.g. parallel test workers) of the same directory."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(str(Path(what).resolve()).encode()).hexdigest()[:16]
    with open(RUN_DIR / f"lock-{key}", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pip_error(proc: subprocess.CompletedProcess[str]) -> str:
    """pip's ERROR lines (its stderr is mostly harmless warnings here), else the last lines."""
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    errors = [line for line in lines if line.startswith("ERROR")]
    return " | ".join((errors or lines)[-5:]) or f"exit code {proc.returncode}"


def _requirements_digest(context_dir: Path, requirements: str, platforms: list[str]) -> str:
    """Hash of every requirements file reachable through `-r` plus the target platform."""
    h = hashlib.sha256(f"{PYTHON_VERSION}|{','.join(platforms)}\n".encode())
    todo, seen = [context_dir / requirements], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if not path.is_file():
            raise DemoError(f"{path}: requirements file not found")
        text = path.read_text()
        h.update(path.name.encode() + b"\0" + text.encode())
        for line in text.splitlines():
            if line.startswith(("-r ", "--requirement ")):
                todo.append(path.parent / line.split(maxsplit=1)[1].strip())
    return h.hexdigest()


def wheel_platforms(machine: str | None = None) -> list[str]:
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get((machine or platform.machine()).lower())
    arch = arch or (machine or platform.machine()).lower()
    return [f"{tag}_{arch}" for tag in _MANYLINUX]


def prepare_wheels(
    context_dir: Path = TARGET_DIR, requirements: str = REQUIREMENTS, *, machine: str | None = None
) -> Path:
    """Download every wheel the image needs into `<context_dir>/wheels` (cached by requirements hash).

    Runs the HOST's pip (which can reach the index) for a CPython 3.11 manylinux
    target, binary wheels only, so `pip install --no-index` inside the build
    needs no network. Returns the wheels directory.
    """
    context_dir = Path(context_dir)
    with _locked(context_dir / "wheels"):
        return _prepare_wheels(context_dir, requirements, machine)


def _prepare_wheels(context_dir: Path, requirements: str, machine: str | None) -> Path:
    wheels = context_dir / "wheels"
    platforms = wheel_platforms(machine)
    digest = _requirements_digest(context_dir, requirements, platforms)
    stamp = wheels / _STAMP
    if stamp.is_file() and stamp.read_text().strip() == digest and any(wheels.glob("*.whl")):
        return wheels
    # Download into a fresh directory and swap, so a failed download never leaves
    # a half-filled cache that a later offline build would trust.
    staging = Path(tempfile.mkdtemp(prefix=".wheels-", dir=context_dir))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--only-binary=:all:", "--python-version", PYTHON_VERSION,
               "--implementation", "cp", "--abi", f"cp{PYTHON_VERSION.replace('.', '')}"]
        for tag in platforms:
            cmd += ["--platform", tag]
        cmd += ["-d", str(staging), "-r", str(context_dir / requirements)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise DemoError(f"{context_dir / requirements}: pip download failed: {_pip_error(proc)}")
        (staging / ".gitkeep").touch()
        (staging / _STAMP).write_text(digest + "\n")
        old = context_dir / f".wheels-old-{os.getpid()}"
        if wheels.exists():
            wheels.rename(old)
        staging.rename(wheels)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return wheels


def ensure_venv(venv_dir: Path = DEMO_VENV, context_dir: Path = TARGET_DIR) -> Path:
    """Create (once) a venv with the target's pinned requirements; returns its python.

    Installs from the wheel cache with --no-index, so it is offline after
    `prepare_wheels` and identical to what the image gets.
    """
    wheels = prepare_wheels(context_dir)
    with _locked(venv_dir):
        return _ensure_venv(venv_dir, context_dir, wheels)


def _ensure_venv(venv_dir: Path, context_dir: Path, wheels: Path) -> Path:
    digest = (wheels / _STAMP).read_text().strip()
    python = venv_dir / "bin" / "python"
    stamp = venv_dir / _STAMP
    if python.exists() and stamp.is_file() and stamp.read_text().strip() == digest:
        return python
    shutil.rmtree(venv_dir, ignore_errors=True)
    # The base interpreter, not this venv's, so the new venv does not chain to it.
    base_python = Path(getattr(sys, "_base_executable", sys.executable))
    for cmd in (
        [str(base_python), "-m", "venv", str(venv_dir)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
         "--find-links", str(wheels), "-r", str(context_dir / REQUIREMENTS)],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise DemoError(f"{venv_dir}: {' '.join(cmd[:4])} failed: {_pip_error(proc)}")
    stamp.write_text(digest + "\n")
    return python


# --- the demo's own git repository -------------------------------------------------------------

def _source_files(src: Path) -> list[Path]:
    """Files that belong in the service's repository (no caches, no downloaded wheels)."""
    skip_dirs = {"__pycache__", ".pytest_cache", ".venv", ".git"}
    out = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if not path.is_file() or skip_dirs.intersection(rel.parts) or path.suffix == ".pyc":
            continue
        if rel.parts[0] == "wheels" and rel.name != ".gitkeep":
            continue
        if rel.parts[0].startswith(".wheels-") or rel == Path("ruff.toml"):
            continue  # download staging; ruff.toml only extends the selfheal project's config
        out.append(rel)
    return out


def _git(repo: Path, *args: str, date: str | None = None) -> str:
    env = {**os.environ, **_GIT_ENV}
    if date:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = date
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env,
                          check=False)
    if proc.returncode != 0:
        raise DemoError(f"{repo}: git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _is_demo_repo(dest: Path) -> bool:
    if not (dest / ".git").exists():
        return False
    try:
        _git(dest, "rev-parse", "--verify", "--quiet", f"refs/tags/{RELEASE_TAG}")
    except DemoError:
        return False
    return True


def _without_admin(main_py: str) -> str:
    """main.py as it was before the admin routes existed (drops the two marked lines)."""
    lines = main_py.splitlines(keepends=True)
    kept = [line for line in lines if _ADMIN_MARK not in line]
    if len(lines) - len(kept) != 2:
        raise DemoError(f"demo_api/main.py: expected 2 lines marked {_ADMIN_MARK!r}, "
                        f"found {len(lines) - len(kept)}")
    return "".join(kept)


def init_repo(dest: Path, src: Path = TARGET_DIR) -> Path:
    """Create the demo service's own git repository at `dest`, with a short, real history.

    History: packaging and README; the catalogue API; then the back-office
    routes (which bring the unauthenticated /admin/users). HEAD is tagged
    v1.0.0 on branch main. Idempotent: an existing demo repository is returned
    untouched (the patch engine may have added branches). `src` is only read.
    """
    dest = Path(dest)
    if _is_demo_repo(dest):
        return dest
    if dest.exists() and any(dest.iterdir()):
        raise DemoError(f"{dest}: exists, is not empty and is not a demo repository")
    files = _source_files(src)
    admin_files = {Path("demo_api/admin.py"), Path("tests/test_admin.py")}
    app_files = {f for f in files if f.parts[0] in ("demo_api", "tests")}
    scaffold = [f for f in files if f not in app_files]

    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        _git(work, "init", "--quiet", "--initial-branch=main")
        _git(work, "config", "commit.gpgsign", "false")

        def add(rels: list[Path] | set[Path], message: str, date: str, main_py: str | None = None) -> None:
            for rel in sorted(rels):
                target = work / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / rel, target)
            if main_py is not None:
                (work / "demo_api" / "main.py").write_text(main_py)
            _git(work, "add", "--all")
            _git(work, "commit", "--quiet", "-m", message, date=date)

        main_py = (src / "demo_api" / "main.py").read_text()
        add(scaffold, "Service skeleton: pinned requirements, Dockerfile, README",
            "2024-03-04T09:00:00+00:00")
        add(app_files - admin_files, "Item catalogue API: items, categories, embeddable card, orders",
            "2024-03-05T14:30:00+00:00", main_py=_without_admin(main_py))
        add(admin_files, "Back office: user list and restock routes",
            "2024-03-12T16:45:00+00:00", main_py=main_py)
        _git(work, "tag", RELEASE_TAG, date="2024-03-12T16:45:00+00:00")
        if dest.exists():
            dest.rmdir()
        work.rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


# --- running the service on loopback -----------------------------------------------------------

def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_healthy(base_url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    """Poll GET /health until it answers 200; fail fast if `proc` dies meanwhile."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise DemoError(f"{base_url}: server exited with code {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2) as resp:  # noqa: S310 (http only)
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise DemoError(f"{base_url}: not healthy after {timeout:.0f} s ({last})")


def run_local(
    port: int,
    *,
    host: str = "127.0.0.1",
    source_dir: Path = TARGET_DIR,
    python: Path | None = None,
    log_path: Path | None = None,
    ready_timeout: float = 20.0,
) -> subprocess.Popen:
    """Start the service with uvicorn on loopback and return once /health answers.

    `source_dir` may be a checkout of the demo repository (a patched branch).
    The caller owns the process: stop it with `stop_local(proc)`. Output goes to
    `log_path` (default: a file under .run/). The SQLite file is private to the
    process and deleted when it stops.
    """
    python = python or ensure_venv()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    log_path = log_path or RUN_DIR / f"demo-target-{port}.log"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "TARGET_API_LOG_LEVEL": "warning"}
    env.pop("TARGET_API_DB", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(python), "-m", "demo_api", "--host", host, "--port", str(port)],
            cwd=source_dir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        wait_healthy(f"http://{host}:{port}", ready_timeout, proc)
    except DemoError as exc:
        stop_local(proc)
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise DemoError(f"{exc}; log {log_path}: {' | '.join(tail)}") from None
    return proc


def stop_local(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a process started by `run_local` (by its PID: SIGTERM, then SIGKILL)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


@contextmanager
def local_server(
    port: int | None = None,
    *,
    host: str = "127.0.0.1",
    source_dir: Path = TARGET_DIR,
    log_path: Path | None = None,
) -> Iterator[str]:
    """`with local_server() as url:` runs the service for the block and always stops it."""
    port = port or free_port(host)
    proc = run_local(port, host=host, source_dir=source_dir, log_path=log_path)
    try:
        yield f"http://{host}:{port}"
    finally:
        stop_local(proc)

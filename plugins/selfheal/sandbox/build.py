"""Build a service image from one git commit, offline, with the Docker engine (docker-py).

The commit is exported with ``git archive`` into a fresh temporary directory,
so the build sees exactly the committed tree (never a user's checkout with
its uncommitted edits or ignored files) and nothing is written to the
repository. Dependencies are wheels the host's pip fetched into a cache keyed
by the requirements files (``selfheal.demo.prepare_wheels``); the build itself
runs with ``network_mode="none"`` so an image can only contain what was
reviewed. docker-py drives the classic builder, whose layer cache keys COPY
steps by file content, so a code fix rebuilds only its own layers.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from selfheal.paths import PROJECT_ROOT
from selfheal.sandbox.errors import BuildFailed, docker_errors

WHEEL_CACHE = Path(os.environ.get("SELFHEAL_RUN_DIR", PROJECT_ROOT / ".run")) / "sandbox" / "wheels"
WHEEL_CACHE_KEEP = 16
MAX_ARCHIVE_BYTES = 512 * 1024 * 1024
_REQUIREMENT_GLOBS = ("requirements*.txt", "constraints*.txt")
LOG_TAIL_CHARS = 4_000


@dataclass
class BuiltImage:
    """An image built (or reused) for one commit. ``image_id`` is the local content address."""

    tag: str
    image_id: str
    commit: str
    digest: str | None = None
    duration_s: float = 0.0
    reused: bool = False
    cached_steps: int = 0
    steps: int = 0
    log_tail: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _git(repo: Path, *args: str, binary: bool = False) -> Any:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise BuildFailed("checkout", f"{repo}: git {' '.join(args[:2])} failed: {' | '.join(err[-3:])}")
    return proc.stdout if binary else proc.stdout.decode().strip()


def resolve_commit(repo: Path, rev: str) -> str:
    """The full hash of ``rev`` in ``repo``; BuildFailed when it is not a commit there."""
    if not rev or rev.startswith("-"):
        raise BuildFailed("checkout", f"{repo}: {rev!r} is not a commit")
    if not (Path(repo) / ".git").exists() and not (Path(repo) / "HEAD").is_file():
        raise BuildFailed("checkout", f"{repo}: not a git repository")
    proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise BuildFailed("checkout", f"{repo}: commit {rev!r} not found")
    return proc.stdout.strip()


def export_commit(repo: Path, commit: str, dest: Path) -> None:
    """Write the tree of ``commit`` into ``dest`` (``git archive``; the repository is only read)."""
    data = _git(Path(repo), "archive", "--format=tar", commit, binary=True)
    if len(data) > MAX_ARCHIVE_BYTES:
        raise BuildFailed("checkout", f"{repo}@{commit[:12]}: tree is {len(data)} bytes, over {MAX_ARCHIVE_BYTES}")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")  # "data": no absolute paths, links out of dest or device files


def _requirement_files(context: Path) -> list[Path]:
    return sorted({p for g in _REQUIREMENT_GLOBS for p in context.glob(g) if p.is_file()})


def requirements_key(context: Path) -> str:
    """Cache key of a context's dependency set: the requirement files' names and contents."""
    h = hashlib.sha256()
    for p in _requirement_files(context):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:24]


def prepare_wheels(context: Path, cache_root: Path = WHEEL_CACHE) -> int:
    """Fill ``context/wheels`` (when the Dockerfile expects one) from a cache keyed by the requirements.

    The download is the host's pip (containers here cannot reach an index);
    a second build with the same requirements downloads nothing. Returns the
    number of wheels linked; 0 when the context has no ``wheels/`` directory.
    """
    from selfheal import demo

    wheels_dir = context / "wheels"
    if not wheels_dir.is_dir():
        return 0
    entry = "requirements-test.txt" if (context / "requirements-test.txt").is_file() else "requirements.txt"
    if not (context / entry).is_file():
        return 0
    cache = cache_root / requirements_key(context)
    cache.mkdir(parents=True, exist_ok=True)
    for p in _requirement_files(context):
        target = cache / p.name
        if not target.is_file() or target.read_bytes() != p.read_bytes():
            shutil.copyfile(p, target)
    try:
        cached = demo.prepare_wheels(cache, entry)
    except demo.DemoError as e:
        # "<cache dir>/requirements-test.txt: pip download failed: ERROR: ..." -> name the commit's file
        raise BuildFailed("dependencies", str(e).replace(f"{cache}/", "")) from None
    os.utime(cache)  # recently used: kept by the pruning below
    n = 0
    for whl in cached.glob("*.whl"):
        target = wheels_dir / whl.name
        if target.exists():
            continue
        try:
            os.link(whl, target)
        except OSError:  # another filesystem: copy
            shutil.copy2(whl, target)
        n += 1
    _prune(cache_root)
    return n


def _prune(cache_root: Path, keep: int = WHEEL_CACHE_KEEP) -> None:
    dirs = sorted((d for d in cache_root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: d.stat().st_mtime, reverse=True)
    for d in dirs[keep:]:
        shutil.rmtree(d, ignore_errors=True)


def _error_line(chunk: Mapping[str, Any]) -> str:
    detail = chunk.get("errorDetail") or {}
    return str(detail.get("message") or chunk.get("error") or "").strip()


_BUILDER_LINES = ("Step ", "--->", "Removing intermediate container", "Sending build context", "Successfully ")


def _pip_hint(log: str) -> str:
    """The most telling output line of a failed RUN: pip's ERROR line, else its last line ("" if silent)."""
    lines = [x.strip() for x in log.splitlines() if x.strip() and not x.strip().startswith(_BUILDER_LINES)]
    errors = [x for x in lines if x.startswith("ERROR")]
    return (errors or lines or [""])[-1][:300]


def build_image(
    client: Any,
    repo: Path,
    commit: str,
    tag: str,
    *,
    dockerfile: str = "Dockerfile",
    base_image: str | None = None,
    build_args: Mapping[str, str] | None = None,
    no_cache: bool = False,
    pull: bool = False,
    network_mode: str | None = "none",
    timeout_s: float = 600.0,
    labels: Mapping[str, str] | None = None,
    reuse: bool = False,
    progress: Callable[[str], None] | None = None,
) -> BuiltImage:
    """Build ``tag`` from ``commit`` of ``repo``; BuildFailed (stage and reason) on any problem.

    ``reuse``: return the existing ``tag`` when it was built from the same commit on the same base
    image (the baseline image of a service is built once per commit). The image's labels record
    the commit and the base image id.
    """
    started = time.monotonic()
    timings: dict[str, float] = {}
    full = resolve_commit(repo, commit)
    args = dict(build_args or {})
    if base_image:
        args.setdefault("BASE_IMAGE", base_image)
    base_id = ""
    with docker_errors("build"):
        base = existing_image(client, base_image) if base_image else None
        if pull and base is not None and not base.attrs.get("RepoDigests"):
            # Imported or built here (the offline base): no registry has it, so a pull can only fail.
            # "pull" is best effort (Verification.build): the local image is the newest there is.
            pull = False
        if base_image and not pull:
            if base is not None:
                base_id = base.id
            else:
                raise BuildFailed("build", f"base image {base_image} is not present (builds here are offline; "
                                           "run scripts/base-image.sh or set SELFHEAL_BASE_IMAGE)") from None
        all_labels = {**(labels or {}), "selfheal.commit": full, "selfheal.base_image_id": base_id}
        if reuse and not no_cache:
            existing = existing_image(client, tag)
            if existing is not None and all(existing.labels.get(k) == v for k, v in all_labels.items()):
                return BuiltImage(tag=tag, image_id=existing.id, commit=full, digest=_digest(existing),
                                  duration_s=time.monotonic() - started, reused=True)
    context = Path(tempfile.mkdtemp(prefix="selfheal-build-"))
    try:
        t = time.monotonic()
        export_commit(repo, full, context)
        if not (context / dockerfile).is_file():
            raise BuildFailed("build", f"{repo}@{full[:12]}: no {dockerfile} in the commit")
        timings["checkout_s"] = time.monotonic() - t
        t = time.monotonic()
        prepare_wheels(context)
        timings["wheels_s"] = time.monotonic() - t
        if progress:
            progress(f"build {tag}")
        t = time.monotonic()
        image_id, log, steps, cached = _docker_build(
            client, context, tag, dockerfile=dockerfile, buildargs=args, no_cache=no_cache, pull=pull,
            network_mode=network_mode, timeout_s=timeout_s, labels=all_labels,
        )
        timings["docker_build_s"] = time.monotonic() - t
    finally:
        shutil.rmtree(context, ignore_errors=True)
    with docker_errors("build"):
        image = client.images.get(image_id or tag)
    return BuiltImage(tag=tag, image_id=image.id, commit=full, digest=_digest(image),
                      duration_s=time.monotonic() - started, cached_steps=cached, steps=steps,
                      log_tail=log[-LOG_TAIL_CHARS:], timings={k: round(v, 3) for k, v in timings.items()})


def existing_image(client: Any, tag: str) -> Any:
    """The image named ``tag``, or None when there is none."""
    from docker.errors import ImageNotFound

    try:
        return client.images.get(tag)
    except ImageNotFound:
        return None


def _digest(image: Any) -> str | None:
    digests = image.attrs.get("RepoDigests") or []
    return digests[0] if digests else None


def _docker_build(
    client: Any, context: Path, tag: str, *, dockerfile: str, buildargs: dict[str, str], no_cache: bool,
    pull: bool, network_mode: str | None, timeout_s: float, labels: Mapping[str, str],
) -> tuple[str, str, int, int]:
    """Run the build, streaming its log; returns (image id, log, steps, cached steps)."""
    deadline = time.monotonic() + timeout_s
    log: list[str] = []
    image_id = ""
    steps = cached = 0
    with docker_errors("build"):
        stream = client.api.build(
            path=str(context), dockerfile=dockerfile, tag=tag, buildargs=buildargs, nocache=no_cache,
            pull=pull, rm=True, forcerm=True, network_mode=network_mode, decode=True, labels=dict(labels),
            timeout=max(30, int(timeout_s)),
        )
        try:
            for chunk in stream:
                if "stream" in chunk:
                    text = str(chunk["stream"])
                    log.append(text)
                    if text.startswith("Step "):
                        steps += 1
                    elif "Using cache" in text:
                        cached += 1
                err = _error_line(chunk)
                if err:
                    text = "".join(log)
                    hint = _pip_hint(text)
                    reason = err if not hint or hint in err else f"{err} ({hint})"
                    raise BuildFailed("build", reason, log=text[-LOG_TAIL_CHARS:])
                aux = chunk.get("aux") or {}
                if isinstance(aux, dict) and aux.get("ID"):
                    image_id = str(aux["ID"])
                if time.monotonic() > deadline:
                    raise BuildFailed("build", f"timeout: the build took longer than {timeout_s:g} s",
                                      log="".join(log)[-LOG_TAIL_CHARS:])
        finally:
            close = getattr(stream, "close", None)
            if close:
                close()  # a closed connection makes the daemon cancel a build still running
    text = "".join(log)
    if not image_id:
        for line in reversed(log):
            if line.startswith("Successfully built "):
                image_id = line.split()[-1]
                break
    if not image_id:
        raise BuildFailed("build", "the build ended without an image", log=text[-LOG_TAIL_CHARS:])
    return image_id, text, steps, cached

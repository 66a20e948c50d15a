"""Where package versions come from, and whether a set of pins can be installed together.

Both talk to the real package index through the host's pip (which knows the
configured index, extra indexes, find-links and certificates), not through a
hand-written HTTP client. Both are injectable: unit tests hand the
dependency-upgrade recipe a ``StaticVersions`` list instead.

* ``PipIndexVersions``: ``pip index versions NAME --json --pre``, cached in
  memory and on disk (versions only grow, yanked releases are already left
  out by pip, so a few hours of staleness only ever hides a brand-new release).
* ``PipResolver``: ``pip install --dry-run --ignore-installed -r FILE`` on a
  temporary copy of the project's requirement files, i.e. pip's own resolver
  decides whether the upgraded pin conflicts with another pin or with a
  transitive requirement; its "conflict is caused by" lines become the reason.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from selfheal.paths import PROJECT_ROOT

DEFAULT_CACHE_DIR = PROJECT_ROOT / ".run" / "cache" / "pip-index"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class VersionLookupError(RuntimeError):
    """The index could not be asked (pip failed, timed out, or answered garbage)."""


class VersionSource(Protocol):
    def versions(self, name: str) -> list[Version]:
        """Every release of ``name`` on the index (pre-releases included); [] for an unknown project."""
        ...


class Resolver(Protocol):
    def conflicts(self, files: Mapping[str, str], entry: str) -> str | None:
        """None when ``entry`` (a key of ``files``: relative path -> text) installs; else the reason."""
        ...


def _parse_versions(raw: Iterable[str]) -> list[Version]:
    out = set()
    for v in raw:
        try:
            out.add(Version(str(v)))
        except InvalidVersion:
            continue  # legacy non-PEP 440 releases cannot be pinned with == anyway
    return sorted(out)


class StaticVersions:
    """A fixed version list per package (tests, air-gapped runs with a known mirror listing)."""

    def __init__(self, releases: Mapping[str, Iterable[str]]) -> None:
        self._releases = {canonicalize_name(k): _parse_versions(v) for k, v in releases.items()}

    def versions(self, name: str) -> list[Version]:
        return list(self._releases.get(canonicalize_name(name), []))


class PipIndexVersions:
    """Versions from the real index via ``pip index versions`` (cached; see the module docstring)."""

    def __init__(
        self,
        python: str | os.PathLike[str] = sys.executable,
        cache_dir: Path | None = DEFAULT_CACHE_DIR,
        ttl_s: float = 6 * 3600,
        timeout_s: float = 120,
    ) -> None:
        self.python = str(python)
        self.cache_dir = cache_dir
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._memo: dict[str, list[Version]] = {}
        self.lookups = 0  # pip invocations actually made (the rest came from a cache)

    def _cache_file(self, name: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{name}.json"

    def versions(self, name: str) -> list[Version]:
        if not _NAME.match(name):
            raise VersionLookupError(f"{name!r}: not a valid package name")
        key = canonicalize_name(name)
        if key in self._memo:
            return list(self._memo[key])
        cache = self._cache_file(key)
        if cache is not None and cache.is_file():
            try:
                data = json.loads(cache.read_text())
                if time.time() - float(data["fetched"]) < self.ttl_s:
                    self._memo[key] = _parse_versions(data["versions"])
                    return list(self._memo[key])
            except (ValueError, KeyError, TypeError, OSError):
                pass  # a damaged cache entry is just refetched
        raw = self._ask_pip(key)
        self._memo[key] = _parse_versions(raw)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"fetched": time.time(), "versions": raw}))
            tmp.replace(cache)
        return list(self._memo[key])

    def _ask_pip(self, name: str) -> list[str]:
        cmd = [
            self.python,
            "-m",
            "pip",
            "index",
            "versions",
            name,
            "--json",
            "--pre",
            "--disable-pip-version-check",
            "--no-input",
        ]
        self.lookups += 1
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired as e:
            raise VersionLookupError(
                f"{name}: pip index versions timed out after {self.timeout_s:.0f} s"
            ) from e
        except OSError as e:
            raise VersionLookupError(f"{name}: cannot run {self.python}: {e.strerror}") from e
        err = proc.stderr.strip()
        if proc.returncode != 0 or not proc.stdout.strip():
            if "No matching distribution" in err:
                return []
            tail = " | ".join(line for line in err.splitlines() if not line.startswith("WARNING"))[-300:]
            raise VersionLookupError(f"{name}: pip index versions failed: {tail or proc.returncode}")
        try:
            data = json.loads(proc.stdout)
            versions = data["versions"]
        except (ValueError, KeyError, TypeError) as e:
            raise VersionLookupError(f"{name}: unexpected pip index output: {proc.stdout[:200]!r}") from e
        if not isinstance(versions, list):
            raise VersionLookupError(f"{name}: unexpected pip index output: versions is not a list")
        return [str(v) for v in versions]


class PipResolver:
    """Asks pip's resolver whether the requirement files install together (no install, no venv change)."""

    def __init__(self, python: str | os.PathLike[str] = sys.executable, timeout_s: float = 300) -> None:
        self.python = str(python)
        self.timeout_s = timeout_s
        self._memo: dict[tuple, str | None] = {}

    def conflicts(self, files: Mapping[str, str], entry: str) -> str | None:
        key = (entry, tuple(sorted(files.items())))
        if key in self._memo:
            return self._memo[key]
        with tempfile.TemporaryDirectory(prefix="selfheal-resolve-") as tmp:
            root = Path(tmp)
            for rel, text in files.items():
                dest = root / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(text, encoding="utf-8")
            cmd = [
                self.python,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--prefer-binary",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
                str(root / entry),
            ]
            try:
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=self.timeout_s, cwd=root, check=False
                )
            except subprocess.TimeoutExpired:
                return f"{entry}: pip could not resolve the requirements within {self.timeout_s:.0f} s"
        result = (
            None if proc.returncode == 0 else _conflict_reason(proc.stdout + proc.stderr, str(root), entry)
        )
        self._memo[key] = result
        return result


def _conflict_reason(output: str, tmp: str, entry: str) -> str:
    lines = [
        ln.replace(tmp + "/", "") for ln in output.splitlines() if not ln.startswith("WARNING: Location")
    ]
    cause: list[str] = []
    for i, line in enumerate(lines):
        if line.strip() == "The conflict is caused by:":
            for nxt in lines[i + 1 :]:
                if not nxt.startswith("    "):
                    break
                cause.append(nxt.strip())
            break
    errors = [
        ln[len("ERROR: ") :] for ln in lines if ln.startswith("ERROR: ") and "ResolutionImpossible" not in ln
    ]
    msg = "; ".join(cause) if cause else (errors[0] if errors else (lines[-1] if lines else "pip failed"))
    return f"{entry}: pip cannot install the upgraded requirements: {msg}"[:600]

"""Finding and parsing the application's Python sources in a working copy (shared by source recipes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import libcst as cst

MAX_SOURCE_BYTES = 1024 * 1024
MAX_FILES = 5000
_SKIP_DIRS = {
    ".git",
    ".venv",
    "venv",
    "env",
    "node_modules",
    "__pycache__",
    "site-packages",
    "build",
    "dist",
    "wheels",
    ".tox",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    "tests",
    "test",
}


def app_sources(root: Path) -> Iterator[tuple[str, str]]:
    """(relative path, text) of the application's .py files: tests, virtualenvs and caches left out."""
    count = 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(p in _SKIP_DIRS or p.startswith(".") for p in rel.parts[:-1]):
            continue
        if rel.name.startswith("test_") or rel.name.endswith("_test.py") or rel.name == "conftest.py":
            continue
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_SOURCE_BYTES:
            continue
        count += 1
        if count > MAX_FILES:
            return
        try:
            yield str(rel.as_posix()), path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue


def parse(text: str) -> cst.Module | None:
    """The libcst module, or None for a file that does not parse (it is not ours to fix)."""
    try:
        return cst.parse_module(text)
    except cst.ParserSyntaxError:
        return None


def module_name(root: Path, rel: str) -> str:
    """Dotted import name of ``rel``: the longest chain of parent directories holding __init__.py."""
    parts = list(Path(rel).with_suffix("").parts)
    j = len(parts) - 1
    while j >= 1 and (root.joinpath(*parts[:j]) / "__init__.py").is_file():
        j -= 1
    return ".".join(parts[j:])


def code(node: cst.CSTNode) -> str:
    return cst.Module(body=[]).code_for_node(node)

"""Git-style unified diffs: made from in-memory edits, applied with ``git apply``.

Recipes never write into the checkout they plan from: they compute the new
text of each file and this module turns it into the plan's diff. The diff is
the source of truth afterwards: the commit step applies it to a fresh clone
at the plan's base commit, so what is reviewed is exactly what is committed.
``difflib`` is used for the text and ``git apply`` for applying (git handles
fuzz-free application, new files and missing final newlines correctly).
"""

from __future__ import annotations

import difflib
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

from selfheal.patches.model import PlanError

_DIFF_HEADER = re.compile(r"^diff --git a/(\S+) b/(\S+)$", re.MULTILINE)


def _lines(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    # difflib would glue a last line without "\n" to the next diff line: mark it the way git does.
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n\\ No newline at end of file\n"
    return lines


def file_diff(path: str, old: str | None, new: str) -> str:
    """The git-style diff of one file (``old`` None: a new file)."""
    if old == new:
        return ""
    if old is None:
        body = difflib.unified_diff([], _lines(new), "/dev/null", f"b/{path}", n=3)
        head = f"diff --git a/{path} b/{path}\nnew file mode 100644\n"
    else:
        body = difflib.unified_diff(_lines(old), _lines(new), f"a/{path}", f"b/{path}", n=3)
        head = f"diff --git a/{path} b/{path}\n"
    text = "".join(body)
    # difflib writes "--- /dev/null\t" style headers without dates when none are given; strip trailing spaces.
    text = re.sub(r"^(---|\+\+\+) (.*?)[ \t]*$", r"\1 \2", text, flags=re.MULTILINE)
    return head + text


def make_diff(workdir: Path, edits: Mapping[str, str]) -> str:
    """The diff turning the files in ``workdir`` into ``edits`` (relative path -> new text)."""
    parts = []
    for rel in sorted(edits):
        path = workdir / rel
        old = path.read_text(encoding="utf-8") if path.is_file() else None
        parts.append(file_diff(rel, old, edits[rel]))
    return "".join(parts)


def changed_files(diff: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(m.group(2) for m in _DIFF_HEADER.finditer(diff)))


def apply_diff(workdir: Path, diff: str, *, index: bool = False) -> tuple[str, ...]:
    """Apply ``diff`` in ``workdir`` (``index``: also stage it); returns the changed paths.

    Checks first, so a diff that does not apply changes nothing and the error
    says which file and hunk did not match.
    """
    if not diff:
        return ()
    base = ["git", "-C", str(workdir), "apply", "--whitespace=nowarn"]
    if index:
        base.append("--index")
    for extra in (["--check"], []):
        proc = subprocess.run([*base, *extra, "-"], input=diff, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            msg = " | ".join(proc.stderr.strip().splitlines()[:4]) or f"exit status {proc.returncode}"
            raise PlanError(f"{workdir}: the patch does not apply: {msg}")
    return changed_files(diff)

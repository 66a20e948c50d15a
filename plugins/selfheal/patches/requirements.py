"""Find and rewrite a package's requirement in a project's pip requirement files and pyproject.toml.

Only the specifier of the matching requirement changes; comments, extras,
markers, per-requirement options, ``-r``/``-c`` include lines, spacing and
line order are kept byte for byte. Parsing is ``packaging.requirements``
(PEP 508); the line structure of pip's requirement files (comments, ``\\``
continuations, options) is handled here because pip exposes no public parser.
pyproject.toml is read with ``tomllib`` and edited by replacing the exact
string literal, then re-read to prove that only the intended entry changed.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, Specifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from selfheal.patches.model import PlanError

MAX_FILE_BYTES = 2 * 1024 * 1024
_ROOT_PATTERNS = (
    "requirements*.txt",
    "constraints*.txt",
    "requirements/*.txt",
    "requirements/*.in",
    "requirements*.in",
)
_INCLUDE = re.compile(r"^(-r|--requirement|-c|--constraint)(?:\s+|=)(\S+)\s*$")
_OPTION_ONLY = re.compile(r"^(-[a-zA-Z]|--[a-z][a-z0-9-]*)(\s|=|$)")
_EDITABLE = re.compile(r"^(-e|--editable)(\s|=)")
_PER_REQ_OPTION = re.compile(r"\s+--(hash|global-option|config-settings|install-option)[=\s]")
_COMMENT = re.compile(r"(^|\s)#.*$")
# name [extras] (specifier) ; marker -- the specifier group is what gets replaced.
_REQ_PARTS = re.compile(
    r"^(?P<head>\s*[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?\s*(?:\[[^\]]*\])?)"
    r"(?P<spec>[^;@]*?)(?P<tail>\s*(?:;.*)?)$",
    re.DOTALL,
)

Style = Literal["requirements", "pyproject"]


@dataclass(frozen=True)
class Mention:
    """One requirement of the package in one project file."""

    file: str
    line: int
    raw: str  # the requirement text as written (no comment, no options)
    req: Requirement
    style: Style
    hashed: bool = False
    applies: bool = True  # its environment marker holds for the target environment

    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class ProjectFiles:
    """The dependency files of one project: their text and every mention of every package."""

    root: Path
    texts: dict[str, str]
    mentions: list[Mention]
    primary: str | None  # the file a new pin would go to (requirements.txt)
    constraint_files: set[str]  # files pulled in with -c (or named constraints*.txt): they only restrict

    def of(self, name: str) -> list[Mention]:
        key = canonicalize_name(name)
        return [m for m in self.mentions if canonicalize_name(m.req.name) == key]


def _read(path: Path, rel: str) -> str:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise PlanError(f"{rel}: larger than {MAX_FILE_BYTES} bytes; not a requirements file")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PlanError(f"{rel}: not UTF-8 text ({e.reason})") from e
    except OSError as e:
        raise PlanError(f"{rel}: cannot read: {e.strerror}") from e


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, line) with comments removed and ``\\`` continuations joined, as pip does."""
    out: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, line in enumerate(text.splitlines(), 1):
        if not buf:
            start = n
        if line.endswith("\\") and not _COMMENT.search(line):
            buf += line[:-1]
            continue
        buf += line
        stripped = _COMMENT.sub("", buf).strip()
        if stripped:
            out.append((start, stripped))
        buf = ""
    if buf.strip():
        out.append((start, _COMMENT.sub("", buf).strip()))
    return out


def _env() -> dict[str, str]:
    return dict(default_environment())


def parse_requirements(rel: str, text: str) -> tuple[list[Mention], list[tuple[str, bool]]]:
    """Mentions and includes (target, is ``-c``) of one requirements file; PlanError on a bad line."""
    mentions: list[Mention] = []
    includes: list[tuple[str, bool]] = []
    env = _env()
    for n, line in logical_lines(text):
        inc = _INCLUDE.match(line)
        if inc:
            includes.append((inc.group(2), inc.group(1) in ("-c", "--constraint")))
            continue
        if _EDITABLE.match(line) or _OPTION_ONLY.match(line):
            continue  # editable installs and global options (--index-url, --pre, ...) name no pin
        m = _PER_REQ_OPTION.search(line)
        req_text = line[: m.start()] if m else line
        hashed = "--hash" in line
        if ("://" in req_text.split(";")[0] and "@" not in req_text) or req_text.startswith((".", "/")):
            continue  # a bare URL or path: no package name to match
        try:
            req = Requirement(req_text)
        except InvalidRequirement as e:
            raise PlanError(f"{rel}:{n}: cannot parse requirement {req_text[:120]!r}: {e}") from e
        applies = req.marker is None or req.marker.evaluate(env)
        mentions.append(Mention(rel, n, req_text, req, "requirements", hashed, applies))
    return mentions, includes


def _pyproject_strings(doc: dict) -> list[str]:
    project = doc.get("project") or {}
    out = list(project.get("dependencies") or [])
    for deps in (project.get("optional-dependencies") or {}).values():
        out.extend(deps or [])
    for deps in (doc.get("dependency-groups") or {}).values():
        out.extend(d for d in deps or [] if isinstance(d, str))  # tables are include-group entries
    return [s for s in out if isinstance(s, str)]


def project_dependencies(text: str) -> list[str]:
    """``[project].dependencies`` of a pyproject.toml text (what installing the project requires)."""
    deps = (tomllib.loads(text).get("project") or {}).get("dependencies") or []
    return [d for d in deps if isinstance(d, str)]


def parse_pyproject(rel: str, text: str) -> list[Mention]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PlanError(f"{rel}: not valid TOML: {e}") from e
    env = _env()
    mentions = []
    for s in _pyproject_strings(doc):
        try:
            req = Requirement(s)
        except InvalidRequirement as e:
            raise PlanError(f"{rel}: cannot parse dependency {s[:120]!r}: {e}") from e
        pos = text.find(s)
        line = text.count("\n", 0, pos) + 1 if pos >= 0 else 0
        applies = req.marker is None or req.marker.evaluate(env)
        mentions.append(Mention(rel, line, s, req, "pyproject", False, applies))
    return mentions


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def load_project(root: Path, hint: str | None = None) -> ProjectFiles:
    """Every dependency file of the project at ``root`` (following includes) and all mentions.

    ``hint`` is a file a scanner named (Inspector's ``filePath``), read too when it is inside the project.
    """
    candidates: list[str] = []
    for pattern in _ROOT_PATTERNS:
        candidates += sorted(str(p.relative_to(root)) for p in root.glob(pattern) if p.is_file())
    if hint:
        h = PurePosixPath(hint.lstrip("/"))
        if h.name.endswith((".txt", ".in")) and (root / h).is_file() and _inside(root, root / h):
            candidates.append(str(h))
    texts: dict[str, str] = {}
    mentions: list[Mention] = []
    constraint_files = {c for c in candidates if Path(c).name.startswith("constraints")}
    todo = list(dict.fromkeys(candidates))
    while todo:
        rel = todo.pop(0)
        if rel in texts:
            continue
        text = _read(root / rel, rel)
        texts[rel] = text
        found, includes = parse_requirements(rel, text)
        mentions += found
        for inc, is_constraint in includes:
            if "://" in inc:
                continue
            target = (root / rel).parent / inc
            if not target.is_file() or not _inside(root, target):
                raise PlanError(f"{rel}: includes {inc!r}, which is not a file inside the project")
            inc_rel = str(target.resolve().relative_to(root.resolve()))
            if is_constraint:
                constraint_files.add(inc_rel)
            todo.append(inc_rel)
    if (root / "pyproject.toml").is_file():
        text = _read(root / "pyproject.toml", "pyproject.toml")
        texts["pyproject.toml"] = text
        mentions += parse_pyproject("pyproject.toml", text)
    primary = "requirements.txt" if "requirements.txt" in texts else None
    return ProjectFiles(root, texts, mentions, primary, constraint_files)


# ------------------------------------------------------------------ specifier arithmetic
def is_lower_bound(s: Specifier) -> bool:
    return s.operator in (">=", ">")


def is_pin(s: Specifier) -> bool:
    return s.operator in ("==", "===") and not s.version.endswith(".*")


def hard_constraints(spec: SpecifierSet) -> list[Specifier]:
    """The parts of a specifier that a version upgrade must respect rather than rewrite.

    Exact pins and lower bounds are rewritten (raising them is the fix);
    upper bounds, exclusions, wildcard series and ``~=`` series are the
    project's decisions and must hold for the chosen version.
    """
    return [s for s in spec if not is_pin(s) and not is_lower_bound(s)]


def raise_specifier(spec: SpecifierSet, target: Version) -> str:
    """The specifier text that requires ``target`` while keeping the other constraints of ``spec``.

    ``==3.1.2`` -> ``==3.1.6``; ``>=3.0,<4`` -> ``>=3.1.6,<4``; ``~=3.1.2`` -> ``~=3.1.6``; ``~=3.1`` ->
    ``~=3.1,>=3.1.6``; no specifier -> ``>=3.1.6``. Raises PlanError when a kept constraint excludes target.
    """
    parts: list[str] = []
    has_lower = False
    for s in sorted(spec, key=lambda s: (s.operator not in ("==", "===", "~=", ">=", ">"), str(s))):
        if is_pin(s):
            parts.append(f"{s.operator}{target}")
            has_lower = True
        elif is_lower_bound(s):
            if not has_lower:
                parts.append(f">={target}")
                has_lower = True
        elif s.operator == "~=":
            if not s.contains(target, prereleases=True):
                raise PlanError(f"~={s.version} excludes {target}")
            if len(Version(s.version).release) == len(target.release):
                parts.append(f"~={target}")
                has_lower = True
            else:
                parts.append(str(s))
        else:
            if not s.contains(target, prereleases=True):
                raise PlanError(f"{s} excludes {target}")
            parts.append(str(s))
    if not has_lower:
        parts.insert(0, f">={target}")
    # Deduplicate while keeping order (a pin and a lower bound both become the new bound).
    text = ",".join(dict.fromkeys(parts))
    try:
        new = SpecifierSet(text)
    except InvalidSpecifier as e:  # pragma: no cover - built from valid parts
        raise PlanError(f"cannot build specifier {text!r}: {e}") from e
    if not new.contains(target, prereleases=True):
        raise PlanError(f"{text} does not admit {target}")
    return text


def rewrite_requirement(raw: str, new_spec: str) -> str:
    """``raw`` with its version specifier replaced by ``new_spec`` (name, extras, marker kept)."""
    m = _REQ_PARTS.match(raw)
    if not m:
        raise PlanError(f"cannot locate the version specifier in {raw!r}")
    spec = m.group("spec")
    lead = spec[: len(spec) - len(spec.lstrip())]
    trail = spec[len(spec.rstrip()) :]
    inner = spec.strip()
    if inner.startswith("(") and inner.endswith(")"):
        new_spec = f"({new_spec})"
    return f"{m.group('head')}{lead}{new_spec}{trail}{m.group('tail')}"


def edit_requirements_text(text: str, mention: Mention, new_raw: str) -> str:
    """Replace the mention's requirement text on its line(s); everything else stays byte-identical."""
    lines = text.splitlines(keepends=True)
    i = mention.line - 1
    # A requirement split with "\" spans lines: rebuild the logical line only if it is on one line.
    line = lines[i]
    if mention.raw in line:
        lines[i] = line.replace(mention.raw, new_raw, 1)
        return "".join(lines)
    raise PlanError(f"{mention.where()}: the requirement spans several lines; edit it by hand")


def edit_pyproject_text(text: str, mention: Mention, new_raw: str) -> str:
    """Replace the quoted dependency string and prove by re-parsing that nothing else changed."""
    before = tomllib.loads(text)
    replaced = text
    count = 0
    for q in ('"', "'"):
        lit = f"{q}{mention.raw}{q}"
        count += replaced.count(lit)
        replaced = replaced.replace(lit, f"{q}{new_raw}{q}")
    if count == 0:
        raise PlanError(
            f"{mention.file}: dependency {mention.raw!r} is written with escapes; edit it by hand"
        )
    after = tomllib.loads(replaced)
    expected = _swap(before, mention.raw, new_raw)
    if after != expected:
        raise PlanError(
            f"{mention.file}: {mention.raw!r} also appears outside the dependency lists; edit by hand"
        )
    return replaced


def _swap(doc: object, old: str, new: str) -> object:
    """``doc`` with dependency strings equal to ``old`` replaced (only inside dependency lists)."""
    import copy

    out = copy.deepcopy(doc)
    assert isinstance(out, dict)
    project = out.get("project") or {}
    lists = [project.get("dependencies")]
    lists += list((project.get("optional-dependencies") or {}).values())
    lists += list((out.get("dependency-groups") or {}).values())
    for deps in lists:
        if isinstance(deps, list):
            for i, d in enumerate(deps):
                if d == old:
                    deps[i] = new
    return out

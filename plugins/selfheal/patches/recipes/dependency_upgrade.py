"""dependency_upgrade: raise a Python package's requirement to the lowest release that fixes every finding.

Version choice, in order:

1. Each finding's fixed versions (Inspector writes several for several release
   lines, e.g. ``"2.32.0, 3.0.1"``): a release is fixed when it is at or above
   a listed fix *in the same line* (3.0.0 is not fixed by "2.32.0, 3.0.1").
2. Only releases that exist on the index (``PlanContext.versions``), are not
   older than what is pinned now (never a downgrade), are final releases
   unless a fix is itself a pre-release, and satisfy every constraint of the
   project that is not the pin being raised (upper bounds, ``!=``, ``~=``
   series, other files such as constraints.txt).
3. The lowest such release: the smallest change that fixes everything.

Then the specifier is rewritten in every file that pins the package (see
``selfheal.patches.requirements``) and, when a resolver is given, pip
resolves the result to catch conflicts with other pins and transitive
requirements. Every failure is a failed plan with the reason.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from selfheal.catalog import Service
from selfheal.findings.model import Finding
from selfheal.patches import requirements as reqs
from selfheal.patches.attack import attack_requests
from selfheal.patches.diffs import make_diff
from selfheal.patches.model import DependencyVersionCheck, PatchPlan, PlanError, Verification
from selfheal.patches.recipes import PlanContext, Recipe, image_checks
from selfheal.patches.versions import VersionLookupError

PYTHON_ECOSYSTEMS = frozenset({"pypi", "pip", "python", "poetry", "pipenv"})
PYPROJECT_ENTRY = ".selfheal-pyproject-dependencies.txt"  # [project].dependencies, for the resolver only
_SPLIT = re.compile(r"[,\s;|]+")


def parse_fixed(text: str) -> list[Version]:
    """``"2.32.0, 3.0.1"`` -> [2.32.0, 3.0.1]; PlanError when a listed version is not PEP 440."""
    out = []
    for token in _SPLIT.split(text.strip()):
        if not token:
            continue
        token = token.removeprefix("v").removeprefix("0:")
        try:
            out.append(Version(token))
        except InvalidVersion as e:
            raise PlanError(f"fixed version {token!r} is not a valid version") from e
    if not out:
        raise PlanError(f"no fixed version in {text!r}")
    return sorted(set(out))


def _line_start(v: Version) -> Version:
    """The first release of ``v``'s release line (3.0.1 -> 3.0; 5 -> 5)."""
    rel = v.release[:-1] if len(v.release) > 1 else v.release
    return Version(".".join(str(x) for x in rel))


def is_fixed(v: Version, fixes: Sequence[Version]) -> bool:
    """Whether ``v`` contains a fix, given fixes for several release lines (sorted ascending)."""
    below = [i for i, f in enumerate(fixes) if f <= v]
    if not below:
        return False
    i = below[-1]
    if i == len(fixes) - 1:
        return True
    return v < _line_start(fixes[i + 1])


class DependencyUpgrade(Recipe):
    name = "dependency_upgrade"
    delivery = "image"

    def applies(self, finding: Finding, service: Service) -> bool:
        pkg = finding.package
        if finding.kind != "dependency" or pkg is None or not pkg.fixed_version:
            return False
        eco = (pkg.ecosystem or "").lower()
        if eco:
            return eco in PYTHON_ECOSYSTEMS
        # No ecosystem: only when the scanner pointed at a Python dependency file.
        fp = (pkg.file_path or "").lower()
        return fp.endswith((".txt", ".in", "pyproject.toml", "metadata"))

    def group_key(self, finding: Finding) -> str:
        assert finding.package is not None
        return canonicalize_name(finding.package.name)

    def plan(
        self, findings: Sequence[Finding], service: Service, workdir: Path, ctx: PlanContext
    ) -> PatchPlan:
        pkg = findings[0].package
        assert pkg is not None
        name = pkg.name
        try:
            return self._plan(findings, service, workdir, ctx)
        except PlanError as e:
            return self.make_plan(
                findings,
                service,
                ctx,
                title=f"Upgrade {name}: no safe version",
                failed=True,
                reason=f"{name}: {e}",
                details={"package": name},
            )
        except VersionLookupError as e:
            return self.make_plan(
                findings,
                service,
                ctx,
                title=f"Upgrade {name}: index unavailable",
                failed=True,
                reason=f"cannot ask the package index: {e}",
                details={"package": name},
            )

    def _plan(
        self, findings: Sequence[Finding], service: Service, workdir: Path, ctx: PlanContext
    ) -> PatchPlan:
        first = findings[0].package
        assert first is not None
        name = first.name
        project = reqs.load_project(workdir, hint=first.file_path)
        mentions = [m for m in project.of(name) if m.applies]
        if any(m.req.url for m in mentions):
            where = next(m.where() for m in mentions if m.req.url)
            raise PlanError(f"{where} installs it from a direct URL; a version upgrade needs a human")
        fix_sets = []
        for f in findings:
            assert f.package is not None and f.package.fixed_version
            fix_sets.append(parse_fixed(f.package.fixed_version))

        current: list[Version] = []
        for f in findings:
            if f.package and f.package.version:
                with contextlib.suppress(InvalidVersion):  # distro-style versions say nothing about PyPI
                    current.append(Version(f.package.version.removeprefix("v")))
        for m in mentions:
            current += [
                Version(s.version) for s in m.req.specifier if reqs.is_pin(s) or reqs.is_lower_bound(s)
            ]
        floor = max(current) if current else None

        released = ctx.version_source().versions(name)
        if not released:
            raise PlanError("not found on the package index")
        allow_pre = any(v.is_prerelease for fs in fix_sets for v in fs) or bool(floor and floor.is_prerelease)
        fixed = [
            v
            for v in released
            if all(is_fixed(v, fs) for fs in fix_sets) and (allow_pre or not v.is_prerelease)
        ]
        needed = max(fs[0] for fs in fix_sets)
        if not fixed:
            listed = ", ".join(
                f.package.fixed_version for f in findings if f.package and f.package.fixed_version
            )
            raise PlanError(
                f"fixed version {listed} does not exist on the package index "
                f"(newest release: {max(released)})"
            )
        hard = [(m, s) for m in mentions for s in reqs.hard_constraints(m.req.specifier)]
        fixed_not_older = [v for v in fixed if floor is None or v >= floor]
        if not fixed_not_older:
            raise PlanError(f"every fixed release is older than the current {floor}")
        candidates = [v for v in fixed_not_older if all(s.contains(v, prereleases=True) for _m, s in hard)]
        if not candidates:
            blocking = sorted(
                {
                    f"{name}{s} ({m.where()})"
                    for m, s in hard
                    if not s.contains(fixed_not_older[0], prereleases=True)
                }
            )
            raise PlanError(
                f"every fixed release ({fixed_not_older[0]} .. {fixed_not_older[-1]}) conflicts "
                f"with {', '.join(blocking)}"
            )
        target = candidates[0]

        hashed = [m for m in mentions if m.hashed]
        if hashed:
            raise PlanError(
                f"{hashed[0].where()} is hash-pinned (--hash); re-hashing needs a human or a lock tool"
            )
        edits: dict[str, str] = {}
        changed: list[str] = []
        # Raise the pins and lower bounds; caps and exclusions are kept as they are. With no pin or lower
        # bound anywhere, the requirement lines (not the constraint files) get a lower bound.
        bounded = [
            m for m in mentions if any(reqs.is_pin(s) or reqs.is_lower_bound(s) for s in m.req.specifier)
        ]
        to_edit = bounded or [m for m in mentions if m.file not in project.constraint_files]
        done: set[tuple[str, str]] = set()
        for m in to_edit:
            if (m.file, m.raw) in done:
                continue  # the same text twice in one file: the first edit changed both
            done.add((m.file, m.raw))
            new_spec = reqs.raise_specifier(m.req.specifier, target)
            new_raw = reqs.rewrite_requirement(m.raw, new_spec)
            if new_raw == m.raw:
                continue
            text = edits.get(m.file, project.texts[m.file])
            if m.style == "pyproject":
                edits[m.file] = reqs.edit_pyproject_text(text, m, new_raw)
            else:
                edits[m.file] = reqs.edit_requirements_text(text, m, new_raw)
            changed.append(f"{m.where()}: {m.raw} -> {new_raw}")
        if not mentions:
            if (first.ecosystem or "").lower() not in PYTHON_ECOSYSTEMS or project.primary is None:
                raise PlanError("not declared in any requirements file or pyproject.toml of the project")
            primary = project.texts[project.primary]
            pinned_style = (
                all(
                    any(reqs.is_pin(s) for s in m.req.specifier)
                    for m in project.mentions
                    if m.file == project.primary
                )
                and project.mentions
            )
            line = f"{name}{'==' if pinned_style else '>='}{target}"
            sep = "" if not primary or primary.endswith("\n") else "\n"
            edits[project.primary] = (
                f"{primary}{sep}{line}  # transitive; raised by selfheal ({needed}+ fixes)\n"
            )
            changed.append(f"{project.primary}: added {line}")

        if ctx.resolver is not None and edits:
            files = {**project.texts, **edits}
            entries = _entry_points(project)
            if "pyproject.toml" in edits:
                files[PYPROJECT_ENTRY] = "".join(
                    f"{d}\n" for d in reqs.project_dependencies(edits["pyproject.toml"])
                )
                entries.append(PYPROJECT_ENTRY)
            for entry in entries:
                problem = ctx.resolver.conflicts(files, entry)
                if problem:
                    raise PlanError(problem)

        olds = sorted({str(v) for v in current}) or ["unpinned"]
        cves = sorted({c for f in findings for c in f.cves})
        diff = make_diff(workdir, edits)
        notes = []
        if target not in {v for fs in fix_sets for v in fs}:
            notes.append(
                f"the listed fixed version is not on the index or conflicts; {target} is the lowest "
                "release that is"
            )
        checks = image_checks(service)
        verification = Verification(
            tests=checks["tests"],
            exploit_replay=tuple(r for f in findings for r in attack_requests(f)),
            dependency_version=(
                DependencyVersionCheck(package=name, min_version=str(target), expected_version=str(target)),
            ),
            latency=checks["latency"],
        )
        title = f"Upgrade {name} {' / '.join(olds)} -> {target}"
        if cves:
            title += f" ({', '.join(cves[:3])}{', ...' if len(cves) > 3 else ''})"
        description = "\n".join(
            [
                f"Raise {name} to {target}, the lowest release on the index that fixes "
                f"{len(findings)} finding(s) and satisfies the project's other constraints.",
                *[f"- {c}" for c in changed],
                *[f"Note: {n}" for n in notes],
            ]
        )
        if not diff:
            return self.make_plan(
                findings,
                service,
                ctx,
                title=f"{name} already requires {target} or later",
                description=description,
                verification=verification,
                reason="already fixed in the repository: rebuild and redeploy the image",
                details={"package": name, "target": str(target)},
            )
        return self.make_plan(
            findings,
            service,
            ctx,
            title=title,
            description=description,
            diff=diff,
            verification=verification,
            details={
                "package": name,
                "from": olds,
                "target": str(target),
                "fixed_versions": [[str(v) for v in fs] for fs in fix_sets],
                "edits": changed,
            },
        )


def _entry_points(project: reqs.ProjectFiles) -> list[str]:
    """Requirement files to resolve: those not included by another file (the ones people install)."""
    included: set[str] = set()
    for rel, text in project.texts.items():
        if rel == "pyproject.toml":
            continue
        _m, incs = reqs.parse_requirements(rel, text)
        for inc, _constraint in incs:
            included.add(str((Path(rel).parent / inc).as_posix()).removeprefix("./"))
    return sorted(
        rel
        for rel in project.texts
        if rel != "pyproject.toml" and rel not in included and rel not in project.constraint_files
    )

"""base_image_refresh: OS package CVEs are fixed by rebuilding on a refreshed base image.

The fix for a vulnerable ``openssl`` or ``linux`` package in an image is not a
source change but a newer base layer. What the plan does depends on how the
Dockerfile names its base (directly in ``FROM`` or via an ``ARG`` default):

* pinned by digest (``python:3.11-slim@sha256:...``): the digest is bumped to
  the tag's current digest from ``PlanContext.images``: a real Dockerfile diff,
  reviewable and revertible like any commit. Same digest: nothing newer is
  published yet, a human has to wait or switch the base.
* a tag only: there is nothing to edit; the plan asks the sandbox for a
  rebuild with ``pull`` and ``no_cache`` so the refreshed tag and fresh
  package lists are used, and checks the package version in the new image.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from selfheal.catalog import Service
from selfheal.findings.model import Finding
from selfheal.patches.diffs import make_diff
from selfheal.patches.model import DependencyVersionCheck, PatchPlan, PlanError, Verification
from selfheal.patches.recipes import PlanContext, Recipe, image_checks

OS_ECOSYSTEMS = frozenset({"os", "dpkg", "deb", "debian", "ubuntu", "rpm", "apk", "alpine"})
_DIGEST = re.compile(r"@(sha256:[0-9a-f]{64})$")
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
MAX_DOCKERFILE_BYTES = 512 * 1024


class ImageSource(Protocol):
    def digest(self, ref: str) -> str | None:
        """The current manifest digest ("sha256:...") of ``ref`` (name:tag), or None if unknown."""
        ...


class StaticImages:
    """Known digests per tag (tests, or a mirror's published list)."""

    def __init__(self, digests: dict[str, str]) -> None:
        self.digests = dict(digests)

    def digest(self, ref: str) -> str | None:
        return self.digests.get(ref)


class DockerRegistryImages:
    """Current digests from the registry through the Docker engine (docker-py ``get_registry_data``)."""

    def __init__(self, client: object | None = None) -> None:
        self._client = client

    def digest(self, ref: str) -> str | None:
        import docker  # imported here: planning without Docker must not need the SDK loaded
        from docker.errors import APIError, NotFound

        client = self._client or docker.from_env()
        try:
            return client.images.get_registry_data(ref).id  # type: ignore[attr-defined]
        except (NotFound, APIError):
            return None


@dataclass(frozen=True)
class BaseRef:
    """A base image of one build stage, and where its text lives in the Dockerfile."""

    image: str  # as resolved, e.g. "python:3.11-slim@sha256:..."
    line: int  # 1-based line holding the text (FROM or the ARG default)
    text: str  # the literal text to replace there
    via_arg: str | None = None

    @property
    def digest(self) -> str | None:
        m = _DIGEST.search(self.image)
        return m.group(1) if m else None

    @property
    def tag_ref(self) -> str:
        """name:tag without the digest (``latest`` when no tag)."""
        name = _DIGEST.sub("", self.image)
        last = name.rsplit("/", 1)[-1]
        return name if ":" in last else f"{name}:latest"


def _logical(text: str) -> list[tuple[int, str]]:
    out, buf, start = [], "", 0
    for n, line in enumerate(text.splitlines(), 1):
        if not buf:
            start = n
            if line.lstrip().startswith("#"):
                continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        if buf.strip():
            out.append((start, buf.strip()))
        buf = ""
    if buf.strip():
        out.append((start, buf.strip()))
    return out


def _subst(value: str, args: dict[str, str]) -> str:
    def rep(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        return args.get(name) or (m.group(2) or "")

    return _VAR.sub(rep, value)


def base_images(text: str) -> list[BaseRef]:
    """The external base images of every stage (stage aliases and ``scratch`` left out)."""
    global_args: dict[str, tuple[str, int, str]] = {}  # name -> (value, line, raw text)
    stages: set[str] = set()
    out: list[BaseRef] = []
    seen_from = False
    for n, line in _logical(text):
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ARG" and not seen_from:
            for item in rest.split():
                name, eq, value = item.partition("=")
                if eq:
                    global_args[name] = (value.strip("\"'"), n, value.strip("\"'"))
        elif word == "FROM":
            seen_from = True
            tokens = [t for t in rest.split() if not t.startswith("--")]
            if not tokens:
                raise PlanError(f"Dockerfile:{n}: FROM without an image")
            raw = tokens[0]
            if len(tokens) >= 3 and tokens[1].upper() == "AS":
                stages.add(tokens[2].lower())
            m = _VAR.fullmatch(raw)
            if m and (m.group(1) or m.group(3)) in global_args:
                name = m.group(1) or m.group(3)
                value, line_no, lit = global_args[name]
                image, where, via = value, line_no, name
            else:
                for v in _VAR.finditer(raw):
                    if not global_args.get(v.group(1) or v.group(3), ("",))[0] and v.group(2) is None:
                        raise PlanError(
                            f"Dockerfile:{n}: base image {raw!r} depends on a build argument without default"
                        )
                image = _subst(raw, {k: v[0] for k, v in global_args.items()})
                where, lit, via = n, raw, None
            if not image or image.lower() == "scratch" or image.lower() in stages:
                continue
            out.append(BaseRef(image=image, line=where, text=lit, via_arg=via))
    return out


class BaseImageRefresh(Recipe):
    name = "base_image_refresh"
    delivery = "image"

    def applies(self, finding: Finding, service: Service) -> bool:
        pkg = finding.package
        return (
            finding.kind in ("dependency", "host")
            and pkg is not None
            and (pkg.ecosystem or "").lower() in OS_ECOSYSTEMS
        )

    def group_key(self, finding: Finding) -> str:
        return "os-packages"  # one rebuild fixes every OS package finding of the service

    def plan(
        self, findings: Sequence[Finding], service: Service, workdir: Path, ctx: PlanContext
    ) -> PatchPlan:
        try:
            return self._plan(findings, service, workdir, ctx)
        except PlanError as e:
            return self.make_plan(
                findings,
                service,
                ctx,
                title="Refresh the base image: not possible",
                failed=True,
                reason=str(e),
            )

    def _plan(
        self, findings: Sequence[Finding], service: Service, workdir: Path, ctx: PlanContext
    ) -> PatchPlan:
        rel = service.dockerfile
        path = workdir / rel
        if not path.is_file():
            raise PlanError(f"{rel}: no Dockerfile in the repository")
        if path.stat().st_size > MAX_DOCKERFILE_BYTES:
            raise PlanError(f"{rel}: larger than {MAX_DOCKERFILE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
        try:
            bases = base_images(text)
        except PlanError as e:
            raise PlanError(str(e).replace("Dockerfile:", f"{rel}:", 1)) from None
        if not bases:
            raise PlanError(f"{rel}: no external base image (FROM scratch only)")
        lines = text.splitlines(keepends=True)
        changes, unpinned, stale = [], [], []
        for b in dict((b.text, b) for b in bases).values():
            if b.digest is None:
                unpinned.append(b.image)
                continue
            new = ctx.images.digest(b.tag_ref) if ctx.images is not None else None
            if new is None:
                stale.append(f"{b.image}: current digest of {b.tag_ref} unknown")
                continue
            if new == b.digest:
                stale.append(f"{b.tag_ref}: already at the newest digest {b.digest[:19]}...")
                continue
            i = b.line - 1
            lines[i] = lines[i].replace(b.digest, new, 1)
            changes.append(f"{rel}:{b.line}: {b.tag_ref} {b.digest[:19]}... -> {new[:19]}...")
        new_text = "".join(lines)
        diff = make_diff(workdir, {rel: new_text}) if new_text != text else ""
        packages = sorted({(f.package.name, f.package.fixed_version or "") for f in findings if f.package})
        checks = image_checks(service)
        verification = Verification(
            tests=checks["tests"],
            dependency_version=tuple(
                DependencyVersionCheck(package=n, min_version=v, ecosystem="os") for n, v in packages if v
            ),
            latency=checks["latency"],
            build={"no_cache": True, "pull": bool(unpinned)},
        )
        pkg_names = ", ".join(n for n, _ in packages[:5]) + (", ..." if len(packages) > 5 else "")
        details = {
            "bases": [b.image for b in bases],
            "changes": changes,
            "unpinned": unpinned,
            "stale": stale,
        }
        if not diff and stale and not unpinned:
            return self.make_plan(
                findings,
                service,
                ctx,
                title=f"Refresh the base image for {pkg_names}",
                needs_human=True,
                verification=verification,
                details=details,
                reason="no refreshed base image available: " + "; ".join(stale),
            )
        description = "\n".join(
            [
                f"Rebuild on a refreshed base image to fix OS packages: {pkg_names}.",
                *[f"- {c}" for c in changes],
                *[f"- {u}: not pinned; rebuild with --pull --no-cache" for u in unpinned],
            ]
        )
        return self.make_plan(
            findings,
            service,
            ctx,
            title=f"Refresh the base image ({pkg_names})",
            description=description,
            diff=diff,
            verification=verification,
            details=details,
        )

"""base_image_refresh: OS package CVEs are fixed by rebuilding on a refreshed base image.

The fix for a vulnerable ``openssl`` or ``linux`` package in an image is not a
source change but a newer base layer. What the plan does depends on how the
Dockerfile names its base (directly in ``FROM`` or via an ``ARG`` default):

* pinned by digest (``python:3.11-slim@sha256:...``): the digest is bumped to
  the tag's current digest from ``PlanContext.images``: a real Dockerfile diff,
  reviewable and revertible like any commit. Same digest: nothing newer is
  published yet, a human has to wait or switch the base.
* a tag, and ``PlanContext.images`` knows a newer build of that base under
  its own tag (dated tags, as Debian's ``bookworm-20250520``; offline, the
  engine's local images: ``LocalImages``): the tag in the Dockerfile is
  replaced by the refreshed one, again a real diff.
* a tag only, nothing newer known: there is nothing to edit; the plan asks
  the sandbox for a rebuild with ``pull`` and ``no_cache`` so the refreshed
  tag and fresh package lists are used.

Either way the sandbox checks each fixed package's version in the new image
(``dpkg-query`` in the container). A plan that changes the base names it in
``verification.build["base_image"]``: the sandbox passes its own
``BASE_IMAGE`` build argument (offline base here, ``python:3.x-slim``
elsewhere), which would otherwise override the committed default, so the
patched image is built on the refreshed base and the baseline on the current.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from selfheal.catalog import Service
from selfheal.findings.model import Finding
from selfheal.patches.diffs import make_diff
from selfheal.patches.model import DependencyVersionCheck, PatchPlan, PlanError, Verification
from selfheal.patches.recipes import PlanContext, Recipe, image_checks

OS_ECOSYSTEMS = frozenset({"os", "dpkg", "deb", "debian", "ubuntu", "rpm", "apk", "alpine"})
# A container shares its host's kernel: a kernel package finding (Inspector reports "linux" for the
# instance an image runs on) is fixed by patching the host or node image, never by rebuilding the image.
KERNEL_PACKAGE = re.compile(r"(linux|kernel)(-(image|modules|headers|aws|azure|gcp|kvm|generic|lts)\b.*)?",
                            re.IGNORECASE)


def is_kernel_package(name: str) -> bool:
    return KERNEL_PACKAGE.fullmatch(name.strip()) is not None
_DIGEST = re.compile(r"@(sha256:[0-9a-f]{64})$")
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
MAX_DOCKERFILE_BYTES = 512 * 1024


class ImageSource(Protocol):
    def digest(self, ref: str) -> str | None:
        """The current manifest digest ("sha256:...") of ``ref`` (name:tag), or None if unknown."""
        ...

    # Optional: ``newer(ref) -> str | None``, a refreshed build of ``ref``'s base under its own tag
    # (name:tag), or None. Sources without it (a registry's digests) only bump pinned digests.


class StaticImages:
    """Known digests and refreshed tags per tag (tests, or a mirror's published list)."""

    def __init__(self, digests: dict[str, str], newer: dict[str, str] | None = None) -> None:
        self.digests = dict(digests)
        self.newer_tags = dict(newer or {})

    def digest(self, ref: str) -> str | None:
        return self.digests.get(ref)

    def newer(self, ref: str) -> str | None:
        return self.newer_tags.get(ref)


_STAMP = re.compile(r"-(\d{8})(?:\.(\d{1,9}))?")


def _created(image: Any) -> float:
    """The image's creation time (Docker's RFC 3339 with nanoseconds: cut to what Python parses)."""
    raw = str(image.attrs.get("Created") or "")
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", raw)
    if not m:
        return 0.0
    stamp = m.group(1) + (m.group(2) or "")[:7] + ("+00:00" if m.group(3) == "Z" else m.group(3))
    return dt.datetime.fromisoformat(stamp).timestamp()


def _split_ref(ref: str) -> tuple[str, str]:
    """("repository", "tag") of name:tag (the tag is after the last ':' of the last path part)."""
    head, _, last = ref.rpartition("/")
    name, _, tag = last.partition(":")
    return (f"{head}/{name}" if head else name), (tag or "latest")


class LocalImages:
    """The Docker engine's own images: where refreshed bases arrive on an offline host.

    No registry is reachable there, so a refreshed base is imported or built
    locally under a dated tag next to the current one (``selfheal/base:bookworm``
    -> ``selfheal/base:bookworm-20261130``, optionally ``.N`` for several builds
    a day). ``newer`` picks the latest such tag whose image differs from the
    current one and was created after it; ``digest`` is the registry digest the
    engine recorded when it pulled the tag (built or imported images have none).
    """

    def __init__(self, client: Any = None) -> None:
        self._client = client

    def _images(self) -> Any:
        if self._client is None:
            import docker  # imported here: planning without Docker must not need the SDK loaded

            self._client = docker.from_env()
        return self._client.images

    def _get(self, ref: str) -> Any:
        from docker.errors import ImageNotFound

        try:
            return self._images().get(ref)
        except ImageNotFound:
            return None

    def digest(self, ref: str) -> str | None:
        image = self._get(ref)
        repo, _tag = _split_ref(ref)
        for d in (image.attrs.get("RepoDigests") or []) if image is not None else []:
            name, _, digest = d.partition("@")
            if name == repo and _DIGEST.search(d):
                return digest
        return None

    def newer(self, ref: str) -> str | None:
        current = self._get(ref)
        if current is None:
            return None
        repo, tag = _split_ref(ref)
        created = _created(current)
        best: tuple[tuple[str, int, float], str] | None = None
        for image in self._images().list(name=repo):
            if image.id == current.id or _created(image) <= created:
                continue
            for t in image.tags:
                r, other = _split_ref(t)
                m = _STAMP.fullmatch(other[len(tag):]) if r == repo and other.startswith(tag) else None
                if m:
                    key = (m.group(1), int(m.group(2) or 0), _created(image))
                    if best is None or key > best[0]:
                        best = (key, t)
        return best[1] if best else None


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


def _replace_ref(line: str, ref: str, new: str) -> str | None:
    """``line`` with the image reference ``ref`` (a whole word: not a prefix, not an ARG name) replaced."""
    pattern = re.compile(r"(?<![^\s=\"'])" + re.escape(ref) + r"(?![^\s\"'])")
    return pattern.sub(lambda _m: new, line, count=1) if pattern.search(line) else None


class BaseImageRefresh(Recipe):
    name = "base_image_refresh"
    delivery = "image"

    def applies(self, finding: Finding, service: Service) -> bool:
        pkg = finding.package
        return (
            finding.kind in ("dependency", "host")
            and pkg is not None
            and (pkg.ecosystem or "").lower() in OS_ECOSYSTEMS
            and not is_kernel_package(pkg.name)
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
        changes, unpinned, stale, refreshed = [], [], [], []
        for b in dict((b.text, b) for b in bases).values():
            i = b.line - 1
            if b.digest is None:
                newer = getattr(ctx.images, "newer", None)
                new_ref = newer(b.tag_ref) if newer is not None else None
                # Only a literal can be replaced: a base spelled with variables keeps them (rebuild instead).
                edited = _replace_ref(lines[i], b.text, new_ref) if new_ref and new_ref != b.tag_ref else None
                if edited is not None and "$" not in b.text:
                    lines[i] = edited
                    changes.append(f"{rel}:{b.line}: {b.image} -> {new_ref} (refreshed tag)")
                    refreshed.append(new_ref)
                else:
                    unpinned.append(b.image)
                continue
            new = ctx.images.digest(b.tag_ref) if ctx.images is not None else None
            if new is None:
                stale.append(f"{b.image}: current digest of {b.tag_ref} unknown")
                continue
            if new == b.digest:
                stale.append(f"{b.tag_ref}: already at the newest digest {b.digest[:19]}...")
                continue
            if b.digest not in lines[i]:
                stale.append(f"{b.image}: digest not on line {b.line}; edit it by hand")
                continue
            lines[i] = lines[i].replace(b.digest, new, 1)
            changes.append(f"{rel}:{b.line}: {b.tag_ref} {b.digest[:19]}... -> {new[:19]}...")
            refreshed.append(b.image.replace(b.digest, new))
        new_text = "".join(lines)
        diff = make_diff(workdir, {rel: new_text}) if new_text != text else ""
        packages = sorted({(f.package.name, f.package.fixed_version or "") for f in findings if f.package})
        checks = image_checks(service)
        build: dict[str, object] = {"no_cache": True, "pull": bool(unpinned)}
        if diff and len(set(refreshed)) == 1:
            build["base_image"] = refreshed[0]  # see the module docstring: the sandbox's BASE_IMAGE
        verification = Verification(
            tests=checks["tests"],
            dependency_version=tuple(
                DependencyVersionCheck(package=n, min_version=v, ecosystem="os") for n, v in packages if v
            ),
            latency=checks["latency"],
            build=build,
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

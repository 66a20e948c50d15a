"""base_image_refresh for real: an OS package CVE of the demo fixed by a rebuild on a refreshed base image.

The security update is whatever Debian offers for the base image when the test runs, so it holds on a
fresh machine and as Debian moves versions on; nothing is hard-coded but a preference list:

* the packages: the first set of ``PACKAGE_SETS`` (libssl3 + openssl first) whose packages are all
  installed in the base image (``dpkg-query -W`` in a throwaway container without network) with an
  older version than the candidate .deb (``dpkg --compare-versions``);
* the .debs: ``apt-get download`` into a temporary directory, never the host's apt cache (``apt-get
  update`` once, only when apt has no usable lists), or the newest ones in $SELFHEAL_DEB_DIR;
* the finding: data/inspector2-demo-openssl.json (Inspector2's ListFindings structure as in
  DefectDojo's sample, a real openssl advisory) is the template; its packages, versions and CVE are
  replaced by the update's: installed = the base image's, fixed = the candidate's (``dpkg-deb -f``),
  the CVE from the candidate's changelog.Debian.gz.

The refreshed base is built here, offline, the way a base refresh really happens: the base image
plus the update (installed with dpkg in a build without network), tagged as a dated tag next to the
current one. The patch engine finds it through the engine's own images (``LocalImages``), rewrites
the Dockerfile's base, commits it with trailers, and the sandbox builds the patched image on it and
checks the installed versions with dpkg in the container, next to the service's tests and the
latency comparison. Without the refreshed base (the sandbox's default BASE_IMAGE) the same commit
fails on the installed version: the check sees the package, not the Dockerfile.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import io
import json
import os
import re
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import docker.errors
import pytest

from selfheal.catalog import Service
from selfheal.findings import parse_bytes
from selfheal.findings.model import Finding
from selfheal.patches.git import commit_plan, git, read_trailers
from selfheal.patches.model import PatchPlan
from selfheal.patches.planner import plan_repository
from selfheal.patches.recipes import PlanContext
from selfheal.patches.recipes.base_image_refresh import LocalImages
from selfheal.sandbox import VerificationResult, verify_patch
from selfheal.sandbox.isolation import Sandbox
from selfheal.sandbox.spec import spec_from_plan
from tests.integration.sandbox.kit import DATA, assert_no_leftovers, plan_like, remove_image_tree

pytestmark = pytest.mark.docker

TEMPLATE = DATA / "inspector2-demo-openssl.json"
# Candidate updates, most wanted first. Each set installs with ``dpkg -i`` alone on a bookworm base (its
# dependencies are either in the set or already satisfied there); a set that still fails to install is
# passed over, with the reason kept for the failure message. The CVE is the newest one the candidate's
# changelog names above the base's version: exact for openssl, whose security uploads all name theirs.
# The second value is used only when the changelog names none there: a real CVE of that package, but not
# necessarily one this upload fixes (tzdata has never had a CVE: its id is made up). The finding only
# has to be plausible for these sets; the versions are the real ones either way.
PACKAGE_SETS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("libssl3", "openssl"), "CVE-2023-0286"),
    (("libc6", "libc-bin"), "CVE-2023-4911"),
    (("libgnutls30",), "CVE-2024-0553"),
    (("libexpat1",), "CVE-2024-45490"),
    (("libzstd1",), "CVE-2022-4899"),
    (("liblzma5",), "CVE-2022-1271"),
    (("libpcre2-8-0",), "CVE-2022-41409"),
    (("tzdata",), "CVE-2026-10000"),
)
# Override: take the .debs from this directory (newest per package) instead of downloading them.
DEB_DIR = os.environ.get("SELFHEAL_DEB_DIR") or None
# apt's messages when its lists are missing or stale (a fresh machine): the one case for `apt-get update`.
# (No lists at all: apt's candidate is the host's installed version, which no source offers.)
_NO_LISTS = re.compile(r"Unable to locate package|has no installation candidate|Can't select candidate"
                       r"|Can't find a source to download|404\s+Not Found", re.IGNORECASE)
_ENTRY = re.compile(r"^[a-z0-9][a-z0-9+.-]* \(([^()\s]+)\) [^\n;]*;[^\n]*$", re.MULTILINE)
_CVE = re.compile(r"CVE-\d{4}-\d{4,}")
_DOC_CHANGELOG = re.compile(r"\./usr/share/doc/[^/]+/changelog\.Debian\.gz")
_REFRESH_DOCKERFILE = b"""\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY debs/ /tmp/debs/
RUN DEBIAN_FRONTEND=noninteractive dpkg -i /tmp/debs/*.deb && rm -rf /tmp/debs
"""


def explain(result: VerificationResult) -> str:
    lines = [f"reason: {result.reason}"]
    lines += [f"{c.name}: {c.status} {c.reason}\n{c.output[-800:]}" for c in result.checks]
    return "\n".join(lines)


def dpkg_compare(a: str, op: str, b: str) -> bool:
    """Debian's own version order (epochs, ``~``, revisions): dpkg, not a reimplementation."""
    return subprocess.run(["dpkg", "--compare-versions", a, op, b], check=False).returncode == 0


def _deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True,
                          check=True).stdout.strip()


def _tail(text: str, n: int = 300) -> str:
    return " ".join(text.split())[-n:]


def base_packages(client, image: str) -> dict[str, str]:
    """Package -> version installed in ``image``, read by dpkg in a throwaway container without network."""
    out = client.containers.run(image, ["dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Package} ${Version}\n"],
                                network_mode="none", remove=True, labels={"selfheal.test": "base-refresh"})
    rows = (line.split() for line in out.decode().splitlines())
    return {r[1]: r[2] for r in rows if len(r) == 3 and r[0] == "ii"}


class DebSource:
    """The candidate .debs of a package set: ``apt-get download`` into ``workdir``, or $SELFHEAL_DEB_DIR.

    apt downloads the candidate of the host's lists (the host is the same Debian release and
    architecture as the base image). Its cache directory is pointed into ``workdir``: the host's
    /var/cache/apt/archives is neither read nor written, as on a fresh machine.
    """

    def __init__(self, workdir: Path, deb_dir: str | None = DEB_DIR) -> None:
        self.workdir = workdir
        self.deb_dir = Path(deb_dir) if deb_dir else None
        self.updated = False

    def fetch(self, names: tuple[str, ...]) -> dict[str, Path] | str:
        """name -> .deb, or why the set is not available."""
        return self._from_dir(names) if self.deb_dir else self._download(names)

    def _from_dir(self, names: tuple[str, ...]) -> dict[str, Path] | str:
        assert self.deb_dir is not None
        arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                              check=True).stdout.strip()
        out: dict[str, tuple[str, Path]] = {}
        for name in names:
            for deb in sorted(self.deb_dir.glob(f"{name}_*.deb")):
                parts = deb.name[:-4].split("_")
                if len(parts) != 3 or parts[2] not in (arch, "all"):
                    continue
                version = unquote(parts[1])
                if name not in out or dpkg_compare(version, "gt", out[name][0]):
                    out[name] = (version, deb)
        missing = [n for n in names if n not in out]
        if missing:
            return f"{'+'.join(names)}: no {', '.join(missing)} .deb in SELFHEAL_DEB_DIR={self.deb_dir}"
        return {n: deb for n, (_v, deb) in out.items()}

    def _download(self, names: tuple[str, ...]) -> dict[str, Path] | str:
        dest = self.workdir / "+".join(names)
        (dest / "apt-cache" / "partial").mkdir(parents=True, exist_ok=True)
        cmd = ["apt-get", "download", "-q", "-o", f"Dir::Cache::Archives={dest / 'apt-cache'}/", *names]
        res = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=600, check=False)
        if res.returncode != 0 and not self.updated and _NO_LISTS.search(res.stdout + res.stderr):
            self.updated = True
            up = subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, timeout=900,
                                check=False)
            if up.returncode != 0:
                pytest.fail(f"apt has no usable package lists (`{' '.join(cmd)}`: {_tail(res.stderr)}) "
                            f"and `apt-get update` failed: {_tail(up.stdout + up.stderr)}")
            res = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=600, check=False)
        if res.returncode != 0:
            return f"{'+'.join(names)}: `{' '.join(cmd)}` failed: {_tail(res.stdout + res.stderr)}"
        debs = {n: next(iter(sorted(dest.glob(f"{n}_*.deb"))), None) for n in names}
        missing = [n for n, deb in debs.items() if deb is None]
        if missing:
            return f"{'+'.join(names)}: apt-get download left no .deb for {', '.join(missing)} in {dest}"
        return {n: deb for n, deb in debs.items() if deb is not None}


def changelog_text(debs: list[Path]) -> str:
    """The Debian changelog shipped in the first of ``debs`` that has one as a regular file ("" if none)."""
    for deb in debs:
        data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if member.isfile() and _DOC_CHANGELOG.fullmatch(member.name):
                    raw = tar.extractfile(member)
                    assert raw is not None
                    return gzip.decompress(raw.read()).decode("utf-8", "replace")
    return ""


def changelog_cve(text: str, installed: str, candidate: str) -> tuple[str, str] | None:
    """(CVE, its changelog item) of the newest entry above ``installed`` (up to ``candidate``) naming one."""
    heads = list(_ENTRY.finditer(text))
    for i, head in enumerate(heads):
        version = head.group(1)
        if not dpkg_compare(version, "gt", installed):
            break  # entries are newest first: the rest is what the base image already has
        if not dpkg_compare(version, "le", candidate):
            continue
        body = text[head.end():heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        m = _CVE.search(body)
        if m:
            lines = body[body.rfind("\n", 0, m.start()) + 1:].splitlines()
            item = [lines[0]]
            for line in lines[1:]:
                if not line.strip() or line.strip()[0] in "*-+":
                    break
                item.append(line)
            return m.group(0), " ".join(x.strip() for x in item).lstrip("*-+ ")[:500]
    return None


@dataclasses.dataclass(frozen=True)
class SecurityUpdate:
    """A Debian update of some of the base image's packages, as found when the test runs."""

    names: tuple[str, ...]
    installed: dict[str, str]  # in the base image
    fixed: dict[str, str]  # the candidate .debs' versions
    debs: dict[str, Path]
    source: str
    cve: str
    summary: str


def security_update(names: tuple[str, ...], fallback_cve: str, installed_all: dict[str, str],
                    source: DebSource) -> SecurityUpdate | str:
    """The set's update if every package is in the base and its candidate is newer; else why not."""
    label = "+".join(names)
    absent = [n for n in names if n not in installed_all]
    if absent:
        return f"{label}: {', '.join(absent)} not installed in the base image"
    debs = source.fetch(names)
    if isinstance(debs, str):
        return debs
    installed = {n: installed_all[n] for n in names}
    fixed = {n: _deb_field(deb, "Version") for n, deb in debs.items()}
    wrong = [f"{deb.name} is {_deb_field(deb, 'Package')}" for n, deb in debs.items()
             if _deb_field(deb, "Package") != n]
    assert not wrong, wrong
    if not all(dpkg_compare(fixed[n], "gt", installed[n]) for n in names):
        return (f"{label}: the candidate is not newer than the base image's "
                f"({'; '.join(f'{n} {fixed[n]} vs installed {installed[n]}' for n in names)})")
    first = debs[names[0]]
    src = (_deb_field(first, "Source") or names[0]).split()[0]
    named = changelog_cve(changelog_text(list(debs.values())), installed[names[0]], fixed[names[0]])
    if named:
        cve, summary = named[0], f"{named[1]} (Debian {src} {fixed[names[0]]})"
    else:
        cve, summary = fallback_cve, f"Security update of Debian {src} to {fixed[names[0]]} (stand-in CVE id)"
    return SecurityUpdate(names, installed, fixed, debs, src, cve, summary)


def _inspector_version(version: str) -> dict[str, object]:
    """Inspector2 splits a dpkg version in epoch, version (upstream) and release (Debian revision)."""
    epoch, _, rest = version.partition(":") if ":" in version else ("0", "", version)
    upstream, dash, release = rest.rpartition("-")
    return {"epoch": int(epoch), "version": upstream if dash else rest, "release": release if dash else ""}


def inspector2_report(update: SecurityUpdate) -> bytes:
    """The template's finding with the update's packages, versions and CVE (one finding, like Inspector2's)."""
    doc = json.loads(TEMPLATE.read_bytes())
    (finding,) = doc["findings"]
    pvd = finding["packageVulnerabilityDetails"]
    template = pvd["vulnerablePackages"][0]
    pvd["vulnerablePackages"] = [
        {**copy.deepcopy(template), "name": n, **_inspector_version(update.installed[n]),
         "fixedInVersion": update.fixed[n] if ":" in update.fixed[n] else f"0:{update.fixed[n]}"}
        for n in update.names
    ]
    pvd["vulnerabilityId"] = update.cve
    pvd["sourceUrl"] = f"https://security-tracker.debian.org/tracker/{update.cve}"
    pvd["referenceUrls"] = [f"https://security-tracker.debian.org/tracker/source-package/{update.source}"]
    finding["title"] = f"{update.cve} - {', '.join(update.names)}"
    finding["description"] = update.summary
    return json.dumps(doc, indent=2).encode()


def _context(files: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def _remove_failed_build(client, build_log, base_id: str) -> None:
    """Drop the step images a failed build left (the COPY layer); the base it started from stays."""
    ids = {m.group(1) for e in build_log if isinstance(e, dict)
           for m in [re.match(r"\s*---> ([0-9a-f]{12})\s*$", str(e.get("stream", "")))] if m}
    for short in ids - {base_id.removeprefix("sha256:")[:12]}:
        try:
            client.api.remove_image(short)
        except docker.errors.APIError:  # gone already, or in use: not ours to force
            continue


@dataclasses.dataclass
class Refresh:
    tag: str
    image_id: str
    update: SecurityUpdate
    made: list[str]  # image tags this module made (patched images first, the base last)
    passed_over: list[str]  # package sets tried first, and why they were not used
    deb_source: DebSource


@pytest.fixture(scope="module")
def refreshed_base(docker_client, base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Refresh]:
    """The current base plus a real Debian update, as a dated tag; removed with everything built on it."""
    installed_all = base_packages(docker_client, base_image)
    base_id = docker_client.images.get(base_image).id
    source = DebSource(tmp_path_factory.mktemp("debs"))
    # Dated like Debian's own tags; the pid keeps two sessions on one engine apart.
    tag = f"{base_image}-{time.strftime('%Y%m%d')}.{os.getpid()}"
    refresh: Refresh | None = None
    reasons: list[str] = []
    made: list[str] = []
    try:
        for names, fallback_cve in PACKAGE_SETS:
            update = security_update(names, fallback_cve, installed_all, source)
            if isinstance(update, str):
                reasons.append(update)
                continue
            files = {"Dockerfile": _REFRESH_DOCKERFILE,
                     **{f"debs/{deb.name}": deb.read_bytes() for deb in update.debs.values()}}
            try:
                # nocache: an image of its own even if another session installs the same .debs.
                image, _log = docker_client.images.build(
                    fileobj=_context(files), custom_context=True, tag=tag, buildargs={"BASE_IMAGE": base_image},
                    network_mode="none", rm=True, forcerm=True, pull=False, nocache=True,
                    labels={"selfheal.test": "base-refresh"},
                )
            except docker.errors.BuildError as e:
                _remove_failed_build(docker_client, e.build_log, base_id)
                log = "".join(str(x.get("stream", "")) for x in e.build_log if isinstance(x, dict))
                reasons.append(f"{'+'.join(names)}: dpkg -i of {', '.join(update.fixed.values())} on "
                               f"{base_image} failed: {_tail(log or str(e))}")
                continue
            refresh = Refresh(tag, image.id, update, made, reasons, source)
            break
        if refresh is None:
            pytest.fail(f"{base_image}: no newer Debian update that installs offline for any package set of "
                        f"the base image ({source.deb_dir or 'apt-get download'}): " + " | ".join(reasons))
        yield refresh
    finally:
        for t in made:
            try:
                docker_client.images.remove(t, noprune=False)
            except Exception:  # noqa: BLE001 - never built (the build failed): nothing to remove
                continue
        if refresh is not None:
            removed = remove_image_tree(docker_client, refresh.image_id)
            left = [r["Id"] for r in docker_client.api.images(all=True)
                    if refresh.image_id in (r["Id"], r.get("ParentId"))]
            assert refresh.image_id in removed and left == [], left


@pytest.fixture(scope="module")
def update(refreshed_base: Refresh) -> SecurityUpdate:
    return refreshed_base.update


@pytest.fixture(scope="module")
def os_findings(service: Service, update: SecurityUpdate) -> list[Finding]:
    name = f"inspector2-demo-{update.source}.json (from {TEMPLATE.name})"
    return parse_bytes(inspector2_report(update), name, "inspector2", service=service.name)


@pytest.fixture(scope="module")
def refresh_plan(docker_client, demo_repo: Path, service: Service, base_commit: str, os_findings,
                 refreshed_base: Refresh) -> PatchPlan:
    """The real planner with the engine's images as the source of refreshed bases."""
    ctx = PlanContext(images=LocalImages(docker_client))
    plans = plan_repository(os_findings, service, demo_repo, ctx=ctx)
    assert [p.recipe for p in plans] == ["base_image_refresh"], [(p.recipe, p.reason) for p in plans]
    (plan,) = plans
    assert not plan.failed and not plan.needs_human, plan.reason
    assert plan.base_commit == base_commit
    refreshed_base.made.insert(0, spec_from_plan(plan, service).image_tag)
    return plan


@pytest.fixture(scope="module")
def refresh_commit(demo_repo: Path, refresh_plan: PatchPlan) -> str:
    return commit_plan(demo_repo, refresh_plan).commit


@pytest.fixture(scope="module")
def refresh_result(docker_client, demo_repo: Path, service: Service, refresh_plan: PatchPlan,
                   refresh_commit: str) -> VerificationResult:
    return verify_patch(refresh_plan, repo=demo_repo, commit=refresh_commit, service=service, client=docker_client)


def test_finding_is_a_real_update_the_base_image_lacks(os_findings: list[Finding], refreshed_base: Refresh,
                                                       update: SecurityUpdate) -> None:
    """The generated Inspector2 finding says what the base image has and what Debian offers today."""
    names = [n for n, _cve in PACKAGE_SETS]
    # The first set with a newer update was taken: every set before it was passed over, each with its reason.
    assert len(refreshed_base.passed_over) == names.index(update.names), refreshed_base.passed_over
    print(f"update: {update.names} {update.installed} -> {update.fixed} ({update.cve}); "
          f"passed over: {refreshed_base.passed_over}")
    assert [(f.package.name, f.package.version, f.package.fixed_version, f.package.ecosystem)
            for f in os_findings if f.package] == [
        (n, update.installed[n], update.fixed[n], "os") for n in update.names]
    assert all(dpkg_compare(update.fixed[n], "gt", update.installed[n]) for n in update.names)
    assert {f.cves for f in os_findings} == {(update.cve,)} and {f.severity for f in os_findings} == {"high"}
    # Downloaded into this session's own directory (or taken from the override): never the host's apt cache.
    where = Path(DEB_DIR) if DEB_DIR else refreshed_base.deb_source.workdir / "+".join(update.names)
    assert all(deb.parent == where for deb in update.debs.values()), update.debs
    if update.names == ("libssl3", "openssl"):  # its changelog names the CVEs of every security upload
        assert update.summary.startswith(update.cve), update.summary


def test_local_images_offer_the_dated_tag_as_the_refreshed_base(docker_client, base_image: str,
                                                               refreshed_base: Refresh) -> None:
    images = LocalImages(docker_client)
    assert images.newer(base_image) == refreshed_base.tag
    assert images.newer(refreshed_base.tag) is None  # nothing newer than the refresh itself
    assert images.digest(base_image) is None  # imported offline: no registry digest to pin
    # An older stamp and a variant (not a dated build of the same tag) are not the refresh.
    repo, _, tag = base_image.rpartition(":")
    extra = [f"{tag}-20000101.{os.getpid()}", f"{tag}-slim.{os.getpid()}"]
    image = docker_client.images.get(refreshed_base.tag)
    try:
        for t in extra:
            assert image.tag(repo, t)
        assert images.newer(base_image) == refreshed_base.tag
    finally:
        for t in extra:
            docker_client.images.remove(f"{repo}:{t}")  # only untags: the image keeps its own tag


def test_plan_rewrites_the_dockerfile_base_and_checks_the_packages(refresh_plan: PatchPlan,
                                                                  refreshed_base: Refresh) -> None:
    plan = refresh_plan
    assert plan.files == ("Dockerfile",)
    removed = [x for x in plan.diff.splitlines() if x.startswith("-") and not x.startswith("---")]
    added = [x for x in plan.diff.splitlines() if x.startswith("+") and not x.startswith("+++")]
    assert removed == ["-ARG BASE_IMAGE=selfheal/base:bookworm"]
    assert added == [f"+ARG BASE_IMAGE={refreshed_base.tag}"]
    v = plan.verification
    assert v.build == {"no_cache": True, "pull": False, "base_image": refreshed_base.tag}
    assert [(c.package, c.min_version, c.ecosystem) for c in v.dependency_version] == [
        (n, refreshed_base.update.fixed[n], "os") for n in sorted(refreshed_base.update.names)]
    assert v.applicable() == ["tests", "dependency_version", "latency"]
    assert plan.cves == (refreshed_base.update.cve,) and plan.severity == "high"
    assert len(plan.findings) == len(refreshed_base.update.names)


def test_commit_carries_the_dockerfile_change_and_the_trailers(demo_repo: Path, base_commit: str,
                                                              refresh_plan: PatchPlan, refresh_commit: str,
                                                              refreshed_base: Refresh) -> None:
    assert git(demo_repo, "rev-parse", f"{refresh_commit}^") == base_commit
    assert git(demo_repo, "diff", "--name-only", base_commit, refresh_commit) == "Dockerfile"
    dockerfile = git(demo_repo, "show", f"{refresh_commit}:Dockerfile")
    assert f"\nARG BASE_IMAGE={refreshed_base.tag}\n" in dockerfile
    trailers = read_trailers(demo_repo, refresh_commit)
    assert trailers["Patch-Id"] == [refresh_plan.id]
    assert sorted(trailers["Finding-Id"]) == sorted(f.fingerprint for f in refresh_plan.findings)
    assert trailers["CVE"] == [refreshed_base.update.cve] and trailers["Severity"] == ["high"]
    assert trailers["Generated-By"] == ["selfheal patch engine (base_image_refresh)"]


def test_refreshed_image_passes_every_check(docker_client, base_image: str, refresh_plan: PatchPlan,
                                            refresh_commit: str, refresh_result: VerificationResult,
                                            refreshed_base: Refresh) -> None:
    r = refresh_result
    assert r.passed, explain(r)
    assert {c.name: c.status for c in r.checks} == {"tests": "passed", "dependency_version": "passed",
                                                    "latency": "passed"}
    # The patched image is the commit built on the refreshed base; the baseline on the current one.
    patched = docker_client.images.get(r.image)
    assert r.image == spec_from_plan(refresh_plan).image_tag and r.commit == refresh_commit
    assert patched.labels["selfheal.commit"] == refresh_commit
    assert patched.labels["selfheal.base_image_id"] == refreshed_base.image_id
    baseline = docker_client.images.get(r.baseline_image)
    assert baseline.labels["selfheal.base_image_id"] == docker_client.images.get(base_image).id
    assert r.build["base_image"] == {"patched": refreshed_base.tag, "baseline": base_image}
    assert r.build["patched"]["cached_steps"] == 0  # no_cache: every step ran on the new base
    # dpkg in the running patched container: the security update is installed.
    dv = r.check("dependency_version")
    assert dv.details["installed"] == refreshed_base.update.fixed
    assert all(line.endswith(" ok") for line in dv.output.splitlines()), dv.output
    assert "failed" not in r.check("tests").details["summary"]
    stats = r.check("latency").details["stats"]
    assert stats["baseline"]["n"] == stats["patched"]["n"] > 0
    assert_no_leftovers(docker_client, r.sandbox_id)


def test_baseline_still_has_the_vulnerable_package(docker_client, os_findings, update: SecurityUpdate,
                                                   refresh_result: VerificationResult) -> None:
    """The contrast: the image the finding was about really has the old version (else the check proved nothing)."""
    installed = {f.package.name: f.package.version for f in os_findings if f.package}
    with Sandbox(docker_client, patch_id="ptest-baseline-dpkg") as sb:
        res = sb.run_command(refresh_result.baseline_image, ["dpkg-query", "-W", "-f=${Package} ${Version}\n",
                                                             *update.names], 60, "dpkg")
        sandbox_id = sb.id
    assert res.exit_code == 0, res.output
    assert dict(line.split() for line in res.output.splitlines()) == installed == update.installed
    assert all(not dpkg_compare(v, "ge", update.fixed[n]) for n, v in installed.items())
    assert_no_leftovers(docker_client, sandbox_id)


def test_commit_built_on_the_old_base_fails_on_the_installed_version(docker_client, demo_repo: Path,
                                                                    service: Service, refresh_plan: PatchPlan,
                                                                    refresh_commit: str,
                                                                    refreshed_base: Refresh) -> None:
    """The same commit without the plan's base (the sandbox's default BASE_IMAGE wins): not fixed, and said so."""
    v = dataclasses.replace(refresh_plan.verification, build={"no_cache": False, "pull": False})
    plan = plan_like(refresh_plan, "ptestoldbase", verification=v)
    refreshed_base.made.insert(0, spec_from_plan(plan, service).image_tag)
    r = verify_patch(plan, repo=demo_repo, commit=refresh_commit, service=service, client=docker_client)
    assert not r.passed and r.failed_check == "dependency_version", explain(r)
    # The checks run in package-name order: the first one is the one reported.
    first = min(refreshed_base.update.names)
    installed, fixed = refreshed_base.update.installed, refreshed_base.update.fixed
    assert r.reason == f"dependency_version: installed version too old: {first} {installed[first]} < {fixed[first]}"
    assert r.check("dependency_version").details["installed"] == installed
    assert_no_leftovers(docker_client, r.sandbox_id)

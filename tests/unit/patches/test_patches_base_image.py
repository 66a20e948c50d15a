"""base_image_refresh: Dockerfile bases, the digest bump and the refreshed-tag bump (StaticImages)."""

from __future__ import annotations

from pathlib import Path

import pytest
from patches_kit import dep, make_service, write

from selfheal.demo import TARGET_DIR
from selfheal.patches.diffs import apply_diff
from selfheal.patches.recipes import PlanContext
from selfheal.patches.recipes.base_image_refresh import BaseImageRefresh, StaticImages, base_images
from selfheal.sandbox.spec import SpecError, spec_from_plan

OLD = "sha256:" + "1" * 64
NEW = "sha256:" + "2" * 64
OS_FINDING = dep(
    "openssl", "3.0.11-1~deb12u1", "3.0.15-1~deb12u1", ecosystem="os", file_path=None, cve="CVE-2024-5535"
)


def test_base_images_follow_arg_defaults_and_skip_stage_aliases() -> None:
    text = (
        f"# syntax=docker/dockerfile:1\nARG BASE=python:3.11-slim@{OLD}\nARG OTHER\n"
        "FROM --platform=$BUILDPLATFORM ${BASE} AS build\nRUN true\n"
        "FROM build AS test\nFROM scratch\nFROM \\\n  docker.io/library/busybox:1.36 AS tools\n"
    )
    refs = base_images(text)
    assert [(r.image, r.line, r.via_arg) for r in refs] == [
        (f"python:3.11-slim@{OLD}", 2, "BASE"),
        ("docker.io/library/busybox:1.36", 8, None),
    ]
    assert refs[0].digest == OLD and refs[0].tag_ref == "python:3.11-slim"
    assert refs[1].digest is None


def test_the_demo_dockerfile_has_an_unpinned_base_from_a_build_arg() -> None:
    refs = base_images((TARGET_DIR / "Dockerfile").read_text())
    assert {r.image for r in refs} == {"selfheal/base:bookworm"}
    assert all(r.via_arg == "BASE_IMAGE" and r.digest is None for r in refs)


def test_pinned_digest_is_bumped_in_the_dockerfile(tmp_path: Path) -> None:
    write(tmp_path, {"Dockerfile": f"FROM python:3.11-slim@{OLD}\nRUN echo hi\n"})
    ctx = PlanContext(images=StaticImages({"python:3.11-slim": NEW}))
    plan = BaseImageRefresh().plan([OS_FINDING], make_service(), tmp_path, ctx)
    assert not plan.needs_human, plan.reason
    apply_diff(tmp_path, plan.diff)
    assert (tmp_path / "Dockerfile").read_text() == f"FROM python:3.11-slim@{NEW}\nRUN echo hi\n"
    v = plan.verification
    assert (
        v.dependency_version[0].ecosystem == "os"
        and v.dependency_version[0].min_version == "3.0.15-1~deb12u1"
    )
    assert v.build == {"no_cache": True, "pull": False, "base_image": f"python:3.11-slim@{NEW}"}
    assert v.applicable() == ["tests", "dependency_version", "latency"]


def test_unpinned_base_is_a_rebuild_plan_without_a_diff(tmp_path: Path) -> None:
    write(tmp_path, {"Dockerfile": "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}\n"})
    plan = BaseImageRefresh().plan([OS_FINDING], make_service(), tmp_path, PlanContext())
    assert not plan.needs_human and not plan.diff
    assert plan.verification.build == {"no_cache": True, "pull": True}
    assert "python:3.11-slim: not pinned; rebuild with --pull --no-cache" in plan.description


def test_same_digest_means_nothing_newer_is_published(tmp_path: Path) -> None:
    write(tmp_path, {"Dockerfile": f"FROM python:3.11-slim@{OLD}\n"})
    ctx = PlanContext(images=StaticImages({"python:3.11-slim": OLD}))
    plan = BaseImageRefresh().plan([OS_FINDING], make_service(), tmp_path, ctx)
    assert plan.needs_human and not plan.failed
    assert "already at the newest digest" in plan.reason


def test_missing_dockerfile_and_argument_without_default_fail(tmp_path: Path) -> None:
    plan = BaseImageRefresh().plan([OS_FINDING], make_service(), tmp_path, PlanContext())
    assert plan.failed and plan.reason == "Dockerfile: no Dockerfile in the repository"
    write(tmp_path, {"Dockerfile": "ARG BASE\nFROM $BASE\n"})
    plan = BaseImageRefresh().plan([OS_FINDING], make_service(), tmp_path, PlanContext())
    assert (
        plan.failed
        and "Dockerfile:2: base image '$BASE' depends on a build argument without default" in plan.reason
    )


def test_applies_only_to_os_packages() -> None:
    r, svc = BaseImageRefresh(), make_service()
    assert r.applies(OS_FINDING, svc)
    assert not r.applies(dep("jinja2", "3.1.2", "3.1.3"), svc)


def test_refreshed_tag_replaces_the_build_argument_default(tmp_path: Path) -> None:
    text = "# base\nARG BASE_IMAGE=selfheal/base:bookworm\nFROM ${BASE_IMAGE} AS build\nFROM ${BASE_IMAGE}\n"
    write(tmp_path, {"Dockerfile": text})
    new = "selfheal/base:bookworm-20261130"
    ctx = PlanContext(images=StaticImages({}, newer={"selfheal/base:bookworm": new}))
    plan = BaseImageRefresh().plan([OS_FINDING], make_service(), tmp_path, ctx)
    assert not plan.needs_human and plan.files == ("Dockerfile",), plan.reason
    apply_diff(tmp_path, plan.diff)
    assert (tmp_path / "Dockerfile").read_text() == text.replace("bookworm\n", "bookworm-20261130\n", 1)
    # The sandbox builds the patched image on the new base, whatever BASE_IMAGE it would pass by default.
    assert plan.verification.build == {"no_cache": True, "pull": False, "base_image": new}
    assert f"Dockerfile:2: selfheal/base:bookworm -> {new} (refreshed tag)" in plan.description
    spec = spec_from_plan(plan, make_service())
    assert spec.patched_base_image == new and spec.no_cache and not spec.pull


def test_refreshed_tag_in_from_keeps_the_stage_name(tmp_path: Path) -> None:
    write(tmp_path, {"Dockerfile": "FROM debian:bookworm AS run\nRUN true\n"})
    ctx = PlanContext(images=StaticImages({}, newer={"debian:bookworm": "debian:bookworm-20261130"}))
    plan = BaseImageRefresh().plan([OS_FINDING], make_service(), tmp_path, ctx)
    apply_diff(tmp_path, plan.diff)
    assert (tmp_path / "Dockerfile").read_text() == "FROM debian:bookworm-20261130 AS run\nRUN true\n"


def test_base_spelled_with_variables_is_rebuilt_not_rewritten(tmp_path: Path) -> None:
    write(tmp_path, {"Dockerfile": "ARG PY=3.11\nFROM python:${PY}-slim\n"})
    ctx = PlanContext(images=StaticImages({}, newer={"python:3.11-slim": "python:3.11-slim-20261130"}))
    plan = BaseImageRefresh().plan([OS_FINDING], make_service(), tmp_path, ctx)
    assert not plan.diff and plan.verification.build == {"no_cache": True, "pull": True}


def test_no_newer_tag_known_keeps_the_rebuild_plan(tmp_path: Path) -> None:
    write(tmp_path, {"Dockerfile": "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}\n"})
    ctx = PlanContext(images=StaticImages({}, newer={"python:3.12-slim": "python:3.12-slim-20261130"}))
    plan = BaseImageRefresh().plan([OS_FINDING], make_service(), tmp_path, ctx)
    assert not plan.diff and plan.verification.build == {"no_cache": True, "pull": True}
    assert spec_from_plan(plan, make_service()).patched_base_image is None


def test_a_bad_base_image_in_a_plan_is_refused_by_the_sandbox_spec(tmp_path: Path) -> None:
    write(tmp_path, {"Dockerfile": f"FROM python:3.11-slim@{OLD}\n"})
    plan = BaseImageRefresh().plan(
        [OS_FINDING], make_service(), tmp_path, PlanContext(images=StaticImages({"python:3.11-slim": NEW}))
    )
    doc = plan.to_dict()
    doc["verification"]["build"]["base_image"] = "x; rm -rf /"
    with pytest.raises(SpecError, match=r"build.base_image 'x; rm -rf /' is not an image reference"):
        spec_from_plan(doc, make_service())


def test_refreshed_tag_replaces_the_value_not_an_argument_of_the_same_name(tmp_path: Path) -> None:
    write(tmp_path, {"Dockerfile": 'ARG base="base"\nFROM ${base}\n'})
    ctx = PlanContext(images=StaticImages({}, newer={"base:latest": "base:latest-20261130"}))
    plan = BaseImageRefresh().plan([OS_FINDING], make_service(), tmp_path, ctx)
    apply_diff(tmp_path, plan.diff)
    assert (tmp_path / "Dockerfile").read_text() == 'ARG base="base:latest-20261130"\nFROM ${base}\n'


def test_kernel_packages_are_the_hosts_not_the_images() -> None:
    from selfheal.patches.recipes.base_image_refresh import is_kernel_package

    assert all(map(is_kernel_package, ["linux", "linux-image-6.1.0-18-amd64", "linux-aws", "kernel", "Kernel"]))
    assert not any(map(is_kernel_package, ["libssl3", "linux-libc-dev", "util-linux", "openssl", "linuxdoc-tools"]))

"""dependency_upgrade and the requirement-file editing under it (version lists injected: StaticVersions)."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from patches_kit import dep, make_service, write

from selfheal.patches import requirements as reqs
from selfheal.patches.diffs import apply_diff
from selfheal.patches.model import PlanError
from selfheal.patches.recipes import PlanContext
from selfheal.patches.recipes.dependency_upgrade import DependencyUpgrade, is_fixed, parse_fixed
from selfheal.patches.versions import StaticVersions

JINJA = ["2.11.3", "3.0.0", "3.1.0", "3.1.2", "3.1.3", "3.1.4", "3.1.5", "3.1.6", "3.2.0rc1"]
REQUESTS = ["2.31.0", "2.32.2", "2.32.3", "2.32.4", "3.0.0", "3.0.1", "3.0.2"]


def ctx(**releases: list[str]) -> PlanContext:
    return PlanContext(versions=StaticVersions(releases or {"jinja2": JINJA, "requests": REQUESTS}))


def plan(tmp_path: Path, files: dict[str, str], *findings, c: PlanContext | None = None):
    write(tmp_path, files)
    return DependencyUpgrade().plan(list(findings), make_service(), tmp_path, c or ctx())


def after(tmp_path: Path, p) -> dict[str, str]:
    """Apply the plan's diff for real (git apply) and return the changed files' new text."""
    files = apply_diff(tmp_path, p.diff)
    return {f: (tmp_path / f).read_text() for f in files}


# ------------------------------------------------------------------ version logic
def test_fixed_version_lists_respect_release_lines() -> None:
    fixes = parse_fixed("2.32.0, 3.0.1")
    assert fixes == [Version("2.32.0"), Version("3.0.1")]
    assert is_fixed(Version("2.32.0"), fixes) and is_fixed(Version("2.99"), fixes)
    assert not is_fixed(Version("3.0.0"), fixes)  # the 3.0 line is fixed only from 3.0.1
    assert is_fixed(Version("3.0.1"), fixes) and is_fixed(Version("4.0"), fixes)
    assert not is_fixed(Version("2.31.9"), fixes)
    with pytest.raises(PlanError, match="not a valid version"):
        parse_fixed("2.32.0, latest")


def test_exact_pin_is_raised_to_the_lowest_fixed_release(tmp_path: Path) -> None:
    p = plan(
        tmp_path,
        {"requirements.txt": "# deps\nfastapi==0.110.0\njinja2==3.1.2  # templates\nclick==8.1.7\n"},
        dep("jinja2", "3.1.2", "3.1.3"),
    )
    assert not p.needs_human, p.reason
    assert (
        after(tmp_path, p)["requirements.txt"]
        == "# deps\nfastapi==0.110.0\njinja2==3.1.3  # templates\nclick==8.1.7\n"
    )
    assert p.details["target"] == "3.1.3"
    check = p.verification.dependency_version[0]
    assert (check.package, check.min_version, check.ecosystem) == ("jinja2", "3.1.3", "pypi")
    assert p.verification.applicable() == ["tests", "dependency_version", "latency"]
    assert p.title.startswith("Upgrade jinja2 3.1.2 -> 3.1.3 (CVE-2024-0001)")


def test_several_findings_need_the_highest_fix(tmp_path: Path) -> None:
    p = plan(
        tmp_path,
        {"requirements.txt": "Jinja2==3.1.2\n"},
        dep("jinja2", "3.1.2", "3.1.3", cve="CVE-2024-22195"),
        dep("jinja2", "3.1.2", "3.1.6", cve="CVE-2025-27516"),
    )
    assert after(tmp_path, p)["requirements.txt"] == "Jinja2==3.1.6\n"
    assert [f.cves for f in p.findings] == [("CVE-2024-22195",), ("CVE-2025-27516",)]


def test_several_fixed_versions_pick_the_lowest_allowed_by_the_project(tmp_path: Path) -> None:
    # Inspector: "2.32.0, 3.0.1". 2.32.0 itself is not on the index (yanked); the project caps <3.
    p = plan(
        tmp_path,
        {"requirements.txt": "requests[socks]>=2.31,<3 ; python_version >= '3.8'  # http\n"},
        dep("requests", "2.31.0", "2.32.0, 3.0.1"),
    )
    assert (
        after(tmp_path, p)["requirements.txt"]
        == "requests[socks]>=2.32.2,<3 ; python_version >= '3.8'  # http\n"
    )
    assert any("lowest release" in n for n in p.description.splitlines())


def test_without_the_cap_the_lowest_fix_overall_wins(tmp_path: Path) -> None:
    p = plan(tmp_path, {"requirements.txt": "requests==2.31.0\n"}, dep("requests", "2.31.0", "3.0.1, 2.32.0"))
    assert after(tmp_path, p)["requirements.txt"] == "requests==2.32.2\n"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("jinja2~=3.1.2", "jinja2~=3.1.3"),
        ("jinja2~=3.1", "jinja2>=3.1.3,~=3.1"),
        ("jinja2>=3.0", "jinja2>=3.1.3"),
        ("jinja2 >= 3.0, != 3.1.3", "jinja2 >=3.1.4,!=3.1.3"),
        ("jinja2", "jinja2>=3.1.3"),
        ("jinja2===3.1.2", "jinja2===3.1.3"),
        ("jinja2==3.1.*", "jinja2>=3.1.3,==3.1.*"),
    ],
)
def test_specifier_styles(tmp_path: Path, line: str, expected: str) -> None:
    p = plan(tmp_path, {"requirements.txt": line + "\n"}, dep("jinja2", "3.1.2", "3.1.3"))
    assert not p.failed, p.reason
    assert after(tmp_path, p)["requirements.txt"] == expected + "\n"


def test_include_lines_and_options_are_left_alone(tmp_path: Path) -> None:
    files = {
        "requirements-dev.txt": "-r requirements.txt\n--index-url https://pypi.org/simple\npytest==8.0\n",
        "requirements.txt": "-c constraints.txt\nflask==3.0.0 \\\n    # web\njinja2==3.1.2\n",
        "constraints.txt": "jinja2<3.1.5\n",
    }
    p = plan(tmp_path, files, dep("jinja2", "3.1.2", "3.1.3"))
    assert p.files == ("requirements.txt",)
    assert (
        after(tmp_path, p)["requirements.txt"]
        == "-c constraints.txt\nflask==3.0.0 \\\n    # web\njinja2==3.1.3\n"
    )


def test_pyproject_dependencies_are_edited_in_place(tmp_path: Path) -> None:
    pyproject = (
        '[project]\nname = "x"\nversion = "1"\ndependencies = [\n    "fastapi>=0.100",\n'
        '    "jinja2>=3.0,<4",  # templates\n]\n[project.optional-dependencies]\n'
        "dev = ['jinja2>=3.0,<4', 'pytest']\n[tool.other]\nnote = \"jinja2 is great\"\n"
    )
    p = plan(
        tmp_path, {"pyproject.toml": pyproject}, dep("jinja2", "3.1.2", "3.1.4", file_path="pyproject.toml")
    )
    assert not p.failed, p.reason
    assert after(tmp_path, p)["pyproject.toml"] == pyproject.replace("jinja2>=3.0,<4", "jinja2>=3.1.4,<4")


def test_environment_markers_that_do_not_apply_are_left_alone(tmp_path: Path) -> None:
    text = "jinja2==2.11.3; python_version < '3.6'\njinja2==3.1.2; python_version >= '3.6'\n"
    p = plan(tmp_path, {"requirements.txt": text}, dep("jinja2", "3.1.2", "3.1.3"))
    assert after(tmp_path, p)["requirements.txt"] == text.replace("==3.1.2", "==3.1.3")


def test_a_fix_that_does_not_exist_on_the_index_fails_clearly(tmp_path: Path) -> None:
    p = plan(tmp_path, {"requirements.txt": "jinja2==3.1.2\n"}, dep("jinja2", "3.1.2", "9.9.9"))
    assert p.failed and p.needs_human and not p.diff
    assert (
        p.reason
        == "jinja2: fixed version 9.9.9 does not exist on the package index (newest release: 3.2.0rc1)"
    )


def test_an_unknown_package_fails_clearly(tmp_path: Path) -> None:
    p = plan(tmp_path, {"requirements.txt": "nopkg==1.0\n"}, dep("nopkg", "1.0", "1.1"))
    assert p.failed and p.reason == "nopkg: not found on the package index"


def test_a_conflict_with_another_pin_fails_and_names_it(tmp_path: Path) -> None:
    files = {
        "requirements.txt": "-c constraints.txt\njinja2==3.1.2\n",
        "constraints.txt": "# cap\njinja2<3.1.3\n",
    }
    p = plan(tmp_path, files, dep("jinja2", "3.1.2", "3.1.3"))
    assert p.failed and not p.diff
    assert p.reason == (
        "jinja2: every fixed release (3.1.3 .. 3.1.6) conflicts with jinja2<3.1.3 (constraints.txt:2)"
    )


def test_constraint_in_another_file_lowers_the_choice(tmp_path: Path) -> None:
    files = {"requirements.txt": "jinja2==3.1.2\n", "constraints.txt": "jinja2!=3.1.3,!=3.1.4\n"}
    p = plan(tmp_path, files, dep("jinja2", "3.1.2", "3.1.3"))
    assert after(tmp_path, p)["requirements.txt"] == "jinja2==3.1.5\n"


def test_unparseable_requirements_fail_with_file_and_line(tmp_path: Path) -> None:
    p = plan(tmp_path, {"requirements.txt": "flask==3.0\njinja2=3.1.2\n"}, dep("jinja2", "3.1.2", "3.1.3"))
    assert p.failed
    assert p.reason.startswith("jinja2: requirements.txt:2: cannot parse requirement 'jinja2=3.1.2'")


def test_bad_pyproject_fails_clearly(tmp_path: Path) -> None:
    p = plan(tmp_path, {"pyproject.toml": "[project\n"}, dep("jinja2", "3.1.2", "3.1.3"))
    assert p.failed and p.reason.startswith("jinja2: pyproject.toml: not valid TOML")


def test_hash_pinned_requirement_needs_a_human(tmp_path: Path) -> None:
    p = plan(
        tmp_path,
        {"requirements.txt": "jinja2==3.1.2 --hash=sha256:" + "a" * 64 + "\n"},
        dep("jinja2", "3.1.2", "3.1.3"),
    )
    assert p.failed and "hash-pinned" in p.reason


def test_never_downgrades(tmp_path: Path) -> None:
    # The finding is stale (scanned an old image): the repository already pins a fixed version.
    p = plan(tmp_path, {"requirements.txt": "jinja2==3.1.5\n"}, dep("jinja2", "3.1.2", "3.1.3"))
    assert not p.failed and not p.diff
    assert p.title == "jinja2 already requires 3.1.5 or later"


def test_prereleases_are_not_chosen_unless_the_fix_is_one(tmp_path: Path) -> None:
    p = plan(tmp_path, {"requirements.txt": "jinja2==3.1.6\n"}, dep("jinja2", "3.1.6", "3.2.0"))
    assert p.failed and "3.2.0 does not exist" in p.reason
    p = plan(tmp_path, {"requirements.txt": "jinja2==3.1.6\n"}, dep("jinja2", "3.1.6", "3.2.0rc1"))
    assert after(tmp_path, p)["requirements.txt"] == "jinja2==3.2.0rc1\n"


def test_transitive_dependency_gets_a_new_pin(tmp_path: Path) -> None:
    p = plan(tmp_path, {"requirements.txt": "flask==3.0.0\nclick==8.1.7"}, dep("jinja2", "3.1.2", "3.1.4"))
    new = after(tmp_path, p)["requirements.txt"]
    assert (
        new == "flask==3.0.0\nclick==8.1.7\njinja2==3.1.4  # transitive; raised by selfheal (3.1.4+ fixes)\n"
    )


def test_other_ecosystems_do_not_apply() -> None:
    r, svc = DependencyUpgrade(), make_service()
    assert r.applies(dep("jinja2", "3.1.2", "3.1.3"), svc)
    assert not r.applies(dep("lodash", "4.17.20", "4.17.21", ecosystem="npm"), svc)
    assert not r.applies(dep("openssl", "3.0.1", "3.0.2", ecosystem="os"), svc)
    assert not r.applies(dep("jinja2", "3.1.2", None), svc)
    assert r.applies(dep("jinja2", "3.1.2", "3.1.3", ecosystem=None, file_path="app/requirements.txt"), svc)


class _Conflicting:
    """A resolver stand-in that reports what pip reports for an impossible set (the real one: integration)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def conflicts(self, files: dict[str, str], entry: str) -> str | None:
        self.seen.append((entry, files[entry]))
        return (
            f"{entry}: pip cannot install the upgraded requirements: jinja2 3.1.3 depends on MarkupSafe>=2.0"
        )


def test_resolver_conflict_fails_the_plan_and_sees_the_edited_files(tmp_path: Path) -> None:
    files = {
        "requirements-test.txt": "-r requirements.txt\npytest==8.0\n",
        "requirements.txt": "jinja2==3.1.2\nmarkupsafe==1.1.1\n",
    }
    resolver = _Conflicting()
    c = ctx()
    c.resolver = resolver
    p = plan(tmp_path, files, dep("jinja2", "3.1.2", "3.1.3"), c=c)
    assert p.failed and "depends on MarkupSafe>=2.0" in p.reason
    assert resolver.seen == [("requirements-test.txt", files["requirements-test.txt"])]


# ------------------------------------------------------------------ requirements module details
def test_logical_lines_strip_comments_and_join_continuations() -> None:
    text = "# c\nflask==3.0 \\\n  --hash=sha256:abc\nurl#frag==1 # note\n\n"
    assert reqs.logical_lines(text) == [(2, "flask==3.0   --hash=sha256:abc"), (4, "url#frag==1")]


def test_raise_specifier_keeps_caps_and_refuses_excluding_ones() -> None:
    assert reqs.raise_specifier(SpecifierSet(">=1.0,<2"), Version("1.4")) == ">=1.4,<2"
    with pytest.raises(PlanError, match=r"<1\.3 excludes 1\.4"):
        reqs.raise_specifier(SpecifierSet(">=1.0,<1.3"), Version("1.4"))
    with pytest.raises(PlanError, match=r"~=1\.2\.0 excludes 1\.4"):
        reqs.raise_specifier(SpecifierSet("~=1.2.0"), Version("1.4"))


def test_rewrite_requirement_keeps_name_extras_and_marker() -> None:
    assert (
        reqs.rewrite_requirement("Requests[socks,security] (>=2.0) ; sys_platform == 'linux'", ">=2.32.2")
        == "Requests[socks,security] (>=2.32.2) ; sys_platform == 'linux'"
    )

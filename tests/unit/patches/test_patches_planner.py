"""The planner over real scanner output: which recipes each finding gets, grouping, fallbacks, crashes."""

from __future__ import annotations

import textwrap
from pathlib import Path

from patches_kit import INSPECTOR_SAMPLE, dep, make_service, wapiti_demo_findings, web, write

from selfheal.findings.parsers import parse_bytes
from selfheal.patches.diffs import apply_diff, file_diff
from selfheal.patches.model import PatchPlan, plan_id
from selfheal.patches.planner import plan_patches
from selfheal.patches.recipes import PlanContext, Recipe
from selfheal.patches.versions import StaticVersions

APP = {
    "requirements.txt": "fastapi==0.110.0\njinja2==3.1.2\nrequests==2.32.0\n",
    "app/__init__.py": "",
    "app/db.py": textwrap.dedent("""
        import sqlite3
        def items(conn, category):
            return conn.execute(f"SELECT * FROM items WHERE category = '{category}'").fetchall()
    """),
    "app/main.py": "from fastapi import FastAPI\napp = FastAPI()\n",
}
CTX = dict(versions=StaticVersions({"jinja2": ["3.1.2", "3.1.3", "3.1.6"], "requests": ["2.32.0", "2.32.4"]}))


def test_demo_scan_plus_dependencies(tmp_path: Path) -> None:
    write(tmp_path, APP)
    findings = [
        *wapiti_demo_findings(),
        dep("jinja2", "3.1.2", "3.1.3"),
        dep("jinja2", "3.1.2", "3.1.6", cve="C2"),
        web(306, "/admin/users", None, rule_id="auth"),
        dep("leftpad", "1.0", "1.1", ecosystem="npm"),
    ]
    plans = plan_patches(findings, make_service(), tmp_path, PlanContext(**CTX))
    by = {}
    for p in plans:
        by.setdefault(p.recipe, []).append(p)
    assert sorted(by) == ["code_fix", "config_hardening", "dependency_upgrade", "manual", "virtual_patch"]
    # The four Wapiti SQL injection entries are one finding (one fingerprint): one fix, one rule.
    assert len(by["code_fix"]) == 1 and len(by["code_fix"][0].findings) == 1
    assert [p.details["action"] for p in by["virtual_patch"]] == ["block_injection", "require_auth"]
    assert len(by["config_hardening"]) == 1 and len(by["config_hardening"][0].findings) == 3
    assert len(by["dependency_upgrade"]) == 1 and by["dependency_upgrade"][0].details["target"] == "3.1.6"
    manual = sorted(by["manual"], key=lambda p: p.reason)
    assert [p.needs_human for p in manual] == [True, True]
    assert (
        manual[0].reason
        == "no recipe fixes dependency finding CVE-2024-0001 in leftpad 1.0; ecosystem 'npm' "
        "has no upgrade recipe"
    )
    assert manual[1].reason.startswith(
        "no recipe fixes web finding CWE-306 at GET /admin/users; mitigated meanwhile by vp-"
    )
    # Every source-changing plan applies cleanly on the same tree (they touch different files).
    for p in plans:
        if p.diff:
            apply_diff(tmp_path, p.diff)
    assert "category = ?" in (tmp_path / "app/db.py").read_text()


def test_inspector_sample_goes_through_without_crashing(tmp_path: Path) -> None:
    write(tmp_path, APP)
    data = (INSPECTOR_SAMPLE / "aws_inspector2_package_vuln_metadata.json").read_bytes()
    findings = parse_bytes(data, "inspector.json", service="shop")
    plans = plan_patches(findings, make_service(), tmp_path, PlanContext(**CTX))
    assert sum(len(p.findings) for p in plans) == len({f.fingerprint for f in findings})
    up = {p.details.get("package"): p for p in plans if p.recipe == "dependency_upgrade"}
    assert up["requests"].details["target"] == "2.32.4" and not up["requests"].failed
    # cryptography and black are named by the scanner but not on our static index: clear failures.
    assert (
        up["cryptography"].failed
        and up["cryptography"].reason == "cryptography: not found on the package index"
    )
    assert {p.recipe for p in plans} >= {"dependency_upgrade", "manual"}  # go/stdlib has no recipe here


class Boom(Recipe):
    name = "boom"

    def applies(self, finding, service) -> bool:
        return True

    def plan(self, findings, service, workdir, ctx) -> PatchPlan:
        raise ZeroDivisionError("division by zero")


def test_a_crashing_recipe_becomes_a_failed_plan(tmp_path: Path) -> None:
    plans = plan_patches([dep("x", "1", "2")], make_service(), tmp_path, PlanContext(), recipes=[Boom()])
    assert len(plans) == 1 and plans[0].failed
    assert plans[0].reason == "recipe boom crashed: ZeroDivisionError: division by zero"


def test_plan_ids_are_deterministic_and_fingerprints_are_filled(tmp_path: Path) -> None:
    write(tmp_path, APP)
    f = dep("jinja2", "3.1.2", "3.1.3")
    f.fingerprint = ""
    a = plan_patches([f], make_service(), tmp_path, PlanContext(**CTX))
    b = plan_patches([f], make_service(), tmp_path, PlanContext(**CTX))
    assert a == b and len(a[0].findings[0].fingerprint) == 64
    assert plan_id("s", "r", ["b", "a"], "c", "d") == plan_id("s", "r", ["a", "b"], "c", "d")
    assert plan_id("s", "r", ["a"], "c", "d") != plan_id("s", "r", ["a"], "c2", "d")


def test_file_diff_handles_new_files_and_missing_final_newline(tmp_path: Path) -> None:
    write(tmp_path, {"a.txt": "one\ntwo"})
    d = file_diff("a.txt", "one\ntwo", "one\nthree") + file_diff("new/b.txt", None, "hello\n")
    assert "\\ No newline at end of file" in d and "new file mode 100644" in d
    assert apply_diff(tmp_path, d) == ("a.txt", "new/b.txt")
    assert (tmp_path / "a.txt").read_text() == "one\nthree"
    assert (tmp_path / "new/b.txt").read_text() == "hello\n"

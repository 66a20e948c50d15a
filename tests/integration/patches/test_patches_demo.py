"""The demo service end to end, without Docker: real scanner output -> plans -> commits -> the demo's own
tests and the plans' own exploit replay run against each patched branch.

Real components: the demo's git repository (``selfheal.demo.init_repo``), git, the package index via pip
(``pip index versions``, cached under .run/cache), pip's resolver, and the demo's own virtualenv (the one
its scanner tests use) to run its test suite and replay the attacks in-process with FastAPI's TestClient.
The sandbox step does the same in Docker; this proves the plan data it will consume is right.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "patches"))
from patches_kit import FIXTURES, WAPITI_DEMO, git

from selfheal import demo
from selfheal.catalog import load_catalog
from selfheal.findings.model import Finding, Location
from selfheal.findings.parsers import parse_bytes
from selfheal.patches.git import commit_plan, read_trailers
from selfheal.patches.model import AttackRequest, PatchPlan
from selfheal.patches.planner import plan_repository
from selfheal.patches.recipes import PlanContext
from selfheal.patches.versions import PipIndexVersions, PipResolver, VersionLookupError

# Runs inside the demo's own virtualenv, in a checkout: optionally its test suite, then the attack requests
# against a fresh app (TestClient, in-process). One process per checkout keeps the suite fast.
DEMO_RUN = r"""
import io, json, pathlib, sys, tempfile, contextlib
src, run_tests = sys.argv[1], sys.argv[2] == "1"
sys.path.insert(0, src)
result = {"tests_rc": None, "tests_out": "", "replay": []}
if run_tests:
    import os, pytest
    os.chdir(src)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result["tests_rc"] = int(pytest.main(["-p", "no:cacheprovider", "-o", "addopts=", "-q", "tests"]))
    result["tests_out"] = buf.getvalue()[-3000:]
requests = json.loads(sys.stdin.read())
if requests:
    from fastapi.testclient import TestClient
    from demo_api.main import create_app
    app = create_app(pathlib.Path(tempfile.mkdtemp()) / "db.sqlite3")
    with TestClient(app, raise_server_exceptions=False) as c:
        for r in requests:
            resp = c.request(r["method"], r["path"], headers=dict(r["headers"]), content=r["body"] or None)
            result["replay"].append(
                {"status": resp.status_code, "headers": dict(resp.headers), "body": resp.text})
print(json.dumps(result))
"""
SOURCE_RECIPES = ("dependency_upgrade", "code_fix", "config_hardening")


@pytest.fixture(scope="module")
def demo_python() -> Path:
    try:
        return demo.ensure_venv()
    except demo.DemoError as exc:  # the demo venv is part of the product: missing is a failure
        pytest.fail(f"demo virtualenv unavailable: {exc}")


@pytest.fixture(scope="module")
def versions() -> PipIndexVersions:
    src = PipIndexVersions()
    try:
        src.versions("jinja2")
    except VersionLookupError as exc:  # PyPI is reachable here; unreachable is a failure, not a skip
        pytest.fail(f"package index unreachable: {exc}")
    return src


@pytest.fixture(scope="module")
def planned(
    tmp_path_factory: pytest.TempPathFactory, versions: PipIndexVersions
) -> tuple[Path, list[PatchPlan]]:
    repo = demo.init_repo(tmp_path_factory.mktemp("demo") / "target-api")
    service = load_catalog().get("demo-target").model_copy(update={"repository": str(repo)})
    findings = parse_bytes(WAPITI_DEMO.read_bytes(), str(WAPITI_DEMO), service=service.name)
    inspector = FIXTURES / "inspector2-demo-target.json"
    findings += parse_bytes(inspector.read_bytes(), str(inspector), service=service.name)
    findings.append(
        Finding(
            scanner="zap",
            rule_id="10101",
            title="Missing Authentication for Critical Function",
            severity="high",
            kind="web",
            cwe=306,
            service=service.name,
            location=Location(url="http://t/admin/users", method="GET", path="/admin/users"),
        )
    )
    # No resolver here (it is exercised below on a smaller project): it would add ~6 s of pip resolution.
    return repo, plan_repository(findings, service, ctx=PlanContext(versions=versions))


def one(plans: list[PatchPlan], recipe: str) -> PatchPlan:
    (p,) = [p for p in plans if p.recipe == recipe]
    return p


def checkout(repo: Path, branch: str, dest: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", "--branch", branch, str(repo), str(dest)], check=True)
    return dest


def run_in_demo(python: Path, src: Path, requests: tuple[AttackRequest, ...], run_tests: bool) -> dict:
    payload = json.dumps(
        [{"method": r.method, "path": r.path, "headers": list(r.headers), "body": r.body} for r in requests]
    )
    proc = subprocess.run(
        [str(python), "-c", DEMO_RUN, str(src), "1" if run_tests else "0"],
        input=payload,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["reproduced"] = [
        r.oracle.reproduced(x["status"], x["headers"], x["body"])
        for r, x in zip(requests, out["replay"], strict=True)
    ]
    return out


@pytest.fixture(scope="module")
def branches(
    planned: tuple[Path, list[PatchPlan]], demo_python: Path, tmp_path_factory: pytest.TempPathFactory
):
    """Commit the three source patches, then run (in the demo venv) each branch's tests and the replay."""
    repo, plans = planned
    before = (
        git(repo, "rev-parse", "HEAD"),
        git(repo, "status", "--porcelain"),
        git(repo, "branch", "--show-current"),
    )
    work = tmp_path_factory.mktemp("checkouts")
    commits, runs = {}, {}
    for recipe in SOURCE_RECIPES:
        plan = one(plans, recipe)
        commits[recipe] = commit_plan(repo, plan)
        src = checkout(repo, commits[recipe].branch, work / recipe)
        runs[recipe] = run_in_demo(demo_python, src, plan.verification.exploit_replay, run_tests=True)
    after = (
        git(repo, "rev-parse", "HEAD"),
        git(repo, "status", "--porcelain"),
        git(repo, "branch", "--show-current"),
    )
    replays = tuple(
        r
        for recipe in ("code_fix", "config_hardening")
        for r in one(plans, recipe).verification.exploit_replay
    )
    runs["unpatched"] = run_in_demo(
        demo_python, checkout(repo, "main", work / "main"), replays, run_tests=False
    )
    return {"commits": commits, "runs": runs, "before": before, "after": after}


def test_the_demo_gets_the_expected_plans(planned: tuple[Path, list[PatchPlan]]) -> None:
    _repo, plans = planned
    assert sorted(p.recipe for p in plans) == [
        "code_fix",
        "config_hardening",
        "dependency_upgrade",
        "manual",
        "manual",
        "virtual_patch",
        "virtual_patch",
    ]
    up = one(plans, "dependency_upgrade")
    assert not up.needs_human, up.reason
    assert (
        up.details["target"] == "3.1.6"
    )  # the lowest release that fixes all three CVEs, found on the real index
    assert "-jinja2==3.1.2\n+jinja2==3.1.6\n" in up.diff and up.files == ("requirements.txt",)
    assert up.rollout == {"strategy": "canary", "steps": [25, 50, 100]}  # the catalog's, for this service
    assert up.verification.tests.command == load_catalog().get("demo-target").test_command
    assert [(c.package, c.min_version) for c in up.verification.dependency_version] == [("jinja2", "3.1.6")]
    # Inspector's OS finding is the kernel ("linux"): the host's, which no image rebuild can fix.
    manual, kernel = sorted((p for p in plans if p.recipe == "manual"), key=lambda p: "linux" in p.reason)
    assert kernel.needs_human and "in linux" in kernel.reason and "belongs to the host" in kernel.reason
    assert (
        manual.needs_human
        and "CWE-306 at GET /admin/users" in manual.reason
        and "mitigated meanwhile" in manual.reason
    )


def test_patches_commit_with_trailers_leaving_the_demo_checkout_alone(planned, branches) -> None:
    repo, plans = planned
    assert branches["before"] == branches["after"]
    assert branches["after"][2] == "main"
    for recipe, result in branches["commits"].items():
        plan = one(plans, recipe)
        trailers = read_trailers(repo, result.commit)
        assert trailers["Patch-Id"] == [plan.id] and len(trailers["Finding-Id"]) == len(plan.findings)
        assert trailers["Generated-By"] == [f"selfheal patch engine ({recipe})"]
        assert git(repo, "rev-parse", f"{result.commit}^") == plan.base_commit == branches["before"][0]
    up = read_trailers(repo, branches["commits"]["dependency_upgrade"].commit)
    assert up["CVE"] == ["CVE-2024-22195", "CVE-2024-34064", "CVE-2025-27516"]


@pytest.mark.parametrize("recipe", SOURCE_RECIPES)
def test_the_demo_tests_still_pass_on_each_patched_branch(branches, recipe: str) -> None:
    run = branches["runs"][recipe]
    assert run["tests_rc"] == 0, run["tests_out"]
    assert "15 passed" in run["tests_out"]


@pytest.mark.parametrize("recipe", ["code_fix", "config_hardening"])
def test_exploit_replay_reproduces_before_and_not_after(planned, branches, recipe: str) -> None:
    """What the sandbox's exploit replay will do, in-process: the check must tell the two apart."""
    _repo, plans = planned
    requests = one(plans, recipe).verification.exploit_replay
    unpatched = branches["runs"]["unpatched"]["reproduced"]
    offset = 0 if recipe == "code_fix" else len(one(plans, "code_fix").verification.exploit_replay)
    before = unpatched[offset : offset + len(requests)]
    after = branches["runs"][recipe]["reproduced"]
    assert any(before), before  # at least one request demonstrably works on the unpatched code
    assert not any(after), after  # and none on the patched code


def test_resolver_reports_a_transitive_conflict(tmp_path: Path, versions: PipIndexVersions) -> None:
    """Real pip resolver: Flask 1.1.4 caps Jinja2 below 3.0, so a fixed 3.1.x fails, with pip's reason."""
    from patches_kit import dep, git_repo, make_service

    repo = git_repo(tmp_path / "svc", {"requirements.txt": "flask==1.1.4\njinja2==2.11.3\n"})
    ctx = PlanContext(versions=versions, resolver=PipResolver())
    (plan,) = plan_repository([dep("jinja2", "2.11.3", "3.1.6")], make_service(str(repo)), ctx=ctx)
    assert plan.failed and not plan.diff
    assert plan.reason.startswith("jinja2: requirements.txt: pip cannot install the upgraded requirements:")
    assert "flask 1.1.4 depends on Jinja2<3.0" in plan.reason

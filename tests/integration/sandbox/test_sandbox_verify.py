"""The sandbox for real: the demo's patches built offline, run isolated and verified with the real engine.

Good patches (the patch engine's dependency upgrade and code fix) pass every
check; a patch that breaks the service's own tests fails on (1); a non-fix
fails on (2) and (3) for the right reasons; a baseline that is not vulnerable
makes the replay inconclusive. Every test asserts that nothing labelled
``selfheal.sandbox`` is left behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfheal.catalog import Service
from selfheal.patches.model import PatchPlan
from selfheal.sandbox import VerificationResult, verify_patch
from selfheal.sandbox.spec import spec_from_plan
from tests.integration.sandbox.kit import (
    PARAMETERIZED,
    VULNERABLE,
    XSS_EMBED,
    assert_no_leftovers,
    make_commit,
    plan_like,
)

pytestmark = pytest.mark.docker





def checks_of(result: VerificationResult) -> dict[str, str]:
    return {c.name: c.status for c in result.checks}


def explain(result: VerificationResult) -> str:
    return json.dumps({"reason": result.reason, "checks": [
        {"name": c.name, "status": c.status, "reason": c.reason, "output": c.output[-1500:]} for c in result.checks
    ]}, indent=1)


@pytest.fixture(scope="module")
def code_fix_result(docker_client, base_image, wapiti_bin, demo_repo: Path, plans, commits,
                    service: Service) -> VerificationResult:
    return verify_patch(plans["code_fix"], repo=demo_repo, commit=commits["code_fix"], service=service,
                        client=docker_client)


def test_code_fix_passes_every_check(code_fix_result: VerificationResult, docker_client, plans, commits) -> None:
    r = code_fix_result
    assert r.passed, explain(r)
    assert checks_of(r) == {"tests": "passed", "exploit_replay": "passed", "rescan": "passed", "latency": "passed"}
    assert r.commit == commits["code_fix"] and r.baseline_commit == plans["code_fix"].base_commit
    assert r.image == f"selfheal/demo-target:patch-{plans['code_fix'].id}"
    assert r.image_id.startswith("sha256:") and r.image_id == docker_client.images.get(r.image).id
    assert docker_client.images.get(r.image).labels["selfheal.commit"] == commits["code_fix"]
    # (1) the suite really ran in the image
    assert "passed" in r.check("tests").details["summary"] and "failed" not in r.check("tests").details["summary"]
    # (2) each probe reproduced on the unpatched image, side by side, and on none of them on the patched one
    probes = r.check("exploit_replay").details["probes"]
    kinds = {p["kind"] for p in probes}
    assert kinds == {"oracle", "sqli_boolean"}
    assert all(p["baseline"]["reproduced"] and not p["patched"]["reproduced"] for p in probes), probes
    diff = next(p for p in probes if p["kind"] == "sqli_boolean")
    assert "tautology returned 7" in diff["baseline"]["evidence"]
    # (3) the real Wapiti crawled the sandboxed service and did not report the finding again
    rescan = r.check("rescan")
    assert rescan.details["crawled_pages"] >= 1 and rescan.details["reappeared"] == []
    assert rescan.details["scope"] == "url" and "/api/items?category=" in rescan.details["target"]
    # (5) both images measured, same bounded count
    stats = r.check("latency").details["stats"]
    assert stats["baseline"]["n"] == stats["patched"]["n"] == 200
    assert r.cleanup["ok"] and any(n.endswith("-patched") for n in r.cleanup["removed"])
    assert_no_leftovers(docker_client, r.sandbox_id)


def test_result_is_json_for_the_patch_record(code_fix_result: VerificationResult) -> None:
    doc = json.loads(code_fix_result.to_json())
    assert doc["passed"] is True and doc["patch_id"] == code_fix_result.patch_id
    assert {c["name"] for c in doc["checks"]} == {"tests", "exploit_replay", "rescan", "latency"}
    assert all(isinstance(c["duration_s"], float) and len(c["output"]) <= 8_100 for c in doc["checks"])
    assert VerificationResult.from_dict(doc) == code_fix_result


def test_dependency_upgrade_passes_every_check(docker_client, base_image, demo_repo, plans, commits,
                                               service) -> None:
    plan = plans["dependency_upgrade"]
    # The plan carries no request (a dependency finding has no URL); the README's exploit of the CVE is added.
    r = verify_patch(plan, repo=demo_repo, commit=commits["dependency_upgrade"], service=service,
                     client=docker_client, spec_overrides={"exploits": (XSS_EMBED,)})
    assert r.passed, explain(r)
    assert checks_of(r) == {"tests": "passed", "exploit_replay": "passed", "dependency_version": "passed",
                            "latency": "passed"}
    assert r.check("dependency_version").details["installed"] == {"jinja2": "3.1.6"}
    (probe,) = r.check("exploit_replay").details["probes"]
    assert probe["baseline"]["reproduced"] and probe["baseline"]["statuses"] == [200]
    # 3.1.6 rejects the key (HTTP 400, a JSON error quoting it): not rendered as markup, so not reproduced.
    assert not probe["patched"]["reproduced"] and probe["patched"]["statuses"] == [400]
    assert_no_leftovers(docker_client, r.sandbox_id)


def test_patch_that_breaks_the_suite_fails_on_the_tests(docker_client, base_image, demo_repo, base_commit, plans,
                                                        service, test_images) -> None:
    sha = make_commit(demo_repo, base_commit, "breaks-categories", {
        "demo_api/db.py": lambda s: s.replace(VULNERABLE, PARAMETERIZED)
                                     .replace("FROM categories ORDER BY slug", "FROM categories ORDER BY slug DESC"),
    })
    plan = plan_like(plans["code_fix"], "ptestbreakstests")
    test_images.append(spec_from_plan(plan, service).image_tag)
    r = verify_patch(plan, repo=demo_repo, commit=sha, service=service, client=docker_client)
    assert not r.passed and r.failed_check == "tests", explain(r)
    assert r.reason.startswith("tests: `pytest` exited with code 1: 1 failed, 14 passed"), r.reason
    assert "test_categories" in r.check("tests").output
    # Fail fast: the re-scan overlapped the suite and is kept; the check after them is not run.
    assert r.check("rescan").status == "passed"
    assert {c.name: c.reason for c in r.checks if c.status == "skipped"} == {"latency": "not run: tests failed"}
    assert_no_leftovers(docker_client, r.sandbox_id)


def test_non_fix_fails_on_exploit_replay_and_rescan(docker_client, base_image, wapiti_bin, demo_repo, base_commit,
                                                   plans, service, test_images) -> None:
    sha = make_commit(demo_repo, base_commit, "cosmetic", {
        "demo_api/db.py": lambda s: s.replace('"""Items of one category.', '"""Items of one category (reviewed).'),
    })
    plan = plan_like(plans["code_fix"], "ptestcosmetic")
    test_images.append(spec_from_plan(plan, service).image_tag)
    r = verify_patch(plan, repo=demo_repo, commit=sha, service=service, client=docker_client, fail_fast=False)
    assert not r.passed and r.failed_check == "exploit_replay", explain(r)
    assert r.reason.startswith("exploit_replay: exploit still reproduces on the patched image: GET /api/items?"), \
        r.reason
    assert r.check("tests").status == "passed"  # the suite cannot tell: it checks legitimate behaviour only
    rescan = r.check("rescan")
    assert rescan.status == "failed" and rescan.reason.startswith("the finding reappears: SQL Injection at GET "
                                                                  "/api/items (category)")
    # Same fingerprint as the original finding: host and port of the sandbox are not part of it.
    assert {a["fingerprint"] for a in rescan.details["reappeared"]} == {plans["code_fix"].findings[0].fingerprint}
    assert_no_leftovers(docker_client, r.sandbox_id)


def test_replay_is_inconclusive_when_the_baseline_is_not_vulnerable(docker_client, base_image, demo_repo, plans,
                                                                    commits, service) -> None:
    r = verify_patch(plans["code_fix"], repo=demo_repo, commit=commits["code_fix"],
                     baseline_commit=commits["code_fix"], service=service, client=docker_client)
    assert not r.passed and r.failed_check == "exploit_replay", explain(r)
    assert r.reason == "exploit_replay: inconclusive: exploit does not reproduce on the baseline (3 probes)"
    assert_no_leftovers(docker_client, r.sandbox_id)


def test_plan_that_needs_a_human_is_refused_before_docker(demo_repo, plans, commits) -> None:
    plan: PatchPlan = plan_like(plans["code_fix"], "ptesthuman")
    import dataclasses

    plan = dataclasses.replace(plan, needs_human=True, reason="no recipe")
    r = verify_patch(plan, repo=demo_repo, commit=commits["code_fix"], client=object())
    assert not r.passed and r.failed_check == "plan" and "needs a human" in r.reason


def test_config_hardening_patch_passes_in_the_sandbox(docker_client, base_image, wapiti_bin, demo_repo,
                                                      service) -> None:
    """The header/banner recipe's app-setting patch is built and verified like any other."""
    from selfheal.findings import parse_bytes
    from selfheal.patches.git import commit_plan
    from selfheal.patches.planner import plan_repository

    # A real Wapiti 3.2.3 report of the demo: its missing-header findings drive the recipe.
    report = (Path(__file__).parent / "data" / "wapiti-demo-target.json").read_bytes()
    findings = parse_bytes(report, "wapiti-demo-target.json", "wapiti-json", service=service.name)
    plan = next(p for p in plan_repository(findings, service, demo_repo) if p.recipe == "config_hardening")
    assert not plan.failed and not plan.needs_human, plan.reason
    r = verify_patch(plan, repo=demo_repo, commit=commit_plan(demo_repo, plan).commit, service=service,
                     client=docker_client)
    assert r.passed, explain(r)
    # Headers and banner: the replayed request sees them now, and the targeted rescan no longer reports them.
    assert checks_of(r) == {"tests": "passed", "exploit_replay": "passed", "rescan": "passed", "latency": "passed"}
    assert_no_leftovers(docker_client, r.sandbox_id)

"""From a patch plan to what the sandbox runs, and the stored result's shape."""

from __future__ import annotations

import json

import pytest

from selfheal.catalog import load_catalog
from selfheal.patches import model as pm
from selfheal.patches.model import (
    AttackRequest,
    DependencyVersionCheck,
    FindingRef,
    LatencyCheck,
    Oracle,
    PatchPlan,
    RescanCheck,
    Verification,
)
from selfheal.sandbox.result import CheckResult, VerificationResult, truncate
from selfheal.sandbox.spec import SpecError, spec_from_plan

SQLI_REF = FindingRef(fingerprint="f" * 64, rule_id="sql", title="SQL Injection", severity="high", kind="web",
                      cwe=89)


def plan(**kw) -> PatchPlan:
    base = {
        "id": "p0123456789abcde", "service": "demo-target", "recipe": "code_fix", "findings": (SQLI_REF,),
        "title": "fix", "diff": "diff --git a/x b/x\n", "base_commit": "a" * 40,
        "verification": Verification(
            tests=pm.TestsCheck("pytest -q"),
            exploit_replay=(AttackRequest("GET", "/api/items?category=x%27", oracle=Oracle(status_in=(500,))),),
            rescan=RescanCheck("wapiti", ("sql",), ("/api/items",), (89,)),
            latency=LatencyCheck(paths=("/health", "/api/items")),
        ),
    }
    base.update(kw)
    return PatchPlan(**base)


def test_plan_maps_to_the_checks_it_expects() -> None:
    service = load_catalog().get("demo-target")
    spec = spec_from_plan(plan(), service)
    assert spec.applicable() == ["tests", "exploit_replay", "rescan", "latency"]
    assert spec.test_command == "pytest -q"
    assert spec.sqli_differential and not spec.xss
    assert spec.fingerprints == ("f" * 64,)
    assert (spec.port, spec.health_path, spec.openapi_path, spec.dockerfile) == (8000, "/health", "/openapi.json",
                                                                                 "Dockerfile")
    assert spec.image_tag == "selfheal/demo-target:patch-p0123456789abcde"
    assert spec.baseline_tag("b" * 40) == "selfheal/demo-target:commit-bbbbbbbbbbbb"


def test_dict_form_and_catalog_test_command() -> None:
    service = load_catalog().get("demo-target")
    p = plan(verification=Verification(dependency_version=(DependencyVersionCheck("jinja2", "3.1.6"),),
                                       build={"no_cache": True}),
             findings=(FindingRef("e" * 64, "CVE-2024-22195", "jinja2", "medium", "dependency", cwe=79),))
    spec = spec_from_plan(json.loads(p.to_json()), service)
    # No tests in the plan: an image change still runs the service's own suite (from the catalog).
    assert spec.applicable() == ["tests", "dependency_version"] and spec.test_command == "pytest"
    assert spec.xss and not spec.sqli_differential and spec.no_cache


@pytest.mark.parametrize(("changes", "message"), [
    ({"needs_human": True, "reason": "no recipe"}, r"needs a human \(no recipe\)"),
    ({"delivery": "gateway"}, r"delivery 'gateway' builds no image"),
])
def test_plans_without_an_image_are_refused(changes, message) -> None:
    with pytest.raises(SpecError, match=message):
        spec_from_plan(plan(**changes))


def test_tag_is_sanitized() -> None:
    spec = spec_from_plan(plan(id="P/../Weird id", service="Demo_Target"))
    assert spec.image_tag == "selfheal/demo_target:patch-p-..-weird-id"


def test_truncate_keeps_head_and_tail() -> None:
    text = "HEAD" + "x" * 20_000 + "VERDICT"
    out = truncate(text, 1000)
    assert out.startswith("HEAD") and out.endswith("VERDICT") and len(out) == 1000
    assert truncate(out, 1000) == out
    assert "characters cut" in out
    assert truncate("short", 1000) == "short"


def test_result_round_trips_through_json() -> None:
    check = CheckResult("exploit_replay", "failed", "why", 1.23456, "o" * 20_000,
                        {"statuses": (500, None), "obj": object()})
    assert check.duration_s == 1.235 and len(check.output) == 8_000
    assert check.details["statuses"] == [500, None] and isinstance(check.details["obj"], str)
    r = VerificationResult(patch_id="p1", service="s", checks=[check], reason="exploit_replay: why")
    again = VerificationResult.from_dict(json.loads(r.to_json()))
    assert again == r and again.check("exploit_replay").reason == "why" and again.check("latency") is None


def test_rescan_targets_the_findings_endpoint_when_it_can() -> None:
    from selfheal.sandbox.checks import rescan_target

    service = load_catalog().get("demo-target")
    spec = spec_from_plan(plan(), service)
    assert rescan_target(spec, "http://10.0.0.2:8000") == (
        "http://10.0.0.2:8000/api/items?category=selfheal", "url", None)
    # Several paths, or no request showing the parameters: the whole service, with its OpenAPI document.
    wide = spec.with_(rescan=RescanCheck("wapiti", ("sql",), ("/api/items", "/api/other"), (89,)))
    assert rescan_target(wide, "http://h:1") == ("http://h:1/", "folder", "http://h:1/openapi.json")
    assert rescan_target(spec.with_(exploits=()), "http://h:1")[1] == "folder"

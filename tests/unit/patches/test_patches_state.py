"""The patch lifecycle: every allowed move, every refused one, guards, history and the storage form."""

from __future__ import annotations

import itertools
import json

import pytest
from patches_kit import dep, make_service

from selfheal.patches.model import PatchPlan
from selfheal.patches.recipes import PlanContext
from selfheal.patches.recipes.virtual_patch import VirtualPatchRecipe
from selfheal.patches.state import STATES, TERMINAL, TRANSITIONS, InvalidTransition, PatchRecord, check


def source_plan(**kw) -> PatchPlan:
    base = dict(
        id="p1",
        service="shop",
        recipe="dependency_upgrade",
        findings=(),
        title="Upgrade x",
        diff="diff --git a/r b/r\n",
        files=("r",),
        delivery="image",
    )
    return PatchPlan(**{**base, **kw})


def verified(rec: PatchRecord) -> PatchRecord:
    rec.committed("c0ffee", "selfheal/patch-p1")
    rec.start_verification()
    rec.record_sandbox(True, {"checks": {"tests": "passed"}}, image="sha256:" + "a" * 64, image_tag="shop:p1")
    return rec


def test_the_documented_graph() -> None:
    assert {
        "planned": {"verifying", "failed"},
        "verifying": {"verified", "failed"},
        "verified": {"awaiting_approval", "deploying"},
        "awaiting_approval": {"deploying", "failed"},
        "deploying": {"promoted", "rolled_back"},
        "failed": set(),
        "promoted": set(),
        "rolled_back": set(),
    } == TRANSITIONS
    assert {"failed", "promoted", "rolled_back"} == TERMINAL


@pytest.mark.parametrize(("a", "b"), list(itertools.product(STATES, STATES)))
def test_check_allows_exactly_the_graph(a: str, b: str) -> None:
    if a == b:
        assert check(a, b) is False
    elif b in TRANSITIONS[a]:  # type: ignore[index]
        assert check(a, b) is True
    else:
        with pytest.raises(InvalidTransition, match=f"cannot go from '{a}' to '{b}'"):
            check(a, b)


def test_unknown_states_are_refused() -> None:
    with pytest.raises(InvalidTransition, match="unknown state 'shipped'"):
        check("planned", "shipped")
    with pytest.raises(InvalidTransition, match="stored state 'x' is not a known state"):
        check("x", "planned")


def test_happy_path_with_approval_and_history() -> None:
    rec = verified(PatchRecord.new(source_plan()))
    assert rec.state == "verified" and rec.image.startswith("sha256:") and rec.sandbox["passed"] is True
    rec.to("awaiting_approval", reason="policy: tier high needs approval")
    assert rec.approve("alice") is True
    assert rec.approve("alice") is False  # idempotent re-run: already deploying
    rec.rollout = {"strategy": "canary", "steps": [10, 50, 100], "result": "ok"}
    rec.to("promoted", actor="rollout")
    assert [(t.from_state, t.to_state) for t in rec.history] == [
        (None, "planned"),
        ("planned", "verifying"),
        ("verifying", "verified"),
        ("verified", "awaiting_approval"),
        ("awaiting_approval", "deploying"),
        ("deploying", "promoted"),
    ]
    assert rec.history[4].actor == "alice"
    with pytest.raises(InvalidTransition, match="allowed: nothing"):
        rec.to("rolled_back")


def test_auto_policy_goes_straight_to_deploying_and_can_roll_back() -> None:
    rec = verified(PatchRecord.new(source_plan()))
    rec.to("deploying", reason="policy: auto")
    rec.to("rolled_back", actor="rollout", reason="error rate 12% > 5% at step 10%")
    assert rec.state == "rolled_back" and rec.reason.startswith("error rate")


def test_guards() -> None:
    rec = PatchRecord.new(source_plan())
    with pytest.raises(InvalidTransition, match="changes source but has no commit"):
        rec.start_verification()
    rec.committed("c0ffee", "b")
    rec.start_verification()
    with pytest.raises(InvalidTransition, match="without passing sandbox results"):
        rec.to("verified")
    with pytest.raises(InvalidTransition, match="image digest missing"):
        rec.record_sandbox(True, {})
    rec2 = PatchRecord.new(source_plan())
    rec2.committed("c", "b")
    rec2.start_verification()
    rec2.record_sandbox(False, {"reason": "exploit_replay: the attack still works against the patched image"})
    assert rec2.state == "failed" and rec2.reason.startswith("exploit_replay")
    with pytest.raises(InvalidTransition, match="sandbox results arrive while verifying"):
        rec2.record_sandbox(True, {})


def test_gateway_only_plans_need_no_commit_or_image() -> None:
    from patches_kit import web

    plan = VirtualPatchRecipe().plan([web(89, "/items", "q")], make_service(), None, PlanContext())
    rec = PatchRecord.new(plan)
    rec.start_verification()
    rec.record_sandbox(True, {"checks": {"exploit_replay": "blocked (403)"}})
    assert rec.state == "verified"


def test_failed_plans_start_failed_and_needs_human_plans_cannot_verify() -> None:
    failed = PatchRecord.new(
        source_plan(
            diff="",
            files=(),
            failed=True,
            needs_human=True,
            reason="jinja2: fixed version 9.9 does not exist on the package index",
        )
    )
    assert failed.state == "failed" and "9.9" in failed.reason
    manual = PatchRecord.new(
        source_plan(recipe="manual", diff="", files=(), needs_human=True, reason="no recipe")
    )
    with pytest.raises(InvalidTransition, match="needs a human"):
        manual.start_verification()


def test_reject_and_replan() -> None:
    rec = verified(PatchRecord.new(source_plan()))
    rec.to("awaiting_approval")
    rec.reject("bob", "touches billing")
    assert rec.state == "failed" and rec.reason == "rejected by bob: touches billing"
    with pytest.raises(InvalidTransition, match="only a failed, rolled back"):
        PatchRecord.new(source_plan()).replan(source_plan(id="p2"))
    rec.replan(source_plan(id="p2"), actor="bob")
    assert rec.state == "planned" and rec.id == "p2" and rec.commit is None and rec.image is None
    assert rec.sandbox == {} and rec.history[-1].reason == "re-planned as p2"


def test_storage_form_round_trips_through_json() -> None:
    plan = PatchRecord.new(source_plan(findings=()))
    rec = verified(plan)
    d = json.loads(json.dumps(rec.to_dict()))
    back = PatchRecord.from_dict(d)
    assert back.to_dict() == rec.to_dict()
    assert back.plan == rec.plan
    d["state"] = "shipped"
    with pytest.raises(InvalidTransition):
        PatchRecord.from_dict(d)


def test_real_plan_round_trips() -> None:
    from patches_kit import wapiti_demo_findings

    f = next(x for x in wapiti_demo_findings() if x.cwe == 89)
    plan = VirtualPatchRecipe().plan([f, dep("jinja2", "1", "2")], make_service(), None, PlanContext())
    assert PatchPlan.from_dict(json.loads(plan.to_json())) == plan

"""The policy gate from Python: the decision table, admission, modes that never rise,
policies as data (edit a .rego file, the decision changes), and clear errors."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from selfheal.catalog import Service
from selfheal.findings.model import Finding, Location
from selfheal.patches.model import FindingRef, PatchPlan
from selfheal.policy import PolicyEngine, PolicyError, PolicyGate, lower_mode, primary_finding
from selfheal.policy.engine import DEFAULT_POLICY_DIR


def svc(tier: str = "medium", mode: str = "heal", **kw: object) -> Service:
    return Service(
        name="orders",
        base_url="http://orders",
        owner="team@example.com",
        repository="/r",
        tier=tier,
        mode=mode,
        **kw,
    )  # type: ignore[arg-type]


SQLI = Finding(
    scanner="zap",
    rule_id="40018",
    title="SQL Injection",
    severity="high",
    kind="web",
    confidence="high",
    cwe=89,
    location=Location(url="http://orders/items?id=1", method="GET", path="/items", param="id"),
)
XSS_LOW_CONF = {"severity": "medium", "kind": "web", "cwe": 79, "confidence": "low"}
MISSING_AUTH = {"severity": "high", "kind": "web", "cwe": 306, "confidence": "high"}
DEP = {
    "severity": "high",
    "kind": "dependency",
    "cwe": 1333,
    "kev": False,
    "exploit_available": False,
    "ssvc_decision": "Track",
}
DEP_KEV_CMDI = {"severity": "critical", "kind": "dependency", "cwe": 78, "kev": True}
PASSED = {"passed": True, "failed_checks": [], "image": "orders:p1"}
FAILED = {
    "passed": False,
    "checks": [{"name": "latency", "passed": False}, {"name": "tests", "passed": True}],
    "image": "orders:p1",
}


@pytest.fixture(scope="module")
def gate() -> PolicyGate:
    return PolicyGate()


# (finding, tier, recipe, sandbox, expected decision)
TABLE = [
    (SQLI, "medium", "virtual_patch", None, "auto"),
    (SQLI, "low", "virtual_patch", None, "auto"),
    (SQLI, "high", "virtual_patch", None, "auto"),
    (DEP_KEV_CMDI, "high", "virtual_patch", None, "auto"),
    (SQLI, "critical", "virtual_patch", None, "approval"),
    (XSS_LOW_CONF, "medium", "virtual_patch", None, "approval"),
    (MISSING_AUTH, "medium", "virtual_patch", None, "approval"),
    (DEP, "medium", "dependency_upgrade", None, "auto"),
    (DEP, "medium", "dependency_upgrade", PASSED, "auto"),
    (DEP, "high", "config_hardening", PASSED, "auto"),
    (DEP, "low", "base_image_refresh", PASSED, "auto"),
    (DEP, "critical", "dependency_upgrade", PASSED, "approval"),
    (DEP, "medium", "dependency_upgrade", FAILED, "manual_only"),
    (SQLI, "low", "code_fix", PASSED, "approval"),
    (SQLI, "medium", "code_fix", None, "approval"),
    (DEP, "medium", "none", None, "manual_only"),
    (DEP, "critical", "manual", None, "manual_only"),
    (DEP, "medium", "something_new", PASSED, "approval"),
]


@pytest.mark.parametrize(("finding", "tier", "recipe", "sandbox", "expected"), TABLE)
def test_decision_table(gate: PolicyGate, finding, tier: str, recipe: str, sandbox, expected: str) -> None:
    d = gate.decide(finding=finding, service=svc(tier), recipe=recipe, sandbox=sandbox)
    assert d.decision == expected, d.reasons
    assert d.reasons and all(isinstance(r, str) and r for r in d.reasons)
    assert d.effective_mode == "heal"


def test_reasons_say_why(gate: PolicyGate) -> None:
    d = gate.decide(finding=SQLI, service=svc("critical"), recipe="virtual_patch")
    assert d.reasons == ("service tier critical: every change needs approval",)
    d = gate.decide(finding=DEP, service=svc(), recipe="dependency_upgrade", sandbox=FAILED)
    assert d.reasons == ("the sandbox failed (latency): this patch cannot be deployed",)
    d = gate.decide(finding=DEP_KEV_CMDI, service=svc(), recipe="virtual_patch")
    assert d.reasons == ("instant virtual patch for exploitable injection CWE-78 (listed in CISA KEV)",)
    assert (
        not d.sandbox_required and gate.decide(finding=DEP, service=svc(), recipe="code_fix").sandbox_required
    )


def test_patch_plans_are_read_as_the_planner_writes_them(gate: PolicyGate) -> None:
    ref = FindingRef(fingerprint="f1", rule_id="CVE-1", title="t", severity="high", kind="dependency")
    manual = PatchPlan(
        id="p-9",
        service="orders",
        recipe="manual",
        findings=(ref,),
        title="needs a human",
        needs_human=True,
        reason="no fixed version published",
    )
    d = gate.decide(finding=DEP, service=svc(), plan=manual)
    assert d.decision == "manual_only"
    assert "the planner handed the plan to a human: no fixed version published" in d.reasons
    upgrade = PatchPlan(
        id="p-10", service="orders", recipe="dependency_upgrade", findings=(ref,), title="bump"
    )
    assert gate.decide(finding=DEP, service=svc(), plan=upgrade, sandbox=PASSED).decision == "auto"
    assert gate.decide(finding=DEP, service=svc(), plan=upgrade, sandbox=PASSED).input["plan"]["id"] == "p-10"


def test_primary_finding_of_a_plan_is_the_worst() -> None:
    assert primary_finding([DEP, DEP_KEV_CMDI, XSS_LOW_CONF]) is DEP_KEV_CMDI
    assert primary_finding([XSS_LOW_CONF, DEP]) is DEP
    with pytest.raises(PolicyError):
        primary_finding([])


@pytest.mark.parametrize(
    ("mode", "recipe", "dry_run"),
    [
        ("observe", "virtual_patch", True),
        ("observe", "dependency_upgrade", True),
        ("mitigate", "virtual_patch", False),
        ("mitigate", "dependency_upgrade", True),
        ("heal", "virtual_patch", False),
        ("heal", "dependency_upgrade", False),
    ],
)
def test_modes_decide_what_may_touch_traffic(gate: PolicyGate, mode: str, recipe: str, dry_run: bool) -> None:
    d = gate.decide(finding=SQLI, service=svc(mode=mode), recipe=recipe, sandbox=PASSED)
    assert d.effective_mode == mode and d.dry_run is dry_run


def test_change_freeze_lowers_the_mode(gate: PolicyGate) -> None:
    m = gate.effective_mode(svc(mode="heal"), {"change_freeze": True})
    assert m.effective_mode == "observe" and m.reasons == ("change freeze: observe only",)
    d = gate.decide(
        finding=DEP,
        service=svc(),
        recipe="dependency_upgrade",
        sandbox=PASSED,
        context={"change_freeze": True},
    )
    assert (d.decision, d.effective_mode, d.dry_run) == ("approval", "observe", True)


def test_change_window_from_the_catalog(gate: PolicyGate) -> None:
    s = svc(change_window="Sat,Sun 02:00-06:00 UTC")
    saturday_night = datetime(2025, 1, 4, 3, 0, tzinfo=UTC)
    monday_noon = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)
    inside = gate.decide(
        finding=DEP, service=s, recipe="dependency_upgrade", sandbox=PASSED, now=saturday_night
    )
    outside = gate.decide(
        finding=DEP, service=s, recipe="dependency_upgrade", sandbox=PASSED, now=monday_noon
    )
    assert inside.decision == "auto"
    assert outside.decision == "approval" and outside.reasons == ("outside the service's change window",)
    # An instant mitigation does not wait for the window.
    assert gate.decide(finding=SQLI, service=s, recipe="virtual_patch", now=monday_noon).decision == "auto"


# ------------------------------------------------------------------ admission


def admit(gate: PolicyGate, **kw: object):
    args = dict(
        plan={"id": "p1", "recipe": "dependency_upgrade", "service": "orders"},
        service=svc(),
        decision="auto",
        sandbox=PASSED,
        rollout_image="orders:p1",
    )
    args.update(kw)
    return gate.admit(**args)  # type: ignore[arg-type]


def test_admission_allows_a_verified_patch(gate: PolicyGate) -> None:
    a = admit(gate)
    assert a.allow and a.reasons == ()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"sandbox": FAILED}, "the sandbox did not pass (failed: latency)"),
        ({"sandbox": None}, "no sandbox result: the patch was never verified"),
        (
            {"rollout_image": "orders:latest"},
            "image orders:latest is not the image the sandbox verified (orders:p1)",
        ),
        ({"decision": "approval"}, "approval required and not given"),
        ({"decision": "manual_only"}, "policy says only a human can fix this plan (manual_only)"),
        ({"service": svc(mode="mitigate")}, "service mode mitigate does not allow deployments (heal needed)"),
        (
            {"context": {"change_freeze": True}},
            "service mode observe does not allow deployments (heal needed)",
        ),
    ],
)
def test_admission_refuses_with_a_reason(gate: PolicyGate, change: dict, reason: str) -> None:
    a = admit(gate, **change)
    assert not a.allow and reason in a.reasons


def test_admission_after_approval(gate: PolicyGate) -> None:
    assert admit(gate, decision="approval", approval={"approved": True, "by": "alice"}).allow
    assert not admit(gate, decision="approval", approval={"approved": False, "by": "alice"}).allow


# ------------------------------------------------------------------ policies are data


@pytest.fixture
def policy_copy(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, d)
    return d


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path.name} no longer contains {old!r}"
    path.write_text(text.replace(old, new))


def test_editing_a_policy_file_changes_the_decision(policy_copy: Path) -> None:
    before = PolicyGate(policy_copy).decide(
        finding=DEP, service=svc("high"), recipe="dependency_upgrade", sandbox=PASSED
    )
    assert before.decision == "auto"
    # The team decides the high tier is critical too: one line in remediation.rego.
    _edit(
        policy_copy / "remediation.rego",
        'critical_tiers := {"critical"}',
        'critical_tiers := {"critical", "high"}',
    )
    after = PolicyGate(engine=PolicyEngine(policy_copy)).decide(
        finding=DEP, service=svc("high"), recipe="dependency_upgrade", sandbox=PASSED
    )
    assert after.decision == "approval"
    assert after.reasons == ("service tier high: every change needs approval",)
    assert after.policy_digest != before.policy_digest


def test_a_running_engine_picks_up_the_edit(policy_copy: Path) -> None:
    gate = PolicyGate(engine=PolicyEngine(policy_copy, check_interval=0))
    assert gate.decide(finding=SQLI, service=svc(), recipe="code_fix").decision == "approval"
    _edit(
        policy_copy / "remediation.rego",
        'approval_reasons contains "code fixes always need a human review" if recipe == "code_fix"',
        'auto_reasons contains "code fixes trusted" if recipe == "code_fix"',
    )
    d = gate.decide(finding=SQLI, service=svc(), recipe="code_fix")
    assert (d.decision, d.reasons) == ("auto", ("code fixes trusted",))


def test_a_policy_cannot_raise_a_mode(policy_copy: Path) -> None:
    # A policy that claims every service may heal and nothing is a dry run ...
    _edit(policy_copy / "modes.rego", "effective_mode := order[effective_rank]", 'effective_mode := "heal"')
    _edit(policy_copy / "remediation.rego", '"dry_run": dry_run,', '"dry_run": false,')
    gate = PolicyGate(policy_copy)
    d = gate.decide(finding=SQLI, service=svc(mode="observe"), recipe="virtual_patch")
    # ... is overruled in Python: the catalog says observe.
    assert d.effective_mode == "observe" and d.dry_run is True
    assert any("ignored (policy can only lower a mode)" in r for r in d.mode_reasons)
    assert gate.effective_mode(svc(mode="mitigate")).effective_mode == "mitigate"
    assert not admit(gate, service=svc(mode="mitigate")).allow


def test_lower_mode() -> None:
    assert lower_mode("heal", "mitigate") == "mitigate"
    assert lower_mode("observe", "heal") == "observe"
    assert lower_mode("heal", "bogus") == "observe"
    assert lower_mode(None, "heal") == "observe"


def test_a_broken_policy_is_a_clear_error(policy_copy: Path) -> None:
    _edit(policy_copy / "admission.rego", "allow if count(deny) == 0", "allow if count(deny) == ")
    with pytest.raises(PolicyError, match=r"admission\.rego:\d+:\d+: "):
        PolicyGate(policy_copy).decide(finding=SQLI, service=svc(), recipe="virtual_patch")


def test_a_policy_answer_of_the_wrong_shape_is_refused(policy_copy: Path) -> None:
    _edit(policy_copy / "remediation.rego", 'default decision := "approval"', 'default decision := "yolo"')
    _edit(policy_copy / "remediation.rego", 'else := "auto" if count(auto_reasons) > 0', "")
    with pytest.raises(PolicyError, match="decision 'yolo'"):
        PolicyGate(policy_copy).decide(finding=SQLI, service=svc(), recipe="virtual_patch")


def test_no_policy_files_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"no \.rego policy files"):
        PolicyGate(tmp_path).decide(finding=SQLI, service=svc(), recipe="virtual_patch")


def test_bad_sandbox_result_is_refused(gate: PolicyGate) -> None:
    with pytest.raises(PolicyError, match="'passed' must be true, false or null"):
        gate.decide(finding=DEP, service=svc(), recipe="dependency_upgrade", sandbox={"passed": "yes"})

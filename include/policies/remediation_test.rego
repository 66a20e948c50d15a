# Tests for remediation.rego (run by selfheal.policy.regotest through regopy:
# every test_* rule must be true). regopy cannot replace the whole input
# (`with input as {...}`), so each field is replaced on its own in `decide`.
package selfheal.remediation_test

import rego.v1

svc(tier, mode) := {
	"name": "orders", "tier": tier, "owner": "team@example.com", "mode": mode,
	"in_change_window": null, "internet_facing": true,
}

sqli := {
	"severity": "high", "cwe": 89, "kind": "web", "confidence": "high", "ssvc": "Track*",
	"kev": false, "exploit_available": null, "exploitation": null, "epss": null, "cvss_score": 8.6,
}

vuln_dep := {
	"severity": "high", "cwe": 502, "kind": "dependency", "confidence": null, "ssvc": "Track",
	"kev": false, "exploit_available": false, "exploitation": "none", "epss": 0.02, "cvss_score": 7.5,
}

not_run := {"passed": null, "failed_checks": []}

passed := {"passed": true, "failed_checks": []}

plan_ok := {"id": "p-1", "needs_human": false, "failed": false, "reason": ""}

calm := {"change_freeze": false}

decide_with(f, s, r, sb, p, c) := out if {
	out := data.selfheal.remediation.result with input.finding as f
		with input.service as s
		with input.recipe as r
		with input.sandbox as sb
		with input.plan as p
		with input.context as c
}

decide(f, s, r, sb) := decide_with(f, s, r, sb, plan_ok, calm)

# --- auto

test_exploitable_injection_virtual_patch_is_auto if {
	out := decide(sqli, svc("medium", "mitigate"), "virtual_patch", not_run)
	out.decision == "auto"
	out.sandbox_required == false
	out.dry_run == false
	some r in out.reasons
	startswith(r, "instant virtual patch for exploitable injection CWE-89")
}

test_kev_listed_injection_virtual_patch_is_auto if {
	f := object.union(sqli, {"kind": "dependency", "cwe": 78, "kev": true})
	decide(f, svc("high", "heal"), "virtual_patch", not_run).decision == "auto"
}

test_dependency_upgrade_on_medium_tier_is_auto_after_sandbox if {
	out := decide(vuln_dep, svc("medium", "heal"), "dependency_upgrade", passed)
	out.decision == "auto"
	out.reasons == {"dependency_upgrade on tier medium passed the sandbox"}
}

test_config_hardening_before_sandbox_is_auto_pending_sandbox if {
	out := decide(vuln_dep, svc("low", "heal"), "config_hardening", not_run)
	out.decision == "auto"
	out.sandbox_required == true
	out.reasons == {"config_hardening on tier low: automatic once the sandbox passes"}
}

# --- approval

test_critical_tier_needs_approval_even_for_virtual_patches if {
	out := decide(sqli, svc("critical", "heal"), "virtual_patch", not_run)
	out.decision == "approval"
	"service tier critical: every change needs approval" in out.reasons
}

test_critical_tier_dependency_upgrade_needs_approval if {
	decide(vuln_dep, svc("critical", "heal"), "dependency_upgrade", passed).decision == "approval"
}

test_code_fix_always_needs_approval if {
	out := decide(sqli, svc("low", "heal"), "code_fix", passed)
	out.decision == "approval"
	out.reasons == {"code fixes always need a human review"}
}

test_virtual_patch_for_non_injection_needs_approval if {
	f := object.union(sqli, {"cwe": 287})
	out := decide(f, svc("medium", "heal"), "virtual_patch", not_run)
	out.decision == "approval"
	some r in out.reasons
	startswith(r, "virtual patch for CWE-287: not an injection-class weakness")
}

test_low_confidence_injection_is_not_exploitable if {
	f := object.union(sqli, {"confidence": "low"})
	out := decide(f, svc("medium", "heal"), "virtual_patch", not_run)
	out.decision == "approval"
	"virtual patch for CWE-89 without evidence of exploitability" in out.reasons
}

test_outside_change_window_waits_for_approval if {
	s := object.union(svc("medium", "heal"), {"in_change_window": false})
	out := decide(vuln_dep, s, "dependency_upgrade", passed)
	out.decision == "approval"
	out.reasons == {"outside the service's change window"}
}

test_change_window_does_not_hold_back_virtual_patches if {
	s := object.union(svc("medium", "heal"), {"in_change_window": false})
	decide(sqli, s, "virtual_patch", not_run).decision == "auto"
}

test_unknown_recipe_needs_approval if {
	decide(vuln_dep, svc("medium", "heal"), "rewrite_everything", passed).decision == "approval"
}

test_missing_owner_needs_approval if {
	s := object.union(svc("medium", "heal"), {"owner": ""})
	decide(vuln_dep, s, "dependency_upgrade", passed).decision == "approval"
}

# --- manual_only

test_no_recipe_is_manual_only if {
	out := decide(vuln_dep, svc("medium", "heal"), "none", not_run)
	out.decision == "manual_only"
	out.reasons == {"no recipe can fix this finding (none): a human must"}
}

test_manual_plan_is_manual_only_with_its_reason if {
	p := object.union(plan_ok, {"needs_human": true, "reason": "no fixed version published"})
	out := decide_with(vuln_dep, svc("low", "heal"), "manual", not_run, p, calm)
	out.decision == "manual_only"
	"the planner handed the plan to a human: no fixed version published" in out.reasons
}

test_failed_sandbox_is_manual_only_and_names_the_checks if {
	sb := {"passed": false, "failed_checks": ["latency", "exploit_replay"]}
	out := decide(vuln_dep, svc("low", "heal"), "dependency_upgrade", sb)
	out.decision == "manual_only"
	out.reasons == {"the sandbox failed (exploit_replay, latency): this patch cannot be deployed"}
}

test_manual_only_beats_approval if {
	out := decide(vuln_dep, svc("critical", "heal"), "none", not_run)
	out.decision == "manual_only"
}

# --- modes

test_observe_mode_is_a_dry_run if {
	out := decide(sqli, svc("medium", "observe"), "virtual_patch", not_run)
	out.decision == "auto"
	out.dry_run == true
	out.effective_mode == "observe"
}

test_mitigate_mode_applies_virtual_patches_but_does_not_deploy if {
	decide(sqli, svc("medium", "mitigate"), "virtual_patch", not_run).dry_run == false
	decide(vuln_dep, svc("medium", "mitigate"), "dependency_upgrade", passed).dry_run == true
}

test_change_freeze_lowers_heal_to_observe if {
	out := decide_with(vuln_dep, svc("medium", "heal"), "dependency_upgrade", passed, plan_ok, {"change_freeze": true})
	out.effective_mode == "observe"
	out.dry_run == true
	out.decision == "approval"
	"change freeze: observe only" in out.mode_reasons
}

# Tests for admission.rego (run through regopy by selfheal.policy.regotest).
package selfheal.admission_test

import rego.v1

heal := {"name": "orders", "tier": "medium", "owner": "team@example.com", "mode": "heal"}

verified := {"passed": true, "failed_checks": [], "image": "orders:patch-1"}

same_image := {"image": "orders:patch-1", "strategy": "canary"}

no_approval := {"approved": null, "by": null}

admit_with(sb, ro, d, ap, s, c) := out if {
	out := data.selfheal.admission.result with input.sandbox as sb
		with input.rollout as ro
		with input.decision as d
		with input.approval as ap
		with input.service as s
		with input.context as c
}

admit(sb, d, ap) := admit_with(sb, same_image, d, ap, heal, {"change_freeze": false})

test_verified_auto_patch_is_admitted if {
	out := admit(verified, "auto", no_approval)
	out.allow == true
	count(out.reasons) == 0
}

test_failed_sandbox_is_refused_with_the_failed_checks if {
	sb := {"passed": false, "failed_checks": ["tests", "latency"], "image": "orders:patch-1"}
	out := admit(sb, "auto", no_approval)
	out.allow == false
	out.reasons == {"the sandbox did not pass (failed: latency, tests)"}
}

test_missing_sandbox_result_is_refused if {
	sb := {"passed": null, "failed_checks": [], "image": "orders:patch-1"}
	out := admit(sb, "auto", no_approval)
	out.allow == false
	"no sandbox result: the patch was never verified" in out.reasons
}

test_approval_decision_needs_an_approval if {
	admit(verified, "approval", no_approval).allow == false
	admit(verified, "approval", {"approved": false, "by": "alice"}).allow == false
	admit(verified, "approval", {"approved": true, "by": "alice"}).allow == true
}

test_manual_only_is_never_admitted if {
	out := admit(verified, "manual_only", {"approved": true, "by": "alice"})
	out.allow == false
	"policy says only a human can fix this plan (manual_only)" in out.reasons
}

test_a_different_image_than_verified_is_refused if {
	out := admit_with(verified, {"image": "orders:latest"}, "auto", no_approval, heal, {"change_freeze": false})
	out.allow == false
	out.reasons == {"image orders:latest is not the image the sandbox verified (orders:patch-1)"}
}

test_modes_below_heal_refuse_deployments if {
	s := object.union(heal, {"mode": "mitigate"})
	out := admit_with(verified, same_image, "auto", no_approval, s, {"change_freeze": false})
	out.allow == false
	"service mode mitigate does not allow deployments (heal needed)" in out.reasons
}

test_change_freeze_refuses_deployments if {
	out := admit_with(verified, same_image, "auto", no_approval, heal, {"change_freeze": true})
	out.allow == false
}

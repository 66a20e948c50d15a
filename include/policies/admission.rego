# Deployment admission: the last check before a rollout touches traffic.
# A rollout is admitted only when nothing below denies it; every denial says why.
#
# Input (built by selfheal.policy.gate.PolicyGate.admit):
#   patch:    {id, recipe, service}
#   sandbox:  {passed (bool|null), failed_checks: [..], image: "<ref the sandbox verified>"}
#   rollout:  {image: "<ref about to be deployed>", strategy}
#   decision: the remediation decision for the plan ("auto"|"approval"|"manual_only")
#   approval: {approved (bool|null), by}
#   service:  {name, mode, ...}, context: {change_freeze}   (for the effective mode)
package selfheal.admission

import rego.v1

import data.selfheal.lib

sandbox_passed := object.get(input, ["sandbox", "passed"], null)

deny contains "no sandbox result: the patch was never verified" if sandbox_passed == null

deny contains msg if {
	sandbox_passed == false
	checks := object.get(input, ["sandbox", "failed_checks"], [])
	msg := lib.msg(["the sandbox did not pass (failed: ", concat(", ", sort(checks)), ")"])
}

deny contains msg if {
	not sandbox_passed in {true, false, null}
	msg := lib.msg(["sandbox.passed must be true or false, got ", sandbox_passed])
}

verified_image := object.get(input, ["sandbox", "image"], "")

deploy_image := object.get(input, ["rollout", "image"], "")

# What is deployed must be exactly what was verified.
deny contains "the rollout names no image" if deploy_image in {"", null}

deny contains "the sandbox result names no verified image" if verified_image in {"", null}

deny contains msg if {
	not deploy_image in {"", null}
	not verified_image in {"", null}
	verified_image != deploy_image
	msg := lib.msg(["image ", deploy_image, " is not the image the sandbox verified (", verified_image, ")"])
}

deny contains "policy says only a human can fix this plan (manual_only)" if {
	object.get(input, "decision", null) == "manual_only"
}

deny contains "approval required and not given" if {
	object.get(input, "decision", null) == "approval"
	object.get(input, ["approval", "approved"], null) != true
}

deny contains lib.msg(["unknown remediation decision ", d]) if {
	d := object.get(input, "decision", null)
	not d in {"auto", "approval", "manual_only"}
}

deny contains lib.msg(["service mode ", mode, " does not allow deployments (heal needed)"]) if {
	mode := data.selfheal.modes.effective_mode
	mode != "heal"
}

allow if count(deny) == 0

default allow := false

result := {"allow": allow, "reasons": deny}

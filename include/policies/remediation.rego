# Remediation gate: may a patch plan go ahead on its own, does it need a
# human's approval, or can only a human fix it?  decision is one of
# "auto", "approval", "manual_only", always with the reasons that decided it.
#
# Precedence: any manual_only reason wins, then any approval reason, then an
# auto reason; with none of them the answer is approval (nothing is automatic
# unless a rule below says so).
#
# Input (built by selfheal.policy.gate.PolicyGate.decide):
#   finding: {severity, cwe, kind, confidence, ssvc, kev, exploit_available,
#             exploitation ("none"|"poc"|"active"|null), epss, cvss_score}
#   service: {name, tier, owner, mode, in_change_window (bool|null), internet_facing}
#   recipe:  virtual_patch | dependency_upgrade | config_hardening |
#            base_image_refresh | code_fix | manual | none
#   plan:    {id, needs_human, failed, reason}
#   sandbox: {passed (bool|null: not run yet), failed_checks: [..]}
#   context: {change_freeze: bool}
#
# Tunables are the sets below: editing this file changes decisions, no code change.
package selfheal.remediation

import rego.v1

import data.selfheal.lib

# Injection-class weaknesses a gateway rule can block: SQL (89), OS command
# (78, 77), XSS (79), code (94, 95), path traversal (22), expression language
# (917), LDAP (90), XPath (643), XML (91), XXE (611), NoSQL (943), header
# injection / response splitting (113), template injection (1336).
injection_cwes := {22, 77, 78, 79, 89, 90, 91, 94, 95, 113, 611, 643, 917, 943, 1336}

# The most critical tier: every change there needs a human.
critical_tiers := {"critical"}

# Recipes that may go out on their own once the sandbox passed (non-critical tiers only).
auto_after_sandbox := {"dependency_upgrade", "config_hardening", "base_image_refresh"}

known_recipes := {
	"virtual_patch", "dependency_upgrade", "config_hardening",
	"base_image_refresh", "code_fix", "manual", "none",
}

no_recipe := {"manual", "none", ""}

# Scanner confidence that does not count as a demonstrated exploit.
weak_confidence := {"low", "false_positive"}

# Missing parts of the input never make a rule silently not apply: every
# field is read with a default that leads to the cautious answer.
finding := object.get(input, "finding", {})

service := object.get(input, "service", {})

plan := object.get(input, "plan", {})

recipe := object.get(input, "recipe", "none")

tier := object.get(service, "tier", "unknown")

sandbox_passed := object.get(input, ["sandbox", "passed"], null)

failed_checks := object.get(input, ["sandbox", "failed_checks"], [])

change_freeze := object.get(input, ["context", "change_freeze"], false)

injection if finding.cwe in injection_cwes

# Exploitable: known exploitation, a public exploit, an SSVC decision that
# calls for action, or a DAST scanner that triggered the flaw over the network
# (for custom code there is no CVE: the scanner's request is the exploit).
exploitable_because contains "listed in CISA KEV" if finding.kev == true

exploitable_because contains "public exploit available" if finding.exploit_available == true

exploitable_because contains lib.msg(["exploitation ", finding.exploitation]) if {
	finding.exploitation in {"poc", "active"}
}

exploitable_because contains lib.msg(["SSVC ", finding.ssvc]) if finding.ssvc in {"Act", "Attend"}

exploitable_because contains "triggered by a DAST scan over the network" if {
	finding.kind == "web"
	not object.get(finding, "confidence", null) in weak_confidence
}

exploitable if count(exploitable_because) > 0

cwe_label := lib.msg(["CWE-", finding.cwe]) if is_number(finding.cwe)

else := "no CWE"

# ------------------------------------------------------------------ manual_only

manual_only_reasons contains lib.msg(["no recipe can fix this finding (", recipe, "): a human must"]) if {
	recipe in no_recipe
}

manual_only_reasons contains lib.msg(["the planner handed the plan to a human: ", object.get(plan, "reason", "")]) if {
	plan.needs_human == true
}

manual_only_reasons contains lib.msg(["the recipe could not produce a safe patch: ", object.get(plan, "reason", "")]) if {
	plan.failed == true
}

# Messages are built with lib.msg (concat), never sprintf: see lib.rego.
manual_only_reasons contains msg if {
	sandbox_passed == false
	msg := lib.msg(["the sandbox failed (", concat(", ", sort(failed_checks)), "): this patch cannot be deployed"])
}

# ------------------------------------------------------------------ approval

approval_reasons contains lib.msg(["service tier ", tier, ": every change needs approval"]) if {
	tier in critical_tiers
}

approval_reasons contains "code fixes always need a human review" if recipe == "code_fix"

approval_reasons contains lib.msg(["unknown recipe ", recipe]) if not recipe in known_recipes

approval_reasons contains lib.msg(["unknown service tier ", tier]) if {
	not tier in {"critical", "high", "medium", "low"}
}

approval_reasons contains "the service has no owner to answer for an automatic change" if not has_owner

has_owner if {
	owner := object.get(service, "owner", null)
	is_string(owner)
	owner != ""
}

approval_reasons contains msg if {
	recipe == "virtual_patch"
	not injection
	msg := lib.msg(["virtual patch for ", cwe_label, ": not an injection-class weakness, it may block legitimate traffic"])
}

approval_reasons contains msg if {
	recipe == "virtual_patch"
	injection
	not exploitable
	msg := lib.msg(["virtual patch for ", cwe_label, " without evidence of exploitability"])
}

# Deploys wait for the window or a human; virtual patches are emergency measures and do not.
approval_reasons contains "outside the service's change window" if {
	recipe != "virtual_patch"
	object.get(service, "in_change_window", null) == false
}

approval_reasons contains "change freeze in force" if {
	recipe != "virtual_patch"
	change_freeze == true
}

# ------------------------------------------------------------------ auto

auto_reasons contains msg if {
	recipe == "virtual_patch"
	injection
	exploitable
	why := concat(", ", sort(exploitable_because))
	msg := lib.msg(["instant virtual patch for exploitable injection ", cwe_label, " (", why, ")"])
}

auto_reasons contains msg if {
	recipe in auto_after_sandbox
	sandbox_passed == true
	msg := lib.msg([recipe, " on tier ", tier, " passed the sandbox"])
}

auto_reasons contains msg if {
	recipe in auto_after_sandbox
	sandbox_passed == null
	msg := lib.msg([recipe, " on tier ", tier, ": automatic once the sandbox passes"])
}

# ------------------------------------------------------------------ decision

default decision := "approval"

decision := "manual_only" if count(manual_only_reasons) > 0

else := "approval" if count(approval_reasons) > 0

else := "auto" if count(auto_reasons) > 0

reasons := manual_only_reasons if decision == "manual_only"

else := approval_reasons if count(approval_reasons) > 0

else := auto_reasons if count(auto_reasons) > 0

else := {"no rule allows this plan to proceed on its own"}

# ------------------------------------------------------------------ mode

mode := data.selfheal.modes.effective_mode

# What the mode lets selfheal touch: virtual patches need mitigate, deploys need heal.
needed_mode := "mitigate" if recipe == "virtual_patch"

else := "heal"

dry_run if data.selfheal.modes.rank[mode] < data.selfheal.modes.rank[needed_mode]

mode_reasons contains lib.msg(["mode ", mode, ": report what would be done, touch no traffic (", recipe, " needs ", needed_mode, ")"]) if {
	dry_run
}

mode_reasons contains r if some r in data.selfheal.modes.reasons

result := {
	"decision": decision,
	"reasons": reasons,
	"effective_mode": mode,
	"mode_reasons": mode_reasons,
	"dry_run": dry_run,
	"sandbox_required": recipe != "virtual_patch",
}

default dry_run := false

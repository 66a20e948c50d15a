# Tests for modes.rego (run through regopy by selfheal.policy.regotest).
package selfheal.modes_test

import rego.v1

mode_of(m, c) := out if {
	s := {"name": "orders", "tier": "medium", "mode": m}
	out := data.selfheal.modes.result with input.service as s with input.context as c
}

calm := {"change_freeze": false}

test_catalog_mode_holds_without_caps if {
	mode_of("heal", calm).effective_mode == "heal"
	mode_of("mitigate", calm).effective_mode == "mitigate"
	mode_of("observe", calm).effective_mode == "observe"
}

test_freeze_lowers_every_mode_to_observe if {
	every m in ["observe", "mitigate", "heal"] {
		mode_of(m, {"change_freeze": true}).effective_mode == "observe"
	}
}

test_unknown_mode_falls_back_to_observe if {
	out := mode_of("turbo", calm)
	out.effective_mode == "observe"
	"unknown catalog mode turbo: observe only" in out.reasons
}

test_service_cap_lowers_but_never_raises if {
	out := data.selfheal.modes.result with input.service as {"name": "orders", "mode": "heal"}
		with input.context as calm
		with data.selfheal.modes.service_caps as {"orders": "mitigate"}
	out.effective_mode == "mitigate"
	raised := data.selfheal.modes.result with input.service as {"name": "orders", "mode": "observe"}
		with input.context as calm
		with data.selfheal.modes.service_caps as {"orders": "heal"}
	raised.effective_mode == "observe"
}

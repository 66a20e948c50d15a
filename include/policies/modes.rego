# Adoption modes: how far selfheal may act on a service.
#
#   observe   scan, triage, plan and verify in the sandbox; never touch traffic
#   mitigate  observe + apply instant virtual patches at the gateway
#   heal      the full loop: deploy verified patches (blue/green or canary)
#
# The catalog sets each service's mode (new services default to observe).
# Policy can only LOWER it: every rule below proposes a cap, and the
# effective mode is the lowest of the catalog mode and all caps. The Python
# side (selfheal.policy) takes the minimum with the catalog mode again, so a
# policy that tried to raise a mode would still not raise it.
#
# Input: {"service": {"name", "mode", "tier", ...}, "context": {"change_freeze": bool}}
package selfheal.modes

import rego.v1

import data.selfheal.lib

order := ["observe", "mitigate", "heal"]

rank := {"observe": 0, "mitigate": 1, "heal": 2}

# Per-service caps, e.g. {"payments": "mitigate"} while a migration is running.
service_caps := {}

service := object.get(input, "service", {})

catalog_mode := object.get(service, "mode", null)

# Each cap: {"mode": <mode>, "reason": <why>}. There is always at least one.
caps contains {"mode": catalog_mode, "reason": lib.msg(["catalog mode ", catalog_mode])} if rank[catalog_mode]

caps contains {"mode": "observe", "reason": lib.msg(["unknown catalog mode ", catalog_mode, ": observe only"])} if {
	not rank[catalog_mode]
}

caps contains {"mode": "observe", "reason": "change freeze: observe only"} if {
	object.get(input, ["context", "change_freeze"], false) == true
}

caps contains {"mode": cap, "reason": lib.msg(["policy caps ", service.name, " at ", cap])} if {
	cap := service_caps[service.name]
	rank[cap]
}

caps contains {"mode": "observe", "reason": lib.msg(["policy cap ", cap, " for ", service.name, " is not a mode: observe only"])} if {
	cap := service_caps[service.name]
	not rank[cap]
}

effective_rank := min({rank[c.mode] | some c in caps})

effective_mode := order[effective_rank]

# The caps that set the effective mode (several may agree).
reasons contains c.reason if {
	some c in caps
	rank[c.mode] == effective_rank
}

result := {"effective_mode": effective_mode, "reasons": reasons}

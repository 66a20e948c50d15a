"""Policy gate: OPA Rego policies (include/policies) evaluated with regopy.

``default_gate().decide(...)`` says auto / approval / manual_only for a patch
plan, with reasons and the enforced adoption mode; ``admit(...)`` is the
deployment admission check; ``effective_mode(...)`` the mode alone.
"""

from selfheal.policy.engine import PolicyEngine, PolicyError
from selfheal.policy.gate import (
    AdmissionResult,
    ModeResult,
    PolicyDecision,
    PolicyGate,
    default_gate,
    lower_mode,
    primary_finding,
)
from selfheal.policy.window import WindowError, in_window

__all__ = [
    "AdmissionResult",
    "ModeResult",
    "PolicyDecision",
    "PolicyEngine",
    "PolicyError",
    "PolicyGate",
    "WindowError",
    "default_gate",
    "in_window",
    "lower_mode",
    "primary_finding",
]

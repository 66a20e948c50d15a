"""Remediation: turning triaged findings into mitigations and patches (see each module)."""

"""Typed errors of the remediation loop, so the Airflow layer retries only what time can fix.

``TransientError``: the other side did not answer (gateway busy with another
rollout, Docker or the database unreachable); retried with backoff.
``PermanentError``: retrying cannot change the answer (unknown patch, broken
configuration, a state the lifecycle forbids); the task fails at once.
"""

from __future__ import annotations


class RemediationError(RuntimeError):
    """Base class; the message names the patch or finding and says what went wrong."""


class TransientError(RemediationError):
    """Worth retrying later."""


class GatewayBusy(TransientError):
    """Another rollout holds the gateway (one log collector per gateway at a time)."""


class PermanentError(RemediationError):
    """Retrying cannot help."""


class UnknownPatch(PermanentError):
    """No patch with that id in the ``patches`` table."""


class ConfigurationError(PermanentError):
    """A Variable, catalog entry or settings document is missing or malformed."""

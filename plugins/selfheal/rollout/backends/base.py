"""The one interface every deployment backend implements (Docker here, Kubernetes in production).

Strategies (blue/green, canary) only talk to this interface, so the same
rollout code drives containers behind HAProxy and Deployments behind a
Service/HTTPRoute.

Semantics every implementation keeps:
- `deploy` is idempotent by (service, patch_id, color): a second call returns the
  existing release and starts nothing.
- `set_traffic` takes percentages by color that sum to 100; it is the only call
  that moves user traffic, and it is atomic from the user's point of view.
- `snapshot`/`restore` capture and put back everything needed to undo a
  rollout (weights, selector, replicas); strategies take a snapshot before the
  first traffic change and restore it on any failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class BackendError(RuntimeError):
    """A backend operation failed; the message says which service and what."""


class UnhealthyRelease(BackendError):
    """A release did not become healthy in time; it never received traffic."""


@dataclass(frozen=True)
class Release:
    """One running version of a service."""

    service: str
    version: str
    color: str
    image: str
    patch_id: str | None = None
    endpoint: str | None = None  # host:port where this release answers directly (pre-promotion checks)
    ref: str = ""  # backend-specific id: container id, Deployment name


@dataclass(frozen=True)
class TrafficSnapshot:
    """Everything needed to put traffic back exactly as it was."""

    service: str
    weights: Mapping[str, int]
    details: Mapping[str, Any] = field(default_factory=dict)  # backend-specific: selector, replicas, servers


@runtime_checkable
class DeploymentBackend(Protocol):
    def deploy(self, service: str, *, version: str, color: str, image: str, patch_id: str | None) -> Release: ...

    def wait_healthy(self, release: Release, timeout_s: float) -> None: ...

    def set_traffic(self, service: str, weights: Mapping[str, int]) -> None: ...

    def current_traffic(self, service: str) -> dict[str, int]: ...

    def snapshot(self, service: str) -> TrafficSnapshot: ...

    def restore(self, snapshot: TrafficSnapshot) -> None: ...

    def retire(self, release: Release) -> None: ...

    def releases(self, service: str) -> list[Release]: ...


def validate_weights(weights: Mapping[str, int]) -> dict[str, int]:
    """Percentages by color: integers 0..100 summing to 100 (anything else is refused before traffic moves)."""
    out = {}
    for color, w in weights.items():
        if not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= 100:
            raise BackendError(f"weight for {color!r} must be an integer 0..100, got {w!r}")
        out[color] = w
    if sum(out.values()) != 100:
        raise BackendError(f"weights must sum to 100, got {sum(out.values())} ({out})")
    return out

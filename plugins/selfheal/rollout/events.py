"""Where rollout events go: every verdict and traffic change a strategy records is a
row of `rollout_events` (what the UI, metrics and post-mortems read)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from selfheal.pipeline_state import rollout_events


class RolloutEventStore:
    """A strategy's `record` callback that writes each event at once (its own short
    transaction), so a rollout killed half way still leaves its trail."""

    def __init__(self, engine: sa.Engine, patch_id: str | None = None) -> None:
        self.engine = engine
        self.patch_id = patch_id

    def __call__(self, event: dict[str, Any]) -> None:
        at = event.get("at")
        row = {
            "at": datetime.fromtimestamp(at, UTC) if isinstance(at, int | float) else datetime.now(UTC),
            "service": str(event.get("service") or ""),
            "patch_id": event.get("patch_id") or self.patch_id,
            "kind": str(event.get("event") or "event")[:32],
            "detail": event,
        }
        with self.engine.begin() as conn:
            conn.execute(rollout_events.insert(), row)

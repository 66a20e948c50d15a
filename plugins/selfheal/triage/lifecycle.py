"""The finding lifecycle: the one place that says which status may follow which.

Every status change goes through this module: ``set_status`` (humans, the
mitigation and patch DAGs) checks a single transition with ``check``; the bulk
paths of the store (reopen on ingest, auto-resolve after a complete scan) build
their SQL from ``REOPEN_FROM`` / ``AUTO_RESOLVE_FROM``, which are verified
against the same table when this module is imported.

::

    new ─► open ─► mitigated ─► patching ─► resolved ─► reopened ─► (open, mitigated, …)
     │       │         ▲  │         │
     └───────┴─────────┴──┴─────────┴──► accepted / false_positive ─► open

* ``new``: first sighting, nobody looked at it yet.
* ``open``: triaged, waiting for a mitigation or a patch.
* ``mitigated``: a virtual patch (gateway rule) blocks the attack; the flaw is still there.
* ``patching``: a real patch is being verified or rolled out.
* ``resolved``: a complete re-scan no longer sees it, or a human says so.
* ``reopened``: resolved, then seen again. Treated like ``open``.
* ``accepted`` (risk accepted) and ``false_positive``: human decisions; a
  re-scan does not touch them, and only a human moves them back to ``open``.

Moving to the status a finding already has is a no-op (idempotent re-runs),
not an error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

Status = Literal["new", "open", "mitigated", "patching", "resolved", "accepted", "false_positive", "reopened"]

STATUSES: tuple[Status, ...] = (
    "new",
    "open",
    "mitigated",
    "patching",
    "resolved",
    "accepted",
    "false_positive",
    "reopened",
)

_HUMAN_CLOSE: frozenset[Status] = frozenset({"accepted", "false_positive"})

TRANSITIONS: dict[Status, frozenset[Status]] = {
    "new": frozenset({"open", "mitigated", "patching", "resolved"}) | _HUMAN_CLOSE,
    "open": frozenset({"mitigated", "patching", "resolved"}) | _HUMAN_CLOSE,
    # open again: the virtual patch was removed (e.g. it broke legitimate traffic)
    "mitigated": frozenset({"open", "patching", "resolved"}) | _HUMAN_CLOSE,
    # open / mitigated again: the patch failed verification or was rolled back
    "patching": frozenset({"open", "mitigated", "resolved"}) | _HUMAN_CLOSE,
    "resolved": frozenset({"reopened"}),
    "reopened": frozenset({"open", "mitigated", "patching", "resolved"}) | _HUMAN_CLOSE,
    "accepted": frozenset({"open", "false_positive"}),
    "false_positive": frozenset({"open", "accepted"}),
}

#: Statuses a complete scan that no longer sees the finding moves to ``resolved``.
#: Not the human decisions (accepted / false_positive): a scan must not overrule them.
AUTO_RESOLVE_FROM: frozenset[Status] = frozenset({"new", "open", "mitigated", "patching", "reopened"})
#: Statuses a new sighting moves to ``reopened``.
REOPEN_FROM: frozenset[Status] = frozenset({"resolved"})
#: Statuses that still need work (prioritization scores these).
ACTIVE: frozenset[Status] = frozenset({"new", "open", "mitigated", "patching", "reopened"})


class InvalidTransition(ValueError):
    """A status change the lifecycle does not allow (names the finding and both statuses)."""


def check(current: str, new: str, finding: object = "finding") -> bool:
    """Validate ``current -> new``; return False for a no-op (same status), True for a change.

    Raises InvalidTransition for an unknown status or a transition not in TRANSITIONS.
    """
    if new not in TRANSITIONS:
        raise InvalidTransition(f"{finding}: unknown status {new!r}; expected one of {', '.join(STATUSES)}")
    if current not in TRANSITIONS:
        raise InvalidTransition(f"{finding}: stored status {current!r} is not a known status")
    if current == new:
        return False
    if new not in TRANSITIONS[current]:  # type: ignore[index]
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing"  # type: ignore[index]
        raise InvalidTransition(f"{finding}: cannot go from {current!r} to {new!r} (allowed: {allowed})")
    return True


def timestamp_updates(new: str, now: datetime) -> dict[str, datetime | None]:
    """Columns besides ``status``/``status_changed_at`` that a move to ``new`` sets.

    ``mitigated_at`` says a virtual patch is in place (prioritization lowers
    the priority for it): set on ``mitigated``, kept while ``patching`` or once
    resolved, cleared when the finding is plainly open again. ``resolved_at``
    is set on ``resolved`` and cleared when the finding comes back.
    """
    if new == "mitigated":
        return {"mitigated_at": now}
    if new == "resolved":
        return {"resolved_at": now}
    if new == "reopened":
        return {"resolved_at": None, "mitigated_at": None}
    if new == "open":
        return {"mitigated_at": None, "resolved_at": None}
    return {}


def _verify() -> None:
    for s in AUTO_RESOLVE_FROM:
        assert "resolved" in TRANSITIONS[s], f"auto-resolve from {s} is not a lifecycle transition"
    for s in REOPEN_FROM:
        assert "reopened" in TRANSITIONS[s], f"reopen from {s} is not a lifecycle transition"
    assert set(TRANSITIONS) == set(STATUSES)


_verify()

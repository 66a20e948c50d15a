"""The finding lifecycle table."""

from __future__ import annotations

import pytest

from selfheal.triage import lifecycle as L


def test_every_status_has_a_row_and_only_known_targets() -> None:
    assert set(L.TRANSITIONS) == set(L.STATUSES)
    for targets in L.TRANSITIONS.values():
        assert targets <= set(L.STATUSES)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("new", "open"),
        ("open", "mitigated"),
        ("mitigated", "patching"),
        ("patching", "resolved"),
        ("resolved", "reopened"),
        ("reopened", "open"),
        ("new", "accepted"),
        ("accepted", "open"),
        ("open", "false_positive"),
        ("false_positive", "open"),
        ("patching", "mitigated"),
        ("mitigated", "open"),
    ],
)
def test_allowed(old: str, new: str) -> None:
    assert L.check(old, new) is True


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("resolved", "open"),
        ("resolved", "new"),
        ("open", "new"),
        ("accepted", "resolved"),
        ("false_positive", "mitigated"),
        ("new", "reopened"),
        ("open", "reopened"),
    ],
)
def test_invalid_transitions_raise_with_both_statuses(old: str, new: str) -> None:
    with pytest.raises(L.InvalidTransition, match=f"finding 7: cannot go from '{old}' to '{new}'"):
        L.check(old, new, "finding 7")


def test_same_status_is_a_no_op_and_unknown_statuses_raise() -> None:
    assert L.check("open", "open") is False
    with pytest.raises(L.InvalidTransition, match="unknown status 'closed'"):
        L.check("open", "closed")
    with pytest.raises(L.InvalidTransition, match="stored status 'weird'"):
        L.check("weird", "open")


def test_bulk_paths_are_lifecycle_transitions() -> None:
    for s in L.AUTO_RESOLVE_FROM:
        L.check(s, "resolved")
    for s in L.REOPEN_FROM:
        L.check(s, "reopened")
    assert not {"accepted", "false_positive"} & L.AUTO_RESOLVE_FROM  # a scan does not overrule a human


def test_timestamps() -> None:
    from datetime import UTC, datetime

    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert L.timestamp_updates("mitigated", now) == {"mitigated_at": now}
    assert L.timestamp_updates("resolved", now) == {"resolved_at": now}
    assert L.timestamp_updates("reopened", now) == {"resolved_at": None, "mitigated_at": None}
    assert L.timestamp_updates("patching", now) == {}

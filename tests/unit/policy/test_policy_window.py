"""Change windows from the catalog's change_window strings."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from selfheal.policy.window import WindowError, in_window

MON_10_UTC = datetime(2025, 1, 6, 10, 0, tzinfo=UTC)  # a Monday
SAT_01_UTC = datetime(2025, 1, 4, 1, 0, tzinfo=UTC)
SUN_01_UTC = datetime(2025, 1, 5, 1, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("spec", "now", "expected"),
    [
        (None, MON_10_UTC, None),
        ("", MON_10_UTC, None),
        ("Mon-Fri 09:00-17:00", MON_10_UTC, True),
        ("Mon-Fri 09:00-17:00 UTC", SAT_01_UTC, False),
        ("Mon-Fri 11:00-17:00 Europe/Berlin", MON_10_UTC, True),  # 11:00 in Berlin
        ("Mon-Fri 12:00-17:00 Europe/Berlin", MON_10_UTC, False),
        ("daily 22:00-02:00", SAT_01_UTC, True),  # Friday night's window, past midnight
        ("Fri 22:00-02:00", SAT_01_UTC, True),
        ("Sat 22:00-02:00", SAT_01_UTC, False),  # Saturday's window starts that evening
        ("Sat 22:00-02:00", SUN_01_UTC, True),
        ("Fri-Mon 00:00-23:59", SUN_01_UTC, True),
        ("sat,sun 00:00-06:00", SUN_01_UTC, True),
        ("*  09:00 - 17:00", MON_10_UTC, True),
    ],
)
def test_in_window(spec: str | None, now: datetime, expected: bool | None) -> None:
    assert in_window(spec, now) is expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("weekdays", "expected 'DAYS HH:MM-HH:MM"),
        ("Funday 09:00-10:00", "unknown day"),
        ("Mon 25:00-26:00", "hour must be in"),
        ("Mon 09:00-10:00 Mars/Olympus", "unknown time zone"),
    ],
)
def test_bad_windows_are_named(spec: str, message: str) -> None:
    with pytest.raises(WindowError, match=message) as e:
        in_window(spec, MON_10_UTC)
    assert spec in str(e.value)

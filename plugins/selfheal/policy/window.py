"""Change windows: when a service accepts deployments without a human.

The catalog's ``change_window`` is a short string, evaluated here (Python has
the clock and the time zone database; the policy receives a plain
``in_change_window`` boolean)::

    "Mon-Fri 09:00-17:00 Europe/Berlin"
    "Sat,Sun 02:00-06:00"            (UTC when no zone is given)
    "daily 22:00-02:00 UTC"          (a window may run past midnight: it belongs
                                      to the day it starts on)

Days: ``daily`` / ``*``, a name (Mon..Sun), a range (Mon-Fri, Fri-Mon) or a
comma list of those.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPEC = re.compile(r"^\s*(\S+)\s+(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})(?:\s+(\S+))?\s*$")


class WindowError(ValueError):
    """A change_window string that cannot be understood."""


def _days(text: str, spec: str) -> set[int]:
    if text.lower() in ("daily", "*"):
        return set(range(7))
    out: set[int] = set()
    for part in text.lower().split(","):
        lo, _, hi = part.partition("-")
        try:
            a = DAYS.index(lo[:3])
            b = DAYS.index(hi[:3]) if hi else a
        except ValueError:
            raise WindowError(
                f"change_window {spec!r}: unknown day in {part!r} (use Mon..Sun or daily)"
            ) from None
        i = a
        out.add(i)
        while i != b:
            i = (i + 1) % 7
            out.add(i)
    return out


def parse(spec: str) -> tuple[set[int], time, time, ZoneInfo]:
    m = _SPEC.match(spec)
    if not m:
        raise WindowError(
            f"change_window {spec!r}: expected 'DAYS HH:MM-HH:MM [ZONE]', e.g. 'Mon-Fri 09:00-17:00 UTC'"
        )
    days, h1, m1, h2, m2, zone = m.groups()
    try:
        start, end = time(int(h1), int(m1)), time(int(h2), int(m2))
    except ValueError as e:
        raise WindowError(f"change_window {spec!r}: {e}") from None
    try:
        tz = ZoneInfo(zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise WindowError(f"change_window {spec!r}: unknown time zone {zone!r}") from None
    return _days(days, spec), start, end, tz


def in_window(spec: str | None, now: datetime | None = None) -> bool | None:
    """True/False for a window, None when the service has none (always open)."""
    if not spec:
        return None
    days, start, end, tz = parse(spec)
    local = (now or datetime.now(UTC)).astimezone(tz)
    t = local.time()
    if start <= end:
        return local.weekday() in days and start <= t < end
    # Past midnight: the late part belongs to today's window, the early part to yesterday's.
    if t >= start:
        return local.weekday() in days
    if t < end:
        return (local - timedelta(days=1)).weekday() in days
    return False

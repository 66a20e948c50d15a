"""Error classes every scanner hook raises, so triggers can decide retry-or-fail in one place.

A waiting scan must survive a scanner restart (connection refused, HTTP 5xx,
socket gone: keep polling until the deadline) but must stop at once on a
mistake nobody can fix by waiting (wrong API key or password, a scan or task
that does not exist). Hooks translate their client library's exceptions into
these three kinds; messages never contain secrets.
"""

from __future__ import annotations


class ScannerError(RuntimeError):
    """A scanner call failed; the message names the scanner and the problem in one line."""


class ScannerTransientError(ScannerError):
    """The scanner could not be reached or answered 5xx: worth retrying."""


class ScannerAuthError(ScannerError):
    """The scanner refused our credentials: retrying will not help."""


class ScannerNotFoundError(ScannerError):
    """The scan, task or report asked for does not exist on the scanner."""

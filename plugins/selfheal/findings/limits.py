"""Size limits for scanner input, and the text clipping every parser applies.

Scanner output is attacker-controlled: a compromised target can put megabytes
into an evidence field, and a hostile or broken scanner can send a report of
any size. These bounds keep one bad report from exhausting memory or the
triage table, while staying far above what real scans produce.

Decisions (each has a test in tests/unit/findings/test_bad_input.py):

* ``MAX_REPORT_BYTES`` (256 MiB): a larger report is rejected with ParseError
  before it is decoded (the CLI checks the file size before reading it).
* ``MAX_FINDINGS`` (500,000): a report with more items than this is rejected
  with ParseError *before* findings are built. Every scanner we poll pages its
  API (ZAP ``start``/``count``, Inspector2 ``nextToken``, GMP ``rows``), so a
  bigger single report means a misconfigured sensor or a hostile input. The
  count is taken cheaply: XML by counting the item tag in the raw bytes, JSON
  by counting ``{`` (an upper bound on objects) and, only when that exceeds the
  limit, by decoding the item array into empty structs (24 bytes per item).
  So "a million results" fails fast with a clear error in bounded memory.
* Text fields are clipped (``clip``) with a visible marker: evidence to
  ``EVIDENCE_MAX_CHARS``, long prose to ``TEXT_MAX_CHARS``, titles to
  ``TITLE_MAX_CHARS``, identifiers and URLs to ``SHORT_MAX_CHARS``. NUL characters (which PostgreSQL text columns
  reject) are replaced by U+FFFD.
"""

from __future__ import annotations

MAX_REPORT_BYTES = 256 * 1024 * 1024
MAX_FINDINGS = 500_000

EVIDENCE_MAX_CHARS = 4096
TEXT_MAX_CHARS = 16384
SHORT_MAX_CHARS = 2048
TITLE_MAX_CHARS = 300

TRUNCATION_MARKER = "…[truncated {n} chars]"


def clip(text: str, limit: int) -> str:
    """Bound ``text`` to ``limit`` characters (plus a marker saying how much was cut)
    and replace NUL characters. Hot path: the common case is two cheap checks."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if len(text) > limit:
        cut = len(text) - limit
        return text[:limit] + TRUNCATION_MARKER.format(n=cut)
    return text

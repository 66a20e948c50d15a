"""Canonical JSON and the entry hash of the audit chain (format version 1).

Why a canonical form: a hash is over bytes, but the same JSON value has many
spellings (key order, whitespace, escapes, number formats). Every writer and
every verifier must produce the same bytes for the same value, on any Python,
from any database driver, years later.

Canonicalization (what ``canonical_json`` returns) follows RFC 8785, the JSON
Canonicalization Scheme (JCS), through the ``rfc8785`` package (Trail of Bits;
a spec-tested implementation is worth more here than a hand-written one):

* UTF-8 bytes, no whitespace anywhere (``{"a":1,"b":[true,null]}``);
* object members sorted by key, comparing keys as UTF-16 code units (for keys
  inside the Basic Multilingual Plane this is plain code-point order);
* strings: only ``"`` ``\\`` and control characters below U+0020 are escaped
  (``\\b \\t \\n \\f \\r`` short forms, others as lowercase ``\\u00xx``);
  everything else, including non-ASCII, is written as raw UTF-8;
* numbers in ECMAScript ``Number.prototype.toString`` form: ``1.0`` -> ``1``,
  ``1e-7`` -> ``1e-7``, ``1e21`` -> ``1e+21``; integers must lie within
  +/-(2**53 - 1) (larger ones would not survive a round trip through an IEEE
  double, so ``normalize`` turns them into strings before hashing).

Before canonicalization, ``normalize`` maps a payload onto the value domain
JCS (and both PostgreSQL ``json`` and SQLite) accept without loss: str keys
only, no NUL or lone surrogates in strings (replaced by U+FFFD), finite floats
(NaN/Infinity become the strings "NaN"/"Infinity"), tuples/sets -> lists,
datetimes -> ISO 8601 strings, Decimal/UUID/Path/Enum -> str. A normalized
value round-trips through ``json.dumps``/``json.loads`` unchanged, so what the
verifier reads back from the database canonicalizes to the same bytes.

Entry hash::

    hash = SHA-256( prev_hash_hex_ascii || canonical_json(document) )   (lowercase hex)

where ``document`` is the JSON object ``{"action", "actor", "idempotency_key",
"payload", "seq", "subject", "ts"}`` (absent values are ``null``), ``ts`` is
UTC with microseconds, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, and the first entry's
``prev_hash`` is 64 zeros. ``seq`` is inside the hashed document, so moving a
row to another position breaks its own hash.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any
from uuid import UUID

import rfc8785

GENESIS_HASH = "0" * 64
MAX_SAFE_INT = 2**53 - 1
MAX_DEPTH = 32

_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")
# Built once: json.dumps with options builds a new encoder on every call.
_CANONICAL_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_STRING_ENCODER = json.JSONEncoder(ensure_ascii=False)


class PayloadError(ValueError):
    """A payload cannot be represented as audit JSON (wrong shape, too deep, clashing keys)."""


def _clean_str(s: str) -> str:
    return _BAD_CHARS.sub("\ufffd", s) if _BAD_CHARS.search(s) else s


def normalize(value: Any, _depth: int = 0) -> Any:
    """Map ``value`` onto the lossless JSON domain described in the module docstring."""
    if _depth > MAX_DEPTH:
        raise PayloadError(f"payload nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, Enum):  # before str/int: (str, Enum) members would keep their class
        return normalize(value.value, _depth + 1)
    if isinstance(value, str):
        return _clean_str(str(value))
    if isinstance(value, int):
        return value if -MAX_SAFE_INT <= value <= MAX_SAFE_INT else str(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, datetime):
        return ts_text(value) if value.tzinfo else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (Decimal, UUID, PurePath)):
        return str(value)
    if isinstance(value, bytes):
        return _clean_str(value.decode("utf-8", errors="replace"))
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = _clean_str(k) if isinstance(k, str) else str(normalize(k, _depth + 1))
            if key in out:
                raise PayloadError(f"payload has two keys that both become {key!r}")
            out[key] = normalize(v, _depth + 1)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [normalize(v, _depth + 1) for v in value]
        if isinstance(value, (set, frozenset)):
            items.sort(key=lambda x: canonical_json(x))  # a set has no order; give it one
        return items
    if hasattr(value, "model_dump"):  # pydantic models
        return normalize(value.model_dump(mode="json"), _depth + 1)
    raise PayloadError(f"cannot store a {type(value).__name__} in an audit payload")


def _plain(v: Any) -> bool:
    """Whether ``json.dumps`` writes exactly the JCS bytes for ``v``.

    True for str/bool/None, integers in the safe range, non-zero floats whose
    ``repr`` has neither an exponent nor a trailing ``.0`` (rfc8785 itself
    prints those as ``str(f)``), lists of such values, and objects whose keys
    are ASCII (code-point order is then UTF-16 order). Anything else goes
    through ``rfc8785``.
    """
    t = type(v)
    if t is str or t is bool or v is None:
        return True
    if t is int:
        return -MAX_SAFE_INT <= v <= MAX_SAFE_INT
    if t is float:
        r = repr(v)
        return v != 0 and "e" not in r and "n" not in r and not r.endswith(".0")
    if t is dict:
        return all(type(k) is str and k.isascii() and _plain(x) for k, x in v.items())
    if t is list:
        return all(_plain(x) for x in v)
    return False


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) bytes of an already normalized JSON value.

    ``rfc8785`` is the definition; it is pure Python (about 80 us for a small
    payload), so values where the C ``json`` encoder provably writes the same
    bytes (see ``_plain``) take that path, several times faster, which is what
    lets ``verify`` walk large ledgers quickly. A property test holds the two
    paths to each other.
    """
    if _plain(value):
        try:
            return _CANONICAL_ENCODER.encode(value).encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: let rfc8785 refuse it with its own error
    return rfc8785.dumps(value)


def ts_text(ts: datetime) -> str:
    """The one textual form of a timestamp inside the hashed document."""
    if ts.tzinfo is None:
        raise ValueError(f"naive datetime {ts!r}: audit timestamps must be timezone-aware")
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_document(
    *,
    seq: int,
    ts: datetime,
    actor: str,
    action: str,
    subject: str | None,
    payload: Mapping[str, Any],
    idempotency_key: str | None,
) -> dict[str, Any]:
    return {
        "action": action,
        "actor": actor,
        "idempotency_key": idempotency_key,
        "payload": payload,
        "seq": seq,
        "subject": subject,
        "ts": ts_text(ts),
    }


def entry_hash(prev_hash: str, document: Mapping[str, Any]) -> str:
    """SHA-256 over the previous hash (hex, ASCII) followed by the canonical document (the definition)."""
    h = hashlib.sha256(prev_hash.encode("ascii"))
    h.update(canonical_json(document))
    return h.hexdigest()


def string_json(value: str | None) -> bytes:
    """JCS bytes of a string or null, the fast way.

    ``json.dumps(ensure_ascii=False)`` escapes exactly what RFC 8785 escapes
    (``"``, ``\\`` and controls below U+0020, short forms where JCS has them,
    others as lowercase ``\\u00xx``); a lone surrogate fails to encode, as it does
    in JCS (``normalize`` replaces them). A property test holds it to ``canonical_json``.
    """
    if value is None:
        return b"null"
    return _STRING_ENCODER.encode(value).encode("utf-8")


class DocumentBytes:
    """The canonical document spliced from parts, so the payload is canonicalized once.

    The document's member names are fixed ASCII strings, so their JCS order is
    known (action, actor, idempotency_key, payload, seq, subject, ts) and the
    canonical bytes are exactly ``head + seq digits + tail``. Used by writers
    (one hash per entry) and by the verifier (which may try several seqs for
    a moved row); a property test checks it equals ``canonical_json`` of
    ``entry_document``.
    """

    __slots__ = ("head", "tail")

    def __init__(
        self,
        *,
        ts: datetime,
        actor: str,
        action: str,
        subject: str | None,
        payload_json: bytes,
        idempotency_key: str | None,
    ) -> None:
        self.head = b"".join(
            (
                b'{"action":',
                string_json(action),
                b',"actor":',
                string_json(actor),
                b',"idempotency_key":',
                string_json(idempotency_key),
                b',"payload":',
                payload_json,
                b',"seq":',
            )
        )
        self.tail = b"".join(
            (b',"subject":', string_json(subject), b',"ts":', string_json(ts_text(ts)), b"}")
        )

    def hash(self, prev_hash: str, seq: int) -> str:
        return hashlib.sha256(
            b"".join((prev_hash.encode("ascii"), self.head, b"%d" % seq, self.tail))
        ).hexdigest()

"""Canonical JSON (RFC 8785) and the entry hash: the exact bytes that are hashed."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from selfheal.audit.canonical import (
    GENESIS_HASH,
    DocumentBytes,
    PayloadError,
    canonical_json,
    entry_document,
    entry_hash,
    normalize,
    string_json,
    ts_text,
)
from selfheal.audit.ledger import _SeqHasher


def test_sorted_keys_no_whitespace_utf8() -> None:
    assert canonical_json({"b": 1, "a": [True, None, "é"]}) == '{"a":[true,null,"é"],"b":1}'.encode()


def test_numbers_follow_ecmascript() -> None:
    # RFC 8785 section 3.2.2.3: numbers as JavaScript prints them.
    assert canonical_json([1.0, 1e-7, 1e21, 0.5, -0.0, 100]) == b"[1,1e-7,1e+21,0.5,0,100]"


def test_keys_sort_by_utf16_code_units() -> None:
    # U+1F600 is a surrogate pair (D83D DE00): it sorts before U+FB01 in UTF-16, after it by code point.
    assert canonical_json({"\ufb01": 1, "\U0001f600": 2}).startswith('{"\U0001f600"'.encode())


def test_only_quote_backslash_and_controls_are_escaped() -> None:
    assert canonical_json('a"b\\c\n\x01/\u2028') == b'"a\\"b\\\\c\\n\\u0001/\xe2\x80\xa8"'


class Color(str, Enum):  # noqa: UP042 - the (str, Enum) form is what must be handled
    RED = "red"


def test_normalize_maps_python_values_onto_lossless_json() -> None:
    out = normalize(
        {
            "big": 2**60,
            "nan": float("nan"),
            "inf": float("-inf"),
            "nul": "a\x00b",
            "surrogate": "x\ud800",
            "when": datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2))),
            "dec": Decimal("1.10"),
            "enum": Color.RED,
            "set": {"b", "a"},
            "tuple": (1, 2),
            "bytes": b"\xffok",
            3: "int key",
        }
    )
    assert out == {
        "big": str(2**60),
        "nan": "NaN",
        "inf": "-Infinity",
        "nul": "a\ufffdb",
        "surrogate": "x\ufffd",
        "when": "2025-01-02T01:04:05.000006Z",
        "dec": "1.10",
        "enum": "red",
        "set": ["a", "b"],
        "tuple": [1, 2],
        "bytes": "\ufffdok",
        "3": "int key",
    }
    assert type(out["enum"]) is str


def test_normalize_refuses_what_it_cannot_represent() -> None:
    with pytest.raises(PayloadError, match="two keys"):
        normalize({1: "a", "1": "b"})
    with pytest.raises(PayloadError, match="deeper"):
        deep: dict = {}
        cur = deep
        for _ in range(40):
            cur["x"] = {}
            cur = cur["x"]
        normalize(deep)
    with pytest.raises(PayloadError, match="object"):
        normalize({"x": object()})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_normalized_values_survive_a_database_round_trip(value: object) -> None:
    """What json.dumps stores and json.loads reads back canonicalizes to the same bytes."""
    n = normalize({"v": value})
    assert canonical_json(json.loads(json.dumps(n))) == canonical_json(n)


def test_ts_text_is_utc_with_microseconds_and_refuses_naive() -> None:
    assert ts_text(datetime(2025, 1, 1, tzinfo=UTC)) == "2025-01-01T00:00:00.000000Z"
    with pytest.raises(ValueError, match="naive"):
        ts_text(datetime(2025, 1, 1))


def test_entry_hash_is_sha256_of_prev_hash_then_canonical_document() -> None:
    doc = entry_document(
        seq=1,
        ts=datetime(2025, 1, 1, tzinfo=UTC),
        actor="airflow:alice",
        action="approval",
        subject="patch:7",
        payload={"approved": True},
        idempotency_key=None,
    )
    expected_bytes = (
        b'{"action":"approval","actor":"airflow:alice","idempotency_key":null,'
        b'"payload":{"approved":true},"seq":1,"subject":"patch:7","ts":"2025-01-01T00:00:00.000000Z"}'
    )
    assert canonical_json(doc) == expected_bytes
    assert entry_hash(GENESIS_HASH, doc) == hashlib.sha256(GENESIS_HASH.encode() + expected_bytes).hexdigest()


@settings(max_examples=100, deadline=None)
@given(
    seq=st.integers(1, 10**12),
    payload=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    subject=st.none() | st.text(min_size=1, max_size=20),
)
def test_verifier_fast_path_equals_the_definition(seq: int, payload: dict, subject: str | None) -> None:
    """The verifier hashes candidate seqs by splicing; it must equal entry_hash exactly."""
    payload = normalize(payload)
    fields = dict(
        ts=datetime(2025, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        actor="a",
        action="decision",
        subject=subject,
        payload=payload,
        idempotency_key="k",
    )
    prev = "ab" * 32
    row = {**fields, "seq": seq, "prev_hash": prev}
    assert _SeqHasher(row)(seq) == entry_hash(prev, entry_document(seq=seq, **fields))


@settings(max_examples=500, deadline=None)
@given(st.text() | st.none())
def test_fast_string_encoding_equals_jcs(value: str | None) -> None:
    if value is not None and any("\ud800" <= ch <= "\udfff" for ch in value):
        with pytest.raises(ValueError):
            string_json(value)
        value = normalize(value)
    assert string_json(value) == canonical_json(value)


def test_document_bytes_equal_the_canonical_document() -> None:
    fields = dict(
        ts=datetime(2025, 5, 6, 7, 8, 9, 1, tzinfo=UTC),
        actor='a"\\\n\x1f',
        action="decision",
        subject=None,
        idempotency_key="k\u00e9",
    )
    payload = {"z": [1.5, None], "a": "\u2028"}
    doc = DocumentBytes(payload_json=canonical_json(payload), **fields)
    assert doc.head + b"42" + doc.tail == canonical_json(entry_document(seq=42, payload=payload, **fields))


any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=6) | st.sampled_from(["\ufb01", "\U0001f600", "a", "é"]), children, max_size=4
        )
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(any_json)
def test_fast_path_writes_exactly_what_rfc8785_writes(value: object) -> None:
    try:
        expected = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:
        with pytest.raises(rfc8785.CanonicalizationError):
            canonical_json(value)
        return
    assert canonical_json(value) == expected


@pytest.mark.parametrize(
    "f", [1.0, -2.0, 0.0, -0.0, 1e16, 1e21, 1e-7, 1.5e-5, 123456789.125, 0.1, -8.6, 5e-324]
)
def test_fast_path_floats(f: float) -> None:
    assert canonical_json({"x": f, "y": [f]}) == rfc8785.dumps({"x": f, "y": [f]})

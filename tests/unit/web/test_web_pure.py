"""Pure helpers of the web layer: filters, quantiles, histogram buckets, tolerant result summaries."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfheal.web.metrics import SANDBOX_BUCKETS, _cumulative
from selfheal.web.queries import QueryError, QueueFilter, _quantile, rollout_summary, sandbox_summary


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"severity": ("urgent",)}, "unknown severity"),
        ({"status": ("done",)}, "unknown status"),
        ({"kind": ("cloud",)}, "unknown kind"),
        ({"q": "x" * 201}, "longer than 200"),
    ],
)
def test_filter_rejects_unknown_values(kwargs: dict, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        QueueFilter(**kwargs)


def test_empty_filter_has_no_clauses() -> None:
    assert QueueFilter().clauses() == []
    assert len(QueueFilter(service=("a",), severity=("high",), q="  x ").clauses()) == 3
    assert QueueFilter(q="   ").clauses() == []


@given(
    st.lists(st.floats(min_value=0, max_value=1e9, allow_nan=False), min_size=1, max_size=50),
    st.sampled_from([0.0, 0.25, 0.5, 0.9, 1.0]),
)
def test_quantile_matches_the_standard_library(values: list[float], q: float) -> None:
    vals = sorted(values)
    got = _quantile(vals, q)
    if len(vals) == 1:
        assert got == vals[0]
    elif q == 0.5:
        assert got == pytest.approx(statistics.median(vals))
    assert vals[0] <= got <= vals[-1] or got == pytest.approx(vals[0])


def test_quantile_of_nothing_is_none() -> None:
    assert _quantile([], 0.5) is None


def test_cumulative_buckets_end_with_inf() -> None:
    out = _cumulative({0: 2, 3: 1, len(SANDBOX_BUCKETS): 4}, SANDBOX_BUCKETS)
    assert out[0] == ("1.0", 2) and out[-1] == ("+Inf", 7)
    counts = [n for _, n in out]
    assert counts == sorted(counts) and len(out) == len(SANDBOX_BUCKETS) + 1


@pytest.mark.parametrize(
    "junk",
    [
        None,
        {},
        [],
        "passed",
        3,
        {"checks": "nope", "verdicts": "abc"},
        {"checks": [1, None, "x"], "failed_check": 7, "image": ["x"], "strategy": 5, "outcome": {"a": 1}},
        {"verdicts": [{"verdict": 1}, "x"], "started_at": "yesterday", "finished_at": float("nan")},
    ],
)
def test_summaries_tolerate_malformed_records(junk: object) -> None:
    """Sandbox and rollout results are JSON written by other components: never crash a page on them."""
    from selfheal.web.schemas import RolloutResult, SandboxResult

    s = sandbox_summary(junk)
    assert s is None or (s["passed"] is False and s["checks"] == [])
    if s is not None:
        SandboxResult.model_validate(s)  # what the API would send must pass its own schema
    r = rollout_summary(junk)
    if r is not None:
        RolloutResult.model_validate(r)
        assert r["duration_s"] is None


def test_rollout_summary_reads_epoch_and_iso_times() -> None:
    r = rollout_summary(
        {
            "strategy": "canary",
            "outcome": "promoted",
            "started_at": 1_700_000_000.0,
            "finished_at": "2023-11-14T22:17:20+00:00",
            "verdicts": [{"verdict": "pass"}],
        }
    )
    assert r["duration_s"] == pytest.approx(240.0) and r["last_verdict"] == "pass"  # 22:13:20Z -> 22:17:20Z
    assert rollout_summary({"started_at": float("inf"), "finished_at": "garbage"})["duration_s"] is None


def test_patch_states_mirror_the_patch_lifecycle() -> None:
    from selfheal.patches.state import STATES
    from selfheal.web.queries import PATCH_STATES

    assert PATCH_STATES == STATES


def test_sort_keys_and_statuses_mirror_the_domain() -> None:
    from selfheal.triage.lifecycle import STATUSES
    from selfheal.triage.prioritize import DECISIONS
    from selfheal.web.queries import SSVC_DECISIONS

    assert set(SSVC_DECISIONS) == set(DECISIONS)
    assert QueueFilter(status=STATUSES).status == STATUSES

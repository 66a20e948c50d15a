"""The canary judge on synthetic samples (deterministic seeds)."""

from __future__ import annotations

import numpy as np
import pytest

from selfheal.rollout.analysis import Sample, Thresholds, judge, judge_alone


def traffic(n: int, median_ms: float, error_share: float = 0.0, seed: int = 1) -> list[Sample]:
    rng = np.random.default_rng(seed)
    lat = rng.lognormal(np.log(median_ms), 0.25, n)
    errors = rng.random(n) < error_share
    return [Sample(503 if e else 200, float(x)) for x, e in zip(lat, errors, strict=True)]


def test_equal_traffic_passes() -> None:
    j = judge(traffic(500, 20, seed=1), traffic(500, 20, seed=2))
    assert j.verdict == "pass", j.reasons
    assert j.canary.requests == 500 and j.canary.errors == 0
    assert 15 < j.canary.p50_ms < 25 and j.canary.p50_ms < j.canary.p95_ms < j.canary.p99_ms
    assert "within thresholds" in j.reasons[-1]


def test_twenty_percent_5xx_fails() -> None:
    j = judge(traffic(500, 20, error_share=0.2, seed=3), traffic(500, 20, seed=4))
    assert j.verdict == "fail"
    assert any("success rate" in r and "below 99.00%" in r for r in j.reasons)
    assert 0.75 < j.canary.success_rate < 0.85


def test_thirty_percent_slower_fails() -> None:
    j = judge(traffic(500, 26, seed=5), traffic(500, 20, seed=6))
    assert j.verdict == "fail", j.reasons
    assert j.latency_p_value is not None and j.latency_p_value < 1e-6
    assert any("p95 latency" in r and "Mann-Whitney" in r for r in j.reasons)


def test_a_shift_hidden_in_a_noisy_tail_fails_on_the_median() -> None:
    """CI saw it: scheduling stalls on both sides fill the p95, so only the median shows +30 %."""
    rng = np.random.default_rng(7)

    def noisy(median_ms: float, n: int) -> list[Sample]:
        lat = rng.normal(median_ms, 3, n)
        stalls = rng.random(n) < 0.12  # a busy 2-core machine: 12 % of requests wait 100-300 ms more
        lat[stalls] += rng.uniform(100, 300, int(stalls.sum()))
        return [Sample(200, float(x)) for x in lat]

    canary, base = noisy(104, 60), noisy(80, 600)
    j = judge(canary, base)
    assert j.canary.p95_ms <= j.baseline.p95_ms * 1.1  # the p95 alone would have passed it
    assert j.verdict == "fail", j.reasons
    assert any(r.startswith("p50 latency") and "Mann-Whitney" in r for r in j.reasons), j.reasons


def test_three_samples_are_inconclusive_never_pass() -> None:
    j = judge(traffic(3, 20), traffic(500, 20))
    assert j.verdict == "inconclusive"
    assert "too few samples" in j.reasons[0]
    assert judge([], []).verdict == "inconclusive"


def test_all_failing_canary_fails_even_without_latency_samples() -> None:
    canary = [Sample(500, 1.0)] * 100
    j = judge(canary, traffic(100, 20))
    assert j.verdict == "fail"


def test_p95_breach_without_significance_is_marginal() -> None:
    # Wider spread, same centre: some requests slower, as many faster; p95 moves, ranks do not.
    base = traffic(200, 20, seed=7)
    factor = {0: 1.8, 8: 0.5}
    canary = [Sample(200, s.latency_ms * factor.get(i % 16, 1.0)) for i, s in enumerate(traffic(200, 20, seed=8))]
    j = judge(canary, base)
    assert j.verdict == "marginal", j.reasons
    assert "not significant" in " ".join(j.reasons)


def test_few_errors_above_baseline_within_budget_is_marginal() -> None:
    canary = [Sample(503 if i < 8 else 200, 20.0 + (i % 7)) for i in range(1000)]  # 0.8% errors
    base = [Sample(200, 20.0 + (i % 7)) for i in range(1000)]
    j = judge(canary, base)
    assert j.verdict == "marginal" and j.error_p_value is not None and j.error_p_value < 0.05


def test_identical_constant_latencies_do_not_break_the_test() -> None:
    same = [Sample(200, 1.0)] * 50
    assert judge(same, same).verdict == "pass"


def test_thresholds_are_configurable_and_validated() -> None:
    j = judge(traffic(500, 26, seed=5), traffic(500, 20, seed=6), Thresholds(max_p95_ratio=1.5))
    assert j.verdict == "pass"
    with pytest.raises(ValueError):
        Thresholds(min_success_rate=0)
    with pytest.raises(ValueError):
        Thresholds(min_samples=1)


def test_full_traffic_step_is_judged_on_its_own_success_rate_not_on_a_stale_baseline() -> None:
    """At 100 % no baseline serves in the same window: twice the latency of another moment (a build,
    a scanner's slow probes on a shared host) is not the release's fault; 5xx at full traffic is."""
    slow_moment = traffic(200, 40, seed=7)
    assert judge(slow_moment, traffic(200, 20, seed=8)).verdict == "fail"  # what a stale comparison said
    j = judge_alone(slow_moment)
    assert j.verdict == "pass", j.reasons
    assert "full traffic" in j.reasons[0] and j.baseline.requests == 0
    failing = judge_alone(traffic(200, 20, error_share=0.1, seed=9))
    assert failing.verdict == "fail" and "below 99.00%" in failing.reasons[0]
    assert judge_alone(traffic(5, 20, seed=10)).verdict == "inconclusive"

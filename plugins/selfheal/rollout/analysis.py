"""The canary judge: compare canary against baseline traffic for one analysis window.

In the style of Netflix Kayenta's judge and Argo Rollouts' analysis: fixed
thresholds (success rate, p50 and p95 latency relative to baseline) combined
with a one-sided Mann-Whitney U test on the latency samples, so a regression
must be both large enough and statistically significant to fail a canary,
while a breach that the test cannot confirm is "marginal". The median is
checked beside the p95 because on a busy machine scheduling noise fills the
tail of both sides alike and can hide a whole-distribution shift (+30 % on
every request) in the p95, never in the median. Too few samples on either
side is "inconclusive": never a silent pass.

Pure: takes samples (anything with ``status`` and ``latency_ms``, e.g. the
gateway's LogRecord) and returns a verdict with its reasons and metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np

Verdict = Literal["pass", "marginal", "fail", "inconclusive"]


class SampleLike(Protocol):
    @property
    def status(self) -> int: ...
    @property
    def latency_ms(self) -> float: ...


class Sample(NamedTuple):
    status: int
    latency_ms: float


@dataclass(frozen=True)
class Thresholds:
    min_success_rate: float = 0.99  # share of non-5xx responses the canary must keep
    # canary p95 and p50 may be at most 10% above the baseline's (the name predates the p50 check)
    max_p95_ratio: float = 1.10
    latency_slack_ms: float = 0.0  # absolute tolerance on top of the ratio (ms-resolution logs)
    alpha: float = 0.05  # significance level of the one-sided tests
    min_samples: int = 30  # per side; fewer is inconclusive

    def __post_init__(self) -> None:
        if not 0 < self.min_success_rate <= 1:
            raise ValueError("min_success_rate must be in (0, 1]")
        if self.max_p95_ratio < 1:
            raise ValueError("max_p95_ratio must be >= 1")
        if not 0 < self.alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        if self.min_samples < 3:
            raise ValueError("min_samples must be at least 3")


@dataclass(frozen=True)
class GroupStats:
    requests: int
    errors: int
    success_rate: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reasons: tuple[str, ...]
    canary: GroupStats
    baseline: GroupStats
    latency_p_value: float | None = None
    error_p_value: float | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def summarize(samples: Iterable[SampleLike]) -> tuple[GroupStats, np.ndarray]:
    """Counts and latency percentiles. Latency is taken over non-5xx responses:
    fast failures must not hide a slowdown (errors are judged on their own)."""
    statuses = []
    lat = []
    for s in samples:
        statuses.append(int(s.status))
        if int(s.status) < 500:
            lat.append(float(s.latency_ms))
    n = len(statuses)
    errors = sum(1 for st in statuses if st >= 500)
    arr = np.asarray(lat, dtype=float)
    if arr.size:
        p50, p95, p99 = (float(v) for v in np.percentile(arr, [50, 95, 99]))
    else:
        p50 = p95 = p99 = math.nan
    return GroupStats(n, errors, (n - errors) / n if n else math.nan, p50, p95, p99), arr


def judge(
    canary: Iterable[SampleLike],
    baseline: Iterable[SampleLike],
    thresholds: Thresholds | None = None,
) -> Judgement:
    """Verdict for one window: fail beats marginal beats pass; inconclusive when data is too thin."""
    # Imported here: scipy.stats costs about a second to import, paid by every Airflow task that
    # imports the rollout code (most of selfheal_remediate) although only the rollout task judges.
    from scipy import stats as sps

    th = thresholds or Thresholds()
    cs, c_lat = summarize(canary)
    bs, b_lat = summarize(baseline)
    reasons: list[str] = []

    def result(verdict: Verdict, lat_p: float | None = None, err_p: float | None = None) -> Judgement:
        return Judgement(verdict, tuple(reasons), cs, bs, lat_p, err_p, th)

    if cs.requests < th.min_samples or bs.requests < th.min_samples:
        reasons.append(
            f"too few samples: canary {cs.requests}, baseline {bs.requests} (need {th.min_samples} each)"
        )
        return result("inconclusive")

    fail = marginal = False

    # Errors: absolute threshold, plus a one-sided Fisher test against baseline.
    err_p = float(
        sps.fisher_exact(
            [[cs.errors, cs.requests - cs.errors], [bs.errors, bs.requests - bs.errors]], alternative="greater"
        ).pvalue
    )
    if cs.success_rate < th.min_success_rate:
        fail = True
        reasons.append(
            f"success rate {cs.success_rate:.2%} below {th.min_success_rate:.2%} "
            f"({cs.errors} of {cs.requests} requests 5xx; baseline {bs.success_rate:.2%})"
        )
    elif cs.errors and err_p < th.alpha:
        marginal = True
        reasons.append(
            f"success rate {cs.success_rate:.2%} meets the threshold but errors exceed baseline "
            f"({bs.success_rate:.2%}) significantly (Fisher p={err_p:.3g})"
        )

    # Latency: effect size (p95 ratio) and significance (Mann-Whitney U, canary greater).
    lat_p: float | None = None
    if c_lat.size < th.min_samples or b_lat.size < th.min_samples:
        if not fail:
            reasons.append(
                f"too few successful responses for latency: canary {c_lat.size}, baseline {b_lat.size}"
            )
            return result("inconclusive", None, err_p)
    else:
        lat_p = _nan_to_none(float(sps.mannwhitneyu(c_lat, b_lat, alternative="greater").pvalue))
        significant = lat_p is not None and lat_p < th.alpha
        breaches = []
        for name, c_ms, b_ms in (("p95", cs.p95_ms, bs.p95_ms), ("p50", cs.p50_ms, bs.p50_ms)):
            limit = b_ms * th.max_p95_ratio + th.latency_slack_ms
            if c_ms > limit:
                ratio = c_ms / b_ms if b_ms > 0 else math.inf
                breaches.append(f"{name} latency {c_ms:.1f} ms is {ratio:.2f}x baseline {b_ms:.1f} ms "
                                f"(limit {limit:.1f} ms)")
        if breaches and significant:
            fail = True
            reasons.append(
                f"{'; '.join(breaches)} and canary latencies are significantly higher (Mann-Whitney p={lat_p:.3g})"
            )
        elif breaches:
            marginal = True
            reasons.append(
                f"{'; '.join(breaches)} but the difference is not "
                f"significant (Mann-Whitney p={lat_p if lat_p is not None else float('nan'):.3g})"
            )
        elif significant:
            limit = bs.p95_ms * th.max_p95_ratio + th.latency_slack_ms
            reasons.append(
                f"canary latencies are significantly higher (p={lat_p:.3g}) but p95 {cs.p95_ms:.1f} ms "
                f"and p50 {cs.p50_ms:.1f} ms are within the limits (p95 {limit:.1f} ms)"
            )

    if fail:
        return result("fail", lat_p, err_p)
    if marginal:
        return result("marginal", lat_p, err_p)
    reasons.append(
        f"success rate {cs.success_rate:.2%} and p95 {cs.p95_ms:.1f} ms (baseline {bs.p95_ms:.1f} ms) within thresholds"
    )
    return result("pass", lat_p, err_p)


def judge_alone(canary: Iterable[SampleLike], thresholds: Thresholds | None = None) -> Judgement:
    """Verdict for a release that takes all traffic after its split steps passed: absolute criteria only.

    With no baseline serving in the same window, comparing latencies means comparing two different
    moments of a shared machine (another build, a scanner's slow probes): noise, not the release.
    As Flagger does, the relative judgement belongs to the split steps (same window, same load); the
    full-traffic step checks the release holds it: enough samples and the success rate.
    """
    th = thresholds or Thresholds()
    cs, _lat = summarize(canary)
    empty = GroupStats(0, 0, math.nan, math.nan, math.nan, math.nan)
    if cs.requests < th.min_samples:
        reason = f"too few samples: {cs.requests} (need {th.min_samples})"
        return Judgement("inconclusive", (reason,), cs, empty, None, None, th)
    if cs.success_rate < th.min_success_rate:
        reason = (f"success rate {cs.success_rate:.2%} below {th.min_success_rate:.2%} "
                  f"({cs.errors} of {cs.requests} requests 5xx) at full traffic")
        return Judgement("fail", (reason,), cs, empty, None, None, th)
    reason = (f"success rate {cs.success_rate:.2%} at full traffic (p95 {cs.p95_ms:.1f} ms); latency was "
              "compared with the baseline at the split steps")
    return Judgement("pass", (reason,), cs, empty, None, None, th)

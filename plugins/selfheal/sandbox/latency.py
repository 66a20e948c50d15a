"""Latency smoke test: the patched image's p95 against the current image's, in the same run.

Both services run side by side in the sandbox under the same limits; requests
alternate between them in ABBA order (A B, B A, ...) over one keep-alive
connection each, so drift on a shared machine (another build, a GC pause)
hits both samples alike and neither side always goes first. A warm-up is
discarded. p95 is the nearest-rank percentile (no interpolation, so it is a
latency that was actually observed).

The verdict, in the style of Kayenta's judge (a regression must be shown,
not just glimpsed): the patched image passes when its p95 is within
``max_ratio`` of the current image's, OR the two differ by less than
``abs_slack_ms``, OR the slowdown is not statistically established: the
one-sided 95 % lower bound of the p95 ratio (bootstrap, ``scipy.stats``) is
within ``max_ratio``. Why not the raw point estimate alone: on a shared
2-core host the p95 of 200 requests is set by the ~10 slowest, which
scheduling noise decides; measured here, two runs of the *same* image differ
by 20-30 % at p95 under load. A clear regression (a 2x slower endpoint) has
a lower bound well above 1.1 and fails; noise does not. The slack exists
because a difference under a millisecond is not one a user can see.
"""

from __future__ import annotations

import http.client
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


def p95(samples: Sequence[float]) -> float:
    return percentile(samples, 95)


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of ``samples`` (``q`` in 0..100); NaN for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Target:
    role: str
    host: str
    port: int
    samples_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _conn: http.client.HTTPConnection | None = None

    def request(self, path: str, timeout: float) -> float | None:
        """One GET over the kept-alive connection; milliseconds, or None (error recorded)."""
        for attempt in (1, 2):  # a server may close an idle keep-alive connection: reconnect once
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            t0 = time.perf_counter()
            try:
                self._conn.request("GET", path)
                resp = self._conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException) as e:
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    self.errors.append(f"GET {path}: {type(e).__name__}: {e}")
                    return None
                continue
            elapsed = (time.perf_counter() - t0) * 1000
            if resp.will_close:
                self._conn.close()
                self._conn = None
            if resp.status >= 500:
                self.errors.append(f"GET {path}: HTTP {resp.status}")
                return None
            return elapsed
        return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass
class Comparison:
    baseline_p95_ms: float
    patched_p95_ms: float
    ratio: float
    passed: bool
    reason: str
    stats: dict[str, dict[str, float]]
    errors: dict[str, list[str]]
    ratio_low: float = math.nan  # one-sided 95 % lower confidence bound of the p95 ratio
    ratio_high: float = math.nan


def ratio_bounds(patched_ms: Sequence[float], baseline_ms: Sequence[float], resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """90 % percentile-bootstrap interval of p95(patched)/p95(baseline); its low end is a one-sided 95 % bound.

    Hand-written with numpy (a dozen lines) rather than ``scipy.stats.bootstrap``, which computes
    the same interval but whose import alone takes 2-4 s here, a fifth of the warm verification.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    p = np.asarray(patched_ms, dtype=float)
    b = np.asarray(baseline_ms, dtype=float)
    if not len(p) or not len(b):
        return math.nan, math.nan
    ps = rng.choice(p, size=(resamples, len(p)), replace=True)
    bs = rng.choice(b, size=(resamples, len(b)), replace=True)
    ratios = (np.percentile(ps, 95, axis=1, method="inverted_cdf")
              / np.percentile(bs, 95, axis=1, method="inverted_cdf"))
    low, high = np.percentile(ratios, [5, 95])
    return float(low), float(high)


def compare(baseline: Target, patched: Target, paths: Sequence[str], *, requests: int = 200, warmup: int = 20,
            max_ratio: float = 1.10, abs_slack_ms: float = 1.0, timeout: float = 5.0,
            deadline: float | None = None) -> Comparison:
    """Measure both targets interleaved (``requests`` each, after ``warmup`` each) and judge."""
    paths = list(paths) or ["/"]
    pair = (baseline, patched)
    try:
        for i in range(warmup):
            for t in pair:
                t.request(paths[i % len(paths)], timeout)
        for t in pair:
            t.samples_ms.clear()
            t.errors.clear()
        for i in range(requests):
            if deadline is not None and time.monotonic() > deadline:
                break
            path = paths[(i // 2) % len(paths)]
            order = pair if i % 2 == 0 else pair[::-1]
            for t in order:
                ms = t.request(path, timeout)
                if ms is not None:
                    t.samples_ms.append(ms)
    finally:
        for t in pair:
            t.close()
    stats = {t.role: {"n": len(t.samples_ms), "p50_ms": round(percentile(t.samples_ms, 50), 3),
                      "p95_ms": round(p95(t.samples_ms), 3), "max_ms": round(max(t.samples_ms, default=math.nan), 3)}
             for t in pair}
    errors = {t.role: t.errors[:10] for t in pair if t.errors}
    b, p = p95(baseline.samples_ms), p95(patched.samples_ms)
    ratio = p / b if b and not math.isnan(b) else math.inf
    if patched.errors:
        return Comparison(b, p, ratio, False,
                          f"the patched image failed {len(patched.errors)} of {requests} requests: "
                          f"{patched.errors[0]}", stats, errors)
    if baseline.errors:
        return Comparison(b, p, ratio, False,
                          f"inconclusive: the current image failed {len(baseline.errors)} requests "
                          f"({baseline.errors[0]}); no comparison possible", stats, errors)
    if len(patched.samples_ms) < requests or len(baseline.samples_ms) < requests:
        return Comparison(b, p, ratio, False,
                          f"timeout: only {len(patched.samples_ms)} of {requests} requests measured "
                          "before the sandbox's hard timeout", stats, errors)
    low, high = ratio_bounds(patched.samples_ms, baseline.samples_ms)
    within = p <= b * max_ratio or (p - b) <= abs_slack_ms or low <= max_ratio
    verdict = (f"p95 {p:.2f} ms vs {b:.2f} ms for the current image ({ratio:.2f}x, 95 % lower bound {low:.2f}x; "
               f"limit {max_ratio:.2f}x or +{abs_slack_ms:g} ms)")
    return Comparison(b, p, ratio, within, "" if within else f"too slow: {verdict}", stats, errors, low, high)

"""Blue/green and canary rollouts over any DeploymentBackend, judged from real traffic.

Pure orchestration: the backend moves containers/Deployments and traffic, an
``AnalysisSource`` supplies per-request samples (the gateway's logs here),
and ``analysis.judge`` compares the new release against the baseline.

- Blue/green: start the new color, check it directly at its endpoint against
  the live release (pre-promotion), switch all traffic, then judge the new
  release's live traffic against the baseline's samples from before the
  switch (post-promotion); a failure switches straight back.
- Canary: steps (5, 25, 50, 100 % by default), each judged while it runs.
  The judge is polled every ``poll_s`` so a clearly bad canary is aborted as
  soon as the data says so; a pass only counts after ``min_window_s``; still
  inconclusive or marginal at ``max_window_s`` aborts (never a silent pass).
  Abort puts the canary's weight to 0 and removes it.

Every traffic change and every verdict goes to ``record`` (one dict per event,
JSON-serializable; the caller stores it, e.g. in the audit ledger). ANY
exception, including KeyboardInterrupt/SystemExit from a killed task,
restores the pre-rollout snapshot before it propagates: a failure never
leaves traffic split.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from selfheal.gateway.logs import LogCollector
from selfheal.logs import propagate, with_log_context
from selfheal.rollout.analysis import Judgement, SampleLike, Thresholds, judge, judge_alone, summarize
from selfheal.rollout.backends.base import BackendError, DeploymentBackend, Release, TrafficSnapshot
from selfheal.rollout.load import probe

Record = Callable[[dict[str, Any]], None]
Outcome = Literal["promoted", "rolled_back"]


class AnalysisSource(Protocol):
    def samples(
        self, service: str, color: str, since: float, until: float | None = None
    ) -> Sequence[SampleLike]:
        """Per-request samples (status, latency_ms) of one color accepted in [since, until)."""
        ...


class GatewayLogSource:
    """Samples from the gateway's per-request logs (server name = color slot)."""

    def __init__(self, collector: LogCollector) -> None:
        self.collector = collector

    def samples(
        self, service: str, color: str, since: float, until: float | None = None
    ) -> Sequence[SampleLike]:
        return self.collector.records(backend=service, server=color, since=since, until=until)


@dataclass(frozen=True)
class AnalysisSettings:
    thresholds: Thresholds = field(default_factory=Thresholds)
    poll_s: float = 0.25  # how often the judge looks at the window
    min_window_s: float = 2.0  # a "pass" only counts once the step has run this long
    max_window_s: float = 60.0  # still inconclusive or marginal by then: abort
    # When the baseline takes no traffic any more (blue/green after the switch, canary at 100%), its
    # samples from this long before the switch are the reference.
    baseline_lookback_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.poll_s <= 10:
            raise ValueError(f"poll_s must be in (0, 10], got {self.poll_s}")
        if not 0 <= self.min_window_s <= self.max_window_s:
            raise ValueError(
                f"need 0 <= min_window_s <= max_window_s, got {self.min_window_s}, {self.max_window_s}"
            )
        if self.baseline_lookback_s <= 0:
            raise ValueError("baseline_lookback_s must be positive")


def _check_colors(colors: tuple[str, str]) -> None:
    if len(colors) != 2 or colors[0] == colors[1]:
        raise ValueError(f"colors must be two distinct slot names, got {colors!r}")


@dataclass(frozen=True)
class CanaryConfig:
    steps: tuple[int, ...] = (5, 25, 50, 100)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    health_timeout_s: float = 120.0
    colors: tuple[str, str] = ("blue", "green")

    def __post_init__(self) -> None:
        s = self.steps
        if (
            not s
            or any(not isinstance(x, int) or isinstance(x, bool) for x in s)
            or list(s) != sorted(set(s))
            or s[0] < 1
            or s[-1] != 100
        ):
            raise ValueError(
                f"canary steps must be increasing integer percentages 1..100 ending at 100, got {s!r}"
            )
        _check_colors(self.colors)


@dataclass(frozen=True)
class BlueGreenConfig:
    pre_check_paths: tuple[str, ...] = ("/",)
    pre_check_requests: int = 40  # per side (new and current release), sent straight to their endpoints
    pre_check_concurrency: int = 4
    # Unjudged requests to the new release first: its first requests pay one-off costs (imports, caches,
    # connection set-up) that the warm release it is compared with paid long ago.
    pre_check_warmup: int = 10
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    health_timeout_s: float = 120.0
    colors: tuple[str, str] = ("blue", "green")

    def __post_init__(self) -> None:
        if not self.pre_check_paths or any(not p.startswith("/") for p in self.pre_check_paths):
            raise ValueError(f"pre_check_paths must be absolute paths, got {self.pre_check_paths!r}")
        if self.pre_check_requests < 1:
            raise ValueError("pre_check_requests must be at least 1")
        _check_colors(self.colors)


@dataclass
class RolloutResult:
    strategy: str
    service: str
    outcome: Outcome
    reason: str
    release: Release
    previous: Release | None
    started_at: float
    finished_at: float
    traffic_back_at: float | None = None  # rollback: when every weight was back on the previous release
    verdicts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def promoted(self) -> bool:
        return self.outcome == "promoted"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _judgement_dict(j: Judgement) -> dict[str, Any]:
    d = j.to_dict()
    d.pop("thresholds", None)

    def clean(x: Any) -> Any:
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return clean(d)


class _Rollout:
    """State and bookkeeping shared by both strategies (one instance per rollout)."""

    def __init__(
        self,
        strategy: str,
        backend: DeploymentBackend,
        analysis: AnalysisSource,
        service: str,
        record: Record | None,
        settings: AnalysisSettings,
    ) -> None:
        self.strategy = strategy
        self.backend = backend
        self.analysis = analysis
        self.service = service
        self._record = record
        self.settings = settings
        self.started_at = time.time()
        self.verdicts: list[dict[str, Any]] = []
        self.new: Release | None = None
        self.previous: Release | None = None

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        ev = {"event": event, "strategy": self.strategy, "service": self.service, "at": time.time(), **fields}
        if self._record is not None:
            self._record(ev)
        return ev

    def traffic(self, weights: Mapping[str, int], reason: str) -> float:
        self.backend.set_traffic(self.service, weights)
        at = time.time()
        self.emit("traffic", weights=dict(weights), reason=reason, applied_at=at)
        return at

    # ------------------------------------------------------------- planning
    def plan(self, snap: TrafficSnapshot, colors: tuple[str, str]) -> tuple[str | None, str]:
        live = {c: p for c, p in snap.weights.items() if p > 0}
        if len(live) > 1:
            raise BackendError(
                f"{self.service}: traffic is already split {live}; an earlier rollout did not finish "
                f"(restore or promote it before starting another)"
            )
        base = next(iter(live), None)
        if base is not None and base not in colors:
            raise BackendError(f"{self.service}: live color {base!r} is not one of the slots {colors}")
        new = colors[1] if base == colors[0] else colors[0]
        return base, new

    def release_of(self, color: str | None) -> Release | None:
        if color is None:
            return None
        return next((r for r in self.backend.releases(self.service) if r.color == color), None)

    def start_new(
        self, color: str, *, image: str, version: str, patch_id: str | None, timeout_s: float
    ) -> Release:
        """Free the slot of any other (traffic-less) release, deploy, wait until healthy and registered."""
        for r in self.backend.releases(self.service):
            if r.color == color and (r.image, r.version, r.patch_id) != (image, version, patch_id):
                self.backend.retire(r)
                self.emit(
                    "retired", release=dataclasses.asdict(r), reason="free the slot for the new release"
                )
        self.new = self.backend.deploy(
            self.service, version=version, color=color, image=image, patch_id=patch_id
        )
        self.emit("deployed", release=dataclasses.asdict(self.new))
        self.backend.wait_healthy(self.new, timeout_s)
        self.emit("healthy", release=dataclasses.asdict(self.new))
        return self.new

    # -------------------------------------------------------------- analysis
    def verdict(self, phase: str, j: Judgement, decision: str | None, **extra: Any) -> None:
        ev = self.emit(
            "verdict",
            phase=phase,
            verdict=j.verdict,
            decision=decision,
            judgement=_judgement_dict(j),
            **extra,
        )
        self.verdicts.append(ev)

    def watch(
        self,
        phase: str,
        new: str,
        base: str,
        *,
        canary_since: float,
        base_since: float | None,
        base_until: float | None,
        step: int | None = None,
    ) -> tuple[str, Judgement]:
        """Poll the judge until a decision: "continue" (pass after min window) or "abort".

        ``base_since`` None: no baseline to compare with (full traffic after judged split steps).
        """
        a = self.settings
        t0 = time.monotonic()
        last: str | None = None
        polls = 0
        while True:
            canary = self.analysis.samples(self.service, new, canary_since)
            if base_since is None:
                j = judge_alone(canary, a.thresholds)
            else:
                j = judge(canary, self.analysis.samples(self.service, base, base_since, base_until), a.thresholds)
            polls += 1
            elapsed = time.monotonic() - t0
            decision: str | None = None
            if j.verdict == "fail":
                decision = "abort"
            elif j.verdict == "pass" and elapsed >= a.min_window_s:
                decision = "continue"
            elif elapsed >= a.max_window_s:
                decision = "abort"
            if decision is not None or j.verdict != last:
                self.verdict(phase, j, decision, step=step, elapsed_s=round(elapsed, 3), polls=polls)
            last = j.verdict
            if decision is not None:
                return decision, j
            time.sleep(a.poll_s)

    # ------------------------------------------------------------- endings
    def result(self, outcome: Outcome, reason: str, traffic_back_at: float | None = None) -> RolloutResult:
        assert self.new is not None
        self.emit("result", outcome=outcome, reason=reason, release=dataclasses.asdict(self.new))
        return RolloutResult(
            self.strategy,
            self.service,
            outcome,
            reason,
            self.new,
            self.previous,
            self.started_at,
            time.time(),
            traffic_back_at,
            self.verdicts,
        )

    def rollback(self, snap: TrafficSnapshot, reason: str) -> RolloutResult:
        """Traffic back to the snapshot first (users leave the new release at once), then clean up."""
        back_at: float | None = None
        if sum(snap.weights.values()) == 100:
            back_at = self.traffic(snap.weights, reason=f"rollback: {reason}")
        self.backend.restore(snap)
        if back_at is None:
            back_at = time.time()
            self.emit(
                "traffic",
                weights=dict(snap.weights),
                reason=f"rollback (restore): {reason}",
                applied_at=back_at,
            )
        assert self.new is not None
        self.backend.retire(self.new)
        self.emit("retired", release=dataclasses.asdict(self.new), reason="rolled back")
        return self.result("rolled_back", reason, back_at)

    def promote(self, reason: str) -> RolloutResult:
        if self.previous is not None:
            self.backend.retire(self.previous)
            self.emit("retired", release=dataclasses.asdict(self.previous), reason="replaced")
        return self.result("promoted", reason)

    def fail(self, snap: TrafficSnapshot, exc: BaseException) -> None:
        """Any exception: restore traffic first, then record and clean up; never mask ``exc``."""
        restored = None
        try:
            self.backend.restore(snap)
            restored = True
        except BaseException as e:  # noqa: BLE001 - the original exception is re-raised by the caller
            restored = f"{type(e).__name__}: {e}"
        try:
            self.emit(
                "error", error=f"{type(exc).__name__}: {exc}", restored=restored, weights=dict(snap.weights)
            )
            if self.new is not None:
                self.backend.retire(self.new)
                self.emit("retired", release=dataclasses.asdict(self.new), reason="rollout failed")
        except BaseException:  # noqa: BLE001, S110 - best effort; traffic is already restored
            pass


def _run_guarded(ro: _Rollout, snap: TrafficSnapshot, body: Callable[[], RolloutResult]) -> RolloutResult:
    try:
        return body()
    except BaseException as exc:
        ro.fail(snap, exc)
        raise


# ---------------------------------------------------------------------------- blue/green


def _pre_promotion(ro: _Rollout, cfg: BlueGreenConfig) -> tuple[str, str]:
    """Probe the new release (and the current one, as the reference) straight at their endpoints."""
    new, prev = ro.new, ro.previous
    assert new is not None
    if not new.endpoint:
        ro.emit("pre_promotion", verdict="skipped", reason="the new release exposes no direct endpoint")
        return "continue", "pre-promotion checks skipped: no endpoint"
    kw = {"concurrency": cfg.pre_check_concurrency}
    if cfg.pre_check_warmup > 0:
        probe(new.endpoint, cfg.pre_check_paths, cfg.pre_check_warmup, **kw)
    if prev is not None and prev.endpoint:
        results: dict[str, list] = {}

        def run(name: str, endpoint: str) -> None:
            results[name] = probe(endpoint, cfg.pre_check_paths, cfg.pre_check_requests, **kw)

        t = threading.Thread(target=propagate(run), args=("prev", prev.endpoint))
        t.start()
        run("new", new.endpoint)
        t.join()
        j = judge(results["new"], results["prev"], cfg.analysis.thresholds)
        decision = "continue" if j.verdict == "pass" else "abort"
        ro.verdict("pre_promotion", j, decision)
        return decision, "; ".join(j.reasons)
    stats, _ = summarize(probe(new.endpoint, cfg.pre_check_paths, cfg.pre_check_requests, **kw))
    ok = stats.success_rate >= cfg.analysis.thresholds.min_success_rate
    reason = (
        f"no current release to compare with: success rate {stats.success_rate:.2%} over "
        f"{stats.requests} direct requests"
    )
    ro.verdicts.append(
        ro.emit(
            "verdict",
            phase="pre_promotion",
            verdict="pass" if ok else "fail",
            decision="continue" if ok else "abort",
            reason=reason,
            judgement=dataclasses.asdict(stats),
        )
    )
    return ("continue" if ok else "abort"), reason


@with_log_context("service", "patch_id")
def run_blue_green(
    backend: DeploymentBackend,
    analysis: AnalysisSource,
    service: str,
    *,
    image: str,
    version: str,
    patch_id: str | None = None,
    config: BlueGreenConfig | None = None,
    record: Record | None = None,
) -> RolloutResult:
    """Deploy ``image`` into the idle color, check it, switch all traffic, judge, switch back on failure."""
    cfg = config or BlueGreenConfig()
    ro = _Rollout("blue_green", backend, analysis, service, record, cfg.analysis)
    snap = backend.snapshot(service)
    base, new_color = ro.plan(snap, cfg.colors)

    def body() -> RolloutResult:
        ro.emit(
            "start",
            image=image,
            version=version,
            patch_id=patch_id,
            baseline_color=base,
            new_color=new_color,
            weights=dict(snap.weights),
        )
        ro.previous = ro.release_of(base)
        ro.start_new(
            new_color, image=image, version=version, patch_id=patch_id, timeout_s=cfg.health_timeout_s
        )
        decision, why = _pre_promotion(ro, cfg)
        if decision == "abort":
            assert ro.new is not None
            backend.retire(ro.new)
            ro.emit("retired", release=dataclasses.asdict(ro.new), reason="failed pre-promotion checks")
            return ro.result("rolled_back", f"pre-promotion checks failed: {why}", time.time())
        t_switch = time.time()
        ro.traffic({new_color: 100, **({base: 0} if base else {})}, reason="switch")
        if base is None:
            ro.emit(
                "verdict",
                phase="post_promotion",
                verdict="skipped",
                decision="continue",
                reason="first release of the service: no baseline to compare with",
            )
            return ro.promote("first release: pre-promotion checks passed")
        decision, j = ro.watch(
            "post_promotion",
            new_color,
            base,
            canary_since=t_switch,
            base_since=t_switch - cfg.analysis.baseline_lookback_s,
            base_until=t_switch,
        )
        if decision == "abort":
            return ro.rollback(snap, f"post-promotion analysis {j.verdict}: " + "; ".join(j.reasons))
        return ro.promote("post-promotion analysis passed: " + "; ".join(j.reasons))

    return _run_guarded(ro, snap, body)


# ---------------------------------------------------------------------------- canary


@with_log_context("service", "patch_id")
def run_canary(
    backend: DeploymentBackend,
    analysis: AnalysisSource,
    service: str,
    *,
    image: str,
    version: str,
    patch_id: str | None = None,
    config: CanaryConfig | None = None,
    record: Record | None = None,
) -> RolloutResult:
    """Shift traffic to ``image`` step by step, judging each step; abort puts everything back."""
    cfg = config or CanaryConfig()
    ro = _Rollout("canary", backend, analysis, service, record, cfg.analysis)
    snap = backend.snapshot(service)
    base, new_color = ro.plan(snap, cfg.colors)
    if base is None:
        raise BackendError(f"{service}: a canary needs a live release to compare with; use blue/green first")

    def body() -> RolloutResult:
        ro.emit(
            "start",
            image=image,
            version=version,
            patch_id=patch_id,
            baseline_color=base,
            new_color=new_color,
            steps=list(cfg.steps),
            weights=dict(snap.weights),
        )
        ro.previous = ro.release_of(base)
        ro.start_new(
            new_color, image=image, version=version, patch_id=patch_id, timeout_s=cfg.health_timeout_s
        )
        j: Judgement | None = None
        for step in cfg.steps:
            t_step = time.time()
            ro.traffic({new_color: step, base: 100 - step}, reason=f"canary step {step}%")
            # Same window for both while the baseline still takes traffic (load and machine noise hit both
            # alike). At 100% it takes none: after judged split steps the release is checked on its own
            # (analysis.judge_alone); a canary straight to 100% has only the baseline's samples from just
            # before the step to be compared with.
            if step < 100:
                base_since, base_until = t_step, None
            elif len(cfg.steps) > 1:
                base_since, base_until = None, None
            else:
                base_since, base_until = t_step - cfg.analysis.baseline_lookback_s, t_step
            decision, j = ro.watch(
                "canary_step",
                new_color,
                base,
                canary_since=t_step,
                base_since=base_since,
                base_until=base_until,
                step=step,
            )
            if decision == "abort":
                return ro.rollback(snap, f"step {step}%: analysis {j.verdict}: " + "; ".join(j.reasons))
        assert j is not None
        return ro.promote(f"all steps {list(cfg.steps)} passed")

    return _run_guarded(ro, snap, body)


@with_log_context("service", "patch_id", "strategy")
def run_rollout(
    backend: DeploymentBackend,
    analysis: AnalysisSource,
    service: str,
    *,
    strategy: Literal["blue_green", "canary"],
    image: str,
    version: str,
    patch_id: str | None = None,
    steps: Sequence[int] | None = None,
    analysis_settings: AnalysisSettings | None = None,
    record: Record | None = None,
) -> RolloutResult:
    """One entry point for the DAG: strategy and steps as the services catalog states them."""
    a = analysis_settings or AnalysisSettings()
    if strategy == "canary":
        cfg = CanaryConfig(steps=tuple(steps or (5, 25, 50, 100)), analysis=a)
        return run_canary(
            backend,
            analysis,
            service,
            image=image,
            version=version,
            patch_id=patch_id,
            config=cfg,
            record=record,
        )
    if strategy == "blue_green":
        return run_blue_green(
            backend,
            analysis,
            service,
            image=image,
            version=version,
            patch_id=patch_id,
            config=BlueGreenConfig(analysis=a),
            record=record,
        )
    raise ValueError(f"unknown rollout strategy {strategy!r}; use 'blue_green' or 'canary'")

"""Prometheus metrics computed from the triage database at scrape time.

Why a custom Collector instead of counters incremented by the pipeline: the
pipeline runs in many short-lived task processes (and on other machines
under Celery/Kubernetes), so in-process counters would be scattered and lost
with each process. The database is the one place that knows the truth, and
every API-server worker answers a scrape with the same numbers. Results are
cached for a few seconds so a burst of scrapes costs one round of queries.

Names follow Prometheus conventions: base units (``_seconds``), ``_total``
for counters, plural nouns for gauges of things. Counters here are counts of
append-only or terminal facts (quarantined reports, failed runs, rolled-back
patches, audit entries), so they only go up. The duration histograms are
built from the stored timestamps of every closed window, so query them with
``histogram_quantile(q, sum by (le) (..._bucket))`` directly, not through
``rate()``; a reopened finding leaves the time-to-remediate histogram.

Labels carry only bounded, non-sensitive values (severity, status, state,
scanner, service): no titles, URLs or evidence. That is what lets the
endpoint be scraped without a user session (see ``app.metrics``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from selfheal.audit.ledger import audit_log
from selfheal.findings.model import SEVERITIES
from selfheal.gateway.state import gateway_rules
from selfheal.pipeline_state import patches, rollout_events
from selfheal.triage.lifecycle import ACTIVE, STATUSES
from selfheal.triage.schema import findings as F
from selfheal.triage.schema import quarantine, scan_runs
from selfheal.web.queries import PATCH_STATES, aware, epoch, exposure_end, failed_run, num, utcnow

log = logging.getLogger(__name__)

# Exposure and remediation span minutes (virtual patch) to weeks (a patch waiting for a window).
DURATION_BUCKETS: tuple[float, ...] = (
    60,
    300,
    900,
    1800,
    3600,
    4 * 3600,
    12 * 3600,
    86400,
    3 * 86400,
    7 * 86400,
    14 * 86400,
    30 * 86400,
    90 * 86400,
)
SANDBOX_BUCKETS: tuple[float, ...] = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
TERMINAL_OUTCOMES: tuple[str, ...] = ("promoted", "rolled_back", "failed")
DEFAULT_TTL_S = 15.0

# Every family this collector exports (name as exposed, type); the Grafana dashboard test checks
# its expressions against this list, and the collector test checks the scrape against it.
METRICS: dict[str, str] = {
    "selfheal_up": "gauge",
    "selfheal_collect_duration_seconds": "gauge",
    "selfheal_findings": "gauge",
    "selfheal_findings_sla_overdue": "gauge",
    "selfheal_oldest_unmitigated_finding_age_seconds": "gauge",
    "selfheal_finding_exposure_window_seconds": "histogram",
    "selfheal_finding_time_to_remediate_seconds": "histogram",
    "selfheal_patches": "gauge",
    "selfheal_patch_outcomes_total": "counter",
    "selfheal_rollbacks_total": "counter",
    "selfheal_sandbox_duration_seconds": "histogram",
    "selfheal_scanner_errors_total": "counter",
    "selfheal_scan_runs_total": "counter",
    "selfheal_scan_last_success_timestamp_seconds": "gauge",
    "selfheal_virtual_patches": "gauge",
    "selfheal_rollout_events_total": "counter",
    "selfheal_audit_entries_total": "counter",
}


def exported_names() -> set[str]:
    """Every series name a scrape can contain (histograms add _bucket/_sum/_count)."""
    out = set()
    for name, kind in METRICS.items():
        if kind == "histogram":
            out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            out.add(name)
    return out


def _cumulative(per_bucket: dict[int, int], bounds: Sequence[float]) -> list[tuple[str, float]]:
    """[(le, cumulative count)] ending with +Inf, from counts per bucket index (len(bounds) = +Inf)."""
    out, running = [], 0
    for i, b in enumerate(bounds):
        running += per_bucket.get(i, 0)
        out.append((_le(b), running))
    running += per_bucket.get(len(bounds), 0)
    out.append(("+Inf", running))
    return out


def _le(b: float) -> str:
    return floatToGoString(b)  # what prometheus_client's own Histogram writes: "60.0", "+Inf"


def _bucket_index(value: sa.ColumnElement[float], bounds: Sequence[float]) -> sa.ColumnElement[int]:
    return sa.case(*[(value <= b, i) for i, b in enumerate(bounds)], else_=len(bounds))


class SelfhealCollector(Collector):
    """Collect every selfheal metric from the database behind ``engine()`` (cached ``ttl`` seconds).

    When the database cannot be read, the scrape still succeeds with
    ``selfheal_up 0`` (and nothing else), so an alert can tell "no data" from "zero findings".
    """

    def __init__(
        self,
        engine: Callable[[], sa.Engine],
        *,
        ttl: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._ttl = ttl
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        self._cached: list[Metric] | None = None
        self._cached_at = float("-inf")

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not query the database

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if self._cached is None or self._clock() - self._cached_at >= self._ttl:
                self._cached = self._compute()
                self._cached_at = self._clock()
            return iter(list(self._cached))

    def _compute(self) -> list[Metric]:
        t0 = time.perf_counter()
        up = GaugeMetricFamily("selfheal_up", "1 if the triage database could be read for this scrape")
        try:
            with self._engine().connect() as conn:
                families = list(self._families(conn, self._now()))
        except sa.exc.SQLAlchemyError as exc:
            log.warning("selfheal metrics: triage database unreadable: %s", str(exc).splitlines()[0][:300])
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        took = GaugeMetricFamily("selfheal_collect_duration_seconds", "Time the last metrics collection took")
        took.add_metric([], time.perf_counter() - t0)
        return [up, took, *families]

    # ------------------------------------------------------------------ families

    def _families(self, conn: sa.Connection, now: datetime) -> Iterator[Metric]:
        d = conn.dialect.name
        active = sorted(ACTIVE)

        g = GaugeMetricFamily(
            "selfheal_findings", "Findings by severity and lifecycle status", labels=["severity", "status"]
        )
        counts = {
            (s, st): n
            for s, st, n in conn.execute(
                sa.select(F.c.severity, F.c.status, sa.func.count()).group_by(F.c.severity, F.c.status)
            )
        }
        for sev in SEVERITIES:
            for st in STATUSES:
                g.add_metric([sev, st], counts.get((sev, st), 0))
        yield g

        overdue = dict(
            conn.execute(
                sa.select(F.c.severity, sa.func.count())
                .where(F.c.status.in_(active), F.c.sla_due.is_not(None), F.c.sla_due < now)
                .group_by(F.c.severity)
            ).all()
        )
        g = GaugeMetricFamily(
            "selfheal_findings_sla_overdue", "Active findings past their SLA due date", labels=["severity"]
        )
        for sev in SEVERITIES:
            g.add_metric([sev], overdue.get(sev, 0))
        yield g

        oldest = dict(
            conn.execute(
                sa.select(F.c.severity, sa.func.min(F.c.first_seen))
                .where(F.c.status.in_(active), F.c.mitigated_at.is_(None))
                .group_by(F.c.severity)
            ).all()
        )
        g = GaugeMetricFamily(
            "selfheal_oldest_unmitigated_finding_age_seconds",
            "Age of the oldest active finding without a virtual patch (0: none)",
            labels=["severity"],
        )
        for sev in SEVERITIES:
            first = oldest.get(sev)
            g.add_metric([sev], 0.0 if first is None else max(0.0, (now - _utc(first)).total_seconds()))
        yield g

        end = exposure_end()
        yield self._duration_histogram(
            conn,
            "selfheal_finding_exposure_window_seconds",
            "Closed exposure windows: first seen until mitigated (virtual patch) or resolved",
            epoch(end, d) - epoch(F.c.first_seen, d),
            [end.is_not(None), F.c.status != "false_positive"],
        )
        yield self._duration_histogram(
            conn,
            "selfheal_finding_time_to_remediate_seconds",
            "Resolved findings: first seen until resolved (a re-scan no longer sees it)",
            epoch(F.c.resolved_at, d) - epoch(F.c.first_seen, d),
            [F.c.resolved_at.is_not(None)],
        )

        pstates = dict(
            conn.execute(sa.select(patches.c.state, sa.func.count()).group_by(patches.c.state)).all()
        )
        g = GaugeMetricFamily("selfheal_patches", "Patches by lifecycle state", labels=["state"])
        for st in PATCH_STATES:
            g.add_metric([st], pstates.get(st, 0))
        yield g
        c = CounterMetricFamily(
            "selfheal_patch_outcomes", "Patches that reached a terminal outcome", labels=["outcome"]
        )
        for o in TERMINAL_OUTCOMES:
            c.add_metric([o], pstates.get(o, 0))
        yield c

        c = CounterMetricFamily(
            "selfheal_rollbacks", "Rollouts rolled back (patches in state rolled_back)", labels=["service"]
        )
        for svc, n in conn.execute(
            sa.select(patches.c.service, sa.func.count())
            .where(patches.c.state == "rolled_back")
            .group_by(patches.c.service)
            .order_by(patches.c.service)
        ):
            c.add_metric([svc], n)
        yield c

        yield self._sandbox_histogram(conn)

        c = CounterMetricFamily(
            "selfheal_scanner_errors",
            "Scanner errors: reports that could not be parsed (quarantined) and scan runs that failed",
            labels=["scanner", "kind"],
        )
        for scanner, n in conn.execute(
            sa.select(quarantine.c.scanner_guess, sa.func.count()).group_by(quarantine.c.scanner_guess)
        ):
            c.add_metric([scanner or "unknown", "quarantined_report"], n)
        for scanner, n in conn.execute(
            sa.select(scan_runs.c.scanner, sa.func.count()).where(failed_run()).group_by(scan_runs.c.scanner)
        ):
            c.add_metric([scanner, "failed_run"], n)
        yield c

        c = CounterMetricFamily(
            "selfheal_scan_runs", "Scan runs by scanner and status", labels=["scanner", "status"]
        )
        for scanner, st, n in conn.execute(
            sa.select(scan_runs.c.scanner, scan_runs.c.status, sa.func.count())
            .group_by(scan_runs.c.scanner, scan_runs.c.status)
            .order_by(scan_runs.c.scanner, scan_runs.c.status)
        ):
            c.add_metric([scanner, st], n)
        yield c

        g = GaugeMetricFamily(
            "selfheal_scan_last_success_timestamp_seconds",
            "Unix time the newest successful scan run of each scanner finished",
            labels=["scanner"],
        )
        for scanner, last in conn.execute(
            sa.select(scan_runs.c.scanner, sa.func.max(scan_runs.c.finished_at))
            .where(scan_runs.c.status == "succeeded", scan_runs.c.finished_at.is_not(None))
            .group_by(scan_runs.c.scanner)
        ):
            g.add_metric([scanner], _utc(last).timestamp())
        yield g

        g = GaugeMetricFamily(
            "selfheal_virtual_patches",
            "Virtual patches (gateway rules) in the desired state",
            labels=["service"],
        )
        for svc, n in conn.execute(
            sa.select(gateway_rules.c.service, sa.func.count()).group_by(gateway_rules.c.service)
        ):
            g.add_metric([svc], n)
        yield g

        c = CounterMetricFamily(
            "selfheal_rollout_events", "Rollout events recorded, by kind", labels=["kind"]
        )
        for kind, n in conn.execute(
            sa.select(rollout_events.c.kind, sa.func.count()).group_by(rollout_events.c.kind)
        ):
            c.add_metric([kind], n)
        yield c

        c = CounterMetricFamily("selfheal_audit_entries", "Entries in the hash-chained audit ledger")
        c.add_metric([], conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one())
        yield c

    def _duration_histogram(
        self,
        conn: sa.Connection,
        name: str,
        doc: str,
        duration: sa.ColumnElement[float],
        where: list[sa.ColumnElement[bool]],
    ) -> HistogramMetricFamily:
        dur = duration.label("d")
        inner = sa.select(F.c.severity.label("sev"), dur).where(*where).subquery()
        k = _bucket_index(inner.c.d, DURATION_BUCKETS).label("k")
        mid = sa.select(inner.c.sev, k, inner.c.d).subquery()
        rows = conn.execute(
            sa.select(mid.c.sev, mid.c.k, sa.func.count(), sa.func.sum(mid.c.d)).group_by(mid.c.sev, mid.c.k)
        ).all()
        per: dict[str, dict[int, int]] = {}
        sums: dict[str, float] = {}
        for sev, kk, n, total in rows:
            per.setdefault(sev, {})[int(kk)] = n
            sums[sev] = sums.get(sev, 0.0) + max(0.0, float(total or 0.0))
        h = HistogramMetricFamily(name, doc, labels=["severity"])
        for sev in SEVERITIES:
            h.add_metric([sev], _cumulative(per.get(sev, {}), DURATION_BUCKETS), sum_value=sums.get(sev, 0.0))
        return h

    def _sandbox_histogram(self, conn: sa.Connection) -> HistogramMetricFamily:
        # Few rows (one per patch) and JSON written by another component: convert in Python,
        # where a malformed value is skipped instead of failing the whole scrape in SQL.
        rows = conn.execute(
            sa.select(patches.c.sandbox["duration_s"], patches.c.sandbox["passed"]).where(
                patches.c.sandbox.is_not(None)
            )
        ).all()
        per: dict[str, dict[int, int]] = {"passed": {}, "failed": {}}
        sums = {"passed": 0.0, "failed": 0.0}
        for dur, passed in rows:
            secs = num(dur)
            if secs is None or secs < 0:
                continue
            result = "passed" if passed is True or passed == 1 else "failed"
            k = next((i for i, b in enumerate(SANDBOX_BUCKETS) if secs <= b), len(SANDBOX_BUCKETS))
            per[result][k] = per[result].get(k, 0) + 1
            sums[result] += secs
        h = HistogramMetricFamily(
            "selfheal_sandbox_duration_seconds",
            "Sandbox verification time per patch, by result",
            labels=["result"],
        )
        for result in ("passed", "failed"):
            h.add_metric([result], _cumulative(per[result], SANDBOX_BUCKETS), sum_value=sums[result])
        return h


def _utc(v: Any) -> datetime:
    out = aware(v)
    if out is None:
        raise ValueError("a timestamp aggregate was NULL")
    return out


def make_registry(collector: SelfhealCollector) -> CollectorRegistry:
    """A registry with only selfheal's collector (no process metrics of whichever worker answers)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg

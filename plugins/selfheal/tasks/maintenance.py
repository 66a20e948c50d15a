"""Tasks of `selfheal_maintenance`: thin adapters over the triage intel loaders,
prioritization, the audit ledger and the Docker janitors.

Failure semantics: only transient errors are retried (a feed or the Docker
daemon that did not answer, a dropped database connection), with exponential
backoff; anything else (a feed in the wrong format, a broken audit chain, a
bug) fails the task at once, because retrying cannot change the answer.
Every task is safe to clear and re-run: loads are upserts that rewrite only
changed rows, prioritization writes only changed scores, cleanups remove
only what is still there, and the run's audit entry is keyed by its content.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import urllib.error
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from airflow.sdk import (
    ExceptionRetryPolicy,
    RetryAction,
    RetryRule,
    TriggerRule,
    Variable,
    task,
)
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from selfheal.hooks.triage import TriageDbHook

log = logging.getLogger(__name__)

ACTOR = "selfheal:maintenance"
AUDIT_ACTION = "maintenance"

# Public feeds (overridable through Airflow Variables, e.g. to an internal mirror).
KEV_URL_VAR = "selfheal_kev_url"
EPSS_URL_VAR = "selfheal_epss_url"
KEV_DEFAULT_URL = "https://www.cisa.gov/sites/default/files/feeds/known_exploited_vulnerabilities.json"
EPSS_DEFAULT_URL = "https://epss.cyentia.com/epss_scores-current.csv.gz"
# How long a retired Docker release stays runnable for an instant rollback; must match the rollout's
# DockerSettings.keep_old_s (its default when the Variable is unset).
RELEASE_KEEP_VAR = "selfheal_release_keep_s"
# Last verified audit head per ledger, kept outside the ledger's own database so cutting off
# the newest entries (which a valid chain cannot show by itself) is detected on the next run.
AUDIT_ANCHOR_VAR = "selfheal_audit_anchor"
MAX_ANCHORS = 16

WORK_TASKS = (
    "refresh_kev",
    "refresh_epss",
    "reprioritize",
    "report_sla_breaches",
    "verify_audit",
    "cleanup_sandboxes",
    "cleanup_old_releases",
)


class TransientError(AirflowException):
    """Worth retrying later: the other side did not answer (network, HTTP 5xx/429, daemon down)."""


# Retry only what time can fix; the first matching rule wins, everything else fails at once.
RETRY_POLICY = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception=[
                TransientError,
                "sqlalchemy.exc.OperationalError",  # connection refused/dropped, server restarting
                "sqlalchemy.exc.InterfaceError",
            ],
            action=RetryAction.RETRY,
            reason="transient: the other side did not answer",
        ),
    ],
    default=RetryAction.FAIL,
)
# For the tasks that fetch from the internet: a feed host that is down is usually back within the hour.
FETCH_RETRY: dict[str, Any] = {
    "retries": 4,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": 2.0,  # 2, 4, 8, 16 min (a multiplier: True would mean 1.0, no backoff)
    "max_retry_delay": timedelta(minutes=30),
}


def _engine():
    return TriageDbHook().get_engine()


def safe_url(url: str) -> str:
    """The URL without credentials, query or fragment: fit for logs and the audit ledger."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "<unparseable URL>"
    if not parts.scheme or not host:
        return url.split("?", 1)[0].split("#", 1)[0]
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# ----------------------------------------------------------------------------------- intel feeds


def is_transient(exc: BaseException) -> bool:
    """Whether a feed failure may go away by itself: network errors, timeouts, HTTP 408/429/5xx.

    ``IntelError`` is raised ``from None``; the network error it replaced is still its ``__context__``.
    """
    cause = exc.__context__ or exc.__cause__
    if isinstance(cause, urllib.error.HTTPError):
        return cause.code in (408, 425, 429) or cause.code >= 500
    return isinstance(cause, urllib.error.URLError | TimeoutError | ConnectionError)


def refresh_feed(name: str, load: Callable[..., Any], url: str) -> dict[str, Any]:
    """Fetch one feed and upsert it. The whole feed is downloaded and parsed before the
    transaction starts, so a feed that cannot be fetched or read leaves the stored data untouched."""
    from selfheal.triage.intel import IntelError

    shown = safe_url(url)
    engine = _engine()
    try:
        result = load(engine, url)
    except IntelError as e:
        # IntelError already starts with the source; show it without credentials or query.
        msg = f"{name} feed: {str(e).replace(url, shown)}; stored {name} data left unchanged"
        if is_transient(e):
            raise TransientError(msg) from None
        raise AirflowFailException(msg) from None
    finally:
        engine.dispose()
    if result.loaded == 0:
        # A feed that suddenly has no valid entry is broken upstream, not "everything was fixed".
        raise AirflowFailException(
            f"{name} feed: {shown}: no valid entry ({result.skipped} malformed); "
            f"stored {name} data left unchanged"
        )
    log.info(
        "%s feed %s: %d entries, %d malformed skipped, %d rows changed",
        name, shown, result.loaded, result.skipped, result.changed,
    )
    return {"source": shown, "loaded": result.loaded, "skipped": result.skipped, "changed": result.changed}


@task(retry_policy=RETRY_POLICY, **FETCH_RETRY)
def refresh_kev() -> dict[str, Any]:
    """CISA's Known Exploited Vulnerabilities catalog into the `kev` table."""
    from selfheal.triage.intel import load_kev

    return refresh_feed("KEV", load_kev, Variable.get(KEV_URL_VAR, default=KEV_DEFAULT_URL))


@task(retry_policy=RETRY_POLICY, **FETCH_RETRY)
def refresh_epss() -> dict[str, Any]:
    """FIRST's EPSS scores (daily CSV, or the API's JSON) into the `epss` table."""
    from selfheal.triage.intel import load_epss

    return refresh_feed("EPSS", load_epss, Variable.get(EPSS_URL_VAR, default=EPSS_DEFAULT_URL))


# ------------------------------------------------------------------------------ prioritization


@task(retry_policy=RETRY_POLICY, trigger_rule=TriggerRule.ALL_DONE)
def reprioritize() -> dict[str, Any]:
    """Re-score every active finding with the stored intel and today's SLA clock.

    Runs even when a feed could not be refreshed: yesterday's intel is still
    valid and the SLA clock moved anyway.
    """
    import sqlalchemy as sa

    from selfheal.catalog import load_catalog
    from selfheal.triage.prioritize import prioritize
    from selfheal.triage.schema import findings

    engine = _engine()
    try:
        result = prioritize(engine, load_catalog())
        with engine.connect() as conn:
            kev_active = conn.execute(
                sa.select(sa.func.count())
                .select_from(findings)
                .where(_active(findings), findings.c.kev.is_(True))
            ).scalar_one()
    finally:
        engine.dispose()
    log.info("re-prioritized %d active findings in %.2f s: %d changed",
             result.rows, result.seconds, result.changed)
    return {"rows": result.rows, "changed": result.changed, "kev_active": kev_active,
            "seconds": round(result.seconds, 3)}


def _active(findings: Any) -> Any:
    from selfheal.triage import lifecycle

    return findings.c.status.in_(sorted(lifecycle.ACTIVE))


# ---------------------------------------------------------------------------------- SLA breaches

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def sla_breaches(engine: Any, *, now: datetime, worst_n: int) -> dict[str, Any]:
    """Active findings past their SLA due date: counts by severity and the worst ``worst_n``.

    Active means not resolved, accepted or false_positive (a mitigated finding
    still breaches: the flaw is there). Worst first: highest priority, then
    longest overdue.
    """
    import sqlalchemy as sa

    from selfheal.findings.model import SEVERITIES
    from selfheal.triage.schema import findings as f

    overdue = sa.and_(_active(f), f.c.sla_due.is_not(None), f.c.sla_due < now)
    with engine.connect() as conn:
        counts = sa.select(f.c.severity, sa.func.count()).where(overdue).group_by(f.c.severity)
        by_sev = dict(conn.execute(counts).all())
        worst = conn.execute(
            sa.select(f.c.id, f.c.severity, f.c.service, f.c.status, f.c.priority, f.c.sla_due, f.c.title)
            .where(overdue)
            .order_by(f.c.priority.desc().nulls_last(), f.c.sla_due, f.c.id)
            .limit(worst_n)
        ).all()
    ordered = {s: by_sev[s] for s in SEVERITIES if by_sev.get(s)}
    return {
        "breached": sum(ordered.values()),
        "by_severity": ordered,
        "worst_ids": [r.id for r in worst],
        "worst": [
            {
                "id": r.id,
                "severity": r.severity,
                "service": r.service,
                "status": r.status,
                "priority": r.priority,
                "days_overdue": round((now - r.sla_due).total_seconds() / 86400, 1),
                # Scanner-controlled text: no control characters, bounded.
                "title": _CONTROL.sub(" ", r.title or "")[:100],
            }
            for r in worst
        ],
        "as_of": now.isoformat(),
    }


@task(retry_policy=RETRY_POLICY, trigger_rule=TriggerRule.ALL_DONE)
def report_sla_breaches(**context: Any) -> dict[str, Any]:
    """Log every SLA breach summary line and return a small XCom: counts and the worst ids."""
    worst_n = int(context["params"].get("worst_n", 10))
    engine = _engine()
    try:
        report = sla_breaches(engine, now=datetime.now(UTC), worst_n=worst_n)
    finally:
        engine.dispose()
    if not report["breached"]:
        log.info("no finding is past its SLA due date")
    else:
        counts = ", ".join(f"{k} {v}" for k, v in report["by_severity"].items())
        log.warning("%d findings past their SLA due date (%s); worst %d:", report["breached"], counts,
                    len(report["worst"]))
        for w in report["worst"]:
            log.warning("  finding %s  %-8s %-10s priority %-5s %5.1f days overdue  service=%s  %s",
                        w["id"], w["severity"], w["status"], w["priority"], w["days_overdue"], w["service"],
                        w["title"])
    # The XCom stays small: counts and ids; the details are in the log above.
    return {k: report[k] for k in ("breached", "by_severity", "worst_ids", "as_of")}


# ------------------------------------------------------------------------------------ audit chain


def ledger_key(url: str) -> str:
    """Which ledger an anchor belongs to: backend, host, port and database (never credentials)."""
    import sqlalchemy as sa

    u = sa.make_url(url)
    if u.get_backend_name() == "sqlite":
        return f"sqlite:{u.database}"
    return f"{u.get_backend_name()}://{u.host or ''}:{u.port or ''}/{u.database or ''}"


def _anchors() -> dict[str, Any]:
    raw = Variable.get(AUDIT_ANCHOR_VAR, default=None)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        log.warning("Variable %s is not JSON; ignoring it", AUDIT_ANCHOR_VAR)
        return {}
    return value if isinstance(value, dict) else {}


def stored_anchor(key: str) -> tuple[int, str] | None:
    a = _anchors().get(key)
    if isinstance(a, dict) and isinstance(a.get("seq"), int) and isinstance(a.get("hash"), str):
        return a["seq"], a["hash"]
    return None


def store_anchor(key: str, seq: int, digest: str) -> None:
    anchors = _anchors()
    anchors[key] = {"seq": seq, "hash": digest, "at": datetime.now(UTC).isoformat()}
    newest = sorted(anchors.items(), key=lambda kv: str(kv[1].get("at", "")), reverse=True)[:MAX_ANCHORS]
    Variable.set(AUDIT_ANCHOR_VAR, json.dumps(dict(newest), sort_keys=True))


@task(retry_policy=RETRY_POLICY, retries=2, retry_delay=timedelta(minutes=1))
def verify_audit(**context: Any) -> dict[str, Any]:
    """Walk the whole hash chain; fail naming where it breaks.

    Also checks the head recorded by the last good run is still there with the
    same hash: a valid chain with its newest entries cut off is caught too.
    """
    from selfheal.audit import verify

    hook = TriageDbHook()
    key = ledger_key(hook.get_url())
    anchor = stored_anchor(key)
    engine = hook.get_engine()
    try:
        result = verify(engine, anchor=anchor)
    finally:
        engine.dispose()
    if not result.ok:
        breaks = [{"kind": b.kind, "seq": b.seq, "detail": b.detail} for b in result.breaks[:10]]
        context["ti"].xcom_push(key="breaks", value=breaks)  # the run's audit entry records them
        more = f" and {len(result.breaks) - 1} more" if len(result.breaks) > 1 else ""
        log.error("%s", result.summary())
        raise AirflowFailException(
            f"audit chain broken: {result.breaks[0].describe()}{more} ({result.count} entries checked)"
        )
    log.info("%s%s", result.summary(), f" (anchor seq {anchor[0]} present)" if anchor else "")
    return {"ok": True, "count": result.count, "head_seq": result.head_seq, "head_hash": result.head_hash,
            "anchor_seq": anchor[0] if anchor else None, "seconds": round(result.seconds, 3)}


# --------------------------------------------------------------------------------------- cleanup


def _docker() -> Any:
    from selfheal.sandbox import docker_client
    from selfheal.sandbox.errors import DockerUnavailable

    try:
        return docker_client()
    except DockerUnavailable as e:
        raise TransientError(f"docker: {e.reason}") from None


@task(retry_policy=RETRY_POLICY, retries=2, retry_delay=timedelta(minutes=1), retry_exponential_backoff=2.0)
def cleanup_sandboxes(**context: Any) -> dict[str, Any]:
    """Remove sandbox containers and networks (label `selfheal.sandbox`) left by dead, expired or
    too old verifications. A live sandbox (owner running, within deadline) is never touched."""
    from selfheal.sandbox import cleanup_stale
    from selfheal.sandbox.errors import DockerUnavailable, SandboxError

    max_age_s = float(context["params"].get("sandbox_max_age_s", 3600))
    client = _docker()
    try:
        removed = cleanup_stale(client, max_age_s)
    except DockerUnavailable as e:
        raise TransientError(f"docker: {e.reason}") from None
    except SandboxError as e:
        raise AirflowFailException(f"sandbox cleanup: {e}") from None
    finally:
        client.close()
    log.info("removed %d stale sandbox containers %s and %d networks %s", len(removed["containers"]),
             removed["containers"], len(removed["networks"]), removed["networks"])
    return {"containers": len(removed["containers"]), "networks": len(removed["networks"]),
            "names": (removed["containers"] + removed["networks"])[:20]}


def _docker_unreachable(exc: BaseException | None) -> bool:
    """The daemon did not answer (retry later), as opposed to refusing a request (an API error)."""
    import docker.errors
    import requests.exceptions

    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout | ConnectionError):
        return True
    return isinstance(exc, docker.errors.DockerException) and not isinstance(exc, docker.errors.APIError)


def release_janitor(client: Any, keep_old_s: float) -> Any:
    """A DockerBackend that can only clean up: ``cleanup_expired`` lists and removes containers
    labelled ``selfheal.managed-by`` and named ``.retired-<epoch>``; it needs no gateway (retired
    releases were deregistered when they were retired), so an empty one satisfies the constructor."""
    import tempfile
    from pathlib import Path

    from selfheal.gateway.config import GatewayPaths
    from selfheal.gateway.gateway import Gateway
    from selfheal.gateway.state import InMemoryStateStore
    from selfheal.rollout.backends.docker import DockerBackend, DockerSettings

    gateway = Gateway(GatewayPaths(Path(tempfile.gettempdir())), InMemoryStateStore(), services=())
    return DockerBackend(client, gateway, {}, DockerSettings(keep_old_s=keep_old_s))


@task(retry_policy=RETRY_POLICY, retries=2, retry_delay=timedelta(minutes=1), retry_exponential_backoff=2.0)
def cleanup_old_releases() -> dict[str, Any]:
    """Remove retired Docker releases whose rollback window (`keep_old_s`) has passed.

    Only containers the Docker rollout backend labelled as its own are looked at;
    a release still deployed (not retired) is never touched.
    """
    from selfheal.rollout.backends.base import BackendError
    from selfheal.rollout.backends.docker import DockerSettings

    raw = Variable.get(RELEASE_KEEP_VAR, default=str(DockerSettings().keep_old_s))
    try:
        keep = float(raw)
    except ValueError:
        raise AirflowFailException(f"Variable {RELEASE_KEEP_VAR}: expected seconds, got {raw!r}") from None
    if not keep >= 0:  # also rejects NaN
        raise AirflowFailException(f"Variable {RELEASE_KEEP_VAR}: must be >= 0 seconds, got {raw!r}")
    client = _docker()
    try:
        removed = release_janitor(client, keep).cleanup_expired()
    except BackendError as e:
        if _docker_unreachable(e.__cause__):
            raise TransientError(str(e)) from None
        raise AirflowFailException(f"release cleanup: {e}") from None
    finally:
        client.close()
    log.info("removed %d expired releases (retired more than %g s ago): %s", len(removed), keep, removed)
    return {"removed": len(removed), "names": removed[:20], "keep_old_s": keep}


# ------------------------------------------------------------------------------------ the record


def _summary(results: Mapping[str, Any], states: Mapping[str, str | None], breaks: Any) -> dict[str, Any]:
    """What the run's audit entry says: each task's state and its small result (no URLs with secrets)."""
    sla = results.get("report_sla_breaches") or {}
    audit = results.get("verify_audit") or {}
    return {
        "tasks": {t: states.get(t) for t in WORK_TASKS},
        "kev": results.get("refresh_kev"),
        "epss": results.get("refresh_epss"),
        "prioritize": results.get("reprioritize"),
        "sla": {k: sla.get(k) for k in ("breached", "by_severity", "worst_ids")} if sla else None,
        "audit": (
            {"ok": True, "count": audit.get("count"), "head_seq": audit.get("head_seq")}
            if audit
            else {"ok": False, "breaks": breaks}
            if breaks
            else None
        ),
        "cleanup": {
            "sandboxes": results.get("cleanup_sandboxes"),
            "releases": results.get("cleanup_old_releases"),
        },
    }


@task(retry_policy=RETRY_POLICY, trigger_rule=TriggerRule.ALL_DONE, retries=2,
      retry_delay=timedelta(seconds=30))
def record_run(**context: Any) -> dict[str, Any]:
    """One audit entry summarizing this run, whatever failed; then, if the chain verified,
    remember the new head as the anchor the next run checks.

    The idempotency key is the run id plus a digest of the summary: re-running this task
    for the same outcome writes nothing twice; re-running failed tasks and then this one
    records the new outcome.
    """
    from selfheal.audit import append, subject

    ti = context["ti"]
    run_id = context["run_id"]
    results = {t: ti.xcom_pull(task_ids=t) for t in WORK_TASKS}
    breaks = ti.xcom_pull(task_ids="verify_audit", key="breaks")
    states = _task_states(ti, context["dag"].dag_id, run_id)
    summary = _summary(results, states, breaks)
    digest = hashlib.sha256(json.dumps(summary, sort_keys=True, default=str).encode()).hexdigest()[:16]
    hook = TriageDbHook()
    engine = hook.get_engine()
    try:
        entry = append(
            engine,
            actor=ACTOR,
            action=AUDIT_ACTION,
            subject=subject("maintenance", run_id),
            payload={"run_id": run_id, **summary},
            idempotency_key=f"maintenance:{run_id}:{digest}",
        )
    finally:
        engine.dispose()
    if results.get("verify_audit"):
        store_anchor(ledger_key(hook.get_url()), entry.seq, entry.hash)
    failed = sorted(t for t, s in summary["tasks"].items() if s not in ("success", "skipped"))
    log.info("audit entry seq %d written for %s; tasks not successful: %s",
             entry.seq, run_id, failed or "none")
    return {"seq": entry.seq, "hash": entry.hash, "failed": failed}


def _task_states(ti: Any, dag_id: str, run_id: str) -> dict[str, str | None]:
    """States of this run's work tasks as the API server knows them (upstream of us: all final)."""
    try:
        raw = ti.get_task_states(dag_id=dag_id, task_ids=list(WORK_TASKS), run_ids=[run_id])
    except Exception as e:  # noqa: BLE001 - the entry is still worth writing without them
        log.warning("could not read task states: %s", e)
        return {}
    per_run = raw.get(run_id, raw) if isinstance(raw, dict) else {}
    return {t: None if s is None else str(getattr(s, "value", s)) for t, s in per_run.items()}


@task(trigger_rule=TriggerRule.ONE_FAILED, retries=0)
def watcher() -> None:
    """Fails the run when any work task failed: `record_run` (all_done) would otherwise
    be the only leaf and mark a run with failures as a success."""
    raise AirflowFailException(
        "a maintenance task failed; see the failed task's log and the run's audit entry"
    )

"""Tasks of `selfheal_scan` and `selfheal_inspector_sync`: thin adapters that call
the scanner hooks and the triage store.

Flow per (service x scanner): start (scan run registered) -> wait (deferred,
no worker slot) -> collect (report bytes into the inbox, id to XCom) ->
ingest (raw kept, findings upserted, observations recorded, run closed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.sdk import Asset, Context, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from selfheal.logs import with_log_context
from selfheal.scanners.errors import ScannerAuthError, ScannerError, ScannerNotFoundError
from selfheal.scanners.sensors import _ScanSensor
from selfheal.scanners.triggers import GmpTaskFinishedTrigger, ZapScanCompleteTrigger

if TYPE_CHECKING:
    from selfheal.catalog import Catalog, Service
    from selfheal.remediation.mitigate import InlineMitigator

log = logging.getLogger(__name__)

# Emitted by every successful ingest; `selfheal_remediate` is scheduled on it.
FINDINGS_ASSET = Asset(name="selfheal_findings")

# Scanners selfheal_scan runs per service. Inspector2 is account-wide: here it pulls what
# changed since the shared watermark (selfheal_inspector_sync does the same on its own schedule).
SERVICE_SCANNERS = ("zap", "gvm", "wapiti", "inspector")
# Formats of what each scanner's collect step stores (see selfheal.findings.parsers).
FORMATS = {"zap": "zap-api", "gvm": "gmp-xml", "wapiti": "wapiti-json", "inspector": "inspector2"}


# The catalog (pydantic, YAML), the triage DB (SQLAlchemy) and the inbox load when a task
# runs, not when the DAG file is parsed: parse time stays small (bench dag_parse).


def _engine():  # sqlalchemy Engine
    from selfheal.hooks.triage import TriageDbHook

    return TriageDbHook().get_engine()


def load_catalog() -> Catalog:
    from selfheal.catalog import load_catalog as load

    return load()



def due_services(services: Sequence[Service], start: datetime, end: datetime) -> list[Service]:
    """Services whose own cron schedule fires in (start, end]: the DAG ticks often, each service scans on its own."""
    from croniter import croniter

    due = []
    for s in services:
        if not s.schedule:
            continue
        nxt = croniter(s.schedule, start).get_next(datetime)
        if nxt <= end:
            due.append(s)
    return due


@task
def plan_scans(**context: Any) -> list[dict[str, str]]:
    """What to scan in this run: the Params form's choice, or the services due by their schedule."""
    params = context["params"]
    catalog = load_catalog()
    wanted_scanners = set(params.get("scanners") or SERVICE_SCANNERS)
    if params.get("service"):
        services = [catalog.get(params["service"])]
    elif context["dag_run"].run_type == "manual":
        services = list(catalog.services)
    else:
        start = context["data_interval_start"] or context["logical_date"]
        end = context["data_interval_end"] or start
        services = due_services(catalog.services, start, end)
    items = [
        {"service": s.name, "scanner": sc}
        for s in services
        for sc in s.scanners
        if sc in wanted_scanners and sc in SERVICE_SCANNERS
    ]
    log.info("scans planned: %s", items or "none due")
    return items


def _fail_run(scan_run_id: int, exc: BaseException) -> None:
    from selfheal.triage import store

    try:
        store.finish_scan_run(_engine(), scan_run_id, status="failed")
    except Exception:
        log.exception("could not mark scan run %s failed", scan_run_id)
    log.error("scan run %s failed: %s", scan_run_id, exc)


def _raise_for(exc: ScannerError) -> None:
    """Wrong credentials or a missing scan: retrying cannot help, fail at once with the message."""
    if isinstance(exc, ScannerAuthError | ScannerNotFoundError):
        raise AirflowFailException(str(exc)) from exc
    raise AirflowException(str(exc)) from exc


@task(retries=3, retry_delay=timedelta(seconds=20), retry_exponential_backoff=2.0)
@with_log_context(service="item.service", scanner="item.scanner")
def start_scan(item: dict[str, str]) -> dict[str, Any]:
    """Register the scan run and start the scanner; returns a small handle (ids only)."""
    from selfheal.scanners import inbox
    from selfheal.triage import store

    svc = load_catalog().get(item["service"])
    scanner = item["scanner"]
    engine = _engine()
    run_id = store.start_scan_run(engine, scanner, svc.name, scope=svc.base_url)
    handle: dict[str, Any] = {"service": svc.name, "scanner": scanner, "scan_run_id": run_id, "target": svc.base_url}
    try:
        if scanner == "zap":
            from selfheal.scanners.zap import ZapHook

            scan = ZapHook().start_scan(svc.base_url, openapi_url=svc.openapi_url, policy=svc.scan.zap_policy)
            handle.update(spider_id=scan.spider_id, ascan_id=scan.ascan_id)
        elif scanner == "gvm":
            from selfheal.scanners.gvm import GvmHook

            hosts = svc.scan.gvm_hosts or (urlsplit(svc.base_url).hostname or "127.0.0.1",)
            scan = GvmHook().start_scan(svc.name, hosts, scan_config=svc.scan.gvm_scan_config)
            handle.update(task_id=scan.task_id, report_id=scan.report_id)
        elif scanner == "wapiti":
            # Wapiti runs here, to completion, in its own venv; its report goes straight to the inbox.
            from selfheal.scanners import wapiti

            kwargs: dict[str, Any] = {"max_scan_time": svc.scan.wapiti_max_scan_s, "openapi_url": svc.openapi_url}
            if svc.scan.wapiti_modules:
                kwargs["modules"] = svc.scan.wapiti_modules
            result = wapiti.scan(svc.base_url, **kwargs)
            handle["inbox_ids"] = [inbox.put(
                engine, scan_run_id=run_id, scanner=scanner, fmt=FORMATS[scanner], service=svc.name,
                source=f"wapiti:{svc.name}:run{run_id}", body=result.report,
            )]
            handle["duration_s"] = round(result.duration_s, 2)
        elif scanner == "inspector":
            pass  # nothing to start: Inspector2 scans continuously; collect pulls what changed
        else:
            raise AirflowFailException(f"scanner {scanner!r} is not a per-service scanner")
    except ScannerError as e:
        _fail_run(run_id, e)
        _raise_for(e)
    return handle


class ScanCompleteSensor(_ScanSensor):
    """Wait for whichever scanner the (mapped) handle names; deferred, so no worker slot is held.

    Wapiti already ran to completion in `start_scan`, so its handle passes straight through.
    """

    template_fields: Sequence[str] = ("handle",)

    def __init__(self, *, handle: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.handle = handle

    @with_log_context(service="self.handle.service", scanner="self.handle.scanner",
                      scan_run_id="self.handle.scan_run_id")
    def execute(self, context: Context) -> dict[str, Any] | None:
        if self.handle["scanner"] not in ("zap", "gvm"):
            return self.handle
        # Poll interval and timeout are per service (catalog `scan:`), read at run time.
        settings = load_catalog().get(self.handle["service"]).scan
        self.poke_interval, self.timeout = settings.poke_interval_s, settings.timeout_s
        return super().execute(context)

    def _trigger(self, deadline: float):
        h = self.handle
        if h["scanner"] == "zap":
            return ZapScanCompleteTrigger(conn_id="zap_default", spider_id=str(h["spider_id"]),
                                          ascan_id=str(h["ascan_id"]), deadline=deadline,
                                          poke_interval=self.poke_interval)
        return GmpTaskFinishedTrigger(conn_id="gvm_default", task_id=str(h["task_id"]),
                                      report_id=str(h.get("report_id") or "") or None, deadline=deadline,
                                      poke_interval=self.poke_interval)

    @with_log_context(service="self.handle.service", scanner="self.handle.scanner",
                      scan_run_id="self.handle.scan_run_id")
    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            result = super().execute_complete(context, event)
        except Exception as e:
            _fail_run(int(self.handle["scan_run_id"]), e)
            raise
        return {**self.handle, "report_id": result.get("finished_report_id") or self.handle.get("report_id"),
                "polls": result.get("polls")}


@task(retries=3, retry_delay=timedelta(seconds=20), retry_exponential_backoff=2.0)
@with_log_context(service="handle.service", scanner="handle.scanner", scan_run_id="handle.scan_run_id")
def collect_report(handle: dict[str, Any]) -> dict[str, Any]:
    """Fetch the finished scan's full report into the inbox; only its id moves on."""
    from selfheal.scanners import inbox

    scanner = handle["scanner"]
    if handle.get("inbox_ids"):
        return handle
    engine = _engine()
    run_id = int(handle["scan_run_id"])
    try:
        if scanner == "zap":
            from selfheal.scanners.zap import ZapHook

            hook = ZapHook()
            body = hook.alerts_json(handle["target"])
            source = f"zap:{handle['service']}:ascan{handle['ascan_id']}"
        elif scanner == "gvm":
            from selfheal.scanners.gvm import GvmHook

            body = GvmHook().report_xml(str(handle["report_id"]))
            source = f"gvm:{handle['service']}:report{handle['report_id']}"
        elif scanner == "inspector":
            from selfheal.scanners.inspector import InspectorHook

            ids: list[int] = []
            synced = InspectorHook().sync(inbox.PgWatermarkStore(engine), lambda page: ids.append(inbox.put(
                engine, scan_run_id=run_id, scanner=scanner, fmt=FORMATS[scanner], service=handle["service"],
                source=f"inspector2:run{run_id}:page{len(ids) + 1}", body=page.body)))
            return {**handle, "inbox_ids": ids, "pages": synced.pages}
        else:
            raise AirflowFailException(f"nothing to collect for scanner {scanner!r}")
    except ScannerError as e:
        _fail_run(run_id, e)
        _raise_for(e)
    inbox_id = inbox.put(engine, scan_run_id=run_id, scanner=scanner, fmt=FORMATS[scanner],
                         service=handle["service"], source=source, body=body)
    if scanner == "zap":
        # The report is safe in the inbox: free ZAP's memory of the finished scans.
        hook.remove_scans(spider_id=str(handle["spider_id"]), ascan_id=str(handle["ascan_id"]))
    return {**handle, "inbox_ids": [inbox_id], "report_bytes": len(body)}


def inline_mitigator(engine: Any) -> InlineMitigator | None:
    """Instant mitigations for the ingest, prepared before its commit (policy compiled, gateway
    connected), so the commit -> blocked path is short. None when even that fails: the ingest
    goes on and the remediation DAG's first step applies the rules instead."""
    from airflow.sdk import Variable

    from selfheal.remediation.mitigate import prepare_inline
    from selfheal.runtime import GATEWAY_VARIABLE

    try:
        return prepare_inline(engine, load_catalog(), Variable.get(GATEWAY_VARIABLE, default=None))
    except Exception as e:  # noqa: BLE001 - e.g. a broken catalog: never a reason to lose an ingest
        log.warning("instant mitigations disabled for this ingest: %s", " ".join(str(e).split())[:300])
        return None


def _mitigate(mitigator: InlineMitigator | None, result: Any) -> dict[str, int] | None:
    """Apply the instant mitigations for what this ingest created or reopened; logs, never raises."""
    if mitigator is None:
        return None
    from selfheal.remediation.mitigate import summarize

    try:
        done = mitigator([*result.new_ids, *result.reopened_ids])
    except Exception:  # the findings are committed; the remediation DAG catches up on these
        log.exception("instant mitigations failed after the ingest committed")
        return {"error": 1}
    for r in done:
        if r["outcome"] in ("applied", "failed"):
            level = logging.INFO if r["outcome"] == "applied" else logging.WARNING
            log.log(level, "finding %s: %s %s: %s", r["finding_id"], r["outcome"], r["rule_id"], r["reason"])
    return summarize(done)


def ingest_inbox(
    engine: Any, handle: dict[str, Any], *, complete_scope: bool, mitigator: InlineMitigator | None = None
) -> dict[str, Any]:
    """Ingest the handle's inbox reports into the triage store and drop them from the inbox.

    Right after the commit, ``mitigator`` (see ``inline_mitigator``) applies the instant
    virtual patches policy allows for the findings this ingest created or reopened.
    Re-running after a crash is harmless: ingest skips bytes it already has (sha256),
    and reports already moved out of the inbox are simply gone.
    """
    from selfheal.scanners import inbox
    from selfheal.triage import store

    reports = inbox.load(engine, handle.get("inbox_ids") or [])
    started = time.monotonic()
    result = store.ingest_reports(
        engine,
        [store.ReportIn(r.body, r.source, r.fmt, r.service) for r in reports],
        scan_run_id=int(handle["scan_run_id"]),
        complete_scope=complete_scope,
    )
    mitigations = _mitigate(mitigator, result)
    with engine.begin() as conn:
        inbox.delete(conn, [r.id for r in reports])
    quarantined = [o.error for o in result.reports if o.status == "quarantined"]
    for err in quarantined:
        log.error("quarantined: %s", err)
    out = {"service": handle.get("service"), "scanner": handle.get("scanner"), "scan_run_id": result.scan_run_id,
           **result.counts(), "seconds": round(time.monotonic() - started, 3)}
    if mitigations is not None:
        out["mitigations"] = mitigations
    return out


@task(outlets=[FINDINGS_ASSET])
@with_log_context(service="handle.service", scanner="handle.scanner", scan_run_id="handle.scan_run_id")
def ingest(handle: dict[str, Any]) -> dict[str, Any]:
    """Store raw, upsert findings, record observations, close the run, then apply the
    instant mitigations (virtual patches) policy allows for what was new or reopened.

    A full scan (ZAP, Greenbone, Wapiti) covered the service's whole scope, so
    it resolves what it no longer sees; Inspector2's incremental pull does not.
    """
    from selfheal.triage import store

    engine = _engine()
    full = handle["scanner"] != "inspector"
    mitigator = inline_mitigator(engine)
    try:
        out = ingest_inbox(engine, handle, complete_scope=full, mitigator=mitigator)
    finally:
        if mitigator is not None:
            mitigator.close()
    if not full:
        store.finish_scan_run(engine, int(handle["scan_run_id"]), status="succeeded")
    return out


# --------------------------------------------------------------------- Inspector2


@task
def inspector_watermark() -> str:
    """The stored Inspector2 watermark as ISO text ('' when none): the sensor's `since`."""
    from selfheal.scanners import inbox
    from selfheal.scanners.inspector import InspectorHook, watermark_key

    hook = InspectorHook()
    value = inbox.PgWatermarkStore(_engine()).get(watermark_key(hook.aws_conn_id, hook.region_name))
    return value.isoformat() if value else ""


def inspector_service() -> str | None:
    """Inspector2 findings are account-wide: they belong to the one catalog service that
    lists `inspector`, else stay unassigned (service NULL) for triage to route."""
    names = [s.name for s in load_catalog().services if "inspector" in s.scanners]
    return names[0] if len(names) == 1 else None


@task(outlets=[FINDINGS_ASSET], retries=3, retry_delay=timedelta(seconds=30), retry_exponential_backoff=2.0)
def inspector_ingest() -> dict[str, Any]:
    """Pull every page changed since the watermark into the inbox, ingest them, then advance the watermark."""
    from selfheal.scanners import inbox
    from selfheal.scanners.inspector import InspectorHook
    from selfheal.triage import store

    engine = _engine()
    service = inspector_service()
    run_id = store.start_scan_run(engine, "inspector", service, scope="aws-account")
    totals: dict[str, Any] = {"pages": 0}
    hook = InspectorHook()

    def ingest_page(page: Any) -> None:
        # Each page is ingested as it arrives; the watermark advances only after the last one,
        # so a failure half way re-reads (and re-ingests idempotently) on retry.
        totals["pages"] += 1
        inbox_id = inbox.put(engine, scan_run_id=run_id, scanner="inspector", fmt=FORMATS["inspector"],
                             service=service, source=f"inspector2:run{run_id}:page{totals['pages']}", body=page.body)
        counts = ingest_inbox(engine, {"scan_run_id": run_id, "service": service, "scanner": "inspector",
                                       "inbox_ids": [inbox_id]}, complete_scope=False)
        for k, v in counts.items():
            if isinstance(v, int | float) and k not in ("scan_run_id",):
                totals[k] = totals.get(k, 0) + v

    try:
        synced = hook.sync(inbox.PgWatermarkStore(engine), ingest_page)
    except ScannerError as e:
        _fail_run(run_id, e)
        _raise_for(e)
    store.finish_scan_run(engine, run_id, status="succeeded")
    if not totals["pages"]:
        raise AirflowSkipException("no Inspector2 finding changed since the watermark")
    return {**totals, "scan_run_id": run_id, "service": service,
            "watermark": synced.watermark.astimezone(UTC).isoformat() if synced.watermark else None}

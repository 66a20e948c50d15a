"""selfheal_scan: scan every catalogued service with its scanners and triage what they find.

Ticks every 15 minutes; each service is scanned when its own catalog `schedule`
is due. Trigger it by hand with the form to scan one service (or all) now.
Per (service x scanner): start -> wait (deferred: holds no worker slot) ->
collect (report into the inbox, by id) -> ingest (raw kept, findings upserted,
observations recorded, scan run closed). Each ingest emits the
`selfheal_findings` asset, which schedules `selfheal_remediate`.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from selfheal.tasks import scan

with DAG(
    dag_id="selfheal_scan",
    schedule="*/15 * * * *",
    catchup=False,
    max_active_runs=1,
    tags=["selfheal", "scan"],
    doc_md=__doc__,
    default_args={"owner": "selfheal", "retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "service": Param("", type="string", title="Service",
                         description="A service name from include/services.yaml; empty scans all of them."),
        "scanners": Param(list(scan.SERVICE_SCANNERS), type="array", title="Scanners",
                          items={"type": "string", "enum": list(scan.SERVICE_SCANNERS)},
                          description="Which scanners to run (each only where the catalog enables it)."),
    },
) as dag:
    handles = scan.start_scan.expand(item=scan.plan_scans())
    finished = scan.ScanCompleteSensor.partial(
        task_id="wait_for_scan", poke_interval=30, timeout=6 * 3600,
    ).expand(handle=handles)
    scan.ingest.expand(handle=scan.collect_report.expand(handle=finished.output))

"""selfheal_inspector_sync: pull AWS Inspector2 findings that changed since the stored watermark.

The sensor defers (no worker slot held) until Inspector2 reports a new or
changed finding, then every changed page is ingested and the watermark moves
on. A quiet hour ends as skipped, not failed.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from selfheal.scanners.inspector import InspectorFindingsSensor
from selfheal.tasks import scan

with DAG(
    dag_id="selfheal_inspector_sync",
    schedule="@hourly",
    catchup=False,
    max_active_runs=1,
    tags=["selfheal", "scan", "aws"],
    doc_md=__doc__,
    default_args={"owner": "selfheal", "retries": 2, "retry_delay": timedelta(minutes=1)},
) as dag:
    since = scan.inspector_watermark()
    wait_for_findings = InspectorFindingsSensor(
        task_id="wait_for_findings", since=since, poke_interval=60, timeout=55 * 60,
    )
    since >> wait_for_findings >> scan.inspector_ingest()

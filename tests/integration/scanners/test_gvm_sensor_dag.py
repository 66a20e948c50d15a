"""GmpTaskSensor: defers to its trigger, in a real Airflow DAG run with dag.test(), against the GMP double."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from airflow.sdk import DAG, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

from selfheal.findings.parsers import parse_bytes
from selfheal.scanners.gvm import GvmHook
from selfheal.scanners.sensors import GmpTaskSensor
from selfheal.scanners.triggers import GmpTaskFinishedTrigger

pytestmark = pytest.mark.airflow


def _dag(dag_id: str, conn_id: str, seen: dict[str, Any], register) -> DAG:
    with DAG(dag_id=dag_id, schedule=None, start_date=datetime(2025, 1, 1, tzinfo=UTC), catchup=False) as dag:

        @task
        def start_scan() -> dict[str, Any]:
            return GvmHook(conn_id).start_scan("shop-api", ["127.0.0.1"]).as_dict()

        started = start_scan()
        wait = GmpTaskSensor(
            task_id="wait_for_gmp",
            gvm_conn_id=conn_id,
            task_id_to_watch=started["task_id"],
            report_id=started["report_id"],
            poke_interval=0.1,
            timeout=30,
        )

        @task
        def collect(event: dict[str, Any]) -> int:
            raw = GvmHook(conn_id).report_xml(event["report_id"])
            findings = parse_bytes(raw, "gmp-report.xml", fmt="gmp-xml", service="shop-api")
            seen.update(event=event, findings=len(findings))
            return len(findings)

        collect(wait.output)
    return register(dag)


def test_sensor_defers_and_completes_in_a_dag_run(airflow_db, register_dag, gmp, gvm_conn, release_when):
    # The task stays Running until the trigger has polled it twice (start_scan reads it once itself).
    gmp.hang_at = 50
    task_reads = lambda: sum(1 for tag, attrs in gmp.requests if tag == "get_tasks" and "task_id" in attrs)  # noqa: E731
    release_when(lambda: task_reads() >= 3, lambda: setattr(gmp, "hang_at", None))
    seen: dict[str, Any] = {}
    dr = _dag("selfheal_test_gmp_sensor", gvm_conn(), seen, register_dag).test()
    assert dr.state == "success"
    event = seen["event"]
    assert event["status"] == "success" and event["task_status"] == "Done" and event["polls"] >= 2
    assert seen["findings"] == 13


def test_interrupted_scan_fails_the_run(airflow_db, register_dag, gmp, gvm_conn):
    gmp.final_status = "Interrupted"
    seen: dict[str, Any] = {}
    dr = _dag("selfheal_test_gmp_sensor_interrupted", gvm_conn(), seen, register_dag).test()
    assert dr.state == "failed"
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert states == {"start_scan": "success", "wait_for_gmp": "failed", "collect": "upstream_failed"}


def test_execute_defers_with_ids_only(gmp, gvm_conn):
    sensor = GmpTaskSensor(task_id="w", gvm_conn_id=gvm_conn(), task_id_to_watch="t-1", report_id="r-1")
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    trigger = deferred.value.trigger
    assert isinstance(trigger, GmpTaskFinishedTrigger)
    assert (trigger.task_id, trigger.report_id) == ("t-1", "r-1")
    assert gmp.password not in repr(trigger.serialize())


def test_scan_failure_may_be_retried_but_credentials_may_not():
    sensor = GmpTaskSensor(task_id="w", task_id_to_watch="t-1")
    failed = {"status": "error", "reason": "scan_failed", "message": "GMP task t-1 ended Interrupted: boom"}
    with pytest.raises(AirflowException, match="ended Interrupted: boom") as err:
        sensor.execute_complete({}, failed)
    assert not isinstance(err.value, AirflowFailException)
    with pytest.raises(AirflowFailException, match="Authentication failed"):
        sensor.execute_complete({}, {"status": "error", "reason": "auth", "message": "Authentication failed"})

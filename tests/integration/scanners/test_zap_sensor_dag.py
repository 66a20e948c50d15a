"""ZapScanSensor: defers to its trigger, in a real Airflow DAG run with dag.test(), against the ZAP double."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from airflow.sdk import DAG, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout, TaskDeferred

from selfheal.scanners.sensors import ZapScanSensor
from selfheal.scanners.triggers import ZapScanCompleteTrigger
from selfheal.scanners.zap import ZapHook

pytestmark = pytest.mark.airflow


def _dag(dag_id: str, conn_id: str, target, seen: dict[str, Any], register) -> DAG:
    with DAG(dag_id=dag_id, schedule=None, start_date=datetime(2025, 1, 1, tzinfo=UTC), catchup=False) as dag:

        @task
        def start_scan() -> dict[str, Any]:
            hook = ZapHook(conn_id)
            return hook.start_scan(target.url, openapi_url=target.openapi_url, policy="API-Minimal").as_dict()

        started = start_scan()
        wait = ZapScanSensor(
            task_id="wait_for_zap",
            zap_conn_id=conn_id,
            spider_id=started["spider_id"],
            ascan_id=started["ascan_id"],
            poke_interval=0.1,
            timeout=30,
        )

        @task
        def collect(event: dict[str, Any], scan: dict[str, Any]) -> int:
            hook = ZapHook(conn_id)
            alerts = json.loads(hook.alerts_json(scan["target_url"]))["alerts"]
            hook.remove_scans(spider_id=scan["spider_id"], ascan_id=scan["ascan_id"])
            seen.update(event=event, alerts=len(alerts))
            return len(alerts)

        collect(wait.output, started)
    return register(dag)


def test_sensor_defers_and_completes_in_a_dag_run(
    airflow_db, register_dag, zap, target, zap_conn, release_when
):
    # The active scan stays at 50% until the trigger has polled twice: the sensor provably waited.
    zap.ascan_hang_at = 50
    release_when(
        lambda: zap.api_calls("JSON/ascan/view/status") >= 2, lambda: setattr(zap, "ascan_hang_at", None)
    )
    seen: dict[str, Any] = {}
    dr = _dag("selfheal_test_zap_sensor", zap_conn(), target, seen, register_dag).test()
    assert dr.state == "success"
    # The sensor's result is the trigger's event, handed back through execute_complete: it deferred.
    event = seen["event"]
    assert event["status"] == "success" and event["scanner"] == "zap"
    assert event["polls"] >= 3 and event["progress"]["active"] == 100
    assert seen["alerts"] == 125


def test_sensor_fails_the_run_on_a_wrong_key(airflow_db, register_dag, zap, target, zap_conn, monkeypatch):
    seen: dict[str, Any] = {}
    conn_id = zap_conn()
    dag = _dag("selfheal_test_zap_sensor_badkey", conn_id, target, seen, register_dag)
    # The scan starts with the right key; then the key is rotated under the waiting sensor.
    original = ZapScanSensor.execute

    def execute_after_rotation(self, context):
        zap.api_key = "rotated"
        return original(self, context)

    monkeypatch.setattr(ZapScanSensor, "execute", execute_after_rotation)
    dr = dag.test()
    assert dr.state == "failed"
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert states == {"start_scan": "success", "wait_for_zap": "failed", "collect": "upstream_failed"}
    assert "event" not in seen
    assert zap.api_calls("JSON/spider/view/status") == 1  # failed on the first poll, no retry loop


def test_execute_defers_with_ids_only(zap_conn, zap):
    sensor = ZapScanSensor(task_id="w", zap_conn_id=zap_conn(), spider_id="1", ascan_id="2", timeout=60)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    trigger = deferred.value.trigger
    assert isinstance(trigger, ZapScanCompleteTrigger)
    assert deferred.value.method_name == "execute_complete"
    assert zap.api_key not in json.dumps(trigger.serialize()[1])


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ({"status": "timeout", "message": "not finished by the deadline"}, AirflowSensorTimeout),
        ({"status": "error", "reason": "auth", "message": "wrong API key"}, AirflowFailException),
        ({"status": "error", "reason": "not_found", "message": "no scan 4"}, AirflowFailException),
        ({"status": "error", "reason": "api", "message": "url_not_found"}, AirflowException),
    ],
)
def test_execute_complete_turns_events_into_clear_failures(event, error):
    sensor = ZapScanSensor(task_id="w", spider_id="1", ascan_id="2")
    with pytest.raises(error, match=event["message"]) as raised:
        sensor.execute_complete({}, event)
    if error is AirflowException:
        assert not isinstance(raised.value, AirflowFailException)

"""InspectorFindingsSensor in a real Airflow run (dag.test()): defer, trigger inline, resume.

Each test builds a two-task DAG (sensor >> ingest) in the shape the lead's
``selfheal_inspector_sync`` DAG will have, registers it in Airflow's metadata DB the
way the DAG processor would, and runs it with dag.test() against moto in server mode.
The in-memory watermark store stands in for the Postgres one (the run is in-process).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pendulum
import pytest
from airflow.sdk import DAG, task
from airflow.utils.state import DagRunState, TaskInstanceState

from selfheal.findings.parsers import parse_bytes
from selfheal.scanners.inspector import (
    InMemoryWatermarkStore,
    InspectorFindingsSensor,
    InspectorHook,
    iso,
    watermark_key,
)
from tests.doubles.inspector_moto import MotoInspector2, connection_json, free_closed_port, sample_findings

pytestmark = pytest.mark.airflow

T1 = datetime(2026, 2, 1, 12, 0, 0, 500000, tzinfo=UTC)
T2 = datetime(2026, 2, 2, 12, 0, 0, 750000, tzinfo=UTC)
KEY = watermark_key("aws_default", None)
STORE = InMemoryWatermarkStore()  # module level: dag.test() runs the tasks in this process


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoInspector2]:
    with MotoInspector2() as server:
        yield server


@pytest.fixture
def moto(moto_server: MotoInspector2, monkeypatch: pytest.MonkeyPatch, airflow_db) -> MotoInspector2:
    moto_server.reset()
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", connection_json(moto_server.endpoint_url))
    STORE.set(KEY, T1)
    return moto_server


def _network_finding(name: str, updated: datetime) -> dict[str, Any]:
    mixed = sample_findings("handmade/inspector2_mixed.json")
    f = json.loads(json.dumps(next(x for x in mixed if x["type"] == "NETWORK_REACHABILITY")))
    f["findingArn"] = f"arn:aws:inspector2:us-east-1:123456789012:finding/{name}"
    f["updatedAt"] = updated.isoformat()
    return f


def _register(dag: DAG) -> None:
    """Write the DAG to the metadata DB as the DAG processor would (dag.test() needs it serialized)."""
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    with create_session() as session:
        update_dag_parsing_results_in_db(
            "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(), session=session
        )


def _sync_dag(dag_id: str, **sensor_kwargs: Any) -> DAG:
    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False) as dag:
        wait = InspectorFindingsSensor(
            task_id="wait_for_findings",
            watermark_store=STORE,
            watermark_key=KEY,
            poke_interval=0.2,
            **{"timeout": 20, **sensor_kwargs},
        )

        @task
        def ingest() -> dict[str, Any]:
            parsed = []

            def handle(page: Any) -> None:
                parsed.extend(parse_bytes(page.body, "inspector2-page", fmt="inspector2"))

            result = InspectorHook().sync(STORE, handle, key=KEY)
            return {"findings": result.findings, "parsed": len(parsed), "watermark": iso(result.watermark)}

        wait >> ingest()
    _register(dag)
    return dag


def _xcom(dr, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id, task_ids=task_id, key="return_value")
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


def _states(dr) -> dict[str, Any]:
    return {ti.task_id: (ti.state, ti.try_number) for ti in dr.get_task_instances()}


def test_sensor_defers_fires_on_a_changed_finding_and_the_sync_ingests_it(moto: MotoInspector2) -> None:
    boundary, changed = _network_finding("boundary", T1), _network_finding("changed", T2)
    # 1st distinct query = the trigger's (maxResults 1), 2nd = the sync's (maxResults 100).
    moto.queue_results([changed], [boundary, changed])

    dr = _sync_dag("test_inspector_sensor_fires").test()

    states = _states(dr)
    assert dr.state == DagRunState.SUCCESS, states
    event = _xcom(dr, "wait_for_findings")
    assert event["status"] == "success" and event["finding_arn"].endswith("/changed"), event
    assert event["since"] == iso(T1) and event["updated_at"] == iso(T2)
    # The sync re-reads from the stored watermark (inclusive), parses with the real parser, advances.
    assert _xcom(dr, "ingest") == {"findings": 2, "parsed": 2, "watermark": iso(T2)}
    assert STORE.get(KEY) == T2
    assert [q["maxResults"] for q in moto.queries()] == [1, 100]


def test_sensor_is_skipped_when_nothing_changed_before_its_timeout(moto: MotoInspector2) -> None:
    dr = _sync_dag("test_inspector_sensor_quiet", timeout=1).test()

    states = _states(dr)
    assert states["wait_for_findings"][0] == TaskInstanceState.SKIPPED, states
    assert states["ingest"][0] == TaskInstanceState.SKIPPED
    assert dr.state == DagRunState.SUCCESS  # a quiet account is not a failed run
    assert STORE.get(KEY) == T1


def test_sensor_fails_once_without_retries_when_credentials_are_rejected(moto, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", connection_json(moto.endpoint_url, password="wrong"))
    dag = _sync_dag("test_inspector_sensor_badcreds", retries=2, retry_delay=timedelta(seconds=0))
    with moto.require_auth():
        dr = dag.test()

    states = _states(dr)
    assert dr.state == DagRunState.FAILED, states
    assert states["wait_for_findings"] == (TaskInstanceState.FAILED, 1)  # AirflowFailException: no retry
    assert states["ingest"][0] == TaskInstanceState.UPSTREAM_FAILED


def test_poke_mode_tells_a_quiet_account_from_a_down_endpoint(moto: MotoInspector2, monkeypatch) -> None:
    quiet = _sync_dag("test_inspector_sensor_poke_quiet", deferrable=False, timeout=0.6).test()
    assert _states(quiet)["wait_for_findings"][0] == TaskInstanceState.SKIPPED, _states(quiet)

    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", connection_json(f"http://127.0.0.1:{free_closed_port()}"))
    down = _sync_dag("test_inspector_sensor_poke_down", deferrable=False, timeout=0.6).test()
    assert _states(down)["wait_for_findings"][0] == TaskInstanceState.FAILED, _states(down)
    assert down.state == DagRunState.FAILED

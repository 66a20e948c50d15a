"""selfheal_doctor runs for real (dag.test()) against the real Postgres and Docker engine."""

from __future__ import annotations

import pytest
from airflow.utils.state import DagRunState, TaskInstanceState

from selfheal import doctor

pytestmark = [pytest.mark.airflow, pytest.mark.docker, pytest.mark.postgres]


def _states(dr) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in dr.get_task_instances()}


def test_doctor_passes_on_a_prepared_machine(dagbag, migrated_triage_url, base_image, monkeypatch) -> None:
    monkeypatch.setenv("SELFHEAL_DATABASE_URL", migrated_triage_url)
    monkeypatch.setenv("AIRFLOW_VAR_SELFHEAL_BASE_IMAGE", base_image)
    dag = dagbag.get_dag("selfheal_doctor")
    dr = dag.test()
    states = _states(dr)
    assert dr.state == DagRunState.SUCCESS, states
    assert states["sandbox_network_none"] == TaskInstanceState.SUCCESS
    assert set(states.values()) == {TaskInstanceState.SUCCESS}


def test_doctor_fails_and_says_what_to_fix_when_the_db_is_unmigrated(dagbag, pg_url, base_image, monkeypatch):
    monkeypatch.setenv("SELFHEAL_DATABASE_URL", pg_url)
    monkeypatch.setenv("AIRFLOW_VAR_SELFHEAL_BASE_IMAGE", base_image)
    dr = dagbag.get_dag("selfheal_doctor").test()
    states = _states(dr)
    assert dr.state == DagRunState.FAILED
    assert states["triage_db"] == TaskInstanceState.FAILED
    assert states["docker_engine"] == TaskInstanceState.SUCCESS
    assert states["summary"] == TaskInstanceState.UPSTREAM_FAILED
    with pytest.raises(doctor.CheckFailed, match="selfheal db upgrade"):
        doctor.check_triage_db(pg_url).raise_if_failed()


def test_doctor_names_the_missing_base_image(docker_client) -> None:
    result = doctor.check_base_image(docker_client, "selfheal/base:does-not-exist")
    assert not result.ok
    assert "include/sandbox/base-image/build.sh selfheal/base:does-not-exist" in result.fix


def test_sandbox_probe_fails_when_the_network_is_not_cut(docker_client, base_image) -> None:
    """The network_mode='none' probe is not a check that cannot fail: on the default bridge it exits 3."""
    from selfheal.tasks.doctor import NETWORK_NONE_PROBE

    container = docker_client.containers.run(base_image, ["python3", "-c", NETWORK_NONE_PROBE], detach=True)
    try:
        assert container.wait(timeout=60)["StatusCode"] == 3
        assert b"eth0" in container.logs()
    finally:
        container.remove(force=True)


def test_unreachable_db_is_reported_without_the_password() -> None:
    result = doctor.check_triage_db("postgresql+psycopg://u:s3cret@127.0.0.1:1/x")
    assert not result.ok
    assert "s3cret" not in result.detail and "***" in result.detail

"""selfheal_doctor: the installation check. Run it after installing or changing
connections; each task checks one prerequisite for real and fails with what to fix."""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.docker.operators.docker import DockerOperator
from airflow.sdk import DAG

from selfheal.tasks import doctor

with DAG(
    dag_id="selfheal_doctor",
    schedule=None,
    catchup=False,
    tags=["selfheal", "ops"],
    default_args={"owner": "selfheal", "retries": 0, "retry_delay": timedelta(seconds=10)},
    doc_md=__doc__,
    max_active_runs=1,
) as dag:
    engine = doctor.docker_engine()
    image = doctor.base_image()
    sandbox_network_none = DockerOperator(
        task_id="sandbox_network_none",
        doc_md="Runs the sandbox base image with network_mode='none': only loopback may exist.",
        image="{{ var.value.get('selfheal_base_image', 'selfheal/base:bookworm') }}",
        command=["python3", "-c", doctor.NETWORK_NONE_PROBE],
        network_mode="none",
        auto_remove="force",
        mount_tmp_dir=False,
        mem_limit="128m",
        cpus=0.5,
        user="65534:65534",
    )
    engine >> image >> sandbox_network_none
    report = doctor.summary(doctor.triage_db(), engine, image, doctor.haproxy(), doctor.scanner_connections())
    sandbox_network_none >> report

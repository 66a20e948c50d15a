"""Fixtures for the real services every test layer reuses.

`make test` starts the services (scripts/services.sh) and exports their URLs;
run pytest by hand and the fixtures start what is missing through the same
script, so both paths use one recipe.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SERVICES = REPO / "scripts" / "services.sh"

# Airflow reads its configuration when first imported, so the test Airflow home
# is set here, before any test module imports it (under .run/, reset per session).
AIRFLOW_TEST_HOME = Path(os.environ.get("SELFHEAL_RUN_DIR", REPO / ".run")) / "airflow-test-home"
os.environ["AIRFLOW_HOME"] = str(AIRFLOW_TEST_HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{AIRFLOW_TEST_HOME / 'airflow.db'}")
os.environ.setdefault(
    "AIRFLOW_VAR_SELFHEAL_BASE_IMAGE", os.environ.get("SELFHEAL_BASE_IMAGE", "selfheal/base:bookworm")
)
AIRFLOW_TEST_HOME.mkdir(parents=True, exist_ok=True)


def _services_env(*what: str) -> dict[str, str]:
    """Start services via scripts/services.sh and return the variables it exports."""
    subprocess.run([str(SERVICES), "start", *what], check=True)
    out = subprocess.run([str(SERVICES), "env"], check=True, capture_output=True, text=True).stdout
    env: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith("export ") and "=" in line:
            k, v = line[len("export ") :].split("=", 1)
            if not v.startswith("${"):
                env[k] = v
    return env


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """URL of the test cluster's `selfheal_test` database (real PostgreSQL)."""
    url = os.environ.get("SELFHEAL_TEST_DATABASE_URL")
    if not url:
        url = _services_env("postgres")["SELFHEAL_TEST_DATABASE_URL"]
        os.environ["SELFHEAL_TEST_DATABASE_URL"] = url
    return url


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database per test on the real cluster, dropped afterwards."""
    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    base, _, _ = pg_admin_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def docker_client():
    """A docker-py client for the real engine (started through services.sh when down)."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException:
        _services_env("docker")
        client = docker.from_env()
        client.ping()
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client) -> str:
    """Tag of the offline sandbox base image, built once when missing."""
    tag = os.environ.get("SELFHEAL_BASE_IMAGE", "selfheal/base:bookworm")
    try:
        docker_client.images.get(tag)
    except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound; build it
        _services_env("base-image")
    return tag


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Airflow's metadata DB, fresh and migrated once per session (dag.test() needs it).

    Fresh, so state left by an earlier run (serialized DAGs, assets, runs) never
    leaks into this one."""
    from airflow.utils import db

    db.resetdb()
    return AIRFLOW_TEST_HOME


@pytest.fixture(scope="session")
def dagbag(airflow_db):
    """Every DAG file in dags/, parsed once by Airflow's real DagBag."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


@pytest.fixture
def migrated_triage_url(pg_url: str) -> str:
    """A fresh triage database on the real cluster, migrated to the newest revision."""
    from selfheal.triage.migrate import upgrade

    upgrade(pg_url)
    return pg_url


@pytest.fixture(scope="session")
def wapiti_bin() -> Path:
    """The real Wapiti in its own venv, installed by scripts/install-wapiti.sh when missing."""
    from selfheal.scanners import wapiti

    try:
        return wapiti.find_wapiti()
    except wapiti.WapitiError:
        subprocess.run([str(REPO / "scripts" / "install-wapiti.sh")], check=True)
        return wapiti.find_wapiti()

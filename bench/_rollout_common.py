"""Shared set-up for the rollout benchmarks: the real Docker engine, the offline base image, Postgres.

Services are started the way the tests start them (scripts/services.sh, which
owns and stops them by PID); nothing here is mocked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SERVICES = REPO / "scripts" / "services.sh"
BASE_IMAGE = os.environ.get("SELFHEAL_BASE_IMAGE", "selfheal/base:bookworm")


def _services_env(*what: str) -> dict[str, str]:
    subprocess.run([str(SERVICES), "start", *what], check=True)
    out = subprocess.run([str(SERVICES), "env"], check=True, capture_output=True, text=True).stdout
    env = {}
    for line in out.splitlines():
        if line.startswith("export ") and "=" in line:
            k, v = line[len("export ") :].split("=", 1)
            if not v.startswith("${"):
                env[k] = v
    return env


def docker_client() -> Any:
    """docker-py client for the real engine (started through services.sh when it does not answer)."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException:
        _services_env("docker")
        client = docker.from_env()
        client.ping()
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        _services_env("base-image")
    return client


@contextmanager
def gateway_store() -> Iterator[tuple[Any, str]]:
    """A SqlStateStore in a throwaway database of the Postgres test cluster (SQLite only when
    SELFHEAL_BENCH_SQLITE=1), dropped afterwards."""
    import sqlalchemy as sa

    from selfheal.gateway.state import SqlStateStore

    if os.environ.get("SELFHEAL_BENCH_SQLITE") == "1":
        d = tempfile.mkdtemp(prefix="shrb-db-")
        store = SqlStateStore(f"sqlite:///{d}/gateway.db")
        try:
            store.create_tables()
            yield store, "sqlite"
        finally:
            store.dispose()
            shutil.rmtree(d, ignore_errors=True)
        return
    url = (
        os.environ.get("SELFHEAL_TEST_DATABASE_URL")
        or _services_env("postgres")["SELFHEAL_TEST_DATABASE_URL"]
    )
    name = f"bench_rb_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    store = SqlStateStore(url.rpartition("/")[0] + "/" + name)
    try:
        store.create_tables()
        yield store, "postgresql"
    finally:
        store.dispose()
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

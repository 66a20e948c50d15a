"""Fixtures for the ZAP and GMP connector tests: the protocol doubles, a small target, connections.

Each double is a real server (loopback TCP / Unix socket) started per test and
stopped in teardown; the real zaproxy and python-gvm clients talk to them.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.doubles.gmp_double import GmpDouble
from tests.doubles.zap_api_double import StaticTarget, ZapApiDouble


@pytest.fixture
def zap() -> Iterator[ZapApiDouble]:
    double = ZapApiDouble(spider_seconds=0.3, ascan_seconds=0.6, pscan_seconds=0.2)
    yield double
    double.close()


@pytest.fixture
def target() -> Iterator[StaticTarget]:
    t = StaticTarget()
    yield t
    t.close()


@pytest.fixture
def gmp_socket() -> Iterator[Path]:
    # Not tmp_path: AF_UNIX paths are limited to 107 bytes and pytest's tmp paths can be longer.
    d = Path(tempfile.mkdtemp(prefix="gmp-"))
    yield d / "gvmd.sock"
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def gmp(gmp_socket: Path) -> Iterator[GmpDouble]:
    double = GmpDouble(gmp_socket, scan_seconds=0.6)
    yield double
    double.close()


def conn_env_name(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


@pytest.fixture
def airflow_conn(monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """Define an Airflow connection through the environment (JSON form); returns a fresh conn_id."""

    def make(conn_type: str, **fields: Any) -> str:
        conn_id = f"{conn_type}_{uuid.uuid4().hex[:8]}"
        monkeypatch.setenv(conn_env_name(conn_id), json.dumps({"conn_type": conn_type, **fields}))
        return conn_id

    return make


@pytest.fixture
def zap_conn(airflow_conn: Callable[..., str], zap: ZapApiDouble) -> Callable[..., str]:
    def make(**overrides: Any) -> str:
        fields = {"host": "127.0.0.1", "port": zap.port, "password": zap.api_key, "extra": {"timeout": 5}}
        return airflow_conn("zap", **{**fields, **overrides})

    return make


@pytest.fixture
def gvm_conn(airflow_conn: Callable[..., str], gmp: GmpDouble, gmp_socket: Path) -> Callable[..., str]:
    def make(**overrides: Any) -> str:
        fields = {
            "login": gmp.username,
            "password": gmp.password,
            "extra": {"socket_path": str(gmp_socket), "timeout": 5},
        }
        return airflow_conn("gvm", **{**fields, **overrides})

    return make


def _first_event(trigger: Any, limit_s: float = 30.0) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        gen = trigger.run()
        try:
            event = await asyncio.wait_for(anext(gen), limit_s)
        finally:
            await gen.aclose()
        return event.payload

    return asyncio.run(run())


@pytest.fixture
def first_event() -> Callable[..., dict[str, Any]]:
    """Run a trigger under asyncio, as the triggerer does, and return its first event's payload."""
    return _first_event


@pytest.fixture
def register_dag() -> Callable[[Any], Any]:
    """Write a DAG built in a test to the metadata DB as the DAG processor would (dag.test() needs it)."""

    def register(dag: Any) -> Any:
        from airflow.dag_processing.bundles.manager import DagBundlesManager
        from airflow.dag_processing.collection import update_dag_parsing_results_in_db
        from airflow.serialization.serialized_objects import LazyDeserializedDAG
        from airflow.utils.session import create_session

        # The DAG's bundle row must exist (a foreign key): after a fresh resetdb nothing else made it
        # when these tests run on their own.
        DagBundlesManager().sync_bundles_to_db()
        with create_session() as session:
            update_dag_parsing_results_in_db(
                "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(), session=session
            )
        return dag

    return register


@pytest.fixture
def release_when() -> Iterator[Callable[[Callable[[], bool], Callable[[], None]], None]]:
    """Run `action` once `condition` holds (checked every 20 ms from a thread): lets a test hold a
    scan until the waiting side has provably polled, independent of how slow the machine is."""
    threads: list[threading.Thread] = []
    stop = threading.Event()

    def arm(condition: Callable[[], bool], action: Callable[[], None]) -> None:
        def watch() -> None:
            deadline = time.monotonic() + 120
            while not stop.is_set() and time.monotonic() < deadline:
                if condition():
                    action()
                    return
                stop.wait(0.02)

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        threads.append(t)

    yield arm
    stop.set()
    for t in threads:
        t.join(5)

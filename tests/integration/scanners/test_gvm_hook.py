"""GvmHook against the GMP double on a Unix socket, through the real python-gvm client."""

from __future__ import annotations

import json
import time

import pytest
from gvm.connections import UnixSocketConnection
from gvm.protocols.gmp import GMP
from gvm.transforms import EtreeCheckCommandTransform

from selfheal.findings.parsers import parse_bytes
from selfheal.scanners.errors import ScannerAuthError, ScannerNotFoundError, ScannerTransientError
from selfheal.scanners.gvm import GvmAuthError, GvmHook, GvmHookError, GvmNotFoundError, GvmTransientError
from tests.doubles.gmp_double import GmpDouble


def _wait_done(hook: GvmHook, task_id: str, limit_s: float = 10.0) -> list[tuple[str, int]]:
    seen = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        st = hook.task_status(task_id)
        seen.append((st.status, st.progress))
        if st.status in ("Done", "Stopped", "Interrupted"):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"task not finished: {seen[-1]}")


def test_scan_cycle_creates_once_reuses_and_fetches_every_result(gmp, gvm_conn):
    hook = GvmHook(gvm_conn())
    ok, message = hook.test_connection()
    assert ok and message.startswith("GMP 22.6 at unix:")

    scan = hook.start_scan("shop-api", ["127.0.0.1"])
    again = hook.start_scan("shop-api", ["127.0.0.1"])  # an Airflow retry while the scan runs
    assert again.reused_running and (again.task_id, again.report_id) == (scan.task_id, scan.report_id)
    assert len(gmp.targets) == len(gmp.tasks) == 1
    task = gmp.tasks[scan.task_id]
    assert (
        task.name.startswith("selfheal shop-api [")
        and task.config_id == "daba56c8-73ec-11df-a475-002264764cea"
    )
    assert task.scanner_id == "08b69003-5fc2-4037-a479-93b440211c73"
    assert gmp.targets[scan.target_id].port_list_id == "33d0cd82-57c6-11e1-8ed1-406186ea4fc5"

    seen = _wait_done(hook, scan.task_id)
    assert seen[0][0] in ("Requested", "Running")
    assert any(s == "Running" and 0 < p < 100 for s, p in seen)
    assert seen[-1] == ("Done", -1)  # gvmd reports progress -1 once a task is no longer running

    raw = hook.report_xml(scan.report_id)
    assert raw.startswith(b'<get_reports_response status="200"')
    findings = parse_bytes(raw, "gmp-report.xml", fmt="gmp-xml", service="shop-api")
    assert len(findings) == 13  # 12 results + the QoD-30 log result: no rows limit, no QoD cut
    assert {f.location.host for f in findings} == {"127.0.0.1"}
    assert any("CVE-2023-4573" in f.cves for f in findings)
    assert any(f.cvss_score == 9.8 for f in findings)

    # The same report read with gvmd's defaults loses results: what the hook's filter prevents.
    with GMP(
        UnixSocketConnection(path=str(gmp.socket_path)), transform=EtreeCheckCommandTransform()
    ) as raw_gmp:
        raw_gmp.authenticate(gmp.username, gmp.password)
        default = raw_gmp.get_report(scan.report_id)
    assert len(default.findall("report/report/results/result")) == 10

    later = hook.start_scan("shop-api", ["127.0.0.1"])  # next scheduled scan: same target and task
    assert (later.task_id, later.target_id) == (scan.task_id, scan.target_id)
    assert later.report_id != scan.report_id and not later.reused_running
    assert len(gmp.targets) == len(gmp.tasks) == 1


def test_other_hosts_get_their_own_target_and_task(gmp, gvm_conn):
    hook = GvmHook(gvm_conn())
    a = hook.start_scan("shop-api", ["127.0.0.1"])
    b = hook.start_scan("shop-api", ["10.0.0.5", "10.0.0.6"])
    assert a.target_id != b.target_id and a.task_id != b.task_id
    assert gmp.targets[b.target_id].hosts == ["10.0.0.5", "10.0.0.6"]


@pytest.mark.parametrize("version", ["22.4", "22.5", "22.7", "22.8"])
def test_protocol_versions_python_gvm_negotiates(gmp_socket, gvm_conn, gmp, version):
    gmp.gmp_version = version
    hook = GvmHook(gvm_conn())
    assert hook.version() == version
    scan = hook.start_scan("svc", ["127.0.0.1"])
    assert hook.task_status(scan.task_id).status in ("Requested", "Running", "Done")


def test_unsupported_protocol_version_is_not_retried(gmp, gvm_conn):
    gmp.gmp_version = "21.4"
    with pytest.raises(GvmHookError, match="unsupported version") as err:
        GvmHook(gvm_conn()).version()
    assert not isinstance(err.value, ScannerTransientError)


def test_wrong_password_is_a_clear_auth_error(gmp, gvm_conn):
    hook = GvmHook(gvm_conn(password="not-the-password"))
    with pytest.raises(GvmAuthError, match="400 Authentication failed") as err:
        hook.task_status("anything")
    assert isinstance(err.value, ScannerAuthError)
    assert "not-the-password" not in str(err.value)


def test_missing_task_and_report_are_not_found(gmp, gvm_conn):
    hook = GvmHook(gvm_conn())
    with pytest.raises(GvmNotFoundError, match="404 Failed to find task 'no-such-task'") as err:
        hook.task_status("no-such-task")
    assert isinstance(err.value, ScannerNotFoundError)
    with pytest.raises(GvmNotFoundError, match="Failed to find report"):
        hook.report_xml("no-such-report")


def test_unknown_scan_config_is_named(gmp, gvm_conn):
    with pytest.raises(GvmNotFoundError, match="no scan config named 'Nope'"):
        GvmHook(gvm_conn()).start_scan("svc", ["127.0.0.1"], scan_config="Nope")


def test_transient_failures(gmp, gvm_conn):
    hook = GvmHook(gvm_conn())
    gmp.busy_next(1)
    with pytest.raises(GvmTransientError, match="503 Service temporarily down"):
        hook.task_status("x")
    gmp.drop_next(1)
    with pytest.raises(GvmTransientError, match=r"Remote closed the connection|Broken pipe|reset by peer"):
        hook.version()
    gmp.stop()
    with pytest.raises(GvmTransientError, match="does not exist"):
        hook.version()
    gmp.start()
    assert hook.version() == "22.6"


def test_interrupted_and_stopped_tasks_carry_their_reason(gmp, gvm_conn):
    hook = GvmHook(gvm_conn())
    gmp.final_status = "Interrupted"
    scan = hook.start_scan("svc", ["10.0.0.9"])
    _wait_done(hook, scan.task_id)
    st = hook.task_status(scan.task_id)
    assert st.failed and st.status == "Interrupted"
    assert "10.0.0.9: Scan process failure" in st.message()

    gmp.final_status = "Done"
    scan = hook.start_scan("svc", ["10.0.0.9"])
    with hook.session() as session:
        session.stop_task(scan.task_id)
    st = hook.task_status(scan.task_id)
    assert (st.status, st.failed) == ("Stopped", True)
    assert "ended Stopped" in st.message()


def test_a_paginating_manager_is_refused(gmp, gvm_conn, monkeypatch):
    """If a manager ignored ignore_pagination, the hook must not pass a cut report on as complete."""
    hook = GvmHook(gvm_conn())
    scan = hook.start_scan("svc", ["127.0.0.1"])
    _wait_done(hook, scan.task_id)
    original = GmpDouble._cmd_get_reports

    def paginating(self, cmd, root, now):
        cmd.attrib.pop("ignore_pagination", None)
        cmd.set("filter", "rows=5 first=1 min_qod=0")
        return original(self, cmd, root, now)

    monkeypatch.setattr(GmpDouble, "_cmd_get_reports", paginating)
    with pytest.raises(GvmHookError, match="possibly cut report"):
        hook.report_xml(scan.report_id)


def test_default_connection_from_the_environment_json_form(gmp, gmp_socket, monkeypatch):
    conn = {"conn_type": "gvm", "login": gmp.username, "password": gmp.password}
    monkeypatch.setenv(
        "AIRFLOW_CONN_GVM_DEFAULT", json.dumps({**conn, "extra": {"socket_path": str(gmp_socket)}})
    )
    assert GvmHook().version() == "22.6"

"""GmpTaskFinishedTrigger under asyncio against the GMP double (real python-gvm client in a thread)."""

from __future__ import annotations

import threading
import time

from selfheal.scanners.gvm import GvmHook
from selfheal.scanners.triggers import GmpTaskFinishedTrigger


def _trigger(
    conn_id: str, task_id: str, report_id: str | None = None, *, timeout: float = 10.0, poke: float = 0.05
) -> GmpTaskFinishedTrigger:
    return GmpTaskFinishedTrigger(
        conn_id=conn_id,
        task_id=task_id,
        report_id=report_id,
        deadline=time.time() + timeout,
        poke_interval=poke,
    )


def test_done_is_success(gmp, gvm_conn, first_event):
    conn_id = gvm_conn()
    scan = GvmHook(conn_id).start_scan("svc", ["127.0.0.1"])
    event = first_event(_trigger(conn_id, scan.task_id, scan.report_id))
    assert event["status"] == "success" and event["task_status"] == "Done"
    assert event["finished_report_id"] == event["report_id"] == scan.report_id
    assert event["polls"] > 1 and event["transient_errors"] == 0


def test_serialized_kwargs_hold_ids_only(gmp, gvm_conn):
    trigger = _trigger(gvm_conn(), "t-1", "r-1")
    path, kwargs = trigger.serialize()
    assert path == "selfheal.scanners.triggers.GmpTaskFinishedTrigger"
    assert set(kwargs) == {"conn_id", "deadline", "poke_interval", "task_id", "report_id"}
    assert gmp.password not in repr(kwargs)
    assert GmpTaskFinishedTrigger(**kwargs).serialize() == (path, kwargs)


def test_interrupted_fails_with_the_managers_reason(gmp, gvm_conn, first_event):
    gmp.final_status = "Interrupted"
    conn_id = gvm_conn()
    scan = GvmHook(conn_id).start_scan("svc", ["10.0.0.9"])
    event = first_event(_trigger(conn_id, scan.task_id))
    assert (event["status"], event["reason"]) == ("error", "scan_failed")
    assert f"GMP task {scan.task_id} ended Interrupted" in event["message"]
    assert "Scan process failure" in event["message"]


def test_stopped_fails(gmp, gvm_conn, first_event):
    conn_id = gvm_conn()
    hook = GvmHook(conn_id)
    scan = hook.start_scan("svc", ["127.0.0.1"])
    threading.Timer(0.2, lambda: _stop(hook, scan.task_id)).start()
    event = first_event(_trigger(conn_id, scan.task_id))
    assert (event["status"], event["reason"]) == ("error", "scan_failed")
    assert "ended Stopped" in event["message"]


def _stop(hook: GvmHook, task_id: str) -> None:
    with hook.session() as session:
        session.stop_task(task_id)


def test_never_finishing_task_times_out(gmp, gvm_conn, first_event):
    gmp.hang_at = 37
    conn_id = gvm_conn()
    scan = GvmHook(conn_id).start_scan("svc", ["127.0.0.1"])
    event = first_event(_trigger(conn_id, scan.task_id, timeout=1.0, poke=0.1))
    assert event["status"] == "timeout"
    assert event["last_state"] == {"status": "Running", "progress": 37}


def test_wrong_password_fails_at_once(gmp, gvm_conn, first_event):
    event = first_event(_trigger(gvm_conn(password="wrong-pw-456"), "t", timeout=30))
    assert (event["status"], event["reason"], event["polls"]) == ("error", "auth", 1)
    assert "Authentication failed" in event["message"] and "wrong-pw-456" not in event["message"]


def test_missing_task_fails_at_once(gmp, gvm_conn, first_event):
    event = first_event(_trigger(gvm_conn(), "no-such-task", timeout=30))
    assert (event["status"], event["reason"], event["polls"]) == ("error", "not_found", 1)
    assert "404 Failed to find task 'no-such-task'" in event["message"]


def test_busy_manager_is_retried(gmp, gvm_conn, first_event):
    conn_id = gvm_conn()
    scan = GvmHook(conn_id).start_scan("svc", ["127.0.0.1"])
    gmp.busy_next(3)
    gmp.drop_next(1)
    event = first_event(_trigger(conn_id, scan.task_id))
    assert event["status"] == "success"
    assert event["transient_errors"] == 4


def test_manager_down_at_start_retries_then_times_out(gmp, gvm_conn, first_event):
    conn_id = gvm_conn()
    gmp.stop()
    event = first_event(_trigger(conn_id, "t", timeout=0.8, poke=0.1))
    assert event["status"] == "timeout" and event["polls"] >= 4
    assert "does not exist" in event["last_error"]


def test_manager_restart_mid_wait_is_survived(gmp, gvm_conn, first_event):
    conn_id = gvm_conn()
    scan = GvmHook(conn_id).start_scan("svc", ["127.0.0.1"])
    gmp.stop()
    threading.Timer(0.3, gmp.start).start()
    event = first_event(_trigger(conn_id, scan.task_id, timeout=10, poke=0.1))
    assert event["status"] == "success" and event["transient_errors"] >= 1

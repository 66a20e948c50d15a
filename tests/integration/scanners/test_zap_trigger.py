"""ZapScanCompleteTrigger under asyncio against the ZAP API double (real zaproxy client in a thread)."""

from __future__ import annotations

import threading
import time

from selfheal.scanners.triggers import ZapScanCompleteTrigger
from selfheal.scanners.zap import ZapHook


def _trigger(
    conn_id: str, spider_id: str = "0", ascan_id: str = "0", *, timeout: float = 10.0, poke: float = 0.05
) -> ZapScanCompleteTrigger:
    return ZapScanCompleteTrigger(
        conn_id=conn_id,
        spider_id=spider_id,
        ascan_id=ascan_id,
        deadline=time.time() + timeout,
        poke_interval=poke,
    )


def _start(conn_id: str, target) -> tuple[str, str]:
    scan = ZapHook(conn_id).start_scan(target.url, openapi_url=target.openapi_url)
    return scan.spider_id, scan.ascan_id


def test_progress_advancing_ends_in_success(zap, target, zap_conn, first_event):
    conn_id = zap_conn()
    spider_id, ascan_id = _start(conn_id, target)
    event = first_event(_trigger(conn_id, spider_id, ascan_id))
    assert event["status"] == "success"
    assert event["progress"] == {"spider": 100, "passive_queue": 0, "active": 100}
    assert event["polls"] > 1  # it waited: the scan was not complete on the first poll
    assert (event["spider_id"], event["ascan_id"]) == (spider_id, ascan_id)
    assert event["transient_errors"] == 0


def test_serialized_kwargs_hold_ids_only_and_round_trip(zap, zap_conn):
    conn_id = zap_conn()
    trigger = _trigger(conn_id, "3", "4")
    path, kwargs = trigger.serialize()
    assert path == "selfheal.scanners.triggers.ZapScanCompleteTrigger"
    assert set(kwargs) == {"conn_id", "deadline", "poke_interval", "spider_id", "ascan_id"}
    assert zap.api_key not in repr(kwargs)
    again = ZapScanCompleteTrigger(**kwargs)
    assert again.serialize() == (path, kwargs)


def test_never_finishing_scan_times_out_with_last_state(target, zap_conn, zap, first_event):
    zap.ascan_hang_at = 42
    conn_id = zap_conn()
    spider_id, ascan_id = _start(conn_id, target)
    t0 = time.monotonic()
    event = first_event(_trigger(conn_id, spider_id, ascan_id, timeout=1.2, poke=0.1))
    assert event["status"] == "timeout"
    assert 1.0 <= time.monotonic() - t0 < 5
    assert event["last_state"]["active"] == 42
    assert "not finished by the deadline" in event["message"] and "'active': 42" in event["message"]


def test_5xx_for_the_first_calls_is_retried_then_succeeds(zap, target, zap_conn, first_event):
    conn_id = zap_conn()
    spider_id, ascan_id = _start(conn_id, target)
    zap.fail_next(4)
    event = first_event(_trigger(conn_id, spider_id, ascan_id))
    assert event["status"] == "success"
    assert event["transient_errors"] >= 2


def test_wrong_api_key_fails_at_once(zap, zap_conn, first_event):
    t0 = time.monotonic()
    event = first_event(_trigger(zap_conn(password="wrong-key-123"), timeout=30))
    assert time.monotonic() - t0 < 5
    assert (event["status"], event["reason"], event["polls"]) == ("error", "auth", 1)
    assert "API key" in event["message"] and "wrong-key-123" not in event["message"]


def test_missing_scan_fails_at_once(zap, zap_conn, first_event):
    event = first_event(_trigger(zap_conn(), "41", "42", timeout=30))
    assert (event["status"], event["reason"]) == ("error", "not_found")
    assert "does_not_exist" in event["message"] and "scanId" in event["message"]


def test_missing_connection_is_a_config_error(first_event):
    event = first_event(_trigger("zap_conn_that_does_not_exist", timeout=30))
    assert (event["status"], event["reason"]) == ("error", "config")
    assert "zap_conn_that_does_not_exist" in event["message"]


def test_scanner_down_at_start_retries_then_times_out(zap, zap_conn, first_event):
    conn_id = zap_conn()
    zap.stop()
    event = first_event(_trigger(conn_id, timeout=1.0, poke=0.1))
    assert event["status"] == "timeout"
    assert event["polls"] >= 5
    assert "connection refused" in event["last_error"] and "connection refused" in event["message"]


def test_scanner_restarting_mid_wait_is_survived(zap, target, zap_conn, first_event):
    conn_id = zap_conn()
    spider_id, ascan_id = _start(conn_id, target)
    zap.stop()
    threading.Timer(0.4, zap.start).start()  # ZAP comes back on the same port with its session
    event = first_event(_trigger(conn_id, spider_id, ascan_id, timeout=10, poke=0.1))
    assert event["status"] == "success"
    assert event["transient_errors"] >= 1

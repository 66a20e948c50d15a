"""Deferrable sensors for ZAP scans and Greenbone tasks (Inspector2's sensor lives in scanners/inspector.py).

``execute`` defers at once to the trigger in `selfheal.scanners.triggers`, so the
wait costs no worker slot; ``execute_complete`` turns the trigger's event into
the task result: success returns the event payload (small: ids and counters), a
timeout raises ``AirflowSensorTimeout``, a wrong key/password, a missing
scan/task or bad configuration raises ``AirflowFailException`` (retrying cannot
help), a failed scan raises ``AirflowException`` (a retry starts over).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout

from selfheal.scanners.triggers import GmpTaskFinishedTrigger, ZapScanCompleteTrigger, _ScanPollTrigger

DEFAULT_TIMEOUT_S = 6 * 3600.0
DEFAULT_POKE_S = 30.0
_FINAL_REASONS = frozenset({"auth", "not_found", "config"})


class _ScanSensor(BaseSensorOperator):
    def __init__(
        self, *, poke_interval: float = DEFAULT_POKE_S, timeout: float = DEFAULT_TIMEOUT_S, **kwargs: Any
    ) -> None:
        super().__init__(poke_interval=poke_interval, timeout=timeout, **kwargs)

    def _trigger(self, deadline: float) -> _ScanPollTrigger:
        raise NotImplementedError

    def execute(self, context: Context) -> None:
        deadline = time.time() + self.timeout
        self.defer(
            trigger=self._trigger(deadline),
            method_name="execute_complete",
            # Safety net only: the trigger's own deadline fires first and says why.
            timeout=timedelta(seconds=self.timeout + 2 * self.poke_interval + 60),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        if not event:
            raise AirflowException(f"{self.task_id}: the trigger ended without an event")
        status, message = event.get("status"), str(event.get("message", ""))
        if status == "success":
            self.log.info("%s: scan finished after %s polls", self.task_id, event.get("polls"))
            return event
        if status == "timeout":
            raise AirflowSensorTimeout(message)
        if event.get("reason") in _FINAL_REASONS:
            raise AirflowFailException(message)
        raise AirflowException(message or f"{self.task_id}: scan failed ({event})")


class ZapScanSensor(_ScanSensor):
    """Wait (deferred) until a ZAP scan is complete: spider 100, passive queue empty, active scan 100.

    Returns ``{"status": "success", "spider_id", "ascan_id", "progress", ...}``.
    """

    template_fields: Sequence[str] = ("spider_id", "ascan_id", "zap_conn_id")

    def __init__(
        self, *, spider_id: str, ascan_id: str, zap_conn_id: str = "zap_default", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.spider_id = spider_id
        self.ascan_id = ascan_id
        self.zap_conn_id = zap_conn_id

    def _trigger(self, deadline: float) -> ZapScanCompleteTrigger:
        return ZapScanCompleteTrigger(
            conn_id=self.zap_conn_id,
            spider_id=str(self.spider_id),
            ascan_id=str(self.ascan_id),
            deadline=deadline,
            poke_interval=self.poke_interval,
        )

    def poke(self, context: Context) -> bool:
        """One synchronous check (unused when deferring; kept so the sensor also works in poke mode)."""
        from selfheal.scanners.zap import ZapHook

        return ZapHook(self.zap_conn_id).progress(str(self.spider_id), str(self.ascan_id)).complete


class GmpTaskSensor(_ScanSensor):
    """Wait (deferred) until a Greenbone task is Done; Stopped or Interrupted fail with the report's errors.

    Returns ``{"status": "success", "task_id", "report_id", "finished_report_id", ...}``.
    """

    template_fields: Sequence[str] = ("task_id_to_watch", "report_id", "gvm_conn_id")

    def __init__(
        self,
        *,
        task_id_to_watch: str,
        report_id: str | None = None,
        gvm_conn_id: str = "gvm_default",
        **kwargs: Any,
    ) -> None:
        # `task_id` is the Airflow task's own id, hence the longer name for the GMP task.
        super().__init__(**kwargs)
        self.task_id_to_watch = task_id_to_watch
        self.report_id = report_id
        self.gvm_conn_id = gvm_conn_id

    def _trigger(self, deadline: float) -> GmpTaskFinishedTrigger:
        return GmpTaskFinishedTrigger(
            conn_id=self.gvm_conn_id,
            task_id=str(self.task_id_to_watch),
            report_id=str(self.report_id) if self.report_id else None,
            deadline=deadline,
            poke_interval=self.poke_interval,
        )

    def poke(self, context: Context) -> bool:
        from selfheal.scanners.gvm import GvmHook

        status = GvmHook(self.gvm_conn_id).task_status(str(self.task_id_to_watch))
        if status.failed:
            raise AirflowException(status.message())
        return status.done

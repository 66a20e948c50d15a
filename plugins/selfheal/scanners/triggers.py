"""Async triggers that wait for a ZAP scan or a Greenbone task, so a waiting scan holds no worker slot.

Both share one polling loop (`_ScanPollTrigger.run`):

- poll every ``poke_interval`` seconds until ``deadline`` (an absolute epoch time,
  so a triggerer restart re-creating the trigger from its kwargs keeps the
  original deadline instead of starting the clock again);
- a transient scanner error (connection refused, HTTP/GMP 5xx, socket gone, read
  timeout) is logged and polled again; it only matters if it lasts until the
  deadline, and then the timeout event carries the last error;
- a wrong key or password, a missing scan/task, or a failed scan ends the wait at
  once with an ``error`` event whose message says which.

The kwargs hold ids only: the connection is resolved inside the triggerer
through ``BaseHook.aget_connection`` (Airflow's async-safe path), and the
blocking client libraries run in a worker thread (``asyncio.to_thread``).

Events (``TriggerEvent.payload``): ``{"status": "success", ...ids, "polls", "transient_errors"}``,
``{"status": "error", "reason": "auth"|"not_found"|"scan_failed"|"config"|"api", "message"}``,
``{"status": "timeout", "message", "last_error", "last_state"}``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from selfheal.scanners.errors import (
    ScannerAuthError,
    ScannerError,
    ScannerNotFoundError,
    ScannerTransientError,
)

if TYPE_CHECKING:  # the hooks (zaproxy, python-gvm, lxml) load in the triggerer, not at DAG parse time
    from selfheal.scanners.gvm import GvmHook
    from selfheal.scanners.zap import ZapHook


class _Pending:
    """A poll that found the scan still running; `state` is logged and reported on timeout."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state


class _ScanFailed(ScannerError):
    """The scanner reports the scan itself ended badly (e.g. a GMP task Stopped or Interrupted)."""

    def __init__(self, message: str, state: dict[str, Any]) -> None:
        super().__init__(message)
        self.state = state


class _ScanPollTrigger(BaseTrigger):
    """The shared loop; subclasses say what to poll (`_poll`) and which ids identify the scan (`_ids`)."""

    scanner = "scanner"

    def __init__(self, *, conn_id: str, deadline: float, poke_interval: float = 30.0) -> None:
        super().__init__()
        if poke_interval <= 0:
            raise ValueError("poke_interval must be positive")
        self.conn_id = conn_id
        self.deadline = float(deadline)
        self.poke_interval = float(poke_interval)

    def _ids(self) -> dict[str, Any]:
        raise NotImplementedError

    def _what(self) -> str:
        raise NotImplementedError

    async def _make_hook(self) -> Any:
        raise NotImplementedError

    async def _poll(self, hook: Any) -> dict[str, Any] | _Pending:
        """One check: a success payload, a `_Pending`, or raise (ScannerError kinds / _ScanFailed)."""
        raise NotImplementedError

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "deadline": self.deadline,
                "poke_interval": self.poke_interval,
                **self._ids(),
            },
        )

    def _event(self, status: str, **payload: Any) -> TriggerEvent:
        return TriggerEvent({"status": status, "scanner": self.scanner, **self._ids(), **payload})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook: Any = None
        polls = transient = 0
        last_error: str | None = None
        last_state: dict[str, Any] | None = None
        while True:
            polls += 1
            try:
                if hook is None:
                    hook = await self._make_hook()
                result = await self._poll(hook)
            except ScannerTransientError as e:
                transient += 1
                last_error = str(e)
                self.log.warning("%s: transient error #%d, polling again: %s", self._what(), transient, e)
            except ScannerAuthError as e:
                yield self._event("error", reason="auth", message=str(e), polls=polls)
                return
            except ScannerNotFoundError as e:
                yield self._event("error", reason="not_found", message=str(e), polls=polls)
                return
            except _ScanFailed as e:
                yield self._event("error", reason="scan_failed", message=str(e), polls=polls, state=e.state)
                return
            except AirflowNotFoundException as e:
                yield self._event("error", reason="config", message=f"{self._what()}: {e}", polls=polls)
                return
            except ScannerError as e:
                yield self._event("error", reason="api", message=str(e), polls=polls)
                return
            else:
                if not isinstance(result, _Pending):
                    self.log.info("%s: complete after %d polls", self._what(), polls)
                    yield self._event("success", polls=polls, transient_errors=transient, **result)
                    return
                if result.state != last_state:
                    self.log.info("%s: %s", self._what(), result.state)
                last_state, last_error = result.state, None
            remaining = self.deadline - time.time()
            if remaining <= 0:
                message = f"{self._what()}: not finished by the deadline after {polls} polls"
                if last_error:
                    message += f"; last error: {last_error}"
                elif last_state:
                    message += f"; last state: {last_state}"
                yield self._event(
                    "timeout", message=message, last_error=last_error, last_state=last_state, polls=polls
                )
                return
            await asyncio.sleep(min(self.poke_interval, remaining))


class ZapScanCompleteTrigger(_ScanPollTrigger):
    """Fires when a ZAP scan is complete: spider at 100, passive queue empty, active scan at 100."""

    scanner = "zap"

    def __init__(
        self, *, spider_id: str, ascan_id: str, conn_id: str = "zap_default", **kwargs: Any
    ) -> None:
        super().__init__(conn_id=conn_id, **kwargs)
        self.spider_id = str(spider_id)
        self.ascan_id = str(ascan_id)

    def _ids(self) -> dict[str, Any]:
        return {"spider_id": self.spider_id, "ascan_id": self.ascan_id}

    def _what(self) -> str:
        return f"ZAP scan (spider {self.spider_id}, active {self.ascan_id}) via {self.conn_id}"

    async def _make_hook(self) -> ZapHook:
        from selfheal.scanners.zap import ZapHook

        return await ZapHook.afor_conn_id(self.conn_id)

    async def _poll(self, hook: ZapHook) -> dict[str, Any] | _Pending:
        progress = await asyncio.to_thread(hook.progress, self.spider_id, self.ascan_id)
        if progress.complete:
            return {"progress": progress.as_dict()}
        return _Pending(progress.as_dict())


class GmpTaskFinishedTrigger(_ScanPollTrigger):
    """Fires when a Greenbone task is Done (success), or Stopped/Interrupted (error quoting the report)."""

    scanner = "gvm"

    def __init__(
        self,
        *,
        task_id: str,
        report_id: str | None = None,
        conn_id: str = "gvm_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(conn_id=conn_id, **kwargs)
        self.task_id = str(task_id)
        self.report_id = report_id

    def _ids(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "report_id": self.report_id}

    def _what(self) -> str:
        return f"GMP task {self.task_id} via {self.conn_id}"

    async def _make_hook(self) -> GvmHook:
        from selfheal.scanners.gvm import GvmHook

        return await GvmHook.afor_conn_id(self.conn_id)

    async def _poll(self, hook: GvmHook) -> dict[str, Any] | _Pending:
        status = await asyncio.to_thread(hook.task_status, self.task_id)
        state = {"status": status.status, "progress": status.progress}
        if status.done:
            return {"task_status": status.status, "finished_report_id": status.report_id}
        if status.failed:
            raise _ScanFailed(status.message(), state)
        return _Pending(state)

"""The ASGI app the Airflow plugin registers: builds the real app on its first request.

Airflow imports plugins in every component (scheduler, workers, DAG
processor), not only in the API server that serves this app. Building the
FastAPI app needs FastAPI, prometheus_client and Airflow's security module
(seconds of imports), so the plugin registers this small shim instead and the
work happens once, in the API server, when the first request arrives.
"""

from __future__ import annotations

import threading
from typing import Any


def _triage_url() -> str:
    from selfheal.hooks.triage import TriageDbHook

    return TriageDbHook().get_url()


class LazySelfhealApp:
    """ASGI callable: ``create_app`` with Airflow's auth and the ``selfheal_triage`` connection."""

    def __init__(self) -> None:
        self._app: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    from selfheal.web.app import create_app
                    from selfheal.web.auth import airflow_auth

                    self._app = create_app(database_url=_triage_url, auth=airflow_auth())
        return self._app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.get()(scope, receive, send)


app = LazySelfhealApp()

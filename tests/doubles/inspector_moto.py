"""TEST DOUBLE for AWS Inspector2: moto in server mode on loopback, seeded through moto's own API.

Real boto3 talks HTTP to a real moto server (``moto.server.ThreadedMotoServer``, in this
process, on a free 127.0.0.1 port). What moto 5.2's Inspector2 does and does not do
(read from ``moto/inspector2/models.py``):

* Inspector2 has no "create finding" API, so findings are injected the documented moto
  way: POST ``/moto-api/static/inspector2/findings-results`` with ``{"results": [[...], ...]}``.
  Each inner list is the answer to ONE distinct ListFindings query: the first request
  with a new (filterCriteria, maxResults, nextToken, sortCriteria) takes the next queued
  list and keeps getting it; a new query on an empty queue gets ``[]``.
* moto applies no filter and never paginates (no ``nextToken``). The hook's filters are
  therefore checked on the wire (``queries()`` decodes what moto received, from moto's
  own backend state) and the paginator with hand-built pages (a Stubber test).
* moto validates credentials only when asked: ``require_auth()`` flips its IAM check on
  through ``/moto-api/reset-auth`` (unknown keys then get HTTP 403 InvalidClientTokenId).

``queue_results`` converts ISO timestamps to epoch seconds, as the real rest-json API
sends them, using botocore's own model to find the timestamp members.

``ScriptedErrorsProxy`` is a second, tiny double in front of moto: it answers the first
requests with scripted AWS errors in the real rest-json error shape (status,
``x-amzn-ErrorType`` header, ``{"message": ...}`` body), then forwards to moto. moto has
no fault injection for Inspector2; this is how 5xx, throttling and
UnrecognizedClientException reach real botocore over HTTP.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import botocore.session
import requests
from moto.server import ThreadedMotoServer

ACCOUNT_ID = "123456789012"  # moto's default account
REGION = "us-east-1"
SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "scanner-samples"
_SHAPES: dict[str, Any] = {}


def sample_findings(name: str) -> list[dict[str, Any]]:
    """Findings of a ListFindings sample: ``aws_inspector2/<file>`` or ``handmade/<file>``."""
    return json.loads((SAMPLES / name).read_text())["findings"]


def _finding_shape() -> Any:
    if "finding" not in _SHAPES:
        model = botocore.session.get_session().get_service_model("inspector2")
        _SHAPES["finding"] = model.shape_for("Finding")
    return _SHAPES["finding"]


def to_wire(value: Any, shape: Any) -> Any:
    """``value`` as the real API serializes it: timestamp members as epoch seconds."""
    kind = shape.type_name
    if kind == "timestamp" and isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    if kind == "timestamp" and isinstance(value, datetime):
        return value.timestamp()
    if kind == "structure" and isinstance(value, dict):
        members = shape.members
        return {k: to_wire(v, members[k]) if k in members else v for k, v in value.items()}
    if kind == "list" and isinstance(value, list):
        return [to_wire(v, shape.member) for v in value]
    if kind == "map" and isinstance(value, dict):
        return {k: to_wire(v, shape.value) for k, v in value.items()}
    return value


def free_closed_port() -> int:
    """A loopback port nobody listens on (connection refused), for the "endpoint down" path."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connection_json(
    endpoint_url: str, *, login: str = "AKIDSELFHEALTEST", password: str = "dummy-secret"
) -> str:
    """``AIRFLOW_CONN_AWS_DEFAULT`` value (JSON form) pointing the Amazon provider at ``endpoint_url``."""
    return json.dumps(
        {
            "conn_type": "aws",
            "login": login,
            "password": password,
            "extra": {"endpoint_url": endpoint_url, "region_name": REGION},
        }
    )


class MotoInspector2:
    """moto server on 127.0.0.1:<free port> with helpers to seed and inspect Inspector2 state."""

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint_url = ""

    def start(self) -> MotoInspector2:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> MotoInspector2:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _post(self, path: str, **kwargs: Any) -> requests.Response:
        resp = requests.post(f"{self.endpoint_url}{path}", timeout=10, **kwargs)
        resp.raise_for_status()
        return resp

    def reset(self) -> None:
        """Forget every seeded result and recorded query (moto's own reset endpoint)."""
        self._post("/moto-api/reset")

    def queue_results(self, *results: list[dict[str, Any]]) -> None:
        """Queue one findings list per future distinct ListFindings query (see module docstring)."""
        shape = _finding_shape()
        wire = [[to_wire(f, shape) for f in result] for result in results]
        self._post(
            "/moto-api/static/inspector2/findings-results",
            json={"results": wire, "account_id": ACCOUNT_ID, "region": REGION},
        )

    def queries(self) -> list[dict[str, Any]]:
        """The ListFindings requests moto answered from the queue, decoded from moto's backend state.

        moto keys its answers by ``f"{json.dumps(filterCriteria)}--{maxResults}--{nextToken}--..."``
        (``Inspector2Backend.list_findings``); the server runs in this process, so its state is here.
        """
        from moto.inspector2.models import inspector2_backends

        out = []
        for key in inspector2_backends[ACCOUNT_ID][REGION].findings:
            criteria, max_results, next_token, _sort = key.rsplit("--", 3)
            out.append(
                {
                    "filterCriteria": json.loads(criteria),
                    "maxResults": None if max_results == "None" else int(max_results),
                    "nextToken": None if next_token == "None" else next_token,
                }
            )
        return out

    @contextlib.contextmanager
    def require_auth(self) -> Iterator[None]:
        """moto validates access keys against its IAM while inside (unknown keys get HTTP 403)."""
        previous = self._post("/moto-api/reset-auth", data=b"0").json()[
            "PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"
        ]
        try:
            yield
        finally:
            self._post("/moto-api/reset-auth", data=str(previous).encode())


class ScriptedErrorsProxy:
    """Answers the first requests with scripted AWS errors (real rest-json error shape), then forwards."""

    def __init__(self, upstream: str, script: list[tuple[int, str, str]]) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.script = list(script)  # (HTTP status, error code, message)
        self.requests = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    proxy.requests += 1
                    scripted = proxy.script.pop(0) if proxy.script else None
                if scripted is not None:
                    status, code, message = scripted
                    payload = json.dumps({"message": message}).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("x-amzn-ErrorType", f"{code}:http://internal.amazon.com/coral/")
                    self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=10)
                try:
                    conn.request("POST", self.path, body=body, headers=dict(self.headers))
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for name, value in resp.getheaders():
                    if name.lower() not in (
                        "content-length",
                        "connection",
                        "transfer-encoding",
                        "server",
                        "date",
                    ):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self.endpoint_url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> ScriptedErrorsProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

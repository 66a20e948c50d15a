"""A tiny real HTTP service whose faults are set by environment knobs (rollout tests and benchmarks).

Standard library only, so it runs unchanged in the offline base image
(``selfheal/base:bookworm``) and starts in well under a second; a "new
version" with a fault is just the same image with other ``KNOB_*`` values.

Knobs (environment):
  KNOB_VERSION            reported in every response (``X-Version`` header and JSON body)
  KNOB_PORT               listen port (8000)
  KNOB_DELAY_MS           added latency for every non-health request (float ms)
  KNOB_DELAY_PATH_PREFIX  only paths starting with this prefix are delayed ("/": all)
  KNOB_ERROR_RATE         share of non-health requests answered 500 (0..1), spread evenly, not at random,
                          so "20%" means exactly every fifth request
  KNOB_ERROR_PATH_PREFIX  only paths starting with this prefix can fail ("/": all)
  KNOB_HEALTHY            "0": /health answers 503 forever (a release that never becomes healthy)

``python3 knob_service.py --check`` is the container health check: exit 0 when
/health answers 200.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class Knobs:
    def __init__(self, env: dict[str, str] | os._Environ[str] = os.environ) -> None:
        self.version = env.get("KNOB_VERSION", "v0")
        self.port = int(env.get("KNOB_PORT", "8000"))
        self.delay_s = float(env.get("KNOB_DELAY_MS", "0")) / 1000.0
        self.delay_prefix = env.get("KNOB_DELAY_PATH_PREFIX", "/")
        self.error_rate = float(env.get("KNOB_ERROR_RATE", "0"))
        self.error_prefix = env.get("KNOB_ERROR_PATH_PREFIX", "/")
        self.healthy = env.get("KNOB_HEALTHY", "1") != "0"
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"KNOB_ERROR_RATE must be within 0..1, got {self.error_rate}")
        self._n = 0
        self._lock = threading.Lock()

    def should_fail(self, path: str) -> bool:
        """Deterministic error spreading: request n fails when floor(n*rate) steps up."""
        if self.error_rate <= 0 or not path.startswith(self.error_prefix):
            return False
        with self._lock:
            self._n += 1
            n = self._n
        return math.floor(n * self.error_rate) > math.floor((n - 1) * self.error_rate)


def make_handler(knobs: Knobs) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as behind any real gateway
        # Headers and body leave in two writes: with Nagle on, the body waits for the peer's delayed
        # ACK (~40 ms on Linux) on some connections and not on others, which looks like a regression.
        disable_nagle_algorithm = True
        server_version = "knob"
        sys_version = ""

        def _send(self, code: int, payload: dict[str, object]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Version", knobs.version)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/health":
                ok = knobs.healthy
                self._send(200 if ok else 503, {"status": "ok" if ok else "sick", "version": knobs.version})
                return
            if knobs.delay_s and path.startswith(knobs.delay_prefix):
                time.sleep(knobs.delay_s)
            if knobs.should_fail(path):
                self._send(500, {"error": "injected failure", "version": knobs.version})
                return
            self._send(200, {"version": knobs.version, "path": path})

        do_HEAD = do_GET

        def log_message(self, *args: object) -> None:  # one line per request would dominate the CPU
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # health checkers close with a reset; not worth a traceback


def check(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return 0 if r.status == 200 else 1
    except OSError:
        return 1


def main(argv: list[str]) -> int:
    knobs = Knobs()
    if argv[:1] == ["--check"]:
        return check(knobs.port)
    server = _Server(("0.0.0.0", knobs.port), make_handler(knobs))  # noqa: S104 - inside its container
    server.serve_forever(poll_interval=0.5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

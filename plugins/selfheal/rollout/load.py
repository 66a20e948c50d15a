"""Bounded HTTP load for rollouts: pre-promotion probes, a steady load client, and wrk as a cross-check.

- ``probe``: a fixed number of requests straight to a release's endpoint
  (blue/green pre-promotion checks), latency measured client-side.
- ``LoadClient``: a few keep-alive worker threads sending requests through the
  gateway until stopped; every outcome (status or socket error, latency,
  start time) is kept so a test can count failures in an exact window.
- ``Wrk``: Debian's wrk, an independent load generator, run with a bounded
  ``-d`` and stopped early with SIGINT (wrk prints its summary on SIGINT);
  its "Non-2xx or 3xx responses" and "Socket errors" lines are parsed.

Hand-written rather than locust/httpx: the client must be thread-light, record
every single outcome with a wall-clock start time (to line it up with the
gateway's logs), and add no dependency; http.client does all of that.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from selfheal.rollout.analysis import Sample


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"endpoint must be host:port, got {endpoint!r}")
    return host.strip("[]"), int(port)


def probe(
    endpoint: str,
    paths: Sequence[str],
    requests: int,
    *,
    concurrency: int = 4,
    timeout: float = 5.0,
    host_header: str | None = None,
) -> list[Sample]:
    """``requests`` GETs over ``paths``, straight to ``endpoint``; a socket error counts as status 599."""
    if requests < 1 or not paths:
        raise ValueError("probe needs at least one request and one path")
    host, port = split_endpoint(endpoint)
    headers = {"Host": host_header} if host_header else {}
    counter = itertools.count()
    lock = threading.Lock()
    out: list[Sample] = []

    def worker() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            while True:
                with lock:
                    i = next(counter)
                if i >= requests:
                    return
                t0 = time.perf_counter()
                try:
                    conn.request("GET", paths[i % len(paths)], headers=headers)
                    r = conn.getresponse()
                    r.read()
                    status = r.status
                except (OSError, http.client.HTTPException):
                    conn.close()
                    status = 599
                with lock:
                    out.append(Sample(status, (time.perf_counter() - t0) * 1000.0))
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, requests))) as pool:
        for f in [pool.submit(worker) for _ in range(max(1, min(concurrency, requests)))]:
            f.result()
    return out


@dataclass(frozen=True, slots=True)
class Outcome:
    start: float  # epoch seconds, when the request was sent
    latency_ms: float
    status: int  # 0 when the request failed at the socket level
    version: str | None = None  # the X-Version header of the release that answered, if any
    error: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def server_error(self) -> bool:
        return self.status == 0 or self.status >= 500


class LoadClient:
    """Constant load through the gateway from ``concurrency`` keep-alive connections, until ``stop()``.

    ``interval_s`` paces each worker (a floor on the time between two of its
    requests) so the load stays bounded on a small shared machine.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        host_header: str,
        paths: Sequence[str] = ("/",),
        concurrency: int = 4,
        interval_s: float = 0.0,
        timeout: float = 10.0,
        max_duration_s: float = 600.0,
    ) -> None:
        self.host, self.port, self.host_header = host, port, host_header
        self.paths = tuple(paths)
        self.concurrency = concurrency
        self.interval_s = interval_s
        self.timeout = timeout
        self.max_duration_s = max_duration_s
        self._outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seq = itertools.count()

    def __enter__(self) -> LoadClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LoadClient:
        self._stop.clear()
        self._deadline = time.monotonic() + self.max_duration_s
        for i in range(self.concurrency):
            t = threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout + 2)
        self._threads.clear()

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        headers = {"Host": self.host_header}
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            n = next(self._seq)
            path = self.paths[n % len(self.paths)]
            target = f"{path}{'&' if '?' in path else '?'}n={n}"
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            start = time.time()
            t0 = time.perf_counter()
            try:
                conn.request("GET", target, headers=headers)
                r = conn.getresponse()
                r.read()
                oc = Outcome(start, (time.perf_counter() - t0) * 1000.0, r.status, r.getheader("X-Version"))
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                oc = Outcome(start, (time.perf_counter() - t0) * 1000.0, 0, None, f"{type(e).__name__}: {e}")
                conn.close()
                conn = None
            with self._lock:
                self._outcomes.append(oc)
            if self.interval_s:
                left = self.interval_s - (time.perf_counter() - t0)
                if left > 0:
                    self._stop.wait(left)
        if conn is not None:
            conn.close()

    def outcomes(self, since: float | None = None, until: float | None = None) -> list[Outcome]:
        with self._lock:
            out = list(self._outcomes)
        return [o for o in out if (since is None or o.start >= since) and (until is None or o.start < until)]

    def summary(self, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        outs = self.outcomes(since, until)
        failed = [o for o in outs if not o.ok]
        return {
            "requests": len(outs),
            "failed_requests": len(failed),
            "server_errors": sum(1 for o in outs if o.server_error),
            "socket_errors": sum(1 for o in outs if o.status == 0),
            "first_failures": [asdict(o) for o in failed[:5]],
        }


# ---------------------------------------------------------------------------- wrk

_WRK_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_PCT = re.compile(r"^\s+(50|90|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    non_2xx: int
    socket_errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failed": self.failed}


def parse_wrk(text: str) -> WrkResult:
    """Parse wrk's summary; raise ValueError naming what is missing when it is not one."""
    m = _WRK_TOTAL.search(text)
    if not m:
        raise ValueError(f"wrk output has no 'N requests in T' line: {text[-300:]!r}")
    non2xx = _WRK_NON2XX.search(text)
    sock = _WRK_SOCKET.search(text)
    errors = (
        dict(zip(("connect", "read", "write", "timeout"), (int(x) for x in sock.groups()), strict=True))
        if sock
        else {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    )
    lat = {f"p{p}": float(v) * _UNIT_S[u] * 1000.0 for p, v, u in _WRK_PCT.findall(text)}
    return WrkResult(
        int(m.group(1)),
        float(m.group(2)) * _UNIT_S[m.group(3)],
        int(non2xx.group(1)) if non2xx else 0,
        errors,
        lat,
    )


class Wrk:
    """One wrk process we started (stopped by its PID): bounded ``-d``, ended early with SIGINT."""

    def __init__(
        self,
        url: str,
        *,
        host_header: str,
        duration_s: float = 60.0,
        connections: int = 2,
        threads: int = 1,
        timeout_s: float = 5.0,
        pace_ms: int | None = None,
        wrk: str = "wrk",
    ) -> None:
        exe = shutil.which(wrk)
        if exe is None:
            raise FileNotFoundError(f"{wrk}: wrk not found (apt-get install wrk)")
        self._script: str | None = None
        extra: list[str] = []
        if pace_ms:
            # wrk's Lua hook `delay()` (ms) spaces each connection's requests: a bounded rate, so the
            # load measures the rollout and not a saturated CPU.
            fd, self._script = tempfile.mkstemp(prefix="wrk-pace-", suffix=".lua")
            with os.fdopen(fd, "w") as f:
                f.write(f"function delay()\n  return {int(pace_ms)}\nend\n")
            extra = ["-s", self._script]
        self.cmd = [
            exe,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, int(duration_s))}s",
            f"--timeout={max(1, int(timeout_s))}s",
            "--latency",
            *extra,
            "-H",
            f"Host: {host_header}",
            url,
        ]
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Wrk:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._unlink()

    def _unlink(self) -> None:
        if self._script:
            with contextlib.suppress(OSError):
                os.unlink(self._script)
            self._script = None

    def start(self) -> Wrk:
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL
        )
        return self

    def stop(self, timeout: float = 10.0) -> WrkResult:
        """SIGINT (wrk stops and prints its summary), then parse it."""
        assert self.proc is not None, "wrk was not started"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate(timeout=5)
        self._unlink()
        with contextlib.suppress(ValueError):
            return parse_wrk(out)
        raise RuntimeError(f"wrk exited with {self.proc.returncode} and no summary: {out[-500:]!r}")

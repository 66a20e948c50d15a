"""Per-request gateway logs: HAProxy sends one datagram per request to a Unix socket.

The template's log-format (``format raw``, no syslog header) is one line of
space-separated fields, the path last so it may hold anything::

    sh1 <epoch.ms> <status> <Ta> <Tr> <Tw> <Tc> <retries> <termination> <backend> <server> <method> <path>

Ta is total active time, Tr the server's response time (-1 when the request
never reached a server, e.g. denied by a virtual patch); HAProxy 2.6 logs
milliseconds only. The collector keeps a bounded ring buffer per
(backend, server) that the rollout judge reads for its window.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

LOG_TAG = "sh1"
LOG_FORMAT = f"{LOG_TAG} %Ts.%ms %ST %Ta %Tr %Tw %Tc %rc %tsc %b %s %HM %HPO"
_FIELDS = 13


@dataclass(frozen=True, slots=True)
class LogRecord:
    ts: float
    status: int
    ta_ms: int
    tr_ms: int
    tw_ms: int
    tc_ms: int
    retries: int
    termination: str
    backend: str
    server: str
    method: str
    path: str

    @property
    def latency_ms(self) -> float:
        """Latency the client saw, minus its own idle time (HAProxy's Ta)."""
        return float(self.ta_ms)

    @property
    def is_server_error(self) -> bool:
        return self.status >= 500


def _int(v: str) -> int:
    return int(v.lstrip("+"))


def parse_line(line: str | bytes) -> LogRecord | None:
    """Parse one log line; None for anything that is not ours or is malformed."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    parts = line.rstrip("\r\n").split(" ", _FIELDS - 1)
    if len(parts) != _FIELDS or parts[0] != LOG_TAG:
        return None
    try:
        return LogRecord(
            ts=float(parts[1]),
            status=_int(parts[2]),
            ta_ms=_int(parts[3]),
            tr_ms=_int(parts[4]),
            tw_ms=_int(parts[5]),
            tc_ms=_int(parts[6]),
            retries=_int(parts[7]),
            termination=parts[8],
            backend=parts[9],
            server=parts[10],
            method=parts[11],
            path=parts[12],
        )
    except ValueError:
        return None


class LogCollector:
    """Receives HAProxy's log datagrams on a Unix socket in a thread; bounded memory.

    Start it before HAProxy so no early request is lost; HAProxy drops (and
    counts in ``show info`` DroppedLogs) what it cannot send.
    """

    def __init__(self, path: str | Path, capacity: int = 10_000) -> None:
        self.path = str(path)
        self.capacity = capacity
        self._buffers: dict[tuple[str, str], deque[LogRecord]] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.received = 0
        self.malformed = 0
        self.listeners: list[Callable[[LogRecord], None]] = []

    def __enter__(self) -> LogCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LogCollector:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(self.path)
        os.chmod(self.path, 0o600)
        s.settimeout(0.2)
        self._sock = s
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gateway-log-collector", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _run(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.add(parse_line(data), raw=True)

    def add(self, rec: LogRecord | None, raw: bool = False) -> None:
        """Store one record (None counts as malformed)."""
        with self._cond:
            if raw:
                self.received += 1
            if rec is None:
                self.malformed += 1
                return
            key = (rec.backend, rec.server)
            buf = self._buffers.get(key)
            if buf is None:
                buf = self._buffers[key] = deque(maxlen=self.capacity)
            buf.append(rec)
            self._cond.notify_all()
        for fn in self.listeners:
            fn(rec)

    def records(
        self,
        backend: str | None = None,
        server: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[LogRecord]:
        """Buffered records, oldest first, filtered by backend, server and accept time."""
        with self._lock:
            bufs = [
                list(b)
                for (be, sv), b in self._buffers.items()
                if (backend is None or be == backend) and (server is None or sv == server)
            ]
        out: Iterable[LogRecord] = (r for b in bufs for r in b)
        if since is not None:
            out = (r for r in out if r.ts >= since)
        if until is not None:
            out = (r for r in out if r.ts < until)
        return sorted(out, key=lambda r: r.ts)

    def keys(self) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(self._buffers)

    def clear(self) -> None:
        with self._lock:
            self._buffers.clear()

    def wait_for(self, count: int, timeout: float = 5.0, **filters: object) -> list[LogRecord]:
        """Block until ``count`` matching records are buffered (logs trail the responses slightly)."""
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records(**filters)  # type: ignore[arg-type]
            left = deadline - time.monotonic()
            if len(recs) >= count or left <= 0:
                return recs
            with self._cond:
                self._cond.wait(min(left, 0.05))

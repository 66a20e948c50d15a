"""Parsing HAProxy's per-request log lines and the bounded collector (a real Unix datagram socket)."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

from selfheal.gateway.logs import LOG_FORMAT, LogCollector, parse_line

# Lines as HAProxy 2.6 sent them with the template's log-format.
SERVED = b"sh1 1764498000.123 200 7 5 0 1 0 ---- shop s1 GET /products\n"
DENIED = b"sh1 1764498000.456 403 0 -1 -1 -1 0 PR-- shop <NOSRV> GET /products\n"


def test_log_format_is_the_one_parsed() -> None:
    assert LOG_FORMAT.split() == [
        "sh1", "%Ts.%ms", "%ST", "%Ta", "%Tr", "%Tw", "%Tc", "%rc", "%tsc", "%b", "%s", "%HM", "%HPO",
    ]


def test_parse_served_and_denied_requests() -> None:
    r = parse_line(SERVED)
    assert r is not None
    assert (r.status, r.ta_ms, r.tr_ms, r.backend, r.server, r.method, r.path) == (
        200, 7, 5, "shop", "s1", "GET", "/products"
    )
    assert r.ts == 1764498000.123 and r.latency_ms == 7.0 and not r.is_server_error
    d = parse_line(DENIED)
    assert d is not None and d.status == 403 and d.tr_ms == -1 and d.server == "<NOSRV>"
    assert d.termination == "PR--"


def test_path_with_spaces_stays_whole_and_retries_have_plus_sign() -> None:
    r = parse_line("sh1 1.000 503 3000 -1 0 -1 +3 SC-- shop s2 POST /a b/c d")
    assert r is not None and r.path == "/a b/c d" and r.retries == 3 and r.is_server_error


def test_foreign_or_malformed_lines_are_rejected() -> None:
    for line in [b"", b"hello", b"sh1 x 200 1 1 1 1 0 ---- a b GET /", b"<134>Nov 30 sh1 1 200", "sh2 " + "1 " * 12]:
        assert parse_line(line) is None


def test_collector_receives_datagrams_and_bounds_each_buffer() -> None:
    d = Path(tempfile.mkdtemp(prefix="shlog-", dir="/tmp"))
    path = d / "log.sock"
    with LogCollector(path, capacity=5) as col, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as tx:
        assert (path.stat().st_mode & 0o777) == 0o600
        for i in range(8):
            tx.sendto(f"sh1 {100 + i}.000 200 {i} {i} 0 0 0 ---- shop s1 GET /p".encode(), str(path))
        tx.sendto(b"sh1 200.000 503 9 9 0 0 0 ---- shop s2 GET /p", str(path))
        tx.sendto(b"garbage", str(path))
        recs = col.wait_for(6, backend="shop")
        assert len(recs) == 6  # 5 kept of s1 (bounded) + 1 of s2
        assert [r.ta_ms for r in col.records("shop", "s1")] == [3, 4, 5, 6, 7]
        assert [r.status for r in col.records("shop", "s2")] == [503]
        assert [r.ta_ms for r in col.records("shop", since=105.0, until=200.0)] == [5, 6, 7]
        assert col.keys() == [("shop", "s1"), ("shop", "s2")]
        col.wait_for(10**6, timeout=0.3)
        assert col.received == 10 and col.malformed == 1
    assert not path.exists()
    d.rmdir()

"""Latency comparison: nearest-rank p95, the bootstrap bound, and the judge over real loopback HTTP."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from selfheal.sandbox import latency


def test_nearest_rank_percentile() -> None:
    assert latency.percentile(list(range(1, 101)), 95) == 95
    assert latency.p95([5.0]) == 5.0
    assert latency.percentile([3, 1, 2], 50) == 2
    assert latency.p95([]) != latency.p95([])  # NaN


def test_bootstrap_bound_separates_noise_from_a_regression() -> None:
    rng = random.Random(7)
    a = [rng.expovariate(1 / 3) for _ in range(200)]
    b = [rng.expovariate(1 / 3) for _ in range(200)]
    low, high = latency.ratio_bounds(a, b)
    assert low < 1.0 < high  # same distribution: the interval straddles 1
    low2, _ = latency.ratio_bounds([x * 2 for x in a], b)
    assert low2 > 1.1  # twice as slow: established
    assert latency.ratio_bounds(a, b) == (low, high)  # seeded: reproducible


def make_server(delay_s: float, fail_every: int = 0) -> ThreadingHTTPServer:
    count = {"n": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stalls

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            count["n"] += 1
            time.sleep(delay_s)
            status = 500 if fail_every and count["n"] % fail_every == 0 else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def servers() -> Iterator[dict[str, ThreadingHTTPServer]]:
    made = {"fast": make_server(0.0), "slow": make_server(0.025), "flaky": make_server(0.0, fail_every=7)}
    yield made
    for s in made.values():
        s.shutdown()
        s.server_close()


def target(role: str, server: ThreadingHTTPServer) -> latency.Target:
    host, port = server.server_address[:2]
    return latency.Target(role, host, port)


def test_same_service_passes(servers) -> None:
    c = latency.compare(target("baseline", servers["fast"]), target("patched", servers["fast"]), ["/health"],
                        requests=60, warmup=5)
    assert c.passed and c.reason == ""
    assert c.stats["baseline"]["n"] == c.stats["patched"]["n"] == 60


def test_clearly_slower_patch_fails(servers) -> None:
    c = latency.compare(target("baseline", servers["fast"]), target("patched", servers["slow"]), ["/health"],
                        requests=60, warmup=5)
    assert not c.passed and c.reason.startswith("too slow: p95 ")
    assert c.ratio_low > 1.1


def test_errors_of_the_patched_image_fail(servers) -> None:
    c = latency.compare(target("baseline", servers["fast"]), target("patched", servers["flaky"]), ["/health"],
                        requests=60, warmup=0)
    assert not c.passed and "the patched image failed" in c.reason and "HTTP 500" in c.reason


def test_errors_of_the_current_image_are_inconclusive(servers) -> None:
    c = latency.compare(target("baseline", servers["flaky"]), target("patched", servers["fast"]), ["/health"],
                        requests=60, warmup=0)
    assert not c.passed and c.reason.startswith("inconclusive: the current image failed")


def test_deadline_cuts_the_measurement(servers) -> None:
    c = latency.compare(target("baseline", servers["fast"]), target("patched", servers["fast"]), ["/"],
                        requests=60, warmup=0, deadline=time.monotonic() - 1)
    assert not c.passed and c.reason.startswith("timeout: only 0 of 60")

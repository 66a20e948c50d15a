"""zero_downtime: 20 blue/green switches and 20 canary promotions under constant load, 0 failed requests.

Real HAProxy, real Docker containers (the knob service, 10 ms per request),
two load generators for the whole run: our own keep-alive client (4
connections, every outcome kept) and wrk (2 connections, paced at one
request per 5 ms each; its "Non-2xx or 3xx responses" and "Socket errors"
lines). Canary steps are the defaults (5, 25, 50, 100 %), each judged
from the gateway's logs; blue/green does direct pre-promotion checks and
post-promotion analysis. Retired releases are kept 1 s and cleaned up by
``cleanup_expired()`` after every rollout.

The latency limit is lenient (p95 up to 2x baseline + 50 ms): this measures
the switch mechanics on a shared machine, where other work moves p95 between
two windows; the error threshold is the default 99%. bench/rollback.py
measures detection with the default thresholds.

Keys: switches, requests, failed_requests (own client), wrk_requests,
wrk_failed_requests, wrk (non-2xx, socket errors, latency), per-strategy
counts, rollbacks (should be empty), seconds.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

if __name__ == "__main__":  # allow `python bench/zero_downtime.py` from a checkout
    sys.path[:0] = [
        str(Path(__file__).resolve().parents[1] / "plugins"),
        str(Path(__file__).resolve().parents[1]),
    ]

from bench._rollout_common import BASE_IMAGE, docker_client
from selfheal.rollout.analysis import Thresholds
from selfheal.rollout.harness import LocalStack, knob_image, zero_downtime_run
from selfheal.rollout.strategies import AnalysisSettings

BLUE_GREEN = int(os.environ.get("SELFHEAL_BENCH_ZD_BLUE_GREEN", "20"))
CANARY = int(os.environ.get("SELFHEAL_BENCH_ZD_CANARY", "20"))
ANALYSIS = AnalysisSettings(
    min_window_s=0.5, max_window_s=20.0, thresholds=Thresholds(max_p95_ratio=2.0, latency_slack_ms=50)
)


def main() -> dict:
    client = docker_client()
    images = [knob_image(client, BASE_IMAGE, version=v, delay_ms=10) for v in ("a", "b")]
    with LocalStack.start(client, docker={"keep_old_s": 1.0}) as st:
        out = zero_downtime_run(
            st,
            images=images,
            blue_green=BLUE_GREEN,
            canary=CANARY,
            analysis=ANALYSIS,
            load={"concurrency": 4},
            wrk={"connections": 2, "duration_s": 3600, "pace_ms": 5},
        )
        leftovers = len(st.backend.retired("shop"))
    out.pop("own_client", None)
    return {
        **out,
        "retired_kept_at_end": leftovers,
        "settings": {
            "canary_steps": [5, 25, 50, 100],
            "min_window_s": ANALYSIS.min_window_s,
            "max_p95_ratio": ANALYSIS.thresholds.max_p95_ratio,
            "latency_slack_ms": ANALYSIS.thresholds.latency_slack_ms,
            "min_success_rate": ANALYSIS.thresholds.min_success_rate,
            "service_delay_ms": 10,
        },
    }


if __name__ == "__main__":
    print(json.dumps(main()))

"""rollback: bad canaries caught and rolled back automatically; time to baseline and damage done.

Two scenarios against a live baseline (knob service, 80 ms per request: tens
of ms as HAProxy logs whole ms, and well above the tail that CPU contention
adds on a busy machine), under up to 250 rps from 20 keep-alive connections,
with the DAG's defaults (steps 5/25/50/100, judge polled every 250 ms,
success rate >= 99%, p95 <= 1.10x baseline plus a Mann-Whitney U test):
- errors: the canary answers 500 to 20% of requests;
- latency: the canary takes 30% longer (104 ms).
Each runs SELFHEAL_BENCH_ROLLBACK_RUNS times (default 3).

- seconds_to_baseline: first bad request (first 5xx from the canary; for the
  slow canary its first request, as logged by HAProxy) until every weight is
  back on the baseline (the rollback's traffic change returned). Target < 5 s.
- failed_share: requests that failed (non-2xx or socket error, as the client
  saw them) / all requests sent in the window [the canary's first traffic
  change, traffic back + 2 s]. Target < 1%.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[:0] = [
        str(Path(__file__).resolve().parents[1] / "plugins"),
        str(Path(__file__).resolve().parents[1]),
    ]

from bench._rollout_common import BASE_IMAGE, docker_client
from selfheal.rollout.harness import LocalStack, knob_image, rollback_run
from selfheal.rollout.strategies import run_blue_green

RUNS = int(os.environ.get("SELFHEAL_BENCH_ROLLBACK_RUNS", "3"))
BASE_DELAY_MS = 80


def main() -> dict:
    client = docker_client()
    good = knob_image(client, BASE_IMAGE, version="good", delay_ms=BASE_DELAY_MS)
    bad = {
        "errors": knob_image(client, BASE_IMAGE, version="errors", delay_ms=BASE_DELAY_MS, error_rate=0.2),
        "latency": knob_image(client, BASE_IMAGE, version="slow", delay_ms=round(BASE_DELAY_MS * 1.3)),
    }
    scenarios: dict[str, list[dict]] = {"errors": [], "latency": []}
    with LocalStack.start(client) as st:
        first = run_blue_green(st.backend, st.source, "shop", image=good, version="good", patch_id="good")
        if not first.promoted:
            raise RuntimeError(f"baseline not promoted: {first.reason}")
        for _ in range(RUNS):
            for name, image in bad.items():
                scenarios[name].append(rollback_run(st, bad_image=image, bad=name))  # type: ignore[arg-type]
    runs = [r for rs in scenarios.values() for r in rs]
    secs = [r["seconds_to_baseline"] for r in runs if r["seconds_to_baseline"] is not None]
    return {
        "max_seconds_to_baseline": max(secs) if len(secs) == len(runs) else None,
        "max_failed_share": max(r["failed_share"] for r in runs),
        "all_rolled_back": all(r["outcome"] == "rolled_back" for r in runs),
        "targets": {"seconds_to_baseline": 5.0, "failed_share": 0.01},
        "load_average_1m": round(os.getloadavg()[0], 2),  # this machine is shared: context for the figures
        **{
            name: {
                "max_seconds_to_baseline": max(r["seconds_to_baseline"] or float("inf") for r in rs),
                "max_failed_share": max(r["failed_share"] for r in rs),
                "aborted_at_steps": [r["aborted_at_step"] for r in rs],
                "runs": rs,
            }
            for name, rs in scenarios.items()
        },
    }


if __name__ == "__main__":
    print(json.dumps(main()))

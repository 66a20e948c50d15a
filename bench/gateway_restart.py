"""gateway_restart: SIGKILL HAProxy mid-canary, start it again, reconcile from Postgres; time until all
rules and weights are back.

Live before the crash: two real containers (knob service) at 80/20 through
the Docker backend, and 60 virtual patches (58 injection rules, a
missing-auth route, an exposed path). The desired state is in a throwaway
database of the Postgres test cluster. Each of SELFHEAL_BENCH_RESTART_RUNS
(default 5) runs:

  kill -> HAProxy answering on its runtime socket (restart_seconds)
       -> reconcile() returned: rules and weights back (reconcile_seconds)
  seconds = kill -> reconcile returned (the whole recovery)
  until_serving_seconds = kill -> a request served by a backend again

then checks: every rule live and blocking, weights 80/20 live and in the
actual split of 100 requests, a second reconcile changes nothing.
Figures are medians over the runs (max also given).
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

if __name__ == "__main__":
    sys.path[:0] = [
        str(Path(__file__).resolve().parents[1] / "plugins"),
        str(Path(__file__).resolve().parents[1]),
    ]

from bench._rollout_common import BASE_IMAGE, docker_client, gateway_store
from selfheal.findings.model import Finding, Location
from selfheal.gateway.virtual_patch import derive
from selfheal.rollout.harness import LocalStack, knob_image

RUNS = int(os.environ.get("SELFHEAL_BENCH_RESTART_RUNS", "5"))
RULES = 60


def _finding(cwe: int, path: str, param: str | None) -> Finding:
    return Finding(
        scanner="wapiti",
        rule_id="x",
        title="t",
        severity="high",
        kind="web",
        cwe=cwe,
        location=Location(method="GET", path=path, param=param),
        service="shop",
    )


def _get(port: int, path: str) -> tuple[int, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": "shop.localhost"})
        r = conn.getresponse()
        r.read()
        return r.status, r.getheader("X-Version")
    except OSError:
        return 0, None
    finally:
        conn.close()


def main() -> dict:
    client = docker_client()
    runs: list[dict] = []
    with gateway_store() as (store, store_kind), LocalStack.start(client, store=store) as st:
        b = st.backend
        for color, version in (("blue", "blue"), ("green", "green")):
            rel = b.deploy(
                "shop",
                version=version,
                color=color,
                image=knob_image(client, BASE_IMAGE, version=version),
                patch_id=version,
            )
            b.wait_healthy(rel, 60)
        b.set_traffic("shop", {"blue": 80, "green": 20})
        rules = [derive(_finding(89, f"/products/{i}", "category")) for i in range(RULES - 2)]
        rules += [derive(_finding(306, "/admin", None)), derive(_finding(538, "/.git/", None))]
        for r in rules:
            st.gateway.patches.apply(r)
        want_rules = {r.id for r in rules}
        for _ in range(RUNS):
            t0 = time.perf_counter()
            st.haproxy.kill()
            st.haproxy.start()
            t1 = time.perf_counter()
            report = st.gateway.reconcile()
            t2 = time.perf_counter()
            deadline = time.monotonic() + 30
            while _get(st.port, "/products/7?category=books")[0] != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("the gateway did not serve a request within 30 s of the restart")
                time.sleep(0.005)
            t3 = time.perf_counter()
            weights = b.current_traffic("shop")
            live_rules = st.gateway.patches.live_rule_ids()
            spread = Counter(_get(st.port, f"/products/7?category=books&i={i}")[1] for i in range(100))
            blocked = _get(st.port, "/products/7?category=" + quote("' OR 1=1--"))[0] == 403
            again = st.gateway.reconcile()
            runs.append(
                {
                    "seconds": round(t2 - t0, 4),
                    "restart_seconds": round(t1 - t0, 4),
                    "reconcile_seconds": round(t2 - t1, 4),
                    "until_serving_seconds": round(t3 - t0, 4),
                    "rules_restored": report.rules.added,
                    "servers_restored": report.servers.added,
                    "weights_ok": weights == {"blue": 80, "green": 20}
                    and spread == Counter(blue=80, green=20),
                    "rules_ok": live_rules == want_rules and blocked,
                    "second_reconcile_noop": (again.rules.added, again.servers.added, again.servers.updated)
                    == (0, 0, 0),
                }
            )

    def med(k: str) -> float:
        return round(statistics.median(r[k] for r in runs), 4)

    return {
        "seconds": med("seconds"),
        "rules_restored": min(r["rules_restored"] for r in runs),
        "rules": RULES,
        "weights_restored": all(r["weights_ok"] for r in runs),
        "all_rules_live_and_blocking": all(r["rules_ok"] for r in runs),
        "second_reconcile_noop": all(r["second_reconcile_noop"] for r in runs),
        "restart_seconds": med("restart_seconds"),
        "reconcile_seconds": med("reconcile_seconds"),
        "until_serving_seconds": med("until_serving_seconds"),
        "max_seconds": max(r["seconds"] for r in runs),
        "runs": RUNS,
        "store": store_kind,
        "per_run": runs,
    }


if __name__ == "__main__":
    print(json.dumps(main()))

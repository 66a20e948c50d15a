"""Policy gate latency: one decision per patch plan through regopy, as the DAG calls it.

* ``compile_s``: compiling include/policies into a bundle (once per process, and
  again only when a policy file changes);
* ``decide_p50_ms`` / ``decide_p99_ms``: ``PolicyGate.decide`` end to end (input
  building from a catalog Service and a finding, evaluation, shape checks, mode
  enforcement) over a mix of recipes, tiers and sandbox states;
* ``admit_p50_ms`` / ``admit_p99_ms``: ``PolicyGate.admit``;
* ``decisions_per_s``: sequential throughput of ``decide``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins"))

from selfheal.catalog import Service  # noqa: E402
from selfheal.policy import PolicyEngine, PolicyGate  # noqa: E402

RECIPES = (
    "virtual_patch",
    "dependency_upgrade",
    "config_hardening",
    "code_fix",
    "base_image_refresh",
    "none",
)
TIERS = ("critical", "high", "medium", "low")
SANDBOX = (
    None,
    {"passed": True, "failed_checks": [], "image": "x:1"},
    {"passed": False, "failed_checks": ["latency"]},
)


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def main() -> dict:
    n = int(os.environ.get("SELFHEAL_BENCH_POLICY_N", "3000"))
    t = time.perf_counter()
    engine = PolicyEngine()
    digest = engine.digest  # compiles
    compile_s = time.perf_counter() - t
    gate = PolicyGate(engine=engine)
    services = [
        Service(name=f"s{i}", base_url="http://s", owner="o@x", repository="/r", tier=t, mode="heal")
        for i, t in enumerate(TIERS)
    ]
    finding = {"severity": "high", "kind": "web", "cwe": 89, "confidence": "high", "kev": False, "epss": 0.02}
    lat: list[float] = []
    decisions: dict[str, int] = {}
    t_all = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        d = gate.decide(
            finding=finding,
            service=services[i % 4],
            recipe=RECIPES[i % len(RECIPES)],
            sandbox=SANDBOX[i % 3],
        )
        lat.append((time.perf_counter() - t) * 1e3)
        decisions[d.decision] = decisions.get(d.decision, 0) + 1
    total = time.perf_counter() - t_all
    adm: list[float] = []
    for i in range(n // 3):
        t = time.perf_counter()
        gate.admit(
            plan={"id": f"p{i}", "recipe": "dependency_upgrade", "service": "s2"},
            service=services[2],
            decision="auto",
            sandbox=SANDBOX[1],
            rollout_image="x:1",
        )
        adm.append((time.perf_counter() - t) * 1e3)
    return {
        "policy_digest": digest,
        "compile_s": round(compile_s, 3),
        "decisions": n,
        "decide_p50_ms": round(statistics.median(lat), 3),
        "decide_p99_ms": round(_pct(lat, 99), 3),
        "decide_max_ms": round(max(lat), 3),
        "decisions_per_s": round(n / total, 1),
        "admit_p50_ms": round(statistics.median(adm), 3),
        "admit_p99_ms": round(_pct(adm, 99), 3),
        "decision_mix": decisions,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main()))

"""dag_parse: how long Airflow takes to parse each DAG file (median of 5).

Each sample is a fresh process, as the dag-processor's parsing is: Airflow's
own imports are warmed first (not timed), then DagBag parses the one file,
including everything the file imports from selfheal. Target: < 200 ms per file.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = 5

_PROBE = r"""
import sys, time
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.docker.operators.docker import DockerOperator
from airflow.sdk import DAG
with DAG("_warm", schedule="@daily"):
    pass
t = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
ms = (time.perf_counter() - t) * 1000
assert not bag.import_errors, bag.import_errors
print(ms)
"""


def parse_ms(path: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    env.setdefault("AIRFLOW_HOME", str(REPO / ".run" / "airflow-bench-home"))
    out = subprocess.run([sys.executable, "-c", _PROBE, str(path)], env=env, capture_output=True,
                         text=True, check=True, timeout=300).stdout
    return float(out.strip().splitlines()[-1])


def main() -> dict:
    files = sorted(p for p in (REPO / "dags").glob("*.py") if not p.name.startswith("_"))
    result = {
        str(p.relative_to(REPO)): round(statistics.median(parse_ms(p) for _ in range(RUNS)), 1) for p in files
    }
    return {"max_ms": max(result.values()), "target_ms": 200, "runs": RUNS, "files": result}

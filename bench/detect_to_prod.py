"""detect_to_prod: from the scanner reporting a finding to its verified patch taking 100% of traffic.

Runs the real loop through `airflow standalone` exactly as a user meets it:
`scripts/airflow-local.sh up` with the demo (Wapiti scan of the demo target
behind HAProxy, ingest, inline virtual patch, `selfheal_remediate`: plan,
sandbox, policy, canary judged on live gateway logs, promotion) in a private
run directory and port, then `down`. The clock of each promoted patch starts
when its finding was committed to the triage table (the moment the scanner's
report became a finding) and stops at the patch's `promoted` transition, the
moment the patched release took all traffic. Stages come from the patch's own
state history (planned, verifying, verified, awaiting_approval, deploying,
promoted), so they add up to the total.

Keys: seconds (the fastest fully automatic patch: no human in the loop),
stages (its breakdown), patches (every promoted patch with its total and
stages; a patch that waited for a human approval says so and how long),
target_s (45), setup_s (stack + Airflow start, not part of the figure).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "airflow-local.sh"
TARGET_S = 45.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _patch_stages(engine: Any, patch_id: str) -> dict[str, Any]:
    """The patch's timeline from its findings' commit to its promotion, from Postgres."""
    import sqlalchemy as sa

    from selfheal.pipeline_state import patches
    from selfheal.triage.schema import findings

    with engine.connect() as conn:
        row = conn.execute(sa.select(patches).where(patches.c.id == patch_id)).mappings().one()
        ids = [int(i) for i in row["finding_ids"] or []]
        first = conn.execute(sa.select(sa.func.min(findings.c.first_seen)).where(findings.c.id.in_(ids))).scalar()
    marks: list[tuple[str, datetime]] = [("finding committed", first)] if first else []
    for t in row["history"] or []:
        marks.append((str(t["to"]), _at(t["at"])))
    stages: dict[str, float] = {}
    for (name_a, a), (name_b, b) in itertools.pairwise(marks):
        key = f"{name_a} -> {name_b}"
        stages[key] = round(stages.get(key, 0.0) + (b - a).total_seconds(), 3)
    total = (marks[-1][1] - marks[0][1]).total_seconds() if len(marks) > 1 else None
    human = sum(v for k, v in stages.items() if k.startswith("awaiting_approval"))
    return {"patch_id": patch_id, "recipe": row["recipe"], "state": row["state"],
            "seconds": None if total is None else round(total, 3), "stages": stages,
            "waited_for_human_s": round(human, 3) if human else 0.0}


def main() -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "plugins"))
    run = Path(tempfile.mkdtemp(prefix="bench-d2p-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k != "SELFHEAL_DATABASE_URL"}
    # Private ports and network: a user's own `make up` may be running.
    env.update(SELFHEAL_RUN_DIR=str(run / "run"), SELFHEAL_AIRFLOW_PORT=str(_free_port()), SELFHEAL_DEMO="1",
               SELFHEAL_GATEWAY_PORT=str(_free_port()), SELFHEAL_GATEWAY_STATS_PORT=str(_free_port()),
               SELFHEAL_MOTO_PORT=str(_free_port()), SELFHEAL_DOCKER_NETWORK=f"selfheal-bench-{run.name[-8:]}")
    t0 = time.monotonic()
    try:
        up = subprocess.run([str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=3600)
        if up.returncode != 0:
            raise SystemExit(f"airflow-local.sh up failed ({up.returncode}):\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}")
        found = re.search(r"demo summary written to (\S+)", up.stdout)
        if not found:
            raise SystemExit(f"the demo printed no summary path:\n{up.stdout[-3000:]}")
        summary = json.loads(Path(found.group(1)).read_text())
        db = subprocess.run(["bash", "-c", f'eval "$({REPO}/scripts/services.sh env)"; echo "$SELFHEAL_DATABASE_URL"'],
                            env=env, capture_output=True, text=True, check=True).stdout.strip()
        import sqlalchemy as sa

        engine = sa.create_engine(db)
        try:
            promoted = [_patch_stages(engine, p["patch_id"]) for p in summary["patched"]]
        finally:
            engine.dispose()
    finally:
        subprocess.run([str(SCRIPT), "down"], env=env, capture_output=True, text=True, timeout=300)
    auto = [p for p in promoted if p["seconds"] is not None and not p["waited_for_human_s"]]
    best = min(auto, key=lambda p: p["seconds"]) if auto else None
    demo_stages = {s["name"]: s["seconds"] for s in summary.get("stages", [])}
    return {
        "seconds": best["seconds"] if best else None,
        "stages": best["stages"] if best else {},
        "recipe": best["recipe"] if best else None,
        "target_s": TARGET_S,
        "patches": promoted,
        "demo_stages_s": demo_stages,
        "exposure_window_s": summary.get("exposure_window_s"),
        "wall_s": round(time.monotonic() - t0, 1),
    }


if __name__ == "__main__":
    print(json.dumps(main()))

"""Audit ledger benchmark on the real PostgreSQL test cluster.

Measured in a scratch database (migrated by the real Alembic revisions, dropped afterwards):

* ``append_single_per_s``: one ``append()`` per entry, each its own transaction
  (advisory lock, head read, insert, commit) from one writer: the DAG's pattern;
* ``append_batch_per_s``: ``append_many()`` in batches of 1,000 (bulk detections);
* ``append_concurrent_per_s``: 4 threads appending single entries at once;
* ``verify_rows`` / ``verify_per_s`` / ``verify_s``: a full ``verify()`` walk of the
  ledger (100,000 rows by default; ``SELFHEAL_BENCH_AUDIT_ROWS`` changes it),
  with its peak Python heap (``verify_peak_mb``, tracemalloc, separate run).

Payloads look like real decision entries (~400 bytes of canonical JSON).
Needs SELFHEAL_TEST_DATABASE_URL (scripts/services.sh env).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import tracemalloc
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins"))

import sqlalchemy as sa  # noqa: E402

from selfheal.audit import NewEntry, append, append_many, verify  # noqa: E402
from selfheal.triage.migrate import upgrade  # noqa: E402


def _payload(i: int) -> dict:
    return {
        "patch_id": f"p-{i}",
        "finding_id": i,
        "decision": "approval" if i % 3 else "auto",
        "reasons": [
            "code fixes always need a human review",
            "service tier critical: every change needs approval",
        ],
        "effective_mode": "heal",
        "policy_digest": "76aeb6519384034f",
        "cvss": 8.6,
        "epss": 0.0213,
        "evidence": "GET /items?id=1%27%20OR%201=1-- HTTP/1.1",
    }


def _admin_url() -> str:
    url = os.environ.get("SELFHEAL_TEST_DATABASE_URL")
    if not url:
        import subprocess

        subprocess.run([str(ROOT / "scripts" / "services.sh"), "start", "postgres"], check=True)
        out = subprocess.run(
            [str(ROOT / "scripts" / "services.sh"), "env"], check=True, capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            if line.startswith("export SELFHEAL_TEST_DATABASE_URL="):
                url = line.split("=", 1)[1]
    if not url:
        raise SystemExit("SELFHEAL_TEST_DATABASE_URL is not set and the test cluster could not be started")
    return url


def main() -> dict:
    rows = int(os.environ.get("SELFHEAL_BENCH_AUDIT_ROWS", "100000"))
    admin_url = _admin_url()
    name = f"bench_audit_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = f"{admin_url.rpartition('/')[0]}/{name}"
    result: dict = {"verify_rows": rows}
    try:
        upgrade(url)
        engine = sa.create_engine(url, pool_size=8)

        n = 2000
        t = time.perf_counter()
        for i in range(n):
            append(engine, actor="bench", action="decision", subject=f"patch:{i}", payload=_payload(i))
        result["append_single_per_s"] = round(n / (time.perf_counter() - t), 1)

        errors: list[BaseException] = []

        def writer(w: int) -> None:
            try:
                for i in range(500):
                    append(
                        engine, actor=f"w{w}", action="decision", subject=f"patch:{i}", payload=_payload(i)
                    )
            except BaseException as e:  # noqa: BLE001 - reported in the result
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        result["append_concurrent_per_s"] = round(2000 / (time.perf_counter() - t), 1)
        result["append_concurrent_errors"] = len(errors)

        done = 4000
        t = time.perf_counter()
        batch_rows = 0
        while done < rows:
            k = min(1000, rows - done)
            append_many(
                engine,
                [NewEntry("bench", "detection", f"finding:{done + j}", _payload(done + j)) for j in range(k)],
            )
            done += k
            batch_rows += k
        if batch_rows:
            result["append_batch_per_s"] = round(batch_rows / (time.perf_counter() - t), 1)

        r = verify(engine)
        result.update(
            verify_ok=r.ok,
            verify_count=r.count,
            verify_s=round(r.seconds, 2),
            verify_per_s=round(r.count / r.seconds, 1),
        )
        tracemalloc.start()
        verify(engine)
        result["verify_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 1e6, 2)
        tracemalloc.stop()
        with engine.connect() as c:
            result["table_mb"] = round(
                c.exec_driver_sql("SELECT pg_total_relation_size('audit_log')").scalar() / 1e6, 1
            )
        engine.dispose()
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(main()))

"""Exposure window: from the commit of a fresh injection finding to the triage table to the first
exploit request the real HAProxy gateway blocks (issue 7; target p99 under 100 ms).

Each sample runs what the scan DAG's ``ingest`` task runs, in the same order: a ZAP API report
with one new SQL injection (its own path, so its own finding and rule) waits in the inbox; the
inline mitigator is prepared (policy compiled, gateway connected: before the commit, as in the
task); ``selfheal.tasks.scan.ingest_inbox`` ingests the report (``store.ingest_reports``: raw
copy, COPY + upsert, observations, run closed, one commit) and right after the commit applies
the instant mitigation (policy, derive, desired state, ``add acl``, status + audit).

Clocks (``time.monotonic``, CLOCK_MONOTONIC: one clock for every process on the machine):

* commit: when SQLAlchemy issues the ingest transaction's COMMIT (its ``commit`` event). This
  is the start of the commit, so the figure includes the commit round trip itself;
* rule live: when HAProxy acknowledged ``add acl`` for the rule;
* blocked: when the attacker, a separate process sending the exploit request through the
  gateway every ``POLL_S`` seconds on a kept-alive connection, receives its first 403. Before
  each commit it must have seen the exploit pass (200). The attacker is another process so that
  it does not share the measured process's GIL; the backend (a tiny HTTP server) lives there
  too. Resolution: one poll interval plus one request round trip.

The figure is the same whether the task runs under ``airflow standalone`` or is called
directly, because everything between the commit and the block happens inside the task's own
process (the scheduler only decides when the task starts, before the commit). With
``SELFHEAL_BENCH_EW_AIRFLOW=N`` (default 10; 0 skips) N more samples run the real ``ingest`` task through
Airflow's ``dag.test()`` and are reported apart (``airflow``).

Prints one JSON object: ``p50_s``, ``p99_s``, ``samples`` (+ per-stage split, load average).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

if __name__ == "__main__":  # allow `python bench/exposure_window.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

import sqlalchemy as sa

SAMPLES = int(os.environ.get("SELFHEAL_BENCH_EW_SAMPLES", "50"))
WARMUP = 3
POLL_S = float(os.environ.get("SELFHEAL_BENCH_EW_POLL_S", "0.001"))
AIRFLOW_SAMPLES = int(os.environ.get("SELFHEAL_BENCH_EW_AIRFLOW", "10"))
SERVICE = "shop"
EXPLOIT_VALUE = quote("1' OR '1'='1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def _path(i: int) -> str:
    # Letters around the number: the fingerprint's path template keeps the segment as it is,
    # so every sample is a new finding with its own rule.
    return f"/ew/s{i}x/items"


def zap_report(i: int) -> bytes:
    """A ZAP API alerts document with one SQL injection at this sample's path (parameter q)."""
    url = f"http://{SERVICE}.localhost{_path(i)}?q=test%27"
    alert = {
        "sourceid": "1", "method": "GET", "pluginId": "40018", "alertRef": "40018", "cweid": "89",
        "wascid": "19", "confidence": "Medium", "risk": "High", "name": "SQL Injection",
        "alert": "SQL Injection", "param": "q", "attack": "test'", "url": url, "id": str(i),
        "messageId": str(i), "sourceMessageId": i, "inputVector": "queryString",
        "description": "SQL injection may be possible.", "solution": "Use prepared statements.",
        "evidence": "You have an error in your SQL syntax", "other": "", "reference": "",
        "tags": {"CWE-89": "https://cwe.mitre.org/data/definitions/89.html"},
    }
    return json.dumps({"alerts": [alert]}).encode()


# ----------------------------------------------------------------- the attacker process


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


def _attacker(conn: Any) -> None:
    """Child process: serve the backend, and on ("poll", port, target) send the exploit until a 403.

    Answers ("exposed",) after the first 200 (the exploit passes), then ("blocked", t_sent,
    t_received, requests) for the first 403.
    """
    httpd = _QuietServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    conn.send(("ready", httpd.server_address[1]))
    client: http.client.HTTPConnection | None = None
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            break
        _, port, target, interval = msg
        n, exposed = 0, False
        while True:
            if client is None:
                client = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            t_sent = time.monotonic()
            try:
                client.request("GET", target, headers={"Host": f"{SERVICE}.localhost"})
                r = client.getresponse()
                r.read()
            except (http.client.HTTPException, OSError):
                client.close()
                client = None
                continue
            t_recv = time.monotonic()
            n += 1
            if r.status == 403:
                conn.send(("blocked", t_sent, t_recv, n))
                break
            if r.status != 200:
                conn.send(("error", f"exploit got HTTP {r.status} before the block"))
                break
            if not exposed:
                exposed = True
                conn.send(("exposed",))
            if interval:
                time.sleep(interval)
    httpd.shutdown()


# ----------------------------------------------------------------- setup


@contextlib.contextmanager
def _triage_db() -> Iterator[tuple[str, str]]:
    """A migrated triage database: a throwaway one on the test cluster, else a SQLite file."""
    from selfheal.triage import migrate

    url = os.environ.get("SELFHEAL_TEST_DATABASE_URL")
    if url:
        name = f"bench_ew_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        db_url = url.rpartition("/")[0] + "/" + name
        try:
            migrate.upgrade(db_url)
            yield db_url, "postgresql"
        finally:
            with admin.connect() as c:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    else:
        d = tempfile.mkdtemp(prefix="shew-db-")
        db_url = f"sqlite:///{d}/triage.db"
        try:
            migrate.upgrade(db_url)
            yield db_url, "sqlite"
        finally:
            shutil.rmtree(d, ignore_errors=True)


class _CommitClock:
    """Timestamps of the COMMITs issued on the triage database by any Engine of this process
    (SQLAlchemy's ``commit`` event, class-wide: it also sees the engine the Airflow task makes)."""

    def __init__(self, database: str | None) -> None:
        self.database = database
        self.times: list[float] = []

    def __call__(self, conn: sa.Connection) -> None:
        if conn.engine.url.database == self.database:
            self.times.append(time.monotonic())

    def __enter__(self) -> _CommitClock:
        sa.event.listen(sa.Engine, "commit", self)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(sa.Engine, "commit", self)


def _timed_add_acl(gateway: Any, marks: list[float]) -> None:
    """Record when HAProxy acknowledged each ``add acl`` of this gateway client."""
    real = gateway.runtime.add_acl

    def add_acl(acl: str, pattern: str, version: int | None = None) -> None:
        real(acl, pattern, version)
        marks.append(time.monotonic())

    gateway.runtime.add_acl = add_acl


# ----------------------------------------------------------------- one sample


class _Bench:
    def __init__(self, engine: sa.Engine, catalog: Any, settings: Any, pipe: Any) -> None:
        self.engine = engine
        self.catalog = catalog
        self.settings = settings
        self.settings_json = settings.model_dump_json()
        self.pipe = pipe
        self.i = 0

    def stage(self) -> tuple[int, dict[str, Any]]:
        """Outside the clock: the report in the inbox and a scan run, as start/collect leave them."""
        from selfheal.scanners import inbox
        from selfheal.triage import store

        self.i += 1
        run_id = store.start_scan_run(self.engine, "zap", SERVICE, scope=f"http://{SERVICE}.localhost")
        inbox_id = inbox.put(self.engine, scan_run_id=run_id, scanner="zap", fmt="zap-api", service=SERVICE,
                             source=f"zap:{SERVICE}:ascan{self.i}", body=zap_report(self.i))
        return self.i, {"service": SERVICE, "scanner": "zap", "scan_run_id": run_id, "inbox_ids": [inbox_id]}

    def watch(self, i: int) -> None:
        target = f"{_path(i)}?q={EXPLOIT_VALUE}"
        self.pipe.send(("poll", self.settings.http_port, target, POLL_S))
        msg = self.pipe.recv()
        if msg[0] != "exposed":
            raise RuntimeError(f"sample {i}: the attacker did not see the exploit pass first: {msg}")

    def blocked(self, i: int) -> tuple[float, float, int]:
        if not self.pipe.poll(30):
            raise RuntimeError(f"sample {i}: the exploit was not blocked within 30 s")
        msg = self.pipe.recv()
        if msg[0] != "blocked":
            raise RuntimeError(f"sample {i}: {msg}")
        return msg[1], msg[2], msg[3]

    def run_direct(self) -> dict[str, float]:
        """One sample through the ingest task's own function (what the task body runs)."""
        from selfheal.remediation.mitigate import prepare_inline
        from selfheal.tasks import scan as scan_tasks

        i, handle = self.stage()
        mitigator = prepare_inline(self.engine, self.catalog, self.settings_json)  # before the commit
        live: list[float] = []
        _timed_add_acl(mitigator.gateway, live)
        self.watch(i)
        try:
            with _CommitClock(self.engine.url.database) as commits:
                t_call = time.monotonic()
                out = scan_tasks.ingest_inbox(self.engine, handle, complete_scope=True, mitigator=mitigator)
                t_done = time.monotonic()
        finally:
            mitigator.close()
        t_sent, t_blocked, polls = self.blocked(i)
        if out.get("mitigations", {}).get("applied") != 1 or not live:
            raise RuntimeError(f"sample {i}: no mitigation applied: {out}")
        t_commit = commits.times[0]
        return {
            "exposure": t_blocked - t_commit,
            "commit_to_rule_live": live[0] - t_commit,
            "rule_live_to_blocked": t_blocked - live[0],
            "commit_to_task_done": t_done - t_commit,
            "ingest_before_commit": t_commit - t_call,
            "block_resolution": t_blocked - t_sent,  # the 403's own round trip
            "polls": polls,
        }


def _summary(rows: list[dict[str, float]]) -> dict[str, Any]:
    exp = [r["exposure"] for r in rows]
    stages = ("commit_to_rule_live", "rule_live_to_blocked", "commit_to_task_done", "ingest_before_commit",
              "block_resolution")
    return {
        "p50_s": round(statistics.median(exp), 5),
        "p99_s": round(_pct(exp, 0.99), 5),
        "max_s": round(max(exp), 5),
        "samples": len(exp),
        "stages_p50_s": {k: round(statistics.median(r[k] for r in rows), 5) for k in stages},
        "stages_p99_s": {k: round(_pct([r[k] for r in rows], 0.99), 5) for k in stages},
    }


# ----------------------------------------------------------------- Airflow (optional)


_DAG_FILE = '''\
"""exposure_window bench: the scan DAG's real `ingest` task on its own, its handle from the run conf."""
from datetime import datetime

from airflow.sdk import dag

from selfheal.tasks.scan import ingest


@dag(dag_id="bench_exposure_window", schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
     render_template_as_native_obj=True)
def bench_exposure_window():
    ingest(handle="{{ dag_run.conf['handle'] }}")


bench_exposure_window()
'''


def _airflow_env(home: Path, bench_settings_json: str, db_url: str, catalog: Any) -> dict[str, str]:
    (home / "dags").mkdir(parents=True, exist_ok=True)
    (home / "dags" / "bench_exposure_window.py").write_text(_DAG_FILE)
    catalog_file = home / "services.yaml"
    catalog_file.write_text(json.dumps({"services": [s.model_dump(mode="json") for s in catalog.services]}))
    return {
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW_VAR_SELFHEAL_GATEWAY": bench_settings_json, "SELFHEAL_DATABASE_URL": db_url,
        "SELFHEAL_CATALOG": str(catalog_file),
    }


def _airflow_samples(bench: _Bench, n: int) -> dict[str, Any]:
    """N samples of the real ``ingest`` task run by Airflow's ``dag.test()`` (in this process)."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    db.resetdb()  # the bench's own, throwaway Airflow home (see main)
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dag = bag.get_dag("bench_exposure_window")
    if dag is None:
        raise RuntimeError(f"the bench DAG did not load: {bag.import_errors}")
    rows: list[dict[str, float]] = []
    for k in range(n + 1):
        i, handle = bench.stage()
        bench.watch(i)
        with _CommitClock(bench.engine.url.database) as commits:
            t0 = time.monotonic()
            dr = dag.test(run_conf={"handle": handle})
            t_end = time.monotonic()
        _, t_blocked, polls = bench.blocked(i)
        if str(dr.state) != "success" or not commits.times:
            raise RuntimeError(f"airflow sample {i}: run {dr.state}, triage commits {len(commits.times)}")
        if k:  # the first run pays dag.test()'s warm-up
            t_commit = commits.times[0]  # the ingest's commit: the task's first on the triage database
            rows.append({"exposure": t_blocked - t_commit, "run_start_to_commit": t_commit - t0,
                         "run_s": t_end - t0, "polls": polls})
    exp = [r["exposure"] for r in rows]
    return {
        "samples": len(rows), "p50_s": round(statistics.median(exp), 5), "max_s": round(max(exp), 5),
        "dag_test_run_p50_s": round(statistics.median(r["run_s"] for r in rows), 3),
        "run_start_to_commit_p50_s": round(statistics.median(r["run_start_to_commit"] for r in rows), 3),
        "how": "dag.test() of a one-task DAG holding selfheal.tasks.scan.ingest (the scan DAG's task object)",
    }


# ----------------------------------------------------------------- main


def main() -> dict:
    from selfheal.catalog import Catalog, Service
    from selfheal.gateway.config import GatewaySettings, write_config
    from selfheal.gateway.process import HAProxyProcess
    from selfheal.gateway.state import ServerSpec
    from selfheal.policy.gate import default_gate
    from selfheal.runtime import open_gateway
    from selfheal.triage.db import make_engine

    load_before = os.getloadavg()
    airflow_home: Path | None = None
    airflow_skip = None
    if "airflow" in sys.modules:
        airflow_skip = "Airflow was imported before this bench set its own home"
    else:
        # A throwaway Airflow home: the direct samples only import airflow.sdk, the Airflow samples
        # reset this home's database (never the user's).
        airflow_home = Path(tempfile.mkdtemp(prefix="shew-airflow-"))
        os.environ["AIRFLOW_HOME"] = str(airflow_home)
        os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{airflow_home / 'airflow.db'}"
        os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    attacker = ctx.Process(target=_attacker, args=(child,), daemon=True)
    attacker.start()
    _, backend_port = parent.recv()
    run_dir = Path(tempfile.mkdtemp(prefix="shew-", dir="/tmp"))
    service = Service(name=SERVICE, base_url=f"http://{SERVICE}.localhost", owner="team@example.com",
                      repository="/srv/repo", mode="mitigate", tier="high")
    catalog = Catalog(services=(service,))
    settings = GatewaySettings(run_dir=run_dir, http_port=_free_port(), stats_port=_free_port(), nbthread=1)
    proc = HAProxyProcess(write_config(catalog, settings)).start()
    result: dict[str, Any] = {}
    try:
        with _triage_db() as (db_url, db_kind):
            engine = make_engine(db_url)
            gw = open_gateway(engine, catalog, settings)
            gw.servers.add(ServerSpec(SERVICE, "s1", "127.0.0.1", backend_port))
            default_gate().engine.digest  # noqa: B018 - compiled once per process, as in a task before its commit
            bench = _Bench(engine, catalog, settings, parent)
            rows: list[dict[str, float]] = []
            for k in range(WARMUP + SAMPLES):
                r = bench.run_direct()
                if k >= WARMUP:
                    rows.append(r)
            result = _summary(rows)
            if AIRFLOW_SAMPLES and airflow_home is not None:
                os.environ.update(_airflow_env(airflow_home, bench.settings_json, db_url, catalog))
                result["airflow"] = _airflow_samples(bench, AIRFLOW_SAMPLES)
            elif AIRFLOW_SAMPLES:
                result["airflow"] = {"skipped": airflow_skip}
            # Outside the clock: legitimate traffic still passes on a patched path; all rules are live.
            c = http.client.HTTPConnection("127.0.0.1", settings.http_port, timeout=5)
            c.request("GET", f"{_path(bench.i)}?q=books", headers={"Host": f"{SERVICE}.localhost"})
            legit = c.getresponse().status
            c.close()
            if legit != 200:
                raise RuntimeError(f"legitimate request got {legit}")
            with engine.connect() as conn:
                count = conn.execute(sa.text(
                    "SELECT (SELECT count(*) FROM findings WHERE mitigated_at IS NOT NULL),"
                    " (SELECT count(*) FROM audit_log WHERE action = 'mitigation')"
                )).one()
                mitigated, ledger_rows = count
            live_rules = len(gw.runtime.acl_entries(str(gw.paths.acl(SERVICE, "block_injection"))))
            gw.close()
            engine.dispose()
    finally:
        parent.send(("stop",))
        attacker.join(5)
        if attacker.is_alive():
            attacker.kill()
        proc.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
        if airflow_home is not None:
            shutil.rmtree(airflow_home, ignore_errors=True)
    polls = [r["polls"] for r in rows]
    result.update({
        "target_p99_s": 0.1,
        "store": db_kind,
        "poll_interval_s": POLL_S,
        "attacker_requests_per_sample_p50": statistics.median(polls),
        "findings_mitigated": mitigated,
        "mitigation_audit_entries": ledger_rows,
        "live_rules": live_rules,
        "legitimate_request_status": legit,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "path": "selfheal.tasks.scan.ingest_inbox (the ingest task body): store.ingest_reports, then inline "
                "apply_instant_mitigations",
    })
    return result


if __name__ == "__main__":
    print(json.dumps(main()))

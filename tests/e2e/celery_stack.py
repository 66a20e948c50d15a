"""A real distributed Airflow on one machine: CeleryExecutor, two workers, Redis, Postgres.

Used by tests/e2e/test_celery_executor.py to prove the DAGs are executor-agnostic.
What it starts, each in its own session (setsid), and stops again by PID:

- redis-server (Debian's) on a free loopback port: the Celery broker, no persistence;
- api-server, scheduler, dag-processor and triggerer sharing one AIRFLOW_HOME (the
  "control plane"), metadata in a fresh database on the private Postgres cluster;
- two `airflow celery worker` processes, each with its OWN AIRFLOW_HOME, TMPDIR and working
  directory (as far as one machine allows: the filesystem itself is shared) and no metadata-DB
  credentials (Airflow 3 workers talk only to the execution API); each reports its own name as
  the task instances' hostname. Celery results go to a second fresh Postgres database.

Of Airflow's own directories only the log folder is shared, as the official compose file shares its logs
volume: two workers on one host cannot both bind the worker log-server port.

This module imports nothing beyond the standard library at import time: the workers
import `worker_hostname` from it (the `[core] hostname_callable`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
WORKER_HOSTNAME_ENV = "SELFHEAL_CELERY_WORKER_HOSTNAME"


def worker_hostname() -> str:
    """`[core] hostname_callable` of the workers: the name this worker was started with.

    Both workers share this machine's FQDN, so without it a task instance's `hostname`
    could not tell them apart; on real hosts (compose, Kubernetes) the FQDN differs anyway."""
    return os.environ.get(WORKER_HOSTNAME_ENV) or socket.getfqdn()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StackError(RuntimeError):
    """A component of the stack did not start or answer; the message names it and shows its log."""


@dataclass
class Component:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            # start_new_session: setsid, so this process and everything it spawns share one
            # session (and, but for task runners, one process group) that stop() can find.
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def _proc_stat(pid: str) -> tuple[str, int, int] | None:
    """(state, pgid, session id) of a process from /proc, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return fields[0], int(fields[2]), int(fields[3])


def running_members(leaders: list[int]) -> list[str]:
    """Processes still running in the sessions or process groups these leaders opened.

    Sessions, not just groups: Airflow's task supervisor puts each task runner into its own
    process group (setpgid), but it stays in the worker's session. A zombie has already
    exited (it only waits to be reaped, possibly by a PID 1 that never reaps) and is not counted."""
    ids = set(leaders)
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        st = _proc_stat(entry.name)
        if st is None or st[0] == "Z" or not ({st[1], st[2]} & ids):
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ")[:160].decode(errors="replace")
        except OSError:
            cmd = "?"
        out.append(f"{entry.name} ({st[0]}, pgid {st[1]}, sid {st[2]}): {cmd}")
    return out


@dataclass
class CeleryStack:
    """Start with `start()`, always `stop()` (it returns what it could not stop)."""

    root: Path
    pg_admin_url: str
    env: dict[str, str] = field(default_factory=dict)  # extra env for every Airflow process
    workers: tuple[str, ...] = ("celery-a", "celery-b")
    concurrency: int = 2
    api_port: int = field(default_factory=free_port)
    redis_port: int = field(default_factory=free_port)
    worker_log_port: int = field(default_factory=free_port)
    trigger_log_port: int = field(default_factory=free_port)
    components: dict[str, Component] = field(default_factory=dict)
    databases: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    health: dict = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)
    stopped: bool = False
    _token: str | None = None
    _fernet_key: str = ""
    _jwt_secret: str = ""

    # ------------------------------------------------------------------ config
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def control_home(self) -> Path:
        return self.root / "control"

    @property
    def log_folder(self) -> Path:
        return self.root / "logs"

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def _db_url(self, name: str) -> str:
        base, _, _ = self.pg_admin_url.rpartition("/")
        return f"{base}/{name}"

    def _airflow_env(self) -> dict[str, str]:
        """Environment every Airflow process gets: this machine's env minus any AIRFLOW* the
        test process carries (its own test home), plus the CeleryExecutor configuration."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTEST"))}
        env.update({
            "PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
            "AIRFLOW_HOME": str(self.control_home),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # Paused: only the DAG under test is unpaused (wait_for_dag), no schedule fires.
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            # Only the runs a test triggers: no cron/timetable run of an unpaused DAG (one due a
            # minute after parsing would take the work and hold max_active_runs=1).
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__CORE__PARALLELISM": str(len(self.workers) * self.concurrency),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            # One set of secrets for all processes (as a deployment would share them), so the
            # separate worker homes cannot each generate their own.
            "AIRFLOW__CORE__FERNET_KEY": self._fernet_key,
            "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt_secret,
            "AIRFLOW__API__SECRET_KEY": self._jwt_secret,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self._db_url(self.databases[0]),
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self._db_url(self.databases[1]),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.concurrency),
            # Celery's default (explicit, so the provider does not warn about it on every start).
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "86400",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.log_folder),
            # Never the defaults (8793/8794): other Airflows on this machine may hold them.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.worker_log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.trigger_log_port),
        })
        env.update(self.env)
        return env

    def _worker_env(self, name: str) -> tuple[dict[str, str], Path]:
        home = self.root / name
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        env = self._airflow_env()
        env.update({
            "AIRFLOW_HOME": str(home),
            "TMPDIR": str(home / "tmp"),
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.e2e.celery_stack.worker_hostname",
            WORKER_HOSTNAME_ENV: name,
            # Airflow 3 workers need no metadata DB (tasks reach it only through the execution
            # API); an unreachable URL here turns any direct access into a failure.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg://nobody@127.0.0.1:9/no_db_on_workers",
        })
        return env, home

    # ------------------------------------------------------------------ lifecycle
    def start(self, *, timeout: float = 240) -> CeleryStack:
        t0 = time.monotonic()
        self._fernet_key = _fernet_key()
        self._jwt_secret = secrets.token_urlsafe(64)  # >= 64 bytes for HS512
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_folder.mkdir(exist_ok=True)
        self.control_home.mkdir(exist_ok=True)
        tag = uuid.uuid4().hex[:10]
        self._create_databases([f"af_meta_{tag}", f"af_celery_{tag}"])

        self._create_result_tables()

        redis_dir = self.root / "redis"
        redis_dir.mkdir(exist_ok=True)
        self._add("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port),
                            "--save", "", "--appendonly", "no", "--dir", str(redis_dir),
                            "--protected-mode", "yes", "--daemonize", "no"], os.environ.copy(), redis_dir)
        airflow = str(VENV_BIN / "airflow")
        # Workers need neither the metadata DB nor the API server to come up: start them with
        # the broker, so their (CPU-bound) start overlaps `airflow db migrate`.
        for name in self.workers:
            wenv, home = self._worker_env(name)
            self._add(name, [airflow, "celery", "worker", "--celery-hostname", name,
                             "--concurrency", str(self.concurrency), "--skip-serve-logs"], wenv, home)
        for c in self.components.values():
            c.start()
        env = self._airflow_env()
        migrate = subprocess.run([airflow, "db", "migrate"], env=env, cwd=self.control_home,
                                 capture_output=True, text=True, timeout=300)
        if migrate.returncode != 0:
            raise StackError(f"airflow db migrate failed:\n{migrate.stdout[-2000:]}\n"
                             f"{migrate.stderr[-3000:]}")
        self.timings["migrate_s"] = time.monotonic() - t0

        self._add("api-server", [airflow, "api-server", "--host", "127.0.0.1", "--port", str(self.api_port)],
                  env, self.control_home)
        for cmd in ("scheduler", "dag-processor", "triggerer"):
            self._add(cmd, [airflow, cmd], env, self.control_home)
        for c in self.components.values():
            if c.proc is None:
                c.start()
        remaining = lambda: max(5.0, timeout - (time.monotonic() - t0))  # noqa: E731
        self._wait("api-server", self._api_healthy, remaining())
        self._wait("workers", self._workers_ready, remaining())
        self.timings["ready_s"] = time.monotonic() - t0
        return self

    def stop(self, *, grace: float = 30) -> list[str]:
        """Stop what start() started and drop its databases; return what still runs (should be []).

        SIGTERM to every Airflow process group at once (workers shut down warm, the other
        components exit cleanly), SIGKILL to whatever in their sessions outlives `grace`;
        Redis last, so no worker loses its broker while shutting down."""
        if self.stopped:
            return running_members(self.leaders)
        self.stopped = True
        airflow = [c for c in self.components.values() if c.name != "redis"]
        redis = [c for c in self.components.values() if c.name == "redis"]
        for group in (airflow, redis):
            self._terminate([c for c in group if c.proc is not None], grace)
        left = running_members(self.leaders)
        self._drop_databases()
        return left

    def _terminate(self, comps: list[Component], grace: float) -> None:
        leaders = [c.pid for c in comps]
        for pid in leaders:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        t0 = time.monotonic()
        deadline = t0 + grace
        pending = {c.name: c.pid for c in comps}
        while pending and time.monotonic() < deadline:
            for name, pid in list(pending.items()):
                if not running_members([pid]):
                    self.timings[f"stop_{name}_s"] = time.monotonic() - t0
                    del pending[name]
            time.sleep(0.25)
        for line in running_members(leaders):  # only members of sessions we opened
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(line.split()[0]), signal.SIGKILL)
        for c in comps:
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while running_members(leaders) and time.monotonic() < deadline:
            time.sleep(0.25)

    @property
    def leaders(self) -> list[int]:
        return [c.pid for c in self.components.values() if c.proc is not None]

    def _add(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.components[name] = Component(name, argv, env, cwd, self.root / "out" / f"{name}.log")

    def _wait(self, what: str, probe: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            dead = [c for c in self.components.values() if c.proc is not None and not c.alive()]
            if dead:
                raise StackError("; ".join(f"{c.name} exited with {c.returncode}:\n{c.tail()}" for c in dead))
            try:
                if probe():
                    return
            except Exception as e:  # noqa: BLE001 - not up yet; keep the last reason for the error
                last = e
            time.sleep(0.5)
        tails = "\n".join(f"--- {c.name}\n{c.tail(15)}" for c in self.components.values())
        raise StackError(f"{what} not ready after {timeout:.0f} s (last: {last!r})\n{tails}")

    # ------------------------------------------------------------------ probes
    def _redis_ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def _api_healthy(self) -> bool:
        health = self.api("GET", "/api/v2/monitor/health", auth=False)
        self.health = health
        return all(health.get(k, {}).get("status") == "healthy"
                   for k in ("metadatabase", "scheduler", "triggerer", "dag_processor"))

    def _workers_ready(self) -> bool:
        """Both workers answer a Celery ping through the broker (they consume from it)."""
        from celery import Celery

        app = Celery(broker=self.broker_url)
        try:
            replies = app.control.ping(timeout=1.0)
        finally:
            app.close()
        answered = {name.split("@", 1)[-1] for r in replies for name in r}
        self.answered = answered
        return answered >= set(self.workers)

    # ------------------------------------------------------------------ databases
    def _create_databases(self, names: list[str]) -> None:
        import sqlalchemy as sa

        admin = sa.create_engine(self.pg_admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as c:
                for n in names:
                    c.execute(sa.text(f'CREATE DATABASE "{n}"'))
                    self.databases.append(n)
        finally:
            admin.dispose()

    def _create_result_tables(self) -> None:
        """Celery's own result tables, made once before the workers start: each worker creates
        them at start-up, and two doing it at once can race on Postgres' catalog."""
        from celery import Celery

        app = Celery(backend="db+" + self.result_backend_url)
        try:
            app.backend.ResultSession().close()
        finally:
            app.close()

    def _drop_databases(self) -> None:
        import sqlalchemy as sa

        admin = sa.create_engine(self.pg_admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as c:
                for n in self.databases:
                    c.execute(sa.text(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)'))
        finally:
            admin.dispose()
        self.databases.clear()

    @property
    def metadata_url(self) -> str:
        return self._db_url(self.databases[0])

    @property
    def result_backend_url(self) -> str:
        return self._db_url(self.databases[1])

    # ------------------------------------------------------------------ REST API
    def password(self) -> str:
        path = self.control_home / "simple_auth_manager_passwords.json.generated"
        return json.loads(path.read_text())["admin"]

    def api(self, method: str, path: str, body: Any = None, *, auth: bool = True, timeout: float = 60) -> Any:
        """Call the REST API (JSON in, JSON out); a token is fetched once and renewed on 401."""
        for attempt in (1, 2):
            headers = {"Content-Type": "application/json"}
            if auth:
                if self._token is None:
                    creds = {"username": "admin", "password": self.password()}
                    self._token = self.api("POST", "/auth/token", creds, auth=False)["access_token"]
                headers["Authorization"] = f"Bearer {self._token}"
            req = urllib.request.Request(self.base_url + path, method=method, headers=headers,
                                         data=None if body is None else json.dumps(body).encode())
            try:
                with urllib.request.urlopen(req, timeout=timeout) as r:
                    raw = r.read()
                    return json.loads(raw) if raw else {}
            except urllib.error.HTTPError as e:
                if e.code == 401 and auth and attempt == 1:
                    self._token = None
                    continue
                raise StackError(f"{method} {path} -> {e.code}: {e.read()[:500]!r}") from None
        raise AssertionError("unreachable")

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> dict:
        """Until the dag-processor has serialized `dag_id`; then make sure it is unpaused."""
        self._wait(f"DAG {dag_id}", lambda: self.api("GET", f"/api/v2/dags/{dag_id}"), timeout)
        return self.api("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def set_variable(self, key: str, value: str) -> None:
        """An Airflow Variable in the metadata DB: the workers read it through the execution API."""
        self.api("POST", "/api/v2/variables", {"key": key, "value": value})

    def set_connection(self, conn_id: str, fields: dict[str, Any]) -> None:
        self.api("POST", "/api/v2/connections", {"connection_id": conn_id, **fields})

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        run = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})
        return run["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300, queued_limit: float = 180) -> str:
        """The run's final state, or its state at `timeout`. A run still queued after `queued_limit`
        fails at once, naming the runs ahead of it (max_active_runs would hold it forever)."""
        q = urllib.parse.quote(run_id, safe="")
        t0 = time.monotonic()
        state = "queued"
        while time.monotonic() < t0 + timeout:
            state = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{q}")["state"]
            if state in ("success", "failed"):
                return state
            dead = [c.name for c in self.components.values() if c.proc is not None and not c.alive()]
            if dead:
                raise StackError(f"{dead} exited while {dag_id} ran: {self.components[dead[0]].tail()}")
            if state == "queued" and time.monotonic() > t0 + queued_limit:
                runs = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=20")["dag_runs"]
                raise StackError(f"{run_id} still queued after {queued_limit:.0f} s; runs of {dag_id}: "
                                 f"{[(r['dag_run_id'], r['state']) for r in runs]}")
            time.sleep(1)
        return state

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        q = urllib.parse.quote(run_id, safe="")
        path = f"/api/v2/dags/{dag_id}/dagRuns/{q}/taskInstances?limit=1000"
        return self.api("GET", path)["task_instances"]

    def xcoms(self, dag_id: str, run_id: str) -> list[dict]:
        """Every XCom of the run with its stored value (as the DB holds it, not resolved by a backend)."""
        q = urllib.parse.quote(run_id, safe="")
        entries = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{q}/taskInstances/~/xcomEntries?limit=1000")
        out = []
        for e in entries["xcom_entries"]:
            key = urllib.parse.quote(e["key"], safe="")
            full = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{q}/taskInstances/{e['task_id']}"
                                   f"/xcomEntries/{key}?map_index={e['map_index']}")
            out.append(full)
        return out

    def task_log(self, ti: dict, lines: int = 60) -> str:
        """The task's log from the shared log folder (last lines), for failure messages."""
        found = sorted(self.log_folder.glob(
            f"dag_id={ti['dag_id']}/run_id={ti['dag_run_id']}/task_id={ti['task_id']}/**/*.log"))
        if not found:
            return "(no log file)"
        return "\n".join(found[-1].read_text(errors="replace").splitlines()[-lines:])


    # ------------------------------------------------------------------ Celery's side of the story
    def celery_task_ids(self, dag_id: str, run_id: str) -> dict[tuple[str, int], str]:
        """(task_id, map_index) -> the Celery task id that ran it (the TI's external_executor_id,
        which the REST API does not expose), read from the metadata DB."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.metadata_url)
        try:
            with engine.connect() as c:
                rows = c.execute(sa.text(
                    "SELECT task_id, map_index, external_executor_id FROM task_instance"
                    " WHERE dag_id = :d AND run_id = :r"), {"d": dag_id, "r": run_id}).all()
        finally:
            engine.dispose()
        return {(r.task_id, r.map_index): r.external_executor_id for r in rows}

    def worker_outcomes(self, name: str) -> dict[str, str]:
        """Celery task id -> 'succeeded' / 'failed' / 'received', from that worker's own log."""
        out: dict[str, str] = {}
        for line in self.components[name].log.read_text(errors="replace").splitlines():
            m = _CELERY_TASK_LINE.search(line)
            if m and out.get(m["id"]) in (None, "received"):
                out[m["id"]] = m["what"].replace("raised", "failed")
        return out

    def result_backend_states(self) -> dict[str, str]:
        """Celery task id -> status as the Postgres result backend recorded it."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.result_backend_url)
        try:
            with engine.connect() as c:
                return dict(c.execute(sa.text("SELECT task_id, status FROM celery_taskmeta")).tuples().all())
        finally:
            engine.dispose()


# Celery's own worker log lines, e.g. "Task execute_workload[<uuid>] succeeded in 3.5s: None".
_CELERY_TASK_LINE = re.compile(
    r"Task execute_workload\[(?P<id>[0-9a-f-]{36})\] (?P<what>received|succeeded|raised)")


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()

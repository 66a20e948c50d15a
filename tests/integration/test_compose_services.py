"""The parts of docker-compose.yaml that run here, run for real.

No image can be pulled on this machine, so the stack itself never starts in
tests; but its gateway entrypoint (include/compose/gateway.py: render, haproxy
-c, start HAProxy, reconcile from Postgres, seed the demo target) and its
Postgres init script run here on the real HAProxy and PostgreSQL, with the
settings document of the compose file (only the run directory and the ports
swapped for private ones).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
import yaml

from selfheal import demo
from selfheal.gateway.state import gateway_servers
from selfheal.rollout.harness import free_port

pytestmark = [pytest.mark.postgres]
REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
ENTRY = REPO / "include" / "compose" / "gateway.py"


def _compose_gateway_settings() -> dict:
    doc = yaml.safe_load(COMPOSE.read_text())
    return json.loads(doc["services"]["gateway"]["environment"]["SELFHEAL_GATEWAY_JSON"])


@pytest.fixture
def demo_target() -> Iterator[str]:
    with demo.local_server() as url:
        yield url


class Entrypoint:
    """The compose gateway command as a child process of the test (stopped by its PID)."""

    def __init__(self, settings: dict, env: dict[str, str]) -> None:
        self.settings, self.env = settings, env
        self.run_dir = Path(settings["run_dir"])
        self.proc: subprocess.Popen[str] | None = None
        self.out = self.run_dir.parent / "entrypoint.out"

    def start(self) -> Entrypoint:
        self.proc = subprocess.Popen(
            [sys.executable, str(ENTRY)],
            env=self.env,
            stdout=self.out.open("a"),
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.check() == 0:
                return self
            assert self.proc.poll() is None, f"entrypoint exited {self.proc.returncode}: {self.output()}"
            time.sleep(0.2)
        raise AssertionError(f"gateway never became ready: {self.output()}")

    def check(self) -> int:
        return subprocess.run(
            [sys.executable, str(ENTRY), "--check"], env=self.env, capture_output=True, timeout=30
        ).returncode

    def output(self) -> str:
        return self.out.read_text(errors="replace")[-3000:]

    def get(self, path: str, host: str = "gateway") -> tuple[int, bytes]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.settings['http_port']}{path}", headers={"Host": host}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture
def gateway_env(migrated_triage_url: str, demo_target: str) -> Iterator[tuple[dict, dict[str, str]]]:
    base = Path(tempfile.mkdtemp(prefix="shcg-", dir="/tmp"))  # short: Unix socket paths max 108 bytes
    settings = {
        **_compose_gateway_settings(),
        "run_dir": str(base / "gw"),
        "bind": "127.0.0.1",
        "http_port": free_port(),
        "stats_port": free_port(),
    }
    (base / "gw").mkdir(mode=0o700)
    target = urlsplit(demo_target)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "plugins"),
        "SELFHEAL_GATEWAY_JSON": json.dumps(settings),
        "SELFHEAL_CATALOG": str(REPO / "include" / "compose" / "services.yaml"),
        "SELFHEAL_DATABASE_URL": migrated_triage_url,
        # the compose value is demo-target=demo-target:8000; here the service's host is "localhost"
        "SELFHEAL_GATEWAY_SEED": f"demo-target=localhost:{target.port}",
    }
    try:
        yield settings, env
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_gateway_entrypoint_serves_the_seeded_demo_target_and_survives_a_restart(
    gateway_env, migrated_triage_url
):
    settings, env = gateway_env
    gw = Entrypoint(settings, env).start()
    try:
        status, body = gw.get("/health")
        assert status == 200, body
        # Host "gateway" (the compose catalog's base_url) reaches the demo target through default_service.
        status, body = gw.get("/openapi.json")
        assert status == 200 and b"openapi" in body
        status, _ = gw.get("/health", host="demo-target.localhost")
        assert status == 200
    finally:
        assert gw.stop() == 0, gw.output()
    assert not (Path(settings["run_dir"]) / "ready").exists()

    engine = sa.create_engine(migrated_triage_url)
    with engine.connect() as c:
        rows = c.execute(sa.select(gateway_servers)).mappings().all()
    assert [(r["service"], r["name"], r["address"]) for r in rows] == [("demo-target", "blue", "127.0.0.1")]
    with engine.connect() as c:
        seeded = c.execute(
            sa.text(
                "SELECT count(*) FROM audit_log WHERE action = 'gateway.gateway.server.add'"
                " OR action = 'gateway.server.add'"
            )
        ).scalar()
    assert seeded >= 1, "the seed went through the audited gateway API"

    # Restart: the server comes back from the desired state (reconcile), the seed is not repeated.
    gw = Entrypoint(settings, env).start()
    try:
        assert gw.get("/health")[0] == 200
        assert "seed unchanged" in gw.output()
    finally:
        gw.stop()
    engine.dispose()


def test_gateway_entrypoint_refuses_a_bad_seed_in_one_line(gateway_env):
    _, env = gateway_env
    env = {**env, "SELFHEAL_GATEWAY_SEED": "demo-target=no-port-here"}
    proc = subprocess.run([sys.executable, str(ENTRY)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().splitlines()[-1].startswith("gateway: GatewayStartError: SELFHEAL_GATEWAY_SEED")
    )
    assert (
        subprocess.run([sys.executable, str(ENTRY), "--check"], env=env, capture_output=True).returncode == 1
    )


def test_postgres_init_script_creates_the_triage_role_and_database(pg_admin_url: str) -> None:
    """include/compose/postgres-init.sh as the postgres image runs it, against the real cluster.

    Role and database names get a unique suffix (roles are cluster-wide and the cluster is shared);
    the password has quotes and a semicolon: psql quotes it, nothing is pasted into SQL."""
    suffix = uuid.uuid4().hex[:8]
    role = f"selfheal_{suffix}"
    script = (REPO / "include" / "compose" / "postgres-init.sh").read_text()
    assert script.count("ROLE selfheal ") == 1 and script.count("DATABASE selfheal OWNER selfheal;") == 1
    script = script.replace("ROLE selfheal ", f"ROLE {role} ").replace(
        "DATABASE selfheal OWNER selfheal;", f"DATABASE {role} OWNER {role};"
    )
    password = 'it\'s "quoted"; DROP ROLE x; --'
    admin = sa.make_url(pg_admin_url)
    bindir = next(Path("/usr/lib/postgresql").glob("*/bin"))
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "PGHOST": admin.host or "127.0.0.1",
        "PGPORT": str(admin.port or 5432),
        "PGPASSWORD": admin.password or "",
        "POSTGRES_USER": admin.username or "postgres",
        "POSTGRES_DB": admin.database or "postgres",
        "SELFHEAL_DB_PASSWORD": password,
    }
    drop = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    try:
        proc = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        url = admin.set(username=role, password=password, database=role)
        e = sa.create_engine(url)
        with e.connect() as c:
            assert c.execute(sa.text("SELECT current_user, current_database()")).one() == (role, role)
        e.dispose()
        missing = subprocess.run(
            ["sh", "-c", script],
            env={k: v for k, v in env.items() if k != "SELFHEAL_DB_PASSWORD"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert missing.returncode != 0 and "SELFHEAL_DB_PASSWORD is not set" in missing.stderr
    finally:
        with drop.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{role}" WITH (FORCE)'))
            c.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))
        drop.dispose()


def test_gateway_entrypoint_waits_for_the_database_then_gives_up_in_one_line(gateway_env) -> None:
    """Postgres not there (yet): retries, then exits 1 naming the URL without its password;
    SIGTERM while it waits stops it at once, HAProxy included."""
    settings, env = gateway_env
    dead = f"postgresql+psycopg://selfheal:s3cret-pw@127.0.0.1:{free_port()}/selfheal"
    env = {**env, "SELFHEAL_DATABASE_URL": dead, "SELFHEAL_GATEWAY_DB_WAIT_S": "2"}
    proc = subprocess.run([sys.executable, str(ENTRY)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("gateway: GatewayStartError: reconcile with postgresql+psycopg://selfheal:***@"), (
        last
    )
    assert "s3cret-pw" not in proc.stderr + proc.stdout

    log = Path(settings["run_dir"]).parent / "waiting.out"
    with log.open("w") as out:
        waiting = subprocess.Popen(
            [sys.executable, str(ENTRY)],
            env={**env, "SELFHEAL_GATEWAY_DB_WAIT_S": "600"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "reconcile not possible yet" not in log.read_text() and time.monotonic() < deadline:
            assert waiting.poll() is None, log.read_text()
            time.sleep(0.1)
        assert "reconcile not possible yet" in log.read_text(), log.read_text()
        waiting.send_signal(signal.SIGTERM)
        assert waiting.wait(timeout=15) == 0, log.read_text()
    finally:
        if waiting.poll() is None:
            waiting.kill()
    # HAProxy went with it: its port no longer answers.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{settings['stats_port']}/healthz", timeout=2)

"""The gateway container of docker-compose.yaml: render, start and reconcile HAProxy, then stay its parent.

Run as the container's command (the selfheal Airflow image, which carries
HAProxy and the selfheal package)::

    python /opt/selfheal/include/compose/gateway.py          # serve (foreground)
    python /opt/selfheal/include/compose/gateway.py --check  # healthcheck: exit 0 once ready

Steps, in order, each failing with one line naming what is wrong:

1. settings from $SELFHEAL_GATEWAY_JSON, the same JSON the Airflow tasks get
   as the ``selfheal_gateway`` Variable (one YAML anchor in the compose file),
   so HAProxy and the tasks agree on the run directory (admin socket, shared
   volume) and ports; the catalog from $SELFHEAL_CATALOG;
2. ``selfheal.gateway.config.write_config``: render include/gateway/haproxy.cfg.j2
   and check it with ``haproxy -c`` before it is installed;
3. HAProxy in the foreground as our child (its output is the container's log);
4. reconcile to the desired state in the triage database (servers, weights,
   virtual patches survive a gateway restart), retried while the database
   is not reachable yet;
5. seed: ``SELFHEAL_GATEWAY_SEED=service=host:port,...`` registers the compose
   service (e.g. the demo target) as server ``blue`` of a service that has no
   server at all yet, through the audited gateway API, so a fresh stack
   serves traffic and the first canary has a baseline. HAProxy 2.6 dynamic
   servers take IP addresses only: the host is resolved here, and re-resolved
   on each start while ``blue`` is still the seed (its container may have a
   new address after ``docker compose up --force-recreate``);
6. write ``ready`` in the run directory (what ``--check`` looks for, with the
   stats frontend's /healthz) and wait; SIGTERM/SIGINT stop HAProxy softly
   (SIGUSR1: finish in-flight requests), then hard after a grace period.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

SEED_NAME = "blue"  # a color: the rollout strategies treat server names as color slots
GRACE_S = 8.0  # docker stop waits 10 s before SIGKILL


class GatewayStartError(RuntimeError):
    """A start-up step failed; the message names the step."""


def _settings_text() -> str:
    raw = os.environ.get("SELFHEAL_GATEWAY_JSON", "")
    if not raw.strip():
        raise GatewayStartError(
            "SELFHEAL_GATEWAY_JSON is empty: set it to the selfheal_gateway settings JSON"
        )
    return raw


def check() -> int:
    """Healthcheck (stdlib only, it runs every few seconds): reconciled and HAProxy answering."""
    try:
        settings = json.loads(_settings_text())
        if not (Path(settings["run_dir"]) / "ready").exists():
            print("not ready: reconcile has not finished", file=sys.stderr)
            return 1
        port = int(settings.get("stats_port", 8404))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as r:
            return 0 if r.status == 200 else 1
    except Exception as e:  # noqa: BLE001 - any failure is "unhealthy", with its reason
        print(f"unhealthy: {e}", file=sys.stderr)
        return 1


def parse_seeds(raw: str) -> dict[str, tuple[str, int]]:
    """``"svc=host:port,svc2=host:port"`` -> {svc: (host, port)}."""
    seeds: dict[str, tuple[str, int]] = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        service, sep, target = item.partition("=")
        host, sep2, port = target.rpartition(":")
        if not (sep and sep2 and service and host and port.isdigit() and 0 < int(port) < 65536):
            raise GatewayStartError(f"SELFHEAL_GATEWAY_SEED: {item!r} is not service=host:port")
        seeds[service.strip()] = (host.strip(), int(port))
    return seeds


def _resolve(host: str) -> str:
    try:
        return socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except OSError as e:
        raise GatewayStartError(f"seed host {host!r} does not resolve: {e}") from None


def seed(gateway: Any, seeds: dict[str, tuple[str, int]], run_dir: Path, log: Any) -> dict[str, str]:
    """Register each seed as server ``blue`` where the service has no server yet (or re-address our seed)."""
    from selfheal.logs import log_context

    record_path = run_dir / "seeds.json"
    try:
        recorded = json.loads(record_path.read_text())
    except (OSError, ValueError):
        recorded = {}
    outcome: dict[str, str] = {}
    for service, (host, port) in seeds.items():
        with log_context(service=service):
            outcome[service] = _seed_one(gateway, service, host, port, recorded)
            log.info("gateway seed %s: %s", service, outcome[service])
    record_path.write_text(json.dumps(recorded))
    return outcome


def _seed_one(gateway: Any, service: str, host: str, port: int, recorded: dict[str, Any]) -> str:
    from selfheal.gateway.state import ServerSpec

    if service not in gateway.services:
        raise GatewayStartError(
            f"SELFHEAL_GATEWAY_SEED: {service!r} is not in the catalog {gateway.services}"
        )
    address = _resolve(host)
    servers = {s.name: s for s in gateway.store.list_servers(service)}
    current = servers.get(SEED_NAME)
    ours = recorded.get(service)
    if not servers:
        gateway.servers.add(
            ServerSpec(service=service, name=SEED_NAME, address=address, port=port), wait_healthy=60.0
        )
        recorded[service] = [address, port]
        return f"seeded {host} ({address}:{port})"
    if current is None or not ours or [current.address, current.port] != list(ours):
        return f"left alone: the desired state has servers {sorted(servers)}"
    if (current.address, current.port) == (address, port):
        return "seed unchanged"
    # Still the compose container we seeded, now at another address: same weight and state.
    gateway.servers.remove(service, SEED_NAME, reason=f"seed {host} moved to {address}")
    gateway.servers.add(
        ServerSpec(
            service=service,
            name=SEED_NAME,
            address=address,
            port=port,
            weight=current.weight,
            state=current.state,
        ),
        wait_healthy=60.0,
    )
    recorded[service] = [address, port]
    return f"seed {host} re-addressed to {address}:{port}"


def _wait_socket(sock_path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise GatewayStartError(f"haproxy exited with status {proc.returncode} at start")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                s.connect(str(sock_path))
                s.sendall(b"show version\n")
                if s.recv(64):
                    return
        except OSError:
            time.sleep(0.05)
    raise GatewayStartError(f"haproxy runtime socket {sock_path} did not answer within {timeout:g} s")


def _reconcile(
    settings: Any, catalog: Any, seeds: dict[str, tuple[str, int]], log: Any, timeout: float
) -> None:
    from selfheal.runtime import open_gateway
    from selfheal.triage.db import make_engine, masked

    url = os.environ.get("SELFHEAL_DATABASE_URL", "")
    if not url:
        raise GatewayStartError("SELFHEAL_DATABASE_URL is not set: the desired gateway state lives there")
    engine = make_engine(url)
    deadline = time.monotonic() + timeout
    delay = 0.5
    try:
        while True:
            try:
                gateway = open_gateway(engine, catalog, settings)
                try:
                    report = gateway.reconcile()
                    log.info(
                        "gateway reconciled in %.3f s: servers %s, rules %s",
                        report.seconds,
                        report.servers,
                        report.rules,
                    )
                    seed(gateway, seeds, settings.run_dir, log)
                finally:
                    gateway.close()
                return
            except GatewayStartError:
                raise
            except Exception as e:
                if time.monotonic() > deadline:
                    why = " ".join(str(e).split())[:300]
                    raise GatewayStartError(
                        f"reconcile with {masked(url)} failed for {timeout:g} s: {why}"
                    ) from e
                log.warning("reconcile not possible yet (%s); retrying in %.1f s", type(e).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
    finally:
        engine.dispose()


def serve() -> int:
    from selfheal.logs import configure

    configure(sys.stdout)
    log = logging.getLogger("selfheal.gateway.compose")
    from selfheal.catalog import load_catalog
    from selfheal.gateway.config import HAPROXY_BIN, write_config
    from selfheal.runtime import gateway_settings

    settings = gateway_settings(_settings_text())
    catalog = load_catalog()
    seeds = parse_seeds(os.environ.get("SELFHEAL_GATEWAY_SEED", ""))
    ready = settings.run_dir / "ready"
    ready.unlink(missing_ok=True)
    paths = write_config(catalog, settings)  # haproxy -c first: a bad render never starts
    log.info("config %s rendered for %s and checked", paths.config, catalog.names())
    proc = subprocess.Popen([HAPROXY_BIN, "-db", "-f", str(paths.config)], stdin=subprocess.DEVNULL)
    stopping = {"signal": 0, "ready": False}

    def stop(signum: int, _frame: object) -> None:
        stopping["signal"] = signum
        if proc.poll() is None:
            proc.send_signal(signal.SIGUSR1)  # soft stop: listeners close, in-flight requests finish
        if not stopping["ready"]:
            raise SystemExit(0)  # stopped while starting: leave the reconcile retries at once

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        _wait_socket(paths.admin_socket, proc, 15.0)
        _reconcile(settings, catalog, seeds, log, float(os.environ.get("SELFHEAL_GATEWAY_DB_WAIT_S", "120")))
        ready.write_text(str(proc.pid))
        stopping["ready"] = True
        log.info(
            "gateway ready on %s:%d (stats %d), haproxy pid %d",
            settings.bind,
            settings.http_port,
            settings.stats_port,
            proc.pid,
        )
        while proc.poll() is None:
            try:
                proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                if stopping["signal"]:
                    break
        if stopping["signal"]:
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(timeout=5)
            return 0
        log.error("haproxy exited on its own with status %s", proc.returncode)
        return proc.returncode or 1
    except BaseException:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    finally:
        ready.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    if argv[1:] == ["--check"]:
        return check()
    if argv[1:]:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        return serve()
    except Exception as e:  # noqa: BLE001 - one line naming the step, then a non-zero exit (compose restarts us)
        print(f"gateway: {type(e).__name__}: {' '.join(str(e).split())[:500]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

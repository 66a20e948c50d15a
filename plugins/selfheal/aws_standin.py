"""AWS STAND-IN for the local demo: moto in server mode on loopback, seeded with Inspector2 findings.

No AWS account is used. The `aws_default` connection points the Amazon
provider at this server, so the Inspector2 path (boto3 over rest-json HTTP,
the hook, the trigger, the ingest) runs exactly as against AWS; only the
other end is moto. It is labelled as a stand-in wherever it shows up
(connection description, logs, the demo summary).

moto 5.2's Inspector2 has no "create finding" call: findings are queued
through moto's own API (POST /moto-api/static/inspector2/findings-results),
one list per future DISTINCT ListFindings query (same filter, page size,
token). Several components ask with different filters (the scan's collect
step, the hourly sync's sensor and its ingest), so the same page is queued a
few times; the ingest is idempotent, so a second delivery changes nothing.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from selfheal.paths import INCLUDE_DIR

FINDINGS_FILE = INCLUDE_DIR / "demo" / "cloud" / "inspector2-findings.json"
ACCOUNT_ID = "123456789012"  # moto's default account
REGION = "us-east-1"
LABEL = "AWS stand-in (moto server on loopback, not AWS)"
# Dummy keys: moto accepts any unless its IAM check is switched on. Not a secret.
ACCESS_KEY = "AKIDSELFHEALDEMO"
SECRET_KEY = "moto-stand-in-not-a-secret"  # noqa: S105 - a fixed dummy for a local moto server
QUEUED_COPIES = 6
MARKER = "moto_server"


class StandInError(RuntimeError):
    """The moto stand-in could not be started, seeded or stopped; the message says why."""


def connection_json(endpoint_url: str) -> str:
    """`AIRFLOW_CONN_AWS_DEFAULT` (JSON form) aiming the Amazon provider at the stand-in."""
    return json.dumps(
        {
            "conn_type": "aws",
            "description": LABEL,
            "login": ACCESS_KEY,
            "password": SECRET_KEY,
            "extra": {"endpoint_url": endpoint_url, "region_name": REGION},
        }
    )


def demo_findings(path: Path = FINDINGS_FILE, now: datetime | None = None) -> list[dict[str, Any]]:
    """The demo's Inspector2 findings with `updatedAt`/`lastObservedAt` set to `now` (a fresh change)."""
    try:
        page = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StandInError(f"{path}: cannot read the demo's Inspector2 findings ({e})") from None
    findings = page.get("findings") if isinstance(page, dict) else None
    if not isinstance(findings, list) or not findings:
        raise StandInError(f"{path}: expected a ListFindings page with a non-empty 'findings' list")
    stamp = (now or datetime.now(UTC)).isoformat(timespec="milliseconds")
    out = []
    for f in findings:
        f = copy.deepcopy(f)
        f["updatedAt"] = f["lastObservedAt"] = stamp
        out.append(f)
    return out


def _to_wire(value: Any, shape: Any) -> Any:
    """`value` as the real API serializes it: timestamp members as epoch seconds (botocore's model says which)."""
    kind = shape.type_name
    if kind == "timestamp" and isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    if kind == "structure" and isinstance(value, dict):
        return {k: _to_wire(v, shape.members[k]) if k in shape.members else v for k, v in value.items()}
    if kind == "list" and isinstance(value, list):
        return [_to_wire(v, shape.member) for v in value]
    if kind == "map" and isinstance(value, dict):
        return {k: _to_wire(v, shape.value) for k, v in value.items()}
    return value


def _post(url: str, body: bytes, timeout: float = 10.0) -> bytes:
    if not url.startswith("http://127.0.0.1:"):
        raise StandInError(f"{url}: the stand-in is only ever on loopback http")
    req = urllib.request.Request(  # noqa: S310 - checked above: loopback http
        url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback http only
            return resp.read()
    except (urllib.error.URLError, OSError) as e:
        raise StandInError(f"{url}: {e}") from None


def seed_inspector(endpoint_url: str, findings: list[dict[str, Any]], copies: int = QUEUED_COPIES) -> int:
    """Forget earlier seeds and queue `findings` for the next `copies` distinct ListFindings queries."""
    import botocore.session

    shape = botocore.session.get_session().get_service_model("inspector2").shape_for("Finding")
    wire = [_to_wire(f, shape) for f in findings]
    _post(f"{endpoint_url}/moto-api/reset", b"")
    body = json.dumps({"results": [wire] * copies, "account_id": ACCOUNT_ID, "region": REGION}).encode()
    _post(f"{endpoint_url}/moto-api/static/inspector2/findings-results", body)
    return len(findings)


# ------------------------------------------------------------------------- the process


def _moto_binary() -> str:
    local = Path(sys.executable).parent / "moto_server"
    found = str(local) if local.is_file() else shutil.which("moto_server")
    if not found:
        raise StandInError("moto_server not found (pip install 'moto[server]')")
    return found


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def pid_running(pid: int | None, marker: str) -> bool:
    """`pid` runs (not a zombie) and its command line contains `marker` (guards against PID reuse)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and marker in cmdline


def stop_pid(pid: int | None, marker: str, timeout: float = 10.0) -> bool:
    """SIGTERM then SIGKILL `pid` if it is still the process we started; True when it was running."""
    if not pid_running(pid, marker):
        return False
    assert pid is not None
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_running(pid, marker):
                return True
            time.sleep(0.1)
    raise StandInError(f"process {pid} ({marker}) did not stop")


def start_moto(port: int, log_path: Path, timeout: float = 30.0) -> int:
    """Start `moto_server` on 127.0.0.1:`port` in its own session; returns its PID once it answers."""
    if port_open(port):
        raise StandInError(f"127.0.0.1:{port} is already in use; set SELFHEAL_MOTO_PORT to a free port")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [_moto_binary(), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise StandInError(f"moto_server exited with {proc.returncode}: {' | '.join(tail)}")
        if port_open(port):
            return proc.pid
        time.sleep(0.2)
    stop_pid(proc.pid, MARKER)
    raise StandInError(f"moto_server did not listen on 127.0.0.1:{port} within {timeout:g} s (log {log_path})")


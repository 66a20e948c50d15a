"""The demo target for real: its image built offline with Docker, and the service under uvicorn.

Docker tests build from the offline base image named by $SELFHEAL_BASE_IMAGE
(default selfheal/base:bookworm, made by scripts/base-image.sh), with the build's
network cut, so they prove the wheel cache is complete.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest

from selfheal import demo
from selfheal.demo import TARGET_DIR

IMAGE = "selfheal/target-api:itest"
HARDENED = {"read_only": True, "tmpfs": {"/tmp": "rw,size=64m"}, "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"]}


def get(url: str, timeout: float = 5) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, dict(r.headers.items()), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read().decode()


@pytest.fixture(scope="module")
def image(docker_client, base_image: str) -> str:
    from docker.errors import BuildError

    demo.prepare_wheels()
    try:
        docker_client.images.build(path=str(TARGET_DIR), tag=IMAGE, buildargs={"BASE_IMAGE": base_image},
                                   network_mode="none", rm=True, forcerm=True, pull=False)
    except BuildError as exc:
        log = "".join(str(chunk.get("stream", chunk)) for chunk in exc.build_log)
        pytest.fail(f"image build failed: {exc}\n{log[-3000:]}")
    return IMAGE


@pytest.fixture
def containers(docker_client) -> Iterator[list]:
    """Every container a test starts goes in this list and is removed afterwards, by id."""
    started: list = []
    yield started
    for c in started:
        try:
            c.remove(force=True)
        except Exception:  # noqa: BLE001 (already gone)
            continue


@pytest.mark.docker
def test_image_runs_its_own_suite_without_network(docker_client, image, containers) -> None:
    c = docker_client.containers.run(image, "pytest", detach=True, network_mode="none", **HARDENED)
    containers.append(c)
    status = c.wait(timeout=60)
    logs = c.logs().decode(errors="replace")
    assert status["StatusCode"] == 0, logs[-3000:]
    assert " passed" in logs and "failed" not in logs


@pytest.mark.docker
def test_image_ships_the_vulnerable_pin_and_runs_unprivileged(docker_client, image, containers) -> None:
    script = ("import os, jinja2; print(os.getuid(), jinja2.__version__);"
              "open('/tmp/ok', 'w').write('x');"
              "open('/app/nope', 'w')")
    c = docker_client.containers.run(image, ["python", "-c", script], detach=True, network_mode="none",
                                     **HARDENED)
    containers.append(c)
    status = c.wait(timeout=30)
    # The streams apart: docker copies stdout and stderr in separate goroutines, so their order in
    # a merged log is not the order they were written in.
    out = c.logs(stdout=True, stderr=False).decode(errors="replace")
    err = c.logs(stdout=False, stderr=True).decode(errors="replace")
    assert out.splitlines() == ["10001 3.1.2"], (out, err)
    assert status["StatusCode"] == 1 and "Read-only file system: '/app/nope'" in err


@pytest.mark.docker
def test_container_becomes_healthy_and_serves_the_api(docker_client, image, containers) -> None:
    c = docker_client.containers.run(
        image, detach=True, ports={"8000/tcp": ("127.0.0.1", None)},
        # Same HEALTHCHECK command as the image (inherited), polled faster.
        healthcheck={"interval": 500_000_000, "timeout": 3_000_000_000, "retries": 3},
        **HARDENED,
    )
    containers.append(c)
    deadline = time.monotonic() + 30
    health = None
    while time.monotonic() < deadline:
        c.reload()
        health = c.attrs["State"].get("Health", {}).get("Status")
        if health == "healthy" or c.status == "exited":
            break
        time.sleep(0.25)
    assert health == "healthy", c.logs().decode(errors="replace")[-2000:]
    port = c.attrs["NetworkSettings"]["Ports"]["8000/tcp"][0]["HostPort"]
    base = f"http://127.0.0.1:{port}"
    status, headers, body = get(f"{base}/health")
    assert status == 200 and json.loads(body) == {"status": "ok", "version": "1.0.0"}
    assert headers["server"].startswith("target-api/1.0.0")
    status, _, body = get(f"{base}/api/items?category=books")
    assert status == 200 and [i["id"] for i in json.loads(body)] == [1, 2, 3]
    assert "/api/items" in json.loads(get(f"{base}/openapi.json")[2])["paths"]


# --- the same service under uvicorn on loopback, with its pinned (vulnerable) dependencies ---------

@pytest.fixture(scope="module")
def local_target() -> Iterator[str]:
    with demo.local_server() as url:
        yield url


def test_local_server_uses_the_pinned_dependency_set(local_target: str) -> None:
    python = demo.ensure_venv()
    out = subprocess.run([str(python), "-c", "import jinja2, fastapi; print(jinja2.__version__)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "3.1.2"


def test_exploits_work_against_the_running_service(local_target: str) -> None:
    # V1: SQL injection, error-based and UNION-based
    status, _, body = get(f"{local_target}/api/items?category=books%27")
    assert status == 500 and "sqlite3.OperationalError" in body
    payload = urllib.parse.quote("' UNION SELECT id, username, email, 0, 0 FROM users--")
    status, _, body = get(f"{local_target}/api/items?category={payload}")
    assert status == 200 and "admin@example.com" in body
    # V2: no security headers, one detailed banner (uvicorn's own is off)
    status, headers, _ = get(f"{local_target}/")
    lower = {k.lower(): v for k, v in headers.items()}
    assert "x-frame-options" not in lower and "content-security-policy" not in lower
    assert "x-content-type-options" not in lower
    assert lower["server"] == "target-api/1.0.0 (uvicorn; CPython 3.11)"
    # V3: unauthenticated admin route
    status, _, body = get(f"{local_target}/admin/users")
    assert status == 200 and len(json.loads(body)) == 3
    # V4: CVE-2024-22195 in Jinja2 3.1.2: attribute injection through xmlattr keys
    status, _, body = get(f"{local_target}/api/items/1/embed?x%20onmouseover%3Dalert(1)%20y=1")
    assert status == 200
    assert 'data-x onmouseover=alert(1) y="1"' in body


def test_run_local_reports_a_crashing_service(tmp_path) -> None:
    (tmp_path / "demo_api").mkdir()
    (tmp_path / "demo_api" / "__main__.py").write_text("raise SystemExit('boom: bad config')\n")
    with pytest.raises(demo.DemoError, match=r"exited with code 1 before it was healthy.*boom: bad config"):
        demo.run_local(demo.free_port(), source_dir=tmp_path, log_path=tmp_path / "log")

"""Tasks of the `selfheal_doctor` DAG: each runs one real check from selfheal.doctor
and fails with a message that says what to fix."""

from __future__ import annotations

import os
import shutil
from typing import Any

from airflow.sdk import BaseHook, task
from airflow.sdk.exceptions import AirflowNotFoundException

from selfheal import doctor
from selfheal.hooks.triage import TriageDbHook
from selfheal.paths import PROJECT_ROOT
from selfheal.sandbox import DEFAULT_BASE_IMAGE

SCANNER_CONNECTIONS = ("zap_default", "gvm_default", "aws_default")

# The check the sandbox-isolation task runs inside the base image: with
# network_mode="none" the container must see only the loopback interface.
# It inspects interfaces instead of dialling out, so no packet ever leaves.
NETWORK_NONE_PROBE = (
    "import os, sys; n = sorted(os.listdir('/sys/class/net')); "
    "print('interfaces:', n); sys.exit(0 if n == ['lo'] else 3)"
)


def base_image_tag() -> str:
    """The same tag the DockerOperator task templates: the `selfheal_base_image` Variable."""
    from airflow.sdk import Variable

    return Variable.get("selfheal_base_image", default=DEFAULT_BASE_IMAGE)


@task
def triage_db() -> dict[str, Any]:
    return doctor.check_triage_db(TriageDbHook().get_url()).raise_if_failed().to_dict()


@task
def docker_engine() -> dict[str, Any]:
    import docker

    return doctor.check_docker(docker.from_env()).raise_if_failed().to_dict()


@task
def base_image() -> dict[str, Any]:
    import docker

    return doctor.check_base_image(docker.from_env(), base_image_tag()).raise_if_failed().to_dict()


@task
def haproxy() -> dict[str, Any]:
    return doctor.check_haproxy().raise_if_failed().to_dict()


def _check_connection(conn_id: str) -> dict[str, Any]:
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return {"name": conn_id, "ok": True, "detail": "not configured (scanner disabled)", "fix": ""}
    extra = conn.extra_dejson
    if conn_id == "gvm_default" and extra.get("socket_path"):
        result = doctor.check_unix_socket(conn_id, extra["socket_path"])
    elif conn_id == "aws_default":
        endpoint = extra.get("endpoint_url") or (extra.get("service_config", {}).get("inspector2", {}) or {}).get(
            "endpoint_url"
        )
        if not endpoint:
            return {"name": conn_id, "ok": True, "detail": "configured for AWS (endpoint not probed)", "fix": ""}
        result = doctor.check_http_endpoint(conn_id, endpoint)
    else:
        if not conn.host:
            return {"name": conn_id, "ok": False, "detail": "connection has no host",
                    "fix": f"set the host of the `{conn_id}` connection"}
        url = conn.host if "://" in conn.host else f"{conn.schema or 'http'}://{conn.host}:{conn.port or 80}"
        result = doctor.check_http_endpoint(conn_id, url)
    return result.raise_if_failed().to_dict()


@task
def scanner_connections() -> list[dict[str, Any]]:
    """Each configured scanner connection answers; unconfigured ones are reported, not failed."""
    results = [_check_connection(c) for c in SCANNER_CONNECTIONS]
    wapiti = shutil.which("wapiti") or str(PROJECT_ROOT / ".venv-wapiti" / "bin" / "wapiti")
    ok = os.access(wapiti, os.X_OK)
    results.append({
        "name": "wapiti", "ok": ok,
        "detail": f"{wapiti} {'present' if ok else 'missing'}",
        "fix": "" if ok else "run scripts/install-wapiti.sh",
    })
    failed = [r for r in results if not r["ok"]]
    if failed:
        raise doctor.CheckFailed("; ".join(f"{r['name']}: {r['detail']}. To fix: {r['fix']}" for r in failed))
    return results


@task
def summary(*results: Any) -> str:
    lines = []
    for r in results:
        for item in r if isinstance(r, list) else [r]:
            lines.append(f"{'OK ' if item['ok'] else 'FAIL'} {item['name']}: {item['detail']}")
    text = "\n".join(lines)
    print(text)
    return text

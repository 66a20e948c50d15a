"""`selfheal doctor`: the installation checks from a shell, without Airflow."""

from __future__ import annotations

import typer

from selfheal import doctor as checks
from selfheal.sandbox import DEFAULT_BASE_IMAGE


def doctor(
    db_url: str = typer.Option(None, "--db-url", envvar="SELFHEAL_DATABASE_URL", help="Triage database URL."),
    base_image: str = typer.Option(
        DEFAULT_BASE_IMAGE, "--base-image", envvar="SELFHEAL_BASE_IMAGE", help="Sandbox base image tag."
    ),
) -> None:
    """Run each check for real; exit 1 if any fails, printing what to fix."""
    import docker

    results = []
    if db_url:
        results.append(checks.check_triage_db(db_url))
    else:
        results.append(checks.CheckResult("triage_db", False, "no database URL given",
                                          "pass --db-url or set SELFHEAL_DATABASE_URL"))
    try:
        client = docker.from_env()
    except docker.errors.DockerException as e:
        results.append(checks.CheckResult("docker_engine", False, str(e), "start dockerd"))
    else:
        results.append(checks.check_docker(client))
        results.append(checks.check_base_image(client, base_image))
    results.append(checks.check_haproxy())
    for r in results:
        line = f"{'OK  ' if r.ok else 'FAIL'} {r.name}: {r.detail}"
        if not r.ok:
            line += f"\n     fix: {r.fix}"
        typer.echo(line)
    if not all(r.ok for r in results):
        raise typer.Exit(1)

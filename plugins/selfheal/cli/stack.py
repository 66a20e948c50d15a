"""`selfheal stack up|down|status|env`: the local demo stack (gateway, demo target, AWS stand-in).

Settings come from the environment `make up` uses: SELFHEAL_RUN_DIR,
SELFHEAL_DATABASE_URL, SELFHEAL_BASE_IMAGE, SELFHEAL_GATEWAY_PORT (18080),
SELFHEAL_GATEWAY_STATS_PORT (18404), SELFHEAL_MOTO_PORT (18500),
SELFHEAL_DOCKER_NETWORK (selfheal-rollout). Errors are one line on stderr and
a non-zero exit.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


def _config():
    from selfheal.stack import StackConfig, StackError

    try:
        return StackConfig.from_env()
    except StackError as e:
        _fail(str(e))


def _fail(message: str) -> None:
    typer.echo(f"selfheal stack: {message}", err=True)
    raise typer.Exit(1)


def _progress():
    from rich.console import Console

    console = Console(stderr=True, highlight=False)

    def line(step: str, detail: str, seconds: float) -> None:
        console.print(f"  [green]✓[/green] {step:<16} {seconds:6.1f}s  {detail}", soft_wrap=True)

    return line


@app.command()
def up() -> None:
    """Start (or keep) the gateway, the demo target behind it and the AWS stand-in; idempotent."""
    from selfheal.stack import StackError
    from selfheal.stack import up as stack_up

    cfg = _config()
    try:
        state = stack_up(cfg, _progress())
    except StackError as e:
        _fail(str(e))
        return
    typer.echo(f"stack {state['stack_id']} up: {cfg.front_door} -> {cfg.service} "
               f"{state['release']['version']} ({state['release']['color']}); state in {cfg.state_file}", err=True)


@app.command()
def down() -> None:
    """Stop what `selfheal stack up` started (by PID and container label), nothing else."""
    from selfheal.stack import StackError
    from selfheal.stack import down as stack_down

    cfg = _config()
    try:
        stack_down(cfg, _progress())
    except StackError as e:
        _fail(str(e))


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Processes, live traffic split and front-door health."""
    from selfheal.stack import status as stack_status

    st = stack_status(_config())
    if as_json:
        typer.echo(json.dumps(st, indent=2, default=str))
        return
    hp, aws = st["haproxy"], st["aws_standin"]
    typer.echo(f"gateway       {'running' if hp['running'] else 'stopped'} (pid {hp['pid']}) {st['front_door']}"
               f"{' health ' + str(st.get('front_door_health')) if hp['running'] else ''}")
    typer.echo(f"servers       {st.get('servers', '-')}")
    typer.echo(f"aws stand-in  {'running' if aws['running'] else 'stopped'} (pid {aws['pid']}) {aws['url'] or ''}")
    typer.echo(f"release       {st.get('release') or '-'}")


@app.command()
def env() -> None:
    """`export` lines for the shell that starts Airflow (settings file, run catalog, aws_default)."""
    from selfheal.stack import shell_exports

    typer.echo(shell_exports(_config().env()), nl=False)

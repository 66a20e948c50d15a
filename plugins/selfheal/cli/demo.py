"""`selfheal demo run`: the self-healing loop once, end to end, on a running `make up`.

Reads the same environment as `make up` (SELFHEAL_RUN_DIR, SELFHEAL_AIRFLOW_PORT,
AIRFLOW_HOME, SELFHEAL_DATABASE_URL, the stack's ports). Prints one line per
stage with its timing, then the summary; the summary's JSON path is printed.
"""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command()
def run(
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
) -> None:
    """Scan the demo target, follow triage -> virtual patch -> sandbox -> canary -> promotion, then a
    bad patch rolled back; print and save the summary."""
    import sys
    from dataclasses import replace

    from rich.console import Console

    from selfheal.demo_run import DemoConfig, DemoError, Progress, print_summary, run_demo
    from selfheal.stack import StackError

    # Piped output (e.g. `make up > log`) gets 120 columns instead of rich's default 80.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    try:
        cfg = DemoConfig.from_env()
        if timeout:
            cfg = replace(cfg, timeout_s=timeout)
        console.print(f"[bold]selfheal demo[/bold]: the loop on {cfg.stack.service} behind {cfg.stack.front_door}")
        summary, path = run_demo(cfg, Progress(console))
        print_summary(console, summary, path, cfg.password())
    except (DemoError, StackError) as e:
        typer.echo(f"selfheal demo: {e}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("selfheal demo: interrupted; selfheal keeps running (`make down` stops it)", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"demo summary written to {path}")

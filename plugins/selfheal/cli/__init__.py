"""The `selfheal` command. Each subcommand lives in its own module and is
registered here, so `selfheal --help` lists them all."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="selfheal",
    help="Self-healing API pipeline: parse scanner output, manage the triage DB, check the installation.",
    no_args_is_help=True,
    add_completion=False,
)


def _register() -> None:
    # Imported here so `selfheal --help` stays fast and one broken module names itself.
    from selfheal.cli import audit, db, demo, doctor, parse, stack

    app.command("parse", help="Parse scanner reports into normalized findings (JSON lines).")(parse.parse)
    app.add_typer(db.app, name="db", help="Triage database: migrate, show the URL in use.")
    app.command("doctor", help="Check every prerequisite and say what to fix.")(doctor.doctor)
    app.add_typer(audit.app, name="audit", help="Audit ledger: verify the hash chain.")
    app.add_typer(demo.app, name="demo", help="Run the self-healing loop once on `make up` and summarize it.")
    app.add_typer(stack.app, name="stack", help="Local demo stack: gateway, demo target behind it, AWS stand-in.")


_register()


def main() -> None:
    app()

"""`selfheal audit ...`: check the hash-chained audit ledger from a shell.

Registered in ``selfheal.cli`` as ``app.add_typer(audit.app, name="audit")``.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
import typer

app = typer.Typer(help="Audit ledger: verify the hash chain.", no_args_is_help=True, add_completion=False)


@app.callback()
def _group() -> None:
    """Audit ledger commands (a callback keeps `verify` a subcommand even while it is the only one)."""


def _anchor(value: str | None) -> tuple[int, str] | None:
    if not value:
        return None
    seq, sep, h = value.partition(":")
    if not sep or not seq.isdigit() or len(h) != 64:
        raise typer.BadParameter("expected SEQ:SHA256HEX, e.g. 1200:3f5a...", param_hint="--anchor")
    return int(seq), h.lower()


@app.command("verify")
def verify(
    url: str = typer.Option(
        None, "--url", envvar="SELFHEAL_DATABASE_URL", help="Database URL (default: the embedded SQLite)."
    ),
    anchor: str = typer.Option(
        None, "--anchor", help="SEQ:HASH of a head recorded earlier: catches cut-off newest entries."
    ),
    batch_size: int = typer.Option(1000, "--batch-size", min=1, help="Rows read per query."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Walk the whole chain; print OK with the count and head hash, or where it breaks (exit 1)."""
    from selfheal.audit.ledger import verify as verify_chain
    from selfheal.triage.db import database_url, masked

    resolved = database_url(url)
    try:
        result = verify_chain(resolved, batch_size=batch_size, anchor=_anchor(anchor))
    except sa.exc.SQLAlchemyError as e:
        hint = " (is it migrated? selfheal db upgrade)" if "audit_log" in str(e) else ""
        typer.echo(f"{masked(resolved)}: cannot read audit_log: {str(e).splitlines()[0]}{hint}", err=True)
        raise typer.Exit(2) from e
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ok": result.ok,
                    "count": result.count,
                    "head_seq": result.head_seq,
                    "head_hash": result.head_hash,
                    "seconds": round(result.seconds, 3),
                    "truncated": result.truncated,
                    "breaks": [b.__dict__ for b in result.breaks],
                }
            )
        )
    else:
        typer.echo(result.summary())
    if not result.ok:
        raise typer.Exit(1)

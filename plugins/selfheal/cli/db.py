"""`selfheal db ...`: migrate the triage database, show which one is in use, load threat intel.

The URL comes from ``--url``, else ``SELFHEAL_DATABASE_URL``, else the
embedded SQLite file (selfheal.triage.db). Errors are one line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)

UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="SQLAlchemy URL (default: $SELFHEAL_DATABASE_URL, else the embedded SQLite file)."),
]


def _fail(message: str) -> None:
    typer.echo(f"selfheal db: {message}", err=True)
    raise typer.Exit(1)


def _db_errors() -> tuple[type[BaseException], ...]:
    import sqlalchemy as sa

    return (sa.exc.SQLAlchemyError, OSError)


@app.command()
def upgrade(
    url: UrlOption = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Apply the schema migrations (idempotent: an up-to-date database is left alone)."""
    from selfheal.triage import migrate
    from selfheal.triage.db import database_url, masked

    target = database_url(url)
    try:
        before = migrate.current(target)
        after = migrate.upgrade(target, revision)
    except _db_errors() as exc:
        _fail(f"{masked(target)}: {' '.join(str(exc).split())[:300]}")
        return
    if before == after:
        typer.echo(f"{masked(target)}: already at {after}")
    else:
        typer.echo(f"{masked(target)}: {before or 'empty'} -> {after}")


@app.command()
def current(url: UrlOption = None) -> None:
    """Show the database in use and its schema revision."""
    from selfheal.triage import migrate
    from selfheal.triage.db import database_url, masked

    target = database_url(url)
    try:
        rev = migrate.current(target)
    except _db_errors() as exc:
        _fail(f"{masked(target)}: {' '.join(str(exc).split())[:300]}")
        return
    head = migrate.head()
    state = "up to date" if rev == head else f"behind (code is at {head}; run `selfheal db upgrade`)"
    typer.echo(f"{masked(target)}: revision {rev or 'none'} ({state})")


@app.command("load-kev")
def load_kev(
    source: Annotated[str, typer.Argument(help="File or http(s) URL of CISA's KEV JSON feed.")],
    url: UrlOption = None,
) -> None:
    """Load CISA's Known Exploited Vulnerabilities catalog."""
    _load("kev", source, url)


@app.command("load-epss")
def load_epss(
    source: Annotated[str, typer.Argument(help="File or http(s) URL: FIRST EPSS CSV (.csv or .csv.gz) or API JSON.")],
    url: UrlOption = None,
) -> None:
    """Load FIRST EPSS scores."""
    _load("epss", source, url)


def _load(kind: str, source: str, url: str | None) -> None:
    from selfheal.triage import intel
    from selfheal.triage.db import database_url, masked

    target = database_url(url)
    loader = intel.load_kev if kind == "kev" else intel.load_epss
    try:
        res = loader(target, source)
    except intel.IntelError as exc:
        _fail(str(exc))
        return
    except _db_errors() as exc:
        _fail(f"{masked(target)}: {' '.join(str(exc).split())[:300]}")
        return
    typer.echo(f"{source}: {res.loaded} {kind} entries read, {res.skipped} skipped, {res.changed} rows changed")

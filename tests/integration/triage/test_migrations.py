"""The Alembic chain on real databases: upgrade, models agree with migrations, downgrade, CLI."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from typer.testing import CliRunner

from selfheal.cli import app as cli
from selfheal.triage import migrate
from selfheal.triage.schema import metadata

OURS = set(metadata.tables)


def _diff(engine: sa.Engine) -> list:
    def include(obj, name, type_, reflected, compare_to) -> bool:
        table = obj if type_ == "table" else getattr(obj, "table", None)
        return (name if type_ == "table" else getattr(table, "name", None)) in OURS

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_object": include, "compare_type": True})
        return compare_metadata(ctx, metadata)


def test_upgrade_creates_the_schema_the_models_describe(engine: sa.Engine) -> None:
    assert migrate.current(engine) == migrate.head()
    assert set(sa.inspect(engine).get_table_names()) >= OURS
    assert _diff(engine) == []
    assert migrate.upgrade(engine) == migrate.head()  # idempotent


def test_raw_report_bodies_use_lz4_on_postgres(pg_url: str) -> None:
    migrate.upgrade(pg_url)
    eng = sa.create_engine(pg_url)
    with eng.connect() as c:
        comp = c.execute(
            sa.text(
                "SELECT attcompression FROM pg_attribute WHERE attrelid = 'raw_reports'::regclass AND attname = 'body'"
            )
        ).scalar_one()
    eng.dispose()
    assert comp == "l"


def test_downgrade_to_base_and_back(engine: sa.Engine) -> None:
    from alembic import command

    with engine.begin() as conn:
        cfg = migrate.alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert not OURS & set(sa.inspect(engine).get_table_names())
    assert migrate.upgrade(engine) == migrate.head()
    assert _diff(engine) == []


def test_cli_upgrade_and_current(pg_url: str, tmp_path: Path, monkeypatch) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["db", "current", "--url", pg_url])
    assert res.exit_code == 0 and "revision none" in res.output
    res = runner.invoke(cli, ["db", "upgrade", "--url", pg_url])
    assert res.exit_code == 0, res.output
    assert f"empty -> {migrate.head()}" in res.output
    res = runner.invoke(cli, ["db", "upgrade", "--url", pg_url])
    assert f"already at {migrate.head()}" in res.output
    # the URL can come from the environment; SQLite works the same way
    monkeypatch.setenv("SELFHEAL_DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    res = runner.invoke(cli, ["db", "current"])
    assert "up to date" in res.output and "x.db" in res.output


def test_cli_reports_an_unreachable_database_in_one_line() -> None:
    res = CliRunner().invoke(cli, ["db", "upgrade", "--url", "postgresql+psycopg://u:secret@127.0.0.1:1/x"])
    assert res.exit_code == 1
    assert "secret" not in res.output
    assert res.output.startswith("selfheal db: postgresql+psycopg://u:***@127.0.0.1:1/x:")
    assert res.output.count("\n") == 1

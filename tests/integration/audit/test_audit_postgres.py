"""The audit ledger on the real PostgreSQL cluster: migration, refusals, roles,
concurrent writers, superuser tampering located by verify, and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from typer.testing import CliRunner

from selfheal.audit import NewEntry, append, append_many, head, verify
from selfheal.triage.migrate import alembic_config, current

pytestmark = pytest.mark.postgres
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def engine(migrated_triage_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(migrated_triage_url)
    yield eng
    eng.dispose()


def _fill(engine: sa.Engine, n: int, start: int = 0) -> None:
    append_many(
        engine,
        [
            NewEntry(
                "pipeline",
                "detection",
                f"finding:{i}",
                {"i": i, "epss": i / 7, "big": 1e16 * i, "tiny": 1e-7, "text": "é\u2028\x01"},
            )
            for i in range(start, start + n)
        ],
    )


def _as_superuser_bypassing_trigger(engine: sa.Engine, *statements: str) -> None:
    """The attack verify exists for: a superuser switches the guard off, edits, switches it back on."""
    with engine.begin() as c:
        c.exec_driver_sql("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        for s in statements:
            c.exec_driver_sql(s)
        c.exec_driver_sql("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")


def test_migration_adds_one_revision_on_a_single_head(engine: sa.Engine) -> None:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1
    assert current(engine) == heads[0]
    with engine.connect() as c:
        cols = {
            r[0]: r[1]
            for r in c.exec_driver_sql(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'audit_log'"
            )
        }
    assert cols["payload"] == "json" and cols["seq"] == "bigint" and cols["ts"] == "timestamp with time zone"


def test_migration_matches_the_ledger_table_model(engine: sa.Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from selfheal.audit.ledger import metadata

    def only_audit_log(obj, name, type_, reflected, compare_to) -> bool:
        table = obj if type_ == "table" else getattr(obj, "table", None)
        return getattr(table, "name", name) == "audit_log"

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_object": only_audit_log, "compare_type": True})
        assert compare_metadata(ctx, metadata) == []


@pytest.mark.parametrize(
    "stmt",
    ["UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log WHERE seq = 1", "TRUNCATE audit_log"],
)
def test_even_the_owner_hits_the_trigger(engine: sa.Engine, stmt: str) -> None:
    _fill(engine, 2)
    with engine.connect() as c:
        owner = c.exec_driver_sql("SELECT tableowner FROM pg_tables WHERE tablename = 'audit_log'").scalar()
        me = c.exec_driver_sql("SELECT current_user").scalar()
    assert owner == me
    with pytest.raises(sa.exc.DBAPIError, match="audit_log is append-only") as exc, engine.begin() as c:
        c.exec_driver_sql(stmt)
    assert exc.value.orig.sqlstate == "42501"
    assert verify(engine).count == 2


@pytest.fixture
def pipeline_url(migrated_triage_url: str) -> Iterator[str]:
    """A login user that is a member of selfheal_pipeline, as the pipeline would connect."""
    user = f"t_pipe_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(migrated_triage_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE ROLE {user} LOGIN IN ROLE selfheal_pipeline")
    u = sa.make_url(migrated_triage_url).set(username=user)
    try:
        yield u.render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (user,)
            )
            c.exec_driver_sql(f"DROP ROLE {user}")
        admin.dispose()


def test_pipeline_role_may_only_insert_and_select(engine: sa.Engine, pipeline_url: str) -> None:
    _fill(engine, 1)
    pipe = sa.create_engine(pipeline_url)
    try:
        e = append(pipe, actor="pipeline", action="decision", subject="patch:1", payload={"decision": "auto"})
        assert e.seq == 2
        assert verify(pipe).ok
        for stmt in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied") as exc, pipe.begin() as c:
                c.exec_driver_sql(stmt)
            assert exc.value.orig.sqlstate == "42501"
        with pipe.connect() as c:
            assert c.exec_driver_sql("SELECT current_user").scalar() != "postgres"
    finally:
        pipe.dispose()
    assert verify(engine).count == 2


def test_modified_payload_is_located_after_superuser_tampering(engine: sa.Engine) -> None:
    _fill(engine, 50)
    before = head(engine)
    _as_superuser_bypassing_trigger(
        engine, 'UPDATE audit_log SET payload = \'{"i": 17, "epss": 0}\'::json WHERE seq = 17'
    )
    r = verify(engine, batch_size=7)
    assert not r.ok and [(b.kind, b.seq) for b in r.breaks] == [("modified", 17)]
    assert r.breaks[0].found != r.breaks[0].expected
    assert r.head_hash == before.hash  # the trigger is back: nothing else moved


def test_deleted_row_is_located_after_superuser_tampering(engine: sa.Engine) -> None:
    _fill(engine, 50)
    _as_superuser_bypassing_trigger(engine, "DELETE FROM audit_log WHERE seq = 23")
    r = verify(engine, batch_size=10)
    assert [(b.kind, b.seq) for b in r.breaks] == [("deleted", 23)]
    # The trigger is enabled again.
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as c:
        c.exec_driver_sql("DELETE FROM audit_log WHERE seq = 24")


def test_cli_prints_ok_or_the_break_and_exits_1(engine: sa.Engine, migrated_triage_url: str) -> None:
    from selfheal.cli.audit import app as audit_cli

    _fill(engine, 12)
    h = head(engine)
    runner = CliRunner()
    ok = runner.invoke(audit_cli, ["verify", "--url", migrated_triage_url])
    assert ok.exit_code == 0, ok.output
    assert ok.output.strip() == f"OK: 12 entries, head seq 12 hash {h.hash}"

    _as_superuser_bypassing_trigger(engine, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 5")
    bad = runner.invoke(audit_cli, ["verify", "--url", migrated_triage_url])
    assert bad.exit_code == 1
    assert "modified at seq 5" in bad.output

    as_json = runner.invoke(audit_cli, ["verify", "--url", migrated_triage_url, "--json"])
    assert as_json.exit_code == 1 and '"kind": "modified", "seq": 5' in as_json.output

    anchored = runner.invoke(audit_cli, ["verify", "--url", migrated_triage_url, "--anchor", "nonsense"])
    assert anchored.exit_code == 2 and "SEQ:SHA256HEX" in anchored.output


_WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {plugins!r})
    from selfheal.audit import append
    import sqlalchemy as sa
    engine = sa.create_engine({url!r})
    for i in range({n}):
        append(engine, actor="proc{w}", action="detection", payload={{"w": {w}, "i": i}})
    engine.dispose()
    """
)


def test_concurrent_processes_and_threads_never_fork_the_chain(
    engine: sa.Engine, migrated_triage_url: str
) -> None:
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WRITER.format(plugins=str(REPO / "plugins"), url=migrated_triage_url, n=100, w=w),
            ],
            env={**os.environ},
        )
        for w in range(2)
    ]
    errors: list[BaseException] = []

    def thread_writer(w: int) -> None:
        try:
            for i in range(50):
                append(engine, actor=f"thread{w}", action="decision", payload={"w": w, "i": i})
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=thread_writer, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert not errors
    r = verify(engine)
    assert r.ok and r.count == 300 and r.head_seq == 300
    with engine.connect() as c:
        per_actor = dict(c.exec_driver_sql("SELECT actor, count(*) FROM audit_log GROUP BY actor").all())
    assert per_actor == {"proc0": 100, "proc1": 100, "thread0": 50, "thread1": 50}


def test_verify_streams_in_bounded_memory(engine: sa.Engine) -> None:
    """2,000 rows of 7 kB: holding them all would take over 14 MB; verify keeps one batch."""
    filler = "x" * 7000
    append_many(
        engine, [NewEntry("bench", "detection", f"finding:{i}", {"i": i, "f": filler}) for i in range(2000)]
    )
    tracemalloc.start()
    try:
        r = verify(engine, batch_size=200)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.ok and r.count == 2000
    assert peak < 5 * 1024 * 1024, f"verify peaked at {peak / 1e6:.1f} MB"

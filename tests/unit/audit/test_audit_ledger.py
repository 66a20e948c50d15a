"""The ledger on the embedded SQLite backend: appends, refusals, and where verify says the chain breaks.

Uses a real SQLite file migrated by the real Alembic revisions. The
PostgreSQL behaviour (advisory lock, roles, superuser tampering) is in
tests/integration/audit.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from selfheal.audit import AuditError, NewEntry, append, append_many, entries, head, subject, verify
from selfheal.audit.canonical import entry_document, entry_hash
from selfheal.audit.redact import REDACTED
from selfheal.triage.db import make_engine
from selfheal.triage.migrate import upgrade


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    upgrade(url)
    eng = make_engine(url)
    yield eng
    eng.dispose()


def _fill(engine: sa.Engine, n: int) -> None:
    append_many(
        engine,
        [
            NewEntry("pipeline", "detection", subject("finding", i), {"i": i, "score": i / 10})
            for i in range(1, n + 1)
        ],
    )


def _tamper(engine: sa.Engine, *statements: str) -> None:
    """What someone with file access could do: drop the guards and edit rows."""
    with engine.begin() as c:
        c.exec_driver_sql("DROP TRIGGER IF EXISTS audit_log_no_update")
        c.exec_driver_sql("DROP TRIGGER IF EXISTS audit_log_no_delete")
        for s in statements:
            c.exec_driver_sql(s)


def _shift(from_seq: int, by: int) -> list[str]:
    """Renumber seq >= from_seq by ``by`` in two steps (seq is the primary key)."""
    return [
        f"UPDATE audit_log SET seq = seq + 1000000 WHERE seq >= {from_seq}",
        f"UPDATE audit_log SET seq = seq - 1000000 + ({by}) WHERE seq >= 1000000",
    ]


def _row(engine: sa.Engine, seq: int) -> dict:
    with engine.connect() as c:
        return dict(c.exec_driver_sql("SELECT * FROM audit_log WHERE seq = ?", (seq,)).mappings().one())


def test_empty_ledger_verifies(engine: sa.Engine) -> None:
    r = verify(engine)
    assert r.ok and r.count == 0 and r.head_seq is None
    assert r.summary().startswith("OK: 0 entries")


def test_appends_form_a_chain(engine: sa.Engine) -> None:
    first = append(engine, actor="scanner:zap", action="detection", subject="finding:1", payload={"cwe": 89})
    assert first.seq == 1 and first.prev_hash == "0" * 64
    _fill(engine, 5)
    h = head(engine)
    assert h is not None and h.seq == 6
    got = entries(engine, limit=10)
    assert [e.seq for e in got] == [1, 2, 3, 4, 5, 6]
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(got))
    # Each stored hash is the documented formula over the stored fields.
    e = got[2]
    doc = entry_document(
        seq=e.seq,
        ts=e.ts,
        actor=e.actor,
        action=e.action,
        subject=e.subject,
        payload=e.payload,
        idempotency_key=e.idempotency_key,
    )
    assert entry_hash(e.prev_hash, doc) == e.hash
    r = verify(engine, batch_size=2)
    assert r.ok and r.count == 6 and r.head_seq == 6 and r.head_hash == h.hash
    assert [x.seq for x in entries(engine, subject="finding:1")] == [1, 2]


def test_idempotency_key_records_once(engine: sa.Engine) -> None:
    a = append(
        engine, actor="dag", action="decision", payload={"d": "auto"}, idempotency_key="patch:7:decision"
    )
    b = append(
        engine, actor="dag", action="decision", payload={"d": "other"}, idempotency_key="patch:7:decision"
    )
    assert a == b and b.payload == {"d": "auto"}
    assert verify(engine).count == 1


def test_secrets_are_redacted_before_hashing_and_storage(engine: sa.Engine) -> None:
    e = append(
        engine,
        actor="dag",
        action="sandbox_result",
        payload={"db_url": "postgresql://app:hunter2@db/x", "env": {"API_KEY": "k-123"}, "ok": True},
    )
    stored = _row(engine, e.seq)
    assert "hunter2" not in stored["payload"] and "k-123" not in stored["payload"]
    assert json.loads(stored["payload"]) == {
        "db_url": f"postgresql://app:{REDACTED}@db/x",
        "env": {"API_KEY": REDACTED},
        "ok": True,
    }
    assert verify(engine).ok


def test_database_refuses_update_and_delete(engine: sa.Engine) -> None:
    _fill(engine, 2)
    for stmt in (
        "UPDATE audit_log SET actor = 'x' WHERE seq = 1",
        "DELETE FROM audit_log",
        "DELETE FROM audit_log WHERE seq = 2",
    ):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as c:
            c.exec_driver_sql(stmt)
    assert verify(engine).count == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"actor": "", "action": "decision"}, "actor"),
        ({"actor": "a", "action": "Bad Action"}, "action"),
        ({"actor": "a", "action": "decision", "payload": ["x"]}, "mapping"),
        (
            {
                "actor": "a",
                "action": "decision",
                "payload": {f"k{i}": "v" * 8000 for i in range(40)},
            },
            "limit",
        ),
        ({"actor": "a", "action": "decision", "subject": ""}, "subject"),
    ],
)
def test_bad_entries_are_refused_with_a_clear_error(engine: sa.Engine, kwargs: dict, message: str) -> None:
    with pytest.raises(AuditError, match=message):
        append(engine, **kwargs)
    assert verify(engine).count == 0


def test_entry_inside_a_rolled_back_transaction_is_not_recorded(engine: sa.Engine) -> None:
    _fill(engine, 1)
    with engine.connect() as conn, conn.begin() as tx:
        e = append(conn, actor="dag", action="traffic_change", payload={"weight": 5})
        assert e.seq == 2
        tx.rollback()
    assert verify(engine).count == 1
    with engine.begin() as conn:
        append(conn, actor="dag", action="traffic_change", payload={"weight": 5})
    assert verify(engine).count == 2


def test_concurrent_writers_take_turns_without_forking(engine: sa.Engine) -> None:
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(40):
                append(engine, actor=f"w{w}", action="detection", payload={"w": w, "i": i})
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    r = verify(engine)
    assert r.ok and r.count == 160 and r.head_seq == 160


# ------------------------------------------------------------- where verify says the chain breaks


def test_modified_payload_is_located(engine: sa.Engine) -> None:
    _fill(engine, 10)
    stored = _row(engine, 4)["hash"]
    _tamper(engine, 'UPDATE audit_log SET payload = \'{"i": 4, "score": 0.0}\' WHERE seq = 4')
    r = verify(engine)
    assert not r.ok and len(r.breaks) == 1
    b = r.first_break
    assert (b.kind, b.seq, b.found) == ("modified", 4, stored) and b.expected != stored
    assert "modified at seq 4" in r.summary()


def test_deleted_row_is_located(engine: sa.Engine) -> None:
    _fill(engine, 10)
    _tamper(engine, "DELETE FROM audit_log WHERE seq = 5")
    r = verify(engine)
    assert [(b.kind, b.seq) for b in r.breaks] == [("deleted", 5)]
    assert r.count == 9


def test_deleted_first_rows_are_located(engine: sa.Engine) -> None:
    _fill(engine, 5)
    _tamper(engine, "DELETE FROM audit_log WHERE seq <= 2")
    r = verify(engine)
    assert [(b.kind, b.seq) for b in r.breaks] == [("deleted", 1)]
    assert "1..2" in r.breaks[0].detail


def test_deleted_and_renumbered_is_located(engine: sa.Engine) -> None:
    _fill(engine, 10)
    _tamper(engine, "DELETE FROM audit_log WHERE seq = 5", *_shift(6, -1))
    r = verify(engine)
    assert [(b.kind, b.seq) for b in r.breaks] == [("deleted", 5)]


def test_swapped_rows_are_reported_as_reordered(engine: sa.Engine) -> None:
    _fill(engine, 10)
    _tamper(
        engine,
        "UPDATE audit_log SET seq = 1000003 WHERE seq = 3",
        "UPDATE audit_log SET seq = 3 WHERE seq = 7",
        "UPDATE audit_log SET seq = 7 WHERE seq = 1000003",
    )
    r = verify(engine)
    assert [(b.kind, b.seq) for b in r.breaks] == [("reordered", 3), ("reordered", 7)]
    assert "3 written as 7" in r.breaks[0].detail


def test_inserted_row_is_located(engine: sa.Engine) -> None:
    """A forged entry slipped in after seq 5 with a valid own hash; later rows renumbered to make room.

    prev_hash is unique, so the forgery cannot claim entry 5's hash as its
    predecessor while the real entry 6 still does: it links to a made-up hash.
    """
    _fill(engine, 10)
    five = _row(engine, 5)
    ts = entries(engine, after_seq=4, limit=1)[0].ts
    doc = entry_document(
        seq=6,
        ts=ts,
        actor="attacker",
        action="approval",
        subject="patch:9",
        payload={"approved": True},
        idempotency_key=None,
    )
    bogus_prev = "f" * 64
    _tamper(
        engine,
        *_shift(6, +1),
        "INSERT INTO audit_log (seq, ts, actor, action, subject, idempotency_key, payload, prev_hash, hash) "
        f"VALUES (6, '{five['ts']}', 'attacker', 'approval', 'patch:9', NULL, '{{\"approved\": true}}', "
        f"'{bogus_prev}', '{entry_hash(bogus_prev, doc)}')",
    )
    r = verify(engine)
    assert [(b.kind, b.seq) for b in r.breaks] == [("inserted", 6)]
    assert r.count == 11


def test_rewritten_row_with_recomputed_hash_is_located(engine: sa.Engine) -> None:
    _fill(engine, 10)
    e = entries(engine, after_seq=3, limit=1)[0]
    payload = {"i": 4, "score": 99}
    doc = entry_document(
        seq=4,
        ts=e.ts,
        actor=e.actor,
        action=e.action,
        subject=e.subject,
        payload=payload,
        idempotency_key=None,
    )
    new_hash = entry_hash(e.prev_hash, doc)
    _tamper(
        engine, f"UPDATE audit_log SET payload = '{json.dumps(payload)}', hash = '{new_hash}' WHERE seq = 4"
    )
    r = verify(engine)
    assert [(b.kind, b.seq) for b in r.breaks] == [("modified", 4)]
    assert r.breaks[0].expected == e.hash and r.breaks[0].found == new_hash
    assert "rewritten" in r.breaks[0].detail


def test_cut_tail_needs_an_anchor(engine: sa.Engine) -> None:
    _fill(engine, 10)
    anchor = (10, head(engine).hash)
    _tamper(engine, "DELETE FROM audit_log WHERE seq >= 9")
    assert verify(engine).ok  # a shorter valid chain is still a valid chain ...
    r = verify(engine, anchor=anchor)  # ... unless a head recorded earlier says otherwise
    assert [(b.kind, b.seq) for b in r.breaks] == [("deleted", 10)]


def test_max_breaks_bounds_the_report(engine: sa.Engine) -> None:
    _fill(engine, 30)
    _tamper(engine, "UPDATE audit_log SET actor = 'x'")
    r = verify(engine, max_breaks=5)
    assert not r.ok and len(r.breaks) == 5 and r.truncated
    assert [b.seq for b in r.breaks] == [1, 2, 3, 4, 5]

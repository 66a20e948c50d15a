"""Triage store behaviour on real databases (PostgreSQL COPY path, portable path, SQLite)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from triage_reports import SQLI, XSS, inspector_json, wapiti_json, zap_json

from selfheal.findings import parse_bytes
from selfheal.triage import store
from selfheal.triage.lifecycle import InvalidTransition
from selfheal.triage.schema import findings, observations, quarantine, raw_reports, scan_runs, status_changes

HOST = "shop.test"
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
SAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "scanner-samples"


def snapshot(db) -> list[dict]:
    with db.engine.connect() as c:
        return [dict(r._mapping) for r in c.execute(sa.select(findings).order_by(findings.c.fingerprint))]


def by_path(db) -> dict[tuple[str | None, str | None], dict]:
    return {(r["path_template"], r["param"]): r for r in snapshot(db)}


def count(db, table: sa.Table) -> int:
    with db.engine.connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def zap(*inst, stamp="t0", evidence="ev"):
    return zap_json(HOST, list(inst), stamp, evidence)


# --------------------------------------------------------------------------- idempotency


def test_same_report_twice_changes_nothing(db) -> None:
    report = zap((SQLI, "GET", "/items/1", "q"), (XSS, "GET", "/search", "term"), (SQLI, "POST", "/login", "user"))
    first = db.ingest((report, "zap-1.json"), now=T0)
    assert (first.parsed, first.unique, first.new) == (3, 3, 3)
    before = snapshot(db)
    before_obs = count(db, observations)
    before_runs = db.rows("SELECT * FROM scan_runs ORDER BY id")

    again = db.ingest((report, "zap-1.json"), now=T0 + timedelta(days=1))

    assert again.reports[0].status == "duplicate"
    assert (again.parsed, again.new, again.updated, again.duplicates) == (0, 0, 0, 1)
    assert again.scan_run_id is None  # no empty run left behind
    assert snapshot(db) == before  # first_seen, last_seen, status, content: all unchanged
    assert count(db, raw_reports) == 1
    assert count(db, observations) == before_obs
    assert db.rows("SELECT * FROM scan_runs ORDER BY id") == before_runs
    assert all(r["status"] == "new" and r["first_seen"] == T0 for r in before)


def test_retried_ingest_of_a_complete_scan_changes_nothing(db) -> None:
    """An Airflow retry after the commit: same run, same reports, complete again."""
    run = store.start_scan_run(db.engine, "zap", "shop", "api", started_at=T0)
    report = (zap((SQLI, "GET", "/a", "q"), (XSS, "GET", "/b", "x")), "zap.json")
    first = db.ingest(report, scan_run_id=run, complete_scope=True, now=T0)
    assert first.new == 2
    tables = {t: db.rows(f"SELECT * FROM {t} ORDER BY 1") for t in ("scan_runs", "findings", "observations")}
    again = db.ingest(report, scan_run_id=run, complete_scope=True, now=T0 + timedelta(minutes=5))
    assert again.reports[0].status == "duplicate" and again.scan_run_id == run
    assert {t: db.rows(f"SELECT * FROM {t} ORDER BY 1") for t in tables} == tables
    (row,) = db.rows("SELECT counts FROM scan_runs")
    counts = row.counts if isinstance(row.counts, dict) else __import__("json").loads(row.counts)
    assert counts["reports"] == 1 and counts["new"] == 2 and counts["findings"] == 2


def test_same_bytes_twice_in_one_batch(db) -> None:
    report = zap((SQLI, "GET", "/items/1", "q"))
    res = db.ingest((report, "a.json"), (report, "b.json"), now=T0)
    assert [o.status for o in res.reports] == ["ingested", "duplicate"]
    assert (res.parsed, res.new, count(db, raw_reports), count(db, observations)) == (1, 1, 1, 1)


def test_rescan_with_same_findings_rewrites_no_row(db) -> None:
    """New report bytes (another scan), same findings: nothing is inserted or updated."""
    inst = [(SQLI, "GET", f"/items/{i}/detail{i}", "q") for i in range(50)]
    db.ingest((zap(*inst, stamp="monday"), "zap-mon.json"), now=T0)
    before = snapshot(db)
    xmin = db.rows("SELECT id, xmin::text AS x FROM findings ORDER BY id") if db.name.startswith("postgres") else None

    res = db.ingest((zap(*inst, stamp="tuesday"), "zap-tue.json"), now=T0 + timedelta(minutes=30))

    assert (res.new, res.updated, res.unchanged, res.reports[0].status) == (0, 0, 50, "ingested")
    assert snapshot(db) == before
    if xmin is not None:  # not even a new tuple version: the upsert left the rows alone
        assert db.rows("SELECT id, xmin::text AS x FROM findings ORDER BY id") == xmin
    assert count(db, observations) == 100  # but each scan's sighting is recorded
    assert count(db, raw_reports) == 2


def test_last_seen_moves_once_older_than_the_resolution(db) -> None:
    report = (SQLI, "GET", "/items/1", "q")
    db.ingest((zap(report, stamp="a"), "a.json"), now=T0)
    res = db.ingest((zap(report, stamp="b"), "b.json"), now=T0 + timedelta(hours=2))
    (row,) = snapshot(db)
    assert res.updated == 1
    assert (row["first_seen"], row["last_seen"], row["status"]) == (T0, T0 + timedelta(hours=2), "new")


def test_owner_scanner_updates_content(db) -> None:
    db.ingest((zap((SQLI, "GET", "/items/1", "q"), evidence="old"), "a.json"), now=T0)
    res = db.ingest((zap((SQLI, "GET", "/items/1", "q"), stamp="2", evidence="new"), "b.json"), now=T0)
    (row,) = snapshot(db)
    assert (res.new, res.updated) == (0, 1)
    assert row["evidence"] == "new"
    assert row["first_seen"] == T0


# --------------------------------------------------------------------------- cross-scanner dedupe


@pytest.mark.parametrize("one_batch", [True, False])
def test_zap_and_wapiti_same_flaw_is_one_finding_with_two_sources(db, one_batch: bool) -> None:
    z = (zap((SQLI, "GET", "/items/17", "q"), (XSS, "GET", "/search", "term")), "zap.json")
    w = (wapiti_json(HOST, [(SQLI, "GET", "/items/42", "q")]), "wapiti.json")
    if one_batch:
        res = db.ingest(z, w, now=T0)
        assert (res.parsed, res.unique, res.new) == (3, 2, 2)
    else:
        db.ingest(z, now=T0)
        res = db.ingest(w, now=T0)
        assert (res.new, res.updated) == (0, 1)
    rows = by_path(db)
    sqli = rows[("/items/{id}", "q")]
    assert sqli["sources"] == ["wapiti", "zap"]
    assert sqli["rule_ids"] == ["wapiti:SQL Injection", "zap:40018"]
    assert sqli["scanner"] == "zap" and sqli["title"] == "SQL Injection"  # first reporter owns the content
    assert rows[("/search", "term")]["sources"] == ["zap"]
    assert count(db, findings) == 2


def test_non_owner_rescan_does_not_overwrite_content(db) -> None:
    db.ingest((zap((SQLI, "GET", "/items/1", "q"), evidence="zap evidence"), "z.json"), now=T0)
    db.ingest((wapiti_json(HOST, [(SQLI, "GET", "/items/1", "q")]), "w1.json"), now=T0)
    res = db.ingest((wapiti_json(HOST, [(SQLI, "GET", "/items/1", "q")], stamp="t1"), "w2.json"), now=T0)
    (row,) = snapshot(db)
    assert (res.updated, row["evidence"], row["sources"]) == (0, "zap evidence", ["wapiti", "zap"])


def test_chunking_does_not_change_the_result(db) -> None:
    """Chunks of 3 rows: duplicates span chunks, the first occurrence's content still wins."""
    reports = []
    for k in range(4):
        inst = [(SQLI, "GET", f"/r{i}/{k + 1}", "q") for i in range(5)]
        reports.append((zap(*inst, stamp=str(k), evidence=f"ev{k}"), f"z{k}.json"))
    reports.append((wapiti_json(HOST, [(SQLI, "GET", f"/r{i}/9", "q") for i in range(5)]), "w.json"))
    res = db.ingest(*reports, now=T0, chunk_rows=3)
    assert (res.parsed, res.unique, res.new) == (25, 5, 5)
    rows = snapshot(db)
    assert [r["evidence"] for r in rows] == ["ev0"] * 5
    assert all(r["sources"] == ["wapiti", "zap"] for r in rows)
    again = db.ingest(
        *[
            (
                zap(*[(SQLI, "GET", f"/r{i}/{k + 1}", "q") for i in range(5)], stamp=f"x{k}", evidence=f"ev{k}"),
                f"x{k}.json",
            )
            for k in range(4)
        ],
        now=T0,
        chunk_rows=3,
    )
    assert (again.new, again.updated) == (0, 0)
    assert snapshot(db) == rows


def test_a_source_a_later_chunk_sees_is_added_to_a_stored_row_once(db) -> None:
    """A re-scan whose duplicates span chunks: a later chunk's new source (Wapiti
    confirming ZAP) reaches rows that existed before the batch, once; nothing else moves."""
    inst = [(SQLI, "GET", f"/r{i}/1", "q") for i in range(4)]
    db.ingest((zap(*inst), "z.json"), now=T0)
    before = snapshot(db)
    res = db.ingest((zap(*inst, stamp="t1"), "z1.json"), (wapiti_json(HOST, inst), "w.json"), now=T0, chunk_rows=2)
    assert (res.new, res.updated, res.unique) == (0, 4, 4)
    after = snapshot(db)
    assert all(r["sources"] == ["wapiti", "zap"] for r in after)
    assert all(r["rule_ids"] == ["wapiti:SQL Injection", "zap:40018"] for r in after)
    merged = {"sources", "rule_ids"}
    assert [{k: v for k, v in r.items() if k not in merged} for r in after] == [
        {k: v for k, v in r.items() if k not in merged} for r in before
    ]
    again = db.ingest(
        (zap(*inst, stamp="t2"), "z2.json"), (wapiti_json(HOST, inst, stamp="t2"), "w2.json"), now=T0, chunk_rows=2
    )
    assert (again.new, again.updated) == (0, 0)
    assert snapshot(db) == after


def test_parallel_parsing_gives_the_same_table(db) -> None:
    reports = [
        (zap(*[(SQLI, "GET", f"/p{k}/x{i}", "q") for i in range(30)], stamp=str(k)), f"z{k}.json") for k in range(6)
    ]
    reports += [(inspector_json([(f"CVE-2024-{1000 + i}", f"pkg{i}", "1.0") for i in range(20)]), "i.json")]
    res = db.ingest(*reports, now=T0, workers=2)
    assert (res.parsed, res.new, res.quarantined) == (200, 200, 0)
    kinds = {r["kind"] for r in snapshot(db)}
    assert kinds == {"web", "dependency"}


# --------------------------------------------------------------------------- lifecycle through scans


def _scan(db, scope: str, *inst, complete: bool = True, now=T0, stamp: str = "s"):
    run = store.start_scan_run(db.engine, "zap", "shop", scope, started_at=now)
    res = db.ingest(
        (zap(*inst, stamp=stamp), f"{scope}-{stamp}.json"), scan_run_id=run, complete_scope=complete, now=now
    )
    return run, res


def test_complete_scan_resolves_what_it_no_longer_sees_and_a_new_sighting_reopens(db) -> None:
    a, b = (SQLI, "GET", "/a", "q"), (SQLI, "GET", "/b", "q")
    _scan(db, "api", a, b, stamp="1")
    _, r2 = _scan(db, "api", a, stamp="2", now=T0 + timedelta(days=1))
    assert r2.resolved == 1
    rows = by_path(db)
    assert rows[("/a", "q")]["status"] == "new"
    assert rows[("/b", "q")]["status"] == "resolved"
    assert rows[("/b", "q")]["resolved_at"] == T0 + timedelta(days=1)
    run3, r3 = _scan(db, "api", a, b, stamp="3", now=T0 + timedelta(days=2))
    assert (r3.reopened, r3.resolved) == (1, 0)
    b_row = by_path(db)[("/b", "q")]
    assert (b_row["status"], b_row["resolved_at"]) == ("reopened", None)
    with db.engine.connect() as c:
        hist = c.execute(
            sa.select(
                status_changes.c.from_status,
                status_changes.c.to_status,
                status_changes.c.actor,
                status_changes.c.scan_run_id,
            )
            .where(status_changes.c.finding_id == b_row["id"])
            .order_by(status_changes.c.id)
        ).all()
    assert [tuple(h)[:3] for h in hist] == [
        ("new", "resolved", "selfheal:scan"),
        ("resolved", "reopened", "selfheal:ingest"),
    ]
    assert hist[1].scan_run_id == run3
    with db.engine.connect() as c:
        run = c.execute(sa.select(scan_runs).where(scan_runs.c.id == run3)).one()
    assert run.complete and run.status == "succeeded" and run.counts["reopened"] == 1


def test_incomplete_scan_and_other_scopes_resolve_nothing(db) -> None:
    a, b = (SQLI, "GET", "/a", "q"), (SQLI, "GET", "/b", "q")
    _scan(db, "api", a, b, stamp="1")
    _scan(db, "admin", (XSS, "GET", "/admin", "x"), stamp="1")
    _, partial = _scan(db, "api", a, complete=False, stamp="2")
    assert partial.resolved == 0
    _, other = _scan(db, "admin", (XSS, "GET", "/admin", "x"), stamp="3")
    assert other.resolved == 0
    assert {r["status"] for r in snapshot(db)} == {"new"}


def test_human_decisions_survive_a_complete_scan(db) -> None:
    a, b = (SQLI, "GET", "/a", "q"), (SQLI, "GET", "/b", "q")
    _scan(db, "api", a, b, stamp="1")
    b_id = by_path(db)[("/b", "q")]["id"]
    assert store.set_status(db.engine, b_id, "false_positive", "alice", "parameter is not used")
    _, res = _scan(db, "api", a, stamp="2")
    assert res.resolved == 0
    assert by_path(db)[("/b", "q")]["status"] == "false_positive"


# --------------------------------------------------------------------------- bad input


def test_quarantine_keeps_the_good_reports_of_the_batch(db) -> None:
    good_zap = zap((SQLI, "GET", "/items/1", "q"))
    truncated = good_zap[: len(good_zap) // 2]
    good_wapiti = wapiti_json(HOST, [(XSS, "GET", "/search", "term")])
    not_a_report = b'{"hello": "world"}'
    res = db.ingest(
        (good_zap, "zap.json"),
        (truncated, "cut.json"),
        (good_wapiti, "wapiti.json"),
        (not_a_report, "hello.json"),
        now=T0,
    )
    assert [o.status for o in res.reports] == ["ingested", "quarantined", "ingested", "quarantined"]
    assert (res.quarantined, res.new) == (2, 2)
    assert count(db, findings) == 2
    with db.engine.connect() as c:
        q = {r.source: r for r in c.execute(sa.select(quarantine))}
    assert set(q) == {"cut.json", "hello.json"}
    assert q["cut.json"].body == truncated and q["cut.json"].size == len(truncated)
    assert q["cut.json"].error.startswith("cut.json: ") and "\n" not in q["cut.json"].error
    # the same bad bytes again: recognized, not stored twice
    again = db.ingest((truncated, "cut-again.json"), now=T0)
    assert again.reports[0].status == "duplicate"
    assert count(db, quarantine) == 2


def test_parser_bug_quarantines_only_that_report(db) -> None:
    def parser(data: bytes, source: str, fmt: str = "auto", service: str | None = None):
        if b"boom" in data:
            raise KeyError("boom")
        return parse_bytes(data, source, fmt, service)

    res = db.ingest((b'{"boom": 1}', "bad.json"), (zap((SQLI, "GET", "/a", "q")), "z.json"), parser=parser)
    assert [o.status for o in res.reports] == ["quarantined", "ingested"]
    assert "internal parser error (KeyError" in res.reports[0].error


def test_real_scanner_samples(db) -> None:
    """Every real sample goes in one batch; the one that is not a findings document is quarantined."""
    files = sorted(p for p in SAMPLES.rglob("*") if p.suffix in (".xml", ".json", ".sarif"))
    assert len(files) >= 15
    expected = {}
    for p in files:
        try:
            expected[p.name] = len(parse_bytes(p.read_bytes(), p.name, service="shop"))
        except Exception:  # noqa: BLE001 - the sample that must be rejected
            expected[p.name] = None
    res = db.ingest(*[store.ReportIn(p.read_bytes(), p.name) for p in files], now=T0)
    got = {o.source: (o.findings if o.status == "ingested" else None) for o in res.reports}
    assert got == expected
    assert got["empty_with_error.json"] is None
    assert res.parsed == sum(v for v in expected.values() if v)
    assert count(db, findings) == res.unique
    assert {r["kind"] for r in snapshot(db)} == {"web", "dependency", "host", "code"}
    again = db.ingest(*[store.ReportIn(p.read_bytes(), p.name) for p in files], now=T0)
    assert again.duplicates == len(files) and again.parsed == 0


# --------------------------------------------------------------------------- set_status


def test_set_status_follows_the_lifecycle(db) -> None:
    db.ingest((zap((SQLI, "GET", "/a", "q")), "z.json"), now=T0)
    fid = snapshot(db)[0]["id"]
    t = T0 + timedelta(hours=1)
    for status in ("open", "mitigated", "patching", "resolved"):
        assert store.set_status(db.engine, fid, status, "selfheal:test", f"to {status}", now=t)
    row = snapshot(db)[0]
    assert (row["status"], row["mitigated_at"], row["resolved_at"], row["status_changed_at"]) == ("resolved", t, t, t)
    assert store.set_status(db.engine, fid, "resolved", "bob") is False  # no-op, no history row
    with pytest.raises(InvalidTransition, match=f"finding {fid}: cannot go from 'resolved' to 'open'"):
        store.set_status(db.engine, fid, "open", "bob")
    with pytest.raises(InvalidTransition, match="unknown status 'done'"):
        store.set_status(db.engine, fid, "done", "bob")
    with pytest.raises(LookupError, match="finding 999999"):
        store.set_status(db.engine, 999999, "open", "bob")
    with pytest.raises(ValueError, match="actor"):
        store.set_status(db.engine, fid, "reopened", "")
    assert snapshot(db)[0]["status"] == "resolved"
    with db.engine.connect() as c:
        hist = c.execute(
            sa.select(status_changes.c.from_status, status_changes.c.to_status, status_changes.c.actor).order_by(
                status_changes.c.id
            )
        ).all()
    assert [tuple(h) for h in hist] == [
        ("new", "open", "selfheal:test"),
        ("open", "mitigated", "selfheal:test"),
        ("mitigated", "patching", "selfheal:test"),
        ("patching", "resolved", "selfheal:test"),
    ]


def test_ingest_findings_keeps_a_raw_copy(db) -> None:
    found = parse_bytes(inspector_json([("CVE-2024-1234", "django", "3.2")]), "i.json", service="shop")
    res = store.ingest_findings(db.engine, found, source="inspector-api", bulk=db.bulk, now=T0)
    assert (res.new, res.reports[0].status) == (1, "ingested")
    with db.engine.connect() as c:
        raw = c.execute(sa.select(raw_reports)).one()
    assert raw.format == "findings" and b"CVE-2024-1234" in raw.body
    row = snapshot(db)[0]
    assert (row["package_name"], row["fixed_version"], row["cves"], row["epss"]) == (
        "django",
        "9.9.9",
        ["CVE-2024-1234"],
        0.0005,
    )


def test_hostile_text_survives_the_copy_path(db) -> None:
    evil = "tab\there\nnew\\line\r\\N \\. é 😀 \u2028 <script>alert(1)</script> \x00nul"
    report = zap((SQLI, "GET", "/a", "p\tq\\"), evidence=evil)
    (parsed,) = parse_bytes(report, "z.json", service="shop")
    db.ingest((report, "z.json"), now=T0)
    (row,) = snapshot(db)
    assert row["evidence"] == parsed.evidence
    assert row["param"] == "p\tq\\"
    assert "\x00" not in row["evidence"] and "nul" in row["evidence"]


# --------------------------------------------------------------------------- the PostgreSQL write path


def test_an_optimistic_chunk_that_meets_a_stored_finding_is_classified(copy_db, monkeypatch) -> None:
    """A chunk whose sample is not stored is inserted without step 1; a stored
    finding the sample missed makes that fail, and the chunk is classified."""
    db = copy_db
    a, b, c = (SQLI, "GET", "/a", "q"), (SQLI, "GET", "/b", "q"), (SQLI, "GET", "/c", "q")
    db.ingest((zap(a, stamp="1"), "1.json"), now=T0)
    monkeypatch.setattr(store, "OPTIMISM_SAMPLE", 1)  # probes only /b, the first of the chunk
    attempts: list[bool] = []
    work = store._PgSink._work

    def spy(self, cur, fallback):
        out = work(self, cur, fallback)
        if not fallback:
            attempts.append(out is not None)
        return out

    monkeypatch.setattr(store._PgSink, "_work", spy)
    res = db.ingest((zap(b, a, c, stamp="2"), "2.json"), now=T0 + timedelta(minutes=5))
    assert attempts == [False]  # tried, and rolled back
    assert (res.new, res.updated, res.unchanged) == (2, 0, 1)
    assert sorted(res.new_ids) == sorted(r["id"] for r in snapshot(db) if r["path_template"] in ("/b", "/c"))
    rows = by_path(db)
    assert rows[("/a", "q")]["first_seen"] == T0 and rows[("/b", "q")]["first_seen"] == T0 + timedelta(minutes=5)
    assert db.scalar("SELECT count(*) FROM observations WHERE scan_run_id = :r", r=res.scan_run_id) == 3
    # and the next batch of new findings is inserted optimistically again only if its sample says so
    attempts.clear()
    res = db.ingest((zap((SQLI, "GET", "/d", "q"), stamp="3"), "3.json"), now=T0 + timedelta(minutes=6))
    assert attempts == [True] and res.new == 1


def test_a_finding_stored_between_the_two_steps_takes_the_robust_statement(copy_db, monkeypatch) -> None:
    """Step 1 saw no /a (as if a concurrent ingest committed it just after): the
    plain INSERT of step 2 fails and the chunk is redone with INSERT ... ON CONFLICT."""
    db = copy_db
    a, b = (SQLI, "GET", "/a", "q"), (SQLI, "GET", "/b", "q")
    db.ingest((zap(a, stamp="1"), "1.json"), now=T0)
    before = by_path(db)[("/a", "q")]
    monkeypatch.setattr(store._PgSink, "_none_stored", lambda self, cur, batch: False)
    classify = store._PgSink._classify

    def blind(self, cur, batch):
        work = classify(self, cur, batch)
        missed = next(fp for fp in batch if fp == before["fingerprint"])
        return [*work, (missed, None)]

    monkeypatch.setattr(store._PgSink, "_classify", blind)
    res = db.ingest((zap(a, b, stamp="2"), "2.json"), now=T0 + timedelta(minutes=5))
    assert (res.new, res.updated, res.unchanged) == (1, 0, 1)
    assert by_path(db)[("/a", "q")] == before  # not rewritten
    assert count(db, findings) == 2
    assert db.scalar("SELECT count(*) FROM observations WHERE scan_run_id = :r", r=res.scan_run_id) == 2


def test_new_and_reopened_ids_are_reported(db) -> None:
    a, b = (SQLI, "GET", "/a", "q"), (SQLI, "GET", "/b", "q")
    _, first = _scan(db, "api", a, b, stamp="1")
    assert sorted(first.new_ids) == sorted(r["id"] for r in snapshot(db)) and first.reopened_ids == []
    _scan(db, "api", a, stamp="2", now=T0 + timedelta(days=1))  # resolves /b
    _, third = _scan(db, "api", a, b, stamp="3", now=T0 + timedelta(days=2))
    assert third.new_ids == [] and third.reopened_ids == [by_path(db)[("/b", "q")]["id"]]


def test_report_bytes_are_stored_in_batches_in_order(db) -> None:
    """More reports than one raw-report statement takes, repeats within and across those statements."""
    reports = [(zap((SQLI, "GET", f"/r{i}", "q"), stamp=str(i)), f"z{i}.json") for i in range(store.RAW_BATCH + 8)]
    batch = [*reports, reports[5], reports[-1], (reports[-1][0], "again.json")]
    res = db.ingest(*batch, now=T0)
    assert [o.status for o in res.reports] == ["ingested"] * len(reports) + ["duplicate"] * 3
    assert [o.source for o in res.reports] == [name for _, name in batch]
    assert (res.parsed, res.new) == (len(reports), len(reports))
    with db.engine.connect() as c:
        stored = {r.source: r for r in c.execute(sa.select(raw_reports))}
    assert set(stored) == {name for _, name in reports}
    assert all(stored[name].body == data and stored[name].findings == 1 for data, name in reports)
    assert [o.raw_report_id for o in res.reports[: len(reports)]] == [stored[n].id for _, n in reports]


def test_pages_of_one_run_that_repeat_a_finding_observe_it_once(db) -> None:
    """A run passed in (the Inspector sync ingests page by page into one run) may
    already have observed a finding: a later page that repeats it adds nothing."""
    run = store.start_scan_run(db.engine, "zap", "shop", "api", started_at=T0)
    a, b = (SQLI, "GET", "/a", "q"), (SQLI, "GET", "/b", "q")
    first = db.ingest((zap(a, stamp="p1"), "p1.json"), scan_run_id=run, now=T0)
    second = db.ingest((zap(a, b, stamp="p2"), "p2.json"), scan_run_id=run, now=T0 + timedelta(minutes=1))
    third = db.ingest((zap(b, a, stamp="p3"), "p3.json"), scan_run_id=run, now=T0 + timedelta(minutes=2))
    assert (first.new, second.new, second.unchanged, third.new, third.unchanged) == (1, 1, 1, 0, 2)
    assert db.scalar("SELECT count(*) FROM observations WHERE scan_run_id = :r", r=run) == 2

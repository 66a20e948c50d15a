"""The queries behind the Self-Healing page, on PostgreSQL and on SQLite, against a seeded history.

Expected values come from independent oracles: a plain Python replay of the
rows (status changes, timestamps), not from the SQL under test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from web_seed import XSS_EVIDENCE, XSS_TITLE

from selfheal.findings.model import SEVERITIES
from selfheal.triage.lifecycle import ACTIVE
from selfheal.triage.schema import findings as F
from selfheal.triage.schema import status_changes
from selfheal.web import queries
from selfheal.web.queries import QueryError, QueueFilter

pytestmark = pytest.mark.postgres


def _all_findings(conn: sa.Connection) -> list[sa.Row]:
    return conn.execute(sa.select(F)).all()


def test_queue_pages_cover_every_match_once_in_order(web_db) -> None:
    with web_db.engine.connect() as conn:
        filt = QueueFilter(status=tuple(sorted(ACTIVE)))
        first = queries.triage_queue(conn, filt, sort="priority", order="desc", limit=40, offset=0)
        expected = {r.id for r in _all_findings(conn) if r.status in ACTIVE}
        assert first["total"] == len(expected) > 80
        seen: list[dict] = []
        for offset in range(0, first["total"], 40):
            page = queries.triage_queue(conn, filt, sort="priority", order="desc", limit=40, offset=offset)
            assert page["total"] == first["total"] and page["offset"] == offset
            seen += page["items"]
    assert [f["id"] for f in seen] == list(dict.fromkeys(f["id"] for f in seen)), "a finding on two pages"
    assert {f["id"] for f in seen} == expected
    prios = [f["priority"] for f in seen]
    scored = [p for p in prios if p is not None]
    assert scored == sorted(scored, reverse=True)
    assert prios[: len(scored)] == scored, "NULL priorities must come last"


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_queue_sorts_by_severity_rank_not_alphabet(web_db, order: str) -> None:
    with web_db.engine.connect() as conn:
        items = queries.triage_queue(conn, sort="severity", order=order, limit=500)["items"]
    ranks = [SEVERITIES.index(f["severity"]) for f in items]  # 0 = critical
    assert ranks == sorted(ranks, reverse=(order == "asc"))
    if order == "desc":
        assert items[0]["severity"] == "critical"


def test_queue_filters_combine(web_db) -> None:
    with web_db.engine.connect() as conn:
        rows = _all_findings(conn)
        page = queries.triage_queue(
            conn,
            QueueFilter(service=("orders",), severity=("high", "critical"), status=("new", "patching")),
            limit=500,
        )
        want = {
            r.id
            for r in rows
            if r.service == "orders"
            and r.severity in ("high", "critical")
            and r.status in ("new", "patching")
        }
        assert page["total"] == len(want) > 0
        assert {f["id"] for f in page["items"]} == want
        ssvc = queries.triage_queue(conn, QueueFilter(ssvc=("Attend",)), limit=500)
        assert ssvc["total"] == sum(1 for r in rows if r.ssvc_decision == "Attend") >= 1
        assert all(f["ssvc_decision"] == "Attend" for f in ssvc["items"])


def test_text_search_is_literal(web_db) -> None:
    with web_db.engine.connect() as conn:
        hit = queries.triage_queue(conn, QueueFilter(q="onerror="), limit=10)
        assert [f["title"] for f in hit["items"]] == [XSS_TITLE]
        rows = _all_findings(conn)
        # LIKE wildcards typed by a user are text, not patterns: same answer as a substring test
        for q in ("%", "_", "go/std"):
            want = {
                r.id
                for r in rows
                if any(
                    q in (v or "").lower()
                    for v in (r.title, r.rule_id, r.path_template, r.url, r.package_name, r.host)
                )
            }
            got = queries.triage_queue(conn, QueueFilter(q=q), limit=500)
            assert {f["id"] for f in got["items"]} == want and got["total"] < len(rows)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sort": "evidence"}, "unknown sort key"),
        ({"order": "sideways"}, "order must be"),
        ({"limit": 0}, "limit must be"),
        ({"limit": 501}, "limit must be"),
        ({"offset": -1}, "offset"),
    ],
)
def test_queue_rejects_bad_paging(web_db, kwargs: dict, message: str) -> None:
    with web_db.engine.connect() as conn, pytest.raises(QueryError, match=message):
        queries.triage_queue(conn, **kwargs)


def test_finding_history_of_the_mitigated_then_resolved_sqli(web_db) -> None:
    s = web_db.seeded
    with web_db.engine.connect() as conn:
        d = queries.finding_detail(conn, s.sqli_id)
    f = d["finding"]
    assert f["status"] == "resolved" and f["cwe"] == 89
    assert [(c["from_status"], c["to_status"]) for c in d["status_changes"]] == [
        ("new", "mitigated"),
        ("mitigated", "patching"),
        ("patching", "resolved"),
    ]
    # exposure ends at the virtual patch, two seconds after the finding was first seen
    assert f["exposure_end"] == f["mitigated_at"]
    assert f["exposure_seconds"] == pytest.approx(2.0)
    assert [x["scanner"] for x in d["sources"]] == ["zap"] and d["sources"][0]["observations"] == 1
    assert d["observations"]["total"] == 1 and d["observations"]["items"][0]["run_status"] == "succeeded"
    assert [r["source"] for r in d["reports"]] == ["handmade/zap_traditional.json"]
    assert [p["id"] for p in d["patches"]] == [s.patch_ids["promoted"]]
    p = d["patches"][0]
    assert (
        p["state"] == "promoted" and p["sandbox"]["passed"] is True and p["rollout"]["outcome"] == "promoted"
    )
    assert [c["name"] for c in p["sandbox"]["checks"]] == ["tests", "exploit_replay", "rescan", "latency"]
    assert "output" not in p["sandbox"]["checks"][0], "summaries leave check outputs out"
    assert len(d["virtual_patches"]) == 1 and d["virtual_patches"][0]["action"] == "block_injection"
    actions = [(a["subject"], a["action"]) for a in d["audit"]]
    assert (f"finding:{s.sqli_id}", "finding_status") in actions
    assert (f"patch:{s.patch_ids['promoted']}", "promotion") in actions
    assert [a["seq"] for a in d["audit"]] == sorted(a["seq"] for a in d["audit"])


def test_finding_detail_returns_attacker_text_verbatim_and_none_for_unknown(web_db) -> None:
    with web_db.engine.connect() as conn:
        d = queries.finding_detail(conn, web_db.seeded.xss_id)
        assert queries.finding_detail(conn, 10**9) is None
    assert d["finding"]["evidence"] == XSS_EVIDENCE and d["finding"]["title"] == XSS_TITLE
    assert [p["state"] for p in d["patches"]] == ["planned"]


def test_patch_list_and_detail(web_db) -> None:
    ids = web_db.seeded.patch_ids
    with web_db.engine.connect() as conn:
        page = queries.list_patches(conn, limit=2)
        assert page["total"] == 4 and len(page["items"]) == 2
        rb = queries.list_patches(conn, state=["rolled_back"])
        assert [p["id"] for p in rb["items"]] == [ids["rolled_back"]]
        r = rb["items"][0]["rollout"]
        assert (
            r["strategy"] == "canary"
            and r["outcome"] == "rolled_back"
            and r["duration_s"] == pytest.approx(95)
        )
        assert r["traffic_back_at"] is not None and "error rate" in r["reason"]
        failed = queries.patch_detail(conn, ids["failed"])
        assert failed["sandbox"]["failed_check"] == "exploit_replay" and failed["rollout"] is None
        assert failed["sandbox"]["checks"][1]["output"].startswith("exploit_replay output")
        detail = queries.patch_detail(conn, ids["rolled_back"])
        assert [e["kind"] for e in detail["events"]] == ["traffic", "verdict", "verdict", "rollback"]
        assert [a["action"] for a in detail["audit"]] == ["sandbox_result", "rollback"]
        assert "diff" in detail["plan"] and detail["plan"]["diff"].startswith("--- a/app.py")
        assert queries.patch_detail(conn, "nope") is None
        with pytest.raises(QueryError, match="unknown patch state"):
            queries.list_patches(conn, state=["exploded"])


def _replay_open(conn: sa.Connection, t: datetime) -> int:
    """Oracle: each finding's status at ``t`` by replaying its status changes in Python."""
    status = {r.id: "new" for r in conn.execute(sa.select(F.c.id, F.c.first_seen)) if r.first_seen <= t}
    for c in conn.execute(
        sa.select(status_changes).order_by(status_changes.c.changed_at, status_changes.c.id)
    ):
        if c.changed_at <= t and c.finding_id in status:
            status[c.finding_id] = c.to_status
    return sum(1 for s in status.values() if s in ACTIVE)


@pytest.mark.parametrize("aligned", [True, False])
def test_open_series_matches_a_replay_of_status_changes(web_db, aligned: bool) -> None:
    now = web_db.seeded.now
    # aligned: edges fall exactly on seeded event times (a day apart); else halfway between
    start = now - timedelta(days=21) + (timedelta(0) if aligned else timedelta(hours=12, seconds=1))
    end = now + (timedelta(0) if aligned else timedelta(hours=1))
    points = 22
    with web_db.engine.connect() as conn:
        series = queries.open_series(conn, start, end, points)
        expected = [_replay_open(conn, t) for t in series["t"]]
        resolved = conn.execute(
            sa.select(sa.func.count())
            .select_from(status_changes)
            .where(
                status_changes.c.to_status == "resolved",
                status_changes.c.changed_at > start,
                status_changes.c.changed_at <= end,
            )
        ).scalar_one()
    assert series["open"] == expected
    assert max(expected) > 100 and expected[0] == 0
    assert sum(series["resolved"]) == resolved == len(web_db.seeded.resolved_ids)
    assert sum(series["new"]) == web_db.seeded.findings


def test_series_rejects_bad_ranges(web_db) -> None:
    now = datetime.now(UTC)
    with web_db.engine.connect() as conn:
        with pytest.raises(QueryError, match="after its start"):
            queries.open_series(conn, now, now - timedelta(days=1), 10)
        with pytest.raises(QueryError, match="points"):
            queries.open_series(conn, now - timedelta(days=1), now, 1)


def test_exposure_windows_and_their_statistics(web_db) -> None:
    s = web_db.seeded
    start, end = s.now - timedelta(days=30), s.now
    with web_db.engine.connect() as conn:
        data = queries.exposure_windows(conn, start, end, limit=500, now=s.now)
        rows = [r for r in _all_findings(conn) if r.status != "false_positive"]
    assert data["total"] == len(rows) == len(data["windows"])
    by_id = {w["id"]: w for w in data["windows"]}
    assert by_id[s.sqli_id]["ended_by"] == "mitigated" and by_id[s.sqli_id]["seconds"] == pytest.approx(2.0)
    assert by_id[s.xss_id]["end"] is None and by_id[s.xss_id]["seconds"] == pytest.approx(86400)
    # statistics: closed windows per severity, recomputed here
    closed: dict[str, list[float]] = {}
    for r in rows:
        ends = [t for t in (r.mitigated_at, r.resolved_at) if t is not None]
        if ends:
            closed.setdefault(r.severity, []).append((min(ends) - r.first_seen).total_seconds())
    stats = {x["severity"]: x for x in data["summary"]}
    for sev in SEVERITIES:
        vals = sorted(closed.get(sev, []))
        assert stats[sev]["closed"] == len(vals)
        if vals:
            assert stats[sev]["max_s"] == pytest.approx(vals[-1])
            assert stats[sev]["p50_s"] == pytest.approx(
                vals[(len(vals) - 1) // 2]
                if len(vals) % 2
                else (vals[len(vals) // 2 - 1] + vals[len(vals) // 2]) / 2
            )
    assert sum(x["open"] for x in data["summary"]) == sum(
        1 for r in rows if r.mitigated_at is None and r.resolved_at is None
    )
    # a range that ends before anything was seen holds no window
    with web_db.engine.connect() as conn:
        early = queries.exposure_windows(conn, start - timedelta(days=90), start - timedelta(days=60))
    assert early["total"] == 0 and early["windows"] == []


def test_overview_agrees_with_facets(web_db) -> None:
    with web_db.engine.connect() as conn:
        o = queries.overview(conn)
        f = queries.facets(conn)
        rows = _all_findings(conn)
    assert o["by_status"] == f["status"]
    assert o["active_total"] == sum(1 for r in rows if r.status in ACTIVE)
    assert o["patches_by_state"]["promoted"] == 1 and o["patches_by_state"]["rolled_back"] == 1
    assert f["service"] == web_db.seeded.by_service
    inspector = next(x for x in o["scanners"] if x["scanner"] == "inspector")
    assert inspector["runs"] == 2 and inspector["failed"] == 1, "the unparseable report's run failed"

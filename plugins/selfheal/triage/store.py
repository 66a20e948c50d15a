"""The triage store: ingest scanner reports into the findings table, idempotently.

``ingest_reports`` takes a batch of report bytes and, in one transaction:

1. hashes (SHA-256) and parses each report (``selfheal.findings.parse_bytes``)
   and encodes its rows (``rows.encode_report``: content hash, COPY lines), in
   worker processes for large batches: parsing runs ahead (``PARSE_AHEAD``
   reports, so memory stays bounded) while this process and PostgreSQL write;
2. recognizes bytes already received by the unique ``raw_reports.sha256`` /
   ``quarantine.sha256`` (INSERT ... ON CONFLICT DO NOTHING RETURNING): their
   findings are dropped, so the same report twice changes nothing the second
   time, not even ``last_seen`` or the scan run's counts (a re-sent report is
   parsed for nothing; hashing in the workers keeps the main process free);
3. quarantines a report that fails to parse (bytes + one-line error) and keeps
   going: the good reports of the batch are stored;
4. stores each parsed report verbatim in ``raw_reports`` (``RAW_BATCH`` reports
   per pipelined round trip);
5. upserts the findings, ``CHUNK_ROWS`` distinct fingerprints at a time, never a
   round trip per finding. PostgreSQL, two steps per chunk:

   * **classify**: COPY narrow key rows (fingerprint, owner, content hash,
     sources, rule ids) into a temporary table; one statement probes the
     findings index for each, records the observation of every finding the
     table already holds exactly, and returns the new and changed ones. A
     re-scan that finds the same things ends here: unchanged rows are never
     written (``ON CONFLICT DO UPDATE`` would lock, and so dirty, each one),
     and their full rows never leave this process;
   * **write**: COPY the full rows of those only, then one statement: a plain
     INSERT of the new ones (no speculative insertion), INSERT ... ON CONFLICT
     DO UPDATE ... WHERE of the changed ones, their observations. A finding a
     concurrent ingest inserted since the probe makes the plain INSERT fail;
     the chunk is then redone (savepoint) with one INSERT ... ON CONFLICT for
     everything (``_UPSERT_SQL``).

   When a sample of a chunk's fingerprints is not in the table (a first scan,
   a new service), step 1 is skipped and the chunk written as all new; one
   stored finding the sample missed makes that fail, and the chunk (and the
   rest of the batch) goes through both steps. Observations of a run created
   by this call are plain INSERTs too: nothing observed that run before.
   A fingerprint an earlier chunk wrote is not staged again: the sources and
   rule ids later chunks add are collected and written once at the end of the
   batch (one narrow UPDATE of the rows that lack one).
   Other databases (SQLite): the same decisions made in Python, with executemany;
6. records one observation per (scan run, finding) seen;
7. reopens resolved findings seen again, and, when the run covered its whole
   scope (``complete_scope``), resolves the active findings that scope
   reported before and this run did not.

``IngestResult.new_ids`` / ``reopened_ids`` list the findings this batch
inserted / reopened (for the inline mitigations right after the commit).

Merge rules (identical on both paths):

* a finding is **owned** by the first scanner that reported it (``scanner``);
  only the owner's reports update its content (title, evidence, CVSS, ...),
  so ZAP and Wapiti reporting the same flaw do not overwrite each other's
  wording on every scan; every scanner is added to ``sources`` and its rule to
  ``rule_ids``;
* within one batch the first occurrence of a fingerprint (in report order)
  supplies the content, whatever the chunking: later occurrences only add their
  source (PostgreSQL: the batch's final UPDATE; portable path: staged as
  ``merge_only``), so a re-import of the same batch
  never flip-flops a row between two scanners' or two images' wording;
* threat data a scanner ships (EPSS, KEV, exploit/fix available) is kept when
  a later report omits it;
* ``first_seen`` never moves; ``last_seen`` moves when the row is written
  anyway, or when it is older than ``last_seen_resolution`` (default one
  hour): an unchanged finding is not rewritten on every scan just to bump a
  timestamp. The exact time of every sighting is in ``observations``.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect

from selfheal.findings.model import Finding, ParseError
from selfheal.triage import lifecycle, rows
from selfheal.triage.db import as_engine
from selfheal.triage.schema import findings as F
from selfheal.triage.schema import observations, quarantine, raw_reports, scan_runs, status_changes

Parser = Callable[..., list[Finding]]

LAST_SEEN_RESOLUTION = timedelta(hours=1)
CHUNK_ROWS = 20_000  # distinct findings per chunk (the last one is written after the parse: keep it short)
MIN_FLUSH_ROWS = 5_000  # flush early when the parsers are behind, to keep Postgres busy
PARALLEL_MIN_BYTES = 4 * 1024 * 1024
# Reports parsed ahead of the database loop: enough to keep the workers busy
# while a chunk is written, bounded so that memory stays bounded.
PARSE_AHEAD = 128
# Reports whose bytes are stored in one statement (or fewer, when they add up to RAW_BATCH_BYTES).
RAW_BATCH = 32
RAW_BATCH_BYTES = 16 * 1024 * 1024
# Fingerprints of a chunk probed before assuming that none of them is stored yet.
OPTIMISM_SAMPLE = 64
INGEST_ACTOR = "selfheal:ingest"
SCAN_ACTOR = "selfheal:scan"


def utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- results


@dataclass(slots=True)
class ReportIn:
    """One report to ingest: the bytes as received and the name to use in errors."""

    data: bytes
    source: str
    fmt: str = "auto"
    service: str | None = None


@dataclass(slots=True)
class ReportOutcome:
    source: str
    sha256: str
    status: Literal["ingested", "duplicate", "quarantined"]
    raw_report_id: int | None = None
    findings: int = 0
    error: str | None = None


@dataclass(slots=True)
class IngestResult:
    """What one ingest did. ``unique`` = distinct fingerprints in the batch =
    ``new + updated + unchanged``."""

    scan_run_id: int | None  # None: every report had been received before, nothing was recorded
    reports: list[ReportOutcome] = field(default_factory=list)
    parsed: int = 0
    unique: int = 0
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    reopened: int = 0
    resolved: int = 0
    quarantined: int = 0
    duplicates: int = 0
    db_seconds: float = 0.0  # time spent in database statements (raw copy, COPY, upsert, observations)
    seconds: float = 0.0
    new_ids: list[int] = field(default_factory=list)  # ids of the findings this batch inserted
    reopened_ids: list[int] = field(default_factory=list)  # ids of the findings this batch reopened

    def counts(self) -> dict[str, int]:
        return {
            "reports": len(self.reports),
            "duplicates": self.duplicates,
            "quarantined": self.quarantined,
            "findings": self.parsed,
            "unique": self.unique,
            "new": self.new,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "reopened": self.reopened,
            "resolved": self.resolved,
        }


# --------------------------------------------------------------------------- parsing


@dataclass(slots=True)
class _Parsed:
    index: int
    sha256: str
    count: int = 0
    scanner: str | None = None
    fmt: str = "auto"
    rows: list[rows.Row] = field(default_factory=list)  # portable path
    enc: rows.Encoded | None = None  # COPY path
    error: str | None = None

    def fingerprints(self) -> list[str]:
        """The distinct fingerprints of the report, in order of first appearance."""
        return list(self.enc.fps) if self.enc is not None else [r[0] for r in self.rows]


def _default_parser() -> Parser:
    from selfheal.findings import parse_bytes  # the parsers package (its own issue)

    return parse_bytes


def _detected_format(data: bytes, source: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    try:
        from selfheal import findings

        detect = getattr(findings, "detect_format", None)
        if detect is not None:
            name = detect(data, source)
            return getattr(name, "name", name) or "auto"
    except Exception:  # noqa: BLE001, S110 - only a label for the raw report; never fail the ingest on it
        pass
    return "auto"


Job = tuple[int, "bytes | None", str, str, "str | None", bool, "Parser | None"]

# Report bytes handed to forked workers by inheritance instead of through a pipe
# (set only while the pool forks; see _parse_stream).
_FORK_DATA: dict[int, bytes] = {}
_FORK_LOCK = threading.Lock()


def _parse_job(job: Job) -> _Parsed:
    """Hash and parse one report and turn it into rows (runs in a worker process)."""
    index, data, source, fmt, service, copy, parser = job
    if data is None:
        data = _FORK_DATA[index]
    out = _Parsed(index, hashlib.sha256(data).hexdigest(), fmt=fmt)
    try:
        found = (parser or _default_parser())(data, source, fmt=fmt, service=service)
        if copy:
            out.enc = rows.encode_report(found, service)
        else:
            out.rows = rows.value_rows(found, service)
        out.count = len(found)
        scanners = {f.scanner for f in found}
        out.scanner = scanners.pop() if len(scanners) == 1 else ("mixed" if scanners else None)
        out.fmt = _detected_format(data, source, fmt)
    except ParseError as exc:
        out.error = str(exc)
    except Exception as exc:  # noqa: BLE001 - a parser bug must quarantine this report, not sink the batch
        out.error = f"{source}: internal parser error ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
    if out.error:
        out.rows, out.enc = [], None
    return out


def _child_init(engine: sa.Engine | None) -> None:
    # Forked workers must never use (or close) the parent's pooled connections.
    if engine is not None:
        engine.dispose(close=False)
    # Short-lived and acyclic work: the cyclic GC would only rescan the parsed
    # findings over and over (see _gc_paused); the pool ends with the batch.
    gc.freeze()
    gc.disable()


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for one ingest batch.

    A batch allocates hundreds of thousands of small, acyclic objects (findings,
    row tuples); every few hundred allocations the collector rescans the young
    ones and regularly all of them: 15-25% of the CPU of an ingest on this
    machine. Reference counting still frees everything; cycles wait for the
    collector, which is re-enabled when the batch is done.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _parse_stream(
    reports: Sequence[ReportIn],
    copy: bool,
    parser: Parser | None,
    workers: int,
    engine: sa.Engine | None,
    on_idle: Callable[[], bool] | None = None,
) -> Iterator[_Parsed]:
    """Parsed reports in input order; with workers, parsing runs ahead in other
    processes while the caller writes to the database. ``on_idle`` is called when
    the next result is not ready yet (the caller may flush a partial chunk)."""
    if workers <= 1 or len(reports) <= 1:
        for i, r in enumerate(reports):
            yield _parse_job((i, r.data, r.source, r.fmt, r.service, copy, parser))
        return
    if "fork" not in multiprocessing.get_all_start_methods():
        # spawn / forkserver would re-import the caller's __main__ in every worker,
        # which is not ours to assume safe: parse in this process instead.
        for i, r in enumerate(reports):
            yield _parse_job((i, r.data, r.source, r.fmt, r.service, copy, parser))
        return
    # fork (Python 3.11's default on Linux): the workers inherit the report bytes
    # (copy-on-write) instead of receiving them through a pipe. The workers only
    # run the parsers; CPython re-initializes its own locks (imports, logging) after a fork.
    # concurrent.futures rather than multiprocessing.Pool: Pool's worker-handler
    # thread waits on the result pipe too and spins while a large result is being
    # read (about 1 s of this process's CPU per 200,000 findings, and GIL
    # contention with the thread reading the results).
    ctx = multiprocessing.get_context("fork")
    jobs = ((i, None, r.source, r.fmt, r.service, copy, parser) for i, r in enumerate(reports))
    with _FORK_LOCK:
        _FORK_DATA.update((i, r.data) for i, r in enumerate(reports))
        try:
            pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_child_init, initargs=(engine,))
            # the first submit forks every worker
            ahead = deque(pool.submit(_parse_job, job) for job in itertools.islice(jobs, PARSE_AHEAD))
        finally:
            _FORK_DATA.clear()  # the workers have their copy
    try:
        while ahead:
            if not ahead[0].done() and on_idle is not None and on_idle():
                continue  # did useful work meanwhile; poll again
            parsed = ahead.popleft().result()
            job = next(jobs, None)
            if job is not None:
                ahead.append(pool.submit(_parse_job, job))
            yield parsed
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def iter_parsed(
    reports: Sequence[ReportIn], *, workers: int | None = None, parser: Parser | None = None, copy: bool = True
) -> Iterator[_Parsed]:
    """Parse, hash and encode a batch without touching a database, in input
    order (the ingest benchmark times this stage on its own)."""
    with _gc_paused():
        yield from _parse_stream(reports, copy, parser, _workers_for(reports, workers), None)


def parse_reports(
    reports: Sequence[ReportIn], *, workers: int | None = None, parser: Parser | None = None, copy: bool = True
) -> list[_Parsed]:
    """``iter_parsed`` as a list."""
    return list(iter_parsed(reports, workers=workers, parser=parser, copy=copy))


def _workers_for(reports: Sequence[ReportIn], workers: int | None) -> int:
    if multiprocessing.current_process().daemon:
        return 0  # e.g. a Celery prefork worker: daemonic processes may not have children
    if workers is not None:
        return max(0, workers)
    if len(reports) < 2 or sum(len(r.data) for r in reports) < PARALLEL_MIN_BYTES:
        return 0
    return min(os.cpu_count() or 1, len(reports))


# --------------------------------------------------------------------------- SQL pieces


def _in_list(values: Iterable[str]) -> str:
    return ", ".join(f"'{v}'" for v in sorted(values))  # lifecycle constants, not input


_STAGE = "_selfheal_stage"
_REOPEN = _in_list(lifecycle.REOPEN_FROM)


def _unchanged_sql(e: str, s: str, staged: bool = True) -> str:
    """SQL: the stored row ``e`` already says everything the incoming row ``s`` says.
    (``EXCLUDED`` has no merge_only column: a merge-only row proposes scanner ''.)"""
    merge_only = f" OR {s}.merge_only" if staged else ""
    return (
        f"({e}.scanner <> {s}.scanner{merge_only} OR {e}.content_hash = {s}.content_hash)"
        f" AND {e}.sources @> {s}.sources AND {e}.rule_ids @> {s}.rule_ids"
        f" AND {e}.status NOT IN ({_REOPEN}) AND {e}.last_seen >= %(stale_before)s"
    )


_KEYS = "_selfheal_keys"
_PROBE = "SELECT id, scanner, content_hash, sources, rule_ids, status, last_seen FROM findings e"
_COLS = (*rows.INCOMING_NAMES, "sources", "rule_ids")


def _merge_sets() -> str:
    """``DO UPDATE SET`` of the upsert: the merge rules of the module docstring."""
    # A merge-only row (a later occurrence in this batch) proposes an empty
    # scanner, so it is never the owner: it adds its source, not its content.
    owner = "f.scanner = EXCLUDED.scanner"
    reopen = f"f.status IN ({_REOPEN})"
    sets: list[str] = []
    for c in (*rows.CONTENT_NAMES, "content_hash"):
        if c in ("scanner", "service", "kind"):
            continue  # identity (part of the fingerprint) and the owner never change
        new = f"COALESCE(EXCLUDED.{c}, f.{c})" if c in rows.KEEP_IF_NULL else f"EXCLUDED.{c}"
        sets.append(f"{c} = CASE WHEN {owner} THEN {new} ELSE f.{c} END")
    for c in ("sources", "rule_ids"):
        union = f"jsonb_array_elements_text(f.{c} || EXCLUDED.{c}) AS t(v)"
        sets.append(f"{c} = (SELECT jsonb_agg(DISTINCT v ORDER BY v) FROM {union})")
    sets.append("last_seen = GREATEST(f.last_seen, EXCLUDED.last_seen)")
    sets.append(f"status = CASE WHEN {reopen} THEN 'reopened' ELSE f.status END")
    sets.append(f"status_changed_at = CASE WHEN {reopen} THEN EXCLUDED.status_changed_at ELSE f.status_changed_at END")
    for c, v in lifecycle.timestamp_updates("reopened", datetime.now(UTC)).items():
        val = "NULL" if v is None else "EXCLUDED.status_changed_at"
        sets.append(f"{c} = CASE WHEN {reopen} THEN {val} ELSE f.{c} END")
    return ", ".join(sets)


def _upsert_into(source: str, where: str) -> str:
    """INSERT ... ON CONFLICT DO UPDATE of the staged rows ``source`` (alias s) ``where``."""
    sel_list = ", ".join(
        "CASE WHEN s.merge_only THEN '' ELSE s.scanner END" if c == "scanner" else f"s.{c}" for c in _COLS
    )
    return f"""INSERT INTO findings AS f ({", ".join(_COLS)}, first_seen, last_seen, status, status_changed_at)
    SELECT {sel_list}, %(now)s, %(now)s, 'new', %(now)s
    FROM {source} WHERE {where}
    ON CONFLICT (fingerprint) DO UPDATE SET {_merge_sets()}
    WHERE NOT ({_unchanged_sql("f", "EXCLUDED", staged=False)})
    RETURNING f.id, (f.xmax = 0) AS inserted, (f.status = 'reopened' AND f.status_changed_at = %(now)s) AS reopened"""


def _on_conflict(own_run: bool) -> str:
    # A run created by this ingest has no observations but the ones this batch
    # writes, each once (merge-only rows are left out: an earlier chunk observed
    # them): a plain INSERT, ~2.5x cheaper than ON CONFLICT's speculative
    # insertion. A run passed in may already have observed a finding.
    return "" if own_run else " ON CONFLICT DO NOTHING"


def _classify_sql(own_run: bool) -> str:
    """Step 1 of a chunk, on the narrow key rows: which staged findings does the
    table already hold exactly (observe them, nothing else), which are new or
    changed (returned: fingerprint, id of the stored row or NULL).

    The LATERAL ... LIMIT 1 forces one index probe per staged row: the table
    grows inside this transaction, its statistics lag, and the planner
    otherwise picks a hash join that reads the whole table per chunk.
    """
    return f"""
WITH k AS MATERIALIZED (
    SELECT s.fingerprint, s.scanner = '' AS merge_only, e.id AS known_id,
           (e.id IS NOT NULL AND {_unchanged_sql("e", "s", staged=False)}) AS same
    FROM {_KEYS} s
    LEFT JOIN LATERAL ({_PROBE} WHERE e.fingerprint = s.fingerprint LIMIT 1) e ON true
), obs AS (
    -- ascending keys: B-tree inserts take the rightmost-leaf fast path
    INSERT INTO observations (scan_run_id, finding_id, seen_at)
    SELECT %(run)s, known_id, %(now)s FROM k WHERE same AND NOT merge_only
    ORDER BY known_id{_on_conflict(own_run)}
)
SELECT fingerprint, known_id FROM k WHERE NOT same"""


def _work_sql(own_run: bool) -> str:
    """Step 2, on the full rows of what step 1 returned: a plain INSERT of the
    new ones (no speculative insertion; a concurrent ingest that inserted one of
    them meanwhile makes it fail, and the chunk is redone with _UPSERT_SQL), the
    upsert of the changed ones, and their observations."""
    sel_list = ", ".join(f"s.{c}" for c in _COLS)
    return f"""
WITH ins AS (
    INSERT INTO findings AS f ({", ".join(_COLS)}, first_seen, last_seen, status, status_changed_at)
    SELECT {sel_list}, %(now)s, %(now)s, 'new', %(now)s
    FROM {_STAGE} s WHERE s.known_id IS NULL AND NOT s.merge_only
    RETURNING f.id
), up AS (
    {_upsert_into(f"{_STAGE} s", "s.known_id IS NOT NULL OR s.merge_only")}
), obs AS (
    INSERT INTO observations (scan_run_id, finding_id, seen_at)
    SELECT %(run)s, id, %(now)s
    FROM (
        SELECT id FROM ins UNION ALL SELECT id FROM up WHERE inserted
        UNION ALL SELECT known_id FROM {_STAGE} WHERE known_id IS NOT NULL AND NOT merge_only
    ) o
    ORDER BY id{_on_conflict(own_run)}
)
SELECT id, true, false FROM ins UNION ALL SELECT id, inserted, reopened FROM up"""


def _upsert_sql() -> str:
    """The whole chunk in one statement, robust to anything a concurrent ingest
    did since step 1 (every insert is ON CONFLICT): the fallback of _work_sql.

    * ``k``: each staged fingerprint with the id of its stored row and whether
      anything changed (see _classify_sql).
    * ``up``: INSERT ... ON CONFLICT for the changed and new rows only; unchanged
      rows are never touched (DO UPDATE would lock, and so dirty, each one). The
      DO UPDATE ... WHERE repeats the test for a row a concurrent ingest wrote
      between the probe and the insert.
    * ``obs``: one observation per staged row (ids of rows that existed from
      ``k``, of rows inserted now from ``up``).
    """
    return f"""
WITH k AS MATERIALIZED (
    SELECT s.fingerprint, e.id AS known_id, (e.id IS NOT NULL AND {_unchanged_sql("e", "s")}) AS same
    FROM {_STAGE} s
    LEFT JOIN LATERAL ({_PROBE} WHERE e.fingerprint = s.fingerprint LIMIT 1) e ON true
), up AS (
    {_upsert_into(f"{_STAGE} s JOIN k ON k.fingerprint = s.fingerprint", "NOT k.same")}
), obs AS (
    INSERT INTO observations (scan_run_id, finding_id, seen_at)
    SELECT %(run)s, id, %(now)s
    FROM (SELECT id FROM up WHERE inserted UNION ALL SELECT known_id FROM k WHERE known_id IS NOT NULL) o
    ORDER BY id
    ON CONFLICT DO NOTHING
)
SELECT id, inserted, reopened FROM up"""


_UPSERT_SQL = _upsert_sql()

_CLASSIFY_SQL = {own: _classify_sql(own) for own in (True, False)}
_WORK_SQL = {own: _work_sql(own) for own in (True, False)}
_LATE = "_selfheal_late"
_LATE_DDL = f"CREATE TEMP TABLE {_LATE} (fingerprint varchar(128), sources jsonb, rule_ids jsonb) ON COMMIT DROP"
# The row is rewritten only when it lacks a source or rule id; last_seen moves as
# for any rewritten row. A plain join (no LATERAL as in _classify_sql): it runs
# once per batch, and a hash join over the table beat one probe per row 2:1 on
# the benchmark (a fifth of the batch's rows).
_LATE_SQL = f"""
UPDATE findings f SET
    sources = (SELECT jsonb_agg(DISTINCT v ORDER BY v)
               FROM jsonb_array_elements_text(f.sources || s.sources) AS t(v)),
    rule_ids = (SELECT jsonb_agg(DISTINCT v ORDER BY v)
                FROM jsonb_array_elements_text(f.rule_ids || s.rule_ids) AS t(v)),
    last_seen = GREATEST(f.last_seen, %(now)s)
FROM {_LATE} s
WHERE f.fingerprint = s.fingerprint AND NOT (f.sources @> s.sources AND f.rule_ids @> s.rule_ids)
RETURNING f.id"""
_STAGE_DDL = f"CREATE TEMP TABLE {_STAGE} (" + ", ".join(f"{c} {t}" for c, t in rows.STAGE_COLUMNS) + ") ON COMMIT DROP"
_KEYS_DDL = f"CREATE TEMP TABLE {_KEYS} (" + ", ".join(f"{c} {t}" for c, t in rows.KEY_COLUMNS) + ") ON COMMIT DROP"


def _insert(conn: sa.Connection, table: sa.Table):
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite_dialect.insert(table)
    raise NotImplementedError(f"triage store supports PostgreSQL and SQLite, not {name}")


# --------------------------------------------------------------------------- sinks


class _Sink:
    """Collects rows of a batch and writes them chunk by chunk."""

    def __init__(
        self, conn: sa.Connection, run_id: int, now: datetime, stale_before: datetime, chunk: int, own_run: bool
    ):
        self.conn = conn
        self.run_id = run_id
        self.own_run = own_run  # the run was created by this ingest: nothing observed it before
        self.now = now
        self.stale_before = stale_before
        self.chunk = chunk
        self.pending: dict[str, list[Any]] = {}
        self.seen: set[str] = set()
        self.inserted: set[int] = set()
        self.updated: set[int] = set()
        self.reopened: set[int] = set()
        self.db_seconds = 0.0

    def add(self, parsed: _Parsed) -> None:
        """Queue one report's rows. Pending entry: [row, merged (sources, rule_ids)
        or None, merge_only]; merge_only marks a fingerprint an earlier chunk of
        this batch already wrote (see rows.MERGED_COLUMNS)."""
        pending, seen = self.pending, self.seen
        for r in parsed.rows:
            fp = r[0]
            have = pending.get(fp)
            if have is None:
                pending[fp] = [r, None, fp in seen]
                continue
            src, rules = have[1] or (have[0][2], have[0][3])
            if not (r[2] <= src and r[3] <= rules):
                have[1] = (src | r[2], rules | r[3])
        if len(pending) >= self.chunk:
            self.flush()

    def maybe_flush(self) -> bool:
        if len(self.pending) >= MIN_FLUSH_ROWS:
            self.flush()
            return True
        return False

    def flush(self) -> None:
        if not self.pending:
            return
        t0 = time.perf_counter()
        batch, self.pending = self.pending, {}
        self.seen.update(batch)
        self._write(batch)
        self.db_seconds += time.perf_counter() - t0

    def _write(self, batch: dict[str, list[Any]]) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Called once after the last flush."""

    def store_raw(self, **values: Any) -> int | None:
        """Insert a raw report; None when the same bytes are already stored."""
        return self.conn.execute(
            _insert(self.conn, raw_reports)
            .on_conflict_do_nothing(index_elements=["sha256"])
            .returning(raw_reports.c.id),
            values,
        ).scalar_one_or_none()

    def store_raws(self, values: list[dict[str, Any]]) -> list[int | None]:
        """store_raw for several reports, in order."""
        return [self.store_raw(**v) for v in values]

    def store_quarantine(self, **values: Any) -> bool:
        """Insert a quarantine row; False when the same bytes are already there."""
        return (
            self.conn.execute(
                _insert(self.conn, quarantine)
                .on_conflict_do_nothing(index_elements=["sha256"])
                .returning(quarantine.c.id),
                values,
            ).scalar_one_or_none()
            is not None
        )

    def known_raw(self, sha: str) -> bool:
        return self.conn.execute(sa.select(raw_reports.c.id).where(raw_reports.c.sha256 == sha)).first() is not None

    def _history(self, ids: Iterable[int]) -> None:
        ids = sorted(set(ids))
        if not ids:
            return
        (frm,) = lifecycle.REOPEN_FROM if len(lifecycle.REOPEN_FROM) == 1 else (None,)
        self.conn.execute(
            status_changes.insert(),
            [
                {
                    "finding_id": i,
                    "from_status": frm,
                    "to_status": "reopened",
                    "actor": INGEST_ACTOR,
                    "reason": f"seen again by scan run {self.run_id}",
                    "changed_at": self.now,
                    "scan_run_id": self.run_id,
                }
                for i in ids
            ],
        )


class _PgSink(_Sink):
    """Two steps per chunk (see the module docstring): COPY the narrow key rows
    and classify them; COPY the full rows of the new and changed ones only and
    write them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raw = self.conn.connection.driver_connection
        # Staging rows stay in this backend's memory rather than spilling to
        # temp files; only possible before the session first touches a temp table.
        with contextlib.suppress(Exception), self.conn.begin_nested():
            self.conn.exec_driver_sql("SET LOCAL temp_buffers = '256MB'")
        # JIT compiling these plans costs more than it saves (the estimated cost of a
        # chunk crosses jit_above_cost); the staging tables want memory.
        self.conn.exec_driver_sql("SET LOCAL jit = off")
        self.conn.exec_driver_sql("SET LOCAL work_mem = '64MB'")
        self.conn.exec_driver_sql(_KEYS_DDL)
        self.conn.exec_driver_sql(_STAGE_DDL)
        self.params = {"now": self.now, "stale_before": self.stale_before, "run": self.run_id}
        self.classify_sql = _CLASSIFY_SQL[self.own_run]
        self.work_sql = _WORK_SQL[self.own_run]
        self.optimistic = True  # try "all new" on chunks whose sample is not stored (see _write)
        # fingerprint -> (sources, rule_ids) written by this batch so far; the sets later chunks add
        self.seen: dict[str, tuple[frozenset[str], frozenset[str]]] = {}  # type: ignore[assignment]
        self.late: dict[str, tuple[frozenset[str], frozenset[str]]] = {}

    def add(self, parsed: _Parsed) -> None:
        """Queue one report's rows. Pending entry: [Encoded, row index, merged
        (sources, rule_ids) or None, merge_only (always False here)].

        A fingerprint an earlier chunk of this batch wrote is not queued again:
        only its sources and rule ids can change (the first occurrence supplies
        the content), so when they add something they are collected in ``late``
        and written once, by ``finish``, with a narrow UPDATE. Staging it as a
        merge-only row made every such duplicate an INSERT ... ON CONFLICT DO
        UPDATE of the full row (one per chunk that saw it again): on the
        benchmark's first import (17% of the rows are such duplicates) this
        saves about 8% of PostgreSQL's CPU."""
        enc = parsed.enc
        if enc is None:
            return
        pending, seen, late = self.pending, self.seen, self.late
        tags, tagsets = enc.tags, enc.tagsets
        for i, fp in enumerate(enc.fps):
            have = pending.get(fp)
            if have is None:
                written = seen.get(fp)
                if written is None:
                    pending[fp] = [enc, i, None, False]
                    continue
                src, rules = late.get(fp) or written
                new_src, new_rules = tagsets[tags[i]]
                if not (new_src <= src and new_rules <= rules):
                    late[fp] = (src | new_src, rules | new_rules)
                continue
            src, rules = have[2] or have[0].sets(have[1])
            new_src, new_rules = tagsets[tags[i]]
            if not (new_src <= src and new_rules <= rules):
                have[2] = (src | new_src, rules | new_rules)
        if len(pending) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        t0 = time.perf_counter()
        batch, self.pending = self.pending, {}
        seen = self.seen
        for fp, (enc, i, merged, _merge_only) in batch.items():
            seen[fp] = merged or enc.tagsets[enc.tags[i]]  # what this chunk writes (see add)
        self._write(batch)
        self.db_seconds += time.perf_counter() - t0

    def finish(self) -> None:
        """Add the sources and rule ids that later chunks saw to the rows earlier
        chunks wrote (see add): one COPY and one UPDATE, for the rows that lack one."""
        if not self.late:
            return
        t0 = time.perf_counter()
        late, self.late = self.late, {}
        json_set, escape = rows.json_set, rows.escape
        lines = [b"%s\t%s\t%s\n" % (escape(fp).encode("utf-8", "surrogatepass"), json_set(src), json_set(rules))
                 for fp, (src, rules) in late.items()]
        with self.raw.cursor() as cur:
            cur.execute(_LATE_DDL)
            with cur.copy(f"COPY {_LATE} FROM STDIN") as cp:
                cp.write(b"".join(lines))
            cur.execute(_LATE_SQL, self.params)
            for (fid,) in cur.fetchall():
                if fid not in self.inserted:
                    self.updated.add(fid)
        self.db_seconds += time.perf_counter() - t0

    def _raw_insert(self, table: str, values: dict[str, Any], returning: bool) -> int | None:
        # Straight to psycopg with binary parameters: SQLAlchemy's bytea bind
        # processing tripled the time of storing 70 MB of reports (1.0 s vs 0.25 s).
        cols = ", ".join(values)
        marks = ", ".join(["%s"] * len(values))
        sql = f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT (sha256) DO NOTHING"
        with self.raw.cursor() as cur:
            cur.execute(sql + (" RETURNING id" if returning else ""), list(values.values()), binary=True)
            row = cur.fetchone() if returning else None
        return row[0] if row else None

    def store_raw(self, **values: Any) -> int | None:
        return self._raw_insert("raw_reports", values, True)

    def store_quarantine(self, **values: Any) -> bool:
        return self._raw_insert("quarantine", values, True) is not None

    def store_raws(self, values: list[dict[str, Any]]) -> list[int | None]:
        """One INSERT per report (ON CONFLICT needs a row each; a bytea[] parameter
        and unnest() cost several times more on both sides) but sent together:
        psycopg's executemany(returning=True) pipelines them, one round trip."""
        if len(values) == 1:
            return [self.store_raw(**values[0])]
        cols = ", ".join(values[0])
        marks = ", ".join(["%b"] * len(values[0]))  # binary parameters, as in _raw_insert
        sql = f"INSERT INTO raw_reports ({cols}) VALUES ({marks}) ON CONFLICT (sha256) DO NOTHING RETURNING id"
        out: list[int | None] = []
        with self.raw.cursor() as cur:
            cur.executemany(sql, [list(v.values()) for v in values], returning=True)
            while True:
                row = cur.fetchone()
                out.append(row[0] if row else None)
                if not cur.nextset():
                    break
        return out

    def _write(self, batch: dict[str, list[Any]]) -> None:
        with self.raw.cursor() as cur:
            written = None
            if self.optimistic and self._none_stored(cur, batch):
                # Most likely a first sighting of all of them (a new service, a first
                # scan): skip step 1 and insert directly. A row that exists after all
                # makes the plain INSERT fail; the chunk then takes the two steps.
                self._stage(cur, ((e, None) for e in batch.values()))
                written = self._work(cur, fallback=False)
                if written is None:
                    self.optimistic = False  # wrong once: classify the rest of the batch
                    cur.execute(f"TRUNCATE {_STAGE}")
            if written is None:
                work = self._classify(cur, batch)
                if not work:
                    return  # nothing new, nothing changed: the usual re-scan
                self._stage(cur, ((batch[fp], known_id) for fp, known_id in work))
                del work
                written = self._work(cur, fallback=True)
            cur.execute(f"TRUNCATE {_STAGE}")
        reopened = []
        for fid, inserted, was_reopened in written:
            if inserted:
                self.inserted.add(fid)
            elif fid not in self.inserted:
                self.updated.add(fid)
            if was_reopened and fid not in self.reopened:
                reopened.append(fid)
        self.reopened.update(reopened)
        self._history(reopened)

    def _none_stored(self, cur: psycopg.Cursor, batch: dict[str, list[Any]]) -> bool:
        """True when none of a sample of the chunk's fingerprints is stored: a
        handful of index probes that decide whether step 1 is worth running."""
        sample = [fp for fp, e in itertools.islice(batch.items(), 0, None, max(1, len(batch) // OPTIMISM_SAMPLE))
                  if not e[3]][:OPTIMISM_SAMPLE]
        if not sample:
            return True  # only rows an earlier chunk wrote: step 2 merges their sources
        cur.execute("SELECT EXISTS (SELECT FROM findings WHERE fingerprint = ANY(%s))", (sample,))
        return not cur.fetchone()[0]

    def _classify(self, cur: psycopg.Cursor, batch: dict[str, list[Any]]) -> list[tuple[str, int | None]]:
        """Step 1: COPY the key rows, observe the unchanged ones, return the others."""
        rekey = rows.rekey
        keys = [
            enc.keys[i] if merged is None and not merge_only else rekey(enc.keys[i], merged or enc.sets(i), merge_only)
            for enc, i, merged, merge_only in batch.values()
        ]
        keys.append(b"")
        with cur.copy(f"COPY {_KEYS} FROM STDIN") as cp:
            cp.write(b"\n".join(keys))
        del keys
        cur.execute(self.classify_sql, self.params)
        work = cur.fetchall()
        cur.execute(f"TRUNCATE {_KEYS}")
        return work

    def _stage(self, cur: psycopg.Cursor, entries: Iterable[tuple[list[Any], int | None]]) -> None:
        """COPY full rows (pending entry, id of the stored row or None) into the stage."""
        reline, unstaged = rows.reline, rows.unstaged
        lines = []
        for (enc, i, merged, merge_only), known_id in entries:
            line = enc.lines[i]
            if merged is None:
                if known_id is None and not merge_only:
                    lines.append(line)  # the usual new row: staged as the worker encoded it
                    continue
                line = unstaged(line)
            else:
                line = reline(line, merged)
            tail = b"\\N" if known_id is None else b"%d" % known_id
            lines.append(b"%s\t%s\t%s\n" % (line, b"t" if merge_only else b"f", tail))
        with cur.copy(f"COPY {_STAGE} FROM STDIN") as cp:
            cp.write(b"".join(lines))

    def _work(self, cur: psycopg.Cursor, fallback: bool) -> list[tuple[int, bool, bool]] | None:
        """Step 2 on the staged rows. A finding inserted meanwhile by a concurrent
        ingest (or, optimistically staged as new, stored after all) makes its plain
        INSERT fail: then the chunk is redone with the statement that expects
        anything (``fallback``) or None is returned."""
        cur.execute("SAVEPOINT selfheal_chunk")
        try:
            cur.execute(self.work_sql, self.params)
            written = cur.fetchall()
            cur.execute("RELEASE SAVEPOINT selfheal_chunk")
            return written
        except (psycopg.errors.UniqueViolation, psycopg.errors.DeadlockDetected):
            cur.execute("ROLLBACK TO SAVEPOINT selfheal_chunk")
            if not fallback:
                return None
            cur.execute(_UPSERT_SQL, self.params)
            return cur.fetchall()


class _GenericSink(_Sink):
    """Portable path (SQLite): the PostgreSQL statement's decisions, made in Python."""

    _READ = (
        "id",
        "fingerprint",
        "scanner",
        "content_hash",
        "sources",
        "rule_ids",
        "status",
        "last_seen",
        *sorted(rows.KEEP_IF_NULL),
    )

    def _write(self, batch: dict[str, list[Any]]) -> None:
        conn, now = self.conn, self.now
        existing: dict[str, Any] = {}
        fps = list(batch)
        cols = [F.c[c] for c in self._READ]
        for i in range(0, len(fps), 500):
            part = fps[i : i + 500]
            for r in conn.execute(sa.select(*cols).where(F.c.fingerprint.in_(part))):
                existing[r.fingerprint] = r
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        reopened: list[int] = []
        for fp, (r, merged, merge_only) in batch.items():
            (row_values, content_hash), (src, rules) = r[1], merged or (r[2], r[3])
            values = dict(zip(rows.CONTENT_NAMES, row_values, strict=True))
            values["cves"] = list(values["cves"])
            old = existing.get(fp)
            if old is None:
                inserts.append(
                    {
                        **values,
                        "fingerprint": fp,
                        "content_hash": content_hash,
                        "sources": sorted(src),
                        "rule_ids": sorted(rules),
                        "first_seen": now,
                        "last_seen": now,
                        "status": "new",
                        "status_changed_at": now,
                    }
                )
                continue
            owner = old.scanner == values["scanner"] and not merge_only
            old_sources, old_rules = set(old.sources or ()), set(old.rule_ids or ())
            if (
                (not owner or old.content_hash == content_hash)
                and src <= old_sources
                and rules <= old_rules
                and old.status not in lifecycle.REOPEN_FROM
                and old.last_seen >= self.stale_before
            ):
                continue
            upd: dict[str, Any] = {"_id": old.id}
            if owner:
                for c in rows.CONTENT_NAMES:
                    if c in ("scanner", "service", "kind"):
                        continue
                    v = values[c]
                    if v is None and c in rows.KEEP_IF_NULL:
                        v = getattr(old, c)
                    upd[c] = v
                upd["content_hash"] = content_hash
            upd["sources"] = sorted(old_sources | src)
            upd["rule_ids"] = sorted(old_rules | rules)
            upd["last_seen"] = max(old.last_seen, now)
            if old.status in lifecycle.REOPEN_FROM:
                upd.update(status="reopened", status_changed_at=now, **lifecycle.timestamp_updates("reopened", now))
                reopened.append(old.id)
            updates.append(upd)
        if inserts:
            conn.execute(_insert(conn, F), inserts)
        # executemany needs one statement shape: group updates by their column set.
        shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for u in updates:
            shapes.setdefault(tuple(sorted(u)), []).append(u)
        for keys, group in shapes.items():
            # bind names must differ from the column names in SET
            stmt = (
                F.update()
                .where(F.c.id == sa.bindparam("_id"))
                .values({k: sa.bindparam("v_" + k) for k in keys if k != "_id"})
            )
            conn.execute(stmt, [{("v_" + k if k != "_id" else k): v for k, v in u.items()} for u in group])
        ids: dict[str, int] = {fp: r.id for fp, r in existing.items()}
        new_fps = [i["fingerprint"] for i in inserts]
        for i in range(0, len(new_fps), 500):
            part = new_fps[i : i + 500]
            for fid, fp in conn.execute(sa.select(F.c.id, F.c.fingerprint).where(F.c.fingerprint.in_(part))):
                ids[fp] = fid
                self.inserted.add(fid)
        for u in updates:
            if u["_id"] not in self.inserted:
                self.updated.add(u["_id"])
        obs = [{"scan_run_id": self.run_id, "finding_id": ids[fp], "seen_at": now} for fp in batch]
        conn.execute(_insert(conn, observations).on_conflict_do_nothing(), obs)
        fresh = [i for i in reopened if i not in self.reopened]
        self.reopened.update(fresh)
        self._history(fresh)


# --------------------------------------------------------------------------- scan runs


def start_scan_run(
    engine: sa.Engine | str | None,
    scanner: str,
    service: str | None = None,
    scope: str | None = None,
    *,
    started_at: datetime | None = None,
) -> int:
    """Register a scan run (call before ingesting its reports); returns its id."""
    eng, owned = as_engine(engine)
    try:
        with eng.begin() as conn:
            return _new_run(conn, scanner, service, scope, started_at or utcnow())
    finally:
        if owned:
            eng.dispose()


def _new_run(conn: sa.Connection, scanner: str, service: str | None, scope: str | None, at: datetime) -> int:
    return conn.execute(
        scan_runs.insert()
        .values(scanner=scanner, service=service, scope=scope, started_at=at, status="running", complete=False)
        .returning(scan_runs.c.id)
    ).scalar_one()


def finish_scan_run(
    engine: sa.Engine | str | None,
    scan_run_id: int,
    *,
    complete: bool = False,
    status: str = "succeeded",
    now: datetime | None = None,
) -> int:
    """Mark a run finished; ``complete`` (the run covered its whole scope)
    resolves what the scope reported before and this run did not. Returns the
    number of findings resolved."""
    eng, owned = as_engine(engine)
    try:
        with eng.begin() as conn:
            return _finish(conn, scan_run_id, complete=complete, status=status, now=now or utcnow())
    finally:
        if owned:
            eng.dispose()


def _finish(conn: sa.Connection, run_id: int, *, complete: bool, status: str, now: datetime) -> int:
    run = conn.execute(sa.select(scan_runs).where(scan_runs.c.id == run_id).with_for_update()).one_or_none()
    if run is None:
        raise LookupError(f"scan run {run_id}: no such run")
    complete = complete and status == "succeeded"
    if run.finished_at is not None and run.status == status and run.complete == complete:
        return 0  # finished like this already (a retried task): leave it as it is
    resolved = _auto_resolve(conn, run, now) if complete else 0
    counts = dict(run.counts or {})
    counts["resolved"] = counts.get("resolved", 0) + resolved
    conn.execute(
        scan_runs.update()
        .where(scan_runs.c.id == run_id)
        .values(finished_at=now, status=status, complete=complete, counts=counts)
    )
    return resolved


def _auto_resolve(conn: sa.Connection, run: sa.Row, now: datetime) -> int:
    """Resolve the active findings this run's scope saw before and this run did not.

    "Before" means the runs of the same (scanner, service, scope) since the
    previous complete one (inclusive): anything older was settled by that run.
    """
    same_scope = sa.and_(
        scan_runs.c.scanner == run.scanner,
        scan_runs.c.service.is_not_distinct_from(run.service),
        scan_runs.c.scope.is_not_distinct_from(run.scope),
        scan_runs.c.id != run.id,
        scan_runs.c.started_at <= run.started_at,
    )
    since = conn.execute(
        sa.select(sa.func.max(scan_runs.c.started_at)).where(same_scope, scan_runs.c.complete.is_(True))
    ).scalar_one_or_none()
    prior = sa.select(scan_runs.c.id).where(same_scope)
    if since is not None:
        prior = prior.where(scan_runs.c.started_at >= since)
    candidates = sa.select(observations.c.finding_id).where(observations.c.scan_run_id.in_(prior))
    seen_now = sa.select(observations.c.finding_id).where(observations.c.scan_run_id == run.id)
    # Two statements, not UPDATE ... FROM ... RETURNING old.status: SQLite's
    # RETURNING cannot see the FROM tables. FOR UPDATE (Postgres) pins the rows between them.
    changed = conn.execute(
        sa.select(F.c.id, F.c.status)
        .where(
            F.c.status.in_(sorted(lifecycle.AUTO_RESOLVE_FROM)),
            F.c.id.in_(candidates),
            F.c.id.not_in(seen_now),
        )
        .with_for_update()
    ).all()
    values = {"status": "resolved", "status_changed_at": now, **lifecycle.timestamp_updates("resolved", now)}
    for i in range(0, len(changed), 500):
        conn.execute(F.update().where(F.c.id.in_([fid for fid, _ in changed[i : i + 500]])).values(**values))
    if changed:
        reason = f"not seen by complete scan run {run.id} ({run.scanner}, scope {run.scope or '-'})"
        conn.execute(
            status_changes.insert(),
            [
                {
                    "finding_id": fid,
                    "from_status": frm,
                    "to_status": "resolved",
                    "actor": SCAN_ACTOR,
                    "reason": reason,
                    "changed_at": now,
                    "scan_run_id": run.id,
                }
                for fid, frm in changed
            ],
        )
    return len(changed)


# --------------------------------------------------------------------------- ingest


def ingest_reports(
    engine: sa.Engine | str | None,
    reports: Iterable[ReportIn],
    *,
    scan_run_id: int | None = None,
    scanner: str | None = None,
    service: str | None = None,
    scope: str | None = None,
    complete_scope: bool = False,
    workers: int | None = None,
    parser: Parser | None = None,
    bulk: bool | None = None,
    chunk_rows: int = CHUNK_ROWS,
    last_seen_resolution: timedelta = LAST_SEEN_RESOLUTION,
    now: datetime | None = None,
) -> IngestResult:
    """Ingest a batch of reports in one transaction (see the module docstring).

    ``scan_run_id``: the run the reports belong to; without one a run is
    created (``scanner``, ``service``, ``scope`` describe it). ``complete_scope``:
    this batch finishes a run that covered its whole scope, so the run is
    closed and findings it no longer sees are resolved. ``workers``: parser
    processes (None: automatic, in-process for small batches). ``bulk``: force
    (True) or avoid (False) the PostgreSQL COPY path; None uses it on Postgres.
    """
    t_start = time.perf_counter()
    eng, owned = as_engine(engine)
    now = now or utcnow()
    reports = list(reports)
    for r in reports:
        if r.service is None and service is not None:
            r.service = service
    use_copy = eng.dialect.name == "postgresql" if bulk is None else bulk
    if use_copy and eng.dialect.name != "postgresql":
        raise ValueError("the bulk COPY path needs PostgreSQL")
    try:
        with _gc_paused(), eng.begin() as conn:
            run_id = scan_run_id
            if run_id is None:
                run_id = _new_run(conn, scanner or "unknown", service, scope, now)
            elif conn.execute(sa.select(scan_runs.c.id).where(scan_runs.c.id == run_id)).first() is None:
                raise LookupError(f"scan run {run_id}: no such run")
            result = IngestResult(scan_run_id=run_id)
            outcomes: list[ReportOutcome] = []
            sink_cls = _PgSink if use_copy else _GenericSink
            sink = sink_cls(conn, run_id, now, now - last_seen_resolution, chunk_rows, scan_run_id is None)
            scanners: set[str] = set()
            # Reports are hashed in the workers; the unique sha256 columns decide
            # what was seen before (INSERT ... ON CONFLICT DO NOTHING RETURNING id).
            # Parsed reports are held and their bytes stored a few at a time (one
            # statement each time, not one round trip per report); only then are
            # their rows queued, those of reports received before are dropped.
            held: list[_Parsed] = []
            held_bytes = 0

            def release() -> bool:
                nonlocal held_bytes
                if not held:
                    return False
                t_db = time.perf_counter()
                raw_ids = sink.store_raws(
                    [
                        {
                            "scan_run_id": run_id,
                            "scanner": p.scanner,
                            "format": p.fmt,
                            "source": reports[p.index].source,
                            "sha256": p.sha256,
                            "size": len(reports[p.index].data),
                            "body": reports[p.index].data,
                            "received_at": now,
                            "findings": p.count,
                        }
                        for p in held
                    ]
                )
                sink.db_seconds += time.perf_counter() - t_db
                for p, raw_id in zip(held, raw_ids, strict=True):
                    source = reports[p.index].source
                    if raw_id is None:  # received before (or twice in this batch): nothing to do
                        outcomes.append(ReportOutcome(source, p.sha256, "duplicate"))
                        continue
                    if p.scanner:
                        scanners.add(p.scanner)
                    result.parsed += p.count
                    sink.add(p)
                    outcomes.append(ReportOutcome(source, p.sha256, "ingested", raw_id, p.count))
                held.clear()
                held_bytes = 0
                return True

            def on_idle() -> bool:  # the next report is not parsed yet: write meanwhile
                released = release()
                return sink.maybe_flush() or released

            stream = _parse_stream(reports, use_copy, parser, _workers_for(reports, workers), eng, on_idle)
            for parsed in stream:
                r, sha = reports[parsed.index], parsed.sha256
                if parsed.error is None:
                    held.append(parsed)
                    held_bytes += len(r.data)
                    if len(held) >= RAW_BATCH or held_bytes >= RAW_BATCH_BYTES:
                        release()
                    continue
                release()  # outcomes stay in report order
                t_db = time.perf_counter()
                stored = sink.store_quarantine(
                    received_at=now,
                    source=r.source,
                    scanner_guess=scanner,
                    format_guess=r.fmt if r.fmt != "auto" else None,
                    error=parsed.error,
                    body=r.data,
                    size=len(r.data),
                    sha256=sha,
                    scan_run_id=run_id,
                )
                if stored and not sink.known_raw(sha):
                    outcomes.append(ReportOutcome(r.source, sha, "quarantined", error=parsed.error))
                else:  # the same bytes were quarantined, or ingested (by an older parser), before
                    outcomes.append(ReportOutcome(r.source, sha, "duplicate", error=parsed.error))
                sink.db_seconds += time.perf_counter() - t_db
            release()
            sink.flush()
            sink.finish()
            result.reports = outcomes
            result.duplicates = sum(o.status == "duplicate" for o in result.reports)
            result.quarantined = sum(o.status == "quarantined" for o in result.reports)
            result.unique = len(sink.seen)
            result.new = len(sink.inserted)
            result.updated = len(sink.updated)
            result.unchanged = result.unique - result.new - result.updated
            result.reopened = len(sink.reopened)
            result.new_ids, result.reopened_ids = sorted(sink.inserted), sorted(sink.reopened)
            result.db_seconds = sink.db_seconds
            if scan_run_id is None and result.duplicates == len(result.reports):
                # Nothing new arrived: the run created for this batch would be an empty
                # trace of a no-op. Remove it, so a repeated ingest changes nothing.
                conn.execute(scan_runs.delete().where(scan_runs.c.id == run_id))
                result.scan_run_id = None
            else:
                _record_counts(conn, run_id, result, scanners if scan_run_id is None and scanner is None else None)
                if complete_scope and (result.quarantined or result.duplicates):
                    # The run did not really see its whole scope (a report failed to parse, or
                    # arrived before and recorded no new observations): resolving what it "did
                    # not see" would close real findings. Close the run without auto-resolve
                    # (a retry of an already closed run leaves it as it was).
                    closed = sa.select(scan_runs.c.finished_at).where(scan_runs.c.id == run_id)
                    if conn.execute(closed).scalar() is None:
                        _finish(conn, run_id, complete=False, status="partial", now=now)
                elif complete_scope:
                    result.resolved = _finish(conn, run_id, complete=True, status="succeeded", now=now)
    finally:
        if owned:
            eng.dispose()
    result.seconds = time.perf_counter() - t_start
    return result


def _record_counts(conn: sa.Connection, run_id: int, result: IngestResult, scanners: set[str] | None) -> None:
    """Add this batch to the run's counts. Reports already received add nothing,
    so a retried task leaves the counts as they were."""
    fresh = [o for o in result.reports if o.status != "duplicate"]
    if not fresh:
        return
    run = conn.execute(sa.select(scan_runs.c.counts).where(scan_runs.c.id == run_id).with_for_update()).one()
    counts = dict(run.counts or {})
    add = result.counts()
    add["reports"] = len(fresh)
    del add["duplicates"]
    for k, v in add.items():
        counts[k] = counts.get(k, 0) + v
    values: dict[str, Any] = {"counts": counts}
    if scanners:  # a run created for this batch is named after what it turned out to contain
        values["scanner"] = scanners.pop() if len(scanners) == 1 else "mixed"
    conn.execute(scan_runs.update().where(scan_runs.c.id == run_id).values(**values))


def ingest_report(
    engine: sa.Engine | str | None,
    data: bytes,
    source: str,
    fmt: str = "auto",
    service: str | None = None,
    scan_run_id: int | None = None,
    complete_scope: bool = False,
    **kwargs: Any,
) -> IngestResult:
    """Ingest one report (see ``ingest_reports``)."""
    return ingest_reports(
        engine,
        [ReportIn(data, source, fmt, service)],
        scan_run_id=scan_run_id,
        service=service,
        complete_scope=complete_scope,
        **kwargs,
    )


def ingest_findings(
    engine: sa.Engine | str | None,
    found: Sequence[Finding],
    *,
    source: str = "findings",
    **kwargs: Any,
) -> IngestResult:
    """Ingest already-parsed findings (scanners whose API returns them structured).

    They are serialized as a JSON-lines report so that, like every other
    input, they are kept verbatim in ``raw_reports``."""
    import json

    data = b"\n".join(json.dumps(f.to_dict(), sort_keys=True, default=str).encode() for f in found)
    objs = list(found)

    def _given(_data: bytes, _source: str, fmt: str = "auto", service: str | None = None) -> list[Finding]:
        return objs

    return ingest_reports(engine, [ReportIn(data, source, "findings")], parser=_given, workers=0, **kwargs)


# --------------------------------------------------------------------------- status


def set_status(
    engine: sa.Engine | str | None,
    finding_id: int,
    new_status: str,
    actor: str,
    reason: str = "",
    *,
    now: datetime | None = None,
) -> bool:
    """Move one finding to ``new_status`` (checked by the lifecycle) and record
    who and why. Returns False when it already had that status."""
    if not actor:
        raise ValueError("set_status needs an actor (who decided this)")
    now = now or utcnow()
    eng, owned = as_engine(engine)
    try:
        with eng.begin() as conn:
            row = conn.execute(sa.select(F.c.status).where(F.c.id == finding_id).with_for_update()).one_or_none()
            if row is None:
                raise LookupError(f"finding {finding_id}: no such finding")
            if not lifecycle.check(row.status, new_status, f"finding {finding_id}"):
                return False
            conn.execute(
                F.update()
                .where(F.c.id == finding_id)
                .values(status=new_status, status_changed_at=now, **lifecycle.timestamp_updates(new_status, now))
            )
            conn.execute(
                status_changes.insert().values(
                    finding_id=finding_id,
                    from_status=row.status,
                    to_status=new_status,
                    actor=actor,
                    reason=reason,
                    changed_at=now,
                )
            )
            return True
    finally:
        if owned:
            eng.dispose()

"""The audit ledger: an append-only, hash-chained ``audit_log`` table.

Every detection, decision, approval, sandbox result, traffic change,
promotion and rollback is one entry. Each entry stores the hash of the one
before it (``prev_hash``) and its own ``hash`` over ``prev_hash`` and its
canonical JSON (see ``selfheal.audit.canonical``), so changing, removing,
inserting or moving any row breaks the chain at a place ``verify`` names.

Appends are serialized so two writers can never fork the chain: on
PostgreSQL a transaction-level advisory lock is taken before the head is read
(released at commit); on every backend ``seq`` is the primary key and
``prev_hash`` is unique, so a lost race is a unique-key error, retried with a
fresh head (that is how SQLite writers take turns). ``seq`` is assigned here
(head + 1), never by a sequence, because a rolled-back sequence value would
leave a gap that looks exactly like a deleted row.

The database refuses UPDATE, DELETE and TRUNCATE on the table (a trigger,
plus INSERT/SELECT-only grants for the ``selfheal_pipeline`` role; see the
Alembic revision ``0002_audit_log``). The chain is what catches a superuser
who disables the trigger anyway. A valid chain can still be cut at the end
(the newest entries deleted): pass a previously recorded ``(seq, hash)``
as ``anchor`` to ``verify`` to catch that too.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import rfc8785
import sqlalchemy as sa

from selfheal.audit.canonical import (
    GENESIS_HASH,
    DocumentBytes,
    PayloadError,
    canonical_json,
    normalize,
)
from selfheal.audit.redact import redact, redact_text
from selfheal.triage.db import as_engine
from selfheal.triage.schema import UTCDateTime

# Well-known actions; the set is open (dotted names such as "gateway.rule.apply" are fine).
ACTIONS = (
    "detection",
    "decision",
    "approval",
    "rejection",
    "sandbox_result",
    "mitigation",
    "mitigation_removed",
    "traffic_change",
    "promotion",
    "rollback",
    "rescan",
    "finding_status",
    "audit_verify",
)
_ACTION_RE = re.compile(r"^[a-z][a-z0-9_.\-]{0,63}$")
# Arbitrary, fixed: every writer of this database must use the same key.
ADVISORY_LOCK_KEY = 0x5E1F_A0D1_7000_0001
APPEND_RETRIES = 50
MAX_PAYLOAD_BYTES = 256 * 1024

metadata = sa.MetaData()
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Mirrors the Alembic revision 0002_audit_log (the migration is the deployed truth).
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", BigId, primary_key=True, autoincrement=False),
    sa.Column("ts", UTCDateTime(), nullable=False),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("subject", sa.String(256)),
    sa.Column("idempotency_key", sa.String(256), unique=True),
    # Plain json (not jsonb) on PostgreSQL: it keeps the text as written, so what
    # the verifier reads back is exactly what was hashed (jsonb rewrites numbers).
    sa.Column("payload", sa.JSON(), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
    sa.Index("ix_audit_log_subject", "subject"),
    sa.Index("ix_audit_log_action", "action"),
)


class AuditError(RuntimeError):
    """An entry could not be appended (bad arguments or the chain head kept moving)."""


@dataclass(frozen=True)
class NewEntry:
    """What a caller records; seq, ts and the hashes are assigned on append."""

    actor: str
    action: str
    subject: str | None = None
    payload: Mapping[str, Any] | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    ts: datetime
    actor: str
    action: str
    subject: str | None
    payload: dict[str, Any]
    prev_hash: str
    hash: str
    idempotency_key: str | None = None


def subject(kind: str, ident: object) -> str:
    """The subject convention: ``finding:42``, ``patch:p-17``, ``service:orders``."""
    return f"{kind}:{ident}"


@dataclass(frozen=True)
class _Prepared:
    entry: NewEntry
    payload: dict[str, Any]
    payload_json: bytes


def _prepare(e: NewEntry) -> _Prepared:
    """Validate, normalize and redact one entry (outside the lock: it is the CPU-heavy part)."""
    if not e.actor or len(e.actor) > 256:
        raise AuditError(f"actor must be 1-256 characters, got {e.actor!r:.80}")
    if not _ACTION_RE.match(e.action):
        raise AuditError(f"action {e.action!r:.80} must match {_ACTION_RE.pattern}")
    for name in ("subject", "idempotency_key"):
        v = getattr(e, name)
        if v is not None and (not v or len(v) > 256):
            raise AuditError(f"{name} must be 1-256 characters or None, got {v!r:.80}")
    raw = {} if e.payload is None else e.payload
    if not isinstance(raw, Mapping):
        raise AuditError(f"payload must be a JSON object (mapping), got {type(raw).__name__}")
    try:
        payload = redact(normalize(raw))
    except PayloadError as err:
        raise AuditError(f"{e.action}: {err}") from err
    payload_json = canonical_json(payload)
    if len(payload_json) > MAX_PAYLOAD_BYTES:
        raise AuditError(
            f"{e.action}: payload is {len(payload_json)} bytes after redaction, limit {MAX_PAYLOAD_BYTES}"
        )
    # Text columns get the same cleaning as payload strings (no NUL: PostgreSQL refuses it in text).
    actor = normalize(redact_text(e.actor))
    subj = None if e.subject is None else normalize(e.subject)
    key = None if e.idempotency_key is None else normalize(e.idempotency_key)
    return _Prepared(NewEntry(actor, e.action, subj, payload, key), payload, payload_json)


def _row_to_entry(row: Any) -> AuditEntry:
    m = row._mapping
    return AuditEntry(
        seq=m["seq"],
        ts=m["ts"],
        actor=m["actor"],
        action=m["action"],
        subject=m["subject"],
        payload=m["payload"],
        prev_hash=m["prev_hash"],
        hash=m["hash"],
        idempotency_key=m["idempotency_key"],
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _append_locked(conn: sa.Connection, prepared: list[_Prepared]) -> list[AuditEntry]:
    """Read the head and insert after it; the caller holds the transaction."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)))
    keys = [p.entry.idempotency_key for p in prepared if p.entry.idempotency_key]
    existing: dict[str, AuditEntry] = {}
    if keys:
        rows = conn.execute(sa.select(audit_log).where(audit_log.c.idempotency_key.in_(keys)))
        existing = {r.idempotency_key: _row_to_entry(r) for r in rows}
    head = conn.execute(
        sa.select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
    ).first()
    seq, prev = (head.seq, head.hash) if head else (0, GENESIS_HASH)
    out: list[AuditEntry] = []
    new_rows: list[dict[str, Any]] = []
    ts = _now()
    for p in prepared:
        e = p.entry
        if e.idempotency_key and e.idempotency_key in existing:
            out.append(existing[e.idempotency_key])  # already recorded: a retried task writes nothing twice
            continue
        seq += 1
        doc = DocumentBytes(
            ts=ts,
            actor=e.actor,
            action=e.action,
            subject=e.subject,
            payload_json=p.payload_json,
            idempotency_key=e.idempotency_key,
        )
        h = doc.hash(prev, seq)
        entry = AuditEntry(seq, ts, e.actor, e.action, e.subject, p.payload, prev, h, e.idempotency_key)
        new_rows.append(
            {
                "seq": seq,
                "ts": ts,
                "actor": e.actor,
                "action": e.action,
                "subject": e.subject,
                "idempotency_key": e.idempotency_key,
                "payload": p.payload,
                "prev_hash": prev,
                "hash": h,
            }
        )
        if e.idempotency_key:
            existing[e.idempotency_key] = entry
        out.append(entry)
        prev = h
    if new_rows:
        conn.execute(sa.insert(audit_log), new_rows)
    return out


def append_many(
    target: sa.Engine | sa.Connection | str | None, entries: Sequence[NewEntry]
) -> list[AuditEntry]:
    """Append ``entries`` in order as one atomic batch; returns them with seq and hashes.

    ``target`` is an Engine or URL (own transaction, committed here, retried
    when another writer won the race) or a Connection (runs inside the
    caller's transaction, so the entries commit or roll back with the
    caller's own changes; the advisory lock is held until that commit).
    An entry whose ``idempotency_key`` is already in the ledger is not
    written again: the stored entry is returned instead.
    """
    prepared = [_prepare(e) for e in entries]
    if not prepared:
        return []
    if isinstance(target, sa.Connection):
        return _append_locked(target, prepared)
    engine, owned = as_engine(target)
    try:
        for attempt in range(APPEND_RETRIES):
            try:
                with engine.begin() as conn:
                    return _append_locked(conn, prepared)
            except sa.exc.IntegrityError:
                # Another writer appended between our head read and insert (SQLite),
                # or wrote the same idempotency key: re-read the head and try again.
                time.sleep(min(0.001 * 2**attempt, 0.05))
        raise AuditError(f"could not append after {APPEND_RETRIES} attempts: the chain head kept moving")
    finally:
        if owned:
            engine.dispose()


def append(
    target: sa.Engine | sa.Connection | str | None,
    *,
    actor: str,
    action: str,
    subject: str | None = None,
    payload: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> AuditEntry:
    """Append one entry (payload redacted before hashing); see ``append_many``."""
    return append_many(target, [NewEntry(actor, action, subject, payload, idempotency_key)])[0]


def head(target: sa.Engine | sa.Connection | str | None) -> AuditEntry | None:
    """The newest entry, or None for an empty ledger."""
    q = sa.select(audit_log).order_by(audit_log.c.seq.desc()).limit(1)
    if isinstance(target, sa.Connection):
        row = target.execute(q).first()
        return _row_to_entry(row) if row else None
    engine, owned = as_engine(target)
    try:
        with engine.connect() as conn:
            row = conn.execute(q).first()
        return _row_to_entry(row) if row else None
    finally:
        if owned:
            engine.dispose()


def entries(
    target: sa.Engine | str | None,
    *,
    subject: str | None = None,
    action: str | None = None,
    after_seq: int = 0,
    limit: int = 100,
) -> list[AuditEntry]:
    """Entries in chain order, optionally for one subject or action (for the UI and reports)."""
    q = sa.select(audit_log).where(audit_log.c.seq > after_seq).order_by(audit_log.c.seq).limit(limit)
    if subject is not None:
        q = q.where(audit_log.c.subject == subject)
    if action is not None:
        q = q.where(audit_log.c.action == action)
    engine, owned = as_engine(target)
    try:
        with engine.connect() as conn:
            return [_row_to_entry(r) for r in conn.execute(q)]
    finally:
        if owned:
            engine.dispose()


# --------------------------------------------------------------------- verify

BreakKind = Literal["modified", "deleted", "inserted", "reordered"]


@dataclass(frozen=True)
class Break:
    """One place where the chain is not what was written.

    ``seq`` is the stored position of the offending entry (for ``deleted``: the
    first missing seq); ``expected``/``found`` are the hash the chain implies
    and the hash stored there.
    """

    kind: BreakKind
    seq: int
    expected: str
    found: str
    detail: str

    def describe(self) -> str:
        return f"{self.kind} at seq {self.seq}: {self.detail} (expected {self.expected}, found {self.found})"


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    count: int
    head_seq: int | None
    head_hash: str | None
    breaks: tuple[Break, ...] = ()
    truncated: bool = False  # more breaks existed than were listed
    seconds: float = 0.0

    @property
    def first_break(self) -> Break | None:
        return self.breaks[0] if self.breaks else None

    def summary(self) -> str:
        if self.ok:
            return f"OK: {self.count} entries, head seq {self.head_seq} hash {self.head_hash or GENESIS_HASH}"
        more = " (more not listed)" if self.truncated else ""
        lines = [f"BROKEN: {len(self.breaks)} break(s){more} in {self.count} entries"]
        lines += [f"  {b.describe()}" for b in self.breaks]
        return "\n".join(lines)


@dataclass
class _Row:
    seq: int
    prev_hash: str
    hash: str
    written: int | None  # the seq its hash verifies under (None: content changed)


@dataclass
class _Region:
    """Adjacent rows whose hashes verify under a different seq than where they are stored."""

    start: int
    end: int
    runs: list[tuple[int, int, int]] = field(default_factory=list)  # (start, end, stored - written)
    first_prev: str = ""
    first_hash: str = ""


class _Walker:
    """Streaming chain check; memory is O(breaks), not O(rows). See ``verify`` for the rules."""

    WINDOW = 16

    def __init__(self, max_breaks: int) -> None:
        self.max_breaks = max_breaks
        self.breaks: list[Break] = []
        self.regions: list[_Region] = []
        self.region: _Region | None = None
        self.p = _Row(0, "", GENESIS_HASH, 0)
        self.pp: _Row | None = None
        self.offset = 0
        self.count = 0

    def full(self) -> bool:
        return len(self.breaks) + len(self.regions) >= self.max_breaks

    def feed(self, m: Mapping[str, Any]) -> None:
        self.count += 1
        seq = m["seq"]
        try:
            doc_hash = _SeqHasher(m)
        except (ValueError, TypeError, AttributeError, rfc8785.CanonicalizationError) as err:
            # A tampered row may hold values no writer produces (huge ints, a non-object payload).
            self._close_region()
            self.breaks.append(
                Break("modified", seq, "-", str(m["hash"]), f"entry cannot be canonicalized: {err}")
            )
            self.pp, self.p = self.p, _Row(seq, str(m["prev_hash"]), str(m["hash"]), None)
            return
        # The seq this row's hash verifies under: normally the expected one (one
        # hash), else its stored seq, else a nearby seq (a moved row).
        stored_hash = m["hash"]
        written: int | None = seq - self.offset
        if doc_hash(written) != stored_hash:
            written = None
            if not self.full():
                for cand in (seq, *range(seq - self.WINDOW, seq + self.WINDOW + 1)):
                    if cand >= 1 and cand != seq - self.offset and doc_hash(cand) == stored_hash:
                        written = cand
                        break
        r = _Row(seq, m["prev_hash"], m["hash"], written)
        if written is None:
            self._close_region()
            self.breaks.append(
                Break(
                    "modified", seq, doc_hash(seq), m["hash"], "entry content does not match its stored hash"
                )
            )
        else:
            d = seq - written
            self.offset = d
            if d:
                self._extend_region(r, d)
            else:
                self._close_region()
                self._check_links(r)
        self.pp, self.p = self.p, r

    def _check_links(self, r: _Row) -> None:
        p, pp = self.p, self.pp
        if p.written is not None and p.written != p.seq:
            return  # after a moved region: the region verdict covers the link
        if r.seq > p.seq + 1:
            missing = f"{p.seq + 1}" if r.seq == p.seq + 2 else f"{p.seq + 1}..{r.seq - 1}"
            self.breaks.append(
                Break(
                    "deleted",
                    p.seq + 1,
                    p.hash,
                    r.prev_hash,
                    f"entries {missing} are missing; entry {r.seq} links to a hash not in the chain"
                    if r.prev_hash != p.hash
                    else f"entries {missing} are missing",
                )
            )
        elif r.prev_hash != p.hash:
            if pp is not None and r.prev_hash == pp.hash:
                self.breaks.append(
                    Break(
                        "inserted",
                        p.seq,
                        r.prev_hash,
                        p.hash,
                        f"entry {p.seq} is not part of the chain: entry {r.seq} links to entry {pp.seq}",
                    )
                )
            else:
                self.breaks.append(
                    Break(
                        "modified",
                        p.seq,
                        r.prev_hash,
                        p.hash,
                        f"entry {r.seq} does not link to entry {p.seq}: entry {p.seq} was rewritten "
                        f"with a recomputed hash, or entry {r.seq} was forged",
                    )
                )

    def _extend_region(self, r: _Row, d: int) -> None:
        reg = self.region
        if reg is None or r.seq != reg.end + 1:
            self._close_region()
            reg = self.region = _Region(r.seq, r.seq, first_prev=r.prev_hash, first_hash=r.hash)
            reg.runs.append((r.seq, r.seq, d))
            return
        reg.end = r.seq
        s, _e, rd = reg.runs[-1]
        if rd == d:
            reg.runs[-1] = (s, r.seq, d)
        else:
            reg.runs.append((r.seq, r.seq, d))

    def _close_region(self) -> None:
        if self.region is not None:
            self.regions.append(self.region)
            self.region = None

    def finish(self) -> list[Break]:
        """Classify moved regions now that all of them are known, and merge overlapping verdicts."""
        self._close_region()
        stored = sorted((g.start, g.end) for g in self.regions)
        out = list(self.breaks)
        for g in self.regions:
            written = [(s - d, e - d) for s, e, d in g.runs]
            moves = ", ".join(
                f"{s}..{e} written as {s - d}..{e - d}" if s != e else f"{s} written as {s - d}"
                for s, e, d in g.runs[:4]
            )
            ds = {d for _, _, d in g.runs}
            if all(_covered(iv, stored) for iv in written):
                out.append(
                    Break("reordered", g.start, "-", g.first_hash, f"entries were moved: stored {moves}")
                )
            elif all(d > 0 for d in ds):
                n = min(ds)
                first = g.start - n
                out.append(
                    Break(
                        "inserted",
                        first,
                        g.first_prev,
                        g.first_hash,
                        f"{n} entr{'y' if n == 1 else 'ies'} at seq {first}..{g.start - 1} "
                        f"not in the original chain; later entries renumbered (stored {moves})",
                    )
                )
            elif all(d < 0 for d in ds):
                n = -max(ds)
                out.append(
                    Break(
                        "deleted",
                        g.start,
                        g.first_prev,
                        g.first_hash,
                        f"{n} entr{'y' if n == 1 else 'ies'} written as seq {g.start}..{g.start + n - 1} "
                        f"deleted and later entries renumbered (stored {moves})",
                    )
                )
            else:
                out.append(
                    Break("reordered", g.start, "-", g.first_hash, f"entries were moved: stored {moves}")
                )
        # A forged row usually also fails its own hash or link: report it once, as inserted.
        inserted = {b.seq for b in out if b.kind == "inserted"}
        out = [b for b in out if not (b.kind == "modified" and (b.seq in inserted or b.seq + 1 in inserted))]
        seen: set[tuple[str, int]] = set()
        unique = []
        for b in sorted(out, key=lambda b: (b.seq, b.kind)):
            if (b.kind, b.seq) not in seen:
                seen.add((b.kind, b.seq))
                unique.append(b)
        return unique


def _covered(iv: tuple[int, int], intervals: list[tuple[int, int]]) -> bool:
    lo, hi = iv
    for s, e in intervals:
        if s <= lo <= e:
            if hi <= e:
                return True
            lo = e + 1
    return False


class _SeqHasher:
    """Hash of a stored row under any candidate seq, canonicalizing its payload once."""

    __slots__ = ("doc", "prev_hash")

    def __init__(self, m: Mapping[str, Any]) -> None:
        self.prev_hash = m["prev_hash"]
        self.doc = DocumentBytes(
            ts=m["ts"],
            actor=m["actor"],
            action=m["action"],
            subject=m["subject"],
            payload_json=canonical_json(m["payload"]),
            idempotency_key=m["idempotency_key"],
        )

    def __call__(self, seq: int) -> str:
        return self.doc.hash(self.prev_hash, seq)


def _batches(conn: sa.Connection, upto: int, batch_size: int) -> Iterator[Sequence[Any]]:
    """Keyset pagination: each batch is one short query, memory bounded by batch_size."""
    last = -(2**62)
    while True:
        rows = conn.execute(
            sa.select(audit_log)
            .where(audit_log.c.seq > last, audit_log.c.seq <= upto)
            .order_by(audit_log.c.seq)
            .limit(batch_size)
        ).all()
        if not rows:
            return
        yield rows
        last = rows[-1].seq


def verify(
    target: sa.Engine | str | None,
    *,
    batch_size: int = 1000,
    max_breaks: int = 100,
    anchor: tuple[int, str] | None = None,
) -> VerifyResult:
    """Walk the chain from the first entry to the head (as of the start) and say where it breaks.

    Per entry, in seq order: its hash must verify over its own content and
    seq (else ``modified``, or ``reordered`` when it verifies under another
    seq), its seq must follow the previous one (a gap is ``deleted``) and its
    ``prev_hash`` must be the previous entry's hash (a link that skips the
    previous entry means that entry was ``inserted``; any other mismatch
    means the previous entry was rewritten with a recomputed hash). Runs of
    entries shifted to other seqs are judged together: a permutation is
    ``reordered``, a shift up ``inserted``, a shift down ``deleted``.
    ``anchor=(seq, hash)`` is a head recorded earlier (e.g. by the daily DAG):
    the entry at that seq must still exist with that hash, which catches
    the newest entries being cut off. Streaming: memory is bounded by
    ``batch_size`` rows whatever the ledger size.
    """
    t0 = time.perf_counter()
    engine, owned = as_engine(target)
    walker = _Walker(max_breaks)
    anchor_seen: str | None = None
    try:
        with engine.connect() as conn:
            upto = conn.execute(sa.select(sa.func.max(audit_log.c.seq))).scalar()
            if upto is not None:
                for rows in _batches(conn, upto, batch_size):
                    for row in rows:
                        m = row._mapping
                        walker.feed(m)
                        if anchor is not None and m["seq"] == anchor[0]:
                            anchor_seen = m["hash"]
                    if walker.full():
                        break
    finally:
        if owned:
            engine.dispose()
    breaks = walker.finish()
    if anchor is not None:
        aseq, ahash = anchor
        if anchor_seen is None:
            last = walker.p.seq
            breaks.append(
                Break(
                    "deleted",
                    aseq,
                    ahash,
                    "-",
                    f"anchored entry {aseq} is gone (the ledger ends at seq {last}): newest entries deleted",
                )
            )
        elif anchor_seen != ahash:
            breaks.append(
                Break("modified", aseq, ahash, anchor_seen, f"entry {aseq} differs from its anchored hash")
            )
    truncated = len(breaks) >= max_breaks
    head_seq = walker.p.seq if walker.count else None
    return VerifyResult(
        ok=not breaks,
        count=walker.count,
        head_seq=head_seq,
        head_hash=walker.p.hash if walker.count else None,
        breaks=tuple(breaks[:max_breaks]),
        truncated=truncated,
        seconds=time.perf_counter() - t0,
    )

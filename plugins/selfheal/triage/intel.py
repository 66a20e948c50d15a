"""Threat-intelligence loaders: CISA KEV and FIRST EPSS, from a file or a URL, into the database.

* KEV: CISA's JSON feed
  (https://www.cisa.gov/sites/default/files/feeds/known_exploited_vulnerabilities.json):
  ``{"catalogVersion", "dateReleased", "count", "vulnerabilities": [{"cveID",
  "vendorProject", "product", "vulnerabilityName", "dateAdded", "dueDate",
  "knownRansomwareCampaignUse", ...}]}``.
* EPSS: FIRST's daily CSV (https://epss.cyentia.com/epss_scores-current.csv.gz),
  a ``#model_version:...,score_date:...`` comment line then ``cve,epss,percentile``;
  or the API's JSON (https://api.first.org/data/v1/epss):
  ``{"status": "OK", "data": [{"cve", "epss", "percentile", "date"}]}`` with
  numbers as strings. Gzip is recognized by its magic bytes.

Both are upserts keyed by CVE: a partial document (an API page) adds to what
is there, a full one refreshes it; only changed rows are rewritten. The feeds
are external input: sizes are bounded, and a document of the wrong shape is a
one-line ``IntelError`` naming the source; single malformed entries are
skipped and counted, not fatal (one bad row must not block the other 250,000).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from selfheal.triage.db import as_engine
from selfheal.triage.schema import epss as epss_table
from selfheal.triage.schema import kev as kev_table

MAX_BYTES = 256 * 1024 * 1024  # the full EPSS CSV is ~10 MB, the KEV feed ~1.5 MB
TIMEOUT_S = 60.0
_CVE_RE = re.compile(r"^CVE-\d{4}-\d{4,}$")


class IntelError(ValueError):
    """A feed could not be read or is not in the expected format (names the source)."""


@dataclass(slots=True)
class LoadResult:
    source: str
    loaded: int  # entries read from the feed
    skipped: int  # malformed entries ignored
    changed: int  # rows inserted or updated


# ----------------------------------------------------------------------------- reading


def read_source(source: str | Path, *, max_bytes: int = MAX_BYTES, timeout: float = TIMEOUT_S) -> bytes:
    """Bytes of a local file or an http(s) URL, bounded, gunzipped when gzip."""
    src = str(source)
    if src.startswith(("http://", "https://")):
        headers = {"User-Agent": "selfheal-intel/1", "Accept-Encoding": "identity"}
        req = urllib.request.Request(src, headers=headers)  # noqa: S310 - http(s) only
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - http(s) only, checked above
                data = resp.read(max_bytes + 1)
        except OSError as exc:  # URLError, HTTPError and timeouts are all OSErrors
            raise IntelError(f"{src}: cannot download: {exc}") from None
    elif "://" in src and not src.startswith("file://"):
        raise IntelError(f"{src}: unsupported URL scheme (use a file path, file://, http:// or https://)")
    else:
        path = Path(src.removeprefix("file://"))
        try:
            with path.open("rb") as fh:
                data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise IntelError(f"{src}: cannot read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise IntelError(f"{src}: larger than the limit of {max_bytes} bytes")
    if data[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
                data = gz.read(max_bytes + 1)
        except (OSError, EOFError) as exc:
            raise IntelError(f"{src}: corrupt gzip data: {exc}") from None
        if len(data) > max_bytes:
            raise IntelError(f"{src}: decompresses to more than {max_bytes} bytes")
    return data


def _json(data: bytes, src: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise IntelError(f"{src}: not valid JSON: {exc}") from None


def _date(value: Any) -> date | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _prob(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if 0.0 <= v <= 1.0 else None  # also rejects NaN


def parse_kev(data: bytes, source: str = "<kev>") -> tuple[list[dict[str, Any]], int]:
    """KEV feed -> rows for the ``kev`` table, and the number of entries skipped."""
    doc = _json(data, source)
    if not isinstance(doc, dict) or not isinstance(doc.get("vulnerabilities"), list):
        raise IntelError(f"{source}: not a CISA KEV feed (expected an object with a 'vulnerabilities' list)")
    out: dict[str, dict[str, Any]] = {}
    skipped = 0
    for v in doc["vulnerabilities"]:
        cve = v.get("cveID") if isinstance(v, dict) else None
        if not isinstance(cve, str) or not _CVE_RE.match(cve.strip().upper()):
            skipped += 1
            continue
        ransomware = v.get("knownRansomwareCampaignUse")
        out[cve.strip().upper()] = {
            "cve_id": cve.strip().upper(),
            "vendor_project": _text(v.get("vendorProject")),
            "product": _text(v.get("product")),
            "vulnerability_name": _text(v.get("vulnerabilityName")),
            "date_added": _date(v.get("dateAdded")),
            "due_date": _date(v.get("dueDate")),
            "known_ransomware": None if not isinstance(ransomware, str) else ransomware.strip().lower() == "known",
        }
    return list(out.values()), skipped


def _text(value: Any, limit: int = 1024) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def parse_epss(data: bytes, source: str = "<epss>") -> tuple[list[dict[str, Any]], int]:
    """EPSS CSV or API JSON -> rows for the ``epss`` table, and the number skipped."""
    head = data.lstrip()[:1]
    if head in (b"{", b"["):
        return _epss_json(data, source)
    return _epss_csv(data, source)


def _epss_json(data: bytes, source: str) -> tuple[list[dict[str, Any]], int]:
    doc = _json(data, source)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise IntelError(f"{source}: not an EPSS API response (expected an object with a 'data' list)")
    model = doc.get("model_version") if isinstance(doc.get("model_version"), str) else None
    rows: dict[str, dict[str, Any]] = {}
    skipped = 0
    for item in doc["data"]:
        row = (
            _epss_row(item.get("cve"), item.get("epss"), item.get("percentile"), item.get("date"), model)
            if (isinstance(item, dict))
            else None
        )
        if row is None:
            skipped += 1
        else:
            rows[row["cve_id"]] = row
    return list(rows.values()), skipped


def _epss_row(cve: Any, score: Any, pct: Any, day: Any, model: str | None) -> dict[str, Any] | None:
    if not isinstance(cve, str):
        return None
    cve = cve.strip().upper()
    p = _prob(score)
    if not _CVE_RE.match(cve) or p is None:
        return None
    return {"cve_id": cve, "epss": p, "percentile": _prob(pct), "score_date": _date(day), "model_version": model}


def _epss_csv(data: bytes, source: str) -> tuple[list[dict[str, Any]], int]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IntelError(f"{source}: not UTF-8 text: {exc}") from None
    lines = text.splitlines()
    model = day = None
    start = 0
    if lines and lines[0].startswith("#"):
        # "#model_version:v2025.03.14,score_date:2025-06-01T12:55:00Z"
        for part in lines[0][1:].split(","):
            k, _, v = part.partition(":")
            if k.strip() == "model_version":
                model = v.strip() or None
            elif k.strip() == "score_date":
                day = v.strip()
        start = 1
    reader = csv.reader(lines[start:])
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header[:3]] != ["cve", "epss", "percentile"]:
        shown = ",".join(header or [])[:80]
        raise IntelError(f"{source}: not an EPSS CSV (expected the header cve,epss,percentile, got {shown!r})")
    rows: dict[str, dict[str, Any]] = {}
    skipped = 0
    for rec in reader:
        row = _epss_row(rec[0], rec[1], rec[2], day, model) if len(rec) >= 3 else None
        if row is None:
            skipped += 1
        else:
            rows[row["cve_id"]] = row
    return list(rows.values()), skipped


# ----------------------------------------------------------------------------- storing


def _upsert(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], now: datetime) -> int:
    """Insert or update by primary key; rows whose values did not change are not rewritten."""
    if not rows:
        return 0
    cols = [c.name for c in table.columns if c.name != "loaded_at"]
    key = table.primary_key.columns.keys()[0]
    data_cols = [c for c in cols if c != key]
    if conn.dialect.name == "postgresql":
        tmp = f"_selfheal_{table.name}_load"
        raw = conn.connection.driver_connection
        with raw.cursor() as cur:
            cur.execute(
                f"CREATE TEMP TABLE {tmp} ON COMMIT DROP AS SELECT {', '.join(cols)} FROM {table.name} WITH NO DATA"
            )
            with cur.copy(f"COPY {tmp} ({', '.join(cols)}) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row([r[c] for c in cols])
            changed = " OR ".join(f"t.{c} IS DISTINCT FROM EXCLUDED.{c}" for c in data_cols)
            cur.execute(
                f"INSERT INTO {table.name} AS t ({', '.join(cols)}, loaded_at) "
                f"SELECT {', '.join(cols)}, %s FROM {tmp} "
                f"ON CONFLICT ({key}) DO UPDATE SET "
                + ", ".join(f"{c} = EXCLUDED.{c}" for c in (*data_cols, "loaded_at"))
                + f" WHERE {changed}",
                (now,),
            )
            n = cur.rowcount
            cur.execute(f"DROP TABLE {tmp}")
        return n
    from sqlalchemy.dialects import sqlite

    total = 0
    for i in range(0, len(rows), 5000):
        stmt = sqlite.insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=[key],
            set_={c: stmt.excluded[c] for c in (*data_cols, "loaded_at")},
            where=sa.or_(*(table.c[c].is_distinct_from(stmt.excluded[c]) for c in data_cols)),
        )
        res = conn.execute(stmt, [{**r, "loaded_at": now} for r in rows[i : i + 5000]])
        total += max(res.rowcount, 0)
    return total


def _load(
    engine: sa.Engine | str | None,
    source: str | Path,
    table: sa.Table,
    parse: Any,
    now: datetime | None,
    **read_kwargs: Any,
) -> LoadResult:
    src = str(source)
    rows, skipped = parse(read_source(src, **read_kwargs), src)
    eng, owned = as_engine(engine)
    try:
        with eng.begin() as conn:
            changed = _upsert(conn, table, rows, now or datetime.now(UTC))
    finally:
        if owned:
            eng.dispose()
    return LoadResult(src, len(rows), skipped, changed)


def load_kev(
    engine: sa.Engine | str | None, source: str | Path, *, now: datetime | None = None, **read_kwargs: Any
) -> LoadResult:
    """Load CISA's KEV catalog (JSON feed) from a file or URL into the ``kev`` table."""
    return _load(engine, source, kev_table, parse_kev, now, **read_kwargs)


def load_epss(
    engine: sa.Engine | str | None, source: str | Path, *, now: datetime | None = None, **read_kwargs: Any
) -> LoadResult:
    """Load FIRST EPSS scores (CSV, optionally gzipped, or API JSON) into the ``epss`` table."""
    return _load(engine, source, epss_table, parse_epss, now, **read_kwargs)


def kev_ids(conn: sa.Connection, cves: Iterable[str] | None = None) -> set[str]:
    """CVE ids in the KEV table (optionally restricted to ``cves``)."""
    q = sa.select(kev_table.c.cve_id)
    if cves is not None:
        q = q.where(kev_table.c.cve_id.in_(list(cves)))
    return set(conn.execute(q).scalars())

"""Prioritization: a 0-100 priority, a CISA SSVC decision and an SLA due date per finding.

``score(frame, services)`` is pure pandas/numpy and vectorized: per row it only
does array arithmetic. Work that is per *distinct value* (parsing a CVSS
vector with the ``cvss`` library, looking a service up in the catalog) is done
once per distinct value and broadcast with ``pd.factorize`` codes, so a
million findings with a few thousand distinct vectors parse a few thousand
vectors. ``prioritize(engine, ...)`` reads the active findings, joins the KEV
and EPSS tables through the findings' CVEs, scores, and writes back only the
rows whose result changed (Postgres: COPY into a temp table + one UPDATE ... FROM).

SSVC
----
The decision follows CISA's SSVC guide ("Stakeholder-Specific Vulnerability
Categorization Guide", CISA, November 2022,
https://www.cisa.gov/stakeholder-specific-vulnerability-categorization-ssvc),
whose tree is published as a table by CERT/CC in the SSVC project
(github.com/CERTCC/SSVC, ``data/csv/cisa/cisa_coordinator_2_0_3.csv``,
"CISA Levels"). ``SSVC_TABLE`` below is that table, row for row. The decision
points are filled in from what the triage table knows:

* **Exploitation** (none / poc / active): ``active`` when the CVE is in CISA's
  KEV catalog (or a CVSS v4 vector says ``E:A``); ``poc`` when the scanner
  reports an available exploit, the EPSS probability is at least
  ``epss_threshold`` (default 0.1, i.e. a 10% chance of exploitation activity
  in 30 days, roughly the top few percent of CVEs), or the vector's exploit
  maturity says proof of concept / functional; else ``none``.
* **Automatable** (no / yes): CERT's reading of the CVSS base metrics (network
  attack vector, low complexity, no privileges, no user interaction: the
  first steps of the kill chain can be scripted), or a web finding on an
  internet-facing service that needs no privileges (DAST found it
  unauthenticated over the network).
* **Technical impact** (partial / total): CERT/CC's CVSS mapping
  (``cvssv4_to_technical_impact_1_0_0.csv``: total when confidentiality and
  integrity are both high, or when one is high and the other at least low
  with no privileges required); applied to v3 (C/I/PR) and v2 (C/I/Au)
  vectors alike. Without a vector: total for critical severity, else partial.
* **Mission and well-being** (low / medium / high): from the service's tier in
  the catalog (``tier_mission``: critical -> high, high and medium -> medium,
  low -> low), the closest the catalog gets to CISA's mission prevalence and
  public well-being impact.

Priority
--------
A weighted sum, each part in 0..1, times 100: CVSS base score / 10 (scanner
score, else the vector's, else a default for the severity) 0.35; threat
(KEV 1, exploit available 0.7, EPSS scaled to 0.7 at the threshold) 0.25; asset
(tier weight 0.7 + log-scaled traffic share 0.3) 0.15; SSVC decision (Track
0.1, Track* 0.4, Attend 0.7, Act 1) 0.15; SLA clock (age / SLA days, capped at
twice the SLA) 0.10. A finding with a mitigation in place (virtual patch)
gets half. SLA due = first seen + SLA days for the severity (Critical 7,
High 30, Medium 90, Low 120, configurable; info: none).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import sqlalchemy as sa
from cvss import CVSS2, CVSS3, CVSS4
from cvss.exceptions import CVSSError

from selfheal.findings.model import SEVERITIES
from selfheal.triage import lifecycle

DECISIONS: tuple[str, ...] = ("Track", "Track*", "Attend", "Act")
EXPLOITATION: tuple[str, ...] = ("none", "poc", "active")
AUTOMATABLE: tuple[str, ...] = ("no", "yes")
TECHNICAL_IMPACT: tuple[str, ...] = ("partial", "total")
MISSION: tuple[str, ...] = ("low", "medium", "high")

# CISA SSVC decision table (CERTCC/SSVC data/csv/cisa/cisa_coordinator_2_0_3.csv):
# exploitation, automatable, technical impact, mission & well-being -> decision.
SSVC_TABLE = """
none   no  partial low    Track
none   no  partial medium Track
none   no  partial high   Track
none   no  total   low    Track
none   no  total   medium Track
none   no  total   high   Track*
none   yes partial low    Track
none   yes partial medium Track
none   yes partial high   Attend
none   yes total   low    Track
none   yes total   medium Track
none   yes total   high   Attend
poc    no  partial low    Track
poc    no  partial medium Track
poc    no  partial high   Track*
poc    no  total   low    Track
poc    no  total   medium Track*
poc    no  total   high   Attend
poc    yes partial low    Track
poc    yes partial medium Track
poc    yes partial high   Attend
poc    yes total   low    Track
poc    yes total   medium Track*
poc    yes total   high   Attend
active no  partial low    Track
active no  partial medium Track
active no  partial high   Attend
active no  total   low    Track
active no  total   medium Attend
active no  total   high   Act
active yes partial low    Attend
active yes partial medium Attend
active yes partial high   Act
active yes total   low    Attend
active yes total   medium Act
active yes total   high   Act
"""


def _ssvc_codes() -> np.ndarray:
    """Decision codes indexed by ``((e * 2 + a) * 2 + t) * 3 + m``."""
    codes = np.full(36, -1, dtype=np.int8)
    for line in SSVC_TABLE.strip().splitlines():
        e, a, t, m, d = line.split()
        idx = (EXPLOITATION.index(e) * 2 + AUTOMATABLE.index(a)) * 2 + TECHNICAL_IMPACT.index(t)
        codes[idx * 3 + MISSION.index(m)] = DECISIONS.index(d)
    assert (codes >= 0).all(), "SSVC table incomplete"
    return codes


SSVC_CODES = _ssvc_codes()


def ssvc_decision(exploitation: str, automatable: str, technical_impact: str, mission: str) -> str:
    """The SSVC decision for one set of decision-point values (table lookup)."""
    idx = (
        (EXPLOITATION.index(exploitation) * 2 + AUTOMATABLE.index(automatable)) * 2
        + TECHNICAL_IMPACT.index(technical_impact)
    ) * 3 + MISSION.index(mission)
    return DECISIONS[SSVC_CODES[idx]]


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SlaPolicy:
    """Days from first sight to the remediation deadline, per severity (None: no SLA)."""

    critical: int | None = 7
    high: int | None = 30
    medium: int | None = 90
    low: int | None = 120
    info: int | None = None

    def days(self) -> np.ndarray:
        """SLA days in SEVERITIES order (NaN where there is none)."""
        return np.array([math.nan if getattr(self, s) is None else float(getattr(self, s)) for s in SEVERITIES])


@dataclass(frozen=True)
class PriorityConfig:
    sla: SlaPolicy = field(default_factory=SlaPolicy)
    epss_threshold: float = 0.1
    tier_mission: Mapping[str, str] = field(
        default_factory=lambda: {"critical": "high", "high": "medium", "medium": "medium", "low": "low"}
    )
    tier_weight: Mapping[str, float] = field(
        default_factory=lambda: {"critical": 1.0, "high": 0.75, "medium": 0.5, "low": 0.25}
    )
    default_tier: str = "medium"
    mitigated_factor: float = 0.5
    severity_score: Mapping[str, float] = field(
        default_factory=lambda: {"critical": 9.5, "high": 8.0, "medium": 5.5, "low": 3.0, "info": 0.0}
    )
    weights: Mapping[str, float] = field(
        default_factory=lambda: {"severity": 0.35, "threat": 0.25, "asset": 0.15, "ssvc": 0.15, "age": 0.10}
    )
    decision_weight: tuple[float, float, float, float] = (0.1, 0.4, 0.7, 1.0)


@dataclass(frozen=True)
class ServiceProfile:
    tier: str = "medium"
    traffic_rps: float = 0.0
    internet_facing: bool = True


def service_profiles(services: Any) -> dict[str, ServiceProfile]:
    """Accept a catalog (selfheal.catalog.Catalog), a mapping name -> ServiceProfile /
    dict(tier=, traffic_rps=, internet_facing=) / tier string, or None."""
    if services is None:
        return {}
    if hasattr(services, "services"):  # Catalog
        return {
            s.name: ServiceProfile(s.tier, float(s.traffic_rps), bool(s.internet_facing)) for s in services.services
        }
    out: dict[str, ServiceProfile] = {}
    for name, p in services.items():
        if isinstance(p, ServiceProfile):
            out[name] = p
        elif isinstance(p, str):
            out[name] = ServiceProfile(tier=p)
        else:
            out[name] = ServiceProfile(**dict(p))
    return out


# ----------------------------------------------------------------------------- CVSS vectors


class VectorFacts(NamedTuple):
    base: float
    automatable: bool  # AV:N, AC:L (v4 also AT:N), PR:N, UI:N
    no_privileges: bool
    total_impact: bool
    maturity: int  # 0 unknown/unproven, 1 proof of concept or functional, 2 attacked (v4 E:A)


_LEVEL = {"N": 0, "L": 1, "H": 2, "P": 1, "C": 2}  # v2 Partial/Complete on the v3 scale


def _total(pr: str, c: str, i: str) -> bool:
    """CERT/CC technical impact from PR, C and I (cvssv4_to_technical_impact_1_0_0)."""
    c_, i_ = _LEVEL.get(c, 0), _LEVEL.get(i, 0)
    if c_ == 2 and i_ == 2:
        return True
    return pr == "N" and c_ >= 1 and i_ >= 1 and (c_ == 2 or i_ == 2)


@lru_cache(maxsize=1 << 16)
def vector_facts(vector: str) -> VectorFacts | None:
    """What SSVC needs from one CVSS vector (v2, v3.x or v4.0); None if it does not parse."""
    v = vector.strip()
    try:
        if v.startswith("CVSS:4"):
            c4 = CVSS4(v)
            m = c4.metrics
            pr = m["PR"]
            auto = m["AV"] == "N" and m["AC"] == "L" and m.get("AT", "N") == "N" and pr == "N" and m["UI"] == "N"
            e = m.get("E", "X")
            return VectorFacts(
                float(c4.base_score),
                auto,
                pr == "N",
                _total(pr, m["VC"], m["VI"]),
                2 if e == "A" else 1 if e == "P" else 0,
            )
        if v.startswith("CVSS:3"):
            c3 = CVSS3(v)
            m = c3.metrics
            pr = m["PR"]
            auto = m["AV"] == "N" and m["AC"] == "L" and pr == "N" and m["UI"] == "N"
            e = m.get("E", "X")
            return VectorFacts(
                float(c3.base_score), auto, pr == "N", _total(pr, m["C"], m["I"]), 1 if e in ("P", "F", "H") else 0
            )
        c2 = CVSS2(v.removeprefix("(").removesuffix(")"))
        m = c2.metrics
        pr = {"N": "N", "S": "L", "M": "H"}.get(m["Au"], "H")
        auto = m["AV"] == "N" and m["AC"] == "L" and pr == "N"
        e = m.get("E", "ND")
        return VectorFacts(
            float(c2.base_score), auto, pr == "N", _total(pr, m["C"], m["I"]), 1 if e in ("POC", "F", "H") else 0
        )
    except (CVSSError, KeyError, ValueError, TypeError):
        return None


# ----------------------------------------------------------------------------- scoring


def _col(frame: pd.DataFrame, name: str, default: Any) -> pd.Series:
    if name in frame:
        return frame[name]
    return pd.Series(default, index=frame.index)


def _bool(s: pd.Series) -> np.ndarray:
    if s.dtype == bool:
        return s.to_numpy()
    return s.fillna(False).astype(bool).to_numpy()


def score(
    frame: pd.DataFrame,
    services: Any = None,
    *,
    config: PriorityConfig | None = None,
    now: datetime | None = None,
) -> pd.DataFrame:
    """Score findings. ``frame`` columns: severity (required), kind, service,
    cvss_vector, cvss_score, epss, kev, exploit_available, first_seen,
    mitigated_at (missing ones count as unknown). Returns a frame on the same
    index: priority, ssvc_decision, sla_due and the four SSVC decision points."""
    cfg = config or PriorityConfig()
    now_ts = pd.Timestamp(now or datetime.now(UTC))
    profiles = service_profiles(services)

    sev = pd.Categorical(frame["severity"], categories=SEVERITIES).codes.astype(np.int64)
    if (sev < 0).any():
        bad = frame["severity"][sev < 0].iloc[0]
        raise ValueError(f"unknown severity {bad!r}; expected one of {', '.join(SEVERITIES)}")

    # CVSS vectors: parse each distinct one once; code -1 (no vector) picks the trailing default.
    vcodes, vuniques = pd.factorize(_col(frame, "cvss_vector", None), use_na_sentinel=True)
    facts = [vector_facts(str(u)) for u in vuniques]
    ok = np.array([f is not None for f in facts] + [False])
    v_base = np.array([f.base if f else np.nan for f in facts] + [np.nan])[vcodes]
    v_auto = np.array([bool(f and f.automatable) for f in facts] + [False])[vcodes]
    v_nopriv = np.array([bool(f and f.no_privileges) for f in facts] + [True])[vcodes]
    v_total = np.array([bool(f and f.total_impact) for f in facts] + [False])[vcodes]
    v_mat = np.array([f.maturity if f else 0 for f in facts] + [0])[vcodes]
    has_vec = ok[vcodes]

    sev_default = np.array([cfg.severity_score[s] for s in SEVERITIES])[sev]
    cvss = pd.to_numeric(_col(frame, "cvss_score", np.nan), errors="coerce").to_numpy(dtype=float)
    base = np.where(np.isnan(cvss), np.where(np.isnan(v_base), sev_default, v_base), cvss)
    base = np.clip(base, 0.0, 10.0)

    # Services: look each distinct one up once.
    scodes, suniques = pd.factorize(_col(frame, "service", None), use_na_sentinel=True)
    default = ServiceProfile(tier=cfg.default_tier)
    prof = [profiles.get(str(u), default) for u in suniques] + [default]
    tier_w = np.array([cfg.tier_weight.get(p.tier, 0.5) for p in prof])[scodes]
    mission = np.array([MISSION.index(cfg.tier_mission.get(p.tier, "medium")) for p in prof])[scodes]
    facing = np.array([p.internet_facing for p in prof])[scodes]
    max_rps = max((p.traffic_rps for p in prof), default=0.0)
    traffic = np.array([math.log1p(p.traffic_rps) / math.log1p(max_rps) if max_rps > 0 else 0.0 for p in prof])[scodes]

    kev = _bool(_col(frame, "kev", False))
    exploit = _bool(_col(frame, "exploit_available", False))
    epss = pd.to_numeric(_col(frame, "epss", np.nan), errors="coerce").fillna(0.0).to_numpy(dtype=float)
    epss = np.clip(epss, 0.0, 1.0)
    web = (_col(frame, "kind", "") == "web").to_numpy()

    exploitation = np.where(
        kev | (v_mat == 2), 2, np.where(exploit | (epss >= cfg.epss_threshold) | (v_mat == 1), 1, 0)
    )
    automatable = (v_auto | (web & facing & v_nopriv)).astype(np.int64)
    technical = np.where(has_vec, v_total, sev == 0).astype(np.int64)
    decision = SSVC_CODES[((exploitation * 2 + automatable) * 2 + technical) * 3 + mission]

    first_seen = pd.to_datetime(_col(frame, "first_seen", now_ts), utc=True)
    age_days = ((now_ts - first_seen) / pd.Timedelta(days=1)).to_numpy(dtype=float)
    sla_days = cfg.sla.days()[sev]
    with np.errstate(invalid="ignore", divide="ignore"):
        urgency = np.where(np.isnan(sla_days), 0.0, np.clip(np.nan_to_num(age_days / sla_days), 0.0, 2.0) / 2.0)

    threat = np.maximum.reduce([kev * 1.0, exploit * 0.7, 0.7 * np.minimum(1.0, epss / cfg.epss_threshold)])
    asset = 0.7 * tier_w + 0.3 * traffic
    w = cfg.weights
    raw = (
        w["severity"] * base / 10.0
        + w["threat"] * threat
        + w["asset"] * asset
        + w["ssvc"] * np.asarray(cfg.decision_weight)[decision]
        + w["age"] * urgency
    )
    mitigated = _col(frame, "mitigated_at", None).notna().to_numpy()
    raw = np.where(mitigated, raw * cfg.mitigated_factor, raw)
    priority = np.round(np.clip(raw, 0.0, 1.0) * 100.0, 1)

    sla_due = (pd.DatetimeIndex(first_seen) + pd.to_timedelta(sla_days, unit="D")).array
    return pd.DataFrame(
        {
            "priority": priority,
            "ssvc_decision": pd.Categorical.from_codes(decision, categories=DECISIONS),
            "sla_due": sla_due,
            "exploitation": pd.Categorical.from_codes(exploitation, categories=EXPLOITATION),
            "automatable": pd.Categorical.from_codes(automatable, categories=AUTOMATABLE),
            "technical_impact": pd.Categorical.from_codes(technical, categories=TECHNICAL_IMPACT),
            "mission_wellbeing": pd.Categorical.from_codes(mission, categories=MISSION),
        },
        index=frame.index,
    )


# ----------------------------------------------------------------------------- database


@dataclass(slots=True)
class PrioritizeResult:
    rows: int  # active findings scored
    changed: int  # rows written back
    seconds: float


_READ_COLUMNS = (
    "id",
    "service",
    "kind",
    "severity",
    "cvss_vector",
    "cvss_score",
    "epss",
    "kev",
    "exploit_available",
    "cves",
    "first_seen",
    "mitigated_at",
    "priority",
    "ssvc_decision",
    "sla_due",
)


def _read_active(conn: sa.Connection) -> pd.DataFrame:
    statuses = ", ".join(f"'{s}'" for s in sorted(lifecycle.ACTIVE))
    sql = f"SELECT {', '.join(_READ_COLUMNS)} FROM findings WHERE status IN ({statuses})"
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL TimeZone = 'UTC'")
        # COPY TO + read_csv: several times faster than fetching a million rows as tuples.
        import io

        buf = io.BytesIO()
        with (
            conn.connection.driver_connection.cursor() as cur,
            cur.copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER true)") as cp,
        ):
            for chunk in cp:
                buf.write(chunk)
        buf.seek(0)
        df = pd.read_csv(
            buf,
            dtype={
                "service": "object",
                "cvss_vector": "object",
                "ssvc_decision": "object",
                "kind": "object",
                "severity": "object",
                "cves": "object",
            },
            keep_default_na=False,
            na_values=[""],
        )
        for c in ("kev", "exploit_available"):
            df[c] = df[c].map({"t": True, "f": False})
    else:
        df = pd.read_sql_query(sa.text(sql), conn)
        for c in ("kev", "exploit_available"):  # SQLite booleans are 0/1
            df[c] = df[c].map(lambda v: None if v is None or v != v else bool(v))
    for c in ("first_seen", "mitigated_at", "sla_due"):
        df[c] = pd.to_datetime(df[c], utc=True, format="ISO8601")
    for c in ("priority", "epss", "cvss_score"):  # all-NULL columns come back as object
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def _intel(conn: sa.Connection, df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per finding: the highest EPSS of its CVEs and whether any is in KEV."""
    epss_max = pd.Series(np.nan, index=df.index)
    in_kev = pd.Series(False, index=df.index)
    cves = df["cves"].fillna("[]")
    has = cves.str.len() > 2
    if not has.any():
        return epss_max, in_kev
    parsed = cves[has].map(lambda s: json.loads(s) if isinstance(s, str) else list(s))
    exploded = parsed.explode().dropna().astype(str).str.upper()
    epss_tab = pd.read_sql_query(sa.text("SELECT cve_id, epss FROM epss"), conn).set_index("cve_id")["epss"]
    kev_ids = set(pd.read_sql_query(sa.text("SELECT cve_id FROM kev"), conn)["cve_id"])
    if len(epss_tab):
        e = exploded.map(epss_tab).astype(float)
        epss_max = e.groupby(level=0).max().reindex(df.index)
    if kev_ids:
        in_kev = exploded.isin(kev_ids).groupby(level=0).any().reindex(df.index, fill_value=False)
    return epss_max, in_kev.astype(bool)


def prioritize(
    engine: sa.Engine | str | None,
    services: Any = None,
    *,
    config: PriorityConfig | None = None,
    now: datetime | None = None,
) -> PrioritizeResult:
    """Score every active finding and store priority, SSVC decision and SLA due
    (plus EPSS / KEV from the intel tables). Only changed rows are written."""
    from selfheal.triage.db import as_engine
    from selfheal.triage.schema import findings

    t0 = time.perf_counter()
    eng, owned = as_engine(engine)
    now = now or datetime.now(UTC)
    try:
        with eng.begin() as conn:
            df = _read_active(conn)
            if df.empty:
                return PrioritizeResult(0, 0, time.perf_counter() - t0)
            epss_intel, kev_intel = _intel(conn, df)
            old_epss = pd.to_numeric(df["epss"], errors="coerce")
            old_kev = df["kev"]
            df["epss"] = np.fmax(old_epss, epss_intel)
            df["kev"] = old_kev.fillna(False).astype(bool) | kev_intel
            out = score(df, services, config=config, now=now)
            new = pd.DataFrame(
                {
                    "id": df["id"].astype("int64"),
                    "priority": out["priority"],
                    "ssvc_decision": out["ssvc_decision"].astype(str),
                    "sla_due": out["sla_due"],
                    "epss": df["epss"],
                    "kev": df["kev"],
                }
            )

            def same_or_both_null(a: pd.Series, b: pd.Series) -> pd.Series:
                return (a == b) | (a.isna() & b.isna())

            same = (
                same_or_both_null(df["priority"].round(1), new["priority"])
                & same_or_both_null(df["ssvc_decision"].astype(object), new["ssvc_decision"].astype(object))
                & same_or_both_null(df["sla_due"], new["sla_due"])
                & same_or_both_null(old_epss, new["epss"])
                & same_or_both_null(old_kev.astype(object), new["kev"].astype(object))
            )
            changed = new[~same.to_numpy()]
            _write_back(conn, findings, changed)
            return PrioritizeResult(len(df), len(changed), time.perf_counter() - t0)
    finally:
        if owned:
            eng.dispose()


def _write_back(conn: sa.Connection, findings: sa.Table, changed: pd.DataFrame) -> None:
    if changed.empty:
        return
    sla = changed["sla_due"]
    records = list(
        zip(
            changed["id"].tolist(),
            changed["priority"].tolist(),
            changed["ssvc_decision"].tolist(),
            [None if pd.isna(x) else x.to_pydatetime() for x in sla],
            [None if pd.isna(x) else float(x) for x in changed["epss"]],
            changed["kev"].astype(bool).tolist(),
            strict=True,
        )
    )
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        with raw.cursor() as cur:
            cur.execute(
                "CREATE TEMP TABLE _selfheal_prio (id bigint, priority float8, ssvc_decision text,"
                " sla_due timestamptz, epss float8, kev boolean) ON COMMIT DROP"
            )
            with cur.copy("COPY _selfheal_prio FROM STDIN") as cp:
                for rec in records:
                    cp.write_row(rec)
            cur.execute(
                "UPDATE findings f SET priority = p.priority, ssvc_decision = p.ssvc_decision,"
                " sla_due = p.sla_due, epss = p.epss, kev = p.kev FROM _selfheal_prio p WHERE f.id = p.id"
            )
            cur.execute("DROP TABLE _selfheal_prio")
        return
    stmt = (
        findings.update()
        .where(findings.c.id == sa.bindparam("_id"))
        .values(
            priority=sa.bindparam("_priority"),
            ssvc_decision=sa.bindparam("_decision"),
            sla_due=sa.bindparam("_sla"),
            epss=sa.bindparam("_epss"),
            kev=sa.bindparam("_kev"),
        )
    )
    conn.execute(
        stmt,
        [{"_id": i, "_priority": p, "_decision": d, "_sla": s, "_epss": e, "_kev": k} for i, p, d, s, e, k in records],
    )

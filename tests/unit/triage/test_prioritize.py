"""Prioritization: the SSVC table, CVSS decision points, priority, SLA (pure pandas, no database)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from selfheal.catalog import load_catalog
from selfheal.triage import prioritize as P

NOW = datetime(2025, 6, 1, tzinfo=UTC)
CRIT_NET = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"  # 9.8, automatable, total
LOCAL_DOS = "CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:N/I:N/A:H"  # 5.5, not automatable, partial
SERVICES = {
    "payments": {"tier": "critical", "traffic_rps": 500.0, "internet_facing": True},
    "intranet": {"tier": "low", "traffic_rps": 1.0, "internet_facing": False},
}


def frame(**cols) -> pd.DataFrame:
    n = max((len(v) for v in cols.values() if isinstance(v, list)), default=1)
    base = {"severity": ["high"] * n, "kind": ["dependency"] * n, "service": ["payments"] * n, "first_seen": [NOW] * n}
    base.update({k: (v if isinstance(v, list) else [v] * n) for k, v in cols.items()})
    return pd.DataFrame(base)


# --------------------------------------------------------------------------- the SSVC table


def test_ssvc_table_is_complete_and_matches_cisa() -> None:
    keys = [tuple(line.split()[:4]) for line in P.SSVC_TABLE.strip().splitlines()]
    assert len(keys) == len(set(keys)) == 36
    assert Counter(P.DECISIONS[c] for c in P.SSVC_CODES) == {"Track": 18, "Track*": 4, "Attend": 10, "Act": 4}


@pytest.mark.parametrize(
    ("e", "a", "t", "m", "decision"),
    [
        ("none", "no", "partial", "low", "Track"),
        ("none", "no", "total", "high", "Track*"),
        ("none", "yes", "partial", "high", "Attend"),
        ("poc", "no", "partial", "high", "Track*"),
        ("poc", "yes", "total", "medium", "Track*"),
        ("poc", "yes", "total", "high", "Attend"),
        ("active", "no", "partial", "medium", "Track"),
        ("active", "no", "total", "medium", "Attend"),
        ("active", "no", "total", "high", "Act"),
        ("active", "yes", "partial", "low", "Attend"),
        ("active", "yes", "partial", "high", "Act"),
        ("active", "yes", "total", "medium", "Act"),
    ],
)
def test_ssvc_decisions(e: str, a: str, t: str, m: str, decision: str) -> None:
    assert P.ssvc_decision(e, a, t, m) == decision


# --------------------------------------------------------------------------- CVSS vectors


def test_vector_facts_across_versions() -> None:
    f = P.vector_facts(CRIT_NET)
    assert (f.base, f.automatable, f.total_impact, f.maturity) == (9.8, True, True, 0)
    f = P.vector_facts(LOCAL_DOS)
    assert (f.base, f.automatable, f.total_impact) == (5.5, False, False)
    # CERT/CC: one of C/I high, the other low, no privileges -> total
    assert P.vector_facts("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:U/C:H/I:L/A:N").total_impact is True
    assert P.vector_facts("CVSS:3.1/AV:N/AC:L/PR:L/UI:R/S:U/C:H/I:L/A:N").total_impact is False
    v4 = P.vector_facts("CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N/E:A")
    assert (v4.base, v4.automatable, v4.total_impact, v4.maturity) == (9.3, True, True, 2)
    v2 = P.vector_facts("AV:N/AC:L/Au:N/C:P/I:P/A:P")
    assert (v2.base, v2.automatable, v2.total_impact) == (7.5, True, False)
    assert P.vector_facts("CVSS:3.1/AV:Q") is None
    assert P.vector_facts("garbage") is None


def test_each_distinct_vector_is_parsed_once() -> None:
    P.vector_facts.cache_clear()
    df = frame(cvss_vector=[CRIT_NET, LOCAL_DOS, None, "bad"] * 2500)
    P.score(df, SERVICES, now=NOW)
    assert P.vector_facts.cache_info().misses == 3


# --------------------------------------------------------------------------- decision points and priority


def test_exploitation_from_kev_exploit_and_epss() -> None:
    df = frame(
        kev=[True, False, False, False, False],
        exploit_available=[False, True, False, False, False],
        epss=[None, None, 0.1, 0.05, None],
        cvss_vector=CRIT_NET,
    )
    out = P.score(df, SERVICES, now=NOW)
    assert list(out.exploitation) == ["active", "poc", "poc", "none", "none"]
    lower = P.score(df, SERVICES, now=NOW, config=P.PriorityConfig(epss_threshold=0.04))
    assert list(lower.exploitation) == ["active", "poc", "poc", "poc", "none"]


def test_decision_depends_on_the_service_tier() -> None:
    df = frame(kev=True, cvss_vector=CRIT_NET, service=["payments", "intranet", "unknown"])
    out = P.score(df, SERVICES, now=NOW)
    assert list(out.mission_wellbeing) == ["high", "low", "medium"]
    assert list(out.ssvc_decision) == ["Act", "Attend", "Act"]  # active/yes/total: high, low, medium
    assert out.priority[0] > out.priority[1]


def test_web_findings_on_internet_facing_services_are_automatable() -> None:
    df = frame(kind="web", severity="medium", service=["payments", "intranet"], cvss_vector=None)
    out = P.score(df, SERVICES, now=NOW)
    assert list(out.automatable) == ["yes", "no"]
    assert list(out.technical_impact) == ["partial", "partial"]  # no vector: only critical counts as total
    needs_login = frame(kind="web", service="payments", cvss_vector=["CVSS:3.1/AV:N/AC:L/PR:L/UI:N/S:U/C:L/I:L/A:N"])
    assert P.score(needs_login, SERVICES, now=NOW).automatable[0] == "no"


def test_catalog_is_accepted() -> None:
    catalog = load_catalog()
    name = catalog.services[0].name
    out = P.score(frame(service=name, cvss_vector=CRIT_NET), catalog, now=NOW)
    expected = P.PriorityConfig().tier_mission[catalog.services[0].tier]
    assert out.mission_wellbeing[0] == expected


def test_priority_orders_threat_mitigation_and_age() -> None:
    df = frame(
        severity=["critical", "critical", "critical", "low", "critical"],
        kev=[True, False, True, False, True],
        mitigated_at=[None, None, NOW, None, None],
        first_seen=[NOW, NOW, NOW, NOW, NOW - timedelta(days=30)],
        cvss_vector=CRIT_NET,
    )
    p = P.score(df, SERVICES, now=NOW).priority.to_numpy()
    assert p[0] > p[1]  # known exploited beats not
    assert p[2] == pytest.approx(round(p[0] / 2, 1), abs=0.1)  # a virtual patch halves it
    assert p[4] > p[0]  # overdue (30 days on a 7-day SLA) raises it
    assert ((p >= 0) & (p <= 100)).all()
    assert p[4] <= 100.0


def test_sla_due_dates_and_policy() -> None:
    df = frame(severity=["critical", "high", "medium", "low", "info"])
    out = P.score(df, SERVICES, now=NOW)
    days = [(d - NOW).days if not pd.isna(d) else None for d in out.sla_due]
    assert days == [7, 30, 90, 120, None]
    custom = P.score(df, SERVICES, now=NOW, config=P.PriorityConfig(sla=P.SlaPolicy(critical=3, info=365)))
    assert [(d - NOW).days for d in custom.sla_due] == [3, 30, 90, 120, 365]


def test_scanner_score_wins_over_the_vector_and_severity_default() -> None:
    df = frame(severity="low", cvss_vector=[CRIT_NET, CRIT_NET, None, None], cvss_score=[2.0, None, None, 9.0])
    p = P.score(df, SERVICES, now=NOW).priority.to_numpy()
    assert p[1] > p[0]  # the vector's 9.8 counts only when the scanner gives no score
    assert p[3] > p[2]  # a scanner score of 9.0 beats the default for "low" (3.0)
    assert not np.isnan(p).any()


def test_bad_severity_and_empty_frame() -> None:
    with pytest.raises(ValueError, match="unknown severity 'urgent'"):
        P.score(frame(severity="urgent"), SERVICES, now=NOW)
    empty = P.score(frame(severity=[]), SERVICES, now=NOW)
    assert len(empty) == 0 and list(empty.columns)[:3] == ["priority", "ssvc_decision", "sla_due"]

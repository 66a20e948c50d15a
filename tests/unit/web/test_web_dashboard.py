"""The Grafana dashboard only queries metrics the plugin exports, and covers each of them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from selfheal.web.metrics import METRICS, exported_names

DASHBOARD = Path(__file__).resolve().parents[3] / "include" / "grafana" / "selfheal-dashboard.json"


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(d: dict) -> list[dict]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def _exprs(d: dict) -> list[str]:
    return [t["expr"] for p in _panels(d) for t in p.get("targets", [])]


def test_dashboard_shape(dashboard: dict) -> None:
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in _panels(dashboard):
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], p["title"]
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs))


def test_every_expression_uses_exported_metric_names(dashboard: dict) -> None:
    exported = exported_names()
    used: set[str] = set()
    for expr in _exprs(dashboard):
        names = set(re.findall(r"\bselfheal_[a-z0-9_]+", expr))
        assert names, f"no selfheal metric in {expr!r}"
        assert names <= exported, f"{expr!r} uses {sorted(names - exported)}"
        used |= names
        assert expr.count("(") == expr.count(")"), expr
        # histograms are built from stored timestamps: quantiles over raw buckets, never rate() of them
        if "histogram_quantile" in expr:
            assert "_bucket" in expr and "rate(" not in expr, expr
    families = {_family(n) for n in used}
    assert families == set(METRICS), f"not on the dashboard: {sorted(set(METRICS) - families)}"


def _family(series: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        base = series.removesuffix(suffix)
        if base != series and METRICS.get(base) == "histogram":
            return base
    return series

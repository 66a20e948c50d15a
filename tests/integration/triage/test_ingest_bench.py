"""The ingest benchmark runs, small, against the real Postgres: its figures stay computable.

The benchmark is how #3's rates are measured; this keeps it from rotting between
measurements. Speed itself is not asserted here (a timed test would only measure this
shared machine): only what must hold at any speed.
"""

from __future__ import annotations

import importlib
import json
import sys

import pytest

from selfheal.paths import PROJECT_ROOT


@pytest.fixture
def ingest_bench(monkeypatch: pytest.MonkeyPatch, pg_admin_url: str):
    monkeypatch.setenv("BENCH_INGEST_FINDINGS", "3000")
    # Two parser processes, as the full-size run picks on this machine: a batch this small would
    # otherwise be parsed in-process, and the workers' CPU accounting would go untested.
    monkeypatch.setenv("BENCH_WORKERS", "2")
    monkeypatch.setenv("SELFHEAL_TEST_DATABASE_URL", pg_admin_url)
    monkeypatch.syspath_prepend(str(PROJECT_ROOT))
    sys.modules.pop("bench.ingest", None)  # N_FINDINGS is read at import
    yield importlib.import_module("bench.ingest")
    sys.modules.pop("bench.ingest", None)


def test_small_ingest_bench_reports_consistent_rates_and_its_cpu_ceiling(ingest_bench, capsys) -> None:
    out = ingest_bench.main()  # raises SystemExit when the stored rows disagree with the parsed ones
    err = capsys.readouterr().err
    detail = json.loads(err[err.index('{"ingest_detail"') :].splitlines()[0])["ingest_detail"]
    assert set(out) >= {
        "findings_per_s",
        "parse_per_s",
        "upsert_per_s",
        "reimport_findings_per_s",
        "reimport_new_rows",
        "peak_rss_mb",
        "cpu_us_per_finding",
        "cpu_ceiling_findings_per_s",
    }
    assert out["reimport_new_rows"] == 0  # the next day's scan of the same things adds nothing
    assert out["cpu_us_per_finding"] > 0 and out["peak_rss_mb"] > 0
    # The ceiling is the rate with every core doing this work all the time, from the CPU the
    # workers, this process and the Postgres backend used; a measured rate above it would mean
    # CPU counted twice or outside the timed call.
    assert out["findings_per_s"] <= out["cpu_ceiling_findings_per_s"] * 1.05
    assert detail["reimport_updated_rows"] == 0  # ... and rewrites nothing
    assert detail["cpu_s_workers"] > 0  # the parser processes' CPU is counted (reaped children)
    assert detail["parse_cpu_ceiling_per_s"] >= out["parse_per_s"] * 0.95

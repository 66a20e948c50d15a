"""A real task run writes its log lines with the ids bound by selfheal.logs.

selfheal_scan runs for real under dag.test() (ZAP double, the demo target, the
real triage Postgres); its scan tasks bind service, scanner and scan run id
with ``with_log_context``. Airflow renders task logs through structlog, so the
lines as Airflow writes them (console renderer under dag.test: ``key=value``
after the message; JSON members in a task log file, see tests/unit/test_logs.py)
must carry the ids, and lines outside those tasks must not.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from airflow.utils.state import DagRunState

from selfheal import demo
from tests.doubles.zap_api_double import ZapApiDouble

pytestmark = [pytest.mark.airflow, pytest.mark.postgres]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def zap_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The demo target, a ZAP double that scans it, and a catalog with ZAP as its only scanner."""
    zap = ZapApiDouble(spider_seconds=0.2, ascan_seconds=0.4, pscan_seconds=0.1)
    with demo.local_server() as target:
        catalog = tmp_path / "services.yaml"
        catalog.write_text(
            yaml.safe_dump(
                {
                    "services": [
                        {
                            "name": "demo-target",
                            "base_url": target,
                            "openapi_url": f"{target}/openapi.json",
                            "scanners": ["zap"],
                            "owner": "platform@example.com",
                            "repository": str(demo.TARGET_DIR),
                            "scan": {"poke_interval_s": 1},
                        }
                    ]
                }
            )
        )
        monkeypatch.setenv("SELFHEAL_CATALOG", str(catalog))
        monkeypatch.setenv(
            "AIRFLOW_CONN_ZAP_DEFAULT",
            json.dumps({"conn_type": "zap", "host": "127.0.0.1", "port": zap.port, "password": zap.api_key}),
        )
        try:
            yield target
        finally:
            zap.close()


def test_scan_task_log_lines_carry_service_scanner_and_scan_run_id(
    dagbag, migrated_triage_url, zap_only, monkeypatch, capfd
) -> None:
    monkeypatch.setenv("SELFHEAL_DATABASE_URL", migrated_triage_url)
    # Structlog loggers print to the current stdout (capfd); stdlib records go through the root
    # handler Airflow configured, whose stream was fixed when logging was set up: point it here.
    stdlib = io.StringIO()
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    saved = [h.setStream(stdlib) for h in handlers]
    try:
        dr = dagbag.get_dag("selfheal_scan").test(run_conf={"service": "demo-target", "scanners": ["zap"]})
    finally:
        for h, stream in zip(handlers, saved, strict=True):
            h.setStream(stream)
    out = _ANSI.sub("", capfd.readouterr().out + stdlib.getvalue())
    assert dr.state == DagRunState.SUCCESS, {ti.task_id: ti.state for ti in dr.get_task_instances()}

    lines = out.splitlines()
    started = [ln for ln in lines if "ZAP scans of" in ln and "started" in ln]
    assert started, out[-3000:]
    assert all("service=demo-target" in ln and "scanner=zap" in ln for ln in started), started

    finished = [ln for ln in lines if "scan finished after" in ln]  # the sensor, resumed after the trigger
    assert finished, out[-3000:]
    with_run = [ln for ln in lines if re.search(r"\bscan_run_id=\d+", ln)]
    assert set(finished) <= set(with_run), finished
    run_ids = {re.search(r"\bscan_run_id=(\d+)", ln).group(1) for ln in with_run}
    assert len(run_ids) == 1, run_ids  # one scan: one run id on every line that has one
    assert all("service=demo-target" in ln and "scanner=zap" in ln for ln in with_run), with_run

    # Lines written outside the scan tasks' contexts carry none of it.
    planned = [ln for ln in lines if "scans planned" in ln]
    done = [ln for ln in lines if "Done. Returned value was" in ln]
    assert planned and done
    assert not any("scanner=" in ln for ln in planned + done), planned + done

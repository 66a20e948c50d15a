"""Every DAG loads, is documented and owned, retries, and does no I/O at parse time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted(p for p in (REPO / "dags").glob("*.py") if not p.name.startswith("_"))

pytestmark = pytest.mark.airflow


def test_there_are_dag_files() -> None:
    assert DAG_FILES, "dags/ holds no DAG file"


def test_dagbag_has_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}, "\n".join(f"{k}: {v}" for k, v in dagbag.import_errors.items())
    assert len(dagbag.dags) >= len(DAG_FILES)


def test_every_dag_has_tags_owner_retries_and_doc(dagbag) -> None:
    problems = []
    for dag_id, dag in dagbag.dags.items():
        if not dag.tags:
            problems.append(f"{dag_id}: no tags")
        if not (dag.doc_md or "").strip():
            problems.append(f"{dag_id}: no doc_md")
        for t in dag.tasks:
            if not t.owner or t.owner.lower() == "airflow":
                problems.append(f"{dag_id}.{t.task_id}: owner not set")
            if t.retries is None:
                problems.append(f"{dag_id}.{t.task_id}: retries not set")
        if "retries" not in (dag.default_args or {}):
            problems.append(f"{dag_id}: default_args has no explicit retries")
    assert not problems, "\n".join(problems)


def test_no_dag_file_does_io_at_parse_time() -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'plugins'}:{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("parse_probe.py")), *map(str, DAG_FILES)],
        capture_output=True, text=True, env=env, timeout=300, check=True,
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    offenders = {Path(k).name: v for k, v in report.items() if v}
    assert offenders == {}, f"DAG files doing I/O at parse time: {offenders}"


def test_parse_probe_catches_io(tmp_path: Path) -> None:
    """The probe itself must be able to fail: a DAG-like file that reads a file and dials a socket."""
    data = tmp_path / "catalog.yaml"
    data.write_text("x: 1\n")
    bad = tmp_path / "bad_dag.py"
    bad.write_text(
        "import socket\n"
        f"open({str(data)!r}).read()\n"
        "try:\n    socket.create_connection(('127.0.0.1', 9), timeout=0.1)\nexcept OSError:\n    pass\n"
    )
    out = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("parse_probe.py")), str(bad)],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    events = json.loads(out.strip().splitlines()[-1])[str(bad)]
    assert any(e.startswith("open ") and "catalog.yaml" in e for e in events)
    assert any(e.startswith("socket.connect") for e in events)

"""`selfheal parse`: JSON lines out, one stderr line per bad file, non-zero exit at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from typer.testing import CliRunner

from selfheal.cli import app
from selfheal.findings import parse_bytes
from selfheal.findings.limits import MAX_REPORT_BYTES

REPO = Path(__file__).resolve().parents[3]
REQUIRED = ("fingerprint", "scanner", "rule_id", "title", "severity", "confidence", "cwe", "cves", "cvss_score",
            "cvss_vector", "kind", "location", "package", "evidence", "solution")


def _lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_parses_several_files_and_reports_the_bad_ones(samples_dir, tmp_path):
    truncated = tmp_path / "truncated.xml"
    truncated.write_bytes((samples_dir / "zap/some_2.9.0.xml").read_bytes()[:500])
    files = [
        samples_dir / "zap/some_2.9.0.xml",
        tmp_path / "missing.json",
        samples_dir / "aws_inspector2/empty_with_error.json",
        truncated,
        samples_dir / "handmade/wapiti_report.json",
    ]
    result = CliRunner().invoke(app, ["parse", "--service", "shop", *map(str, files)])
    assert result.exit_code == 1
    rows = _lines(result.stdout)
    assert len(rows) == 17 + 5  # every finding of the two good files; nothing of the bad ones
    assert all(key in row for row in rows for key in REQUIRED)
    assert {row["service"] for row in rows} == {"shop"}
    expected = [f.to_dict() for f in parse_bytes(files[0].read_bytes(), str(files[0]), service="shop")]
    assert rows[:17] == json.loads(json.dumps(expected))
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 3
    assert errors[0] == f"error: {files[1]}: cannot read: No such file or directory"
    assert errors[1] == f"error: {files[2]}: empty JSON object ({{}}): not a scanner report"
    assert errors[2].startswith(f"error: {truncated}: invalid XML: ")


def test_all_good_exits_zero_with_explicit_format(samples_dir):
    path = samples_dir / "openvas/report_detail_v2.xml"
    result = CliRunner().invoke(app, ["parse", "--format", "openvas", str(path)])
    assert result.exit_code == 0 and result.stderr == ""
    (row,) = _lines(result.stdout)
    assert row["kind"] == "host" and row["cvss_score"] == 9.8 and row["service"] is None
    assert row["location"]["host"] == "10.99.99.99" and row["package"] is None


def test_dependency_rows_carry_the_package(samples_dir):
    result = CliRunner().invoke(app, ["parse", str(samples_dir / "aws_inspector2/aws_inspector2_one_vul.json")])
    (row,) = _lines(result.stdout)
    assert row["package"] == {"name": "linux", "version": "4.19.118-2", "fixed_version": "4.19.232-1",
                              "ecosystem": "os", "file_path": None}
    assert row["cves"] == ["CVE-2021-3744"] and row["location"] is None


def test_unknown_format_is_a_usage_error(samples_dir):
    result = CliRunner().invoke(app, ["parse", "--format", "nessus", str(samples_dir / "zap/some_2.9.0.xml")])
    assert result.exit_code == 2
    assert "'nessus' is not a known format" in result.output


def test_reads_stdin(samples_dir):
    data = (samples_dir / "handmade/zap_api_alerts.json").read_bytes()
    result = CliRunner().invoke(app, ["parse", "-"], input=data)
    assert result.exit_code == 0 and len(_lines(result.stdout)) == 6


def test_oversized_and_special_files_are_refused_before_reading(tmp_path):
    big = tmp_path / "big.json"
    with big.open("wb") as fh:  # sparse: costs no disk and is never read
        fh.truncate(MAX_REPORT_BYTES + 1)
    result = CliRunner().invoke(app, ["parse", str(big), str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: {big}: report is {MAX_REPORT_BYTES + 1} bytes, over the limit of {MAX_REPORT_BYTES} bytes",
        f"error: {tmp_path}: not a regular file",
    ]


def test_python_dash_m_selfheal_cli(samples_dir, tmp_path):
    """The real command in a real process (what the console script runs)."""
    bad = tmp_path / "bad.xml"
    bad.write_bytes(b"<!DOCTYPE x [<!ENTITY a 'b'>]><OWASPZAPReport/>")
    env = {**os.environ, "PYTHONPATH": str(REPO / "plugins")}
    proc = subprocess.run(
        [sys.executable, "-m", "selfheal.cli", "parse", "-s", "dvwa", str(samples_dir / "zap/dvwa_baseline_dojo.xml"),
         str(bad), str(samples_dir / "sarif/dependency_check.sarif")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )
    assert proc.returncode == 1
    rows = _lines(proc.stdout)
    assert len(rows) == 124 + 13
    assert Counter(row["scanner"] for row in rows) == {"zap": 124, "dependency-check": 13}
    assert proc.stderr.strip() == f"error: {bad}: refused unsafe XML (DTDForbidden): DTDs and entities are not allowed"


def test_help_lists_the_formats():
    result = CliRunner().invoke(app, ["parse", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for name in ("zap-api", "zap-json", "zap-xml", "gmp-xml", "inspector2", "wapiti-json", "wapiti-xml", "sarif"):
        assert name in result.output

"""The demo stack's pure parts: configuration from the environment, the run catalog it derives,
the AWS stand-in's connection and findings, and the demo summary computed from a real (SQLite)
triage database migrated by the project's own migrations."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from selfheal import aws_standin
from selfheal.catalog import load_catalog
from selfheal.demo_run import DemoConfig, Stage, build_summary, by_severity, exposure_windows
from selfheal.paths import INCLUDE_DIR
from selfheal.stack import StackConfig, StackError, write_run_catalog


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"SELFHEAL_RUN_DIR": str(tmp_path / "run"), "SELFHEAL_DATABASE_URL": "sqlite:///x.db", **extra}


def test_config_defaults_and_overrides(tmp_path: Path) -> None:
    cfg = StackConfig.from_env(_env(tmp_path))
    assert (cfg.http_port, cfg.stats_port, cfg.moto_port) == (18080, 18404, 18500)
    assert cfg.network == "selfheal-rollout" and cfg.front_door == "http://127.0.0.1:18080"
    assert cfg.catalog_source == INCLUDE_DIR / "services.yaml"
    other = StackConfig.from_env(_env(tmp_path, SELFHEAL_GATEWAY_PORT="28080", SELFHEAL_DOCKER_NETWORK="n1"))
    assert other.front_door == "http://127.0.0.1:28080" and other.network == "n1"
    assert other.stack_id == cfg.stack_id  # one id per run directory
    assert StackConfig.from_env(_env(tmp_path / "b")).stack_id != cfg.stack_id


@pytest.mark.parametrize("extra, message", [
    ({"SELFHEAL_GATEWAY_PORT": "http"}, "SELFHEAL_GATEWAY_PORT: expected a port number"),
    ({"SELFHEAL_MOTO_PORT": "70000"}, "SELFHEAL_MOTO_PORT: 70000 is not a port number"),
    ({"SELFHEAL_MOTO_PORT": "18080"}, "must differ"),
])
def test_bad_ports_are_one_clear_error(tmp_path: Path, extra: dict[str, str], message: str) -> None:
    with pytest.raises(StackError, match=message):
        StackConfig.from_env(_env(tmp_path, **extra))


def test_the_exported_run_catalog_is_never_its_own_source(tmp_path: Path) -> None:
    """`make up` exports SELFHEAL_CATALOG=<run>/stack/services.yaml for Airflow; a second `up` in that
    environment must still derive from the project's catalog."""
    derived = tmp_path / "run" / "stack" / "services.yaml"
    assert StackConfig.from_env(_env(tmp_path, SELFHEAL_CATALOG=str(derived))).catalog_source == (
        INCLUDE_DIR / "services.yaml")
    own = tmp_path / "mine.yaml"
    assert StackConfig.from_env(_env(tmp_path, SELFHEAL_CATALOG=str(own))).catalog_source == own


def test_run_catalog_puts_the_demo_target_behind_the_gateway(tmp_path: Path) -> None:
    src = tmp_path / "src" / "services.yaml"
    src.parent.mkdir()
    (tmp_path / "src" / "other-repo").mkdir()
    src.write_text(
        "services:\n"
        "  - {name: demo-target, base_url: 'http://127.0.0.1:1', openapi_url: 'http://127.0.0.1:1/docs/api.json',\n"
        "     owner: a, repository: ./nope, deploy: {kind: docker, docker: {image: x/y}},\n"
        "     scanners: [wapiti, zap, gvm, inspector]}\n"
        "  - {name: other, base_url: 'http://other:9', owner: b, repository: other-repo}\n"
    )
    cfg = StackConfig.from_env(_env(tmp_path, SELFHEAL_CATALOG=str(src), SELFHEAL_GATEWAY_PORT="28080"))
    catalog = write_run_catalog(cfg)
    demo, other = catalog.get("demo-target"), catalog.get("other")
    assert demo.base_url == "http://127.0.0.1:28080"
    assert demo.openapi_url == "http://127.0.0.1:28080/docs/api.json"
    assert demo.repository == str(cfg.repo_dir)
    assert demo.scanners == ("wapiti", "inspector")  # no ZAP/Greenbone daemon in the local stack
    assert other.base_url == "http://other:9"
    assert other.repository == str((tmp_path / "src" / "other-repo").resolve())  # still the same directory
    assert load_catalog(cfg.catalog_file) == catalog
    assert cfg.catalog_file.read_text().startswith(f"# Written by `selfheal stack up` from {src}")


def test_run_catalog_needs_the_demo_service(tmp_path: Path) -> None:
    src = tmp_path / "s.yaml"
    src.write_text("services:\n  - {name: only, base_url: 'http://x', owner: a, repository: /r}\n")
    with pytest.raises(StackError, match="has no service 'demo-target'"):
        write_run_catalog(StackConfig.from_env(_env(tmp_path, SELFHEAL_CATALOG=str(src))))


def test_gateway_dir_stays_short_enough_for_unix_sockets(tmp_path: Path) -> None:
    short = StackConfig.from_env(_env(tmp_path))
    assert short.gateway_dir == short.run_dir / "gateway"
    deep = StackConfig.from_env({"SELFHEAL_RUN_DIR": str(tmp_path / ("d" * 120)), "SELFHEAL_DATABASE_URL": "x"})
    assert deep.gateway_dir == Path(f"/tmp/selfheal-gw-{deep.stack_id}")
    assert len(str(deep.gateway_dir / "admin.sock")) < 108


def test_env_points_airflow_at_the_stack_and_labels_the_aws_stand_in(tmp_path: Path) -> None:
    cfg = StackConfig.from_env(_env(tmp_path, SELFHEAL_MOTO_PORT="28500"))
    env = cfg.env()
    assert env["SELFHEAL_GATEWAY_SETTINGS"] == str(cfg.settings_file)
    assert env["SELFHEAL_CATALOG"] == str(cfg.catalog_file)
    conn = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])
    assert conn["extra"] == {"endpoint_url": "http://127.0.0.1:28500", "region_name": "us-east-1"}
    assert "stand-in" in conn["description"] and "not AWS" in conn["description"]
    rollout = json.loads(env["AIRFLOW_VAR_SELFHEAL_ROLLOUT"])
    assert rollout["docker"]["network"] == cfg.network
    assert rollout["docker"]["labels"] == {"selfheal.stack": cfg.stack_id}
    from selfheal.remediation.rollout import RolloutSettings

    assert RolloutSettings.from_json(env["AIRFLOW_VAR_SELFHEAL_ROLLOUT"]).docker["network"] == cfg.network
    settings = cfg.gateway_settings()
    assert settings.default_service == "demo-target" and settings.http_port == cfg.http_port


def test_demo_findings_are_a_fresh_change(tmp_path: Path) -> None:
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    found = aws_standin.demo_findings(now=now)
    assert len(found) == 4 and {f["updatedAt"] for f in found} == {"2030-01-02T03:04:05.000+00:00"}
    assert {f["packageVulnerabilityDetails"]["vulnerabilityId"] for f in found} >= {"CVE-2024-22195"}
    bad = tmp_path / "bad.json"
    bad.write_text('{"findings": []}')
    with pytest.raises(aws_standin.StandInError, match=f"{bad}: expected a ListFindings page"):
        aws_standin.demo_findings(bad)


def test_pid_checks_never_match_a_reused_pid() -> None:
    import os

    assert aws_standin.pid_running(os.getpid(), "python")
    assert not aws_standin.pid_running(os.getpid(), "haproxy -db -f /nowhere")
    assert not aws_standin.pid_running(None, "x")
    assert aws_standin.stop_pid(os.getpid(), "haproxy -db -f /nowhere") is False  # not ours: untouched


# ------------------------------------------------------------------------------ summary


@pytest.fixture
def triage(tmp_path: Path) -> sa.Engine:
    from selfheal.triage import migrate
    from selfheal.triage.db import make_engine

    url = f"sqlite:///{tmp_path / 'triage.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def _finding(fid: int, severity: str, first: datetime, mitigated: datetime | None) -> dict:
    return {"id": fid, "fingerprint": f"fp{fid}", "service": "demo-target", "scanner": "wapiti", "kind": "web",
            "rule_id": "r", "title": f"finding {fid}", "severity": severity, "content_hash": "h",
            "first_seen": first, "last_seen": first, "status": "mitigated" if mitigated else "new",
            "status_changed_at": first, "mitigated_at": mitigated}


def test_summary_from_the_triage_database(tmp_path: Path, triage: sa.Engine) -> None:
    from selfheal.pipeline_state import patches
    from selfheal.triage.schema import findings, observations, scan_runs

    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    with triage.begin() as c:
        c.execute(scan_runs.insert(), [{"id": 1, "scanner": "wapiti", "service": "demo-target", "started_at": t0,
                                        "status": "succeeded"}])
        c.execute(findings.insert(), [
            _finding(1, "critical", t0, t0 + timedelta(seconds=0.2)),
            _finding(2, "high", t0, t0 + timedelta(seconds=1.5)),
            _finding(3, "medium", t0, None),
            _finding(4, "low", t0, t0 + timedelta(seconds=9)),  # not seen by this run: not counted
        ])
        c.execute(observations.insert(), [{"scan_run_id": 1, "finding_id": i, "seen_at": t0} for i in (1, 2, 3)])
        common = {"service": "demo-target", "plan": {}, "history": [], "created_at": t0, "reason": ""}
        c.execute(patches.insert(), [
            {**common, "id": "p1", "recipe": "sql_param", "state": "promoted", "finding_ids": [1],
             "updated_at": t0 + timedelta(seconds=300)},
            {**common, "id": "p2", "recipe": "dependency_bump", "state": "rolled_back", "finding_ids": [2],
             "reason": "canary latency p95 regressed", "updated_at": t0 + timedelta(seconds=400)},
            {**common, "id": "p3", "recipe": "x", "state": "verifying", "finding_ids": [3], "updated_at": t0},
        ])
    with triage.connect() as c:
        rows = [dict(r._mapping) for r in c.execute(sa.select(patches))]
    cfg = DemoConfig.from_env(_env(tmp_path, SELFHEAL_AIRFLOW_PORT="28081"))
    summary = build_summary(cfg, triage, started=t0, run_ids=[1], stages=[Stage("scan", 12.5, "ok")],
                            patch_rows=rows, events=[])
    assert summary["findings_by_severity"] == {"critical": 1, "high": 1, "medium": 1}
    assert summary["exposure_window_s"] == 1.5 and summary["exposure_window_stats_s"]["min"] == 0.2
    assert summary["detect_to_prod_s"] == 300.0
    assert [p["patch_id"] for p in summary["patched"]] == ["p1"]
    assert [(p["patch_id"], p["reason"]) for p in summary["rolled_back"]] == [("p2", "canary latency p95 regressed")]
    assert summary["ui"]["self_healing_page"] == "http://127.0.0.1:28081/plugin/self-healing"
    assert "password" not in summary["ui"]  # where to find it, never the secret itself
    json.dumps(summary, default=str)  # what write_summary does


def test_exposure_and_severity_helpers() -> None:
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    rows = [{**_finding(1, "low", t0, None), "resolved_at": t0 + timedelta(seconds=4)},
            _finding(2, "info", t0, t0 + timedelta(seconds=1)), _finding(3, "weird", t0, None)]
    assert [(w["finding_id"], w["by"], w["seconds"]) for w in exposure_windows(rows)] == [
        (1, "resolved", 4.0), (2, "virtual patch", 1.0)]
    assert list(by_severity(rows)) == ["low", "info", "weird"]

"""The Wapiti runner's command line and its error handling (the real scan is an integration test)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from selfheal.scanners import wapiti
from selfheal.scanners.wapiti import WapitiError, build_command


def cmd(**kw: object) -> list[str]:
    args = {"report_path": Path("/w/r.json"), "state_dir": Path("/w")}
    args.update(kw)
    return build_command(Path("/bin/wapiti"), "http://127.0.0.1:8000/", **args)  # type: ignore[arg-type]


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_command_is_a_fresh_json_scan_kept_in_the_work_dir() -> None:
    argv = cmd(modules=["sql", "http_headers"], max_scan_time=90)
    assert argv[0] == "/bin/wapiti"
    assert flag(argv, "--url") == "http://127.0.0.1:8000/"
    assert flag(argv, "--module") == "sql,http_headers"
    assert flag(argv, "--max-scan-time") == "90"
    assert flag(argv, "--format") == "json"
    assert flag(argv, "--output") == "/w/r.json"
    assert flag(argv, "--store-session") == "/w/session"
    assert flag(argv, "--store-config") == "/w/config"
    assert flag(argv, "--scope") == "folder"
    assert "--flush-session" in argv
    assert "--swagger" not in argv


def test_openapi_url_is_fed_to_swagger() -> None:
    argv = cmd(openapi_url="http://127.0.0.1:8000/openapi.json", max_attack_time=10, depth=3)
    assert flag(argv, "--swagger") == "http://127.0.0.1:8000/openapi.json"
    assert flag(argv, "--max-attack-time") == "10"
    assert flag(argv, "--depth") == "3"


def test_default_modules_avoid_outside_callbacks() -> None:
    assert "sql" in wapiti.DEFAULT_MODULES and "http_headers" in wapiti.DEFAULT_MODULES
    assert not {"ssrf", "log4shell", "xxe", "wapp", "nikto"} & set(wapiti.DEFAULT_MODULES)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"modules": ["sql,exec"]}, "modules"),
        ({"modules": ["sql", "--output=/etc/x"]}, "modules"),
        ({"modules": []}, "modules"),
        ({"scope": "everything"}, "scope 'everything'"),
        ({"max_scan_time": 0}, "max_scan_time"),
        ({"openapi_url": "file:///etc/passwd"}, "OpenAPI URL"),
    ],
)
def test_bad_arguments_are_refused(kw: dict, message: str) -> None:
    with pytest.raises(WapitiError, match=message):
        cmd(**kw)


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://host/", "http:///path", ""])
def test_target_url_must_be_absolute_http(url: str) -> None:
    with pytest.raises(WapitiError, match="target URL"):
        build_command(Path("/bin/wapiti"), url, report_path=Path("r"), state_dir=Path("."))


def test_missing_explicit_binary_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(WapitiError, match=re.escape(f"{tmp_path}/nope: wapiti binary not found")):
        wapiti.find_wapiti(tmp_path / "nope")


def test_missing_everywhere_points_at_the_installer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SELFHEAL_WAPITI", raising=False)
    monkeypatch.setattr(wapiti, "_DEFAULT_BINARY", tmp_path / "absent")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(WapitiError, match=r"scripts/install-wapiti\.sh"):
        wapiti.find_wapiti()


def test_env_variable_selects_the_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "wapiti"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("SELFHEAL_WAPITI", str(exe))
    assert wapiti.find_wapiti() == exe


def test_failing_binary_gives_exit_code_and_stderr(tmp_path: Path) -> None:
    exe = tmp_path / "wapiti"
    exe.write_text("#!/bin/sh\necho 'fatal: cannot load modules' >&2\nexit 3\n")
    exe.chmod(0o755)
    with pytest.raises(WapitiError, match=r"exit 3, report missing\): fatal: cannot load modules"):
        wapiti.run_wapiti("http://127.0.0.1:9/", binary=exe, max_scan_time=5)


def test_temporary_work_dir_is_removed_even_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    exe = tmp_path / "wapiti"
    exe.write_text("#!/bin/sh\nexit 1\n")
    exe.chmod(0o755)
    with pytest.raises(WapitiError):
        wapiti.run_wapiti("http://127.0.0.1:9/", binary=exe, max_scan_time=5)
    assert [p.name for p in tmp_path.iterdir()] == ["wapiti"]


def test_report_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"vulnerabilities": {}, "infos": {"crawled_pages_nbr": 3}}))
    assert json.loads(wapiti.read_report(path))["vulnerabilities"] == {}
    path.write_text("{not json")
    with pytest.raises(WapitiError, match=re.escape(f"{path}: wapiti wrote invalid JSON")):
        wapiti.read_report(path)
    path.write_text("[1, 2]")
    with pytest.raises(WapitiError, match="not a Wapiti JSON report"):
        wapiti.read_report(path)
    path.write_text(json.dumps({"vulnerabilities": {}, "pad": "x" * 100}))
    monkeypatch.setattr(wapiti, "MAX_REPORT_BYTES", 50)
    with pytest.raises(WapitiError, match="over the 50 limit"):
        wapiti.read_report(path)

"""Shared builders for the patch engine tests: services, findings, and small real git repositories."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from selfheal.catalog import Service
from selfheal.findings.model import Finding, Location, Package
from selfheal.findings.parsers import parse_bytes

FIXTURES = Path(__file__).parent / "fixtures"
# Real Wapiti 3.2.3 report of the demo target (modules sql, http_headers, csp), captured on loopback.
WAPITI_DEMO = FIXTURES / "wapiti-demo-target.json"
INSPECTOR_SAMPLE = Path(__file__).resolve().parents[2] / "fixtures" / "scanner-samples" / "aws_inspector2"

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Dev",
    "GIT_AUTHOR_EMAIL": "dev@example.invalid",
    "GIT_COMMITTER_NAME": "Dev",
    "GIT_COMMITTER_EMAIL": "dev@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def make_service(repository: str = "/nonexistent", **kw: object) -> Service:
    data: dict[str, object] = {
        "name": "shop",
        "base_url": "http://127.0.0.1:9",
        "owner": "team@example.invalid",
        "repository": repository,
        "test_command": "python -m pytest -q",
        "rollout": {"strategy": "canary", "steps": [10, 50, 100]},
    }
    data.update(kw)
    return Service.model_validate(data)


def dep(
    name: str,
    version: str | None,
    fixed: str | None,
    *,
    ecosystem: str | None = "pypi",
    file_path: str | None = "requirements.txt",
    cve: str = "CVE-2024-0001",
    severity: str = "high",
    fingerprint: str | None = None,
) -> Finding:
    return Finding(
        scanner="inspector",
        rule_id=cve,
        title=f"{cve} in {name}",
        severity=severity,  # type: ignore[arg-type]
        kind="dependency",
        cves=(cve,),
        package=Package(name, version, fixed, ecosystem, file_path),
        service="shop",
        fingerprint=fingerprint or f"fp-{name}-{cve}",
    )


def web(
    cwe: int | None,
    path: str = "/items",
    param: str | None = "q",
    *,
    method: str = "GET",
    title: str = "Web finding",
    rule_id: str = "r",
    extra: dict | None = None,
    fingerprint: str | None = None,
    kind: str = "web",
    line: int | None = None,
) -> Finding:
    return Finding(
        scanner="zap",
        rule_id=rule_id,
        title=title,
        severity="high",
        kind=kind,
        cwe=cwe,  # type: ignore[arg-type]
        location=Location(url=f"http://127.0.0.1{path}", method=method, path=path, param=param, line=line),
        service="shop",
        fingerprint=fingerprint or f"fp-{rule_id}-{path}-{param}",
        extra=extra or {},
    )


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env=GIT_ENV, check=True
    )
    return proc.stdout.strip()


def git_repo(path: Path, files: dict[str, str], message: str = "initial") -> Path:
    """A real repository at ``path`` with ``files`` committed on branch main."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "--quiet", "--initial-branch=main")
    git(path, "config", "commit.gpgsign", "false")
    write(path, files)
    git(path, "add", "--all")
    git(path, "commit", "--quiet", "-m", message)
    return path


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def wapiti_demo_findings() -> list[Finding]:
    return parse_bytes(WAPITI_DEMO.read_bytes(), str(WAPITI_DEMO), service="shop")

"""Run the real Wapiti scanner against one target and return its JSON report (pure core).

Wapiti lives in its own virtualenv (scripts/install-wapiti.sh) so its pinned
dependencies never touch Airflow's; this module only runs the binary. The
Airflow hook/sensor for issue 4 is a thin adapter around `run_wapiti`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from selfheal.paths import PROJECT_ROOT

WAPITI_VERSION = "3.2.3"  # what scripts/install-wapiti.sh installs and the flags below were checked on
# Modules that make sense for a JSON API without outside help. Left out on purpose:
# ssrf/log4shell/xxe need Wapiti's public callback endpoints, wapp/nikto/htp
# download databases, timesql and buster are slow, ssl needs HTTPS.
DEFAULT_MODULES: tuple[str, ...] = (
    "sql", "exec", "file", "xss", "permanentxss", "redirect", "crlf",
    "http_headers", "csp", "cookieflags", "methods",
)
SCOPES = ("url", "page", "folder", "subdomain", "domain")
MAX_REPORT_BYTES = 64 * 1024 * 1024  # a report is attacker-influenced: bound what we load
_MODULE_RE = re.compile(r"^-?[a-z0-9_]+$")
_DEFAULT_BINARY = PROJECT_ROOT / ".venv-wapiti" / "bin" / "wapiti"


class WapitiError(RuntimeError):
    """Wapiti is missing, was misused, or its scan failed; the message says which and why."""


@dataclass(frozen=True)
class ScanResult:
    report: bytes
    command: tuple[str, ...]
    duration_s: float
    report_path: Path | None  # None when the working directory was temporary (already removed)


def find_wapiti(binary: str | os.PathLike[str] | None = None) -> Path:
    """The wapiti executable: `binary`, else $SELFHEAL_WAPITI, else .venv-wapiti, else PATH."""
    explicit = binary or os.environ.get("SELFHEAL_WAPITI")
    if explicit:
        path = Path(explicit)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise WapitiError(f"{path}: wapiti binary not found or not executable")
    for candidate in (_DEFAULT_BINARY, shutil.which("wapiti")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise WapitiError(
        f"wapiti binary not found (looked at {_DEFAULT_BINARY} and PATH); run scripts/install-wapiti.sh "
        "or set SELFHEAL_WAPITI"
    )


def _check_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WapitiError(f"{what} {url!r}: expected an absolute http(s) URL")
    return url


def build_command(
    binary: Path,
    target_url: str,
    *,
    report_path: Path,
    state_dir: Path,
    modules: Sequence[str] = DEFAULT_MODULES,
    max_scan_time: float = 300.0,
    max_attack_time: float | None = None,
    scope: str = "folder",
    openapi_url: str | None = None,
    request_timeout: float = 10.0,
    depth: int | None = None,
) -> list[str]:
    """The argv for one scan (no shell): JSON report, fresh session, everything under `state_dir`."""
    _check_url(target_url, "target URL")
    if openapi_url is not None:
        _check_url(openapi_url, "OpenAPI URL")
    if scope not in SCOPES:
        raise WapitiError(f"scope {scope!r}: expected one of {', '.join(SCOPES)}")
    mods = [m.strip() for m in modules if m.strip()]
    bad = [m for m in mods if not _MODULE_RE.match(m)]
    if not mods or bad:
        raise WapitiError(f"modules {list(modules)!r}: expected module names like 'sql' (bad: {bad})")
    if max_scan_time <= 0:
        raise WapitiError(f"max_scan_time {max_scan_time}: must be positive")
    cmd = [
        str(binary),
        "--url", target_url,
        "--scope", scope,
        "--module", ",".join(mods),
        "--max-scan-time", f"{max_scan_time:g}",
        "--timeout", f"{request_timeout:g}",
        # A fresh session every time: an old crawl must not hide a fix or a regression.
        "--flush-session",
        "--store-session", str(state_dir / "session"),
        "--store-config", str(state_dir / "config"),
        "--format", "json",
        "--output", str(report_path),
        "--no-bugreport",
        "--verbose", "0",
    ]
    if openapi_url:
        cmd += ["--swagger", openapi_url]  # makes Wapiti attack every documented operation
    if max_attack_time:
        cmd += ["--max-attack-time", f"{max_attack_time:g}"]
    if depth is not None:
        cmd += ["--depth", str(int(depth))]
    return cmd


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())


def scan(
    target_url: str,
    modules: Sequence[str] = DEFAULT_MODULES,
    max_scan_time: float = 300.0,
    output_dir: Path | None = None,
    *,
    openapi_url: str | None = None,
    scope: str = "folder",
    binary: str | os.PathLike[str] | None = None,
    max_attack_time: float | None = None,
    request_timeout: float = 10.0,
    grace_s: float = 120.0,
) -> ScanResult:
    """Run one scan and return the validated report with how it was produced.

    Wapiti's own --max-scan-time bounds crawl and attacks; the process gets
    `grace_s` more to write its report before it is killed.
    """
    exe = find_wapiti(binary)
    owns_dir = output_dir is None
    out = Path(tempfile.mkdtemp(prefix="wapiti-")) if owns_dir else Path(output_dir)  # type: ignore[arg-type]
    try:
        out.mkdir(parents=True, exist_ok=True)
        report_path = out / "wapiti-report.json"
        report_path.unlink(missing_ok=True)
        cmd = build_command(
            exe, target_url, report_path=report_path, state_dir=out, modules=modules,
            max_scan_time=max_scan_time, max_attack_time=max_attack_time, scope=scope,
            openapi_url=openapi_url, request_timeout=request_timeout,
        )
        started = time.monotonic()
        report = _execute(cmd, target_url, report_path, max_scan_time + grace_s)
        duration = time.monotonic() - started
    finally:
        if owns_dir:
            shutil.rmtree(out, ignore_errors=True)
    return ScanResult(report=report, command=tuple(cmd), duration_s=duration,
                      report_path=None if owns_dir else report_path)


def _execute(cmd: list[str], target_url: str, report_path: Path, timeout: float) -> bytes:
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL,
            timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise WapitiError(f"wapiti scan of {target_url} did not finish within {timeout:g} s; killed") from exc
    if proc.returncode != 0 or not report_path.is_file():
        raise WapitiError(
            f"wapiti scan of {target_url} failed (exit {proc.returncode}, report "
            f"{'written' if report_path.is_file() else 'missing'}): {_tail(proc.stderr or proc.stdout)}"
        )
    report = read_report(report_path)
    infos = json.loads(report).get("infos") or {}
    if infos.get("crawled_pages_nbr") == 0:
        # Wapiti exits 0 and writes an empty report when it cannot reach the target;
        # taken as "clean", that would wrongly auto-resolve every open finding.
        errors = [line for line in proc.stdout.splitlines() if line.startswith("[!]")]
        raise WapitiError(
            f"wapiti scan of {target_url} reached no page (target down or out of scope): "
            f"{_tail(chr(10).join(errors)) or 'no error reported'}"
        )
    return report


def read_report(path: Path) -> bytes:
    """A Wapiti JSON report's bytes, size-bounded and checked to be one."""
    size = path.stat().st_size
    if size > MAX_REPORT_BYTES:
        raise WapitiError(f"{path}: report is {size} bytes, over the {MAX_REPORT_BYTES} limit")
    report = path.read_bytes()
    try:
        doc = json.loads(report)
    except ValueError as exc:
        raise WapitiError(f"{path}: wapiti wrote invalid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("vulnerabilities"), dict):
        raise WapitiError(f"{path}: not a Wapiti JSON report (no 'vulnerabilities' object)")
    return report


def run_wapiti(
    target_url: str,
    modules: Sequence[str] = DEFAULT_MODULES,
    max_scan_time: float = 300.0,
    output_dir: Path | None = None,
    **kwargs: object,
) -> bytes:
    """Scan `target_url` with the real Wapiti and return its JSON report bytes.

    Keyword arguments are passed to `scan` (openapi_url, scope, binary, ...).
    With no `output_dir` the working files go to a temporary directory that is removed.
    """
    return scan(target_url, modules, max_scan_time, output_dir, **kwargs).report  # type: ignore[arg-type]

"""The five sandbox checks. Each returns a CheckResult with its output, duration and verdict.

A check that cannot do its job fails (a missing scanner, a dead container, an
exploit that does not reproduce on the baseline): only a positive result may
let a patch through. ``DockerUnavailable`` is not caught here: it ends the
whole verification.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from packaging.version import InvalidVersion, Version

from selfheal.sandbox import exploit, latency
from selfheal.sandbox.errors import DockerUnavailable, SandboxError
from selfheal.sandbox.isolation import RunningService, Sandbox
from selfheal.sandbox.result import CheckResult
from selfheal.sandbox.spec import SandboxSpec

_SUMMARY = re.compile(r"\b\d+ (passed|failed|errors?|skipped|xfailed|deselected)\b")
_VERSION_SCRIPT = (
    "import importlib.metadata as m, json, sys\n"
    "out = {}\n"
    "for n in sys.argv[1:]:\n"
    "    try:\n"
    "        out[n] = m.version(n)\n"
    "    except m.PackageNotFoundError:\n"
    "        out[n] = None\n"
    "print(json.dumps(out))\n"
)


def _summary(output: str) -> str:
    """The test runner's verdict line (pytest's "1 failed, 20 passed in 2.1s"), else the last line."""
    lines = [x.strip(" =") for x in output.strip().splitlines() if x.strip()]
    for line in reversed(lines):
        if _SUMMARY.search(line):
            return line[:200]
    return (lines[-1] if lines else "no output")[:200]


def command_argv(command: str) -> list[str]:
    """The test command as argv: through ``/bin/sh -c`` only when it uses shell syntax."""
    return ["/bin/sh", "-c", command] if any(ch in command for ch in "|&;<>()$`*?") else shlex.split(command)


def start_tests(sb: Sandbox, spec: SandboxSpec, image: str) -> tuple[Any, float]:
    """Start (1) in the background: the service's own test command in the patched image, no network."""
    started = time.monotonic()
    return sb.start_command(image, command_argv(spec.test_command or ""), role="tests"), started


def finish_tests(sb: Sandbox, spec: SandboxSpec, container: Any, started: float) -> CheckResult:
    """(1) Wait for the suite; a non-zero exit or the timeout fails the check."""
    cmd = spec.test_command or ""
    timeout = sb.limits.test_timeout_s
    res = sb.wait_command(container, timeout, "tests", started)
    details: dict[str, Any] = {"command": cmd, "exit_code": res.exit_code}
    duration = time.monotonic() - started
    if res.timed_out:
        reason = f"timeout: `{cmd}` did not finish within {min(timeout, duration):.0f} s (killed)"
        return CheckResult("tests", "failed", reason, duration, res.output, details)
    if res.exit_code != 0:
        reason = f"`{cmd}` exited with code {res.exit_code}: {_summary(res.output)}"
        return CheckResult("tests", "failed", reason, duration, res.output, details)
    details["summary"] = _summary(res.output)
    return CheckResult("tests", "passed", "", duration, res.output, details)


def run_tests(sb: Sandbox, spec: SandboxSpec, image: str) -> CheckResult:
    """(1) start and wait."""
    container, started = start_tests(sb, spec, image)
    return finish_tests(sb, spec, container, started)


def _unalive(sb: Sandbox, svc: RunningService) -> str:
    ok, why = sb.alive(svc)
    return "" if ok else f"the {svc.role} service died during the check: {why}"


def exploit_replay(sb: Sandbox, spec: SandboxSpec, baseline: RunningService, patched: RunningService) -> CheckResult:
    """(2) Every attack probe must reproduce on the baseline and must not on the patched image."""
    started = time.monotonic()
    probes = exploit.probes_for(spec.exploits, spec.sqli_differential)
    if not probes:
        return CheckResult("exploit_replay", "failed", "no attack request could be judged (every oracle is empty)",
                           time.monotonic() - started)
    timeout = sb.limits.request_timeout_s
    rows: list[dict[str, Any]] = []
    lines: list[str] = []
    still: list[str] = []
    on_baseline = 0
    for probe in probes:
        sb.cap(timeout, "exploit_replay")
        vb = exploit.judge(probe, baseline.ip, baseline.port, timeout, markup_only=spec.xss)
        vp = exploit.judge(probe, patched.ip, patched.port, timeout, markup_only=spec.xss)
        rows.append({"probe": probe.label, "kind": probe.kind, "source": probe.request.source,
                     "baseline": {"reproduced": vb.reproduced, "statuses": vb.statuses, "evidence": vb.evidence[:300],
                                  "error": vb.error},
                     "patched": {"reproduced": vp.reproduced, "statuses": vp.statuses, "evidence": vp.evidence[:300],
                                 "error": vp.error}})
        lines.append(f"{probe.label}\n  baseline: {'REPRODUCED' if vb.reproduced else 'no'} {vb.statuses} "
                     f"{vb.evidence or vb.error}\n  patched:  {'REPRODUCED' if vp.reproduced else 'no'} "
                     f"{vp.statuses} {vp.evidence or vp.error}")
        if vp.error:
            dead = _unalive(sb, patched)
            reason = dead or f"the patched service did not answer {probe.label}: {vp.error}"
            return CheckResult("exploit_replay", "failed", reason, time.monotonic() - started, "\n".join(lines),
                               {"probes": rows})
        if vb.error:
            reason = f"inconclusive: the baseline did not answer {probe.label}: {vb.error}"
            return CheckResult("exploit_replay", "failed", reason, time.monotonic() - started, "\n".join(lines),
                               {"probes": rows})
        on_baseline += vb.reproduced
        if vp.reproduced:
            still.append(f"{probe.label} ({vp.evidence[:160]})")
    output = "\n".join(lines)
    details = {"probes": rows, "reproduced_on_baseline": on_baseline}
    duration = time.monotonic() - started
    if still:
        return CheckResult("exploit_replay", "failed", f"exploit still reproduces on the patched image: {still[0]}",
                           duration, output, details)
    if not on_baseline:
        return CheckResult("exploit_replay", "failed",
                           f"inconclusive: exploit does not reproduce on the baseline ({len(probes)} probes)",
                           duration, output, details)
    dead = _unalive(sb, patched)
    if dead:
        return CheckResult("exploit_replay", "failed", dead, duration, output, details)
    return CheckResult("exploit_replay", "passed", "", duration, output, details)


def rescan_target(spec: SandboxSpec, base_url: str) -> tuple[str, str, str | None]:
    """(start URL, Wapiti scope, OpenAPI URL) of the targeted re-scan.

    When the plan's re-scan names one path and a replayed request shows the parameters there, the
    scan is that one URL (scope ``url``: only the finding's endpoint and parameters are attacked,
    a third of the requests of a whole-service crawl). Otherwise the whole service from ``/``, with
    the OpenAPI document when the catalog has one.
    """
    rs = spec.rescan
    paths = list(dict.fromkeys(rs.paths)) if rs else []
    if len(paths) == 1 and "{" not in paths[0]:
        params: dict[str, str] = {}
        for req in spec.exploits:
            parts = urlsplit(req.path)
            if parts.path == paths[0] and req.method in ("GET", "HEAD"):
                for name, _value in parse_qsl(parts.query, keep_blank_values=True):
                    params.setdefault(name, "selfheal")
        if params:
            return f"{base_url}{paths[0]}?{urlencode(params)}", "url", None
    openapi = f"{base_url}{spec.openapi_path}" if spec.openapi_path else None
    return f"{base_url}/", "folder", openapi


def rescan(sb: Sandbox, spec: SandboxSpec, patched: RunningService) -> CheckResult:
    """(3) The real Wapiti, only the plan's modules, against the patched instance: the finding is gone."""
    from selfheal.findings import parse_bytes
    from selfheal.findings.fingerprint import path_template
    from selfheal.findings.model import ParseError
    from selfheal.scanners import wapiti

    started = time.monotonic()
    rs = spec.rescan
    assert rs is not None
    if rs.scanner not in ("wapiti", ""):
        return CheckResult("rescan", "failed", f"re-scan with {rs.scanner!r} is not available in the sandbox "
                                               "(only wapiti runs here)", 0.0)
    budget = sb.cap(sb.limits.rescan_timeout_s, "rescan")
    target, scope, openapi = rescan_target(spec, patched.url)
    try:
        result = wapiti.scan(target, rs.modules, max_scan_time=max(5.0, budget - 10), openapi_url=openapi,
                             scope=scope, request_timeout=sb.limits.request_timeout_s, grace_s=10)
        findings = parse_bytes(result.report, "sandbox re-scan", "wapiti-json", service=spec.service)
    except (wapiti.WapitiError, ParseError) as e:
        dead = _unalive(sb, patched)
        return CheckResult("rescan", "failed", dead or f"wapiti: {e}", time.monotonic() - started)
    wanted = set(spec.fingerprints)
    paths = {path_template(p) for p in rs.paths}
    cwes = set(rs.cwes)

    def matches(f: Any) -> bool:
        if f.fingerprint in wanted:
            return True
        if not (cwes or wanted) and (not paths or path_template(f.location.path if f.location else "") in paths):
            return True  # the plan named no finding: anything these modules report counts
        return bool(cwes) and f.cwe in cwes and (not paths or (
            f.location is not None and path_template(f.location.path) in paths))

    seen = [{"title": f.title, "cwe": f.cwe, "method": f.location.method if f.location else None,
             "path": f.location.path if f.location else None, "param": f.location.param if f.location else None,
             "fingerprint": f.fingerprint} for f in findings]
    again = [s for s, f in zip(seen, findings, strict=True) if matches(f)]
    doc = json.loads(result.report)
    crawled = (doc.get("infos") or {}).get("crawled_pages_nbr")
    head = (f"{result.command[0]} modules={','.join(rs.modules)} scope={scope} target={target} "
            f"crawled={crawled} findings={len(findings)}")
    output = "\n".join([head, *(f"{s['title']}: {s['method']} {s['path']} {s['param']} [{s['fingerprint'][:12]}]"
                                for s in seen)])
    details = {"modules": list(rs.modules), "target": target, "scope": scope, "crawled_pages": crawled,
               "findings": seen[:50], "reappeared": again[:20], "scan_s": round(result.duration_s, 3)}
    duration = time.monotonic() - started
    dead = _unalive(sb, patched)
    if dead:
        return CheckResult("rescan", "failed", dead, duration, output, details)
    if again:
        a = again[0]
        return CheckResult("rescan", "failed", f"the finding reappears: {a['title']} at {a['method']} {a['path']} "
                                               f"({a['param']}) [{a['fingerprint'][:12]}]", duration, output, details)
    return CheckResult("rescan", "passed", "", duration, output, details)


def _python_versions(sb: Sandbox, svc: RunningService, names: list[str]) -> tuple[dict[str, str | None], str]:
    out = ""
    for python in ("python", "python3"):
        code, out = sb.exec(svc, [python, "-c", _VERSION_SCRIPT, *names])
        if code == 0:
            return json.loads(out.strip().splitlines()[-1]), out
        if code not in (126, 127) and "executable file not found" not in out:
            break
    raise SandboxError("dependency_version", f"cannot read installed versions in the image: {out.strip()[-200:]}")


def dependency_version(sb: Sandbox, spec: SandboxSpec, patched: RunningService) -> CheckResult:
    """(4) Each upgraded package, as installed in the patched image, is at least the fixed version."""
    started = time.monotonic()
    checks = spec.dependency_versions
    py = [c for c in checks if c.ecosystem in ("pypi", "")]
    installed: dict[str, str | None] = {}
    lines: list[str] = []
    bad: list[str] = []
    if py:
        found, _raw = _python_versions(sb, patched, [c.package for c in py])
        installed.update(found)
    for c in checks:
        if c.ecosystem in ("pypi", ""):
            have = installed.get(c.package)
            try:
                ok = have is not None and Version(have) >= Version(c.min_version)
            except InvalidVersion:
                ok = False
        else:
            code, out = sb.exec(patched, ["dpkg-query", "-W", "-f=${Version}", c.package])
            have = out.strip() if code == 0 else None
            installed[c.package] = have
            ok = have is not None and sb.exec(patched, ["dpkg", "--compare-versions", have, "ge",
                                                         c.min_version])[0] == 0
        planned = f", planned {c.expected_version}" if c.expected_version else ""
        lines.append(f"{c.package}: installed {have or 'not installed'}, required >= {c.min_version}{planned}"
                     + (" ok" if ok else " TOO OLD"))
        if not ok:
            bad.append(f"{c.package} {have or 'is not installed'}" + (f" < {c.min_version}" if have else ""))
    duration = time.monotonic() - started
    details = {"installed": installed}
    if bad:
        return CheckResult("dependency_version", "failed", f"installed version too old: {bad[0]}", duration,
                           "\n".join(lines), details)
    return CheckResult("dependency_version", "passed", "", duration, "\n".join(lines), details)


def latency_check(sb: Sandbox, spec: SandboxSpec, baseline: RunningService, patched: RunningService) -> CheckResult:
    """(5) p95 of the patched image within the plan's ratio of the current image's, same run, interleaved.

    A round that fails only on speed is measured once more (``Limits.latency_rounds``) and the patch
    fails only if every round does: on a shared host a burst of someone else's work can land on one
    side of a round; a real regression shows in both. Errors of the patched image are never retried.
    """
    started = time.monotonic()
    lc = spec.latency
    assert lc is not None
    rounds: list[dict[str, Any]] = []
    lines: list[str] = []
    cmp = None
    for n in range(1, max(1, sb.limits.latency_rounds) + 1):
        cmp = latency.compare(
            latency.Target("baseline", baseline.ip, baseline.port), latency.Target("patched", patched.ip, patched.port),
            lc.paths, requests=lc.requests, warmup=sb.limits.latency_warmup, max_ratio=lc.max_ratio,
            abs_slack_ms=sb.limits.latency_abs_slack_ms, timeout=sb.limits.request_timeout_s, deadline=sb.deadline,
        )
        ratio, low, high = (round(x, 4) if math.isfinite(x) else None
                            for x in (cmp.ratio, cmp.ratio_low, cmp.ratio_high))
        rounds.append({"stats": cmp.stats, "ratio": ratio, "ratio_ci90": [low, high], "passed": cmp.passed,
                       "reason": cmp.reason, "errors": cmp.errors})
        lines += [f"round {n}: " + "; ".join(f"{role} " + ", ".join(f"{k}={v}" for k, v in st.items())
                                          for role, st in cmp.stats.items()),
                  f"  p95 ratio {cmp.ratio:.3f} (90 % bootstrap interval {cmp.ratio_low:.3f} .. {cmp.ratio_high:.3f})"
                  f" -> {'ok' if cmp.passed else cmp.reason}"]
        if cmp.passed or not cmp.reason.startswith("too slow"):
            break
    assert cmp is not None
    details = {"stats": cmp.stats, "ratio": rounds[-1]["ratio"], "ratio_ci90": rounds[-1]["ratio_ci90"],
               "rounds": rounds, "max_ratio": lc.max_ratio, "abs_slack_ms": sb.limits.latency_abs_slack_ms,
               "paths": list(lc.paths), "requests": lc.requests}
    duration = time.monotonic() - started
    output = "\n".join(lines)
    if not cmp.passed:
        dead = _unalive(sb, patched)
        reason = dead or (cmp.reason + (f" (in all {len(rounds)} rounds)" if len(rounds) > 1 else ""))
        return CheckResult("latency", "failed", reason, duration, output, details)
    return CheckResult("latency", "passed", "", duration, output, details)


__all__ = ["DockerUnavailable", "dependency_version", "exploit_replay", "latency_check", "rescan", "run_tests"]

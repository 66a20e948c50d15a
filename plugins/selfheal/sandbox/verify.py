"""Verify one patch in the sandbox: build, run isolated, check, always clean up.

The one entry point the DAG calls (from a task; docker-py talks to the local
engine): ``verify_patch(plan, repo=..., commit=...)`` returns a
``VerificationResult`` whose ``to_dict()`` goes on the patch record. It never
raises for a bad patch or a failing environment: every problem ends as
``passed=False`` with a reason naming the stage or check.

From the DAG, a plain ``@task`` on a worker that runs on the Docker host
(the checks reach the sandbox's internal network from the host)::

    from selfheal.sandbox import verify_patch
    result = verify_patch(plan_dict, repo=service.repository, commit=commit_sha, service=service)
    record.sandbox = result.to_dict()   # state: verified if result.passed else failed (result.reason)

or ``python -m selfheal.sandbox verify --plan plan.json --repo R --commit C --service NAME``
(JSON on stdout). Not the DockerOperator: a verification starts several
containers and a network of its own and talks to them, which a single
operator container could only do with the Docker socket and a leg in each
sandbox network.

Order: clean up stale sandboxes; build the patched image (and the baseline
image of the plan's base commit, reused across patches); then in one sandbox:
(1) the service's test suite in its own network-less container, while the
baseline and patched services start side by side for (4) installed
versions, (2) exploit replay and (3) the targeted re-scan; last, on a quiet
sandbox, (5) latency. With ``fail_fast`` the first failed check ends the run
(the rest are recorded as skipped, with the reason).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selfheal.logs import propagate, with_log_context
from selfheal.sandbox import checks
from selfheal.sandbox.build import BuiltImage, build_image, existing_image, resolve_commit
from selfheal.sandbox.errors import BuildFailed, DockerUnavailable, SandboxError, docker_errors
from selfheal.sandbox.isolation import RunningService, Sandbox, cleanup_stale
from selfheal.sandbox.result import CHECK_ORDER, CheckResult, VerificationResult
from selfheal.sandbox.spec import Limits, SandboxSpec, spec_from_plan

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


class Terminated(BaseException):  # like KeyboardInterrupt: not an error of the patch
    """SIGTERM arrived during a verification (Airflow kills a task with SIGTERM first)."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into an exception so ``finally`` removes the sandbox (only where nobody else handles it)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        raise Terminated(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def docker_client(timeout: int = 120) -> Any:
    """A docker-py client from the environment (DOCKER_HOST etc.); DockerUnavailable when it does not answer."""
    import docker

    with docker_errors("connect"):
        client = docker.from_env(timeout=timeout)
        client.ping()
    return client


@with_log_context(patch_id="plan.id|plan.patch_id", service="service.name|plan.service")
def verify_patch(
    plan: Any,
    *,
    repo: str | os.PathLike[str],
    commit: str,
    baseline_commit: str | None = None,
    baseline_image: str | None = None,
    service: Any = None,
    client: Any = None,
    limits: Limits | None = None,
    fail_fast: bool = True,
    stale_max_age_s: float = 3600.0,
    progress: Progress | None = None,
    spec_overrides: Mapping[str, Any] | None = None,
) -> VerificationResult:
    """Build ``commit`` of ``repo`` and verify it as ``plan`` expects; never raises for a failed verification.

    ``plan``: a PatchPlan, its dict form, or a SandboxSpec. ``service``: the catalog entry (Dockerfile,
    port, health path, OpenAPI path, test command). The baseline (the unpatched image, run side by side)
    is ``baseline_image`` if given, else built from ``baseline_commit`` or the plan's ``base_commit``.
    """
    started = time.monotonic()
    limits = limits or Limits()
    try:
        spec = plan if isinstance(plan, SandboxSpec) else spec_from_plan(plan, service)
    except (ValueError, TypeError) as e:
        pid = getattr(plan, "id", None) or (plan.get("id") if isinstance(plan, Mapping) else None) or "?"
        return VerificationResult(patch_id=str(pid), service="", reason=f"plan: {e}", failed_check="plan")
    if spec_overrides:
        spec = spec.with_(**spec_overrides)
    if baseline_commit is None and not isinstance(plan, SandboxSpec):
        baseline_commit = getattr(plan, "base_commit", None) or (
            plan.get("base_commit") if isinstance(plan, Mapping) else None)
    result = VerificationResult(
        patch_id=spec.patch_id, service=spec.service,
        started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    say = _progress(progress, spec.patch_id)
    deadline = time.monotonic() + limits.hard_timeout_s
    sandbox: Sandbox | None = None
    try:
        with _sigterm_raises():
            try:
                client = client or docker_client()
                say("cleanup stale sandboxes")
                t = time.monotonic()
                try:
                    stale = cleanup_stale(client, stale_max_age_s)
                    result.cleanup["stale_removed"] = stale["containers"] + stale["networks"]
                except DockerUnavailable:
                    raise
                except SandboxError as e:  # never let someone else's leftovers block this run
                    result.cleanup["stale_error"] = e.reason
                result.timings["cleanup_stale_s"] = round(time.monotonic() - t, 3)
                patched, baseline = _build(client, spec, Path(repo), commit, baseline_commit, baseline_image,
                                           limits, deadline, result, say)
                sandbox = Sandbox(client, patch_id=spec.patch_id, limits=limits, deadline=deadline)
                result.sandbox_id = sandbox.id
                sandbox.open()
                _run_checks(sandbox, spec, patched, baseline, result, fail_fast, say)
            except BuildFailed as e:
                result.reason, result.failed_check = f"{e.stage}: {e.reason}", "build"
                result.build["log_tail"] = e.log[-4000:]
            except SandboxError as e:
                result.failed_check = result.failed_check or e.stage
                result.reason = f"{result.failed_check}: {e.reason}"
            finally:
                if sandbox is not None:
                    say("cleanup")
                    t = time.monotonic()
                    result.cleanup.update(sandbox.close())
                    result.timings["cleanup_s"] = round(time.monotonic() - t, 3)
    except Terminated as e:
        log.warning("sandbox %s: interrupted by %s after %.1f s; sandbox %s removed: %s", spec.patch_id, e,
                    time.monotonic() - started, result.sandbox_id or "(none)", result.cleanup.get("ok"))
        raise SystemExit(128 + signal.SIGTERM) from None
    _finish(result, spec, started)
    return result


def _progress(progress: Progress | None, patch_id: str) -> Progress:
    def say(stage: str) -> None:
        log.info("sandbox %s: %s", patch_id, stage)
        if progress is not None:
            progress(stage)
    return say


def _build(
    client: Any, spec: SandboxSpec, repo: Path, commit: str, baseline_commit: str | None,
    baseline_image: str | None, limits: Limits, deadline: float, result: VerificationResult, say: Progress,
) -> tuple[BuiltImage, BuiltImage | None]:
    """The patched image (``no_cache``/``pull`` as the plan asks) and the baseline (cached per commit)."""
    labels = {"selfheal.service": spec.service, "selfheal.patch": spec.patch_id}
    common = {"dockerfile": spec.dockerfile, "base_image": spec.base_image, "build_args": spec.build_args,
              "progress": say}

    def budget() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BuildFailed("build", "timeout: the sandbox's hard timeout was reached")
        return min(limits.build_timeout_s, left)

    t = time.monotonic()
    say("build patched image")
    patched = build_image(client, repo, commit, spec.image_tag, no_cache=spec.no_cache, pull=spec.pull,
                          labels=labels, timeout_s=budget(),
                          **{**common, "base_image": spec.patched_base_image or spec.base_image})
    result.timings["build_patched_s"] = round(time.monotonic() - t, 3)
    result.commit, result.image, result.image_id, result.image_digest = (
        patched.commit, patched.tag, patched.image_id, patched.digest)
    result.build = {"patched": {k: v for k, v in patched.to_dict().items() if k != "log_tail"},
                    "base_image": {"patched": spec.patched_base_image or spec.base_image,
                                   "baseline": spec.base_image}}
    needs_baseline = bool(spec.exploits) or spec.latency is not None
    baseline: BuiltImage | None = None
    t = time.monotonic()
    if baseline_image:
        with docker_errors("baseline image"):
            img = existing_image(client, baseline_image)
        if img is None:
            raise BuildFailed("baseline image", f"{baseline_image} does not exist")
        baseline = BuiltImage(tag=baseline_image, image_id=img.id, commit=img.labels.get("selfheal.commit", ""),
                              reused=True)
    elif baseline_commit:
        say("build baseline image")
        try:
            full = resolve_commit(repo, baseline_commit)
            # Never pulled: the baseline is the running version, on the base image it was built on.
            baseline = build_image(client, repo, full, spec.baseline_tag(full), reuse=True, timeout_s=budget(),
                                   labels={"selfheal.service": spec.service, "selfheal.role": "baseline"}, **common)
        except BuildFailed as e:
            raise BuildFailed(f"baseline {e.stage}", e.reason, log=e.log) from None
    elif needs_baseline:
        raise SandboxError("baseline", "no baseline commit or image: exploit replay and latency need the "
                                       "unpatched image to compare with")
    result.timings["build_baseline_s"] = round(time.monotonic() - t, 3)
    if baseline is not None:
        result.baseline_commit, result.baseline_image, result.baseline_image_id = (
            baseline.commit, baseline.tag, baseline.image_id)
        result.build["baseline"] = {k: v for k, v in baseline.to_dict().items() if k != "log_tail"}
    return patched, baseline


def _run_checks(
    sb: Sandbox, spec: SandboxSpec, patched: BuiltImage, baseline: BuiltImage | None,
    result: VerificationResult, fail_fast: bool, say: Progress,
) -> None:
    """Run the applicable checks; the test suite runs in its own container while the services start.

    Timeline: start the test container and both services; while the suite runs, the quick checks
    (installed versions, exploit replay) run against the services, then the re-scan starts in a
    worker thread; then the suite's and the re-scan's verdicts; the latency comparison last, when
    nothing else is running in the sandbox.
    """
    todo = spec.applicable()
    done: dict[str, CheckResult] = {}

    def record(check: CheckResult) -> bool:
        done[check.name] = check
        result.checks.append(check)
        result.timings[f"{check.name}_s"] = check.duration_s
        return check.passed or not fail_fast

    def attempt(name: str, fn: Callable[[], CheckResult]) -> bool:
        if name != "rescan":  # announced when it starts in the background
            say(f"check {name}")
        t = time.monotonic()
        try:
            check = fn()
        except DockerUnavailable as e:
            record(CheckResult(name, "failed", e.reason, time.monotonic() - t))
            result.failed_check = name
            raise
        except SandboxError as e:
            check = CheckResult(name, "failed", e.reason, time.monotonic() - t)
        return record(check)

    try:
        tests: tuple[Any, float] | None = None
        if "tests" in todo:
            say("start tests")
            tests = checks.start_tests(sb, spec, patched.tag)
        rest = [n for n in todo if n != "tests"]
        svc_patched: RunningService | None = None
        svc_base: RunningService | None = None
        if rest:
            say("start services")
            t = time.monotonic()
            try:
                svc_patched = sb.launch_service("patched", patched.tag, spec.port)
                if baseline is not None and ({"exploit_replay", "latency"} & set(rest)):
                    svc_base = sb.launch_service("baseline", baseline.tag, spec.port)
                for svc in (svc_patched, svc_base):
                    if svc is not None:
                        sb.wait_service(svc, spec.health_path)
            except DockerUnavailable:
                raise
            except SandboxError as e:
                record(CheckResult(rest[0], "failed", e.reason))
                rest = []
            finally:
                result.timings["start_services_s"] = round(time.monotonic() - t, 3)
        quick: list[tuple[str, Callable[[], CheckResult]]] = [
            ("dependency_version", lambda: checks.dependency_version(sb, spec, svc_patched)),
            ("exploit_replay", lambda: checks.exploit_replay(sb, spec, svc_base, svc_patched)),
        ]
        for name, fn in quick:
            if name in rest and not attempt(name, fn):
                return
        # The re-scan (Wapiti: seconds of interpreter start-up, then HTTP) overlaps the test suite.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rescan")
        try:
            rescan = None
            if "rescan" in rest:
                say("check rescan")
                rescan = pool.submit(propagate(_timed), "rescan", lambda: checks.rescan(sb, spec, svc_patched))
            ok = True
            if tests is not None:
                ok = attempt("tests", lambda: checks.finish_tests(sb, spec, *tests))
            if rescan is not None:
                ok = attempt("rescan", rescan.result) and ok
        finally:
            # Not waiting on an exception (SIGTERM, daemon gone): the scan fails by itself once the
            # sandbox is removed, and the cleanup must not wait for it.
            pool.shutdown(wait=False, cancel_futures=True)
        if not ok:
            return
        if "latency" in rest:
            attempt("latency", lambda: checks.latency_check(sb, spec, svc_base, svc_patched))
    finally:
        first_failed = next((c for c in result.checks if not c.passed), None)
        why = f"{first_failed.name} failed" if first_failed else "verification stopped"
        for name in todo:
            if name not in done:
                result.checks.append(CheckResult(name, "skipped", f"not run: {why}"))
        result.checks.sort(key=lambda c: CHECK_ORDER.index(c.name) if c.name in CHECK_ORDER else 99)


def _timed(name: str, fn: Callable[[], CheckResult]) -> CheckResult:
    """Run a check in a worker thread; its errors come back as a failed check (DockerUnavailable re-raised)."""
    t = time.monotonic()
    try:
        return fn()
    except DockerUnavailable:
        raise
    except SandboxError as e:
        return CheckResult(name, "failed", e.reason, time.monotonic() - t)


def _finish(result: VerificationResult, spec: SandboxSpec, started: float) -> None:
    result.duration_s = round(time.monotonic() - started, 3)
    if result.reason:  # a stage failed before or around the checks
        result.passed = False
        return
    failed = next((c for c in result.checks if c.status == "failed"), None)
    if failed is not None:
        result.passed = False
        result.failed_check = failed.name
        result.reason = f"{failed.name}: {failed.reason}"
        return
    missing = [n for n in spec.applicable() if result.check(n) is None or not result.check(n).passed]
    if missing:
        result.passed = False
        result.failed_check = missing[0]
        result.reason = f"{missing[0]}: did not run"
        return
    if not spec.applicable():
        result.passed = False
        result.reason = "no applicable check: a patch with nothing to verify is not verified"
        return
    result.passed = True

"""Bad input and faults end as a failed verification with a clear reason, and leave nothing behind.

The daemon "goes away" for the verifying process through a socket relay the
test cuts (the shared dockerd keeps running for everyone else); the killed
verifier is a real child process killed with SIGKILL. In both cases the next
run's ``cleanup_stale`` removes what the dead run could not.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from selfheal.sandbox import Limits, cleanup_stale, leftovers, verify_patch
from selfheal.sandbox.isolation import LABEL_PATCH, LABEL_ROLE, Sandbox
from selfheal.sandbox.spec import spec_from_plan
from tests.integration.sandbox.kit import (
    PARAMETERIZED,
    VULNERABLE,
    DockerSocketProxy,
    assert_no_leftovers,
    docker_socket_path,
    make_commit,
    plan_like,
    sandbox_cli,
    wait_for_stage,
)

pytestmark = pytest.mark.docker


def test_dockerfile_that_fails_to_build(docker_client, base_image, demo_repo, base_commit, plans, service,
                                        test_images) -> None:
    sha = make_commit(demo_repo, base_commit, "broken-dockerfile", {"Dockerfile": lambda s: s + "RUN exit 3\n"})
    plan = plan_like(plans["code_fix"], "ptestbrokendockerfile")
    test_images.append(spec_from_plan(plan, service).image_tag)
    r = verify_patch(plan, repo=demo_repo, commit=sha, service=service, client=docker_client)
    assert not r.passed and r.failed_check == "build"
    assert r.reason.startswith("build: The command '/bin/sh -c exit 3' returned a non-zero code: 3"), r.reason
    assert r.checks == [] and r.sandbox_id == ""  # nothing ran, nothing was started
    assert_no_leftovers(docker_client, patch_id=plan.id)


def test_fixed_version_that_does_not_exist(docker_client, base_image, demo_repo, base_commit, plans, service) -> None:
    sha = make_commit(demo_repo, base_commit, "no-such-version", {
        "requirements.txt": lambda s: s.replace("jinja2==3.1.2", "jinja2==9.9.9")})
    plan = plan_like(plans["dependency_upgrade"], "ptestnosuchversion")
    r = verify_patch(plan, repo=demo_repo, commit=sha, service=service, client=docker_client)
    assert not r.passed and r.failed_check == "build"
    assert r.reason.startswith("dependencies: requirements-test.txt: pip download failed: ERROR:"), r.reason
    assert "jinja2==9.9.9" in r.reason
    assert_no_leftovers(docker_client, patch_id=plan.id)


def test_missing_base_image_is_named(docker_client, demo_repo, plans, commits, service) -> None:
    r = verify_patch(plans["code_fix"], repo=demo_repo, commit=commits["code_fix"], service=service,
                     client=docker_client, spec_overrides={"base_image": "selfheal/base:missing-for-test"})
    assert not r.passed and r.failed_check == "build"
    assert r.reason.startswith("build: base image selfheal/base:missing-for-test is not present"), r.reason


def test_unknown_commit_is_named(docker_client, demo_repo, plans, service) -> None:
    r = verify_patch(plans["code_fix"], repo=demo_repo, commit="deadbeef" * 5, service=service,
                     client=docker_client)
    assert not r.passed and r.failed_check == "build"
    assert r.reason == f"checkout: {demo_repo}: commit '{'deadbeef' * 5}' not found", r.reason


def test_hanging_test_suite_is_a_timeout(docker_client, base_image, demo_repo, base_commit, plans, service,
                                         test_images) -> None:
    sha = make_commit(demo_repo, base_commit, "hanging-suite", {
        "demo_api/db.py": lambda s: s.replace(VULNERABLE, PARAMETERIZED),  # a real fix, but ...
        "tests/test_zz_hang.py": lambda _s: "import time\n\n\ndef test_hangs():\n    time.sleep(3600)\n"})
    plan = plan_like(plans["code_fix"], "ptesthangingsuite")
    test_images.append(spec_from_plan(plan, service).image_tag)
    r = verify_patch(plan, repo=demo_repo, commit=sha, service=service, client=docker_client,
                     limits=Limits(test_timeout_s=10))
    assert not r.passed and r.failed_check == "tests"
    assert r.reason == "tests: timeout: `pytest` did not finish within 10 s (killed)", r.reason
    assert 10 <= r.check("tests").duration_s < 30
    assert_no_leftovers(docker_client, r.sandbox_id)


def test_service_killed_from_outside_mid_run(docker_client, base_image, demo_repo, plans, commits, service) -> None:
    plan = plans["code_fix"]

    def kill_patched(stage: str) -> None:
        if stage == "check exploit_replay":
            (c,) = docker_client.containers.list(filters={"label": [f"{LABEL_PATCH}={plan.id}",
                                                                    f"{LABEL_ROLE}=patched"]})
            c.kill()

    r = verify_patch(plan, repo=demo_repo, commit=commits["code_fix"], service=service, client=docker_client,
                     progress=kill_patched)
    assert not r.passed and r.failed_check == "exploit_replay"
    assert r.reason.startswith("exploit_replay: the patched service died during the check: container exited "
                               "(exit code 137"), r.reason
    assert r.cleanup["ok"]
    assert_no_leftovers(docker_client, r.sandbox_id)


def test_docker_daemon_going_away_mid_run(docker_client, base_image, demo_repo, plans, commits,
                                          tmp_path: Path) -> None:
    # Warm the images first so the child spends its time in the sandbox, not in the build.
    proxy = DockerSocketProxy(tmp_path / "docker.sock", docker_socket_path()).start()
    try:
        proc = sandbox_cli(plans["code_fix"], tmp_path, demo_repo, commits["code_fix"],
                           env={"DOCKER_HOST": proxy.url})
        wait_for_stage(proc, "check exploit_replay")
        proxy.stop()  # from here on, the child's daemon is gone
        out, err = proc.communicate(timeout=300)
    finally:
        proxy.stop()
    assert proc.returncode == 1, err[-2000:]
    r = json.loads(out.strip().splitlines()[-1])
    assert not r["passed"]
    assert "docker daemon unavailable" in r["reason"], r["reason"]
    assert r["failed_check"] in ("tests", "exploit_replay", "rescan", "latency"), r["reason"]
    # It could not remove its sandbox (the daemon was gone) and says so ...
    assert r["cleanup"]["ok"] is False and "cleanup_stale" in r["cleanup"]["error"]
    assert leftovers(docker_client, r["sandbox_id"])["containers"]
    # ... and the next run (its owner process has exited) removes everything.
    removed = cleanup_stale(docker_client)
    assert f"selfheal-sbx-{r['sandbox_id']}-patched" in removed["containers"]
    assert f"selfheal-sbx-{r['sandbox_id']}" in removed["networks"]
    assert_no_leftovers(docker_client, r["sandbox_id"])


def test_verifier_killed_with_sigkill_is_cleaned_up_by_the_next_run(docker_client, base_image, demo_repo, plans,
                                                                    commits, tmp_path: Path) -> None:
    proc = sandbox_cli(plans["code_fix"], tmp_path, demo_repo, commits["code_fix"])
    try:
        wait_for_stage(proc, "check exploit_replay")
        proc.send_signal(signal.SIGKILL)  # no finally, no handler: the process just ends
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    plan_id = plans["code_fix"].id
    left = leftovers(docker_client, patch_id=plan_id)
    assert any(n.endswith("-patched") for n in left["containers"]) and left["networks"], left
    # A live sandbox of another run (its owner is this test process, alive) must survive the cleanup.
    with Sandbox(docker_client, patch_id="ptestlive") as live:
        removed = cleanup_stale(docker_client, max_age_s=3600)
        assert set(left["containers"]) <= set(removed["containers"])
        assert set(left["networks"]) <= set(removed["networks"])
        assert leftovers(docker_client, live.id)["networks"] == [live.network_name]
    assert_no_leftovers(docker_client, patch_id=plan_id)


def test_sigterm_removes_the_sandbox_before_exiting(docker_client, base_image, demo_repo, plans, commits,
                                                    tmp_path: Path) -> None:
    proc = sandbox_cli(plans["code_fix"], tmp_path, demo_repo, commits["code_fix"])
    try:
        wait_for_stage(proc, "check exploit_replay")
        proc.send_signal(signal.SIGTERM)  # what Airflow sends a task it stops
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "selfheal-sandbox: cleanup" in err
    assert_no_leftovers(docker_client, patch_id=plans["code_fix"].id)


def test_pull_of_a_local_only_base_builds_on_it_instead_of_failing(docker_client, base_image, demo_repo,
                                                                  base_commit, test_images) -> None:
    """A base_image_refresh plan without a newer tag asks for ``pull``; the offline base was imported
    here (no registry digest), so Docker's pull could only fail (seen in the demo as "lookup
    registry-1.docker.io: no such host"). The build uses the local base as it is."""
    from selfheal.sandbox.build import build_image

    assert not docker_client.images.get(base_image).attrs.get("RepoDigests")
    tag = "selfheal/demo-target:test-pull-local-base"
    test_images.append(tag)
    built = build_image(docker_client, demo_repo, base_commit, tag, base_image=base_image, pull=True)
    assert docker_client.images.get(built.tag).labels["selfheal.base_image_id"] == \
        docker_client.images.get(base_image).id

"""selfheal.logs: ids bound by log_context reach every line: threads, asyncio tasks, Airflow's task log."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from selfheal import logs
from selfheal.logs import current, log_context, propagate, with_log_context

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """configure() on a private stream; the `selfheal` logger is put back as it was afterwards."""
    logger = logging.getLogger("selfheal")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    out = io.StringIO()
    logs.configure(out)
    try:
        yield out
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def _lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_nested_contexts_add_override_and_restore() -> None:
    assert dict(current()) == {}
    with log_context(finding_id=12, service="shop") as outer:
        assert dict(outer) == {"finding_id": 12, "service": "shop"}
        with log_context(patch_id="p-7", service="cart", scanner=None):
            assert dict(current()) == {"finding_id": 12, "service": "cart", "patch_id": "p-7"}
        assert dict(current()) == {"finding_id": 12, "service": "shop"}
    assert dict(current()) == {}


def test_context_is_restored_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), log_context(patch_id="p-1"):
        raise RuntimeError("boom")
    assert dict(current()) == {}
    assert "patch_id" not in structlog.contextvars.get_contextvars()


def test_every_selfheal_logger_line_ends_with_the_ids(stream: io.StringIO) -> None:
    log = logging.getLogger("selfheal.sandbox.verify")  # a child: the handler sits on `selfheal`
    log.info("before")
    with log_context(finding_id=3, patch_id="p 9"):
        log.info("verifying %s", "image")
        logging.getLogger("selfheal.rollout.strategies").warning("rolled back")
    log.info("after")
    first, mid, warn, last = _lines(stream)
    assert first.endswith("selfheal.sandbox.verify: before")
    assert mid.endswith('verifying image finding_id=3 patch_id="p 9"'), mid
    assert " WARNING selfheal.rollout.strategies: rolled back finding_id=3 " in warn
    assert last.endswith("selfheal.sandbox.verify: after")


def test_json_lines(stream: io.StringIO) -> None:
    logs.configure(stream, json_lines=True)
    with log_context(finding_id=5, patch_id="p-5"):
        try:
            raise ValueError("bad")
        except ValueError:
            logging.getLogger("selfheal.x").exception("failed %d", 2)
    rec = json.loads(_lines(stream)[0])
    assert rec["event"] == "failed 2" and rec["level"] == "error" and rec["logger"] == "selfheal.x"
    assert rec["finding_id"] == 5 and rec["patch_id"] == "p-5"
    assert "ValueError: bad" in rec["exception"]


def test_threads_start_empty_and_propagate_carries_the_ids() -> None:
    seen: dict[str, dict] = {}

    def record(name: str) -> None:
        seen[name] = dict(current())

    with log_context(patch_id="p-1"):
        plain = threading.Thread(target=record, args=("plain",))
        carried = threading.Thread(target=propagate(record), args=("carried",))
        plain.start(), carried.start()
        plain.join(), carried.join()
    assert seen == {"plain": {}, "carried": {"patch_id": "p-1"}}


def test_concurrent_threads_keep_their_own_ids(stream: io.StringIO) -> None:
    barrier = threading.Barrier(2)

    def work(fid: int) -> None:
        with log_context(finding_id=fid):
            barrier.wait()  # both contexts are open at the same time
            logging.getLogger("selfheal.t").info("worker %d", fid)
            barrier.wait()

    threads = [threading.Thread(target=work, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = sorted(ln.split(": ", 1)[1] for ln in _lines(stream))
    assert got == ["worker 1 finding_id=1", "worker 2 finding_id=2"]


def test_asyncio_tasks_keep_their_own_ids(stream: io.StringIO) -> None:
    log = logging.getLogger("selfheal.a")

    async def work(fid: int, other_started: asyncio.Event, me_started: asyncio.Event) -> None:
        with log_context(finding_id=fid):
            me_started.set()
            await other_started.wait()  # interleave: the other task's context is open too
            with log_context(patch_id=f"p-{fid}"):
                await asyncio.sleep(0)
                log.info("step %d", fid)
            log.info("done %d", fid)

    async def main() -> None:
        e1, e2 = asyncio.Event(), asyncio.Event()
        with log_context(service="shop"):  # tasks copy the creator's context
            await asyncio.gather(work(1, e2, e1), work(2, e1, e2))
        assert dict(current()) == {}

    asyncio.run(main())
    assert sorted(ln.split(": ", 1)[1] for ln in _lines(stream)) == [
        "done 1 service=shop finding_id=1",
        "done 2 service=shop finding_id=2",
        "step 1 service=shop finding_id=1 patch_id=p-1",
        "step 2 service=shop finding_id=2 patch_id=p-2",
    ]


def test_structlog_contextvars_follow_the_context() -> None:
    """What Airflow's structlog chain merges into every task-log event."""
    structlog.contextvars.bind_contextvars(ti="kept")
    try:
        with log_context(finding_id=1, patch_id="p"):
            with log_context(patch_id="q"):
                assert structlog.contextvars.get_contextvars() == {
                    "ti": "kept",
                    "finding_id": 1,
                    "patch_id": "q",
                }
            assert structlog.contextvars.get_contextvars() == {"ti": "kept", "finding_id": 1, "patch_id": "p"}
        assert structlog.contextvars.get_contextvars() == {"ti": "kept"}
    finally:
        structlog.contextvars.unbind_contextvars("ti")


@pytest.mark.parametrize(
    "key", ["api_token", "password", "Authorization", "event", "level", "finding id", "", "1x"]
)
def test_bad_keys_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match="log context key"), log_context(**{key: "x"}):
        pass


def test_values_are_cleaned_and_secrets_masked(stream: io.StringIO) -> None:
    with log_context(
        service="svc\nFAKE 2026 ERROR forged line",
        patch_id="x" * 500,
        source="postgresql://selfheal:s3cret-pw@db/selfheal",
    ):
        logging.getLogger("selfheal.s").info("calling with Authorization: Bearer eyJhbGciOi.eyJzdWIi.sig123")
    (line,) = _lines(stream)  # the newline in the value did not start a second line
    assert "s3cret-pw" not in line and "eyJzdWIi" not in line, line
    assert 'service="svc FAKE 2026 ERROR forged line"' in line
    assert "x" * 200 not in line and "x" * 199 + "…" in line


def test_with_log_context_binds_from_arguments(stream: io.StringIO) -> None:
    class Rule:
        id = "vp-1"
        finding = "fp-abc"
        service = "shop"

    @with_log_context(
        "service", patch_id="plan.id|plan.patch_id", rule_id="rule.id", scan_run_id="handle.run"
    )
    def step(service: str, plan: object = None, rule: object = None, handle: dict | None = None) -> dict:
        logging.getLogger("selfheal.d").info("step")
        return dict(current())

    assert step("shop", {"id": "p-1"}) == {"service": "shop", "patch_id": "p-1"}
    assert step("shop", plan=type("Spec", (), {"patch_id": "p-2"})())["patch_id"] == "p-2"
    got = step("cart", rule=Rule(), handle={"run": 41})
    assert got == {"service": "cart", "rule_id": "vp-1", "scan_run_id": 41}
    assert step("", plan={"id": ""}) == {}  # empty values are left out
    assert _lines(stream)[0].endswith("step service=shop patch_id=p-1")
    assert step.__name__ == "step"

    with pytest.raises(TypeError, match="no argument 'plan_'"):
        with_log_context(patch_id="plan_.id")(step.__wrapped__)

    @with_log_context("patch_id")
    async def astep(patch_id: str) -> dict:
        await asyncio.sleep(0)
        return dict(current())

    assert asyncio.run(astep("p-9")) == {"patch_id": "p-9"}


def test_airflow_task_log_lines_carry_the_ids(tmp_path: Path) -> None:
    """The task process's own logging setup (JSON to the supervisor): stdlib and structlog lines get ids.

    In a subprocess: Airflow's configure_logging replaces the process's logging configuration.
    """
    out = tmp_path / "task.log"
    code = textwrap.dedent(f"""
        import logging, structlog
        from airflow.sdk.log import configure_logging
        from selfheal.logs import log_context
        with open({str(out)!r}, "wb", buffering=0) as f:
            configure_logging(json_output=True, output=f, sending_to_supervisor=True)
            with log_context(finding_id=42, patch_id="p-42"):
                logging.getLogger("selfheal.sandbox.verify").info("sandbox %s: build", "p-42")
                structlog.get_logger("airflow.task").info("Task instance is in running state")
            logging.getLogger("selfheal.sandbox.verify").info("outside")
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO / "plugins")},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(ln) for ln in out.read_text().splitlines() if ln.strip()]
    by_event = {e["event"]: e for e in events}
    assert by_event["sandbox p-42: build"]["finding_id"] == 42
    assert by_event["sandbox p-42: build"]["patch_id"] == "p-42"
    assert by_event["Task instance is in running state"]["patch_id"] == "p-42"
    assert "finding_id" not in by_event["outside"]

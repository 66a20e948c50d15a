# ruff: noqa: F811 - the fixtures imported from docker_rollout_fixtures are test arguments here
"""DockerBackend with real containers behind a real HAProxy: deploy, health, traffic, drain, keep, restart."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter

import docker.errors
import pytest
from docker_rollout_fixtures import knob, stack  # noqa: F401 - pytest fixtures used by name

from selfheal.findings.model import Finding, Location
from selfheal.gateway.runtime import RuntimeClient
from selfheal.gateway.state import SqlStateStore
from selfheal.gateway.virtual_patch import derive
from selfheal.rollout.backends.base import BackendError, DeploymentBackend, UnhealthyRelease
from selfheal.rollout.backends.docker import (
    LABEL_COLOR,
    LABEL_PATCH,
    LABEL_SERVICE,
    LABEL_VERSION,
)
from selfheal.rollout.harness import LocalStack

pytestmark = pytest.mark.docker


def get(st: LocalStack, path: str = "/", timeout: float = 10) -> tuple[int, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", st.port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": "shop.localhost"})
        r = conn.getresponse()
        r.read()
        return r.status, r.getheader("X-Version")
    finally:
        conn.close()


def live(st: LocalStack) -> dict[str, tuple[int, str, bool]]:
    return {s.name: (s.weight, s.state, s.up) for s in st.gateway.runtime.servers("shop")}


def up(st: LocalStack, image: str, version: str, color: str = "blue", weight: int | None = 100):
    b = st.backend
    rel = b.deploy("shop", version=version, color=color, image=image, patch_id=f"p-{version}")
    b.wait_healthy(rel, 30)
    if weight is not None:
        b.set_traffic(
            "shop", {color: weight, **{c: 100 - weight for c in b.current_traffic("shop") if c != color}}
        )
    return rel


def test_release_lifecycle_health_gate_idempotency_bad_input_and_weight_order(
    stack: LocalStack,
    knob,
    docker_client,
) -> None:
    b = stack.backend
    assert isinstance(b, DeploymentBackend)
    image = knob(version="v1")
    rel = b.deploy("shop", version="v1", color="blue", image=image, patch_id="PATCH-1")
    c = docker_client.containers.get(rel.ref)
    assert {k: c.labels[k] for k in (LABEL_SERVICE, LABEL_VERSION, LABEL_COLOR, LABEL_PATCH)} == {
        LABEL_SERVICE: "shop",
        LABEL_VERSION: "v1",
        LABEL_COLOR: "blue",
        LABEL_PATCH: "PATCH-1",
    }
    assert list(c.attrs["NetworkSettings"]["Networks"]) == [b.settings.network]
    assert docker_client.networks.get(b.settings.network).attrs["Internal"] is True
    hc = c.attrs["Config"]["Healthcheck"]
    assert hc["Test"][:2] == ["CMD", "bash"] and hc["Interval"] == 250_000_000  # the image's test, our timing
    host = c.attrs["HostConfig"]
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    # Not registered before it is proven healthy.
    assert stack.gateway.runtime.servers("shop") == []
    assert stack.store.get_server("shop", "blue") is None

    b.wait_healthy(rel, 30)
    c.reload()
    assert c.attrs["State"]["Health"]["Status"] == "healthy"
    assert live(stack) == {"blue": (0, "ready", True)}
    assert stack.gateway.runtime.check_status("shop", "blue") == "L7OK"
    spec = stack.store.get_server("shop", "blue")
    assert spec is not None and spec.address == rel.endpoint.split(":")[0] and spec.weight == 0

    # Idempotent by (service, patch id, color): same container, nothing new started or registered.
    again = b.deploy("shop", version="v1", color="blue", image=image, patch_id="PATCH-1")
    b.wait_healthy(again, 5)
    assert again.ref == rel.ref
    assert [r.ref for r in b.releases("shop")] == [rel.ref]
    with pytest.raises(BackendError, match="already deployed from image"):
        b.deploy("shop", version="v1", color="blue", image=knob(version="v1b"), patch_id="PATCH-1")

    # The endpoint answers directly (pre-promotion checks use it); the gateway routes once weighted.
    assert get(stack)[0] == 503  # registered at weight 0: no traffic yet
    b.set_traffic("shop", {"blue": 100})
    assert get(stack) == (200, "v1")
    assert b.current_traffic("shop") == {"blue": 100}

    # A second release in the other slot, registered at weight 0.
    green = b.deploy("shop", version="v2", color="green", image=knob(version="v2"), patch_id="PATCH-2")
    b.wait_healthy(green, 30)
    assert live(stack) == {"blue": (100, "ready", True), "green": (0, "ready", True)}

    # Bad input: a clear error each, and neither live traffic nor desired state moves.
    before, audit_before = live(stack), len(stack.store.audit_events(1000))
    cases = [
        ({"blue": 150, "green": -50}, r"weight for 'blue' must be an integer 0\.\.100, got 150"),
        ({"blue": 60, "green": 30}, r"weights must sum to 100, got 90"),
        ({"blue": 50.5, "green": 49.5}, r"must be an integer"),
        ({"blue": True, "green": 99}, r"must be an integer"),
        ({"blue": 50, "purple": 50}, r"no registered release for color\(s\) \['purple'\]"),
    ]
    for weights, message in cases:
        with pytest.raises(BackendError, match=message):
            b.set_traffic("shop", weights)
    with pytest.raises(BackendError, match="unknown service 'billing'"):
        b.set_traffic("billing", {"blue": 100})
    with pytest.raises(BackendError, match="unknown service 'billing'"):
        b.deploy("billing", version="1", color="blue", image=image, patch_id=None)
    with pytest.raises(BackendError, match="invalid color name"):
        b.deploy("shop", version="1", color="blue green", image=image, patch_id=None)
    with pytest.raises(BackendError, match="image 'selfheal/does-not-exist:1' not found on the docker host"):
        b.deploy("shop", version="9", color="green", image="selfheal/does-not-exist:1", patch_id="n")
    with pytest.raises(BackendError, match=r"color slot is taken by version 'v1'"):
        b.deploy("shop", version="v3", color="blue", image=image, patch_id="other")
    with pytest.raises(BackendError, match="still takes 100% of traffic and no other release does"):
        b.retire(rel)
    assert live(stack) == before
    assert len(stack.store.audit_events(1000)) == audit_before
    assert {r.version for r in b.releases("shop")} == {"v1", "v2"}
    assert get(stack) == (200, "v1")

    # Weights rise before they fall: sampled live, the total never drops below 100, and no request fails.
    sums: list[int] = []
    stop = threading.Event()

    def watch() -> None:  # a second admin connection sampling the live weights as fast as it can
        with RuntimeClient(stack.paths.admin_socket) as rt:
            while not stop.is_set():
                sums.append(sum(s.weight for s in rt.servers("shop") if s.state == "ready"))

    t = threading.Thread(target=watch)
    t.start()
    try:
        with stack.load("shop", concurrency=4) as lc:
            for weights in ({"green": 100}, {"blue": 100}, {"green": 5, "blue": 95}, {"green": 100}) * 3:
                b.set_traffic("shop", weights)
                time.sleep(0.05)
    finally:
        stop.set()
        t.join()
    assert len(sums) > 50 and min(sums) >= 100
    weight_events = [
        e for e in reversed(stack.store.audit_events(1000)) if e.action == "gateway.server.weight"
    ]
    last_two = [(e.detail["name"], e.detail["weight"]) for e in weight_events[-2:]]
    assert last_two == [("green", 100), ("blue", 0)]  # the final switch: raise green, then lower blue
    assert lc.summary()["failed_requests"] == 0
    assert {o.version for o in lc.outcomes()} == {"v1", "v2"}


def test_never_healthy_release_is_removed_and_live_traffic_is_untouched(
    stack: LocalStack,
    knob,
    docker_client,
) -> None:
    b = stack.backend
    up(stack, knob(version="v1", delay_ms=5), "v1")
    before = live(stack)
    audit_before = len(stack.store.audit_events(1000))
    with stack.load("shop", concurrency=2) as lc:
        sick = b.deploy(
            "shop", version="sick", color="green", image=knob(version="sick", healthy=0), patch_id="s"
        )
        t0 = time.monotonic()
        with pytest.raises(
            UnhealthyRelease,
            match=r"shop/green sick .* did not become healthy within 20s "
            r"\(docker health check failed: exit 1.*container removed",
        ):
            b.wait_healthy(sick, 20)
        failed_after = time.monotonic() - t0
        crash = b.deploy(
            "shop", version="crash", color="green", image=knob(version="x", error_rate=2), patch_id="c"
        )
        with pytest.raises(UnhealthyRelease, match=r"container exited with code 1: .*KNOB_ERROR_RATE"):
            b.wait_healthy(crash, 20)
    for rel in (sick, crash):
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(rel.ref)
    assert live(stack) == before
    assert b.current_traffic("shop") == {"blue": 100}
    assert stack.store.get_server("shop", "green") is None
    assert len(stack.store.audit_events(1000)) == audit_before  # the gateway was never touched
    assert lc.summary()["failed_requests"] == 0 and lc.summary()["requests"] > 20
    assert failed_after < 10  # three failed checks at 0.5 s, not the whole timeout


def test_retire_drains_in_flight_requests_and_keeps_the_release_for_an_instant_rollback(
    docker_client,
    knob,
) -> None:
    st = LocalStack.start(docker_client, docker={"keep_old_s": 60.0})
    try:
        b = st.backend
        old = up(st, knob(version="old", delay_ms=1500, delay_path_prefix="/slow"), "old")
        up(st, knob(version="new"), "new", color="green", weight=None)
        results: list[tuple[int, str | None]] = []

        def slow() -> None:
            results.append(get(st, "/slow/report"))

        workers = [threading.Thread(target=slow) for _ in range(3)]
        for w in workers:
            w.start()
        deadline = time.monotonic() + 5
        while b.sessions("shop", "blue") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b.sessions("shop", "blue") == 3
        b.set_traffic("shop", {"green": 100})
        t0 = time.monotonic()
        b.retire(old)
        drained_s = time.monotonic() - t0
        for w in workers:
            w.join()
        assert results == [(200, "old")] * 3  # in-flight requests finished on the old release
        assert drained_s > 0.5  # retire waited for them
        assert "blue" not in live(st)
        c = docker_client.containers.get(old.ref)
        assert c.status == "running" and ".retired-" in c.name
        assert [r.version for r in b.releases("shop")] == ["new"]
        assert [r.ref for r in b.retired("shop")] == [old.ref]
        assert b.cleanup_expired() == []  # kept for keep_old_s

        # Instant rollback: the retired container is re-registered, no image pull or cold start.
        t0 = time.monotonic()
        back = b.reinstate(b.retired("shop")[0])
        b.set_traffic("shop", {"blue": 100})
        rollback_s = time.monotonic() - t0
        assert get(st) == (200, "old") and back.ref == old.ref
        print(json.dumps({"reinstate_and_switch_s": round(rollback_s, 3), "drain_s": round(drained_s, 3)}))

        green = next(r for r in b.releases("shop") if r.color == "green")
        b.retire(green)
        b.clock = lambda: time.time() + 61  # the keep window has passed
        removed = b.cleanup_expired()
        assert len(removed) == 1 and removed[0].startswith("selfheal-shop-green-")
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(green.ref)
        assert get(st) == (200, "old")
    finally:
        st.close()


@pytest.mark.postgres
def test_gateway_crash_and_reconcile_restores_weights_and_rules(docker_client, knob, pg_url) -> None:
    store = SqlStateStore(pg_url)
    store.create_tables()
    st = LocalStack.start(docker_client, store=store)
    try:
        b = st.backend
        up(st, knob(version="blue"), "blue")
        up(st, knob(version="green"), "green", color="green", weight=None)
        b.set_traffic("shop", {"blue": 80, "green": 20})  # a canary half way
        rules = [
            derive(
                Finding(
                    scanner="wapiti",
                    rule_id="x",
                    title="t",
                    severity="high",
                    kind="web",
                    cwe=89,
                    location=Location(method="GET", path=f"/items/{i}", param="q"),
                    service="shop",
                )
            )
            for i in range(20)
        ]
        for r in rules:
            st.gateway.patches.apply(r)

        st.restart_gateway()  # SIGKILL: every server, weight and rule is gone from HAProxy
        assert st.gateway.runtime.servers("shop") == [] and st.gateway.patches.live_rule_ids() == set()
        t0 = time.perf_counter()
        report = st.gateway.reconcile()
        seconds = time.perf_counter() - t0
        print(json.dumps({"reconcile_seconds": round(seconds, 4), "rules_restored": report.rules.added}))

        assert report.rules.added == 20 and report.servers.added == 2
        assert b.current_traffic("shop") == {"blue": 80, "green": 20}
        assert st.gateway.patches.live_rule_ids() == {r.id for r in rules}
        assert get(st, "/items/3?q=%27%20OR%201%3D1--")[0] == 403
        spread = Counter(get(st, f"/items/3?q=books&i={i}")[1] for i in range(100))
        assert spread == Counter(blue=80, green=20)
    finally:
        st.close()
        store.dispose()

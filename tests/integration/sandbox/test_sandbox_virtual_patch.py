"""virtual_patch for real: the demo's SQL injection blocked by the gateway rule, in front of the unpatched image.

The patch engine plans the mitigation from the recorded Wapiti report. The
unpatched demo image (the same baseline image the sandbox builds for the
remedies) runs in a sandbox (internal network, hardened container); our own
HAProxy, on loopback, fronts it as the gateway does in production. The
sandbox's own checks then judge it, with "baseline" = the service reached
directly and "patched" = the service reached through the gateway:

* without the rule the gateway is transparent: the exploit reproduces both ways
  (so the replay can tell, and a gateway that blocks nothing fails the check);
* with the plan's rule applied through the gateway's runtime API, no probe
  reproduces through the gateway (HTTP 403 from HAProxy, the service never
  sees the request), while it still does directly: the service is unpatched,
  only mitigated; legitimate requests get the same answers as before;
* a targeted Wapiti re-scan through the gateway finds the injection without
  the rule and not with it; removing the rule (the plan's revert) restores
  the exact previous behaviour.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from selfheal.catalog import Catalog, Service
from selfheal.gateway.config import GatewaySettings, ServiceGateway, write_config
from selfheal.gateway.gateway import Gateway
from selfheal.gateway.logs import LogCollector
from selfheal.gateway.process import HAProxyProcess
from selfheal.gateway.state import InMemoryStateStore, ServerSpec, VirtualPatch
from selfheal.patches.model import AttackRequest, PatchPlan
from selfheal.patches.planner import plan_repository
from selfheal.sandbox import checks, exploit
from selfheal.sandbox.build import build_image
from selfheal.sandbox.isolation import RunningService, Sandbox
from selfheal.sandbox.result import CheckResult
from selfheal.sandbox.spec import SQLI_CWES, Limits, SandboxSpec
from tests.integration.sandbox.kit import assert_no_leftovers, demo_findings

pytestmark = pytest.mark.docker

# What legitimate clients ask; each must get the same answer through the patched gateway as directly.
LEGIT = (
    "/health",
    "/api/categories",
    "/api/items",
    "/api/items?category=books",
    "/api/items?category=games&page=2",
    "/api/items?category=tools&q=O%27Reilly",  # a quote in another parameter is not the attack
    "/api/items/1",
)
BLOCKED_BODY = {"error": "forbidden", "reason": "virtual patch"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Mitigated:
    """The unpatched service in a sandbox, reached directly and through our HAProxy."""

    plan: PatchPlan
    spec: SandboxSpec
    sandbox: Sandbox
    direct: RunningService
    via_gateway: RunningService
    gateway: Gateway
    logs: LogCollector

    def replay(self) -> CheckResult:
        return checks.exploit_replay(self.sandbox, self.spec, self.direct, self.via_gateway)

    def get(self, svc: RunningService, path: str) -> exploit.Response:
        return exploit.send(svc.ip, svc.port, AttackRequest("GET", path), self.sandbox.limits.request_timeout_s)


@pytest.fixture(scope="module")
def vp_plans(demo_repo: Path, service: Service, base_commit: str) -> dict[str, PatchPlan]:
    """The real planner on the demo's SQL injection: the mitigation, and the code fix (for its re-scan)."""
    out = {p.recipe: p for p in plan_repository(demo_findings(), service, demo_repo)}
    vp = out["virtual_patch"]
    assert not vp.failed and not vp.needs_human and vp.delivery == "gateway", vp.reason
    assert vp.base_commit == base_commit and vp.gateway is not None and vp.gateway.rule is not None
    return out


@pytest.fixture(scope="module")
def mitigated(docker_client, base_image: str, demo_repo: Path, service: Service, base_commit: str,
              vp_plans: dict[str, PatchPlan]) -> Iterator[Mitigated]:
    plan = vp_plans["virtual_patch"]
    assert service.deploy.docker is not None
    # The sandbox's checks, for a plan the image pipeline does not take (spec_from_plan refuses gateway plans).
    spec = SandboxSpec(
        patch_id=plan.id, service=service.name, exploits=plan.verification.exploit_replay,
        sqli_differential=any(f.cwe in SQLI_CWES for f in plan.findings),
        fingerprints=tuple(f.fingerprint for f in plan.findings), rescan=vp_plans["code_fix"].verification.rescan,
        port=service.deploy.docker.port, health_path=service.deploy.docker.health_path,
    )
    # The unpatched image: the baseline the sandbox builds (and reuses) for the plan's base commit.
    baseline = build_image(docker_client, demo_repo, base_commit, spec.baseline_tag(base_commit),
                           dockerfile=service.dockerfile, base_image=base_image, reuse=True,
                           labels={"selfheal.service": service.name, "selfheal.role": "baseline"})
    run_dir = Path(tempfile.mkdtemp(prefix="shvp-", dir="/tmp"))  # short: Unix socket paths max 108 bytes
    settings = GatewaySettings(
        run_dir=run_dir, http_port=_free_port(), stats_port=_free_port(), nbthread=1,
        default_service=service.name,  # Wapiti asks for 127.0.0.1:<port>: route it to the demo
        services={service.name: ServiceGateway(check_interval_ms=200)},
    )
    catalog = Catalog(services=(service,))
    sandbox = Sandbox(docker_client, patch_id=plan.id, limits=Limits())
    logs = haproxy = gateway = None
    try:
        sandbox.open()
        direct = sandbox.start_service("unpatched", baseline.tag, spec.port, spec.health_path)
        paths = write_config(catalog, settings)
        logs = LogCollector(paths.log_socket).start()
        haproxy = HAProxyProcess(paths).start()
        gateway = Gateway.from_settings(settings, catalog, InMemoryStateStore())
        gateway.servers.add(ServerSpec(service.name, "sandbox", direct.ip, direct.port), wait_healthy=15)
        via = RunningService("gateway", direct.container, "127.0.0.1", settings.http_port)
        yield Mitigated(plan, spec, sandbox, direct, via, gateway, logs)
    finally:
        if gateway is not None:
            gateway.close()
        if haproxy is not None:
            haproxy.stop()
        if logs is not None:
            logs.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
        report = sandbox.close()
        assert report["ok"], report
        assert_no_leftovers(docker_client, sandbox.id)


def _rule(plan: PatchPlan) -> VirtualPatch:
    assert plan.gateway is not None and plan.gateway.rule is not None
    return VirtualPatch(**plan.gateway.rule)


def test_rule_blocks_the_exploit_at_the_gateway_and_nothing_else(mitigated: Mitigated) -> None:
    m, plan = mitigated, mitigated.plan
    rule = _rule(plan)
    legit_before = {p: m.get(m.direct, p) for p in LEGIT}
    assert all(r.status == 200 for r in legit_before.values()), {p: r.status for p, r in legit_before.items()}

    # Without the rule the gateway is transparent: every probe reproduces both ways, the check fails.
    open_gw = m.replay()
    probes = open_gw.details["probes"]
    assert {p["kind"] for p in probes} == {"oracle", "sqli_boolean"}
    assert all(p["baseline"]["reproduced"] and p["patched"]["reproduced"] for p in probes), open_gw.output
    assert open_gw.status == "failed" and open_gw.reason.startswith("exploit still reproduces on the patched image")

    assert m.gateway.patches.apply(rule) is True
    try:
        since = time.time()
        blocked = m.replay()
        assert blocked.status == "passed", blocked.output
        probes = blocked.details["probes"]
        # Both requests Wapiti recorded and the boolean differential: each still works on the unpatched
        # service, none through the gateway.
        assert blocked.details["reproduced_on_baseline"] == len(probes) == 3
        assert all(p["baseline"]["reproduced"] and not p["patched"]["reproduced"] for p in probes), blocked.output
        assert [p["patched"]["statuses"] for p in probes if p["kind"] == "oracle"] == [[403], [403]]
        differential = next(p for p in probes if p["kind"] == "sqli_boolean")
        assert differential["patched"]["statuses"] == [200, 403, 403]  # benign value passes, both payloads not
        attack = plan.verification.exploit_replay[0]
        answer = exploit.send(m.via_gateway.ip, m.via_gateway.port, attack, 5.0)
        assert answer.status == 403 and json.loads(answer.body) == BLOCKED_BODY
        # HAProxy answered itself: the 403s are logged without a server, the service never saw them.
        denied = [r for r in m.logs.wait_for(5, backend=plan.service, server="<NOSRV>") if r.ts >= since - 1]
        assert len(denied) >= 5 and {(r.status, r.path) for r in denied} == {(403, "/api/items")}

        # Legitimate traffic: the same answers through the mitigated gateway as from the service itself.
        for path, before in legit_before.items():
            now = m.get(m.via_gateway, path)
            assert (now.status, json.loads(now.body)) == (before.status, json.loads(before.body)), path
    finally:
        assert m.gateway.patches.remove(plan.details["revert"]["remove_rule"]) is True

    # Reverted: the rule is gone from HAProxy and the exploit goes through again.
    assert m.gateway.patches.live_rule_ids() == set()
    again = m.replay()
    assert again.status == "failed" and all(p["patched"]["reproduced"] for p in again.details["probes"])


def test_targeted_rescan_through_the_gateway(mitigated: Mitigated, wapiti_bin) -> None:
    """The real Wapiti, the code fix's modules and target, against the gateway: found without, gone with the rule."""
    m, plan = mitigated, mitigated.plan
    rescan = m.spec.rescan
    assert rescan is not None and 89 in rescan.cwes
    unprotected = checks.rescan(m.sandbox, m.spec, m.via_gateway)
    assert unprotected.status == "failed", unprotected.output
    assert unprotected.reason.startswith("the finding reappears: SQL Injection at GET /api/items (category)")
    assert {a["fingerprint"] for a in unprotected.details["reappeared"]} == {plan.findings[0].fingerprint}

    assert m.gateway.patches.apply(_rule(plan)) is True
    try:
        since = time.time()
        protected = checks.rescan(m.sandbox, m.spec, m.via_gateway)
    finally:
        m.gateway.patches.remove(_rule(plan).id)
    assert protected.status == "passed", protected.output
    assert protected.details["scope"] == "url" and protected.details["crawled_pages"] >= 1
    assert protected.details["target"].startswith(f"http://127.0.0.1:{m.via_gateway.port}/api/items?category=")
    # The scan went through the gateway: its payloads were refused there, its plain requests were served.
    seen = [r for r in m.logs.records(backend=plan.service) if r.ts >= since - 1]
    assert any(r.status == 403 and r.server == "<NOSRV>" for r in seen)
    assert any(r.status == 200 and r.server == "sandbox" for r in seen)

"""What a sandboxed container can and cannot do, asserted from inside it and from the engine's own view.

No traffic is sent to the outside to prove isolation: the test reads the
container's interfaces and routes, the kernel's view of its privileges, the
engine's settings, and the host firewall rules Docker installs for the
internal network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from selfheal.sandbox.build import build_image
from selfheal.sandbox.isolation import LABEL, Sandbox
from selfheal.sandbox.spec import Limits, spec_from_plan
from tests.integration.sandbox.kit import assert_no_leftovers

pytestmark = pytest.mark.docker

PROBE = r"""
import errno, json, os, socket
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
routes = []
for line in open("/proc/net/route").read().splitlines()[1:]:
    iface, dest, gw = line.split()[:3]
    to_ip = lambda h: socket.inet_ntoa(bytes.fromhex(h)[::-1])
    routes.append({"iface": iface, "dest": to_ip(dest), "gateway": to_ip(gw)})
try:
    socket.getaddrinfo("pypi.org", 443)
    dns = "resolved"
except OSError as e:
    dns = type(e).__name__
try:
    open("/app/probe", "w")
    rootfs = "writable"
except OSError as e:
    rootfs = errno.errorcode[e.errno]
open("/tmp/probe", "w").write("ok")
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(),
    "cap_eff": status["CapEff"].strip(), "cap_prm": status["CapPrm"].strip(), "cap_bnd": status["CapBnd"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "ifaces": sorted(os.listdir("/sys/class/net")), "routes": routes, "dns": dns, "rootfs": rootfs,
}))
"""


@pytest.fixture(scope="module")
def image(docker_client, base_image, demo_repo, base_commit, plans, service) -> str:
    spec = spec_from_plan(plans["code_fix"], service)
    tag = spec.baseline_tag(base_commit)
    build_image(docker_client, demo_repo, base_commit, tag, base_image=base_image, reuse=True)
    return tag


def test_service_container_is_isolated_and_unprivileged(docker_client, image) -> None:
    limits = Limits(cpus=0.5, memory="200m", pids=64)
    with Sandbox(docker_client, patch_id="ptestisolation", limits=limits) as sb:
        svc = sb.start_service("patched", image, 8000)
        code, out = sb.exec(svc, ["python", "-c", PROBE])
        assert code == 0, out
        seen = json.loads(out.strip().splitlines()[-1])
        net = docker_client.networks.get(sb.network_name)
        svc.container.reload()
        host_config = svc.container.attrs["HostConfig"]

        # Not root, no capabilities at all, cannot gain any, read-only root filesystem, /tmp writable.
        assert seen["uid"] == 10001 and seen["gid"] == 10001
        assert seen["cap_eff"] == seen["cap_prm"] == seen["cap_bnd"] == "0000000000000000"
        assert seen["no_new_privs"] == "1"
        assert seen["rootfs"] == "EROFS"
        # One interface on the sandbox's own network; the network is internal; nothing resolves.
        assert seen["ifaces"] == ["eth0", "lo"]
        assert net.attrs["Internal"] is True and net.attrs["Labels"][LABEL] == sb.id
        (ipam,) = net.attrs["IPAM"]["Config"]
        assert all(r["iface"] == "eth0" for r in seen["routes"])
        # Docker 20.10 still installs a default route via the internal bridge; that bridge forwards nothing.
        gateways = {r["gateway"] for r in seen["routes"]} - {"0.0.0.0"}
        assert gateways <= {ipam["Gateway"]}, (gateways, ipam)
        assert seen["dns"] == "gaierror"
        # The engine enforces the limits.
        assert host_config["ReadonlyRootfs"] is True and host_config["CapDrop"] == ["ALL"]
        assert host_config["SecurityOpt"] == ["no-new-privileges"]
        assert host_config["NanoCpus"] == 500_000_000 and host_config["Memory"] == 200 * 1024 * 1024
        assert host_config["MemorySwap"] == host_config["Memory"] and host_config["PidsLimit"] == 64
        assert host_config["Tmpfs"]["/tmp"].startswith("rw,noexec,nosuid,nodev")
        if os.geteuid() == 0 and shutil.which("iptables"):
            # The host firewall drops whatever the sandbox's bridge would forward to any other network.
            rules = subprocess.run(["iptables", "-S", "DOCKER-ISOLATION-STAGE-1"], capture_output=True,
                                   text=True, check=True).stdout
            bridge = f"br-{net.id[:12]}"
            assert f"! -d {ipam['Subnet']} -i {bridge} -j DROP" in rules, rules
            assert f"! -s {ipam['Subnet']} -o {bridge} -j DROP" in rules, rules
    assert_no_leftovers(docker_client, sb.id)


def test_one_shot_commands_have_loopback_only(docker_client, image) -> None:
    with Sandbox(docker_client, patch_id="ptestisolation") as sb:
        res = sb.run_command(image, ["python", "-c", PROBE], timeout=60, role="tests")
    assert res.exit_code == 0, res.output
    seen = json.loads(res.output.strip().splitlines()[-1])
    assert seen["ifaces"] == ["lo"] and seen["routes"] == []
    assert seen["uid"] == 10001 and seen["cap_eff"] == "0000000000000000" and seen["rootfs"] == "EROFS"
    assert_no_leftovers(docker_client, sb.id)


def test_an_image_that_runs_as_root_gets_the_fallback_user(docker_client, base_image) -> None:
    # The offline base image has no USER: it would run as root.
    with Sandbox(docker_client, patch_id="ptestroot") as sb:
        res = sb.run_command(base_image, ["id", "-u"], timeout=30, role="tests")
    assert res.exit_code == 0 and res.output.strip() == "65534"
    assert_no_leftovers(docker_client, sb.id)

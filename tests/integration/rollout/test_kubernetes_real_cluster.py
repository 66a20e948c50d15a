"""The blue/green and canary scenarios of test_kubernetes_backend.py against a REAL cluster.

Runs only when KUBECONFIG is set (the API double covers the feature everywhere
else). Creates a throwaway namespace (or uses SELFHEAL_K8S_TEST_NAMESPACE) and
deletes what it made. Knobs: SELFHEAL_K8S_TEST_IMAGE / _IMAGE_V2 (default
nginx-unprivileged, port 8080, health "/"), SELFHEAL_K8S_TEST_PORT,
SELFHEAL_K8S_TEST_HEALTH_PATH, SELFHEAL_K8S_GATEWAY ("[namespace/]name" of the
Gateway new HTTPRoutes attach to). The canary tests need the Gateway API CRDs
and are skipped, with the reason, on a cluster without them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from selfheal.catalog import KubernetesTarget
from selfheal.rollout.backends.kubernetes import (
    GATEWAY_GROUP,
    HTTPROUTES,
    K8sService,
    KubernetesBackend,
    KubernetesClients,
)
from tests.integration.rollout.test_kubernetes_backend import run_blue_green, run_canary, run_canary_abort

pytestmark = pytest.mark.skipif(
    not os.environ.get("KUBECONFIG"),
    reason="no Kubernetes cluster reachable here: set KUBECONFIG to run against a real cluster",
)

IMAGE = os.environ.get("SELFHEAL_K8S_TEST_IMAGE", "nginxinc/nginx-unprivileged:1.27-alpine")
IMAGES = (IMAGE, os.environ.get("SELFHEAL_K8S_TEST_IMAGE_V2", IMAGE))
PORT = int(os.environ.get("SELFHEAL_K8S_TEST_PORT", "8080"))
HEALTH = os.environ.get("SELFHEAL_K8S_TEST_HEALTH_PATH", "/")
TIMEOUT = 300.0  # image pulls on a real cluster


@pytest.fixture(scope="module")
def clients() -> KubernetesClients:
    c = KubernetesClients.from_kubeconfig(os.environ["KUBECONFIG"])
    from kubernetes import client as k8s

    k8s.VersionApi(c.apps.api_client).get_code()  # fails loudly if KUBECONFIG points nowhere
    return c


@pytest.fixture(scope="module")
def namespace(clients: KubernetesClients) -> Iterator[str]:
    given = os.environ.get("SELFHEAL_K8S_TEST_NAMESPACE")
    if given:
        yield given
        return
    name = f"selfheal-e2e-{uuid.uuid4().hex[:8]}"
    clients.core.create_namespace(
        {"metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "selfheal"}}}
    )
    try:
        yield name
    finally:
        clients.core.delete_namespace(name)


def _service(name: str, namespace: str, route: bool) -> K8sService:
    target = KubernetesTarget(
        namespace=namespace, deployment=name, service=name, httproute=name if route else None, replicas=1
    )
    return K8sService(name, target, port=PORT, health_path=HEALTH)


def _gateway_parent() -> dict[str, str]:
    ns, _, name = os.environ.get("SELFHEAL_K8S_GATEWAY", "selfheal-test-gateway").rpartition("/")
    return {"name": name, **({"namespace": ns} if ns else {})}


def _backend(clients: KubernetesClients, svc: K8sService) -> KubernetesBackend:
    return KubernetesBackend(clients, [svc], gateway_parent=_gateway_parent(), restore_timeout_s=TIMEOUT)


def _cleanup(clients: KubernetesClients, svc: K8sService) -> None:
    from kubernetes.client.exceptions import ApiException

    ns = svc.namespace
    calls = [
        (clients.apps.delete_namespaced_deployment, svc.deployment_name(c), ns) for c in ("blue", "green")
    ]
    calls += [
        (clients.core.delete_namespaced_service, n, ns)
        for n in (svc.target.service, *map(svc.color_service, ("blue", "green")))
    ]
    for fn, name, namespace in calls:
        try:
            fn(name, namespace)
        except ApiException as e:
            if e.status != 404:
                raise
    if svc.target.httproute:
        try:
            clients.custom.delete_namespaced_custom_object(
                GATEWAY_GROUP, "v1", ns, HTTPROUTES, svc.target.httproute
            )
        except ApiException as e:
            if e.status != 404:
                raise


@pytest.fixture(scope="module")
def gateway_api(clients: KubernetesClients) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        res = clients.custom.get_api_resources(GATEWAY_GROUP, "v1")
    except ApiException as e:
        if e.status != 404:
            raise
        res = None
    if res is None or not any(r.name == HTTPROUTES for r in res.resources or ()):
        pytest.skip("this cluster does not serve gateway.networking.k8s.io/v1 httproutes (Gateway API CRDs)")


def test_blue_green_on_a_real_cluster(clients: KubernetesClients, namespace: str) -> None:
    svc = _service("sh-bluegreen", namespace, route=False)
    try:
        run_blue_green(_backend(clients, svc), clients, svc, IMAGES, timeout=TIMEOUT)
    finally:
        _cleanup(clients, svc)


def test_canary_on_a_real_cluster(clients: KubernetesClients, namespace: str, gateway_api: None) -> None:
    svc = _service("sh-canary", namespace, route=True)
    try:
        run_canary(_backend(clients, svc), clients, svc, IMAGES, timeout=TIMEOUT)
    finally:
        _cleanup(clients, svc)


def test_canary_abort_on_a_real_cluster(
    clients: KubernetesClients, namespace: str, gateway_api: None
) -> None:
    svc = _service("sh-abort", namespace, route=True)
    try:
        run_canary_abort(_backend(clients, svc), clients, svc, IMAGES, timeout=TIMEOUT)
    finally:
        _cleanup(clients, svc)

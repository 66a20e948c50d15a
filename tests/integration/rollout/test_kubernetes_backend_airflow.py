"""Production wiring: Airflow connection (env JSON form) -> KubernetesHook -> backend -> the API double.

The cncf-kubernetes provider's hook reads these connection extras (hooks/kubernetes.py,
provider 10.x): ``in_cluster``, ``kube_config_path``, ``kube_config`` (JSON text or an
object), ``cluster_context``, ``namespace``, ``disable_verify_ssl``, ``disable_tcp_keepalive``
(mutually exclusive: in_cluster / kube_config_path / kube_config). Both kubeconfig forms are
exercised here, through Airflow's real connection lookup (environment variables backend).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from selfheal.catalog import Catalog
from selfheal.rollout.backends.base import BackendError
from selfheal.rollout.backends.kubernetes import KubernetesApiError, KubernetesClients, backend_from_airflow
from tests.doubles.k8s_api_double import K8sApiDouble

CATALOG = Catalog.model_validate(
    {
        "services": [
            {
                "name": "orders",
                "base_url": "http://orders.shop.svc",
                "owner": "team-orders",
                "repository": "/srv/orders",
                "deploy": {
                    "kind": "kubernetes",
                    "docker": {"image": "registry.example/orders:1", "port": 8080, "health_path": "/ready"},
                    "kubernetes": {
                        "namespace": "shop",
                        "deployment": "orders",
                        "service": "orders",
                        "replicas": 1,
                    },
                },
            },
            {"name": "docker-only", "base_url": "http://x", "owner": "o", "repository": "/srv/x"},
        ]
    }
)


@pytest.fixture
def api() -> Iterator[K8sApiDouble]:
    with K8sApiDouble(ready_after_s=0.05) as d:
        yield d


@pytest.fixture(autouse=True)
def keep_default_k8s_configuration() -> Iterator[None]:
    """load_kube_config (called by the hook) replaces the client's process-wide default configuration."""
    saved = k8s.Configuration.get_default_copy()
    yield
    k8s.Configuration.set_default(saved)


def test_from_airflow_connection_with_kube_config_json(
    api: K8sApiDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = {"conn_type": "kubernetes", "extra": {"kube_config": api.kubeconfig(), "namespace": "shop"}}
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps(conn))
    backend = backend_from_airflow(CATALOG)
    assert sorted(backend.services) == ["orders"]  # only services with a kubernetes target
    assert (backend.services["orders"].port, backend.services["orders"].health_path) == (8080, "/ready")

    rel = backend.deploy(
        "orders", version="v1", color="blue", image="registry.example/orders:1", patch_id=None
    )
    backend.wait_healthy(rel, 5)
    backend.set_traffic("orders", {"blue": 100})
    svc = api.get("services", "shop", "orders")
    assert svc["spec"]["selector"] == {"app": "orders", "color": "blue"}
    container = api.get("deployments", "shop", "orders-blue")["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == 8080
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_from_airflow_connection_with_kube_config_path(
    api: K8sApiDouble, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(api.kubeconfig()))  # YAML is a superset of JSON
    monkeypatch.setenv(
        "AIRFLOW_CONN_K8S_PROD",
        json.dumps({"conn_type": "kubernetes", "extra": {"kube_config_path": str(path)}}),
    )
    clients = KubernetesClients.from_airflow("k8s_prod")
    assert clients.apps.api_client.configuration.host == api.url
    assert clients.apps.list_namespaced_deployment("shop").items == []
    assert any(r.path == "/apis/apps/v1/namespaces/shop/deployments" for r in api.requests)


def test_airflow_connection_errors_are_clear(api: K8sApiDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    both = {"kube_config": api.kubeconfig(), "kube_config_path": "/nonexistent"}
    monkeypatch.setenv("AIRFLOW_CONN_K8S_BAD", json.dumps({"conn_type": "kubernetes", "extra": both}))
    with pytest.raises(
        BackendError, match=r"Airflow connection 'k8s_bad': cannot build a Kubernetes client: .*exclusive"
    ):
        KubernetesClients.from_airflow("k8s_bad")
    wrong = {"conn_type": "kubernetes", "extra": {"kube_config": api.kubeconfig(token="revoked")}}
    monkeypatch.setenv("AIRFLOW_CONN_K8S_REVOKED", json.dumps(wrong))
    backend = backend_from_airflow(CATALOG, conn_id="k8s_revoked")
    with pytest.raises(KubernetesApiError, match="401 Unauthorized: the credentials were refused"):
        backend.current_traffic("orders")


def test_from_kubeconfig_without_airflow(api: K8sApiDouble, tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(json.dumps(api.kubeconfig()))
    clients = KubernetesClients.from_kubeconfig(str(path))
    assert clients.core.list_namespaced_service("shop").items == []
    with pytest.raises(BackendError, match=r"kubeconfig .*missing: cannot load it"):
        KubernetesClients.from_kubeconfig(str(tmp_path / "missing"))

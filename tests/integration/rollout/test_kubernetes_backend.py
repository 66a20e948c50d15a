"""KubernetesBackend against the Kubernetes API test double, through the real `kubernetes` client over HTTP.

No cluster can run here; tests/doubles/k8s_api_double.py is a kube-apiserver
double (its docstring lists what it implements). The same blue/green and
canary scenarios (`run_*` below) run against a real cluster in
test_kubernetes_real_cluster.py when KUBECONFIG is set. Every assertion on
cluster state reads it back through the real client, not the backend.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from selfheal.catalog import KubernetesTarget
from selfheal.rollout.backends.base import BackendError, DeploymentBackend, Release, UnhealthyRelease
from selfheal.rollout.backends.kubernetes import (
    GATEWAY_GROUP,
    HTTPROUTES,
    K8sService,
    KubernetesApiError,
    KubernetesBackend,
    KubernetesClients,
)
from tests.doubles.k8s_api_double import K8sApiDouble, RequestRecord

NS = "shop"
ORDERS = K8sService(
    "orders", KubernetesTarget(namespace=NS, deployment="orders", service="orders", replicas=2)
)
PAYMENTS = K8sService(
    "payments",
    KubernetesTarget(
        namespace=NS, deployment="payments", service="payments", httproute="payments", replicas=2
    ),
)
GATEWAY = {"name": "public", "namespace": "gateways"}
TIMEOUT = 5.0


# ------------------------------------------------------------------- scenarios (also run on a real cluster)


def selector(clients: KubernetesClients, svc: K8sService) -> dict[str, str]:
    return dict(clients.core.read_namespaced_service(svc.target.service, svc.namespace).spec.selector or {})


def replicas(clients: KubernetesClients, svc: K8sService, color: str) -> int:
    return clients.apps.read_namespaced_deployment(svc.deployment_name(color), svc.namespace).spec.replicas


def route_weights(clients: KubernetesClients, svc: K8sService) -> dict[str, int]:
    route = clients.custom.get_namespaced_custom_object(
        GATEWAY_GROUP, "v1", svc.namespace, HTTPROUTES, svc.target.httproute
    )
    return {r["name"]: r.get("weight", 1) for r in route["spec"]["rules"][0]["backendRefs"]}


def exists(fn: Any, *args: Any) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        fn(*args)
        return True
    except ApiException as e:
        if e.status == 404:
            return False
        raise


def run_blue_green(
    backend: KubernetesBackend,
    clients: KubernetesClients,
    svc: K8sService,
    images: tuple[str, str],
    timeout: float = TIMEOUT,
) -> None:
    """Blue live; green created, watched ready, switched by selector; restore: blue selector + replicas."""
    app = svc.target.deployment
    blue = backend.deploy(svc.name, version="v1", color="blue", image=images[0], patch_id=None)
    backend.wait_healthy(blue, timeout)
    backend.set_traffic(svc.name, {"blue": 100})
    assert selector(clients, svc) == {"app": app, "color": "blue"}
    before = backend.snapshot(svc.name)

    green = backend.deploy(svc.name, version="v2", color="green", image=images[1], patch_id="p-42")
    assert (green.color, green.version, green.patch_id, green.image) == ("green", "v2", "p-42", images[1])
    assert selector(clients, svc)["color"] == "blue", "deploy must not move traffic"
    backend.wait_healthy(green, timeout)
    backend.set_traffic(svc.name, {"green": 100})
    assert selector(clients, svc) == {"app": app, "color": "green"}
    assert backend.current_traffic(svc.name) == {"green": 100}

    # While green is live, something (an operator, an autoscaler) scales blue down.
    scaled = svc.target.replicas - 1  # 0 for a 1-replica service: restore must then wait for blue
    clients.apps.patch_namespaced_deployment(
        svc.deployment_name("blue"), svc.namespace, {"spec": {"replicas": scaled}}
    )
    assert replicas(clients, svc, "blue") == scaled

    backend.restore(before)  # e.g. post-promotion analysis failed
    assert selector(clients, svc) == {"app": app, "color": "blue"}
    assert replicas(clients, svc, "blue") == svc.target.replicas
    assert backend.current_traffic(svc.name) == {"blue": 100}

    backend.retire(green)
    assert [r.color for r in backend.releases(svc.name)] == ["blue"]
    assert not exists(clients.apps.read_namespaced_deployment, svc.deployment_name("green"), svc.namespace)


def run_canary(
    backend: KubernetesBackend,
    clients: KubernetesClients,
    svc: K8sService,
    images: tuple[str, str],
    timeout: float = TIMEOUT,
) -> None:
    """Canary 5/25/50/100 through the HTTPRoute weights, then a rollback restores the route and selector."""
    blue = backend.deploy(svc.name, version="v1", color="blue", image=images[0], patch_id=None)
    backend.wait_healthy(blue, timeout)
    backend.set_traffic(svc.name, {"blue": 100})
    before = backend.snapshot(svc.name)
    green = backend.deploy(svc.name, version="v2", color="green", image=images[1], patch_id="p-7")
    backend.wait_healthy(green, timeout)
    b, g = svc.color_service("blue"), svc.color_service("green")
    for step in (5, 25, 50, 100):
        backend.set_traffic(svc.name, {"blue": 100 - step, "green": step})
        assert route_weights(clients, svc) == {b: 100 - step, g: step}
        assert backend.current_traffic(svc.name) == {
            c: w for c, w in (("blue", 100 - step), ("green", step)) if w
        }
        assert selector(clients, svc)["color"] == ("green" if step == 100 else "blue")

    backend.restore(before)  # post-promotion analysis failed: everything back on blue
    assert route_weights(clients, svc) == {b: 100}
    assert selector(clients, svc)["color"] == "blue"
    assert backend.current_traffic(svc.name) == {"blue": 100}
    backend.retire(green)


def run_canary_abort(
    backend: KubernetesBackend,
    clients: KubernetesClients,
    svc: K8sService,
    images: tuple[str, str],
    timeout: float = TIMEOUT,
) -> None:
    """Abort at 25%: canary weight to 0, then the canary is removed (route ref, Service, Deployment)."""
    blue = backend.deploy(svc.name, version="v1", color="blue", image=images[0], patch_id=None)
    backend.wait_healthy(blue, timeout)
    backend.set_traffic(svc.name, {"blue": 100})
    green = backend.deploy(svc.name, version="v3", color="green", image=images[1], patch_id="p-bad")
    backend.wait_healthy(green, timeout)
    b, g = svc.color_service("blue"), svc.color_service("green")
    backend.set_traffic(svc.name, {"blue": 75, "green": 25})
    assert route_weights(clients, svc) == {b: 75, g: 25}

    backend.set_traffic(svc.name, {"blue": 100, "green": 0})
    assert route_weights(clients, svc) == {b: 100, g: 0}
    assert backend.current_traffic(svc.name) == {"blue": 100}
    backend.retire(green)
    assert route_weights(clients, svc) == {b: 100}
    assert not exists(clients.core.read_namespaced_service, g, svc.namespace)
    assert not exists(clients.apps.read_namespaced_deployment, svc.deployment_name("green"), svc.namespace)
    assert [r.color for r in backend.releases(svc.name)] == ["blue"]


# ---------------------------------------------------------------------------- fixtures

IMAGES = ("registry.example/shop:1.0", "registry.example/shop:1.1")


@pytest.fixture
def api() -> Iterator[K8sApiDouble]:
    d = K8sApiDouble(ready_after_s=0.15).start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def clients(api: K8sApiDouble) -> KubernetesClients:
    return KubernetesClients.from_configuration(api.configuration())


@pytest.fixture
def backend(clients: KubernetesClients) -> KubernetesBackend:
    return KubernetesBackend(clients, [ORDERS, PAYMENTS], gateway_parent=GATEWAY, request_timeout_s=5)


def live_blue(backend: KubernetesBackend, svc: K8sService) -> None:
    r = backend.deploy(svc.name, version="v1", color="blue", image=IMAGES[0], patch_id=None)
    backend.wait_healthy(r, TIMEOUT)
    backend.set_traffic(svc.name, {"blue": 100})


# ---------------------------------------------------------------------------- tests


def test_backend_implements_the_interface(backend: KubernetesBackend) -> None:
    assert isinstance(backend, DeploymentBackend)


def test_blue_green_switch_and_restore(
    api: K8sApiDouble, backend: KubernetesBackend, clients: KubernetesClients
) -> None:
    run_blue_green(backend, clients, ORDERS, IMAGES)
    reqs = api.requests
    watches = [r for r in reqs if r.query.get("watch", "").lower() == "true"]
    assert watches and all(r.path == f"/apis/apps/v1/namespaces/{NS}/deployments" for r in watches)
    assert all(r.query["fieldSelector"].startswith("metadata.name=orders-") for r in watches)
    selector_patches = [r for r in reqs if r.method == "PATCH" and r.path.endswith("/services/orders")]
    assert selector_patches and {r.content_type for r in selector_patches} == {
        "application/strategic-merge-patch+json"
    }
    # Deployments carry the labels the model promises.
    blue = api.get("deployments", NS, "orders-blue")
    assert {"app": "orders", "color": "blue", "version": "v1", "patch-id": ""}.items() <= blue["metadata"][
        "labels"
    ].items()
    assert blue["spec"]["template"]["metadata"]["labels"]["version"] == "v1"


def test_canary_weights_through_httproute_then_rollback(
    api: K8sApiDouble, backend: KubernetesBackend, clients: KubernetesClients
) -> None:
    run_canary(backend, clients, PAYMENTS, IMAGES)
    route = api.get("httproutes", NS, "payments")
    assert route["spec"]["parentRefs"][0]["name"] == "public"
    route_patches = [r for r in api.requests if r.method == "PATCH" and "/httproutes/" in r.path]
    assert len(route_patches) >= 5 and {r.content_type for r in route_patches} == {
        "application/merge-patch+json"
    }


def test_canary_abort_sets_zero_and_removes_canary(
    backend: KubernetesBackend, clients: KubernetesClients
) -> None:
    run_canary_abort(backend, clients, PAYMENTS, IMAGES)


def test_deploy_is_idempotent_by_patch_id(api: K8sApiDouble, backend: KubernetesBackend) -> None:
    live_blue(backend, ORDERS)
    first = backend.deploy("orders", version="v2", color="green", image=IMAGES[1], patch_id="p-1")
    backend.wait_healthy(first, TIMEOUT)
    api.clear_requests()
    again = backend.deploy("orders", version="v2", color="green", image=IMAGES[1], patch_id="p-1")
    assert again == first
    assert api.writes() == [], "a repeated deploy must start nothing"
    assert api.get("deployments", NS, "orders-green")["metadata"]["generation"] == 1

    with pytest.raises(BackendError, match=r"already runs patch p-1 .*one patch id is one build"):
        backend.deploy("orders", version="v9", color="green", image="other:9", patch_id="p-1")

    # A new patch on the idle color updates it in place. Until the controller has observed the new
    # generation, the old generation's "2/2 ready" status must not count as healthy.
    api.pause_controller()
    newer = backend.deploy(
        "orders", version="v3", color="green", image="registry.example/shop:1.2", patch_id="p-2"
    )
    dep = api.get("deployments", NS, "orders-green")
    assert dep["metadata"]["generation"] == 2
    assert (dep["status"]["observedGeneration"], dep["status"]["readyReplicas"]) == (1, 2)
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/shop:1.2"
    with pytest.raises(UnhealthyRelease, match="observedGeneration 1/2"):
        backend.wait_healthy(newer, 0.5)
    api.resume_controller()
    backend.wait_healthy(newer, TIMEOUT)
    assert api.get("deployments", NS, "orders-green")["status"]["observedGeneration"] == 2


def test_never_ready_times_out_and_switches_nothing(
    api: K8sApiDouble, backend: KubernetesBackend, clients: KubernetesClients
) -> None:
    live_blue(backend, ORDERS)
    api.hold_unready("orders-green", NS)
    green = backend.deploy("orders", version="v2", color="green", image=IMAGES[1], patch_id="p-9")
    api.clear_requests()
    t0 = time.monotonic()
    with pytest.raises(UnhealthyRelease) as err:
        backend.wait_healthy(green, 1.0)
    elapsed = time.monotonic() - t0
    assert 1.0 <= elapsed < 3.0
    msg = str(err.value)
    assert "orders: Deployment shop/orders-green (green, version v2) not ready after 1s" in msg
    assert "readyReplicas 0/2" in msg and "it received no traffic" in msg
    assert api.writes() == []
    assert selector(clients, ORDERS)["color"] == "blue"
    with pytest.raises(BackendError, match="refusing to route 100% to green"):
        backend.set_traffic("orders", {"green": 100})
    assert selector(clients, ORDERS)["color"] == "blue"
    assert api.writes() == []


def test_progress_deadline_exceeded_fails_fast(api: K8sApiDouble, backend: KubernetesBackend) -> None:
    api.fail_progress("orders-blue", NS)
    blue = backend.deploy("orders", version="v1", color="blue", image=IMAGES[0], patch_id=None)
    t0 = time.monotonic()
    with pytest.raises(UnhealthyRelease, match="ProgressDeadlineExceeded"):
        backend.wait_healthy(blue, 30)
    assert time.monotonic() - t0 < 3


def test_watch_restarts_after_410_gone(api: K8sApiDouble, backend: KubernetesBackend) -> None:
    api.hold_unready("orders-blue", NS)
    blue = backend.deploy("orders", version="v1", color="blue", image=IMAGES[0], patch_id=None)
    seen: list[RequestRecord] = []

    def compact_then_release(req: RequestRecord) -> None:
        if req.query.get("watch"):
            seen.append(req)
            if len(seen) == 1:
                api.compact()  # the resourceVersion the backend listed at is now too old: 410 Gone
            else:
                api.release_hold("orders-blue", NS)

    api.on_request = compact_then_release
    backend.wait_healthy(blue, TIMEOUT)
    assert len(seen) == 2
    assert int(seen[1].query["resourceVersion"]) > int(seen[0].query["resourceVersion"]), (
        "re-listed after 410"
    )


def test_conflict_on_create_reuses_the_existing_objects(
    api: K8sApiDouble, backend: KubernetesBackend
) -> None:
    # A parallel run of the same task creates the Deployment and per-color Service between our GET and POST.
    body = backend._deployment_body(ORDERS, "green", "v2", IMAGES[1], "p-5")
    api.race_create("deployments", NS, body)
    api.race_create("services", NS, backend._service_body(ORDERS, "orders-green", "green"))
    rel = backend.deploy("orders", version="v2", color="green", image=IMAGES[1], patch_id="p-5")
    assert (rel.color, rel.patch_id, rel.ref) == ("green", "p-5", "orders-green")
    posts = [r for r in api.requests if r.method == "POST"]
    assert [r.path.rsplit("/", 1)[-1] for r in posts] == ["deployments", "services"]  # both answered 409
    assert not [r for r in api.requests if r.method == "PATCH"], "same patch id: reuse, no update"
    assert len(api.objects("deployments", NS)) == 1 and len(api.objects("services", NS)) == 1
    backend.wait_healthy(rel, TIMEOUT)


def test_unauthorized_is_a_clear_error(api: K8sApiDouble) -> None:
    bad = KubernetesBackend(KubernetesClients.from_configuration(api.configuration(token="wrong")), [ORDERS])
    with pytest.raises(KubernetesApiError) as err:
        bad.deploy("orders", version="v1", color="blue", image=IMAGES[0], patch_id=None)
    assert err.value.status == 401
    assert str(err.value) == (
        f"orders: read Deployment shop/orders-blue: the Kubernetes API at {api.url} answered "
        "401 Unauthorized: the credentials were refused (check the token or kubeconfig of the "
        "Airflow connection, e.g. kubernetes_default)"
    )
    with pytest.raises(KubernetesApiError, match="401 Unauthorized"):
        bad.current_traffic("orders")
    assert api.objects("deployments") == []


def test_revoked_token_during_wait_is_a_clear_error(api: K8sApiDouble, backend: KubernetesBackend) -> None:
    blue = backend.deploy("orders", version="v1", color="blue", image=IMAGES[0], patch_id=None)
    api.token = "rotated"
    with pytest.raises(KubernetesApiError, match="401 Unauthorized"):
        backend.wait_healthy(blue, TIMEOUT)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"blue": 50, "green": 60}, "must sum to 100"),
        ({"blue": 101, "green": -1}, "integer 0..100"),
        ({"blue": 97.5, "green": 2.5}, "integer 0..100"),
        ({"blue": True, "green": 99}, "integer 0..100"),
        ({}, "must sum to 100"),
        ({"blue": 50, "red": 50}, "color must be one of blue, green"),
    ],
)
def test_invalid_weights_refused_before_any_api_call(
    api: K8sApiDouble, backend: KubernetesBackend, weights: dict[str, Any], message: str
) -> None:
    with pytest.raises(BackendError, match=message):
        backend.set_traffic("payments", weights)
    assert api.requests == []


def test_refusals_before_any_api_call(api: K8sApiDouble, backend: KubernetesBackend) -> None:
    with pytest.raises(BackendError, match="has no httproute; only 100/0 switches"):
        backend.set_traffic("orders", {"blue": 90, "green": 10})
    with pytest.raises(BackendError, match=r"unknown service 'nope'.*known: orders, payments"):
        backend.deploy("nope", version="v1", color="blue", image="x:1", patch_id=None)
    with pytest.raises(BackendError, match="not a valid Kubernetes label value"):
        backend.deploy("orders", version="1.0+build.7", color="blue", image="x:1", patch_id=None)
    with pytest.raises(BackendError, match="color must be one of"):
        backend.deploy("orders", version="v1", color="purple", image="x:1", patch_id=None)
    assert api.requests == []


def test_safety_refusals(api: K8sApiDouble, backend: KubernetesBackend, clients: KubernetesClients) -> None:
    with pytest.raises(
        BackendError, match="refusing to route 100% to blue: Deployment shop/orders-blue does not exist"
    ):
        backend.set_traffic("orders", {"blue": 100})
    live_blue(backend, ORDERS)
    blue = backend.releases("orders")[0]
    with pytest.raises(BackendError, match="refusing to retire blue"):
        backend.retire(blue)
    with pytest.raises(
        BackendError, match=r"refusing to replace blue \(v1\) with v2: it carries live traffic"
    ):
        backend.deploy("orders", version="v2", color="blue", image=IMAGES[1], patch_id="p-1")
    assert api.get("deployments", NS, "orders-blue")["metadata"]["labels"]["version"] == "v1"
    assert selector(clients, ORDERS)["color"] == "blue"


def test_restore_recreates_a_retired_baseline(
    api: K8sApiDouble, backend: KubernetesBackend, clients: KubernetesClients
) -> None:
    live_blue(backend, PAYMENTS)
    before = backend.snapshot("payments")
    green = backend.deploy("payments", version="v2", color="green", image=IMAGES[1], patch_id="p-3")
    backend.wait_healthy(green, TIMEOUT)
    backend.set_traffic("payments", {"blue": 0, "green": 100})
    backend.retire(backend.releases("payments")[0])  # blue gone after promotion
    assert not exists(clients.apps.read_namespaced_deployment, "payments-blue", NS)

    backend.restore(before)  # late failure: blue comes back, ready, then takes the traffic
    dep = clients.apps.read_namespaced_deployment("payments-blue", NS)
    assert dep.status.ready_replicas == 2 and dep.metadata.labels["version"] == "v1"
    assert route_weights(clients, PAYMENTS) == {"payments-blue": 100}
    assert selector(clients, PAYMENTS)["color"] == "blue"


def test_route_update_retries_on_conflict(
    api: K8sApiDouble, backend: KubernetesBackend, clients: KubernetesClients
) -> None:
    live_blue(backend, PAYMENTS)
    green = backend.deploy("payments", version="v2", color="green", image=IMAGES[1], patch_id="p-4")
    backend.wait_healthy(green, TIMEOUT)
    done: list[bool] = []

    def concurrent_writer(req: RequestRecord) -> None:
        if req.method == "PATCH" and "/httproutes/" in req.path and not done:
            done.append(True)
            api.annotate("httproutes", NS, "payments", "team/owner", "payments-squad")

    api.on_request = concurrent_writer
    backend.set_traffic("payments", {"blue": 95, "green": 5})
    assert route_weights(clients, PAYMENTS) == {"payments-blue": 95, "payments-green": 5}
    route = api.get("httproutes", NS, "payments")
    assert route["metadata"]["annotations"] == {"team/owner": "payments-squad"}, (
        "the other writer's change survives"
    )
    assert len([r for r in api.requests if r.method == "PATCH" and "/httproutes/" in r.path]) == 2


def test_route_must_exist_without_gateway_parent(api: K8sApiDouble, clients: KubernetesClients) -> None:
    b = KubernetesBackend(clients, [PAYMENTS])
    live = b.deploy("payments", version="v1", color="blue", image=IMAGES[0], patch_id=None)
    b.wait_healthy(live, TIMEOUT)
    with pytest.raises(
        BackendError, match="HTTPRoute shop/payments not found: create it attached to your Gateway"
    ):
        b.set_traffic("payments", {"blue": 100})
    assert api.objects("services", NS) == [api.get("services", NS, "payments-blue")]


def test_missing_gateway_api_is_a_clear_error() -> None:
    with K8sApiDouble(ready_after_s=0.05, gateway_api=False) as d:
        b = KubernetesBackend(
            KubernetesClients.from_configuration(d.configuration()), [PAYMENTS], gateway_parent=GATEWAY
        )
        with pytest.raises(BackendError, match=r"does not serve gateway\.networking\.k8s\.io/v1 httproutes"):
            b.current_traffic("payments")


def test_releases_use_a_label_selector(
    api: K8sApiDouble, backend: KubernetesBackend, clients: KubernetesClients
) -> None:
    live_blue(backend, ORDERS)
    backend.deploy("orders", version="v2", color="green", image=IMAGES[1], patch_id="p-6")
    backend.deploy("payments", version="v1", color="blue", image=IMAGES[0], patch_id=None)
    foreign = {
        "metadata": {"name": "orders-debug", "labels": {"app": "orders", "color": "debug"}},
        "spec": {
            "selector": {"matchLabels": {"app": "orders", "color": "debug"}},
            "template": {
                "metadata": {"labels": {"app": "orders", "color": "debug"}},
                "spec": {"containers": [{"name": "app", "image": "busybox:1"}]},
            },
        },
    }
    clients.apps.create_namespaced_deployment(NS, foreign)
    rels = backend.releases("orders")
    assert [(r.color, r.version, r.patch_id) for r in rels] == [("blue", "v1", None), ("green", "v2", "p-6")]
    assert rels[1].endpoint == "orders-green.shop.svc.cluster.local:80"
    lists = [
        r
        for r in api.requests
        if r.method == "GET" and r.path.endswith("/deployments") and "labelSelector" in r.query
    ]
    assert lists[-1].query["labelSelector"] == "app=orders,color in (blue,green)"


def test_concurrent_waits_share_the_server(api: K8sApiDouble, backend: KubernetesBackend) -> None:
    """Two watches at once (two services rolling out) each see only their own Deployment."""
    a = backend.deploy("orders", version="v1", color="blue", image=IMAGES[0], patch_id=None)
    b = backend.deploy("payments", version="v1", color="blue", image=IMAGES[0], patch_id=None)
    api.hold_unready("payments-blue", NS)
    errors: list[BaseException] = []

    def wait_b() -> None:
        try:
            backend.wait_healthy(b, TIMEOUT)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    t = threading.Thread(target=wait_b)
    t.start()
    backend.wait_healthy(a, TIMEOUT)
    assert t.is_alive(), "payments is held unready; its wait must still be running"
    api.release_hold("payments-blue", NS)
    t.join(TIMEOUT)
    assert not t.is_alive() and errors == []


def test_restore_of_a_first_rollout_removes_what_it_created(
    api: K8sApiDouble, backend: KubernetesBackend, clients: KubernetesClients
) -> None:
    before = backend.snapshot("payments")  # nothing exists yet
    assert (
        before.weights == {} and before.details["selector"] is None and before.details["route_refs"] is None
    )
    live_blue(backend, PAYMENTS)
    assert api.get("services", NS, "payments") and api.get("httproutes", NS, "payments")
    backend.restore(before)
    assert api.get("services", NS, "payments") is None and api.get("httproutes", NS, "payments") is None
    assert backend.current_traffic("payments") == {}


def test_operator_weights_are_read_as_percentages(api: K8sApiDouble, backend: KubernetesBackend) -> None:
    live_blue(backend, PAYMENTS)
    green = backend.deploy("payments", version="v2", color="green", image=IMAGES[1], patch_id="p-8")
    backend.wait_healthy(green, TIMEOUT)
    backend.set_traffic("payments", {"blue": 50, "green": 50})
    route = api.get("httproutes", NS, "payments")
    refs = route["spec"]["rules"][0]["backendRefs"]
    refs[0]["weight"], refs[1]["weight"] = 1, 2  # Gateway API weights are relative; someone set 1:2 by hand
    clients = KubernetesClients.from_configuration(api.configuration())
    clients.custom.patch_namespaced_custom_object(
        GATEWAY_GROUP, "v1", NS, HTTPROUTES, "payments", {"spec": {"rules": route["spec"]["rules"]}}
    )
    assert backend.current_traffic("payments") == {"blue": 33, "green": 67}


def test_no_dangling_refs_and_no_foreign_releases(
    backend: KubernetesBackend, clients: KubernetesClients
) -> None:
    live_blue(backend, PAYMENTS)
    backend.set_traffic(
        "payments", {"blue": 100, "green": 0}
    )  # green never existed: no ref to a missing Service
    assert route_weights(clients, PAYMENTS) == {"payments-blue": 100}
    foreign = Release("payments", "v1", "green", "x:1", ref="payments-blue")  # e.g. a mixed-up id
    with pytest.raises(BackendError, match="release ref 'payments-blue' is not this backend's Deployment"):
        backend.retire(foreign)
    assert exists(clients.apps.read_namespaced_deployment, "payments-blue", NS)


def test_failed_switch_leaves_no_split(
    api: K8sApiDouble, backend: KubernetesBackend, clients: KubernetesClients
) -> None:
    """The route moves first; if the selector patch then fails, the route is put back before the error."""
    live_blue(backend, PAYMENTS)
    green = backend.deploy("payments", version="v2", color="green", image=IMAGES[1], patch_id="p-10")
    backend.wait_healthy(green, TIMEOUT)
    api.fail_next("PATCH", f"/api/v1/namespaces/{NS}/services/payments", 500, "InternalError")
    with pytest.raises(
        KubernetesApiError, match="patch Service shop/payments selector: Kubernetes API answered 500"
    ):
        backend.set_traffic("payments", {"green": 100})
    assert route_weights(clients, PAYMENTS) == {"payments-blue": 100}
    assert selector(clients, PAYMENTS)["color"] == "blue"
    assert backend.current_traffic("payments") == {"blue": 100}

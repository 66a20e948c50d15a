"""The Kubernetes API double behaves like kube-apiserver where the backend relies on it.

Driven by the real `kubernetes` client, so these also pin down what the
client sends (patch content types, watch parameters). Where kube-apiserver's
behaviour is quoted (messages, Status shapes), it is from its source
(k8s.io/apimachinery errors, the registry store, the watch cache).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.doubles.k8s_api_double import K8sApiDouble

NS = "t"
GW = ("gateway.networking.k8s.io", "v1")


@pytest.fixture
def api() -> Iterator[K8sApiDouble]:
    with K8sApiDouble(ready_after_s=0.05) as d:
        yield d


@pytest.fixture
def k(api: K8sApiDouble) -> client.ApiClient:
    return client.ApiClient(api.configuration())


def deployment(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    labels = labels or {"app": name}
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{"name": "app", "image": "img:1"}, {"name": "sidecar", "image": "proxy:1"}]
                },
            },
            **spec,
        },
    }


def status_of(err: ApiException) -> dict[str, Any]:
    return json.loads(err.body)


def test_errors_are_status_objects(api: K8sApiDouble, k: client.ApiClient) -> None:
    apps = client.AppsV1Api(k)
    with pytest.raises(ApiException) as e:
        apps.read_namespaced_deployment("nope", NS)
    assert e.value.status == 404
    assert status_of(e.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'deployments.apps "nope" not found',
        "reason": "NotFound",
        "details": {"name": "nope", "group": "apps", "kind": "deployments"},
        "code": 404,
    }
    apps.create_namespaced_deployment(NS, deployment("web"))
    with pytest.raises(ApiException) as e:
        apps.create_namespaced_deployment(NS, deployment("web"))
    assert (e.value.status, status_of(e.value)["reason"]) == (409, "AlreadyExists")
    assert status_of(e.value)["message"] == 'deployments.apps "web" already exists'

    bad = client.AppsV1Api(client.ApiClient(api.configuration(token="nope")))
    with pytest.raises(ApiException) as e:
        bad.list_namespaced_deployment(NS)
    assert (e.value.status, status_of(e.value)["reason"], status_of(e.value)["kind"]) == (
        401,
        "Unauthorized",
        "Status",
    )

    broken = deployment("broken")
    broken["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    with pytest.raises(ApiException) as e:
        apps.create_namespaced_deployment(NS, broken)
    s = status_of(e.value)
    assert (e.value.status, s["reason"], s["details"]["causes"][0]["field"]) == (
        422,
        "Invalid",
        "spec.template.metadata.labels",
    )
    assert "`selector` does not match template `labels`" in s["message"]


def test_strategic_merge_patch_generation_and_resource_version(
    api: K8sApiDouble, k: client.ApiClient
) -> None:
    apps = client.AppsV1Api(k)
    api.pause_controller()  # no status writes in between: resourceVersions below are ours alone
    created = apps.create_namespaced_deployment(NS, deployment("web"))
    assert created.metadata.generation == 1 and created.spec.strategy.type == "RollingUpdate"
    rv0 = int(created.metadata.resource_version)
    # Containers merge by name: the sidecar survives an image change of "app".
    patched = apps.patch_namespaced_deployment(
        "web", NS, {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "img:2"}]}}}}
    )
    assert [(c.name, c.image) for c in patched.spec.template.spec.containers] == [
        ("app", "img:2"),
        ("sidecar", "proxy:1"),
    ]
    assert patched.metadata.generation == 2 and int(patched.metadata.resource_version) > rv0
    # A label change is not a spec change; null deletes a key.
    relabelled = apps.patch_namespaced_deployment("web", NS, {"metadata": {"labels": {"tier": "front"}}})
    relabelled = apps.patch_namespaced_deployment("web", NS, {"metadata": {"labels": {"tier": None}}})
    assert relabelled.metadata.generation == 2 and "tier" not in relabelled.metadata.labels
    # A no-op patch changes no resourceVersion.
    same = apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": 2}})
    assert same.metadata.resource_version == relabelled.metadata.resource_version
    # The selector is immutable.
    with pytest.raises(ApiException) as e:
        apps.patch_namespaced_deployment("web", NS, {"spec": {"selector": {"matchLabels": {"app": "x"}}}})
    assert e.value.status == 422 and "field is immutable" in status_of(e.value)["message"]
    assert [r.content_type for r in api.requests if r.method == "PATCH"] == [
        "application/strategic-merge-patch+json"
    ] * 5


def test_json_patch_when_the_client_sends_a_list(api: K8sApiDouble, k: client.ApiClient) -> None:
    core = client.CoreV1Api(k)
    core.create_namespaced_service(
        NS, {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}
    )
    svc = core.patch_namespaced_service(
        "web", NS, [{"op": "replace", "path": "/spec/selector/app", "value": "v2"}]
    )
    assert svc.spec.selector == {"app": "v2"} and svc.spec.ports[0].target_port == 80
    assert api.requests[-1].content_type == "application/json-patch+json"
    with pytest.raises(ApiException) as e:
        core.patch_namespaced_service(
            "web", NS, [{"op": "test", "path": "/spec/selector/app", "value": "v1"}]
        )
    assert e.value.status == 422


def test_custom_objects_merge_patch_conflict_and_no_strategic_merge(
    api: K8sApiDouble, k: client.ApiClient
) -> None:
    custom = client.CustomObjectsApi(k)
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "a", "port": 80}]}]},
    }
    made = custom.create_namespaced_custom_object(*GW, NS, "httproutes", route)
    ref = made["spec"]["rules"][0]["backendRefs"][0]
    assert (ref["group"], ref["kind"], ref["weight"]) == ("", "Service", 1)  # CRD defaults
    assert made["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    rv = made["metadata"]["resourceVersion"]
    new_rules = [
        {"backendRefs": [{"name": "a", "port": 80, "weight": 90}, {"name": "b", "port": 80, "weight": 10}]}
    ]
    out = custom.patch_namespaced_custom_object(
        *GW, NS, "httproutes", "r", {"metadata": {"resourceVersion": rv}, "spec": {"rules": new_rules}}
    )
    assert [b["weight"] for b in out["spec"]["rules"][0]["backendRefs"]] == [90, 10]  # lists are replaced
    assert out["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as e:  # stale resourceVersion
        custom.patch_namespaced_custom_object(
            *GW, NS, "httproutes", "r", {"metadata": {"resourceVersion": rv}, "spec": {"rules": []}}
        )
    assert (e.value.status, status_of(e.value)["reason"]) == (409, "Conflict")
    assert "the object has been modified" in status_of(e.value)["message"]
    with pytest.raises(ApiException) as e:  # custom resources have no strategic merge patch
        custom.patch_namespaced_custom_object(
            *GW, NS, "httproutes", "r", {"spec": {}}, _content_type="application/strategic-merge-patch+json"
        )
    assert e.value.status == 415
    res = custom.get_api_resources(*GW)
    assert [r.name for r in res.resources] == ["httproutes"]


def test_list_selectors(api: K8sApiDouble, k: client.ApiClient) -> None:
    apps = client.AppsV1Api(k)
    for name, color in (("a-blue", "blue"), ("a-green", "green"), ("a-debug", "debug")):
        apps.create_namespaced_deployment(NS, deployment(name, {"app": "a", "color": color, "n": name}))
    apps.create_namespaced_deployment("other", deployment("a-blue", {"app": "a", "color": "blue"}))

    def names(**kw: Any) -> list[str]:
        return [d.metadata.name for d in apps.list_namespaced_deployment(NS, **kw).items]

    assert names(label_selector="app=a,color in (blue,green)") == ["a-blue", "a-green"]
    assert names(label_selector="color notin (blue),app==a") == ["a-debug", "a-green"]
    assert names(label_selector="color!=blue,!missing,n") == ["a-debug", "a-green"]
    assert names(field_selector="metadata.name=a-green") == ["a-green"]
    assert len(apps.list_deployment_for_all_namespaces(label_selector="color=blue").items) == 2
    with pytest.raises(ApiException) as e:
        names(label_selector="color in blue")
    assert e.value.status == 400
    with pytest.raises(ApiException) as e:
        names(field_selector="spec.replicas=2")
    assert e.value.status == 400 and "field label not supported" in status_of(e.value)["message"]


def test_watch_stream(api: K8sApiDouble, k: client.ApiClient) -> None:
    apps = client.AppsV1Api(k)
    api.pause_controller()
    apps.create_namespaced_deployment(NS, deployment("w", {"app": "w", "color": "blue"}))
    listed = apps.list_namespaced_deployment(NS)
    rv = listed.metadata.resource_version
    api.on_request = lambda req: api.resume_controller() if req.query.get("watch") else None
    # Without a resourceVersion: the current objects replayed as ADDED, then live events (controller status).
    events = []
    for ev in watch.Watch().stream(apps.list_namespaced_deployment, NS, timeout_seconds=1):
        events.append((ev["type"], ev["object"].metadata.name, ev["object"].status.ready_replicas))
        if ev["object"].status.ready_replicas == 2:
            break
    assert events[0][:2] == ("ADDED", "w") and events[-1] == ("MODIFIED", "w", 2)
    # From a resourceVersion: later events only, with increasing resourceVersions; leaving a label
    # selector is a DELETED for that watch.
    apps.patch_namespaced_deployment("w", NS, {"metadata": {"labels": {"stage": "x"}}})
    seen = [
        (ev["type"], int(ev["object"].metadata.resource_version))
        for ev in watch.Watch().stream(
            apps.list_namespaced_deployment,
            NS,
            label_selector="!stage",
            resource_version=rv,
            timeout_seconds=1,
        )
    ]
    assert [t for t, _ in seen][-1] == "DELETED" and all(t == "MODIFIED" for t, _ in seen[:-1])
    assert [v for _, v in seen] == sorted(v for _, v in seen) and seen[0][1] > int(rv)
    watches = [r for r in api.requests if r.query.get("watch")]
    assert watches[-1].query["watch"] == "True" and watches[-1].query["resourceVersion"] == rv
    # After a compaction, an old resourceVersion is 410 Gone (an ERROR event; the client raises).
    api.compact()
    with pytest.raises(ApiException) as e:
        list(
            watch.Watch().stream(apps.list_namespaced_deployment, NS, resource_version=rv, timeout_seconds=1)
        )
    assert e.value.status == 410 and "Expired" in e.value.reason


def test_discovery_version_and_unimplemented(api: K8sApiDouble, k: client.ApiClient) -> None:
    assert client.VersionApi(k).get_code().git_version == "v1.33.0-selfheal-double"
    groups = {g.name for g in client.ApisApi(k).get_api_versions().groups}
    assert groups == {"apps", "gateway.networking.k8s.io"}
    assert [r.name for r in client.CoreV1Api(k).get_api_resources().resources] == ["services"]
    apps = client.AppsV1Api(k)
    apps.create_namespaced_deployment(NS, deployment("x"))
    with pytest.raises(ApiException) as e:  # dry runs are refused, not silently applied
        apps.patch_namespaced_deployment("x", NS, {"spec": {"replicas": 5}}, dry_run="All")
    assert e.value.status == 400
    with pytest.raises(ApiException) as e:
        apps.replace_namespaced_deployment("x", NS, deployment("x"))
    assert e.value.status == 405 and "not implemented by this test double" in status_of(e.value)["message"]
    with pytest.raises(ApiException) as e:
        apps.read_namespaced_deployment_scale("x", NS)
    assert e.value.status == 404

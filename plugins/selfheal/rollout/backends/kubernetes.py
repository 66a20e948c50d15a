"""Kubernetes deployment backend: a Deployment per color, a Service selector, HTTPRoute weights.

Model (per catalog service with a `kubernetes` target):

- Deployments ``<deployment>-blue`` / ``<deployment>-green``, labelled
  ``app=<deployment>``, ``color``, ``version``, ``patch-id`` (selector: app + color,
  which is immutable in Kubernetes, so version never goes into it).
- Per-color Services ``<service>-blue`` / ``<service>-green``: the direct address of
  one color (pre-promotion checks) and the backendRefs of the HTTPRoute.
- The main Service ``<service>``: its selector names one color. Blue/green moves
  all traffic by patching this selector (one object update: atomic for clients).
- The Gateway API HTTPRoute (``httproute`` in the catalog, optional): canary
  weights as two weighted backendRefs; 100/0 switches update it too, so the
  north-south (Gateway) and east-west (Service) paths always agree.

The core takes plain `kubernetes` client objects (AppsV1Api, CoreV1Api,
CustomObjectsApi) so it runs without Airflow; `KubernetesClients.from_airflow`
builds them through the cncf-kubernetes provider's KubernetesHook, and
`from_kubeconfig` / `from_configuration` without it.

Safety rules kept here (not left to callers): weights are validated before any
API call; traffic only goes to a color with ready pods; a color that carries
traffic is never redeployed over or retired; a read-modify-write of the
HTTPRoute is guarded by its resourceVersion (409 -> re-read, retry).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.exceptions import ReadTimeoutError

from selfheal.catalog import Catalog, KubernetesTarget
from selfheal.rollout.backends.base import (
    BackendError,
    Release,
    TrafficSnapshot,
    UnhealthyRelease,
    validate_weights,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

COLORS = ("blue", "green")
GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSION = "v1"
HTTPROUTES = "httproutes"
MANAGED_BY_KEY = "app.kubernetes.io/managed-by"
MANAGED_BY = "selfheal"
IMAGE_ANNOTATION = "selfheal.io/image"
_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_ROUTE_RETRIES = 5


class KubernetesApiError(BackendError):
    """The Kubernetes API refused or failed a call; `status` is the HTTP status (0: not reachable)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class KubernetesClients:
    """The three typed API clients the backend needs, however they were configured."""

    apps: k8s.AppsV1Api
    core: k8s.CoreV1Api
    custom: k8s.CustomObjectsApi

    @classmethod
    def from_api_client(cls, api_client: k8s.ApiClient) -> KubernetesClients:
        return cls(k8s.AppsV1Api(api_client), k8s.CoreV1Api(api_client), k8s.CustomObjectsApi(api_client))

    @classmethod
    def from_configuration(cls, configuration: k8s.Configuration) -> KubernetesClients:
        return cls.from_api_client(k8s.ApiClient(configuration))

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, context: str | None = None) -> KubernetesClients:
        """From a kubeconfig file (default: $KUBECONFIG or ~/.kube/config), without Airflow."""
        from kubernetes import config as k8s_config

        try:
            return cls.from_api_client(k8s_config.new_client_from_config(config_file=path, context=context))
        except (k8s_config.ConfigException, OSError) as e:
            raise BackendError(f"kubeconfig {path or '(default)'}: cannot load it: {e}") from e

    @classmethod
    def from_airflow(cls, conn_id: str = "kubernetes_default") -> KubernetesClients:
        """Through the cncf-kubernetes provider's KubernetesHook (extras: in_cluster, kube_config_path,
        kube_config, cluster_context, disable_verify_ssl, ...); Airflow is imported only here."""
        from airflow.exceptions import AirflowException
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
        from kubernetes import config as k8s_config

        hook = KubernetesHook(conn_id=conn_id)
        try:
            return cls(hook.apps_v1_client, hook.core_v1_client, hook.custom_object_client)
        except (AirflowException, k8s_config.ConfigException, OSError, ValueError) as e:
            raise BackendError(
                f"Airflow connection {conn_id!r}: cannot build a Kubernetes client: {e}"
            ) from e


@dataclass(frozen=True)
class K8sService:
    """How one catalog service runs on Kubernetes (the target plus the container's port and health path)."""

    name: str
    target: KubernetesTarget
    port: int = 8000
    health_path: str = "/health"
    service_port: int = 80

    @property
    def namespace(self) -> str:
        return self.target.namespace

    def deployment_name(self, color: str) -> str:
        return f"{self.target.deployment}-{color}"

    def color_service(self, color: str) -> str:
        return f"{self.target.service}-{color}"


def services_from_catalog(catalog: Catalog) -> dict[str, K8sService]:
    """Every catalog service with a kubernetes block; port/health path come from its docker block if any
    (the same image runs in both)."""
    out: dict[str, K8sService] = {}
    for s in catalog.services:
        t = s.deploy.kubernetes
        if t is None:
            continue
        d = s.deploy.docker
        out[s.name] = K8sService(
            s.name, t, port=d.port if d else 8000, health_path=d.health_path if d else "/health"
        )
    return out


def _percentages(raw: Mapping[str, int]) -> dict[str, int]:
    """Relative Gateway API weights -> integer percent summing to 100 (largest remainder), zeros dropped."""
    total = sum(raw.values())
    if total <= 0:
        return {}
    exact = {c: w * 100 / total for c, w in raw.items()}
    out = {c: math.floor(v) for c, v in exact.items()}
    for c in sorted(exact, key=lambda c: exact[c] - out[c], reverse=True)[: 100 - sum(out.values())]:
        out[c] += 1
    return {c: v for c, v in out.items() if v > 0}


def _rollout_state(dep: k8s.V1Deployment) -> tuple[bool, str, str | None]:
    """(ready, summary, fatal reason) in the spirit of `kubectl rollout status`."""
    want = dep.spec.replicas if dep.spec and dep.spec.replicas is not None else 1
    st = dep.status or k8s.V1DeploymentStatus()
    gen = dep.metadata.generation or 0
    observed = st.observed_generation or 0
    ready, updated, total = st.ready_replicas or 0, st.updated_replicas or 0, st.replicas or 0
    ok = observed >= gen and ready == want and updated == want and total == want
    summary = (
        f"readyReplicas {ready}/{want}, updatedReplicas {updated}/{want}, observedGeneration {observed}/{gen}"
    )
    fatal = None
    for c in st.conditions or ():
        if c.type == "Progressing" and c.reason == "ProgressDeadlineExceeded":
            fatal = f"ProgressDeadlineExceeded: {c.message or ''}".strip()
    return ok, summary, fatal


class KubernetesBackend:
    """DeploymentBackend on Kubernetes; see the module docstring for the object model."""

    def __init__(
        self,
        clients: KubernetesClients,
        services: Mapping[str, K8sService] | Iterable[K8sService],
        *,
        gateway_parent: Mapping[str, Any] | None = None,
        request_timeout_s: float = 15.0,
        restore_timeout_s: float = 300.0,
    ) -> None:
        """`gateway_parent`: the parentRef (e.g. {"name": "public-gw", "namespace": "gateways"}) used when
        an HTTPRoute named in the catalog does not exist yet; without it a missing route is an error."""
        self.apps, self.core, self.custom = clients.apps, clients.core, clients.custom
        svcs = services.values() if isinstance(services, Mapping) else services
        self.services: dict[str, K8sService] = {s.name: s for s in svcs}
        for s in self.services.values():
            for name in (s.color_service("green"), s.deployment_name("green")):
                if not _DNS_LABEL.match(name):
                    raise BackendError(
                        f"service {s.name}: {name!r} is not a valid Kubernetes name (DNS-1035, <= 63)"
                    )
        self.gateway_parent = dict(gateway_parent) if gateway_parent else None
        self.request_timeout_s = request_timeout_s
        self.restore_timeout_s = restore_timeout_s
        self._gateway_api_checked = False

    @classmethod
    def from_catalog(cls, catalog: Catalog, clients: KubernetesClients, **kw: Any) -> KubernetesBackend:
        return cls(clients, services_from_catalog(catalog), **kw)

    # ------------------------------------------------------------------ API plumbing

    @property
    def host(self) -> str:
        return str(self.apps.api_client.configuration.host)

    def _api(self, what: str, fn: Callable[..., T], *args: Any, not_found_ok: bool = False, **kw: Any) -> T:
        """Call the API with a bounded timeout; every failure becomes a one-line KubernetesApiError."""
        try:
            return fn(*args, _request_timeout=self.request_timeout_s, **kw)
        except ApiException as e:
            if not_found_ok and e.status == 404:
                return None  # type: ignore[return-value]
            raise self._api_error(what, e) from e
        except Urllib3HTTPError as e:
            raise KubernetesApiError(f"{what}: cannot reach the Kubernetes API at {self.host}: {e}", 0) from e

    def _api_error(self, what: str, e: ApiException) -> KubernetesApiError:
        message = e.reason or ""
        try:
            body = json.loads(e.body) if e.body else {}
            if isinstance(body, dict) and body.get("message"):
                message = str(body["message"])
        except (ValueError, TypeError):
            pass
        if e.status == 401:
            return KubernetesApiError(
                f"{what}: the Kubernetes API at {self.host} answered 401 Unauthorized: the credentials were "
                f"refused (check the token or kubeconfig of the Airflow connection, e.g. kubernetes_default)",
                401,
            )
        if e.status == 403:
            return KubernetesApiError(f"{what}: forbidden by the cluster's RBAC (403): {message}", 403)
        return KubernetesApiError(f"{what}: Kubernetes API answered {e.status}: {message}", e.status or 0)

    def _service(self, name: str) -> K8sService:
        try:
            return self.services[name]
        except KeyError:
            known = ", ".join(sorted(self.services)) or "none"
            raise BackendError(
                f"unknown service {name!r}: no kubernetes target for it (known: {known})"
            ) from None

    @staticmethod
    def _check_color(service: str, color: str) -> None:
        if color not in COLORS:
            raise BackendError(f"{service}: color must be one of {', '.join(COLORS)}, got {color!r}")

    def _release_name(self, cfg: K8sService, release: Release) -> str:
        """The Deployment a release stands for; a foreign ref (another backend's id) is refused."""
        self._check_color(cfg.name, release.color)
        name = cfg.deployment_name(release.color)
        if release.ref and release.ref != name:
            raise BackendError(
                f"{cfg.name}: release ref {release.ref!r} is not this backend's Deployment {name!r}"
            )
        return name

    def _read_deployment(self, cfg: K8sService, color: str) -> k8s.V1Deployment | None:
        name = cfg.deployment_name(color)
        return self._api(
            f"{cfg.name}: read Deployment {cfg.namespace}/{name}",
            self.apps.read_namespaced_deployment,
            name,
            cfg.namespace,
            not_found_ok=True,
        )

    def _read_service(self, cfg: K8sService, name: str) -> k8s.V1Service | None:
        return self._api(
            f"{cfg.name}: read Service {cfg.namespace}/{name}",
            self.core.read_namespaced_service,
            name,
            cfg.namespace,
            not_found_ok=True,
        )

    def _read_route(self, cfg: K8sService) -> dict[str, Any] | None:
        route_name = cfg.target.httproute
        if route_name is None:
            return None
        route = self._api(
            f"{cfg.name}: read HTTPRoute {cfg.namespace}/{route_name}",
            self.custom.get_namespaced_custom_object,
            GATEWAY_GROUP,
            GATEWAY_VERSION,
            cfg.namespace,
            HTTPROUTES,
            route_name,
            not_found_ok=True,
        )
        if route is None:
            self._check_gateway_api(cfg)
        return route

    def _check_gateway_api(self, cfg: K8sService) -> None:
        """A 404 on a route is ambiguous (no route, or no HTTPRoute type at all): ask discovery once."""
        if self._gateway_api_checked:
            return
        res = self._api(
            f"{cfg.name}: discover {GATEWAY_GROUP}/{GATEWAY_VERSION}",
            self.custom.get_api_resources,
            GATEWAY_GROUP,
            GATEWAY_VERSION,
            not_found_ok=True,
        )
        if res is None or not any(r.name == HTTPROUTES for r in res.resources or ()):
            raise BackendError(
                f"{cfg.name}: the cluster at {self.host} does not serve {GATEWAY_GROUP}/{GATEWAY_VERSION} "
                f"{HTTPROUTES} (Gateway API CRDs not installed); canary weights need them"
            )
        self._gateway_api_checked = True

    # ------------------------------------------------------------------ object bodies

    @staticmethod
    def _labels(cfg: K8sService, color: str, version: str, patch_id: str | None) -> dict[str, str]:
        return {
            "app": cfg.target.deployment,
            "color": color,
            "version": version,
            "patch-id": patch_id or "",
            MANAGED_BY_KEY: MANAGED_BY,
        }

    def _deployment_body(
        self, cfg: K8sService, color: str, version: str, image: str, patch_id: str | None
    ) -> dict[str, Any]:
        labels = self._labels(cfg, color, version, patch_id)
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": cfg.deployment_name(color),
                "namespace": cfg.namespace,
                "labels": labels,
                "annotations": {IMAGE_ANNOTATION: image},
            },
            "spec": {
                "replicas": cfg.target.replicas,
                "selector": {"matchLabels": {"app": cfg.target.deployment, "color": color}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": cfg.target.container,
                                "image": image,
                                "ports": [{"name": "http", "containerPort": cfg.port, "protocol": "TCP"}],
                                "readinessProbe": {
                                    "httpGet": {"path": cfg.health_path, "port": "http"},
                                    "periodSeconds": 2,
                                    "failureThreshold": 3,
                                },
                            }
                        ]
                    },
                },
            },
        }

    def _service_body(self, cfg: K8sService, name: str, color: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": name,
                "namespace": cfg.namespace,
                "labels": {"app": cfg.target.deployment, MANAGED_BY_KEY: MANAGED_BY},
            },
            "spec": {
                "selector": {"app": cfg.target.deployment, "color": color},
                "ports": [
                    {"name": "http", "port": cfg.service_port, "targetPort": "http", "protocol": "TCP"}
                ],
            },
        }

    def _release(self, cfg: K8sService, dep: k8s.V1Deployment) -> Release:
        labels = dep.metadata.labels or {}
        color = labels.get("color", "")
        containers = dep.spec.template.spec.containers or []
        image = next((c.image for c in containers if c.name == cfg.target.container), None)
        if image is None:
            image = (dep.metadata.annotations or {}).get(IMAGE_ANNOTATION, "")
        return Release(
            service=cfg.name,
            version=labels.get("version", ""),
            color=color,
            image=image or "",
            patch_id=labels.get("patch-id") or None,
            endpoint=f"{cfg.color_service(color)}.{cfg.namespace}.svc.cluster.local:{cfg.service_port}",
            ref=dep.metadata.name,
        )

    # ------------------------------------------------------------------ deploy / health

    def deploy(self, service: str, *, version: str, color: str, image: str, patch_id: str | None) -> Release:
        """Create (or reuse, by patch id) the color's Deployment and per-color Service; moves no traffic."""
        cfg = self._service(service)
        self._check_color(service, color)
        for what, value in (("version", version), ("patch id", patch_id or "")):
            if not _LABEL_VALUE.match(value):
                raise BackendError(
                    f"{service}: {what} {value!r} is not a valid Kubernetes label value "
                    "(<= 63 chars of A-Z a-z 0-9 - _ ., alphanumeric at both ends)"
                )
        if not image or any(ch.isspace() for ch in image):
            raise BackendError(f"{service}: image {image!r} is not a valid image reference")
        dep = self._apply_release(cfg, color, version, image, patch_id, guard_live=True)
        self._ensure_service(cfg, cfg.color_service(color), color)
        return self._release(cfg, dep)

    def _apply_release(
        self, cfg: K8sService, color: str, version: str, image: str, patch_id: str | None, *, guard_live: bool
    ) -> k8s.V1Deployment:
        name = cfg.deployment_name(color)
        body = self._deployment_body(cfg, color, version, image, patch_id)
        existing = self._read_deployment(cfg, color)
        if existing is None:
            try:
                created = self._api(
                    f"{cfg.name}: create Deployment {cfg.namespace}/{name}",
                    self.apps.create_namespaced_deployment,
                    cfg.namespace,
                    body,
                )
                log.info(
                    "%s: created Deployment %s/%s (%s, patch %s)",
                    cfg.name,
                    cfg.namespace,
                    name,
                    version,
                    patch_id,
                )
                return created
            except KubernetesApiError as e:
                if e.status != 409:
                    raise
                # Someone (a retried task, a parallel run) created it between our read and create: reuse it.
                existing = self._read_deployment(cfg, color)
                if existing is None:
                    raise
                log.info(
                    "%s: Deployment %s/%s already exists (409); reusing it", cfg.name, cfg.namespace, name
                )
        labels = existing.metadata.labels or {}
        same_patch = (labels.get("patch-id") or None) == patch_id
        current = self._release(cfg, existing)
        if same_patch and current.version == version and current.image == image:
            return existing
        if same_patch and patch_id is not None:
            raise BackendError(
                f"{cfg.name}: Deployment {cfg.namespace}/{name} already runs patch {patch_id} as "
                f"{current.version} ({current.image}), not {version} ({image}); one patch id is one build"
            )
        selector = (existing.spec.selector.match_labels or {}) if existing.spec.selector else {}
        if selector != body["spec"]["selector"]["matchLabels"]:
            raise BackendError(
                f"{cfg.name}: Deployment {cfg.namespace}/{name} has selector {selector}, not the app/color "
                "selector selfheal manages (selectors are immutable): rename or delete it"
            )
        if guard_live and self.current_traffic(cfg.name).get(color, 0) > 0:
            raise BackendError(
                f"{cfg.name}: refusing to replace {color} ({current.version}) with {version}: "
                f"it carries live traffic; deploy to the idle color"
            )
        patched = self._api(
            f"{cfg.name}: patch Deployment {cfg.namespace}/{name}",
            self.apps.patch_namespaced_deployment,
            name,
            cfg.namespace,
            body,  # a dict body is sent as application/strategic-merge-patch+json (containers merge by name)
        )
        log.info(
            "%s: updated Deployment %s/%s to %s (patch %s)", cfg.name, cfg.namespace, name, version, patch_id
        )
        return patched

    def _ensure_service(self, cfg: K8sService, name: str, color: str) -> k8s.V1Service:
        """Create the Service if missing (409 from a concurrent creator -> reuse)."""
        svc = self._read_service(cfg, name)
        if svc is not None:
            return svc
        try:
            return self._api(
                f"{cfg.name}: create Service {cfg.namespace}/{name}",
                self.core.create_namespaced_service,
                cfg.namespace,
                self._service_body(cfg, name, color),
            )
        except KubernetesApiError as e:
            if e.status != 409:
                raise
            svc = self._read_service(cfg, name)
            if svc is None:
                raise
            return svc

    def wait_healthy(self, release: Release, timeout_s: float) -> None:
        """Watch the Deployment until every replica of its current generation is ready (else raise).

        List-then-watch from the list's resourceVersion (as informers do); a 410 Gone
        (history compacted) re-lists, an ended stream re-watches, the deadline decides."""
        cfg = self._service(release.service)
        name = self._release_name(cfg, release)
        ns = cfg.namespace
        what = f"{cfg.name}: Deployment {ns}/{name} ({release.color}, version {release.version})"
        deadline = time.monotonic() + timeout_s

        def relist() -> tuple[k8s.V1Deployment, str]:
            found = self._api(
                f"{what}: list",
                self.apps.list_namespaced_deployment,
                ns,
                field_selector=f"metadata.name={name}",
            )
            if not found.items:
                raise UnhealthyRelease(f"{what} does not exist; it received no traffic")
            return found.items[0], found.metadata.resource_version

        dep, rv = relist()
        ok, summary, fatal = _rollout_state(dep)
        while not ok:
            if fatal:
                raise UnhealthyRelease(
                    f"{what} failed to roll out: {fatal} ({summary}); it received no traffic"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UnhealthyRelease(
                    f"{what} not ready after {timeout_s:g}s: {summary}; it received no traffic"
                )
            w = k8s_watch.Watch()
            try:
                for event in w.stream(
                    self.apps.list_namespaced_deployment,
                    ns,
                    field_selector=f"metadata.name={name}",
                    resource_version=rv,
                    timeout_seconds=max(1, math.ceil(remaining)),  # the server ends the stream...
                    _request_timeout=(self.request_timeout_s, remaining + 0.05),  # ...or we stop reading
                ):
                    if event["type"] == "DELETED":
                        raise UnhealthyRelease(
                            f"{what} was deleted while waiting for it; it received no traffic"
                        )
                    if event["type"] not in ("ADDED", "MODIFIED"):
                        continue
                    dep = event["object"]
                    rv = dep.metadata.resource_version
                    ok, summary, fatal = _rollout_state(dep)
                    if ok or fatal or time.monotonic() >= deadline:
                        w.stop()
                        break
            except ApiException as e:
                if e.status != 410:
                    raise self._api_error(f"{what}: watch", e) from e
                dep, rv = relist()  # 410 Gone: our resourceVersion was compacted away
                ok, summary, fatal = _rollout_state(dep)
            except ReadTimeoutError:
                continue  # the deadline check at the top of the loop decides
            except Urllib3HTTPError as e:
                raise KubernetesApiError(
                    f"{what}: watch: cannot reach the Kubernetes API at {self.host}: {e}", 0
                ) from e
        log.info("%s is ready (%s)", what, summary)

    # ------------------------------------------------------------------ traffic

    def _managed_names(self, cfg: K8sService) -> dict[str, str | None]:
        """backendRef Service name -> color (None: the main Service, i.e. whatever its selector says)."""
        return {cfg.target.service: None, **{cfg.color_service(c): c for c in COLORS}}

    def _managed_rules(self, cfg: K8sService, route: Mapping[str, Any]) -> list[int]:
        names = self._managed_names(cfg)
        out = []
        for i, rule in enumerate((route.get("spec") or {}).get("rules") or []):
            for ref in rule.get("backendRefs") or []:
                if (
                    ref.get("kind", "Service") == "Service"
                    and ref.get("group", "") in ("", "core")
                    and ref.get("namespace", cfg.namespace) == cfg.namespace
                    and ref.get("name") in names
                ):
                    out.append(i)
                    break
        return out

    def _route_weights(
        self, cfg: K8sService, route: Mapping[str, Any], selector_color: str | None
    ) -> dict[str, int]:
        rules = self._managed_rules(cfg, route)
        if not rules:
            raise BackendError(
                f"{cfg.name}: HTTPRoute {cfg.namespace}/{cfg.target.httproute} has no rule routing to "
                f"{cfg.target.service} or its per-color Services"
            )
        names = self._managed_names(cfg)
        raw: dict[str, int] = {}
        for ref in route["spec"]["rules"][rules[0]].get("backendRefs") or []:
            if ref.get("name") not in names:
                continue
            color = names[ref["name"]] or selector_color
            if color:
                raw[color] = raw.get(color, 0) + int(ref.get("weight", 1))
        return _percentages(raw)

    @staticmethod
    def _selector_color(svc: k8s.V1Service | None) -> str | None:
        color = ((svc.spec.selector or {}) if svc is not None and svc.spec else {}).get("color")
        return color if color in COLORS else None

    def _traffic_from(
        self, cfg: K8sService, svc: k8s.V1Service | None, route: Mapping[str, Any] | None
    ) -> dict:
        color = self._selector_color(svc)
        if route is not None:
            return self._route_weights(cfg, route, color)
        return {color: 100} if color else {}

    def current_traffic(self, service: str) -> dict[str, int]:
        """Percent by color of the colors that receive traffic (the HTTPRoute if any, else the selector)."""
        cfg = self._service(service)
        return self._traffic_from(cfg, self._read_service(cfg, cfg.target.service), self._read_route(cfg))

    def set_traffic(self, service: str, weights: Mapping[str, int]) -> None:
        """Move traffic: the HTTPRoute weights (if configured) and the main Service selector."""
        w = validate_weights(weights)
        cfg = self._service(service)
        for color in w:
            self._check_color(service, color)
        full = next((c for c, v in w.items() if v == 100), None)
        if full is None and cfg.target.httproute is None:
            raise BackendError(
                f"{service}: weights {w} split traffic, but its kubernetes target has no httproute; "
                "only 100/0 switches are possible through a Service selector"
            )
        live = {c for c, v in w.items() if v > 0}
        for color in sorted(live):
            dep = self._read_deployment(cfg, color)
            ready = (dep.status.ready_replicas or 0) if dep is not None and dep.status else 0
            if ready < 1:
                state = "does not exist" if dep is None else _rollout_state(dep)[1]
                raise BackendError(
                    f"{service}: refusing to route {w[color]}% to {color}: Deployment "
                    f"{cfg.namespace}/{cfg.deployment_name(color)} {state}"
                )
        for color in sorted(live):
            self._ensure_service(cfg, cfg.color_service(color), color)

        svc = self._read_service(cfg, cfg.target.service)
        current_sel = self._selector_color(svc)
        if full is not None:
            target_color = full
        elif current_sel in live:
            target_color = current_sel
        else:
            target_color = max(live, key=lambda c: (w[c], c))

        routed = cfg.target.httproute is not None
        previous_refs = self._set_route_weights(cfg, w) if routed else {}
        try:
            self._set_selector(cfg, svc, {"app": cfg.target.deployment, "color": target_color})
        except BackendError:
            try:  # never leave the route and the selector disagreeing
                if routed and previous_refs is None:
                    self._delete_route(cfg, "created by a switch that failed")
                elif routed and previous_refs:
                    self._restore_route_refs(cfg, previous_refs)
            except BackendError as undo:
                log.error("%s: could not put the HTTPRoute back after a failed switch: %s", service, undo)
            raise
        log.info("%s: traffic set to %s (selector color=%s)", service, w, target_color)

    def _route_refs(
        self, cfg: K8sService, weights: Mapping[str, int], old: list[Any]
    ) -> list[dict[str, Any]]:
        """One ref per color with weight > 0; a 0 is kept only for a color the route already names (an
        aborted canary stays visible at 0 until retired, an absent color never becomes a dangling ref)."""
        names = self._managed_names(cfg)
        port = next(
            (r.get("port") for r in old if r.get("name") in names and r.get("port")), cfg.service_port
        )
        present = {r.get("name") for r in old}
        return [
            {"group": "", "kind": "Service", "name": cfg.color_service(c), "port": port, "weight": weights[c]}
            for c in sorted(weights)
            if weights[c] > 0 or cfg.color_service(c) in present
        ]

    def _update_route(
        self,
        cfg: K8sService,
        mutate: Callable[[list[Any]], bool],
        *,
        new_rules: Callable[[], list[Any]] | None = None,
    ) -> dict | None:
        """Read-modify-write of spec.rules guarded by resourceVersion; returns the route as read (before).

        A missing route is created from `new_rules()` when given (else left alone)."""
        name = cfg.target.httproute
        what = f"{cfg.name}: HTTPRoute {cfg.namespace}/{name}"
        for attempt in range(_ROUTE_RETRIES):
            route = self._read_route(cfg)
            if route is None:
                if new_rules is None:
                    return None
                if self.gateway_parent is None:
                    raise BackendError(
                        f"{what} not found: create it attached to your Gateway, "
                        "or give the backend a gateway_parent"
                    )
                rules = new_rules()
                body = {
                    "apiVersion": f"{GATEWAY_GROUP}/{GATEWAY_VERSION}",
                    "kind": "HTTPRoute",
                    "metadata": {
                        "name": name,
                        "namespace": cfg.namespace,
                        "labels": {MANAGED_BY_KEY: MANAGED_BY},
                    },
                    "spec": {"parentRefs": [self.gateway_parent], "rules": rules},
                }
                try:
                    self._api(
                        f"{what}: create",
                        self.custom.create_namespaced_custom_object,
                        GATEWAY_GROUP,
                        GATEWAY_VERSION,
                        cfg.namespace,
                        HTTPROUTES,
                        body,
                    )
                    return None
                except KubernetesApiError as e:
                    if e.status != 409 or attempt == _ROUTE_RETRIES - 1:
                        raise
                    continue  # created concurrently: modify that one
            rules = copy.deepcopy((route.get("spec") or {}).get("rules") or [])
            if not mutate(rules):
                return route
            body = {
                "metadata": {"resourceVersion": route["metadata"]["resourceVersion"]},
                "spec": {"rules": rules},
            }
            try:
                self._api(
                    f"{what}: patch",
                    self.custom.patch_namespaced_custom_object,  # sent as application/merge-patch+json
                    GATEWAY_GROUP,
                    GATEWAY_VERSION,
                    cfg.namespace,
                    HTTPROUTES,
                    name,
                    body,
                )
                return route
            except KubernetesApiError as e:
                if e.status != 409 or attempt == _ROUTE_RETRIES - 1:
                    raise
                log.info("%s: changed concurrently (409); re-reading", what)
        raise BackendError(f"{what}: still conflicting after {_ROUTE_RETRIES} attempts")  # pragma: no cover

    def _set_route_weights(self, cfg: K8sService, weights: Mapping[str, int]) -> dict[int, list[Any]] | None:
        """Returns the managed rules' previous backendRefs by rule index (None: the route was created)."""

        def mutate(rules: list[Any]) -> bool:
            idx = self._managed_rules(cfg, {"spec": {"rules": rules}})
            if not idx:
                raise BackendError(
                    f"{cfg.name}: HTTPRoute {cfg.namespace}/{cfg.target.httproute} has no rule routing to "
                    f"{cfg.target.service} or its per-color Services"
                )
            changed = False
            for i in idx:
                old = rules[i].get("backendRefs") or []
                new = self._route_refs(cfg, weights, old)
                if old != new:
                    rules[i]["backendRefs"] = new
                    changed = True
            return changed

        def new_rules() -> list[Any]:
            return [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": self._route_refs(cfg, weights, []),
                }
            ]

        before = self._update_route(cfg, mutate, new_rules=new_rules)
        if before is None:
            return None  # created by this call
        return {
            i: copy.deepcopy(before["spec"]["rules"][i].get("backendRefs") or [])
            for i in self._managed_rules(cfg, before)
        }

    def _delete_route(self, cfg: K8sService, why: str) -> None:
        self._api(
            f"{cfg.name}: delete HTTPRoute {cfg.namespace}/{cfg.target.httproute} ({why})",
            self.custom.delete_namespaced_custom_object,
            GATEWAY_GROUP,
            GATEWAY_VERSION,
            cfg.namespace,
            HTTPROUTES,
            cfg.target.httproute,
            not_found_ok=True,
        )

    def _restore_route_refs(self, cfg: K8sService, refs_by_rule: Mapping[int, list[Any]]) -> None:
        def mutate(rules: list[Any]) -> bool:
            changed = False
            for i, refs in refs_by_rule.items():
                if int(i) < len(rules) and rules[int(i)].get("backendRefs") != refs:
                    rules[int(i)]["backendRefs"] = copy.deepcopy(list(refs))
                    changed = True
            return changed

        self._update_route(cfg, mutate)

    def _set_selector(
        self, cfg: K8sService, svc: k8s.V1Service | None, selector: Mapping[str, str] | None
    ) -> None:
        """Make the main Service's selector exactly `selector` (creating the Service if missing)."""
        name = cfg.target.service
        if svc is None:
            if selector is None:
                return
            body = self._service_body(cfg, name, selector.get("color", ""))
            body["spec"]["selector"] = dict(selector)
            try:
                self._api(
                    f"{cfg.name}: create Service {cfg.namespace}/{name}",
                    self.core.create_namespaced_service,
                    cfg.namespace,
                    body,
                )
                return
            except KubernetesApiError as e:
                if e.status != 409:
                    raise
                svc = self._read_service(cfg, name)
                if svc is None:
                    raise
        current = dict(svc.spec.selector or {})
        wanted = dict(selector or {})
        if current == wanted:
            return
        # Strategic merge on a map merges keys; keys that must go are sent as null.
        patch_sel: dict[str, str | None] = {**{k: None for k in current if k not in wanted}, **wanted}
        self._api(
            f"{cfg.name}: patch Service {cfg.namespace}/{name} selector",
            self.core.patch_namespaced_service,
            name,
            cfg.namespace,
            {"spec": {"selector": patch_sel}},
        )

    # ------------------------------------------------------------------ snapshot / restore / retire

    def snapshot(self, service: str) -> TrafficSnapshot:
        """Selector, HTTPRoute backendRefs, and each color's release and replicas (JSON-serializable)."""
        cfg = self._service(service)
        svc = self._read_service(cfg, cfg.target.service)
        route = self._read_route(cfg)
        releases: dict[str, dict[str, Any]] = {}
        for color in COLORS:
            dep = self._read_deployment(cfg, color)
            if dep is not None:
                r = self._release(cfg, dep)
                releases[color] = {
                    "version": r.version,
                    "image": r.image,
                    "patch_id": r.patch_id,
                    "replicas": dep.spec.replicas if dep.spec.replicas is not None else 1,
                }
        route_refs = None
        if route is not None:
            route_refs = {
                str(i): copy.deepcopy(route["spec"]["rules"][i].get("backendRefs") or [])
                for i in self._managed_rules(cfg, route)
            }
        details = {
            "namespace": cfg.namespace,
            "selector": dict(svc.spec.selector or {}) if svc is not None else None,
            "route_refs": route_refs,
            "releases": releases,
            "replicas": {c: r["replicas"] for c, r in releases.items()},
        }
        return TrafficSnapshot(service=service, weights=self._traffic_from(cfg, svc, route), details=details)

    def _differs(self, cfg: K8sService, dep: k8s.V1Deployment, rel: Mapping[str, Any]) -> bool:
        r = self._release(cfg, dep)
        return (r.version, r.image, r.patch_id) != (rel["version"], rel["image"], rel["patch_id"])

    def restore(self, snapshot: TrafficSnapshot) -> None:
        """Put back replicas (recreating a retired live color), then the HTTPRoute refs, then the selector."""
        cfg = self._service(snapshot.service)
        d = snapshot.details
        live = {c for c, v in snapshot.weights.items() if v > 0}
        for color, rel in (d.get("releases") or {}).items():
            dep = self._read_deployment(cfg, color)
            name = cfg.deployment_name(color)
            reapplied = False
            if dep is None or (color in live and self._differs(cfg, dep, rel)):
                if color not in live:
                    continue  # an idle color that is gone stays gone
                dep = self._apply_release(
                    cfg, color, rel["version"], rel["image"], rel["patch_id"], guard_live=False
                )
                self._ensure_service(cfg, cfg.color_service(color), color)
                reapplied = True
            if (dep.spec.replicas if dep.spec.replicas is not None else 1) != rel["replicas"]:
                dep = self._api(
                    f"{cfg.name}: restore replicas of Deployment {cfg.namespace}/{name}",
                    self.apps.patch_namespaced_deployment,
                    name,
                    cfg.namespace,
                    {"spec": {"replicas": rel["replicas"]}},
                )
            ready = (dep.status.ready_replicas or 0) if dep.status else 0
            if color in live and (reapplied or ready < 1):
                self.wait_healthy(self._release(cfg, dep), self.restore_timeout_s)

        route_refs = d.get("route_refs")
        if route_refs is not None:
            self._restore_route_refs(cfg, {int(i): refs for i, refs in route_refs.items()})
        elif cfg.target.httproute is not None:
            route = self._read_route(cfg)
            if (
                route is not None
                and (route["metadata"].get("labels") or {}).get(MANAGED_BY_KEY) == MANAGED_BY
            ):
                self._delete_route(cfg, "absent before")
            elif route is not None and snapshot.weights:
                self._set_route_weights(cfg, snapshot.weights)

        svc = self._read_service(cfg, cfg.target.service)
        selector = d.get("selector")
        if selector is None and svc is not None:
            if (svc.metadata.labels or {}).get(MANAGED_BY_KEY) == MANAGED_BY:
                self._api(
                    f"{cfg.name}: delete Service {cfg.namespace}/{cfg.target.service} (absent before)",
                    self.core.delete_namespaced_service,
                    cfg.target.service,
                    cfg.namespace,
                    not_found_ok=True,
                )
        else:
            self._set_selector(cfg, svc, selector)
        log.info("%s: restored traffic to %s", snapshot.service, dict(snapshot.weights))

    def retire(self, release: Release) -> None:
        """Delete an idle color: its HTTPRoute backendRef, per-color Service and Deployment (idempotent)."""
        cfg = self._service(release.service)
        name = self._release_name(cfg, release)
        color = release.color
        svc = self._read_service(cfg, cfg.target.service)
        route = self._read_route(cfg)
        weight = self._traffic_from(cfg, svc, route).get(color, 0)
        if weight > 0 or (route is None and self._selector_color(svc) == color):
            raise BackendError(
                f"{cfg.name}: refusing to retire {color} ({release.version}): it carries {weight or 100}% of "
                "traffic; move traffic away first"
            )
        if route is not None:
            gone = cfg.color_service(color)

            def mutate(rules: list[Any]) -> bool:
                changed = False
                for i in self._managed_rules(cfg, {"spec": {"rules": rules}}):
                    refs = rules[i].get("backendRefs") or []
                    kept = [r for r in refs if r.get("name") != gone]
                    if len(kept) != len(refs) and kept:
                        rules[i]["backendRefs"] = kept
                        changed = True
                return changed

            self._update_route(cfg, mutate)
        self._api(
            f"{cfg.name}: delete Service {cfg.namespace}/{cfg.color_service(color)}",
            self.core.delete_namespaced_service,
            cfg.color_service(color),
            cfg.namespace,
            not_found_ok=True,
        )
        self._api(
            f"{cfg.name}: delete Deployment {cfg.namespace}/{name}",
            self.apps.delete_namespaced_deployment,
            name,
            cfg.namespace,
            body=k8s.V1DeleteOptions(propagation_policy="Background"),
            not_found_ok=True,
        )
        log.info("%s: retired %s (%s)", cfg.name, color, release.version)

    def releases(self, service: str) -> list[Release]:
        cfg = self._service(service)
        found = self._api(
            f"{cfg.name}: list Deployments in {cfg.namespace}",
            self.apps.list_namespaced_deployment,
            cfg.namespace,
            label_selector=f"app={cfg.target.deployment},color in ({','.join(COLORS)})",
        )
        return sorted((self._release(cfg, d) for d in found.items), key=lambda r: r.color)


def backend_from_airflow(
    catalog: Catalog | None = None, conn_id: str = "kubernetes_default", **kw: Any
) -> KubernetesBackend:
    """The production wiring: the services catalog + the Airflow connection (KubernetesHook)."""
    from selfheal.catalog import load_catalog

    return KubernetesBackend.from_catalog(
        catalog or load_catalog(), KubernetesClients.from_airflow(conn_id), **kw
    )

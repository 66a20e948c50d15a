"""K8sApiDouble: a TEST DOUBLE of the Kubernetes API server (kube-apiserver), on loopback HTTP.

It is not a cluster: there is no scheduler, kubelet, pod, ReplicaSet or
garbage collector. It stores objects and answers the REST API the way
kube-apiserver (1.33) does for the resources and verbs selfheal's Kubernetes
backend uses, so the real `kubernetes` Python client (36.x) talks to it
unchanged (`configuration()` / `kubeconfig()` point a client at it).

Implemented, as kube-apiserver does it:

- Resources: apps/v1 ``deployments``, v1 ``services``, and
  gateway.networking.k8s.io/v1 ``httproutes`` (a CRD, absent with
  ``gateway_api=False``: then its paths answer the generic 404 and discovery
  does not list the group), namespaced (every namespace exists implicitly).
- Verbs: get, list and watch (also across namespaces), create (POST),
  patch, delete. Patch types: ``application/strategic-merge-patch+json``
  (built-in types only; custom resources answer 415 as the real server does;
  list merge keys: containers/env/volumes/... by name, container ports by
  containerPort, Service ports by port, ``$patch: replace|delete``),
  ``application/merge-patch+json`` (RFC 7386) and
  ``application/json-patch+json`` (RFC 6902, applied with the jsonpatch
  library). Other types (server-side apply) answer 415.
- ``labelSelector`` (equality and set-based: ``=``, ``==``, ``!=``, ``in``,
  ``notin``, ``key``, ``!key``) and ``fieldSelector`` (``metadata.name``,
  ``metadata.namespace``) on list and watch.
- Watch (``?watch=true``): a chunked stream of newline-delimited JSON events
  (ADDED, MODIFIED, DELETED) carrying kind/apiVersion; without
  ``resourceVersion`` (or "0") it first replays the current objects as ADDED;
  with one it replays later events from a bounded history, and answers an
  ERROR event with a 410 ``Expired`` Status once that history was compacted
  (``compact()``); a label selector turns objects that stop/start matching
  into DELETED/ADDED, as the watch cache does; ``timeoutSeconds`` ends it.
- One global, monotonically increasing ``resourceVersion`` (like etcd's
  revision), bumped on every write; no-op updates bump nothing.
  ``metadata.generation`` starts at 1 and increments on spec changes
  (deployments, httproutes); ``uid``, ``creationTimestamp``; status is
  ignored on the main resource (status subresource semantics).
- Optimistic concurrency: a patch whose result carries a different
  ``metadata.resourceVersion`` -> 409 Conflict; create of an existing name ->
  409 AlreadyExists; delete preconditions (uid, resourceVersion) -> 409.
- Defaults and validation that matter to clients: Deployment replicas,
  strategy, revisionHistoryLimit, progressDeadlineSeconds; selector must match
  the template labels and is immutable (422 Invalid, with causes); Service
  type, clusterIP allocation (immutable), port protocol and targetPort;
  HTTPRoute backendRef group/kind/weight, parentRef group/kind and the
  default path match; label values are validated; names are validated.
- Errors as ``kind: Status`` objects in the real shape: 400 BadRequest, 401
  Unauthorized, 404 NotFound, 405 MethodNotAllowed, 409 AlreadyExists /
  Conflict, 415 UnsupportedMediaType, 422 Invalid.
- Bearer token auth (``Authorization: Bearer <token>``) on everything except
  ``/version`` and the health endpoints (as with anonymous public-info access).
- Discovery: ``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>``,
  ``/apis/<group>/<version>`` for the resources above (the client calls them
  through ``CustomObjectsApi.get_api_resources`` / ``ApisApi``).
- A simulated Deployment controller: after a spec change it first reports
  the new generation observed (observedGeneration, replicas, updatedReplicas,
  not yet ready), then after ``ready_after_s`` all replicas ready, each as a
  status write with its own resourceVersion and MODIFIED event.
  ``hold_unready(name)`` keeps a Deployment's pods unready forever,
  ``fail_progress(name)`` makes it report ``ProgressDeadlineExceeded``.

Not implemented (a client relying on them must be tested on a real cluster):
PUT/replace, deletecollection, subresources (status, scale), server-side
apply, dryRun (refused with 400 so a test cannot believe it ran), paging
(``limit``/``continue`` are ignored: lists are complete), resourceVersion
semantics on get/list (always the latest), bookmarks, managedFields, pods,
ReplicaSets, Endpoints, namespaces as objects, admission, RBAC (one token,
all rights), protobuf/CBOR/YAML encodings, HTTP/2, TLS.

Test knobs: ``race_create()`` (a concurrent writer creates the object just
before the next create of that name arrives), ``annotate()`` (a concurrent
writer changes an object), ``on_request`` (a callback before each request is
handled), ``hold_unready()`` / ``release_hold()`` / ``fail_progress()``, ``fail_next()``
(one injected error Status),
``compact()``, ``token`` (change it to revoke the client's credentials),
``requests`` (every request: method, path, query, content type),
``objects()`` / ``get()`` (the stored state, bypassing HTTP).
"""

from __future__ import annotations

import copy
import json
import re
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jsonpatch

K8S_VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0-selfheal-double",
    "platform": "linux/amd64",
}
GATEWAY_GROUP = "gateway.networking.k8s.io"
SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSONPATCH = "application/json-patch+json"
_UNKNOWN_FORMAT = "the body of the request was in an unknown format - accepted media types include: "


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    singular: str
    short_names: tuple[str, ...]
    builtin: bool  # strategic merge patch allowed; list items carry no kind/apiVersion
    has_generation: bool
    status_subresource: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """The name used in messages and details: ``deployments.apps``, ``services``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


VERBS = ["create", "delete", "get", "list", "patch", "watch"]
DEPLOYMENTS = ResourceType(
    "apps", "v1", "deployments", "Deployment", "deployment", ("deploy",), True, True, True
)
SERVICES = ResourceType("", "v1", "services", "Service", "service", ("svc",), True, False, True)
HTTPROUTES = ResourceType(GATEWAY_GROUP, "v1", "httproutes", "HTTPRoute", "httproute", (), False, True, True)

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_CORE_PATH = re.compile(
    r"^/api/(?P<version>v1)/(?:namespaces/(?P<ns>[^/]+)/)?(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$"
)
_GROUP_PATH = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/(?:namespaces/(?P<ns>[^/]+)/)?(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$"
)
# Strategic merge patch list merge keys (from the Go struct tags `patchMergeKey`) for the fields we meet.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
}


class ApiError(Exception):
    """Ends a request with a Status object."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details


def status_object(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        out["details"] = details
    return out


def _not_found_generic() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------- selectors


@dataclass(frozen=True)
class _Req:
    key: str
    op: str  # = != in notin exists !exists
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        has = self.key in labels
        v = labels.get(self.key)
        return {
            "=": has and v in self.values,
            "!=": not has or v not in self.values,
            "in": has and v in self.values,
            "notin": not has or v not in self.values,
            "exists": has,
            "!exists": not has,
        }[self.op]


def parse_label_selector(text: str) -> list[_Req]:
    """Kubernetes label selector syntax (k8s.io/apimachinery/pkg/labels); raises ApiError 400 if invalid."""
    reqs: list[_Req] = []
    parts: list[str] = []
    depth, cur = 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    for raw in (p.strip() for p in parts):
        if not raw:
            continue
        m = re.fullmatch(r"(\S+)\s+(in|notin)\s*\(([^)]*)\)", raw)
        if m:
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append(_Req(m.group(1), m.group(2), values))
        elif m := re.fullmatch(r"([^=!\s]+)\s*(==|=|!=)\s*([^=!\s]*)", raw):
            op = "!=" if m.group(2) == "!=" else "="
            reqs.append(_Req(m.group(1), op, frozenset([m.group(3)])))
        elif m := re.fullmatch(r"!\s*(\S+)", raw):
            reqs.append(_Req(m.group(1), "!exists"))
        elif re.fullmatch(r"[^=!\s(),]+", raw):
            reqs.append(_Req(raw, "exists"))
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {raw!r}")
        if not _LABEL_NAME.match(reqs[-1].key):
            raise ApiError(
                400, "BadRequest", f"unable to parse requirement: invalid label key {reqs[-1].key!r}"
            )
    return reqs


def parse_field_selector(text: str) -> list[tuple[str, bool, str]]:
    out = []
    for raw in (p.strip() for p in text.split(",")):
        if not raw:
            continue
        m = re.fullmatch(r"([^=!]+)(==|=|!=)(.*)", raw)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid selector: {raw!r}")
        key = m.group(1).strip()
        if key not in ("metadata.name", "metadata.namespace"):
            raise ApiError(400, "BadRequest", f'field label not supported: "{key}"')
        out.append((key, m.group(2) != "!=", m.group(3).strip()))
    return out


def _selected(obj: dict[str, Any], labels: list[_Req], fields: list[tuple[str, bool, str]]) -> bool:
    meta = obj.get("metadata") or {}
    lab = meta.get("labels") or {}
    if not all(r.matches(lab) for r in labels):
        return False
    for key, eq, value in fields:
        actual = meta.get(key.split(".", 1)[1], "")
        if (actual == value) != eq:
            return False
    return True


# ---------------------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _list_merge_key(path: tuple[str, ...], key: str) -> str | None:
    if key == "ports":
        if any(p in ("containers", "initContainers", "ephemeralContainers") for p in path):
            return "containerPort"
        return "port" if path[:1] == ("spec",) else None
    return _MERGE_KEYS.get(key)


def strategic_merge(orig: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """Strategic merge patch for the fields listed in the module docstring (maps merge, keyed lists merge)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    out = dict(orig) if isinstance(orig, dict) else {}
    for k, v in patch.items():
        if k.startswith("$setElementOrder/"):
            continue  # ordering hint only
        if k.startswith("$"):
            raise ApiError(
                422, "Invalid", f"strategic merge directive {k!r} is not implemented by this test double"
            )
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict):
            merged = strategic_merge(out.get(k), v, (*path, k))
            out[k] = merged
        elif isinstance(v, list) and (mk := _list_merge_key(path, k)) is not None:
            out[k] = _merge_list(out.get(k) or [], v, mk, (*path, k))
        else:
            out[k] = copy.deepcopy(v)
    return out


def _merge_list(orig: list[Any], patch: list[Any], key: str, path: tuple[str, ...]) -> list[Any]:
    out = copy.deepcopy(orig)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            out.append(copy.deepcopy(item))
            continue
        idx = next((i for i, o in enumerate(out) if isinstance(o, dict) and o.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
        elif idx is None:
            out.append(strategic_merge({}, item, path))
        else:
            out[idx] = strategic_merge(out[idx], item, path)
    return out


# ---------------------------------------------------------------------------- the server


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    content_type: str | None


@dataclass
class _Event:
    rv: int
    qualified: str
    namespace: str
    type: str
    obj: dict[str, Any]
    prev: dict[str, Any] | None = None


@dataclass
class _Pending:
    generation: int
    observe_at: float
    ready_at: float
    observed: bool = False


@dataclass
class K8sApiDouble:
    """A kube-apiserver double on 127.0.0.1:<port>; see the module docstring for what it implements."""

    token: str = "selfheal-test-token"
    ready_after_s: float = 0.2
    gateway_api: bool = True
    history_limit: int = 1000
    port: int = 0
    requests: list[RequestRecord] = field(default_factory=list)
    # Called (in the server thread) with each request before it is handled: to inject a concurrent change.
    on_request: Callable[[RequestRecord], None] | None = None

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._events: list[_Event] = []
        self._compacted_rv = 0  # events with rv <= this are gone
        self._rv = 1
        self._next_ip = 10
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._held: set[tuple[str, str]] = set()
        self._failing: set[tuple[str, str]] = set()
        self._races: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._stopping = threading.Event()
        self._paused = False
        self._failures: list[tuple[str, str, int, str]] = []
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self.types = {
            t.qualified: t
            for t in (DEPLOYMENTS, SERVICES, HTTPROUTES)
            if t is not HTTPROUTES or self.gateway_api
        }

    # -------------------------------------------------------------- lifecycle

    def start(self) -> K8sApiDouble:
        double = self

        class Handler(_Handler):
            pass

        Handler.double = double
        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._stopping.clear()
        for target, args, name in (
            (server.serve_forever, (0.05,), "http"),
            (self._controller, (), "controller"),
        ):
            t = threading.Thread(target=target, args=args, name=f"k8s-double-{name}-{self.port}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()

    def __enter__(self) -> K8sApiDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def configuration(self, token: str | None = None) -> Any:
        """A kubernetes.client.Configuration for this server (bearer token auth)."""
        from kubernetes import client

        cfg = client.Configuration(
            host=self.url,
            # kubernetes 36 reads the token under "BearerToken"; the prefix is looked up under that key only
            # (a legacy "authorization" key would be sent without "Bearer ").
            api_key={"BearerToken": token if token is not None else self.token},
            api_key_prefix={"BearerToken": "Bearer"},
        )
        return cfg

    def kubeconfig(self, token: str | None = None, namespace: str = "default") -> dict[str, Any]:
        """A kubeconfig (as a dict) with one context pointing at this server."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "users": [{"name": "selfheal", "user": {"token": token if token is not None else self.token}}],
            "contexts": [
                {
                    "name": "double",
                    "context": {"cluster": "double", "user": "selfheal", "namespace": namespace},
                }
            ],
            "current-context": "double",
        }

    # -------------------------------------------------------------- test knobs

    def hold_unready(self, name: str, namespace: str = "default") -> None:
        with self._cond:
            self._held.add((namespace, name))

    def release_hold(self, name: str, namespace: str = "default") -> None:
        """Let a held Deployment's pods become ready (after ``ready_after_s``)."""
        with self._cond:
            self._held.discard((namespace, name))
            obj = self._objects.get((DEPLOYMENTS.qualified, namespace, name))
            if obj is not None:
                self._schedule(namespace, name, obj["metadata"]["generation"])

    def annotate(self, plural: str, namespace: str, name: str, key: str, value: str) -> None:
        """A concurrent writer changes the object (new resourceVersion), as `kubectl annotate` would."""
        rt = self._type(plural)
        with self._cond:
            cur = self._read(rt, namespace, name)
            new = merge_patch(cur, {"metadata": {"annotations": {key: value}, "resourceVersion": None}})
            self._update_locked(rt, namespace, cur, new)

    def fail_next(self, method: str, path: str, code: int = 500, reason: str = "InternalError") -> None:
        """The next request with this method and URL path answers this Status error (one shot)."""
        with self._cond:
            self._failures.append((method, path, code, reason))

    def fail_progress(self, name: str, namespace: str = "default") -> None:
        with self._cond:
            self._failing.add((namespace, name))

    def race_create(self, plural: str, namespace: str, body: dict[str, Any]) -> None:
        """The next create of body's name is preceded by this object appearing (another writer won)."""
        with self._cond:
            self._races[(plural, namespace, body["metadata"]["name"])] = copy.deepcopy(body)

    def compact(self) -> None:
        """Forget the event history (like an etcd compaction after other writes in the cluster): a watch
        from any resourceVersion seen so far gets 410 Gone; a fresh list gives a usable one."""
        with self._cond:
            self._events.clear()
            self._rv += 1
            self._compacted_rv = self._rv

    def pause_controller(self) -> None:
        """Freeze Deployment status (a controller that has not yet observed new generations)."""
        with self._cond:
            self._paused = True

    def resume_controller(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._cond:
            obj = self._objects.get((self._type(plural).qualified, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def objects(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        q = self._type(plural).qualified
        with self._cond:
            return [
                copy.deepcopy(o)
                for (t, ns, _), o in sorted(self._objects.items())
                if t == q and (namespace is None or ns == namespace)
            ]

    def clear_requests(self) -> None:
        with self._cond:
            self.requests.clear()

    def writes(self) -> list[RequestRecord]:
        """Requests that could change state (POST, PATCH, PUT, DELETE)."""
        with self._cond:
            return [r for r in self.requests if r.method not in ("GET", "HEAD")]

    def _type(self, plural: str) -> ResourceType:
        for t in self.types.values():
            if plural in (t.plural, t.qualified):
                return t
        raise KeyError(plural)

    # -------------------------------------------------------------- store (caller holds the lock)

    def _bump(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _record(self, rt: ResourceType, ns: str, type_: str, obj: dict[str, Any], prev: dict | None) -> None:
        self._events.append(_Event(self._rv, rt.qualified, ns, type_, copy.deepcopy(obj), prev))
        if len(self._events) > self.history_limit:
            drop = len(self._events) - self.history_limit
            self._compacted_rv = self._events[drop - 1].rv
            del self._events[:drop]
        self._cond.notify_all()

    def _with_kind(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        return {
            "kind": rt.kind,
            "apiVersion": rt.api_version,
            **{k: v for k, v in obj.items() if k not in ("kind", "apiVersion")},
        }

    # -------------------------------------------------------------- defaults and validation

    def _defaults(self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        spec = obj.setdefault("spec", {})
        if rt is DEPLOYMENTS:
            spec.setdefault("replicas", 1)
            spec.setdefault(
                "strategy",
                {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
            )
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
            pod = spec.setdefault("template", {}).setdefault("spec", {})
            pod.setdefault("restartPolicy", "Always")
            pod.setdefault("terminationGracePeriodSeconds", 30)
            pod.setdefault("dnsPolicy", "ClusterFirst")
            pod.setdefault("schedulerName", "default-scheduler")
            for c in pod.get("containers") or []:
                if isinstance(c, dict):
                    image = str(c.get("image", ""))
                    tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
                    c.setdefault(
                        "imagePullPolicy",
                        "IfNotPresent" if tagged and not image.endswith(":latest") else "Always",
                    )
                    c.setdefault("terminationMessagePath", "/dev/termination-log")
                    c.setdefault("terminationMessagePolicy", "File")
                    for p in c.get("ports") or []:
                        p.setdefault("protocol", "TCP")
                    probe = c.get("readinessProbe")
                    if isinstance(probe, dict):
                        for k, v in (
                            ("timeoutSeconds", 1),
                            ("periodSeconds", 10),
                            ("successThreshold", 1),
                            ("failureThreshold", 3),
                        ):
                            probe.setdefault(k, v)
                        if isinstance(probe.get("httpGet"), dict):
                            probe["httpGet"].setdefault("scheme", "HTTP")
        elif rt is SERVICES:
            spec.setdefault("type", "ClusterIP")
            spec.setdefault("sessionAffinity", "None")
            spec.setdefault("internalTrafficPolicy", "Cluster")
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            if old is not None and "clusterIP" not in spec:
                spec["clusterIP"] = old["spec"]["clusterIP"]
            if "clusterIP" not in spec:
                spec["clusterIP"] = f"10.96.{self._next_ip // 250}.{self._next_ip % 250}"
                self._next_ip += 1
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
            for p in spec.get("ports") or []:
                if isinstance(p, dict):
                    p.setdefault("protocol", "TCP")
                    p.setdefault("targetPort", p.get("port"))
        elif rt is HTTPROUTES:
            for ref in spec.get("parentRefs") or []:
                ref.setdefault("group", GATEWAY_GROUP)
                ref.setdefault("kind", "Gateway")
            spec.setdefault("rules", [{}])
            for rule in spec["rules"]:
                rule.setdefault("matches", [{"path": {"type": "PathPrefix", "value": "/"}}])
                for ref in rule.get("backendRefs") or []:
                    ref.setdefault("group", "")
                    ref.setdefault("kind", "Service")
                    ref.setdefault("weight", 1)

    def _validate(self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        name = obj["metadata"]["name"]
        causes: list[dict[str, str]] = []

        def bad(field_: str, message: str, reason: str = "FieldValueInvalid") -> None:
            causes.append({"reason": reason, "message": message, "field": field_})

        pattern = _DNS1035_LABEL if rt is SERVICES else _DNS1123_SUBDOMAIN
        if not pattern.match(name) or len(name) > (63 if rt is SERVICES else 253):
            bad("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123/1035 name')
        for k, v in ((obj["metadata"].get("labels")) or {}).items():
            if (
                not _LABEL_NAME.match(str(k))
                or not isinstance(v, str)
                or not _LABEL_VALUE.match(v)
                or len(v) > 63
            ):
                bad(
                    "metadata.labels",
                    f'Invalid value: "{v}": a valid label must be an empty string or consist of '
                    "alphanumeric characters, '-', '_' or '.'",
                )
        spec = obj.get("spec") or {}
        if rt is DEPLOYMENTS:
            sel = (spec.get("selector") or {}).get("matchLabels")
            tmpl_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
            if not sel:
                bad("spec.selector", "Required value", "FieldValueRequired")
            elif any(tmpl_labels.get(k) != v for k, v in sel.items()):
                bad(
                    "spec.template.metadata.labels",
                    f"Invalid value: {tmpl_labels}: `selector` does not match template `labels`",
                )
            if old is not None and sel != (old["spec"].get("selector") or {}).get("matchLabels"):
                bad("spec.selector", f"Invalid value: {spec.get('selector')}: field is immutable")
            containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
            if not containers:
                bad("spec.template.spec.containers", "Required value", "FieldValueRequired")
            for i, c in enumerate(containers):
                if not isinstance(c, dict) or not c.get("name"):
                    bad(f"spec.template.spec.containers[{i}].name", "Required value", "FieldValueRequired")
                elif not c.get("image"):
                    bad(f"spec.template.spec.containers[{i}].image", "Required value", "FieldValueRequired")
            if not isinstance(spec.get("replicas"), int) or spec["replicas"] < 0:
                bad(
                    "spec.replicas",
                    f"Invalid value: {spec.get('replicas')}: must be greater than or equal to 0",
                )
        elif rt is SERVICES:
            if spec.get("type") == "ClusterIP" and spec.get("clusterIP") != "None" and not spec.get("ports"):
                bad("spec.ports", "Required value", "FieldValueRequired")
            if old is not None and spec.get("clusterIP") != old["spec"].get("clusterIP"):
                bad("spec.clusterIP", "Invalid value: field is immutable")
        elif rt is HTTPROUTES:
            for i, rule in enumerate(spec.get("rules") or []):
                for j, ref in enumerate(rule.get("backendRefs") or []):
                    w = ref.get("weight")
                    if not isinstance(w, int) or not 0 <= w <= 1_000_000:
                        bad(
                            f"spec.rules[{i}].backendRefs[{j}].weight",
                            f"Invalid value: {w}: must be 0..1000000",
                        )
                    if ref.get("kind") == "Service" and ref.get("group") == "" and "port" not in ref:
                        bad(f"spec.rules[{i}].backendRefs[{j}]", "Must have port for Service reference")
        if causes:
            group_kind = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
            listed = [f"{c['field']}: {c['message']}" for c in causes]
            what = listed[0] if len(listed) == 1 else "[" + ", ".join(listed) + "]"
            raise ApiError(
                422,
                "Invalid",
                f'{group_kind} "{name}" is invalid: {what}',
                {"name": name, "group": rt.group, "kind": rt.kind, "causes": causes},
            )

    # -------------------------------------------------------------- verbs

    def _create(self, rt: ResourceType, ns: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request was not a JSON object")
        if body.get("kind") not in (None, rt.kind) or body.get("apiVersion") not in (None, rt.api_version):
            raise ApiError(
                400,
                "BadRequest",
                f"the API version in the data ({body.get('apiVersion')}) does not match the expected "
                f"API version ({rt.api_version})",
            )
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        name = meta.get("name")
        if not name:
            raise ApiError(
                422,
                "Invalid",
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                "name or generateName is required",
                {
                    "kind": rt.kind,
                    "causes": [
                        {
                            "reason": "FieldValueRequired",
                            "message": "Required value: name or generateName is required",
                            "field": "metadata.name",
                        }
                    ],
                },
            )
        if meta.get("namespace") not in (None, ns):
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        with self._cond:
            key = (rt.qualified, ns, name)
            raced = self._races.pop((rt.plural, ns, name), None)
            if raced is not None and key not in self._objects:
                self._create_locked(rt, ns, raced)
            if key in self._objects:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{rt.qualified} "{name}" already exists',
                    {"name": name, "group": rt.group, "kind": rt.plural},
                )
            return self._create_locked(rt, ns, obj)

    def _create_locked(self, rt: ResourceType, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        for k in (
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
            "deletionTimestamp",
        ):
            meta.pop(k, None)
        meta["namespace"] = ns
        if rt.status_subresource:
            obj["status"] = {}
        self._defaults(rt, obj, None)
        self._validate(rt, obj, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        if rt.has_generation:
            meta["generation"] = 1
        meta["resourceVersion"] = self._bump()
        obj = self._with_kind(rt, obj)
        self._objects[(rt.qualified, ns, meta["name"])] = obj
        self._record(rt, ns, "ADDED", obj, None)
        if rt is DEPLOYMENTS:
            self._schedule(ns, meta["name"], 1)
        return copy.deepcopy(obj)

    def _read(self, rt: ResourceType, ns: str, name: str) -> dict[str, Any]:
        obj = self._objects.get((rt.qualified, ns, name))
        if obj is None:
            raise ApiError(
                404,
                "NotFound",
                f'{rt.qualified} "{name}" not found',
                {"name": name, "group": rt.group, "kind": rt.plural},
            )
        return obj

    def _patch(self, rt: ResourceType, ns: str, name: str, content_type: str, body: Any) -> dict[str, Any]:
        with self._cond:
            cur = self._read(rt, ns, name)
            if content_type == SMP:
                if not rt.builtin:
                    raise ApiError(
                        415,
                        "UnsupportedMediaType",
                        f"{_UNKNOWN_FORMAT}{JSONPATCH}, {MERGE}, application/apply-patch+yaml",
                    )
                new = strategic_merge(cur, body)
            elif content_type == MERGE:
                new = merge_patch(cur, body)
            elif content_type == JSONPATCH:
                try:
                    new = jsonpatch.apply_patch(cur, body)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as e:
                    raise ApiError(
                        422, "Invalid", f"the server rejected our request due to an error in our request: {e}"
                    ) from e
            else:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"{_UNKNOWN_FORMAT}{JSONPATCH}, {MERGE}, {SMP} "
                    "(server-side apply is not implemented by this test double)",
                )
            return self._update_locked(rt, ns, cur, new)

    def _update_locked(self, rt: ResourceType, ns: str, cur: dict[str, Any], new: Any) -> dict[str, Any]:
        if not isinstance(new, dict):
            raise ApiError(400, "BadRequest", "the patched object is not a JSON object")
        name = cur["metadata"]["name"]
        meta = new.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        want_rv = meta.get("resourceVersion")
        if want_rv and want_rv != cur["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {rt.qualified} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                {"name": name, "group": rt.group, "kind": rt.plural},
            )
        if meta.get("name", name) != name or meta.get("namespace", ns) != ns:
            raise ApiError(
                400,
                "BadRequest",
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})",
            )
        for k in ("name", "namespace", "uid", "creationTimestamp", "generation", "resourceVersion"):
            if k in cur["metadata"]:
                meta[k] = cur["metadata"][k]
        if rt.status_subresource:
            new["status"] = copy.deepcopy(cur.get("status", {}))
        new = self._with_kind(rt, new)
        self._defaults(rt, new, cur)
        self._validate(rt, new, cur)
        if new == cur:
            return copy.deepcopy(cur)  # a no-op write changes no resourceVersion
        spec_changed = {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
            k: v for k, v in cur.items() if k not in ("metadata", "status")
        }
        if rt.has_generation and spec_changed:
            meta["generation"] = int(cur["metadata"].get("generation", 1)) + 1
        meta["resourceVersion"] = self._bump()
        self._objects[(rt.qualified, ns, name)] = new
        self._record(rt, ns, "MODIFIED", new, copy.deepcopy(cur))
        if rt is DEPLOYMENTS and spec_changed:
            self._schedule(ns, name, meta["generation"])
        return copy.deepcopy(new)

    def _delete(self, rt: ResourceType, ns: str, name: str, body: Any) -> dict[str, Any]:
        with self._cond:
            cur = self._read(rt, ns, name)
            pre = (body or {}).get("preconditions") or {} if isinstance(body, dict) else {}
            for field_, actual in (
                ("uid", cur["metadata"]["uid"]),
                ("resourceVersion", cur["metadata"]["resourceVersion"]),
            ):
                if pre.get(field_) and pre[field_] != actual:
                    raise ApiError(
                        409,
                        "Conflict",
                        f"Precondition failed: {field_} in precondition: {pre[field_]}, "
                        f"{field_} in object meta: {actual}",
                        {"name": name, "group": rt.group, "kind": rt.plural},
                    )
            del self._objects[(rt.qualified, ns, name)]
            gone = copy.deepcopy(cur)
            gone["metadata"]["resourceVersion"] = self._bump()
            self._record(rt, ns, "DELETED", gone, None)
            self._pending.pop((ns, name), None)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "group": rt.group, "kind": rt.plural, "uid": cur["metadata"]["uid"]},
        }

    def _list(self, rt: ResourceType, ns: str | None, query: dict[str, str]) -> dict[str, Any]:
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""))
        with self._cond:
            items = [
                copy.deepcopy(o)
                for (t, ons, _), o in sorted(self._objects.items())
                if t == rt.qualified and (ns is None or ons == ns) and _selected(o, labels, fields)
            ]
            rv = str(self._rv)
        if rt.builtin:
            for o in items:
                o.pop("kind", None)
                o.pop("apiVersion", None)
        return {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": rv},
            "items": items,
        }

    def _watch_events(
        self, rt: ResourceType, ns: str | None, query: dict[str, str]
    ) -> Iterator[dict[str, Any] | None]:
        """Yields events to send, or None as a heartbeat (lets the caller notice a closed client)."""
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""))
        try:
            timeout = float(query.get("timeoutSeconds", "1800"))
        except ValueError:
            raise ApiError(400, "BadRequest", "timeoutSeconds must be a number") from None
        deadline = time.monotonic() + timeout
        rv_param = query.get("resourceVersion", "")

        def sel(o: dict[str, Any] | None) -> bool:
            return o is not None and _selected(o, labels, fields)

        with self._cond:
            if rv_param in ("", "0"):
                initial = [
                    {"type": "ADDED", "object": copy.deepcopy(o)}
                    for (t, ons, _), o in sorted(self._objects.items())
                    if t == rt.qualified and (ns is None or ons == ns) and sel(o)
                ]
                cursor = self._rv
            else:
                try:
                    cursor = int(rv_param)
                except ValueError:
                    raise ApiError(400, "BadRequest", f"invalid resource version: {rv_param!r}") from None
                initial = []
                if cursor < self._compacted_rv:
                    yield {
                        "type": "ERROR",
                        "object": status_object(
                            410, "Expired", f"too old resource version: {cursor} ({self._compacted_rv})"
                        ),
                    }
                    return
        yield from initial
        while not self._stopping.is_set() and time.monotonic() < deadline:
            with self._cond:
                batch = [e for e in self._events if e.rv > cursor]
                if not batch:
                    self._cond.wait(timeout=min(0.25, max(0.0, deadline - time.monotonic())))
                    batch = [e for e in self._events if e.rv > cursor]
            if not batch:
                yield None
                continue
            for e in batch:
                cursor = e.rv
                if e.qualified != rt.qualified or (ns is not None and e.namespace != ns):
                    continue
                now, before = sel(e.obj), sel(e.prev)
                if e.type == "MODIFIED":
                    kind = "MODIFIED" if now and before else "ADDED" if now else "DELETED" if before else None
                else:
                    kind = e.type if now else None
                if kind:
                    yield {"type": kind, "object": copy.deepcopy(e.obj)}

    # -------------------------------------------------------------- the simulated Deployment controller

    def _schedule(self, ns: str, name: str, generation: int) -> None:
        now = time.monotonic()
        self._pending[(ns, name)] = _Pending(
            generation, now + min(0.05, self.ready_after_s / 4), now + self.ready_after_s
        )
        self._cond.notify_all()

    def _controller(self) -> None:
        while not self._stopping.is_set():
            with self._cond:
                now = time.monotonic()
                for key, p in list(self._pending.items()) if not self._paused else ():
                    obj = self._objects.get((DEPLOYMENTS.qualified, *key))
                    if obj is None or obj["metadata"].get("generation") != p.generation:
                        self._pending.pop(key, None)
                        continue
                    if not p.observed and now >= p.observe_at:
                        self._write_status(obj, ready=None)
                        p.observed = True
                    if now >= p.ready_at:
                        if key in self._failing:
                            self._write_status(obj, ready=None, failed=True)
                            self._pending.pop(key, None)
                        elif key not in self._held:
                            self._write_status(obj, ready=obj["spec"].get("replicas", 1))
                            self._pending.pop(key, None)
                waits = [
                    min(p.observe_at if not p.observed else p.ready_at, p.ready_at) - now
                    for p in self._pending.values()
                ]
                if self._paused:
                    waits = []
                self._cond.wait(timeout=max(0.01, min([0.25, *waits])))

    def _write_status(self, obj: dict[str, Any], ready: int | None, failed: bool = False) -> None:
        """Status as the deployment controller writes it (zero counts omitted, as with omitempty)."""
        want = int(obj["spec"].get("replicas", 1))
        prev = obj.get("status") or {}
        if ready is None:  # new generation observed: the old ready pods count, new ones are not ready yet
            ready = min(int(prev.get("readyReplicas", 0)), want) if prev.get("observedGeneration") else 0
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in self._held:
            ready = 0
        max_unavailable = want // 4
        available = ready >= want - max_unavailable
        now = _now()
        progressing = (
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": f'ReplicaSet "{obj["metadata"]["name"]}-5d8f7c9b4" has timed out progressing.',
            }
            if failed
            else {
                "type": "Progressing",
                "status": "True",
                "reason": "NewReplicaSetAvailable" if ready == want else "ReplicaSetUpdated",
                "message": f'ReplicaSet "{obj["metadata"]["name"]}-5d8f7c9b4" is progressing.',
            }
        )
        status = {
            "observedGeneration": obj["metadata"]["generation"],
            "replicas": want,
            "updatedReplicas": want,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": want - ready,
            "conditions": [
                {
                    "type": "Available",
                    "status": "True" if available else "False",
                    "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                    "lastUpdateTime": now,
                    "lastTransitionTime": now,
                    "message": "Deployment has minimum availability."
                    if available
                    else "Deployment does not have minimum availability.",
                },
                {**progressing, "lastUpdateTime": now, "lastTransitionTime": now},
            ],
        }
        status = {k: v for k, v in status.items() if v not in (0, None) or k == "observedGeneration"}
        if status == prev:
            return
        prev_obj = copy.deepcopy(obj)
        obj["status"] = status
        obj["metadata"]["resourceVersion"] = self._bump()
        self._record(DEPLOYMENTS, obj["metadata"]["namespace"], "MODIFIED", obj, prev_obj)

    # -------------------------------------------------------------- HTTP

    def discovery(self, path: str) -> dict[str, Any] | None:
        def resources(group: str, version: str) -> list[dict[str, Any]]:
            return [
                {
                    "name": t.plural,
                    "singularName": t.singular,
                    "namespaced": True,
                    "kind": t.kind,
                    "verbs": VERBS,
                    **({"shortNames": list(t.short_names)} if t.short_names else {}),
                }
                for t in self.types.values()
                if (t.group, t.version) == (group, version)
            ]

        groups = sorted({t.group for t in self.types.values() if t.group})
        if path == "/api":
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}
                ],
            }
        if path == "/api/v1":
            return {"kind": "APIResourceList", "groupVersion": "v1", "resources": resources("", "v1")}
        if path == "/apis":
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [self._group_doc(g) for g in groups],
            }
        m = re.fullmatch(r"/apis/([^/]+)(?:/([^/]+))?", path)
        if m and m.group(1) in groups:
            if m.group(2) is None:
                return {"kind": "APIGroup", "apiVersion": "v1", **self._group_doc(m.group(1))}
            if m.group(2) == "v1":
                return {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": f"{m.group(1)}/v1",
                    "resources": resources(m.group(1), "v1"),
                }
        return None

    @staticmethod
    def _group_doc(group: str) -> dict[str, Any]:
        gv = {"groupVersion": f"{group}/v1", "version": "v1"}
        return {"name": group, "versions": [gv], "preferredVersion": gv}

    def resolve(self, path: str) -> tuple[ResourceType, str | None, str | None, str | None] | None:
        m = _CORE_PATH.match(path) or _GROUP_PATH.match(path)
        if not m:
            return None
        d = m.groupdict()
        group = d.get("group") or ""
        for t in self.types.values():
            if (t.group, t.version, t.plural) == (group, d["version"], d["plural"]):
                return t, d["ns"], d["name"], d["sub"]
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid the 40 ms delayed-ACK stall
    double: K8sApiDouble
    server_version = "kube-apiserver-double"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read `requests` instead
        return

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def _send(self, code: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        d = self.double
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"  # the client asks for "/version/", "/apis/", "/api/v1/"
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() or None
        record = RequestRecord(method, url.path, query, ctype)
        with d._cond:
            d.requests.append(record)
        if d.on_request is not None:
            d.on_request(record)
        with d._cond:
            injected = next((f for f in d._failures if f[:2] == (method, url.path)), None)
            if injected is not None:
                d._failures.remove(injected)
        if injected is not None:
            code, reason = injected[2], injected[3]
            self._send(code, status_object(code, reason, f"injected by the test double: {reason}", {}))
            return
        try:
            if path in ("/healthz", "/livez", "/readyz"):
                data = b"ok"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(data)
                return
            if path == "/version":
                self._send(
                    200,
                    {
                        **K8S_VERSION,
                        "goVersion": "go1.24.0",
                        "compiler": "gc",
                        "buildDate": "2025-04-23T00:00:00Z",
                        "gitTreeState": "clean",
                        "gitCommit": "0" * 40,
                    },
                )
                return
            if self.headers.get("Authorization") != f"Bearer {d.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            if method == "GET" and (doc := d.discovery(path)) is not None:
                self._send(200, doc)
                return
            target = d.resolve(path)
            if target is None:
                raise _not_found_generic()
            rt, ns, name, sub = target
            if sub is not None:
                raise _not_found_generic()  # subresources are not implemented
            if "dryRun" in query:
                raise ApiError(400, "BadRequest", "dryRun is not implemented by this test double")
            body = None
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise ApiError(
                        400, "BadRequest", "the body of the request could not be decoded as JSON"
                    ) from None
            if method == "GET" and name:
                with d._cond:
                    self._send(200, copy.deepcopy(d._read(rt, ns or "", name)))
            elif method == "GET" and query.get("watch", "").lower() in ("true", "1"):
                self._stream(d._watch_events(rt, ns, query))
            elif method == "GET":
                self._send(200, d._list(rt, ns, query))
            elif method == "POST" and not name and ns:
                self._send(201, d._create(rt, ns, body))
            elif method == "PATCH" and name and ns:
                self._send(200, d._patch(rt, ns, name, ctype or "", body))
            elif method == "DELETE" and name and ns:
                self._send(200, d._delete(rt, ns, name, body))
            else:
                raise ApiError(
                    405,
                    "MethodNotAllowed",
                    f"{method} on {url.path} is not implemented by this test double",
                    {},
                )
        except ApiError as e:
            self._send(e.code, status_object(e.code, e.reason, e.message, e.details))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _stream(self, events: Iterator[dict[str, Any] | None]) -> None:
        # Advance once before the headers: a bad selector or parameter still gets a Status response.
        head: list[dict[str, Any] | None] = []
        for ev in events:
            head.append(ev)
            break
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        try:
            for ev in _chain(head, events):
                if ev is None:
                    if self._client_gone():
                        self.close_connection = True
                        return
                    continue
                line = json.dumps(ev).encode() + b"\n"
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True


def _chain(first: list[Any], rest: Iterator[Any]) -> Iterator[Any]:
    yield from first
    yield from rest

"""ZapHook: drive an OWASP ZAP daemon through its JSON API with the official ``zaproxy`` client.

Connection ``zap_default`` (conn_type ``zap``): host, port (default 8080) and schema
(``http`` or ``https``, default ``http``; a host written as ``https://zap.internal`` works
too) address ZAP's API/proxy port; the password is the API key (leave it empty only
if ZAP runs with ``api.disablekey=true``). Extras: ``timeout`` (seconds per API call,
default 30), ``verify`` (bool or CA bundle path, for an https API), ``max_response_mb``
(default 64).

How the client talks to ZAP (zapv2 0.6.0 source): every call is a GET of
``http://zap/JSON/<component>/<view|action>/<name>/`` sent *through ZAP as an HTTP
proxy* (``proxies={"http": <api url>}``), with the key in the ``X-ZAP-API-Key``
header, never in the URL. We keep that wire format and subclass the client only to
add what it lacks: a timeout on every call, a bound on response size, no proxies or
netrc taken from the environment, and typed errors. ZAP reports API errors as HTTP
400 with ``{"code", "message", "detail"}`` (500 for ``internal_error``); a wrong or
missing key gets an *empty reply* (connection closed, ZAP's default) or, with
``api.reportpermerrors=true``, HTTP 400 ``{"code": "bad_api_key"}``. Both are treated
as a wrong key; connection refused and 5xx are transient.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from airflow.sdk import BaseHook, Connection
from zapv2 import ZAPv2

from selfheal.scanners.errors import (
    ScannerAuthError,
    ScannerError,
    ScannerNotFoundError,
    ScannerTransientError,
)

DEFAULT_PORT = 8080
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_PAGE_SIZE = 500
MAX_ALERTS = 200_000  # a bound, not an expectation: one scan of one service


class ZapError(ScannerError):
    """A ZAP API call failed for a reason that waiting will not fix."""


class ZapApiError(ZapError):
    """ZAP answered with one of its API errors (``{"code": ..., "message": ...}``)."""

    def __init__(self, message: str, *, code: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail


class ZapAuthError(ZapError, ScannerAuthError):
    """ZAP refused the API key."""


class ZapNotFoundError(ZapApiError, ScannerNotFoundError):
    """The scan (or other object) asked for does not exist in this ZAP session."""


class ZapTransientError(ZapError, ScannerTransientError):
    """ZAP is unreachable or answered 5xx: retry later."""


@dataclass(frozen=True)
class ZapProgress:
    """Where a scan stands. Complete means all three: spider done, passive queue empty, active done."""

    spider: int
    passive_queue: int
    active: int

    @property
    def complete(self) -> bool:
        return self.spider >= 100 and self.passive_queue == 0 and self.active >= 100

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class ZapScan:
    """What `ZapHook.start_scan` started; the ids are what the trigger polls."""

    target_url: str
    spider_id: str
    ascan_id: str
    openapi_warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "openapi_warnings": list(self.openapi_warnings)}


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (requests/urllib3 nest the socket error 2-3 levels deep)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack.extend(x for x in (e.__cause__, e.__context__, getattr(e, "reason", None)) if x is not None)
        stack.extend(a for a in e.args if isinstance(a, BaseException))


class _ZapClient(ZAPv2):
    """ZAPv2 with a timeout, a response size bound and typed errors (the stock client has none of these).

    Overrides the two private request methods every generated API method goes
    through; the URL scheme (``http://zap/...`` via the proxy) and the key header
    are exactly the stock client's.
    """

    def __init__(
        self, *, api_url: str, apikey: str | None, timeout: float, verify: bool | str, max_bytes: int
    ) -> None:
        proxies = {"http": api_url, "https": api_url}
        super().__init__(proxies=proxies, apikey=apikey)
        self._sh_proxies = proxies
        self._sh_apikey = apikey
        self._sh_timeout = timeout
        self._sh_verify = verify
        self._sh_max_bytes = max_bytes
        self._sh_api_url = api_url

    def _request_api(self, url, query=None, method="GET", body=None):  # type: ignore[override]
        if not url.startswith("http://zap/"):
            raise ValueError(f"refusing a non ZAP API URL: {url}")  # never send the key elsewhere
        name = url[len("http://zap/") :]
        with requests.Session() as session:
            session.trust_env = False  # no proxy or netrc credentials from the environment
            if self._sh_apikey is not None:
                session.headers["X-ZAP-API-Key"] = self._sh_apikey
            try:
                response = session.request(
                    method,
                    url,
                    params=query,
                    data=body,
                    proxies=self._sh_proxies,
                    verify=self._sh_verify,
                    timeout=self._sh_timeout,
                    stream=True,
                )
                content = self._read_bounded(response, name)
            except requests.RequestException as e:
                raise self._classify_transport(e, name) from None
        return response, content

    def _read_bounded(self, response: requests.Response, name: str) -> bytes:
        chunks: list[bytes] = []
        total = 0
        for chunk in response.iter_content(64 * 1024):
            total += len(chunk)
            if total > self._sh_max_bytes:
                response.close()
                raise ZapApiError(
                    f"ZAP {name}: response larger than {self._sh_max_bytes} bytes; use a smaller page size"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _classify_transport(self, e: requests.RequestException, name: str) -> ZapError:
        where = f"ZAP at {self._sh_api_url} ({name})"
        if isinstance(e, requests.Timeout):
            return ZapTransientError(f"{where}: no answer within {self._sh_timeout:g}s")
        if any(isinstance(c, http.client.RemoteDisconnected) for c in _causes(e)):
            return ZapAuthError(
                f"{where}: ZAP closed the connection without answering, which is how ZAP answers a "
                "wrong or missing API key by default (set api.reportpermerrors=true in ZAP to get an "
                "explicit error); check the password of the Airflow connection"
            )
        for c in _causes(e):
            if isinstance(c, ConnectionRefusedError):
                return ZapTransientError(f"{where}: connection refused (is ZAP running?)")
        return ZapTransientError(f"{where}: {type(e).__name__}: {e}")

    def _check(self, url: str, response: requests.Response, content: bytes) -> Any:
        name = url[len("http://zap/") :]
        status = response.status_code
        try:
            doc = json.loads(content) if content else None
        except ValueError:
            doc = None
        err = doc if isinstance(doc, dict) and "code" in doc and status >= 400 else None
        if status >= 500:
            what = f"{err.get('code')}: {err.get('message')}" if err else f"HTTP {status}"
            raise ZapTransientError(f"ZAP {name}: {what}")
        if err is not None:
            code, message = str(err.get("code", "")), str(err.get("message", ""))
            detail = str(err.get("detail", ""))
            text = f"ZAP {name}: {code}: {message}" + (f" ({detail})" if detail else "")
            if code == "bad_api_key":
                raise ZapAuthError(f"{text}; check the password of the Airflow connection")
            if code == "does_not_exist":
                raise ZapNotFoundError(text, code=code, detail=detail)
            raise ZapApiError(text, code=code, detail=detail)
        if status >= 300 or not isinstance(doc, dict):
            raise ZapApiError(
                f"ZAP {name}: unexpected answer (HTTP {status}, {len(content)} bytes); is this ZAP?"
            )
        return doc

    def _request(self, url, get=None, method="GET", body=None):  # type: ignore[override]
        response, content = self._request_api(url, get, method, body)
        return self._check(url, response, content)

    def _request_other(self, url, get=None, method="GET", body=None):  # type: ignore[override]
        response, content = self._request_api(url, get, method, body)
        if response.status_code >= 400:
            self._check(url, response, content)
        return content.decode("utf-8", errors="replace")


def _scan_id(value: Any, what: str) -> str:
    text = str(value)
    if not text.isdigit():
        raise ZapApiError(f"ZAP {what}: expected a scan id, got {text[:80]!r}")
    return text


def _int(value: Any, what: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise ZapApiError(f"ZAP {what}: expected a number, got {str(value)[:80]!r}") from None


class ZapHook(BaseHook):
    """One ZAP daemon: import an OpenAPI definition, spider, active scan, progress, alerts, clean-up."""

    conn_name_attr = "zap_conn_id"
    default_conn_name = "zap_default"
    conn_type = "zap"
    hook_name = "OWASP ZAP"

    def __init__(self, zap_conn_id: str = default_conn_name, *, connection: Connection | None = None) -> None:
        super().__init__()
        self.zap_conn_id = zap_conn_id
        self._connection = connection
        self._client: _ZapClient | None = None

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["login"],
            "relabeling": {"password": "API key", "schema": "Scheme (http or https)"},
            "placeholders": {"host": "127.0.0.1", "port": str(DEFAULT_PORT), "extra": '{"timeout": 30}'},
        }

    @classmethod
    async def afor_conn_id(cls, zap_conn_id: str = default_conn_name) -> ZapHook:
        """A hook for use inside a trigger: the connection is read through Airflow's async path."""
        return cls(zap_conn_id, connection=await cls.aget_connection(zap_conn_id))

    @property
    def api_url(self) -> str:
        conn = self._conn()
        host = (conn.host or "").strip()
        scheme = (conn.schema or "http").strip().lower()
        if "://" in host:
            parts = urlsplit(host)
            scheme, host = parts.scheme.lower(), parts.hostname or ""
            port = conn.port or parts.port or DEFAULT_PORT
        else:
            port = conn.port or DEFAULT_PORT
        if scheme not in ("http", "https") or not host:
            raise ZapError(f"connection {self.zap_conn_id!r}: the ZAP API needs a host and an http(s) scheme")
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # IPv6 literal
        return f"{scheme}://{host}:{port}"

    def _conn(self) -> Connection:
        if self._connection is None:
            self._connection = self.get_connection(self.zap_conn_id)
        return self._connection

    def get_conn(self) -> ZAPv2:
        """The zaproxy client (our bounded, typed subclass), built once per hook."""
        if self._client is None:
            conn = self._conn()
            extra = conn.extra_dejson
            self._client = _ZapClient(
                api_url=self.api_url,
                apikey=conn.password or None,
                timeout=float(extra.get("timeout", DEFAULT_TIMEOUT_S)),
                verify=extra.get("verify", True),
                max_bytes=int(float(extra.get("max_response_mb", 64)) * 1024 * 1024),
            )
        return self._client

    # --- single API calls ---------------------------------------------------------------------

    def version(self) -> str:
        return str(self.get_conn().core.version)

    def test_connection(self) -> tuple[bool, str]:
        """Airflow's connection test: the version call needs a valid key unless ZAP disabled keys."""
        try:
            return True, f"ZAP {self.version()} at {self.api_url}"
        except ScannerError as e:
            return False, str(e)

    def import_openapi(self, openapi_url: str, *, target_url: str | None = None) -> tuple[str, ...]:
        """Import a definition (ZAP fetches it and requests every operation); returns ZAP's warnings.

        ``target_url`` overrides the servers of the definition so ZAP attacks the
        instance we mean, not the one written in the document.
        """
        warnings = self.get_conn().openapi.import_url(openapi_url, hostoverride=target_url)
        if isinstance(warnings, list):
            return tuple(str(w) for w in warnings)
        return ()

    def access_url(self, url: str) -> None:
        """Have ZAP request `url` once so it is in the sites tree (an active scan needs its start node)."""
        self.get_conn().core.access_url(url, followredirects=True)

    def spider(
        self, url: str, *, max_children: int | None = None, recurse: bool = True, subtree_only: bool = True
    ) -> str:
        return _scan_id(
            self.get_conn().spider.scan(
                url=url, maxchildren=max_children, recurse=recurse, subtreeonly=subtree_only
            ),
            "spider/action/scan",
        )

    def active_scan(self, url: str, *, policy: str | None = None, recurse: bool = True) -> str:
        """Start an active scan with the named scan policy (ZAP's default policy when None)."""
        return _scan_id(
            self.get_conn().ascan.scan(url=url, recurse=recurse, scanpolicyname=policy), "ascan/action/scan"
        )

    def scan_policy_names(self) -> list[str]:
        return [str(p) for p in self.get_conn().ascan.scan_policy_names]

    def progress(self, spider_id: str, ascan_id: str) -> ZapProgress:
        zap = self.get_conn()
        return ZapProgress(
            spider=_int(zap.spider.status(spider_id), "spider/view/status"),
            passive_queue=_int(zap.pscan.records_to_scan, "pscan/view/recordsToScan"),
            active=_int(zap.ascan.status(ascan_id), "ascan/view/status"),
        )

    def iter_alerts(
        self, baseurl: str | None = None, *, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[dict[str, Any]]:
        """Every alert under `baseurl`, page by page, as ZAP's API returns them (all fields strings).

        ZAP's ``start`` is 1-based: its PaginationConstraintsChecker treats 0 and 1
        alike, so 0-based offsets would return the last alert of each page twice.
        """
        if page_size < 1:
            raise ValueError("page_size must be positive")
        zap = self.get_conn()
        start, seen = 1, 0
        while True:
            page = zap.core.alerts(baseurl=baseurl, start=start, count=page_size)
            if not isinstance(page, list):
                raise ZapApiError(f"ZAP core/view/alerts: expected a list, got {type(page).__name__}")
            for alert in page:
                seen += 1
                if seen > MAX_ALERTS:
                    raise ZapApiError(f"ZAP core/view/alerts: more than {MAX_ALERTS} alerts under {baseurl}")
                yield alert
            if len(page) < page_size:
                return
            start += page_size

    def alerts_json(self, baseurl: str | None = None, *, page_size: int = DEFAULT_PAGE_SIZE) -> bytes:
        """All alerts as the ``core/view/alerts`` document ``{"alerts": [...]}`` (parser format zap-api)."""
        alerts = list(self.iter_alerts(baseurl, page_size=page_size))
        return json.dumps({"alerts": alerts}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def remove_scans(self, *, spider_id: str | None = None, ascan_id: str | None = None) -> None:
        """Forget finished scans (ZAP keeps their alerts). Already-removed scans are not an error."""
        zap = self.get_conn()
        for scan_id, remove in ((spider_id, zap.spider.remove_scan), (ascan_id, zap.ascan.remove_scan)):
            if scan_id is None:
                continue
            try:
                remove(scan_id)
            except ZapNotFoundError:
                self.log.info("ZAP scan %s was already removed", scan_id)

    # --- the sequence a scan DAG runs -----------------------------------------------------------

    def start_scan(
        self,
        target_url: str,
        *,
        openapi_url: str | None = None,
        policy: str | None = None,
        max_children: int | None = None,
    ) -> ZapScan:
        """Import the definition (if any), seed the tree, then start spider and active scan together.

        The active scan covers what is in the sites tree when it starts: the seed URL
        and every operation of the imported definition. Poll `progress` (or defer to
        ``ZapScanCompleteTrigger``) until complete, then `alerts_json` and `remove_scans`.
        """
        warnings: tuple[str, ...] = ()
        if openapi_url:
            warnings = self.import_openapi(openapi_url, target_url=target_url)
            for w in warnings[:20]:
                self.log.warning("ZAP OpenAPI import warning: %s", w)
        self.access_url(target_url)
        spider_id = self.spider(target_url, max_children=max_children)
        ascan_id = self.active_scan(target_url, policy=policy)
        self.log.info("ZAP scans of %s started: spider %s, active %s", target_url, spider_id, ascan_id)
        return ZapScan(target_url, spider_id, ascan_id, warnings)

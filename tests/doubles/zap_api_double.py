"""ZapApiDouble: a loopback HTTP server that answers ZAP's JSON API the way ZAP 2.16 does.

Checked against ZAP's own source (API.java, ApiException.java, CoreAPI alerts
paging, OpenApiAPI) and the zaproxy Python client 0.6.0.

Implemented, as the real ZAP does it:

- Both request forms ZAP accepts on its proxy port: absolute-form through the
  proxy (``GET http://zap/JSON/... HTTP/1.1``, which is how the zaproxy client
  always calls) and origin-form (``GET /JSON/...``). GET query or POST
  ``application/x-www-form-urlencoded`` parameters.
- The API key from the ``X-ZAP-API-Key`` header, else the ``apikey`` parameter,
  checked for views and actions. A wrong or missing key gets ZAP's default
  answer, an empty reply (connection closed without a response), or with
  ``report_perm_errors=True`` (ZAP's ``api.reportpermerrors``) HTTP 400
  ``{"code":"bad_api_key","message":"Invalid or missing API key"}``.
- API errors as ZAP's ApiException JSON, HTTP 400 ``{"code","message"[,"detail"]}``;
  ``internal_error`` as HTTP 500. ZAP's default response headers.
- ``core/view/version``, ``core/action/accessUrl`` (really requests the URL),
  ``openapi/action/importUrl`` (really fetches the JSON/YAML definition, honours
  ``hostOverride``, requests nothing but records every operation in the sites
  tree; unreachable -> ``illegal_parameter`` "Failed to access the target."),
  ``spider/action/scan`` + ``view/status`` + ``action/removeScan``,
  ``ascan/action/scan`` (the URL must be in the sites tree -> else
  ``url_not_found``; the policy must exist -> else ``does_not_exist``) +
  ``view/status`` + ``action/removeScan`` + ``view/scanPolicyNames``,
  ``pscan/view/recordsToScan``, ``core/view/alerts`` and ``core/view/numberOfAlerts``
  with ``baseurl`` prefix filtering and ZAP's 1-based ``start``/``count`` paging
  (``start`` 0 and 1 both begin at the first alert, as PaginationConstraintsChecker
  does). Scan ids are per-scanner counters from 0, as in ZAP.
- Alerts in the API's shape: every field a string (``sourceMessageId`` a number,
  ``tags`` an object), risk/confidence as labels. Passive alerts are the
  instances of a real ZAP report (default ``dvwa_baseline_dojo.xml``, 124
  instances of 19 alert types) rebased onto the scanned origin; the active scan
  raises a SQL Injection alert (pluginId 40018, CWE 89) on the first GET query
  parameter of the imported definition (else ``id`` on the seed URL).

Not implemented: crawling or attacking anything (progress is a function of time:
spider and active scan run ``spider_seconds``/``ascan_seconds``; each record in the
passive queue is scanned ``pscan_seconds`` after it was added), contexts, users,
the XML/HTML/JSONP/OTHER formats, API nonces, every other component/view/action
(unknown names answer ``bad_view``/``bad_action``, unknown components
``no_implementor``).

Failure knobs: ``fail_next(n)`` (HTTP 500 internal_error for the next n calls),
``ascan_hang_at`` (active scans do not pass that percentage while it is set), ``stop()`` /
``start()`` (nothing listens in between: connection refused).
"""

from __future__ import annotations

import html
import json
import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urljoin, urlsplit

import defusedxml.ElementTree as ET
import yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SAMPLE = REPO / "tests" / "fixtures" / "scanner-samples" / "zap" / "dvwa_baseline_dojo.xml"
ZAP_VERSION = "2.16.1"
RISKS = ("Informational", "Low", "Medium", "High")
CONFIDENCES = ("False Positive", "Low", "Medium", "High", "Confirmed")
# Texts of ZAP's Messages.properties (api.error.*).
ERROR_TEXT = {
    "bad_api_key": "Invalid or missing API key",
    "bad_format": "Bad Format",
    "bad_type": "Bad Type",
    "bad_view": "Bad View",
    "bad_action": "Bad Action",
    "no_implementor": "No Implementor",
    "does_not_exist": "Does Not Exist",
    "internal_error": "Internal Error",
    "missing_parameter": "Missing Parameter",
    "url_not_found": "URL Not Found in the Scan Tree",
    "illegal_parameter": "Provided parameter has illegal or unrecognized value",
    "bad_external_data": "The external data provided is not valid.",
}
SQLI_TAGS = {
    "OWASP_2021_A03": "https://owasp.org/Top10/A03_2021-Injection/",
    "OWASP_2017_A01": "https://owasp.org/www-project-top-ten/2017/A1_2017-Injection.html",
    "CWE-89": "https://cwe.mitre.org/data/definitions/89.html",
    "WSTG-v42-INPV-05": "https://owasp.org/www-project-web-security-testing-guide/v42/"
    "4-Web_Application_Security_Testing/07-Input_Validation_Testing/05-Testing_for_SQL_Injection",
}


class ApiError(Exception):
    def __init__(self, code: str, detail: str | None = None, status: int = 400) -> None:
        super().__init__(code)
        self.code, self.detail, self.status = code, detail, status

    def body(self) -> dict[str, str]:
        doc = {"code": self.code, "message": ERROR_TEXT.get(self.code, self.code)}
        if self.detail:
            doc["detail"] = self.detail
        return doc


@dataclass
class _Scan:
    scan_id: int
    url: str
    started: float
    seconds: float
    done_hook_ran: bool = False

    def progress(self, now: float, hang_at: int | None = None) -> int:
        """Percent done by the clock; `hang_at` (the double's live knob) caps it."""
        pct = 100 if self.seconds <= 0 else min(100, int(100 * (now - self.started) / self.seconds))
        return pct if hang_at is None else min(pct, hang_at)


@dataclass
class _Alert:
    fields: dict[str, Any]
    visible_at: float  # when the passive/active scanner "raised" it


@dataclass
class _State:
    tree: dict[str, int] = field(default_factory=dict)  # url -> history id
    records: list[float] = field(default_factory=list)  # passive queue: time each record was added
    alerts: list[_Alert] = field(default_factory=list)
    spiders: dict[int, _Scan] = field(default_factory=dict)
    ascans: dict[int, _Scan] = field(default_factory=dict)
    next_spider: int = 0
    next_ascan: int = 0
    next_history: int = 1
    next_alert: int = 0
    get_params: list[tuple[str, str]] = field(default_factory=list)  # (url, param) from the definition


def _para_text(value: str) -> str:
    """ZAP's XML report wraps each paragraph in <p>; the API returns the plain text."""
    text = re.sub(r"</p>\s*<p>", "\n", value.strip())
    return re.sub(r"^<p>|</p>$", "", text).strip()


def load_passive_templates(sample: Path) -> list[dict[str, str]]:
    """One API-shaped alert per <instance> of a real ZAP XML report (URLs still absolute)."""
    root = ET.parse(sample).getroot()
    out: list[dict[str, str]] = []
    for item in root.iter("alertitem"):

        def get(tag: str, el=item) -> str:
            node = el.find(tag)
            return html.unescape(node.text or "") if node is not None and node.text else ""

        risk = int(get("riskcode") or 0)
        confidence = int(get("confidence") or 2)
        cwe = get("cweid") or "0"
        base = {
            "pluginId": get("pluginid"),
            "alertRef": get("alertRef") or get("pluginid"),
            "alert": get("alert") or get("name"),
            "name": get("name") or get("alert"),
            "description": _para_text(get("desc")),
            "risk": RISKS[risk],
            "confidence": CONFIDENCES[confidence],
            "solution": _para_text(get("solution")),
            "reference": _para_text(get("reference")),
            "cweid": cwe,
            "wascid": get("wascid") or "0",
            "sourceid": get("sourceid") or "3",
        }
        item_other = _para_text(get("otherinfo"))
        for inst in item.iter("instance"):
            out.append(
                {
                    **base,
                    "url": get("uri", inst),
                    "method": get("method", inst) or "GET",
                    "param": get("param", inst),
                    "attack": get("attack", inst),
                    "evidence": get("evidence", inst),
                    "other": _para_text(get("otherinfo", inst)) or item_other,
                    "inputVector": "",
                }
            )
    return out


def _sqli(url: str, param: str) -> dict[str, str]:
    attack = "ZAP' AND '1'='1' -- "
    sep = "&" if "?" in url else "?"
    return {
        "pluginId": "40018",
        "alertRef": "40018",
        "alert": "SQL Injection",
        "name": "SQL Injection",
        "description": "SQL injection may be possible.",
        "risk": "High",
        "confidence": "Medium",
        "url": f"{url}{sep}{quote(param)}={quote(attack)}",
        "method": "GET",
        "param": param,
        "attack": attack,
        "evidence": "",
        "other": (
            "The page results were successfully manipulated using the boolean conditions "
            f"[{attack}] and [ZAP' AND '1'='2' -- ]\nThe parameter value being modified was stripped "
            "from the HTML output for the purposes of the comparison."
        ),
        "inputVector": "queryString",
        "solution": (
            "Do not trust client side input, even if there is client side validation in place.\n"
            "In general, type check all data on the server side.\nIf the application uses JDBC, use "
            "PreparedStatement or CallableStatement, with parameters passed by '?'"
        ),
        "reference": "https://cheatsheetseries.owasp.org/cheatsheets/SQL_Injection_Prevention_Cheat_Sheet.html",
        "cweid": "89",
        "wascid": "19",
        "sourceid": "1",
    }


class ZapApiDouble:
    """A ZAP daemon's API on 127.0.0.1:<port>; see the module docstring for what it implements."""

    def __init__(
        self,
        *,
        api_key: str | None = "selfheal-test-key",
        port: int = 0,
        spider_seconds: float = 0.5,
        ascan_seconds: float = 1.0,
        pscan_seconds: float = 0.3,
        ascan_hang_at: int | None = None,
        report_perm_errors: bool = False,
        policies: tuple[str, ...] = ("Default Policy", "API-Minimal"),
        passive_sample: Path | None = DEFAULT_SAMPLE,
    ) -> None:
        self.api_key = api_key
        self.spider_seconds = spider_seconds
        self.ascan_seconds = ascan_seconds
        self.pscan_seconds = pscan_seconds
        self.ascan_hang_at = ascan_hang_at
        self.report_perm_errors = report_perm_errors
        self.policies = policies
        self._templates = load_passive_templates(passive_sample) if passive_sample else []
        self._lock = threading.Lock()
        self._state = _State()
        self._fail_next = 0
        self.calls: list[tuple[str, dict[str, str], dict[str, str]]] = []  # (api path, params, headers)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = port
        self.start()

    # --- lifecycle and knobs ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self._server is not None:
            return
        double = self

        class Handler(_Handler):
            zap = double

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name=f"zap-double-{self.port}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening (the port refuses connections until `start`); state is kept, as after a restart."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = self._thread = None

    def close(self) -> None:
        self.stop()

    def fail_next(self, n: int) -> None:
        with self._lock:
            self._fail_next = n

    def alert_count(self) -> int:
        """Alerts visible now (what core/view/numberOfAlerts would say without a filter)."""
        with self._lock:
            now = time.monotonic()
            self._advance(now)
            return sum(1 for a in self._state.alerts if a.visible_at <= now)

    def api_calls(self, name: str) -> int:
        return sum(1 for path, _, _ in self.calls if path == name)

    # --- the API ------------------------------------------------------------------------------

    def handle(self, api_path: str, params: dict[str, str]) -> dict[str, Any]:
        parts = api_path.strip("/").split("/")
        if len(parts) < 4 or parts[0] != "JSON":
            raise ApiError("bad_format")
        _, component, kind, name = parts[:4]
        handler = getattr(self, f"_{component}_{kind}_{name}", None)
        if handler is None:
            if not any(m.startswith(f"_{component}_") for m in dir(self)):
                raise ApiError("no_implementor")
            raise ApiError({"view": "bad_view", "action": "bad_action"}.get(kind, "bad_type"))
        with self._lock:
            now = time.monotonic()
            self._advance(now)
            return handler(params, now)

    def _advance(self, now: float) -> None:
        """Run the effects of scans that finished since the last call (time-driven, no threads)."""
        st = self._state
        for scan in st.spiders.values():
            if not scan.done_hook_ran and scan.progress(now) >= 100:
                scan.done_hook_ran = True
                done_at = scan.started + scan.seconds
                origin = "{0.scheme}://{0.netloc}".format(urlsplit(scan.url))
                for tpl in self._templates:
                    parts = urlsplit(tpl["url"])
                    url = origin + (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                    hist = self._record(url, done_at)
                    self._raise(dict(tpl, url=url), hist, done_at + self.pscan_seconds)
        for scan in st.ascans.values():
            if not scan.done_hook_ran and scan.progress(now, self.ascan_hang_at) >= 50:
                scan.done_hook_ran = True
                at = scan.started + scan.seconds * 0.5
                url, param = next(
                    ((u, p) for u, p in st.get_params if u.startswith(scan.url.rstrip("/"))), (scan.url, "id")
                )
                self._raise(_sqli(url, param), self._record(url, at), at)

    def _record(self, url: str, at: float) -> int:
        st = self._state
        if url not in st.tree:
            st.tree[url] = st.next_history
            st.next_history += 1
        st.records.append(at)
        return st.tree[url]

    def _raise(self, fields: dict[str, str], history_id: int, at: float) -> None:
        st = self._state
        cwe = fields.get("cweid", "0")
        if fields["pluginId"] == "40018":
            tags = SQLI_TAGS
        elif cwe not in ("", "0", "-1"):
            tags = {f"CWE-{cwe}": f"https://cwe.mitre.org/data/definitions/{cwe}.html"}
        else:
            tags = {}
        full = {
            **fields,
            "id": str(st.next_alert),
            "messageId": str(history_id),
            "sourceMessageId": history_id,
            "tags": dict(tags),
        }
        st.next_alert += 1
        st.alerts.append(_Alert(full, at))

    # core
    def _core_view_version(self, params: dict[str, str], now: float) -> dict[str, Any]:
        return {"version": ZAP_VERSION}

    def _core_action_accessUrl(self, params: dict[str, str], now: float) -> dict[str, Any]:
        url = _required(params, "url")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                status, body = resp.status, resp.read(1 << 20)
        except OSError:
            raise ApiError("illegal_parameter", "url") from None
        hist = self._record(url, now)
        return {
            "accessUrl": [
                {
                    "id": str(hist),
                    "requestHeader": f"GET {url} HTTP/1.1\r\n",
                    "responseHeader": f"HTTP/1.1 {status}\r\n",
                    "responseBody": body[:200].decode("utf-8", "replace"),
                    "note": "",
                    "tags": [],
                }
            ]
        }

    def _core_view_alerts(self, params: dict[str, str], now: float) -> dict[str, Any]:
        return {"alerts": [a.fields for a in self._page(params, now)]}

    def _core_view_numberOfAlerts(self, params: dict[str, str], now: float) -> dict[str, Any]:
        return {"numberOfAlerts": str(len(self._page(params, now)))}

    def _page(self, params: dict[str, str], now: float) -> list[_Alert]:
        base = params.get("baseurl") or None
        start, count = _int_param(params, "start", -1), _int_param(params, "count", -1)
        risk = params.get("riskId", "").strip()
        selected = [
            a
            for a in self._state.alerts
            if a.visible_at <= now
            and a.fields["confidence"] != "False Positive"
            and (base is None or a.fields["url"].startswith(base))
            and (not risk or RISKS.index(a.fields["risk"]) == int(risk))
        ]
        first = start - 1 if start > 0 else 0  # ZAP: start is 1-based; 0 and 1 both mean the first
        return selected[first:] if count <= 0 else selected[first : first + count]

    # openapi
    def _openapi_action_importUrl(self, params: dict[str, str], now: float) -> dict[str, Any]:
        url = _required(params, "url")
        override = params.get("hostOverride", "")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                raw = resp.read(8 << 20)
        except OSError:
            raise ApiError("illegal_parameter", "Failed to access the target.") from None
        try:
            doc = yaml.safe_load(raw)  # JSON is YAML
            paths = doc["paths"]
            if not isinstance(paths, dict):
                raise TypeError
        except Exception:  # noqa: BLE001 - any malformed definition is bad external data, as in ZAP
            raise ApiError("bad_external_data", "Failed to parse the OpenAPI definition.") from None
        servers = doc.get("servers") or []
        server = override or (servers[0].get("url") if servers else "") or url
        server = urljoin(url, server).rstrip("/")
        warnings: list[str] = []
        for path, ops in paths.items():
            if not isinstance(ops, dict):
                warnings.append(f"Skipped {path}: not an object")
                continue
            for method, op in ops.items():
                if method.lower() not in ("get", "post", "put", "patch", "delete"):
                    continue
                op_params = (op or {}).get("parameters", []) + ops.get("parameters", [])
                concrete = re.sub(r"\{[^}]+\}", "10", path)
                query = [p["name"] for p in op_params if isinstance(p, dict) and p.get("in") == "query"]
                full = server + concrete + (("?" + urlencode({q: "ZAP" for q in query})) if query else "")
                self._record(full, now)
                if method.lower() == "get":
                    self._state.get_params.extend((server + concrete, q) for q in query)
        return {"importUrl": warnings}

    # spider
    def _spider_action_scan(self, params: dict[str, str], now: float) -> dict[str, Any]:
        url = params.get("url", "")
        if not url:
            raise ApiError("missing_parameter", "url")
        st = self._state
        scan = _Scan(st.next_spider, url, now, self.spider_seconds)
        st.spiders[scan.scan_id] = scan
        st.next_spider += 1
        self._record(url, now)
        return {"scan": str(scan.scan_id)}

    def _spider_view_status(self, params: dict[str, str], now: float) -> dict[str, Any]:
        return {"status": str(self._scan(self._state.spiders, params).progress(now))}

    def _spider_action_removeScan(self, params: dict[str, str], now: float) -> dict[str, Any]:
        del self._state.spiders[self._scan(self._state.spiders, params, required=True).scan_id]
        return {"Result": "OK"}

    # ascan
    def _ascan_view_scanPolicyNames(self, params: dict[str, str], now: float) -> dict[str, Any]:
        return {"scanPolicyNames": list(self.policies)}

    def _ascan_action_scan(self, params: dict[str, str], now: float) -> dict[str, Any]:
        url = params.get("url", "")
        policy = params.get("scanPolicyName", "")
        if policy and policy not in self.policies:
            raise ApiError("does_not_exist", "scanPolicyName")
        if url and not any(u.startswith(url.rstrip("/")) for u in self._state.tree):
            raise ApiError("url_not_found", "url")
        st = self._state
        scan = _Scan(st.next_ascan, url, now, self.ascan_seconds)
        st.ascans[scan.scan_id] = scan
        st.next_ascan += 1
        return {"scan": str(scan.scan_id)}

    def _ascan_view_status(self, params: dict[str, str], now: float) -> dict[str, Any]:
        return {"status": str(self._scan(self._state.ascans, params).progress(now, self.ascan_hang_at))}

    def _ascan_action_removeScan(self, params: dict[str, str], now: float) -> dict[str, Any]:
        del self._state.ascans[self._scan(self._state.ascans, params, required=True).scan_id]
        return {"Result": "OK"}

    # pscan
    def _pscan_view_recordsToScan(self, params: dict[str, str], now: float) -> dict[str, Any]:
        pending = sum(1 for added in self._state.records if added <= now < added + self.pscan_seconds)
        return {"recordsToScan": str(pending)}

    @staticmethod
    def _scan(scans: dict[int, _Scan], params: dict[str, str], required: bool = False) -> _Scan:
        raw = params.get("scanId", "")
        if not raw:
            if required:
                raise ApiError("missing_parameter", "scanId")
            if not scans:
                raise ApiError("does_not_exist", "scanId")
            return scans[max(scans)]
        try:
            return scans[int(raw)]
        except (ValueError, KeyError):
            raise ApiError("does_not_exist", "scanId") from None

    # --- HTTP plumbing (called by the handler) ------------------------------------------------

    def serve(
        self, api_path: str, params: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, dict[str, Any]] | None:
        """Status and JSON body for one API call, or None for ZAP's silent empty reply."""
        self.calls.append((api_path.strip("/"), dict(params), dict(headers)))
        with self._lock:
            if self._fail_next > 0:
                self._fail_next -= 1
                return 500, ApiError("internal_error", status=500).body()
        if self.api_key is not None:
            key = headers.get("x-zap-api-key") or params.get("apikey")
            if key != self.api_key:
                if not self.report_perm_errors:
                    return None
                return 400, ApiError("bad_api_key").body()
        try:
            return 200, self.handle(api_path, params)
        except ApiError as e:
            return e.status, e.body()


def _required(params: dict[str, str], name: str) -> str:
    value = params.get(name, "")
    if not value:
        raise ApiError("missing_parameter", name)
    return value


def _int_param(params: dict[str, str], name: str, default: int) -> int:
    raw = params.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError("illegal_parameter", name) from None


class _Handler(BaseHTTPRequestHandler):
    zap: ZapApiDouble
    protocol_version = "HTTP/1.1"
    server_version = "ZAP"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _dispatch(self, body: bytes = b"") -> None:
        target = self.path
        if target.startswith(("http://", "https://")):  # absolute-form: a request through ZAP's proxy
            parts = urlsplit(target)
            if parts.hostname not in ("zap", "127.0.0.1", "localhost"):
                self._send(502, {"error": "this double is not a forwarding proxy"})
                return
        else:
            parts = urlsplit(f"http://127.0.0.1{target}")
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        if body and self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        headers = {k.lower(): v for k, v in self.headers.items()}
        result = self.zap.serve(parts.path, params, headers)
        if result is None:  # wrong key, ZAP's default: close without answering
            self.close_connection = True
            return
        self._send(*result)

    def _send(self, status: int, doc: dict) -> None:
        payload = json.dumps(doc).encode("utf-8")
        self.send_response(status, {200: "OK", 400: "Bad Request", 500: "Internal Server Error"}.get(status))
        for name, value in (
            ("Pragma", "no-cache"),
            ("Cache-Control", "no-cache, no-store, must-revalidate"),
            (
                "Content-Security-Policy",
                "default-src 'none'; script-src 'self'; connect-src 'self'; "
                "child-src 'self'; img-src 'self' data:; font-src 'self' data:; style-src 'self'",
            ),
            ("Referrer-Policy", "no-referrer"),
            ("Access-Control-Allow-Methods", "GET,POST,OPTIONS"),
            ("Access-Control-Allow-Headers", "ZAP-Header"),
            ("X-Frame-Options", "DENY"),
            ("X-XSS-Protection", "1; mode=block"),
            ("X-Content-Type-Options", "nosniff"),
            ("X-Clacks-Overhead", "GNU Terry Pratchett"),
            ("Content-Length", str(len(payload))),
            ("Content-Type", "application/json; charset=UTF-8"),
            ("Connection", "close"),
        ):
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
        self.close_connection = True

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._dispatch(self.rfile.read(min(length, 1 << 20)))


class StaticTarget:
    """A tiny web service to scan: an OpenAPI 3 definition at /openapi.json and 200s elsewhere."""

    def __init__(self, openapi: dict[str, Any] | None = None) -> None:
        self.openapi = openapi or {
            "openapi": "3.0.3",
            "info": {"title": "demo", "version": "1"},
            "servers": [{"url": "http://example.invalid"}],
            "paths": {
                "/api/items": {
                    "get": {
                        "parameters": [{"name": "q", "in": "query", "schema": {"type": "string"}}],
                        "responses": {"200": {"description": "ok"}},
                    }
                },
                "/api/items/{id}": {
                    "get": {
                        "parameters": [{"name": "id", "in": "path", "required": True}],
                        "responses": {"200": {"description": "ok"}},
                    }
                },
            },
        }
        target = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                if self.path == "/openapi.json":
                    body, ctype = json.dumps(target.openapi).encode(), "application/json"
                else:
                    body, ctype = b'{"ok": true}', "application/json"
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def openapi_url(self) -> str:
        return f"{self.url}/openapi.json"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

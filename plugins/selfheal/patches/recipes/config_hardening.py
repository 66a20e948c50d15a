"""config_hardening: security response headers and no Server/X-Powered-By banner.

One plan per service with both forms of the fix:

* a gateway change (``GatewayChange``: headers to set and delete), the same
  values ``selfheal.gateway.config.SecurityHeaders`` renders, so it can be
  live in seconds for any backend;
* for a FastAPI/Starlette application, the durable fix in the app itself: a
  small pure-ASGI middleware module next to the module that builds the app,
  registered last (outermost) so it sees every response the app's own
  middleware produced. Pure ASGI rather than ``@app.middleware("http")``:
  it only edits the response start message, so streaming is untouched and
  the latency check has nothing to complain about. Headers the app already
  sets are left as they are (the app's choice wins); banners are removed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import libcst as cst

from selfheal.catalog import Service
from selfheal.findings.model import Finding
from selfheal.gateway.config import SecurityHeaders
from selfheal.patches.diffs import make_diff
from selfheal.patches.model import AttackRequest, GatewayChange, Oracle, PatchPlan, RescanCheck, Verification
from selfheal.patches.recipes import PlanContext, Recipe, image_checks, web_paths
from selfheal.patches.recipes.pysource import app_sources, code, module_name, parse

# ZAP passive-scan rules about response headers, by plugin id.
ZAP_HEADER_RULES: dict[str, str] = {
    "10020": "X-Frame-Options",
    "10021": "X-Content-Type-Options",
    "10035": "Strict-Transport-Security",
    "10038": "Content-Security-Policy",
    "10055": "Content-Security-Policy",
    "10016": "X-XSS-Protection",
    "10036": "Server",
    "10037": "X-Powered-By",
}
HARDENING_HEADERS = (
    "X-Content-Type-Options",
    "X-Frame-Options",
    "Strict-Transport-Security",
    "Content-Security-Policy",
    "Referrer-Policy",
    "X-XSS-Protection",
)
BANNER_HEADERS = ("Server", "X-Powered-By")
_BANNER_TITLE = re.compile(r"(?i)\b(server (leaks|banner|version)|x-powered-by|version disclosure)")
_APP_CLASSES = {"FastAPI", "Starlette"}
MIDDLEWARE_CLASS = "SecurityHeadersMiddleware"
MIDDLEWARE_MODULE = "security_headers"


def header_of(finding: Finding) -> str | None:
    """The response header a finding is about (a hardening header or a banner), or None."""
    if finding.kind != "web":
        return None
    param = (finding.location.param if finding.location else None) or ""
    for h in (*HARDENING_HEADERS, *BANNER_HEADERS):
        if param.lower() == h.lower():
            return h
    rule = str(finding.extra.get("plugin_id") or finding.rule_id)
    if rule in ZAP_HEADER_RULES:
        return ZAP_HEADER_RULES[rule]
    if _BANNER_TITLE.search(finding.title):
        return "X-Powered-By" if "powered" in finding.title.lower() else "Server"
    return None


def header_values(headers: set[str]) -> list[tuple[str, str]]:
    """Values to set: the gateway's defaults, plus ``X-XSS-Protection: 0`` when a finding asked for it."""
    values = SecurityHeaders().headers()
    if "X-XSS-Protection" in headers:
        values.append(("X-XSS-Protection", "0"))  # OWASP: disable the legacy auditor rather than enable it
    return values


def _bytes(text: str) -> str:
    """A double-quoted bytes literal (names and values are printable ASCII, checked by the gateway model)."""
    return 'b"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def middleware_source(values: Sequence[tuple[str, str]], remove: Sequence[str]) -> str:
    set_lines = "".join(f"    ({_bytes(name.lower())}, {_bytes(value)}),\n" for name, value in values)
    drop = ", ".join(_bytes(h.lower()) for h in remove)
    return f'''"""Security response headers and no version banner, for every response of the app.

Added by selfheal's config_hardening recipe. A pure ASGI middleware: it edits
only the response start message, so streaming responses are untouched.
Headers the application already sets are kept; banners are removed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
{set_lines})
REMOVED_HEADERS: frozenset[bytes] = frozenset({{{drop}}})


class {MIDDLEWARE_CLASS}:
    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in REMOVED_HEADERS]
                present = {{k.lower() for k, _ in headers}}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
'''


@dataclass
class _AppSite:
    rel: str
    var: str
    function: cst.FunctionDef | None
    module: cst.Module


class _FindApp(cst.CSTVisitor):
    def __init__(self) -> None:
        self.found: list[tuple[str, cst.FunctionDef | None]] = []
        self._func: list[cst.FunctionDef] = []

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self._func.append(node)

    def leave_FunctionDef(self, original_node: cst.FunctionDef) -> None:
        self._func.pop()

    def visit_Assign(self, node: cst.Assign) -> None:
        value = node.value
        if len(node.targets) != 1 or not isinstance(node.targets[0].target, cst.Name):
            return
        if isinstance(value, cst.Call):
            fn = value.func
            name = (
                fn.value
                if isinstance(fn, cst.Name)
                else fn.attr.value
                if isinstance(fn, cst.Attribute)
                else ""
            )
            if name in _APP_CLASSES:
                self.found.append((node.targets[0].target.value, self._func[-1] if self._func else None))


def find_app(workdir: Path) -> _AppSite | None:
    """The first module (in path order) that constructs a FastAPI/Starlette app, and the variable."""
    for rel, text in app_sources(workdir):
        if "FastAPI(" not in text and "Starlette(" not in text:
            continue
        module = parse(text)
        if module is None:
            continue
        v = _FindApp()
        module.visit(v)
        if v.found:
            var, func = v.found[0]
            return _AppSite(rel, var, func, module)
    return None


def _is_main_guard(stmt: cst.CSTNode) -> bool:
    return isinstance(stmt, cst.If) and "__main__" in code(stmt.test)


def _insert_middleware(site: _AppSite, import_from: str) -> str:
    """The app module's new text: the import and ``<app>.add_middleware(...)`` as the last app setup step."""
    call = cst.parse_statement(f"{site.var}.add_middleware({MIDDLEWARE_CLASS})\n")
    call = call.with_changes(leading_lines=[cst.EmptyLine(indent=False)])
    imp = cst.parse_statement(f"from {import_from} import {MIDDLEWARE_CLASS}\n")
    module = site.module

    if site.function is not None:
        target = site.function

        class AddToFunction(cst.CSTTransformer):
            def leave_FunctionDef(
                self, original: cst.FunctionDef, updated: cst.FunctionDef
            ) -> cst.FunctionDef:
                if original is not target:
                    return updated
                body = list(updated.body.body)
                pos = len(body)
                for i, stmt in enumerate(body):
                    if (
                        isinstance(stmt, cst.SimpleStatementLine)
                        and isinstance(stmt.body[0], cst.Return)
                        and code(stmt.body[0].value or cst.Name("None")) == site.var
                    ):
                        pos = i
                body.insert(pos, call)
                return updated.with_changes(body=updated.body.with_changes(body=body))

        module = module.visit(AddToFunction())
        body = list(module.body)
    else:
        body = list(module.body)
        pos = len(body)
        while pos > 0 and _is_main_guard(body[pos - 1]):
            pos -= 1
        body.insert(pos, call)
    # The import goes right after the last top-level import.
    last_import = -1
    for i, stmt in enumerate(body):
        if isinstance(stmt, cst.SimpleStatementLine) and isinstance(
            stmt.body[0], cst.Import | cst.ImportFrom
        ):
            last_import = i
    body.insert(last_import + 1, imp)
    return module.with_changes(body=body).code


class ConfigHardening(Recipe):
    name = "config_hardening"
    delivery = "image+gateway"

    def applies(self, finding: Finding, service: Service) -> bool:
        return header_of(finding) is not None

    def group_key(self, finding: Finding) -> str:
        return "response-headers"

    def plan(
        self, findings: Sequence[Finding], service: Service, workdir: Path, ctx: PlanContext
    ) -> PatchPlan:
        headers = {h for f in findings if (h := header_of(f))}
        values = header_values(headers)
        remove = list(BANNER_HEADERS)
        gateway = GatewayChange(
            service=service.name,
            set_headers=tuple(values),
            delete_headers=tuple(remove),
            security_headers={
                "enabled": True,
                "remove_banners": True,
                **({"extra": {"X-XSS-Protection": "0"}} if "X-XSS-Protection" in headers else {}),
            },
        )
        paths = web_paths(findings) or ["/"]
        absent = tuple(h for h in HARDENING_HEADERS if h in headers)
        edits: dict[str, str] = {}
        notes: list[str] = []
        site = find_app(workdir)
        banner_in_app = False
        if site is None:
            notes.append("no FastAPI/Starlette application found: the gateway change is the whole fix")
        elif MIDDLEWARE_CLASS in site.module.code:
            notes.append(f"{site.rel} already registers {MIDDLEWARE_CLASS}")
        else:
            mod = module_name(workdir, site.rel)
            parent = mod.rpartition(".")[0]
            new_rel = str(Path(site.rel).with_name(f"{MIDDLEWARE_MODULE}.py").as_posix())
            if (workdir / new_rel).exists():
                notes.append(f"{new_rel} exists and is not ours: the app change needs a human")
            else:
                edits[new_rel] = middleware_source(values, remove)
                edits[site.rel] = _insert_middleware(
                    site, f"{parent}.{MIDDLEWARE_MODULE}" if parent else MIDDLEWARE_MODULE
                )
        if site is not None:
            # A banner the app sets itself is removed by the middleware; uvicorn's own one only when disabled.
            text = "\n".join(t for _r, t in app_sources(workdir))
            banner_in_app = (
                "server_header=False" in text or re.search(r"""["']Server["']\]?\s*=""", text) is not None
            )
        banner_gone = any(h in headers for h in BANNER_HEADERS) and banner_in_app
        oracle = Oracle(headers_absent=absent, headers_present=("Server",) if banner_gone else ())
        replay = (
            tuple(
                AttackRequest(method="GET", path=p, oracle=oracle, source="missing response headers")
                for p in paths
            )
            if edits and oracle != Oracle()
            else ()
        )
        checks = image_checks(service, paths)
        diff = make_diff(workdir, edits)
        verification = Verification(
            tests=checks["tests"] if diff else None,
            exploit_replay=replay,
            rescan=RescanCheck(
                scanner="wapiti",
                modules=("http_headers", "csp"),
                paths=tuple(paths),
                cwes=tuple(sorted({f.cwe for f in findings if f.cwe})),
            )
            if diff
            else None,
            latency=checks["latency"] if diff else None,
        )
        description = "\n".join(
            [
                "Set security response headers and remove version banners.",
                "Gateway: set " + ", ".join(n for n, _ in values) + "; delete " + ", ".join(remove) + ".",
                *([f"App: {MIDDLEWARE_CLASS} registered in {site.rel}"] if edits and site else []),
                *[f"Note: {n}" for n in notes],
            ]
        )
        return self.make_plan(
            findings,
            service,
            ctx,
            title="Harden response headers and remove the Server banner",
            description=description,
            diff=diff,
            verification=verification,
            gateway=gateway,
            delivery="image+gateway" if diff else "gateway",
            details={"headers": sorted(headers), "app_module": site.rel if site else None, "notes": notes},
        )

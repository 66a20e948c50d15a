"""config_hardening: which findings it covers, the gateway data, and the app middleware (run for real)."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

from patches_kit import make_service, wapiti_demo_findings, web, write

from selfheal.gateway.config import SecurityHeaders
from selfheal.patches.diffs import apply_diff
from selfheal.patches.recipes import PlanContext
from selfheal.patches.recipes.config_hardening import ConfigHardening, header_of, middleware_source

FACTORY_APP = textwrap.dedent('''
    """App."""

    from fastapi import FastAPI

    from shop.db import connect


    def create_app() -> FastAPI:
        app = FastAPI()

        @app.get("/")
        def index() -> dict:
            return {}

        return app
''')


def header_findings():
    return [f for f in wapiti_demo_findings() if header_of(f)]


def test_header_findings_are_recognised_from_wapiti_and_zap() -> None:
    assert sorted(header_of(f) for f in header_findings()) == [
        "Content-Security-Policy",
        "X-Content-Type-Options",
        "X-Frame-Options",
    ]
    assert (
        header_of(web(None, "/", None, rule_id="10036", title="Server Leaks Version Information")) == "Server"
    )
    assert header_of(web(693, "/", "Strict-Transport-Security")) == "Strict-Transport-Security"
    assert header_of(web(89, "/items", "q")) is None


def test_factory_app_gets_the_middleware_registered_last(tmp_path: Path) -> None:
    write(tmp_path, {"shop/__init__.py": "", "shop/db.py": "", "shop/main.py": FACTORY_APP})
    plan = ConfigHardening().plan(header_findings(), make_service(), tmp_path, PlanContext())
    assert plan.files == ("shop/main.py", "shop/security_headers.py")
    apply_diff(tmp_path, plan.diff)
    main = (tmp_path / "shop/main.py").read_text()
    assert (
        "from shop.db import connect\nfrom shop.security_headers import SecurityHeadersMiddleware\n" in main
    )
    assert (
        "        return {}\n\n    app.add_middleware(SecurityHeadersMiddleware)\n\n    return app\n" in main
    )
    compile(main, "main.py", "exec")
    assert plan.delivery == "image+gateway"
    assert plan.verification.applicable() == ["tests", "exploit_replay", "rescan", "latency"]
    oracle = plan.verification.exploit_replay[0].oracle
    assert set(oracle.headers_absent) == {
        "Content-Security-Policy",
        "X-Content-Type-Options",
        "X-Frame-Options",
    }
    assert not oracle.reproduced(200, dict(SecurityHeaders().headers()), "")
    assert oracle.reproduced(200, {"Content-Type": "text/html"}, "")


def test_module_level_app_gets_it_before_the_main_guard(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "app.py": "from starlette.applications import Starlette\napp = Starlette()\n"
            "if __name__ == '__main__':\n    pass\n"
        },
    )
    plan = ConfigHardening().plan(header_findings(), make_service(), tmp_path, PlanContext())
    apply_diff(tmp_path, plan.diff)
    text = (tmp_path / "app.py").read_text()
    assert text == (
        "from starlette.applications import Starlette\n"
        "from security_headers import SecurityHeadersMiddleware\napp = Starlette()\n\n"
        "app.add_middleware(SecurityHeadersMiddleware)\nif __name__ == '__main__':\n    pass\n"
    )


def test_gateway_change_matches_what_the_gateway_renders(tmp_path: Path) -> None:
    plan = ConfigHardening().plan(header_findings(), make_service(), tmp_path, PlanContext())
    assert plan.delivery == "gateway" and not plan.diff  # no app in the repository: gateway only
    g = plan.gateway
    assert g is not None and g.service == "shop"
    assert list(g.set_headers) == SecurityHeaders().headers()
    assert g.delete_headers == ("Server", "X-Powered-By")
    assert SecurityHeaders(**g.security_headers).headers() == SecurityHeaders().headers()


def test_idempotent_when_already_registered(tmp_path: Path) -> None:
    write(tmp_path, {"shop/__init__.py": "", "shop/db.py": "", "shop/main.py": FACTORY_APP})
    plan = ConfigHardening().plan(header_findings(), make_service(), tmp_path, PlanContext())
    apply_diff(tmp_path, plan.diff)
    again = ConfigHardening().plan(header_findings(), make_service(), tmp_path, PlanContext())
    assert again.diff == "" and "already registers SecurityHeadersMiddleware" in again.description


def test_middleware_sets_headers_keeps_app_choices_and_drops_banners() -> None:
    ns: dict = {}
    exec(compile(middleware_source(SecurityHeaders().headers(), ["Server", "X-Powered-By"]), "m", "exec"), ns)

    async def app(scope, receive, send):
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"Server", b"demo/1.0"),
                    (b"x-frame-options", b"SAMEORIGIN"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request"}

    asyncio.run(ns["SecurityHeadersMiddleware"](app)({"type": "http"}, receive, send))
    headers = dict(sent[0]["headers"])
    assert b"Server" not in headers and b"server" not in headers
    assert headers[b"x-frame-options"] == b"SAMEORIGIN"  # the app's own choice wins
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert headers[b"content-security-policy"] == b"default-src 'none'; frame-ancestors 'none'"
    assert sent[1]["body"] == b"ok"

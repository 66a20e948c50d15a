"""The selfheal FastAPI app: the Self-Healing page, its JSON API and the metrics.

Mounted by the Airflow API server at ``/selfheal`` (see ``plugin_app`` and
``plugins/selfheal_plugin.py``):

* ``/selfheal/``: the page (static HTML + one script, no inline code), shown
  by Airflow's UI in an iframe under "Self-Healing"; not logged in -> the
  auth manager's login page.
* ``/selfheal/api/v1/...``: read-only JSON, every route behind Airflow's
  authentication (``auth.airflow_auth``); documented at ``/selfheal/openapi.json``.
* ``/selfheal/metrics``: Prometheus text format. Unauthenticated by default
  because Prometheus does not hold an Airflow session: it exposes aggregate
  counts only (labels are severities, statuses, states, scanner and service
  names). Set ``SELFHEAL_METRICS_TOKEN`` to require ``Authorization: Bearer
  <token>`` (Prometheus' ``authorization`` scrape setting).

Every response carries nosniff and a restrictive CSP; the page's CSP allows
only this origin's script and style, no inline code, no eval, and Trusted
Types with no policy, so even a stray ``innerHTML`` assignment would throw.
Scanner output is attacker-controlled and the page renders it as text only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from selfheal import __version__
from selfheal.triage.db import make_engine
from selfheal.web import queries, schemas
from selfheal.web.auth import Auth
from selfheal.web.metrics import DEFAULT_TTL_S, SelfhealCollector, make_registry

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'; "
    "require-trusted-types-for 'script'; trusted-types 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
MAX_ENGINES = 4
# A repeatable query parameter (?severity=high&severity=critical): values are OR-ed.
Multi = Annotated[list[str] | None, Query()]


class Engines:
    """One pooled Engine per database URL (the URL can change when the Airflow connection does)."""

    def __init__(self, url: Callable[[], str]) -> None:
        self._url = url
        self._engines: OrderedDict[str, sa.Engine] = OrderedDict()
        self._lock = threading.Lock()

    def get(self) -> sa.Engine:
        url = self._url()
        with self._lock:
            eng = self._engines.get(url)
            if eng is None:
                kwargs: dict[str, Any] = {}
                if sa.make_url(url).get_backend_name() == "postgresql":
                    kwargs = {"pool_size": 3, "max_overflow": 5, "pool_recycle": 1800}
                eng = self._engines[url] = make_engine(url, **kwargs)
                while len(self._engines) > MAX_ENGINES:
                    _, old = self._engines.popitem(last=False)
                    old.dispose()
            else:
                self._engines.move_to_end(url)
            return eng

    def dispose(self) -> None:
        with self._lock:
            for eng in self._engines.values():
                eng.dispose()
            self._engines.clear()


def _asset_version(*names: str) -> str:
    h = hashlib.sha256()
    for n in names:
        h.update((STATIC_DIR / n).read_bytes())
    return h.hexdigest()[:12]


def _utc(v: datetime | None) -> datetime | None:
    if v is None:
        return None
    return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)


def _range(start: datetime | None, end: datetime | None, days: float) -> tuple[datetime, datetime]:
    end = _utc(end) or queries.utcnow()
    start = _utc(start) or end - timedelta(days=days)
    return start, end


def create_app(
    *,
    database_url: Callable[[], str],
    auth: Auth,
    metrics_token: str | None = None,
    metrics_ttl: float = DEFAULT_TTL_S,
) -> FastAPI:
    """Build the app. ``database_url`` is called per request (cheap), so a changed Airflow
    connection takes effect without a restart; engines are pooled per URL."""
    engines = Engines(database_url)
    registry = make_registry(SelfhealCollector(engines.get, ttl=metrics_ttl))
    token = metrics_token if metrics_token is not None else os.environ.get("SELFHEAL_METRICS_TOKEN") or None
    version = _asset_version("app.js", "app.css")
    page_html = (STATIC_DIR / "index.html").read_text(encoding="utf-8").replace("{{v}}", version)

    app = FastAPI(
        title="selfheal",
        version=__version__,
        description=(
            "Read-only API of the selfheal Self-Healing page: triage queue, finding history, patches, "
            "exposure time series. Authenticate as for Airflow's own API: `Authorization: Bearer <JWT>` "
            "from `POST /auth/token`, or the Airflow UI's session cookie."
        ),
        docs_url=None,  # Swagger UI would load its assets from a CDN: the schema is at /openapi.json
        redoc_url=None,
    )

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", API_CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        if "/api/" in request.url.path or request.url.path.endswith("/metrics"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(queries.QueryError)
    async def bad_query(_request: Request, exc: queries.QueryError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(sa.exc.SQLAlchemyError)
    async def db_unavailable(_request: Request, exc: sa.exc.SQLAlchemyError) -> JSONResponse:
        orig = getattr(exc, "orig", None)
        missing = type(orig).__name__ == "UndefinedTable" or "no such table" in str(orig or exc)
        log.warning("selfheal web: triage database error: %s", str(orig or exc).splitlines()[0][:300])
        detail = (
            "triage database is not migrated: run `selfheal db upgrade`"
            if missing
            else f"triage database unavailable ({type(exc).__name__})"
        )
        return JSONResponse({"detail": detail}, status_code=503)

    @contextmanager
    def connection() -> Iterator[sa.Connection]:
        with engines.get().connect() as conn:
            yield conn

    # ------------------------------------------------------------------ page, assets, metrics

    @app.get("/", include_in_schema=False)
    # A default, not an Annotated hint: hints are strings here (PEP 563) and `auth` is a local name.
    async def page(request: Request, user: Any = Depends(auth.page_user)) -> Response:  # noqa: B008
        if user is None:
            return RedirectResponse(auth.login_url(str(request.url)), status_code=303)
        return HTMLResponse(
            page_html,
            headers={
                "Content-Security-Policy": PAGE_CSP,
                "Cache-Control": "no-store",
                "X-Frame-Options": "SAMEORIGIN",
            },
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get(
        "/metrics",
        tags=["metrics"],
        response_class=Response,
        summary="Prometheus metrics (aggregate counts; see SELFHEAL_METRICS_TOKEN)",
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    def metrics(request: Request) -> Response:
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise HTTPException(401, detail="metrics need Authorization: Bearer <SELFHEAL_METRICS_TOKEN>")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------ JSON API

    api = APIRouter(prefix="/api/v1", dependencies=[Depends(auth.require_user)])
    auth_errors: dict[int | str, dict[str, Any]] = {
        401: {"description": "not authenticated (no or expired token)"},
        403: {"description": "invalid token or not allowed"},
        503: {"description": "triage database unavailable or not migrated"},
    }

    @api.get("/overview", response_model=schemas.Overview, tags=["triage"], responses=auth_errors)
    def overview() -> dict[str, Any]:
        """Headline numbers: active findings by severity, statuses, patch states, scanners."""
        with connection() as conn:
            return queries.overview(conn)

    @api.get("/facets", response_model=schemas.Facets, tags=["triage"], responses=auth_errors)
    def facets() -> dict[str, Any]:
        """The values each filter of the triage queue offers, with counts."""
        with connection() as conn:
            return queries.facets(conn)

    @api.get("/findings", response_model=schemas.FindingPage, tags=["triage"], responses=auth_errors)
    def findings(
        service: Multi = None,
        severity: Multi = None,
        status: Multi = None,
        ssvc: Multi = None,
        kind: Multi = None,
        q: Annotated[str | None, Query(max_length=queries.MAX_TEXT_FILTER, description="text search")] = None,
        sort: Annotated[str, Query(description=f"one of {', '.join(queries.SORT_COLUMNS)}")] = "priority",
        order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
        limit: Annotated[int, Query(ge=1, le=queries.MAX_LIMIT)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """The triage queue, sorted and filtered in SQL, one page at a time (repeat a filter for OR)."""
        filt = queries.QueueFilter(
            service=tuple(service or ()),
            severity=tuple(severity or ()),
            status=tuple(status or ()),
            ssvc=tuple(ssvc or ()),
            kind=tuple(kind or ()),
            q=q,
        )
        with connection() as conn:
            return queries.triage_queue(conn, filt, sort=sort, order=order, limit=limit, offset=offset)

    @api.get(
        "/findings/{finding_id}",
        response_model=schemas.FindingDetail,
        tags=["triage"],
        responses={**auth_errors, 404: {"description": "no such finding"}},
    )
    def finding(finding_id: Annotated[int, PathParam(ge=1)]) -> dict[str, Any]:
        """A finding and its history: sources, observations, reports, status changes, patches, audit."""
        with connection() as conn:
            d = queries.finding_detail(conn, finding_id)
        if d is None:
            raise HTTPException(404, detail=f"finding {finding_id}: no such finding")
        return d

    @api.get("/patches", response_model=schemas.PatchPage, tags=["patches"], responses=auth_errors)
    def patch_list(
        state: Multi = None,
        service: Multi = None,
        limit: Annotated[int, Query(ge=1, le=queries.MAX_LIMIT)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """Patches, newest first, with their sandbox verdicts and rollout results."""
        with connection() as conn:
            return queries.list_patches(
                conn, state=state or (), service=service or (), limit=limit, offset=offset
            )

    @api.get(
        "/patches/{patch_id}",
        response_model=schemas.PatchDetail,
        tags=["patches"],
        responses={**auth_errors, 404: {"description": "no such patch"}},
    )
    def patch(patch_id: Annotated[str, PathParam(max_length=64)]) -> dict[str, Any]:
        """A patch with its plan, every sandbox check (bounded output), rollout verdicts and events, audit."""
        with connection() as conn:
            d = queries.patch_detail(conn, patch_id)
        if d is None:
            raise HTTPException(404, detail=f"patch {patch_id[:64]}: no such patch")
        return d

    @api.get("/series/open", response_model=schemas.OpenSeries, tags=["series"], responses=auth_errors)
    def open_series(
        start: datetime | None = None,
        end: datetime | None = None,
        days: Annotated[float, Query(gt=0, le=3650)] = 30,
        points: Annotated[int, Query(ge=2, le=queries.MAX_SERIES_POINTS)] = 60,
    ) -> dict[str, Any]:
        """Open findings over time (replayed from status changes) and new/mitigated/resolved per interval."""
        s, e = _range(start, end, days)
        with connection() as conn:
            return queries.open_series(conn, s, e, points)

    @api.get(
        "/series/exposure", response_model=schemas.ExposureResponse, tags=["series"], responses=auth_errors
    )
    def exposure(
        start: datetime | None = None,
        end: datetime | None = None,
        days: Annotated[float, Query(gt=0, le=3650)] = 30,
        service: Multi = None,
        severity: Multi = None,
        limit: Annotated[int, Query(ge=1, le=queries.MAX_LIMIT)] = 200,
    ) -> dict[str, Any]:
        """Exposure windows (first seen until mitigated or resolved) in a range, and their statistics."""
        s, e = _range(start, end, days)
        filt = queries.QueueFilter(service=tuple(service or ()), severity=tuple(severity or ()))
        with connection() as conn:
            return queries.exposure_windows(conn, s, e, filt, limit=limit)

    app.include_router(api)
    app.state.engines = engines
    return app

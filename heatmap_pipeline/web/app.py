"""The admin API: ``POST /admin/run-jobs`` (the old manual trigger) and its status endpoint.

Served by uvicorn (``heatmap-pipeline admin`` or ``heatmap-pipeline dev``). The OpenAPI schema is
at ``/openapi.json`` and interactive docs at ``/docs``. The routes are in ``routers/``, their
dependencies (the key check, the validated body) in ``deps.py``; the request state machine they
drive is ``heatmap_pipeline.trigger``, which knows nothing of HTTP.

Lifespan: at start, the warehouse tables are created or migrated (once, before any request), and
the Dagster GraphQL client and the request drivers are made; at shutdown, the drivers stop and
the client is closed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from heatmap_pipeline.orchestration import API_KEY_HEADER
from heatmap_pipeline.web.routers.metrics import build_metrics_router
from heatmap_pipeline.settings import Settings, load_settings
from heatmap_pipeline.trigger.graphql import DagsterGraphQL
from heatmap_pipeline.trigger.launcher import RequestDrivers
from heatmap_pipeline.warehouse.db import get_engine, redact
from heatmap_pipeline.warehouse.migrations import migrate_once
from heatmap_pipeline.web.deps import client_host
from heatmap_pipeline.web.limits import HeaderSizeLimit
from heatmap_pipeline.web.routers import heatmaps, run_jobs

log = logging.getLogger("heatmap_pipeline.admin")
DRIVER_JOIN_SECONDS = 30  # per background driver, at shutdown


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    state = app.state
    settings: Settings = state.settings
    try:
        await run_in_threadpool(migrate_once, state.engine)
    except sa.exc.OperationalError as exc:
        log.error(f"admin API: cannot create or migrate the warehouse tables in {redact(settings.warehouse_url)} "
                  f"({type(exc.orig).__name__}); check WAREHOUSE_DATABASE_URL (default DATABASE_URL) and that the "
                  "database is up, then start the admin API again")
        raise
    api_key = settings.admin_api_keys[0] if settings.admin_api_keys else None
    with contextlib.closing(DagsterGraphQL(settings.dagster_graphql_url, api_key)) as dagster:
        state.dagster = dagster
        state.drivers = RequestDrivers(state.engine, settings, dagster, stop=state.shutting_down)
        yield
        state.shutting_down.set()
        await run_in_threadpool(state.drivers.join, DRIVER_JOIN_SECONDS)


async def _database_down(_request: Request, exc: sa.exc.OperationalError) -> JSONResponse:
    log.error(f"admin API: warehouse database error: {type(exc.orig).__name__}")
    return JSONResponse({"detail": "The warehouse database is unavailable; retry later."}, status_code=503)


async def _access_log(request: Request, call_next):
    # Our own access log: the path without its query string, which might carry a key by mistake.
    started = time.monotonic()
    response = await call_next(request)
    log.info(f"{client_host(request)} {request.method} {request.url.path} {response.status_code} {time.monotonic() - started:.3f}s")
    return response


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    app = FastAPI(
        lifespan=lifespan,
        title="heatmap_pipeline admin API",
        version="1.0",
        description="Manual trigger of the ETL and heatmap jobs (compatible with the old APScheduler runner). "
        f"Authenticate with the `{API_KEY_HEADER}` header (ADMIN_API_KEY).",
    )
    app.state.settings = settings
    app.state.engine = get_engine(settings.warehouse_url)
    # Set on shutdown, by the lifespan or earlier by cli.cmd_admin (before uvicorn waits for open
    # requests): waiting requests answer at once and background drivers stop after their current step.
    app.state.shutting_down = threading.Event()
    app.include_router(build_metrics_router(settings, app.state.engine))  # /metrics, /healthz, /readyz
    app.include_router(run_jobs.router)
    app.include_router(heatmaps.router)  # /api/v1/heatmap (the old reader), /api/v1/heatmaps..., /heatmaps
    app.add_exception_handler(sa.exc.OperationalError, _database_down)
    app.middleware("http")(_access_log)
    if settings.cors_allowed_origins:
        # Browser pages of these origins (the old dashboard) may GET; preflights of others are refused (400).
        # No credentials mode: the old dashboard sends its own Authorization header, not cookies.
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_allowed_origins), allow_methods=["GET"],
                           allow_headers=["authorization", API_KEY_HEADER], max_age=600)
    app.add_middleware(HeaderSizeLimit)  # added last, so it runs first: before the access log and the key check

    def openapi() -> dict:
        # Rebuilt each day: the dates the body may name end today (UTC).
        today = dt.datetime.now(dt.timezone.utc).date()
        if app.openapi_schema is None or app.state.openapi_day != today:
            app.openapi_schema, app.state.openapi_day = None, today
            run_jobs.document_body(FastAPI.openapi(app), settings, today)  # FastAPI.openapi caches what it returns
            heatmaps.document_kinds(app.openapi_schema, settings)
        return app.openapi_schema

    app.openapi = openapi
    return app

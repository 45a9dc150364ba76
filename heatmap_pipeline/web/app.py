"""The admin API: ``POST /admin/run-jobs`` (the old manual trigger) and its status endpoint.

Served by uvicorn (``heatmap-pipeline admin`` or ``heatmap-pipeline dev``). The OpenAPI schema is
at ``/openapi.json`` and interactive docs at ``/docs``. The request body is parsed by
validation.py rather than by FastAPI, so every error names its field in one plain message.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from typing import Literal

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from heatmap_pipeline.trigger import store
from heatmap_pipeline.web.routers.metrics import build_metrics_router
from heatmap_pipeline.web.auth import API_KEY_HEADER, NO_KEY_CONFIGURED, UNAUTHORIZED, matching_key
from heatmap_pipeline.trigger.graphql import DagsterGraphQL
from heatmap_pipeline.trigger.launcher import drive_until_finished
from heatmap_pipeline.trigger.plan import stage_runs
from heatmap_pipeline.trigger.results import request_body
from heatmap_pipeline.trigger.validation import MAX_BODY_BYTES, InvalidTrigger, parse_trigger_body
from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.migrations import ensure_warehouse_schema
from heatmap_pipeline.settings import Settings, load_settings

log = logging.getLogger("heatmap_pipeline.admin")
BACKGROUND_DRIVE_SECONDS = 6 * 3600  # after that, admin_trigger_sensor alone moves the request on


# --- OpenAPI models: the documented shapes (responses are built in results.py) ---------------
class RunJobsBody(BaseModel):
    tasks: list[Literal["etl", "heatmap"]] | None = Field(None, description='Jobs to run, in order etl then heatmap. Default ["etl", "heatmap"].')
    levels: list[str] | None = Field(None, description="Heatmap levels, each one of HEATMAP_LEVELS. Default: all of them.")
    date: str | None = Field(None, description="YYYY-MM-DD (UTC): the ETL and heatmap partition. Default: today.", examples=["2025-11-16"])


class HeatmapLevelResult(BaseModel):
    level: str
    date: str
    sum: float | None = Field(None, description="Total count of the heatmap, once its run succeeded")
    run_id: str | None = None
    status: str
    dagster_status: str | None = None


class JobResult(BaseModel):
    status: str = Field(description="ok, error, running, pending or skipped")
    job: Literal["etl", "heatmap"]
    run_id: str | None = Field(None, description="etl only")
    date: str | None = None
    dagster_status: str | None = None
    results: list[HeatmapLevelResult] | None = Field(None, description="heatmap only: one entry per level")
    error: str | None = None


class RunJobsResponse(BaseModel):
    status: str = Field(description="ok, error (some run failed), running or pending")
    request_id: str
    state: str = Field(description="pending, launching, launched, done or error")
    tasks: list[str]
    levels: list[str]
    date: str
    run_ids: dict[str, str]
    results: list[JobResult]
    status_url: str
    error: str | None = None
    message: str | None = None


class ErrorDetail(BaseModel):
    detail: str


_ERRORS = {
    400: {"model": ErrorDetail, "description": "Body is not JSON"},
    401: {"model": ErrorDetail, "description": "Missing or wrong x-api-key"},
    413: {"model": ErrorDetail, "description": "Body over 64 KB"},
    422: {"model": ErrorDetail, "description": "Invalid field; the message names it and what is allowed"},
    503: {"model": ErrorDetail, "description": "No ADMIN_API_KEY configured, or the warehouse database is down"},
}


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _parse_wait(raw: str | None) -> bool:
    if raw is None or raw.strip().lower() in ("", "1", "true", "yes", "on"):
        return True
    if raw.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise InvalidTrigger(422, "wait", f"{raw[:20]!r} is not a boolean; use wait=true (default) or wait=false")


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise InvalidTrigger(413, "body", f"is {declared} bytes; at most {MAX_BODY_BYTES} bytes (64 KB) are accepted")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise InvalidTrigger(413, "body", f"is over {MAX_BODY_BYTES} bytes (64 KB); send a smaller JSON object")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    engine = get_engine(settings.warehouse_url)
    api_key = settings.admin_api_keys[0] if settings.admin_api_keys else None
    dagster = DagsterGraphQL(settings.dagster_graphql_url, api_key)
    schema_ready = threading.Event()
    # Set on shutdown (see cli.cmd_admin): waiting requests answer at once and background drivers
    # stop after their current step, so no claim is left half-done by a dying process.
    shutting_down = threading.Event()
    background: set[threading.Thread] = set()

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        shutting_down.set()
        for thread in list(background):
            await run_in_threadpool(thread.join, 30)

    def drive_in_background(request_id: str) -> None:
        def run():
            try:
                drive_until_finished(engine, settings, dagster, request_id, BACKGROUND_DRIVE_SECONDS, shutting_down)
            finally:
                background.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=f"admin-request-{request_id}", daemon=True)
        background.add(thread)
        thread.start()

    app = FastAPI(
        lifespan=lifespan,
        title="heatmap_pipeline admin API",
        version="1.0",
        description="Manual trigger of the ETL and heatmap jobs (compatible with the old APScheduler runner). "
        f"Authenticate with the `{API_KEY_HEADER}` header (ADMIN_API_KEY).",
    )
    app.state.settings, app.state.engine, app.state.dagster = settings, engine, dagster
    app.state.shutting_down = shutting_down
    app.include_router(build_metrics_router(settings, engine))  # /metrics, /healthz, /readyz

    def warehouse() -> sa.Engine:
        if not schema_ready.is_set():
            ensure_warehouse_schema(engine)
            schema_ready.set()
        return engine

    try:
        warehouse()  # create admin_trigger_requests now, so a down database shows at start
    except sa.exc.OperationalError as exc:
        log.error(f"admin API: warehouse database unavailable at start ({type(exc.orig).__name__}); will retry per request")

    def authenticate(request: Request) -> JSONResponse | None:
        if not settings.admin_api_keys:
            return JSONResponse({"detail": NO_KEY_CONFIGURED}, status_code=503)
        if matching_key(request.headers.get(API_KEY_HEADER), settings.admin_api_keys) is None:
            log.warning(f"admin API: refused {request.method} {request.url.path} from {_client(request)}: invalid or missing API key")
            return JSONResponse({"detail": UNAUTHORIZED}, status_code=401)
        return None

    @app.exception_handler(InvalidTrigger)
    async def _invalid(_request: Request, exc: InvalidTrigger):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(sa.exc.OperationalError)
    async def _database_down(_request: Request, exc: sa.exc.OperationalError):
        log.error(f"admin API: warehouse database error: {type(exc.orig).__name__}")
        return JSONResponse({"detail": "The warehouse database is unavailable; retry later."}, status_code=503)

    @app.middleware("http")
    async def _access_log(request: Request, call_next):
        # Our own access log: the path without its query string, which might carry a key by mistake.
        started = time.monotonic()
        response = await call_next(request)
        log.info(f"{_client(request)} {request.method} {request.url.path} {response.status_code} {time.monotonic() - started:.3f}s")
        return response

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return {"status": "ok"}

    @app.post(
        "/admin/run-jobs",
        response_model=RunJobsResponse,
        responses={202: {"model": RunJobsResponse, "description": "Accepted: runs launched or pending, not finished yet"}, **_ERRORS},
        openapi_extra={"requestBody": {"required": False, "content": {"application/json": {"schema": RunJobsBody.model_json_schema()}}}},
        summary="Run the ETL and/or heatmap jobs for one date now",
    )
    async def run_jobs(request: Request, wait: str | None = None):
        """Records the request, launches ETL, waits for it, then the heatmaps of each level. With
        `?wait=false`, answers 202 at once; poll `status_url`."""
        denied = authenticate(request)
        if denied:
            return denied
        should_wait = _parse_wait(wait)
        body = await _read_body(request)
        today = dt.datetime.now(dt.timezone.utc).date()
        spec = parse_trigger_body(body, levels=settings.heatmap_levels, first_date=settings.partition_start_date, today=today)
        trigger = await run_in_threadpool(store.create_request, warehouse(), spec, _client(request))
        partitions = [run.partition_key for stage in spec.tasks for run in stage_runs(settings, trigger, stage)]
        log.info(f"admin trigger {trigger.id}: tasks={list(spec.tasks)} partitions={partitions} "
                 f"client={_client(request)} wait={should_wait}")
        timeout = settings.admin_wait_timeout_seconds if should_wait else 0
        result = await run_in_threadpool(drive_until_finished, engine, settings, dagster, trigger.id, timeout, shutting_down)
        if not result.finished and not shutting_down.is_set():
            drive_in_background(trigger.id)
        return await run_in_threadpool(_answer, result)

    @app.get(
        "/admin/run-jobs/{request_id}",
        response_model=RunJobsResponse,
        responses={404: {"model": ErrorDetail}, **_ERRORS},
        summary="State and results of one trigger request",
    )
    async def run_jobs_status(request: Request, request_id: str):
        denied = authenticate(request)
        if denied:
            return denied
        # Read only: the request's background driver and admin_trigger_sensor move it forward.
        result = await run_in_threadpool(store.get_request, warehouse(), request_id[:64])
        if result is None:
            return JSONResponse({"detail": f"request_id: no trigger request {request_id[:64]!r}"}, status_code=404)
        return await run_in_threadpool(_answer, result)

    def _answer(result: store.TriggerRequest) -> JSONResponse:
        body = request_body(engine, result)
        if result.finished:
            return JSONResponse(body, status_code=200)
        if result.state == "pending" and not result.run_ids:
            body["message"] = (f"Recorded; the Dagster webserver ({dagster.ui_url}) could not launch it yet. "
                               "admin_trigger_sensor launches it on its next tick.")
        else:
            body["message"] = f"Runs launched and not finished yet; GET {body['status_url']} for the results."
        return JSONResponse(body, status_code=202)

    return app

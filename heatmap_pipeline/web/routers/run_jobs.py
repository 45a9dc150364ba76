"""``POST /admin/run-jobs`` (the old manual trigger) and ``GET /admin/run-jobs/{request_id}``.

Every route here needs the key (:func:`~heatmap_pipeline.web.deps.require_api_key`, a dependency
of the router): a request without it is answered before its query or body is read.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from heatmap_pipeline.settings import Settings
from heatmap_pipeline.trigger import store
from heatmap_pipeline.trigger.plan import stage_runs
from heatmap_pipeline.trigger.results import RunJobsResponse, request_answer
from heatmap_pipeline.trigger.validation import TriggerSpec, body_schema
from heatmap_pipeline.web.deps import (
    DagsterDep, DriversDep, SettingsDep, WarehouseDep, client_host, known_query_only, require_api_key, trigger_spec,
    wait_for_runs,
)

log = logging.getLogger("heatmap_pipeline.admin")


class ErrorDetail(BaseModel):
    detail: str


router = APIRouter(
    prefix="/admin/run-jobs",
    tags=["run-jobs"],
    dependencies=[Depends(require_api_key), Depends(known_query_only)],
    responses={
        401: {"model": ErrorDetail, "description": "Missing or wrong x-api-key"},
        431: {"model": ErrorDetail, "description": "Request headers over 16 KB in total"},
        503: {"model": ErrorDetail, "description": "No ADMIN_API_KEY configured, or the warehouse database is down"},
    },
)
_NOT_FINISHED = {202: {"model": RunJobsResponse, "description": "Accepted: runs launched or pending, not finished yet"}}


def document_body(openapi: dict, settings: Settings, today: dt.date) -> None:
    """Add the POST body to the OpenAPI schema: :func:`trigger_spec` reads it, not FastAPI, so
    FastAPI cannot know it. RunJobsBody's own schema, with this deployment's levels and dates."""
    openapi["paths"][router.prefix]["post"]["requestBody"] = {
        "required": False,
        "content": {"application/json": {"schema": body_schema(settings.heatmap_levels, settings.partition_start_date, today)}},
    }


def _answer(engine: sa.Engine, ui_url: str, request: store.TriggerRequest, response: Response) -> RunJobsResponse:
    """200 with the results once the request finished; 202 saying what happens next until then."""
    answer = request_answer(engine, request)
    if not request.finished:
        response.status_code = 202
        if request.state == "pending" and not request.run_ids:
            answer.message = (f"Recorded; the Dagster webserver ({ui_url}) could not launch it yet. "
                              "admin_trigger_sensor launches it on its next tick.")
        else:
            answer.message = f"Runs launched and not finished yet; GET {answer.status_url} for the results."
    return answer


@router.post(
    "",
    response_model=RunJobsResponse,
    response_model_exclude_unset=True,
    responses={
        **_NOT_FINISHED,
        400: {"model": ErrorDetail, "description": "Body is not JSON"},
        413: {"model": ErrorDetail, "description": "Body over 64 KB"},
        422: {"model": ErrorDetail, "description": "Invalid field; the message names it and what is allowed"},
    },
    summary="Run the ETL and/or heatmap jobs for one date now",
)
async def run_jobs(
    request: Request,
    response: Response,
    wait: Annotated[bool, Depends(wait_for_runs)],
    spec: Annotated[TriggerSpec, Depends(trigger_spec)],
    settings: SettingsDep,
    engine: WarehouseDep,
    drivers: DriversDep,
):
    """Records the request, launches ETL, waits for it, then the heatmaps of each level. With
    `?wait=false`, answers 202 at once; poll `status_url`."""
    client = client_host(request)
    trigger = await run_in_threadpool(store.create_request, engine, spec, client)
    partitions = [run.partition_key for stage in spec.tasks for run in stage_runs(settings, trigger, stage)]
    log.info(f"admin trigger {trigger.id}: tasks={list(spec.tasks)} partitions={partitions} client={client} wait={wait}")
    # Waiting holds no worker thread (RequestDrivers.answer): many waiters never starve /healthz.
    result = await drivers.answer(trigger.id, settings.admin_wait_timeout_seconds if wait else 0)
    return await run_in_threadpool(_answer, engine, drivers.dagster.ui_url, result, response)


@router.get(
    "/{request_id}",
    response_model=RunJobsResponse,
    response_model_exclude_unset=True,
    responses={**_NOT_FINISHED, 404: {"model": ErrorDetail, "description": "No such request"}},
    summary="State and results of one trigger request",
)
def run_jobs_status(request_id: str, response: Response, engine: WarehouseDep, dagster: DagsterDep):
    # Read only: the request's background driver and admin_trigger_sensor move it forward.
    found = store.get_request(engine, request_id[:64])
    if found is None:
        raise HTTPException(404, f"request_id: no trigger request {request_id[:64]!r}")
    return _answer(engine, dagster.ui_url, found, response)

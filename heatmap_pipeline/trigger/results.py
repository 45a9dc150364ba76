"""The answer of POST /admin/run-jobs and GET /admin/run-jobs/{id}, in the old endpoint's shape.

Old shape, kept: ``{"status": "ok", "results": [{"status": "ok", "job": "etl"}, {"status": "ok",
"job": "heatmap", "results": [{"level": "1", "date": "2025-11-16", "sum": 30.0}]}]}``.
Added: request id, state, run ids and Dagster statuses, and ``error`` messages. A heatmap-only
request whose day was not loaded answers with the ``etl`` entry it ran first, whose ``reason`` says
why. ``levels`` lists heatmap levels only when the request has a heatmap task.

The models below are the shape: :func:`request_answer` fills them and the admin API declares them
as its ``response_model``, serialized without unset fields (an ``error`` or ``message`` that does
not apply is absent, as it always was; a ``run_id`` not known yet is ``null``, as it always was).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field

from heatmap_pipeline.orchestration import FAILED, SUCCESS
from heatmap_pipeline.trigger.store import TriggerRequest
from heatmap_pipeline.trigger.validation import Task
from heatmap_pipeline.warehouse.tables import heatmaps

SlotStatus = Literal["ok", "error", "running", "pending", "skipped"]
_ERROR = "Why the job failed, or that it was skipped; absent while there is nothing to say"


class HeatmapLevelResult(BaseModel):
    level: str
    date: dt.date
    sum: float | None = Field(description="Total count of the heatmap, once its run succeeded")
    run_id: str | None
    status: SlotStatus
    dagster_status: str | None = Field(description="The run's last Dagster status seen (SUCCESS, FAILURE, ...)")


class EtlResult(BaseModel):
    status: SlotStatus
    job: Literal["etl"]
    run_id: str | None
    date: dt.date
    dagster_status: str | None
    reason: str | None = Field(
        None, description="Only when the ETL ran first for a heatmap-only request: why (its day was not loaded)"
    )
    error: str | None = Field(None, description=_ERROR)


class HeatmapResult(BaseModel):
    status: SlotStatus = Field(description="The worst status of its levels")
    job: Literal["heatmap"]
    results: list[HeatmapLevelResult] = Field(description="One entry per level")
    error: str | None = Field(None, description=_ERROR)


class RunJobsResponse(BaseModel):
    status: Literal["ok", "error", "running", "pending"] = Field(description="error: some run failed or could not be launched")
    request_id: str
    state: str = Field(description="pending, launching, launched (the current stage's runs), done or error")
    tasks: list[Task]
    levels: list[str] = Field(description="Heatmap levels; empty for an ETL-only request")
    date: dt.date
    run_ids: dict[str, str] = Field(description='Run id of each slot: "etl", "heatmap:<level>"')
    results: list[Annotated[EtlResult | HeatmapResult, Field(discriminator="job")]] = Field(description="One entry per task, in run order")
    status_url: str
    error: str | None = Field(None, description="Why the request failed; absent unless it did")
    message: str | None = Field(None, description="What happens next, while the request has not finished; absent once it has")


def _slot_status(request: TriggerRequest, slot: str, task: str) -> SlotStatus:
    """ok | error | running | pending | skipped, for one run slot of the request."""
    status = request.run_statuses.get(slot)
    if status == SUCCESS:
        return "ok"
    if status in FAILED:
        return "error"
    if request.run_ids.get(slot):
        # A finished request whose run status was never read (e.g. it errored launching another slot)
        return "running" if not request.finished else "error"
    if request.finished:
        return "error" if request.stage == task and request.state == "error" else "skipped"
    return "pending"


def _task_status(statuses: list[SlotStatus]) -> SlotStatus:
    for status in ("error", "running", "pending", "skipped"):
        if status in statuses:
            return status
    return "ok"


def heatmap_sums(engine: sa.Engine, request: TriggerRequest) -> dict[str, float | None]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(heatmaps.c.level, heatmaps.c.total).where(
                heatmaps.c.date == request.date, heatmaps.c.level.in_(request.levels)
            )
        ).all()
    return {level: (float(total) if total is not None else None) for level, total in rows}


def request_answer(engine: sa.Engine, request: TriggerRequest) -> RunJobsResponse:
    day = request.date
    results: list[EtlResult | HeatmapResult] = []
    for task in request.stages:
        if task == "etl":
            status = _slot_status(request, "etl", task)
            item = EtlResult(status=status, job="etl", run_id=request.run_ids.get("etl"), date=day,
                             dagster_status=request.run_statuses.get("etl"))
            if "etl" not in request.tasks:
                item.reason = f"added before the heatmap: {request.etl_reason}"
        else:
            sums = heatmap_sums(engine, request)
            levels = []
            for level in request.levels:
                slot = f"heatmap:{level}"
                status = _slot_status(request, slot, task)
                levels.append(HeatmapLevelResult(
                    level=level, date=day, sum=sums.get(level) if status == "ok" else None,
                    run_id=request.run_ids.get(slot), status=status, dagster_status=request.run_statuses.get(slot),
                ))
            item = HeatmapResult(status=_task_status([entry.status for entry in levels]), job="heatmap", results=levels)
        if item.status == "error" and request.error:
            item.error = request.error
        elif item.status == "skipped":
            item.error = "not run: an earlier task of this request failed"
        results.append(item)
    overall = {"done": "ok", "error": "error"}.get(request.state, "running" if request.run_ids else "pending")
    answer = RunJobsResponse(
        status=overall, request_id=request.id, state=request.state, tasks=request.tasks, levels=request.levels if "heatmap" in request.tasks else [],
        date=day, run_ids=request.run_ids, results=results, status_url=f"/admin/run-jobs/{request.id}",
    )
    if request.error:
        answer.error = request.error
    return answer

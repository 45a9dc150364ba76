"""The answer of POST /admin/run-jobs and GET /admin/run-jobs/{id}, in the old endpoint's shape.

Old shape, kept: ``{"status": "ok", "results": [{"status": "ok", "job": "etl"}, {"status": "ok",
"job": "heatmap", "results": [{"level": "1", "date": "2025-11-16", "sum": 30.0}]}]}``.
Added: request id, state, run ids and Dagster statuses, and ``error`` messages. A heatmap-only
request whose day was not loaded answers with the ``etl`` entry it ran first, whose ``reason`` says
why. ``levels`` lists heatmap levels only when the request has a heatmap task.
"""

from __future__ import annotations

import sqlalchemy as sa

from heatmap_pipeline.orchestration import FAILED, SUCCESS
from heatmap_pipeline.trigger.store import TriggerRequest
from heatmap_pipeline.warehouse.tables import heatmaps



def _slot_status(request: TriggerRequest, slot: str, task: str) -> str:
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


def _task_status(statuses: list[str]) -> str:
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


def request_body(engine: sa.Engine, request: TriggerRequest) -> dict:
    day = request.date.isoformat()
    results: list[dict] = []
    for task in request.stages:
        if task == "etl":
            status = _slot_status(request, "etl", task)
            item = {"status": status, "job": "etl", "run_id": request.run_ids.get("etl"), "date": day,
                    "dagster_status": request.run_statuses.get("etl")}
            if "etl" not in request.tasks:
                item["reason"] = f"added before the heatmap: {request.etl_reason}"
            statuses = [status]
        else:
            sums = heatmap_sums(engine, request) if "heatmap" in request.tasks else {}
            levels = []
            for level in request.levels:
                slot = f"heatmap:{level}"
                status = _slot_status(request, slot, task)
                levels.append({
                    "level": level, "date": day, "sum": sums.get(level) if status == "ok" else None,
                    "run_id": request.run_ids.get(slot), "status": status,
                    "dagster_status": request.run_statuses.get(slot),
                })
            statuses = [entry["status"] for entry in levels]
            item = {"status": _task_status(statuses), "job": "heatmap", "results": levels}
        if item["status"] == "error" and request.error:
            item["error"] = request.error
        elif item["status"] == "skipped":
            item["error"] = "not run: an earlier task of this request failed"
        results.append(item)
    overall = {"done": "ok", "error": "error"}.get(request.state, "running" if request.run_ids else "pending")
    body = {
        "status": overall,
        "request_id": request.id,
        "state": request.state,
        "tasks": request.tasks,
        "levels": request.levels if "heatmap" in request.tasks else [],
        "date": day,
        "run_ids": request.run_ids,
        "results": results,
        "status_url": f"/admin/run-jobs/{request.id}",
    }
    if request.error:
        body["error"] = request.error
    return body

"""``admin_trigger_sensor``: launches the admin trigger requests the admin API could not launch.

Every tick it looks at the active rows of ``admin_trigger_requests``:
- pending: claim the current stage (one conditional UPDATE, so the endpoint and the sensor never
  both launch it) and yield its runs, each claimed in ``run_claims`` first: a job and partition
  with a queued or running run (whoever launched it) shares that run instead. A heatmap-only request whose day the instance does not report
  as loaded gets its ETL stage first (launcher.etl_first_if_needed, the endpoint's decision too).
  Run keys hold the request id and the run slot, and Dagster never launches a run key twice, so
  yielding them again on a later tick is harmless;
- launching (claimed by the sensor): yield the same run keys again, adopt the runs they created;
- launching (claimed by the endpoint, untouched for STALE_CLAIM_SECONDS): the endpoint died midway;
  adopt its runs and launch the rest;
- launched: when every run of the stage ended, finish the request or move to the next stage
  (ETL before heatmaps).
"""

from __future__ import annotations

import dagster as dg

from heatmap_pipeline.core.clock import utcnow
from heatmap_pipeline.trigger import store
from heatmap_pipeline.trigger.launcher import etl_first_if_needed, settle_stage
from heatmap_pipeline.trigger.plan import stage_runs
from heatmap_pipeline.trigger.store import TriggerRequest
from heatmap_pipeline.defs.partitions import date_partitions
from heatmap_pipeline.defs.resources import WarehouseDatabase
from heatmap_pipeline.orchestration import (
    CLAIM_TAG, PARTITION_TAG, REQUEST_TAG, claimed_run, game_events_status, partition_run, run_failure_reason,
)
from heatmap_pipeline.settings import Settings
from heatmap_pipeline.warehouse import run_claims

SENSOR = "admin_trigger_sensor"
STALE_CLAIM_SECONDS = 120


def _statuses_of(instance: dg.DagsterInstance):
    def statuses(run_ids: list[str]) -> dict[str, str]:
        if not run_ids:
            return {}
        return {run.run_id: run.status.value for run in instance.get_runs(filters=dg.RunsFilter(run_ids=run_ids))}

    return statuses


def _runs_of_request(instance: dg.DagsterInstance, request: TriggerRequest) -> dict[tuple[str, str], str]:
    """(job name, partition key) -> run id, for runs tagged with this request."""
    records = instance.get_run_records(filters=dg.RunsFilter(tags={REQUEST_TAG: request.id}))
    return {(r.dagster_run.job_name, r.dagster_run.tags.get(PARTITION_TAG, "")): r.dagster_run.run_id for r in records}


def _launch(context, engine, settings: Settings, request: TriggerRequest) -> list[dg.RunRequest]:
    """Run requests for the not yet launched runs of the claimed stage; adopt the ones that exist.

    Each run's job and partition is claimed in run_claims first (the run carries the claim tag);
    a partition another launcher holds is shared, or waited for while it is being launched."""
    existing = _runs_of_request(context.instance, request)
    known, run_requests, waiting = dict(request.run_ids), [], []
    for run in stage_runs(settings, request):
        if run.slot in known:
            continue
        run_id = existing.get((run.job_name, run.partition_key))
        if run_id:
            known[run.slot] = run_id
            continue
        token = run.run_key(request)
        claim = run_claims.claim_run(engine, run.job_name, run.partition_key, token, SENSOR,
                                     lambda held, held_run: claimed_run(context.instance, held, held_run))
        if claim.outcome == run_claims.LAUNCHING:
            waiting.append(f"{run.job_name} {run.partition_key}")
            continue
        # A run launched without a claim (Declarative Automation, the UI, a backfill) is shared too.
        run_id = claim.run_id or partition_run(context.instance, run.job_name, run.partition_key)
        if run_id:
            if claim.outcome == run_claims.WON:
                run_claims.record_run(engine, run.job_name, run.partition_key, token, run_id)
            known[run.slot] = run_id
            continue
        run_requests.append(
            dg.RunRequest(
                run_key=token,
                job_name=run.job_name,
                partition_key=run.partition_key,
                tags={**run.tags(request, SENSOR), CLAIM_TAG: token},
            )
        )
    if run_requests or waiting:
        context.log.info(f"request {request.id}: launching stage {request.stage}: {[r.run_key for r in run_requests]}"
                         + (f"; another launcher is launching {', '.join(waiting)}" if waiting else ""))
    else:
        store.mark_launched(engine, request, known)
        context.log.info(f"request {request.id}: stage {request.stage} runs {known}")
    return run_requests


def _etl_first_if_needed(context, engine, settings: Settings, request: TriggerRequest) -> TriggerRequest:
    """On a fresh claim of a heatmap stage: ask the instance whether the day is loaded."""
    dates = date_partitions(settings)
    decided = etl_first_if_needed(engine, request, lambda day: game_events_status(context.instance, dates, day))
    if decided.stage != request.stage:
        context.log.info(f"request {request.id}: etl_job {request.date} first: {decided.etl_reason}")
    return decided


def step(context, engine, settings: Settings, request: TriggerRequest, ui_url: str) -> list[dg.RunRequest]:
    """Move one request forward as far as this tick can; return the runs to launch."""
    if request.state == "launched":
        settle_stage(engine, settings, request, _statuses_of(context.instance), ui_url,
                     lambda run_id: run_failure_reason(context.instance, run_id))
        request = store.get_request(engine, request.id)
    if request.state == "pending" and store.claim(engine, request.id, request.stage, SENSOR):
        claimed = _etl_first_if_needed(context, engine, settings, store.get_request(engine, request.id))
        return _launch(context, engine, settings, claimed)
    if request.state == "launching":
        if request.launched_by == SENSOR:
            return _launch(context, engine, settings, request)  # the same stage again: never re-decided
        age = (utcnow() - request.updated_at).total_seconds()
        if age > STALE_CLAIM_SECONDS and store.take_over(engine, request, SENSOR):
            context.log.warning(f"request {request.id}: claimed by {request.launched_by} {age:.0f}s ago and never launched; taking over")
            taken = store.get_request(engine, request.id)
            if not _runs_of_request(context.instance, taken):  # the endpoint launched nothing: decide now
                taken = _etl_first_if_needed(context, engine, settings, taken)
            return _launch(context, engine, settings, taken)
    return []


def build_admin_trigger_sensor(settings: Settings, etl_job, heatmap_job) -> dg.SensorDefinition:
    ui_url = settings.dagster_graphql_url.rsplit("/graphql", 1)[0]

    @dg.sensor(
        name=SENSOR,
        jobs=[etl_job, heatmap_job],
        minimum_interval_seconds=settings.admin_sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Launches POST /admin/run-jobs requests the admin API could not launch itself "
        "(e.g. the webserver was down), and runs their heatmaps after their ETL.",
    )
    def admin_trigger_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseDatabase):
        engine = warehouse.engine()
        run_requests: list[dg.RunRequest] = []
        for request in store.active_requests(engine):
            run_requests.extend(step(context, engine, settings, request, ui_url))
        if run_requests:
            return run_requests
        return dg.SkipReason("no admin trigger request to launch")

    return admin_trigger_sensor

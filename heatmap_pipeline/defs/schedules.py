"""Schedules replacing the old APScheduler interval jobs.

``etl_schedule`` refreshes today's ETL partition every ETL_INTERVAL_MINUTES, and yesterday's
as well on the first tick after midnight. Today's heatmaps follow the ETL through Declarative
Automation (``heatmap_automation_sensor``): at each HEATMAP_INTERVAL_MINUTES tick they wait until
game_events of today was updated since the tick. Like the old
``max_instances=1``, a tick skips a partition whose previous run is still queued or running
(claimed in ``run_claims``, the table every launcher of these jobs claims in);
like ``coalesce=True``, ticks missed while the daemon was down collapse into one (see
``scheduler.config.max_catchup_runs: 1`` in the dagster.yaml written by ``heatmap-pipeline dev``).
"""

import datetime as dt

import dagster as dg

from heatmap_pipeline.core.cron import interval_cron_schedules, is_first_tick_of_day
from heatmap_pipeline.orchestration import (
    CLAIM_TAG, ETL_JOB, HEATMAP_JOB, INCREMENTAL, LOAD_MODE_TAG, TRIGGER_TAG, claimed_run, partition_run,
)
from heatmap_pipeline.settings import Settings
from heatmap_pipeline.warehouse import run_claims
from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.migrations import migrate_once



def _cron(minutes: int) -> str | list[str]:
    crons = interval_cron_schedules(minutes)
    return crons[0] if len(crons) == 1 else crons  # one string reads better in the UI


def days_to_refresh(tick: dt.datetime, interval_minutes: int, first_day: dt.date) -> list[dt.date]:
    """Today (UTC), preceded by yesterday on the first tick after midnight."""
    tick = tick.astimezone(dt.timezone.utc)
    days = [tick.date()]
    if is_first_tick_of_day(tick, interval_minutes):
        days.insert(0, tick.date() - dt.timedelta(days=1))
    return [day for day in days if day >= first_day]


def _requests(context, engine, job_name, keys: list[str], tick: dt.datetime, schedule_name: str, extra_tags=None):
    """A run request per partition key, each claimed in run_claims first: a key whose job and
    partition has a run in flight, or being launched by another launcher, is skipped."""
    extra_tags = extra_tags or {}
    requests, skipped = [], []
    for key in keys:
        token = f"{job_name}:{key}:{tick.isoformat()}"
        claim = run_claims.claim_run(engine, job_name, str(key), token, schedule_name,
                                     lambda held, held_run: claimed_run(context.instance, held, held_run))
        in_flight = claim.run_id if claim.outcome == run_claims.SHARED else None
        if claim.outcome == run_claims.WON:  # a run launched without a claim (UI, backfill) counts too
            in_flight = claim.run_id or partition_run(context.instance, job_name, str(key))
            if in_flight:
                run_claims.record_run(engine, job_name, str(key), token, in_flight)
        if in_flight or claim.outcome == run_claims.LAUNCHING:
            skipped.append(str(key))
            continue
        requests.append(
            dg.RunRequest(
                run_key=token,
                partition_key=key,
                tags={TRIGGER_TAG: schedule_name, CLAIM_TAG: token, **extra_tags},
            )
        )
    if skipped:
        context.log.info(f"{schedule_name}: still queued or running, not launched again: {', '.join(skipped)}")
    context.log.info(f"{schedule_name} tick {tick.isoformat()}: requesting {[str(r.partition_key) for r in requests]}")
    return requests or dg.SkipReason(f"every partition of this tick is already queued or running: {', '.join(skipped)}")


def build_etl_schedule(settings: Settings, job) -> dg.ScheduleDefinition:
    minutes = settings.etl_interval_minutes

    @dg.schedule(
        name="etl_schedule",
        job=job,
        cron_schedule=_cron(minutes),
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"ETL of today's partition every {minutes} min (ETL_INTERVAL_MINUTES); yesterday's too after midnight.",
    )
    def etl_schedule(context: dg.ScheduleEvaluationContext):
        tick = context.scheduled_execution_time
        keys = [day.isoformat() for day in days_to_refresh(tick, minutes, settings.partition_start_date)]
        # a tick loads what arrived since the day's last load (warehouse/etl/incremental.py)
        # The warehouse's engine from the settings: the claims table lives there (created once per process).
        engine = get_engine(settings.warehouse_url)
        migrate_once(engine)
        return _requests(context, engine, ETL_JOB, keys, tick, "etl_schedule", {LOAD_MODE_TAG: INCREMENTAL})

    return etl_schedule


def build_automation_sensors(settings: Settings) -> list[dg.AutomationConditionSensorDefinition]:
    """The sensors that evaluate the assets' automation conditions (defs/assets/*.py), on by default.

    ``heatmap_automation_sensor``: today's heatmaps every HEATMAP_INTERVAL_MINUTES, each launched only
    once game_events of today was updated after the tick. Declarative Automation replaces the old
    heatmap interval job: a schedule firing at the same minute as the ETL ran ahead of it and published
    the previous load (or zeros). One run per (date, level): several partitions of a multi-partitioned
    asset in one backfill are unreliable upstream, so no backfills here.

    ``demo_week_sensor`` (embedded demo only): loads the demo's missing days on first start, as one
    backfill run (game_events' single-run backfill policy); their heatmaps then follow.
    """
    sensors = [
        dg.AutomationConditionSensorDefinition(
            "heatmap_automation_sensor",
            target=dg.AssetSelection.assets("level_heatmaps"),
            default_status=dg.DefaultSensorStatus.RUNNING,
            minimum_interval_seconds=30,
            emit_backfills=False,
            description="Launches today's level_heatmaps runs at each HEATMAP_INTERVAL_MINUTES tick once "
            "game_events of today was updated since the tick and passed its checks.",
        )
    ]
    if settings.demo_mode:
        sensors.append(
            dg.AutomationConditionSensorDefinition(
                "demo_week_sensor",
                target=dg.AssetSelection.assets("game_events"),
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=30,
                description="Embedded demo only: loads the demo days that were never loaded, in one backfill run.",
            )
        )
    return sensors

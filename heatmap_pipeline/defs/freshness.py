"""Freshness of today's partitions, as WARN checks in the UI: ``today_is_fresh`` on game_events and level_heatmaps.

Dagster's built-in freshness checks and its new FreshnessPolicy judge an asset by its newest
materialization of *any* partition, so a backfill of last month would make today's heatmaps look
fresh. These checks look at today's partitions only: game_events of today must be younger than twice
ETL_INTERVAL_MINUTES, every level's heatmap of today younger than twice HEATMAP_INTERVAL_MINUTES.
``freshness_schedule`` runs them as often as the more frequent of the two jobs.
"""

import dagster as dg

from heatmap_pipeline.core.clock import utcnow
from heatmap_pipeline.core.cron import interval_cron_schedules
from heatmap_pipeline.core.freshness import todays_freshness
from heatmap_pipeline.orchestration import GAME_EVENTS, LEVEL_HEATMAPS, latest_materialization, utc_from_timestamp
from heatmap_pipeline.settings import Settings

CHECK_NAME = "today_is_fresh"
FRESHNESS_CHECKS = [dg.AssetCheckKey(GAME_EVENTS, CHECK_NAME), dg.AssetCheckKey(LEVEL_HEATMAPS, CHECK_NAME)]
FRESHNESS_JOB = "freshness_job"


def _last_update(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str):
    record = latest_materialization(instance, key, partition)
    return utc_from_timestamp(record.timestamp) if record else None


def build_freshness_checks(settings: Settings) -> list[dg.AssetChecksDefinition]:
    """One check per asset (not a multi-asset check): a job or backfill that selects one asset with its
    checks must be able to take this check alone."""

    @dg.asset_check(asset=GAME_EVENTS, name=CHECK_NAME, description="Today's partition was loaded within twice "
                    "ETL_INTERVAL_MINUTES (WARN when not).")
    def game_events_today_is_fresh(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        now = utcnow()
        today = now.date().isoformat()
        etl = todays_freshness(f"game_events {today}", now, _last_update(context.instance, GAME_EVENTS, today),
                               settings.etl_interval_minutes)
        return dg.AssetCheckResult(
            passed=etl.fresh, severity=dg.AssetCheckSeverity.WARN, description=etl.description,
            metadata={"age_minutes": etl.age_minutes if etl.age_minutes is not None else -1.0,
                      "limit_minutes": etl.limit_minutes},
        )

    @dg.asset_check(asset=LEVEL_HEATMAPS, name=CHECK_NAME, description="Every level's heatmap of today was "
                    "refreshed within twice HEATMAP_INTERVAL_MINUTES (WARN when not).")
    def level_heatmaps_today_is_fresh(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        now = utcnow()
        today = now.date().isoformat()
        levels = [
            todays_freshness(f"level_heatmaps {today}|{level}", now,
                             _last_update(context.instance, LEVEL_HEATMAPS, f"{today}|{level}"),
                             settings.heatmap_interval_minutes)
            for level in settings.heatmap_levels
        ]
        stale = [level for level in levels if not level.fresh]
        ages = [level.age_minutes for level in levels if level.age_minutes is not None]
        return dg.AssetCheckResult(
            passed=not stale, severity=dg.AssetCheckSeverity.WARN,
            description="\n".join(level.description for level in (stale or levels)),
            metadata={"stale_levels": len(stale), "oldest_age_minutes": max(ages) if ages else -1.0,
                      "limit_minutes": 2 * settings.heatmap_interval_minutes},
        )

    return [game_events_today_is_fresh, level_heatmaps_today_is_fresh]


def build_freshness_job():
    return dg.define_asset_job(
        FRESHNESS_JOB,
        selection=dg.AssetSelection.checks(*FRESHNESS_CHECKS),
        description="Evaluates today_is_fresh on game_events and level_heatmaps.",
    )


def build_freshness_schedule(settings: Settings, job) -> dg.ScheduleDefinition:
    crons = interval_cron_schedules(min(settings.etl_interval_minutes, settings.heatmap_interval_minutes))
    return dg.ScheduleDefinition(
        name="freshness_schedule",
        job=job,
        cron_schedule=crons[0] if len(crons) == 1 else crons,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Checks that today's game_events and heatmaps are fresh (WARN in the UI when stale).",
    )

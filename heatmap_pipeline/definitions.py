"""The wiring table of contents: ``defs`` is what ``dagster dev`` and the workspace load.

Nothing is built at import: Dagster calls ``defs`` when it loads the code location, and the CLI
imports ``build_definitions`` to build them once from its own settings.
"""

from __future__ import annotations

import dagster as dg

from heatmap_pipeline.defs.alerts import build_run_failure_sensor
from heatmap_pipeline.defs.assets.events import build_game_events_asset, build_game_events_checks
from heatmap_pipeline.defs.assets.heatmaps import build_level_heatmaps_asset, build_level_heatmaps_checks
from heatmap_pipeline.defs.assets.sessions import build_session_stats_asset, build_session_stats_checks
from heatmap_pipeline.defs.freshness import build_freshness_checks, build_freshness_job, build_freshness_schedule
from heatmap_pipeline.defs.jobs import build_etl_job, build_heatmap_job
from heatmap_pipeline.defs.late_data import build_late_data_sensors
from heatmap_pipeline.defs.partitions import date_partitions, heatmap_partitions
from heatmap_pipeline.defs.resources import SourceDatabase, WarehouseDatabase
from heatmap_pipeline.orchestration import db_retry_policy
from heatmap_pipeline.defs.schedules import build_etl_schedule, build_automation_sensors
from heatmap_pipeline.defs.sensors import build_admin_trigger_sensor
from heatmap_pipeline.settings import Settings, get_settings


def build_resources(settings: Settings) -> dict:
    """Resources read their URLs from EnvVar; with DATABASE_URL unset, the embedded demo SQLite."""
    if settings.database_url:
        source = SourceDatabase(url=dg.EnvVar("DATABASE_URL"))
    else:
        source = SourceDatabase(url=settings.source_url, demo=True)
    if settings.warehouse_database_url:
        warehouse = WarehouseDatabase(url=dg.EnvVar("WAREHOUSE_DATABASE_URL"))
    elif settings.database_url:
        warehouse = WarehouseDatabase(url=dg.EnvVar("DATABASE_URL"))
    else:
        warehouse = WarehouseDatabase(url=settings.source_url)
    return {"source": source, "warehouse": warehouse}


def build_definitions(settings: Settings) -> dg.Definitions:
    dates, heatmap_keys = date_partitions(settings), heatmap_partitions(settings)
    etl_job, heatmap_job = build_etl_job(dates), build_heatmap_job(heatmap_keys)
    freshness_job = build_freshness_job()
    return dg.Definitions(
        assets=[
            build_game_events_asset(settings, dates),
            build_session_stats_asset(dates, db_retry_policy(settings)),
            build_level_heatmaps_asset(settings, heatmap_keys, dates),
        ],
        asset_checks=[
            *build_game_events_checks(settings, dates),
            *build_session_stats_checks(dates, db_retry_policy(settings)),
            *build_level_heatmaps_checks(settings, heatmap_keys),
            *build_freshness_checks(settings),
        ],
        jobs=[etl_job, heatmap_job, freshness_job],
        schedules=[build_etl_schedule(settings, etl_job), build_freshness_schedule(settings, freshness_job)],
        sensors=[
            *build_late_data_sensors(settings, etl_job, heatmap_job),
            build_admin_trigger_sensor(settings, etl_job, heatmap_job),
            *build_automation_sensors(settings),
            build_run_failure_sensor(settings),
        ],
        resources=build_resources(settings),
        # Steps are short and database-bound: one process per run, not one per step.
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(get_settings())

"""``session_stats``: one row per session seen that day; also refreshes the old ``leaderboard_aggregates``."""

import dagster as dg

from heatmap_pipeline.core.clock import utcnow
from heatmap_pipeline.defs.assets.common import GROUP, daily_warehouse_check, partition_days
from heatmap_pipeline.defs.resources import WarehouseDatabase
from heatmap_pipeline.orchestration import WAREHOUSE_POOL, is_incremental_run, reports_database_errors
from heatmap_pipeline.warehouse import invariants
from heatmap_pipeline.warehouse.sessions import replace_session_partition, update_session_partition


def build_session_stats_asset(
    partitions: dg.PartitionsDefinition, retry_policy: dg.RetryPolicy | None = None
) -> dg.AssetsDefinition:
    @dg.asset(
        name="session_stats",
        group_name=GROUP,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=["game_events"],
        kinds={"sql"},
        retry_policy=retry_policy,
        pool=WAREHOUSE_POOL,
        description="Per-session stats of one UTC day (table session_stats) and the old "
        "leaderboard_aggregates(session_id, event_count, score_max), one row per session.",
    )
    @reports_database_errors
    def session_stats(context: dg.AssetExecutionContext, warehouse: WarehouseDatabase) -> dg.MaterializeResult:
        now = utcnow()
        sessions = events = leaderboard = day_sessions = 0
        # a scheduled tick folds in only what its ETL added (warehouse/sessions.py); other runs rebuild the day
        tick = is_incremental_run(context.run.tags)
        update = update_session_partition if tick else replace_session_partition
        for day in partition_days(context):
            result = update(warehouse.engine(), day, now)
            context.log.info(f"session_stats {day}: {result.sessions} sessions, {result.events} events written")
            sessions += result.sessions
            events += result.events
            leaderboard += result.leaderboard_rows
            day_sessions += result.day_sessions
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": dg.MetadataValue.int(day_sessions),  # the day's sessions, also after a tick
                "sessions_written": dg.MetadataValue.int(sessions),
                "events_summed": dg.MetadataValue.int(events),
                "leaderboard_rows_upserted": dg.MetadataValue.int(leaderboard),
                "load_mode": "incremental" if tick else "full",
            }
        )

    return session_stats


def build_session_stats_checks(dates: dg.PartitionsDefinition, retry: dg.RetryPolicy) -> list[dg.AssetChecksDefinition]:
    return [
        daily_warehouse_check(
            "session_stats",
            "event_counts_reconciled",
            "Sum of the day's session event counts = clean game_events rows of the day. After a scheduled tick "
            "of today: = the day's clean rows the ETL recorded in etl_watermarks, which rows_reconciled checks "
            "against the tick's increments (metadata 'form').",
            invariants.session_stats_reconciled_after_last_load,
            dates,
            retry,
        )
    ]

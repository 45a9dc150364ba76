"""``game_events``: one UTC day of cleaned, typed events, plus the day's quarantined rows; and its checks.

The checks are blocking: a failed check fails the run, and ``session_stats`` (downstream in
``etl_job``) does not run on a partition that failed them.
"""

import datetime as dt

import dagster as dg

from heatmap_pipeline.core.clock import utcnow
from heatmap_pipeline.core.cleaning import CleaningRules
from heatmap_pipeline.defs.assets.common import (
    GROUP,
    check_partition_keys,
    check_result,
    daily_warehouse_check,
    partition_days,
)
from heatmap_pipeline.defs.resources import SourceDatabase, WarehouseDatabase
from heatmap_pipeline.orchestration import (
    DEMO_FILL_MISSING,
    GAME_EVENTS,
    WAREHOUSE_POOL,
    db_retry_policy,
    reports_database_errors,
    run_start_of_latest_materialization,
)
from heatmap_pipeline.settings import Settings
from heatmap_pipeline.warehouse import invariants
from heatmap_pipeline.warehouse.etl import load_partition


def cleaning_rules(settings: Settings, now: dt.datetime) -> CleaningRules:
    return CleaningRules(
        levels=frozenset(settings.heatmap_levels),
        default_level=settings.heatmap_default_level,
        position_event_types=settings.position_event_types,
        max_payload_bytes=settings.max_payload_bytes,
        future_cutoff=now + dt.timedelta(minutes=settings.future_tolerance_minutes),
        arrival_tolerance=dt.timedelta(minutes=settings.future_tolerance_minutes),
        partition_start=settings.partition_start_date,
    )


def build_game_events_asset(settings: Settings, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    demo_note = " DEMO DATA: DATABASE_URL is unset, so synthetic telemetry is used." if settings.demo_mode else ""

    @dg.asset(
        name="game_events",
        group_name=GROUP,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        kinds={"sql"},
        retry_policy=db_retry_policy(settings),
        # The embedded demo loads its whole week on first start; a real database is loaded by the
        # schedule (today) and by backfills the team chooses (history).
        automation_condition=DEMO_FILL_MISSING if settings.demo_mode else None,
        pool=WAREHOUSE_POOL,
        description="Cleaned, typed events of one UTC day (table game_events); malformed rows go to "
        "quarantined_events with a reason." + demo_note,
    )
    @reports_database_errors
    def game_events(
        context: dg.AssetExecutionContext, source: SourceDatabase, warehouse: WarehouseDatabase
    ) -> dg.MaterializeResult:
        now = utcnow()
        source.prepare(now, context.log)
        totals = {"extracted": 0, "clean": 0, "quarantined": 0}
        reasons: dict[str, int] = {}
        methods = set()
        positions: dict[str, int] = {}
        for day in partition_days(context):
            result = load_partition(
                source.engine(), warehouse.engine(), day, cleaning_rules(settings, now), now, settings.etl_chunk_size
            )
            context.log.info(
                f"game_events {day}: extracted={result.extracted} clean={result.clean} "
                f"quarantined={result.quarantined} {result.reasons} via {result.method}"
            )
            if not result.reconciled:  # never publish a partition that lost rows
                raise RuntimeError(f"{day}: extracted {result.extracted} != clean {result.clean} + quarantined {result.quarantined}")
            for key in totals:
                totals[key] += getattr(result, key)
            for reason, count in result.reasons.items():
                reasons[reason] = reasons.get(reason, 0) + count
            methods.add(result.method)
            for level, count in result.positions.items():
                positions[level] = positions.get(level, 0) + count
        return dg.MaterializeResult(
            metadata={
                "rows_extracted": dg.MetadataValue.int(totals["extracted"]),
                "position_events_by_level": dg.MetadataValue.json(positions),
                "dagster/row_count": dg.MetadataValue.int(totals["clean"]),
                "rows_quarantined": dg.MetadataValue.int(totals["quarantined"]),
                "quarantine_reasons": dg.MetadataValue.json(reasons),
                "load_method": ",".join(sorted(methods)),
                "source": source.display_url,
                "demo_data": settings.demo_mode,
            }
        )

    return game_events


def build_game_events_checks(settings: Settings, dates: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    retry = db_retry_policy(settings)

    @dg.asset_check(
        asset="game_events",
        name="rows_reconciled",
        partitions_def=dates,
        blocking=True,
        retry_policy=retry,
        description="Rows of the day in the source (same day filter as the extraction) = clean + quarantined rows "
        "stored. Rows that arrived while the run worked may wait for the next run; none may be missing.",
    )
    @reports_database_errors
    def game_events_rows_reconciled(
        context: dg.AssetCheckExecutionContext, source: SourceDatabase, warehouse: WarehouseDatabase
    ) -> dg.AssetCheckResult:
        return check_result(
            [
                invariants.game_events_reconciled(
                    source.engine(),
                    warehouse.engine(),
                    dt.date.fromisoformat(key),
                    run_start_of_latest_materialization(context.instance, GAME_EVENTS, key),
                    settings.partition_start_date,
                )
                for key in check_partition_keys(context)
            ]
        )

    unique_event_ids = daily_warehouse_check(
        "game_events",
        "unique_event_ids",
        "No event id is stored twice in the day (ERROR); an id also stored on another day is a WARN.",
        invariants.game_events_unique_ids,
        dates,
        retry,
    )
    return [game_events_rows_reconciled, unique_event_ids]

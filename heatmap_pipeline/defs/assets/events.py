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
    is_incremental_run,
    reports_database_errors,
    run_start_of_latest_materialization,
)
from heatmap_pipeline.settings import Settings
from heatmap_pipeline.warehouse import invariants
from heatmap_pipeline.warehouse.etl import load_partition
from heatmap_pipeline.warehouse.etl.incremental import day_totals


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
        # etl_schedule and late_events_sensor tag their runs: load what arrived since the day's last load
        tick = is_incremental_run(context.run.tags)
        overlap = dt.timedelta(seconds=settings.etl_incremental_overlap_seconds)
        totals = {"extracted": 0, "clean": 0, "quarantined": 0}
        this_load = {"extracted": 0, "clean": 0, "quarantined": 0, "already_loaded": 0}
        reasons: dict[str, int] = {}
        methods, modes, full_reasons, watermarks = set(), set(), [], {}
        positions: dict[str, int] = {}
        for day in partition_days(context):
            result = load_partition(
                source.engine(), warehouse.engine(), day, cleaning_rules(settings, now), now, settings.etl_chunk_size,
                incremental_tick=tick, overlap=overlap,
            )
            context.log.info(
                f"game_events {day} ({result.load_mode}): extracted={result.extracted} clean={result.clean} "
                f"quarantined={result.quarantined} {result.reasons} via {result.method}"
                + (f"; full load because {result.full_reason}" if result.full_reason else "")
            )
            if not result.reconciled:  # never publish a partition that lost rows
                raise RuntimeError(f"{day}: extracted {result.extracted} != clean {result.clean} + quarantined {result.quarantined}")
            for key in this_load:
                this_load[key] += getattr(result, key)
            if result.load_mode == "incremental":  # the day's totals, as a full load reports them
                day_total = day_totals(warehouse.engine(), day)
                day_counts = {"extracted": day_total.clean + day_total.quarantined, "clean": day_total.clean,
                              "quarantined": day_total.quarantined}
                day_reasons = day_total.reasons
            else:
                day_counts, day_reasons = {key: getattr(result, key) for key in totals}, result.reasons
            for key in totals:
                totals[key] += day_counts[key]
            for reason, count in day_reasons.items():
                reasons[reason] = reasons.get(reason, 0) + count
            methods.add(result.method)
            modes.add(result.load_mode)
            if result.full_reason:
                full_reasons.append(result.full_reason)
            watermarks[day.isoformat()] = result.watermark.isoformat() if result.watermark else None
            for level, count in result.positions.items():
                positions[level] = positions.get(level, 0) + count
        metadata = {
            "rows_extracted": dg.MetadataValue.int(totals["extracted"]),
            "position_events_by_level": dg.MetadataValue.json(positions),
            "dagster/row_count": dg.MetadataValue.int(totals["clean"]),
            "rows_quarantined": dg.MetadataValue.int(totals["quarantined"]),
            "quarantine_reasons": dg.MetadataValue.json(reasons),
            "load_method": ",".join(sorted(methods)),
            "load_mode": ",".join(sorted(modes)),
            "rows_extracted_this_load": dg.MetadataValue.int(this_load["extracted"]),
            "rows_clean_this_load": dg.MetadataValue.int(this_load["clean"]),
            "rows_quarantined_this_load": dg.MetadataValue.int(this_load["quarantined"]),
            "rows_already_loaded_this_load": dg.MetadataValue.int(this_load["already_loaded"]),
            "created_at_watermark": dg.MetadataValue.json(watermarks),
            "source": source.display_url,
            "demo_data": settings.demo_mode,
        }
        if full_reasons:
            metadata["full_load_reason"] = "; ".join(full_reasons)
        return dg.MaterializeResult(metadata=metadata)

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
        "stored. Rows that arrived while the run worked may wait for the next run; none may be missing. After a "
        "scheduled tick of today, only what the tick touched: its window's source rows (and every row of their ids) "
        "are stored, and the day's counts in etl_watermarks are the counts before it, less what it removed, plus "
        "what it added (metadata 'form' says which ran; the day's last tick and full loads recount the day).",
    )
    @reports_database_errors
    def game_events_rows_reconciled(
        context: dg.AssetCheckExecutionContext, source: SourceDatabase, warehouse: WarehouseDatabase
    ) -> dg.AssetCheckResult:
        return check_result(
            [
                invariants.game_events_reconciled_after_last_load(
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
        "No event id is stored twice in the day (ERROR); an id also stored on another day is a WARN. After a "
        "scheduled tick of today: game_events' unique key on (event_date, event_id) enforces the first (the day is "
        "searched if the key is missing); other days are looked at after full loads (metadata 'form').",
        invariants.game_events_unique_ids_after_last_load,
        dates,
        retry,
    )
    return [game_events_rows_reconciled, unique_event_ids]

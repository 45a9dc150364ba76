"""Asset checks: the reliability invariants, per partition, shown next to each asset in the UI.

The comparisons live in ``warehouse/invariants.py`` (plain SQL, no Dagster); this module only
wires them. Every check is partitioned like its asset, so the UI shows a result per partition,
and runs in the same run right after the asset (the jobs select them with their assets).

``blocking=True`` on every ERROR-severity check: a failed check fails the run, and in the
same run nothing downstream of the checked asset executes (session_stats waits for the
game_events checks). A failure of severity WARN (a stale heatmap, an id also stored on
another day) is reported and does not block.
"""

import datetime as dt

import dagster as dg

from heatmap_pipeline.assets.heatmaps import fixed_bounds
from heatmap_pipeline.resources import SourceDatabase, WarehouseDatabase
from heatmap_pipeline.retries import db_retry_policy, reports_database_errors
from heatmap_pipeline.settings import Settings
from heatmap_pipeline.warehouse import invariants
from heatmap_pipeline.warehouse.invariants import Invariant

GAME_EVENTS = dg.AssetKey("game_events")


def _days(context: dg.AssetCheckExecutionContext) -> list[str]:
    """The partition keys this check evaluates: one, or a range in a single-run backfill."""
    return [context.partition_key] if context.has_partition_key else list(context.partition_keys)


def _combine(results: list[Invariant]) -> dg.AssetCheckResult:
    """One result for one or several partitions: failed if any failed, with the worst severity."""
    failed = [r for r in results if not r.passed]
    severity = dg.AssetCheckSeverity.ERROR
    if failed and all(r.severity == invariants.WARN for r in failed):
        severity = dg.AssetCheckSeverity.WARN
    shown = failed or results
    metadata = (
        dict(shown[0].metadata) if len(results) == 1 else {"partitions_checked": len(results), "failed": len(failed)}
    )
    description = "\n".join(r.description for r in shown[:20])
    return dg.AssetCheckResult(passed=not failed, severity=severity, description=description, metadata=metadata)


def _latest_materialization(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    return records[0] if records else None


def _utc(timestamp: float | None) -> dt.datetime | None:
    return None if timestamp is None else dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).replace(tzinfo=None)


def run_start_of_latest_materialization(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str
) -> dt.datetime | None:
    """When the run that last wrote this partition started (naive UTC): a lower bound of its extraction."""
    record = _latest_materialization(instance, key, partition)
    if record is None:
        return None
    run = instance.get_run_record_by_id(record.run_id)
    return _utc(run.start_time if run and run.start_time else record.timestamp)


def build_checks(
    settings: Settings, dates: dg.PartitionsDefinition, heatmap_keys: dg.MultiPartitionsDefinition
) -> list:
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
        return _combine(
            [
                invariants.game_events_reconciled(
                    source.engine(),
                    warehouse.engine(),
                    dt.date.fromisoformat(key),
                    run_start_of_latest_materialization(context.instance, GAME_EVENTS, key),
                )
                for key in _days(context)
            ]
        )

    def daily_warehouse_check(asset: str, name: str, description: str, invariant) -> dg.AssetChecksDefinition:
        """A check of each day of ``asset``: ``invariant(warehouse engine, day)`` per partition key."""

        @dg.asset_check(
            asset=asset,
            name=name,
            partitions_def=dates,
            blocking=True,
            retry_policy=retry,
            description=description,
        )
        @reports_database_errors
        def check(context: dg.AssetCheckExecutionContext, warehouse: WarehouseDatabase) -> dg.AssetCheckResult:
            return _combine([invariant(warehouse.engine(), dt.date.fromisoformat(key)) for key in _days(context)])

        return check

    game_events_unique_event_ids = daily_warehouse_check(
        "game_events",
        "unique_event_ids",
        "No event id is stored twice in the day (ERROR); an id also stored on another day is a WARN.",
        invariants.game_events_unique_ids,
    )
    session_stats_event_counts_reconciled = daily_warehouse_check(
        "session_stats",
        "event_counts_reconciled",
        "Sum of the day's session event counts = clean game_events rows of the day.",
        invariants.session_stats_reconciled,
    )

    @dg.asset_check(
        asset="level_heatmaps",
        name="matrix_consistent",
        partitions_def=heatmap_keys,
        blocking=True,
        retry_policy=retry,
        description="Matrix sum = in-bounds position events of the level and day in game_events; no negative "
        f"cells; {settings.heatmap_grid_size}x{settings.heatmap_grid_size} grid; "
        "bounds = HEATMAP_BOUNDS or the day's min/max.",
    )
    @reports_database_errors
    def level_heatmaps_matrix_consistent(
        context: dg.AssetCheckExecutionContext, warehouse: WarehouseDatabase
    ) -> dg.AssetCheckResult:
        key = context.partition_key
        keys = (
            key.keys_by_dimension
            if isinstance(key, dg.MultiPartitionKey)
            else heatmap_keys.get_partition_key_from_str(key).keys_by_dimension
        )
        day, level = keys["date"], keys["level"]
        upstream = _latest_materialization(context.instance, GAME_EVENTS, day)
        return _combine(
            [
                invariants.heatmap_consistent(
                    warehouse.engine(),
                    dt.date.fromisoformat(day),
                    level,
                    settings.heatmap_grid_size,
                    fixed_bounds(settings, level),
                    _utc(upstream.timestamp) if upstream else None,
                )
            ]
        )

    return [
        game_events_rows_reconciled,
        game_events_unique_event_ids,
        session_stats_event_counts_reconciled,
        level_heatmaps_matrix_consistent,
    ]

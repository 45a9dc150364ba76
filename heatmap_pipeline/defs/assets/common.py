"""Helpers the asset modules share: the days of a run, and turning invariants into check results."""

import datetime as dt

import dagster as dg

from heatmap_pipeline.defs.resources import WarehouseDatabase
from heatmap_pipeline.orchestration import reports_database_errors
from heatmap_pipeline.warehouse import invariants
from heatmap_pipeline.warehouse.invariants import Invariant

GROUP = "game_analytics"


def partition_days(context: dg.AssetExecutionContext) -> list[dt.date]:
    """The days of this run: one, or a range when a backfill runs as a single run."""
    return [dt.date.fromisoformat(key) for key in context.partition_keys]


def check_partition_keys(context: dg.AssetCheckExecutionContext) -> list[str]:
    """The partition keys a check evaluates: one, or a range in a single-run backfill."""
    return [context.partition_key] if context.has_partition_key else list(context.partition_keys)


def check_result(results: list[Invariant]) -> dg.AssetCheckResult:
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


def daily_warehouse_check(
    asset: str, name: str, description: str, invariant, dates: dg.PartitionsDefinition, retry: dg.RetryPolicy
) -> dg.AssetChecksDefinition:
    """A blocking check of each day of ``asset``: ``invariant(warehouse engine, day)`` per partition key."""

    @dg.asset_check(
        asset=asset, name=name, partitions_def=dates, blocking=True, retry_policy=retry, description=description
    )
    @reports_database_errors
    def check(context: dg.AssetCheckExecutionContext, warehouse: WarehouseDatabase) -> dg.AssetCheckResult:
        return check_result(
            [invariant(warehouse.engine(), dt.date.fromisoformat(key)) for key in check_partition_keys(context)]
        )

    return check

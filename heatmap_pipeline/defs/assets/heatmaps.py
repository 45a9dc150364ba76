"""``level_heatmaps``: per (date, level) position counts, upserted into the old ``heatmaps`` table."""

import base64
import datetime as dt

import dagster as dg

from heatmap_pipeline.defs.assets.common import GROUP, check_result
from heatmap_pipeline.core.clock import utcnow
from heatmap_pipeline.core.binning import GridBounds
from heatmap_pipeline.core.render import render_heatmap_png
from heatmap_pipeline.defs.resources import WarehouseDatabase
from heatmap_pipeline.orchestration import (
    GAME_EVENTS,
    WAREHOUSE_POOL,
    db_retry_policy,
    latest_materialization,
    reports_database_errors,
    utc_from_timestamp,
)
from heatmap_pipeline.settings import Settings
from heatmap_pipeline.warehouse import invariants
from heatmap_pipeline.warehouse.heatmaps import compute_heatmap, upsert_heatmap


def fixed_bounds(settings: Settings, level: str) -> GridBounds | None:
    bounds = settings.heatmap_bounds.get(level)
    return GridBounds(*bounds.as_list()) if bounds else None


def png_markdown(png: bytes, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def build_level_heatmaps_asset(settings: Settings, partitions: dg.MultiPartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name="level_heatmaps",
        group_name=GROUP,
        partitions_def=partitions,
        deps=["game_events"],
        kinds={"sql", "numpy"},
        retry_policy=db_retry_policy(settings),
        pool=WAREHOUSE_POOL,
        description=f"Position counts of one level on one UTC day on a {settings.heatmap_grid_size}x"
        f"{settings.heatmap_grid_size} grid (table heatmaps; matrix rows = y bins, columns = x bins).",
    )
    @reports_database_errors
    def level_heatmaps(context: dg.AssetExecutionContext, warehouse: WarehouseDatabase) -> dg.MaterializeResult:
        keys = context.partition_key.keys_by_dimension
        day, level = dt.date.fromisoformat(keys["date"]), keys["level"]
        result = compute_heatmap(warehouse.engine(), day, level, settings.heatmap_grid_size, fixed_bounds(settings, level))
        upsert_heatmap(warehouse.engine(), result, utcnow())
        summary = result.summary
        bounds = result.bounds.as_list() if result.bounds else None
        context.log.info(
            f"heatmap level={level} date={day}: sum={summary['sum']} max={summary['max']} "
            f"out_of_bounds={result.out_of_bounds} bounds={bounds} ({result.bounds_source})"
        )
        png = render_heatmap_png(result.matrix, title=f"level {level} - {day} - {int(summary['sum'])} events", bounds=bounds)
        return dg.MaterializeResult(
            metadata={
                "sum": dg.MetadataValue.float(summary["sum"]),
                "max": dg.MetadataValue.float(summary["max"]),
                "nonempty_cells": dg.MetadataValue.int(summary["nonempty_cells"]),
                "position_events": dg.MetadataValue.int(result.points),
                "out_of_bounds": dg.MetadataValue.int(result.out_of_bounds),
                "bounds": dg.MetadataValue.json({"x_min_x_max_y_min_y_max": bounds, "source": result.bounds_source}),
                "grid_size": dg.MetadataValue.int(settings.heatmap_grid_size),
                "preview": png_markdown(png, f"heatmap level {level} {day}"),
            }
        )

    return level_heatmaps


def build_level_heatmaps_checks(
    settings: Settings, heatmap_keys: dg.MultiPartitionsDefinition
) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(
        asset="level_heatmaps",
        name="matrix_consistent",
        partitions_def=heatmap_keys,
        blocking=True,
        retry_policy=db_retry_policy(settings),
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
        upstream = latest_materialization(context.instance, GAME_EVENTS, day)
        return check_result(
            [
                invariants.heatmap_consistent(
                    warehouse.engine(),
                    dt.date.fromisoformat(day),
                    level,
                    settings.heatmap_grid_size,
                    fixed_bounds(settings, level),
                    utc_from_timestamp(upstream.timestamp) if upstream else None,
                )
            ]
        )

    return [level_heatmaps_matrix_consistent]

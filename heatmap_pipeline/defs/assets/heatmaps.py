"""``level_heatmaps``: per (date, level) position counts, upserted into the old ``heatmaps`` table."""

import base64
import dataclasses
import datetime as dt

import dagster as dg

from heatmap_pipeline.defs.assets.common import GROUP, check_result
from heatmap_pipeline.core.clock import utcnow
from heatmap_pipeline.core.levels import POSITIONS
from heatmap_pipeline.core.render import render_heatmap_previews
from heatmap_pipeline.defs.resources import WarehouseDatabase
from heatmap_pipeline.core.cron import interval_cron_schedules
from heatmap_pipeline.orchestration import (
    DEMO_FILL_MISSING,
    LAST_LOAD_FAILED,
    NEVER_LOADED,
    DayLoad,
    day_load,
    GAME_EVENTS,
    WAREHOUSE_POOL,
    db_retry_policy,
    latest_materialization,
    reports_database_errors,
    utc_from_timestamp,
)
from heatmap_pipeline.settings import Settings
from heatmap_pipeline.warehouse import invariants
from heatmap_pipeline.warehouse.heatmap_increments import FULL, refresh_heatmap
from heatmap_pipeline.warehouse.heatmaps import InconsistentHeatmap


# Previews in the UI: the heatmap over the level's art with a title and a colour bar, drawn with
# Pillow (~6-10 ms of CPU each); the read API serves the full matplotlib figure with world axes
# (~36 ms each for a level's three kinds, a third of a run's time when the previews used it).
PREVIEW_WIDTH_PX = 480


def png_markdown(png: bytes, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def upstream_gate_message(load: DayLoad, level: str) -> str | None:
    """Why a heatmap of this day must not be computed now, or None when its events are loaded."""
    if load.state == NEVER_LOADED:
        return (
            f"game_events for {load.day} has never been loaded, so the heatmap of level {level} would read no "
            f"events and publish a false zero; nothing was written. Load the day first: materialize game_events "
            f"{load.day} (UI: Catalog > game_analytics > game_events > Materialize, or Jobs > etl_job), or run "
            f"`heatmap-pipeline backfill --start {load.day} --end {load.day}`, or POST /admin/run-jobs with "
            f'{{"tasks": ["etl", "heatmap"], "date": "{load.day}"}}.'
        )
    if load.state == LAST_LOAD_FAILED:
        return (
            f"the latest load of game_events for {load.day} failed, so its events may be incomplete; the heatmap "
            f"of level {level} was not computed and its previous row is unchanged. Fix the ETL failure (see the "
            f"failed etl_job run of {load.day}) and re-run the ETL of {load.day}; its success refreshes this heatmap."
        )
    return None


def heatmap_automation_condition(settings: Settings) -> dg.AutomationCondition:
    """Today's heatmaps once per HEATMAP_INTERVAL_MINUTES tick, after game_events of today was updated since
    that tick and passed its blocking checks: never ahead of the ETL, whatever the two intervals are."""
    crons = interval_cron_schedules(settings.heatmap_interval_minutes)
    condition = dg.AutomationCondition.on_cron(crons[0], cron_timezone="UTC")
    for cron in crons[1:]:  # an interval that does not divide the hour needs several crons
        condition = condition | dg.AutomationCondition.on_cron(cron, cron_timezone="UTC")
    condition = condition & dg.AutomationCondition.all_deps_blocking_checks_passed()
    if settings.demo_mode:  # the demo's whole week, without a backfill: each loaded day's missing heatmaps
        condition = condition | DEMO_FILL_MISSING
    return condition


def build_level_heatmaps_asset(
    settings: Settings, partitions: dg.MultiPartitionsDefinition, dates: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    @dg.asset(
        name="level_heatmaps",
        group_name=GROUP,
        partitions_def=partitions,
        deps=["game_events"],
        kinds={"sql", "numpy"},
        retry_policy=db_retry_policy(settings),
        automation_condition=heatmap_automation_condition(settings),
        pool=WAREHOUSE_POOL,
        description="Counts of one level on one UTC day per heatmap kind (positions, deaths, jumps, ...: "
        "HEATMAP_LEVELS_FILE), binned in one pass on the level's grid (table heatmap_kinds; positions also "
        "in the old table heatmaps; matrix rows = y bins, columns = x bins).",
    )
    @reports_database_errors
    def level_heatmaps(context: dg.AssetExecutionContext, warehouse: WarehouseDatabase) -> dg.MaterializeResult:
        keys = context.partition_key.keys_by_dimension
        day, level = dt.date.fromisoformat(keys["date"]), keys["level"]
        upstream = day_load(context.instance, keys["date"], dates)
        refusal = upstream_gate_message(upstream, level)
        if refusal:
            raise dg.Failure(description=refusal, allow_retries=False)
        config = settings.level_config(level)
        kinds = [settings.heatmap_kinds[name] for name in config.kinds]
        verify = invariants.heatmap_row_check(day, level, config.grid_x, config.bounds, config.grid_y)

        def refresh(full_reason: str = ""):  # incremental when it can be (warehouse/heatmap_increments.py)
            return refresh_heatmap(
                warehouse.engine(), day, level, config.grid_x, config.bounds, grid_y=config.grid_y, kinds=kinds,
                now=utcnow(), verify=verify, full_reason=full_reason,
            )

        try:
            refreshed = refresh()
        except InconsistentHeatmap as refused:
            # An ETL run may have replaced the day between computing and writing: compute once
            # more. Refused again, the heatmap is wrong, not stale: the run fails, nothing written.
            context.log.warning(f"{refused}; computing it once more")
            refreshed = refresh(f"computed once more: {refused}")
        result = refreshed.result
        summary = result.summary
        bounds = result.bounds.as_list() if result.bounds else None
        how = (
            f"full: {refreshed.reason}" if refreshed.mode == FULL
            else f"incremental: {refreshed.changes_applied} position change(s) applied to the stored heatmap"
        )
        context.log.info(
            f"heatmap level={level} date={day} ({how}): sum={summary['sum']} max={summary['max']} "
            f"out_of_bounds={result.out_of_bounds} bounds={bounds} ({result.bounds_source})"
        )
        previews = {}
        names = list(result.kinds)
        try:  # every kind in one figure: they share the grid, the bounds and the art
            pngs = render_heatmap_previews(
                [result.kinds[name].matrix for name in names],
                bounds=result.bounds,
                titles=[f"{config.name} - {day} - {name}: {int(result.kinds[name].summary['sum'])} events" for name in names],
                background=config.background,
                width_px=PREVIEW_WIDTH_PX,
            )
        except (ValueError, OSError) as exc:  # the rows are written: a picture we cannot draw is said, not fatal
            context.log.warning(f"no previews for level {level} {day}: {exc}")
            previews["preview_error"] = dg.MetadataValue.text(str(exc))
            pngs = []
        for name, png in zip(names, pngs):
            if name == POSITIONS:  # the key and text the UI showed before kinds
                previews["preview"] = png_markdown(png, f"heatmap level {level} {day}")
            else:
                previews[f"preview_{name}"] = png_markdown(png, f"{name} heatmap level {level} {day}")
        return dg.MaterializeResult(
            metadata={
                "sum": dg.MetadataValue.float(summary["sum"]),
                "heatmap_mode": dg.MetadataValue.text(refreshed.mode),
                **(
                    {"full_reason": dg.MetadataValue.text(refreshed.reason)} if refreshed.mode == FULL
                    else {"changes_applied": dg.MetadataValue.int(refreshed.changes_applied)}
                ),
                "max": dg.MetadataValue.float(summary["max"]),
                "nonempty_cells": dg.MetadataValue.int(summary["nonempty_cells"]),
                "position_events": dg.MetadataValue.int(result.points),
                "out_of_bounds": dg.MetadataValue.int(result.out_of_bounds),
                "bounds": dg.MetadataValue.json({"x_min_x_max_y_min_y_max": bounds, "source": result.bounds_source}),
                "grid_size": dg.MetadataValue.int(config.grid_x),
                "grid_y": dg.MetadataValue.int(config.grid_y),
                "game_events_run_id": dg.MetadataValue.text(upstream.run_id),
                "game_events_materialized_at": dg.MetadataValue.timestamp(
                    upstream.materialized_at.replace(tzinfo=dt.timezone.utc)
                ),
                **previews,
                "kinds": dg.MetadataValue.json(
                    {
                        name: {**kind.summary, "events": kind.events, "sessions": kind.sessions,
                               "out_of_bounds": kind.out_of_bounds}
                        for name, kind in result.kinds.items()
                    }
                ),
                **{
                    f"sum_{name}": dg.MetadataValue.float(kind.summary["sum"])
                    for name, kind in result.kinds.items()
                },
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
        "cells; the level's grid (levels file or HEATMAP_GRID_SIZE); "
        "bounds = the levels file's or HEATMAP_BOUNDS, else the day's min/max. Every configured kind has its "
        "heatmap_kinds row on the same grid and bounds, within the positions.",
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
        config = settings.level_config(level)
        positions = invariants.heatmap_consistent(
            warehouse.engine(),
            dt.date.fromisoformat(day),
            level,
            config.grid_x,
            config.bounds,
            utc_from_timestamp(upstream.timestamp) if upstream else None,
            grid_y=config.grid_y,
        )
        kinds = invariants.heatmap_kinds_consistent(warehouse.engine(), dt.date.fromisoformat(day), level, config.kinds)
        if positions.passed and not kinds.passed:
            return check_result([kinds])
        if positions.passed:  # one result for the partition: the positions' verdict, and the kinds'
            positions = dataclasses.replace(positions, description=f"{positions.description}; {kinds.description}")
        return check_result([positions])

    return [level_heatmaps_matrix_consistent]

"""Asset jobs: usable from the Launchpad, by schedules, the admin trigger and backfills."""

from __future__ import annotations

import dagster as dg

from heatmap_pipeline.defs.freshness import FRESHNESS_CHECKS
from heatmap_pipeline.orchestration import ETL_JOB, HEATMAP_JOB


def build_etl_job(partitions: dg.PartitionsDefinition) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        ETL_JOB,
        selection=dg.AssetSelection.assets("game_events", "session_stats") - dg.AssetSelection.checks(*FRESHNESS_CHECKS),
        partitions_def=partitions,
        description="Extract, clean and load one UTC day of events, then its session stats.",
    )


def build_heatmap_job(partitions: dg.MultiPartitionsDefinition) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        HEATMAP_JOB,
        selection=dg.AssetSelection.assets("level_heatmaps") - dg.AssetSelection.checks(*FRESHNESS_CHECKS),
        partitions_def=partitions,
        description="Heatmap of one level on one UTC day (one run per date x level).",
    )

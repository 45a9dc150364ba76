"""Partitions: UTC days from PARTITION_START_DATE (today included), and the configured levels
(HEATMAP_LEVELS, then the levels file's own: settings.heatmap_levels holds both).

Changing HEATMAP_LEVELS changes ``level_partitions``: new levels appear as unmaterialized
partitions, removed levels disappear from the UI (their rows in ``heatmaps`` are kept, and
their run history stays in the Dagster instance).
"""

from __future__ import annotations

import dagster as dg

from heatmap_pipeline.settings import Settings


def date_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    # end_offset=1: today's partition exists, so every-N-minutes runs can refresh it
    return dg.DailyPartitionsDefinition(
        start_date=settings.partition_start_date.isoformat(), timezone="UTC", end_offset=1
    )


def level_partitions(settings: Settings) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(list(settings.heatmap_levels))


def heatmap_partitions(settings: Settings) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition({"date": date_partitions(settings), "level": level_partitions(settings)})

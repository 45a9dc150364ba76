"""The ETL path between two databases: stream the day from the source through the Python cleaner.

The day is read in chunks (ordered by id, so duplicates are adjacent) through
:class:`~heatmap_pipeline.core.cleaning.EventCleaner` and each chunk is bulk-loaded (``COPY`` into
PostgreSQL, ``executemany`` into SQLite), all in one write transaction.
"""

from __future__ import annotations

import collections
import datetime as dt

import sqlalchemy as sa

from heatmap_pipeline.core.binning import PositionRanges
from heatmap_pipeline.core.cleaning import CleaningRules, EventCleaner
from heatmap_pipeline.warehouse.etl.writing import EtlResult, begin_day, finish_day, load_page_cache, write_cleaned_chunks
from heatmap_pipeline.warehouse.source import extract_day_query


def load_partition_python(
    source: sa.Engine,
    warehouse: sa.Engine,
    day: dt.date,
    rules: CleaningRules,
    now: dt.datetime,
    chunk_size: int = 50_000,
) -> EtlResult:
    """Stream the day from ``source`` in chunks, clean, and replace the partition in one transaction."""
    cleaner = EventCleaner(day, rules, now)
    loader = "copy" if warehouse.dialect.name == "postgresql" else "executemany"
    result = EtlResult(partition_date=day, method=f"python ({loader})")
    reasons: collections.Counter[str] = collections.Counter()
    query = extract_day_query(source, day, rules.partition_start)
    with warehouse.begin() as write, load_page_cache(write), source.connect() as read:
        target = begin_day(write, day)
        ranges = PositionRanges()
        rows = read.execution_options(stream_results=True, yield_per=chunk_size).execute(query).mappings()
        result.clean, result.quarantined = write_cleaned_chunks(
            write, rows.partitions(chunk_size), cleaner, reasons, target, ranges
        )
        result.positions = finish_day(write, day, target, ranges)
    result.extracted = cleaner.extracted
    result.reasons = dict(sorted(reasons.items()))
    return result

"""The day-writing toolkit both ETL paths share: open a day, bulk-load rows, record stats, close it.

A day is replaced in one transaction that first takes the partition's advisory lock; a failure
rolls everything back. On PostgreSQL the clean rows go into a fresh table that replaces the day's
partition at the end (``pg_partitions.py``); on SQLite the day's rows are deleted and inserted.
The same transaction records the day's ``position_stats``.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import io
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

import sqlalchemy as sa

from heatmap_pipeline.core.binning import PositionRanges
from heatmap_pipeline.core.cleaning import EventCleaner
from heatmap_pipeline.warehouse.db import SQLITE_CACHE_KIB
from heatmap_pipeline.warehouse.etl import pg_partitions
from heatmap_pipeline.warehouse.locks import lock_partition
from heatmap_pipeline.warehouse.position_changes import reset_day
from heatmap_pipeline.warehouse.tables import etl_watermarks, game_events, position_stats, quarantined_events


@dataclass
class EtlResult:
    partition_date: dt.date
    extracted: int = 0
    clean: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    method: str = "python"
    residue: int = 0  # SQL path: rows handed to the Python cleaner
    positions: dict[str, int] = field(default_factory=dict)  # per level: position events loaded
    load_mode: str = "full"  # or "incremental" (warehouse/etl/incremental.py)
    watermark: dt.datetime | None = None  # the day's created_at watermark after this load
    full_reason: str = ""  # a run that asked for an incremental load: why it loaded the day in full
    already_loaded: int = 0  # incremental: rows of the window the day already held as they are
    # A full load that read its watermark's figures itself, in its own snapshot (PostgreSQL SQL
    # path; source.arrival_bounds): the newest created_at (naive UTC) and the rows with none.
    newest_arrival: dt.datetime | None = None
    rows_without_arrival: int | None = None

    @property
    def reconciled(self) -> bool:
        return self.extracted == self.clean + self.quarantined

# SQLite page cache for a day's load. Its two game_events indexes are written in an order that is
# not key order, which with the default 2 MiB re-reads pages: 64 MiB took the 1M-event load from
# 22.9 s to 19.5 s (BENCHMARKS.md).
SQLITE_LOAD_CACHE_KIB = 64 * 1024

@contextlib.contextmanager
def load_page_cache(conn: sa.Connection) -> Iterator[None]:
    """SQLite: the load's page cache while the block runs, the default (db.SQLITE_CACHE_KIB) again
    before the connection goes back to the pool, whatever happens. Nothing elsewhere."""
    if conn.dialect.name != "sqlite":
        yield
        return
    conn.exec_driver_sql(f"PRAGMA cache_size={-SQLITE_LOAD_CACHE_KIB}")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size={-SQLITE_CACHE_KIB}")

def begin_day(conn: sa.Connection, day: dt.date) -> sa.TableClause:
    """Take the day's write lock, empty its quarantine, and return the table its clean rows go to.

    PostgreSQL: a fresh table, swapped in by :func:`finish_day`. SQLite: ``game_events`` itself,
    emptied of the day.
    """
    lock_partition(conn, "game_events", day)
    conn.execute(quarantined_events.delete().where(quarantined_events.c.partition_date == day))
    if conn.dialect.name == "postgresql":
        return pg_partitions.create_stage(conn, day)
    conn.execute(game_events.delete().where(game_events.c.event_date == day))
    return game_events

def record_position_stats(conn: sa.Connection, day: dt.date, ranges: PositionRanges) -> None:
    """Per level: the day's position count and x/y range, for the heatmaps' automatic bounds.
    Every full load of the day calls this in its transaction, so it also resets what ticks build on:
    it empties the day's position change log (heatmaps of the day binned before this load are
    recomputed in full) and deletes the day's watermark. The load's new watermark is written after
    this transaction commits (incremental.after_full_load); should that write fail, the next tick
    finds no watermark and loads the day in full, instead of carrying the old load's counts on."""
    reset_day(conn, day)
    conn.execute(etl_watermarks.delete().where(etl_watermarks.c.event_date == day))
    conn.execute(position_stats.delete().where(position_stats.c.event_date == day))
    rows = [
        {"event_date": day, "level": level, **vars(summary)} for level, summary in sorted(ranges.by_level.items())
    ]
    if rows:
        conn.execute(position_stats.insert(), rows)

def finish_day(conn: sa.Connection, day: dt.date, target: sa.TableClause, ranges: PositionRanges) -> dict[str, int]:
    """Record the day's position stats and, on PostgreSQL, swap the loaded table in; return the
    position events per level."""
    record_position_stats(conn, day, ranges)
    if conn.dialect.name == "postgresql":
        pg_partitions.swap_in(conn, day, target)
    return {level: summary.positions for level, summary in sorted(ranges.by_level.items())}

_GAME_EVENT_COLUMNS = [c.name for c in game_events.columns]

_QUARANTINE_COLUMNS = [c.name for c in quarantined_events.columns if c.name != "id"]

def _copy_text(value) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, dt.datetime):
        value = value.isoformat(sep=" ")
    elif isinstance(value, float):
        value = repr(value)
    text = str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")

def _copy_rows(conn: sa.Connection, table: sa.TableClause, columns: list[str], rows: list[dict]) -> None:
    """PostgreSQL COPY FROM STDIN through the connection's own transaction (psycopg 3 or psycopg2)."""
    cursor = conn.connection.cursor()
    statement = f'COPY "{table.name}" ({", ".join(columns)}) FROM STDIN'
    try:
        if hasattr(cursor, "copy"):  # psycopg 3
            with cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row([row[c] for c in columns])
        else:  # psycopg2: COPY's text format
            buffer = io.StringIO()
            for row in rows:
                buffer.write("\t".join(_copy_text(row[c]) for c in columns))
                buffer.write("\n")
            buffer.seek(0)
            cursor.copy_expert(statement, buffer)
    finally:
        cursor.close()

def bulk_insert(conn: sa.Connection, table: sa.TableClause, rows: list[dict], columns: list[str]) -> None:
    """Insert many rows: COPY on PostgreSQL, executemany elsewhere."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        _copy_rows(conn, table, columns, rows)
    else:
        conn.execute(table.insert(), rows)

def insert_cleaned(conn: sa.Connection, target: sa.TableClause, clean_rows: list[dict], rejected: list[dict]) -> None:
    """Bulk-load the cleaner's output: clean rows into ``target``, rejected rows into the quarantine."""
    bulk_insert(conn, target, clean_rows, _GAME_EVENT_COLUMNS)
    bulk_insert(conn, quarantined_events, rejected, _QUARANTINE_COLUMNS)

def write_cleaned_chunks(
    conn: sa.Connection,
    chunks: Iterable[Iterable[Mapping]],
    cleaner: EventCleaner,
    reasons: collections.Counter,
    target: sa.TableClause,
    ranges: PositionRanges,
) -> tuple[int, int]:
    """Clean each chunk of raw rows and bulk-load the results into ``target`` and the quarantine;
    return (clean, quarantined)."""
    clean = quarantined = 0
    for chunk in chunks:
        clean_rows, rejected = cleaner.clean(chunk)
        ranges.add_rows(clean_rows)
        insert_cleaned(conn, target, clean_rows, rejected)
        reasons.update(q["reason"] for q in rejected)
        clean += len(clean_rows)
        quarantined += len(rejected)
    return clean, quarantined

def partition_counts(warehouse: sa.Engine, day: dt.date) -> dict:
    """What is stored for a partition now: clean rows, quarantined rows by reason."""
    with warehouse.connect() as conn:
        clean = conn.execute(
            sa.select(sa.func.count()).select_from(game_events).where(game_events.c.event_date == day)
        ).scalar_one()
        reasons = quarantine_by_reason(conn, day)
    return {"clean": clean, "quarantined": sum(reasons.values()), "reasons": reasons}


def quarantine_by_reason(conn: sa.Connection, day: dt.date) -> dict[str, int]:
    """The partition's quarantined rows counted by reason, in reason order."""
    return dict(
        conn.execute(
            sa.select(quarantined_events.c.reason, sa.func.count())
            .where(quarantined_events.c.partition_date == day)
            .group_by(quarantined_events.c.reason)
            .order_by(quarantined_events.c.reason)
        ).all()
    )

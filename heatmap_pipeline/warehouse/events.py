"""Extract one UTC day of ``events``, clean it, and replace the ``game_events`` partition.

:func:`load_partition` is the one entry point. It picks:

* the SQL path (``events_sql.py``) when ``events`` lives in the warehouse database: the
  transformation runs as ``INSERT ... SELECT``; only rows SQL cannot prove clean come back
  through the Python cleaner, in the same transaction;
* the Python path otherwise: stream the day in chunks (ordered by id, so duplicates are
  adjacent) through :class:`EventCleaner`, bulk-loading each chunk (``COPY`` into PostgreSQL,
  ``executemany`` into SQLite), all in one transaction.

Either way the partition is replaced in one transaction that first takes the partition's
advisory lock; a failure rolls everything back. On PostgreSQL the clean rows go into a fresh
table that replaces the day's partition at the end (``day_partitions.py``); on SQLite the day's
rows are deleted and inserted. The same transaction records the day's ``position_stats``.
"""

from __future__ import annotations

import collections
import datetime as dt
import io
import logging
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import sqlalchemy as sa

from heatmap_pipeline.core.binning import PositionRanges
from heatmap_pipeline.core.cleaning import CleaningRules, EventCleaner
from heatmap_pipeline.schema import SOURCE_EVENT_COLUMNS, game_events, position_stats, quarantined_events
from heatmap_pipeline.warehouse import day_partitions
from heatmap_pipeline.warehouse.locks import lock_partition

log = logging.getLogger(__name__)


class SourceSchemaError(RuntimeError):
    """The source ``events`` table is missing, or lacks columns we need."""


@dataclass
class EtlResult:
    partition_date: dt.date
    extracted: int = 0
    clean: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    method: str = "python"
    residue: int = 0  # SQL path: rows handed to the Python cleaner

    @property
    def reconciled(self) -> bool:
        return self.extracted == self.clean + self.quarantined


def check_source_table(engine: sa.Engine, table_name: str = "events") -> None:
    """Fail with a message naming what is missing, before any work starts."""
    inspector = sa.inspect(engine)
    if not inspector.has_table(table_name):
        raise SourceSchemaError(
            f"source table {table_name!r} does not exist in {engine.url.render_as_string(hide_password=True)}; "
            f"expected columns: {', '.join(SOURCE_EVENT_COLUMNS)}"
        )
    present = {column["name"] for column in inspector.get_columns(table_name)}
    missing = [name for name in SOURCE_EVENT_COLUMNS if name not in present]
    if missing:
        raise SourceSchemaError(f"source table {table_name!r} is missing column(s): {', '.join(missing)}")


def day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time.min)
    return start, start + dt.timedelta(days=1)


def source_events_table() -> sa.TableClause:
    """A lightweight, untyped view of the source table: drivers hand back native values."""
    return sa.table("events", *(sa.column(name) for name in SOURCE_EVENT_COLUMNS))


SQLITE_DATE_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*"


def day_filter(engine: sa.Engine, src: sa.TableClause, day: dt.date):
    """Rows of one UTC day: by timestamp (index-friendly), or by created_at (arrival) when the
    timestamp is NULL, a day or more after the arrival, or (SQLite) text without a date.

    On SQLite timestamps are text; comparing with 'YYYY-MM-DD' strings works for both the
    'T' and ' ' separators.
    """
    start, end = day_bounds(day)
    if engine.dialect.name == "sqlite":
        start, end = start.date().isoformat(), end.date().isoformat()
    ts, created = src.c.timestamp, src.c.created_at
    # A row stamped a day or more after it arrived is filed under its arrival day (the cleaner
    # quarantines it as future_timestamp); otherwise it could wait in a day no run has reached.
    if engine.dialect.name == "sqlite":
        far_future = sa.func.julianday(ts) >= sa.func.julianday(created) + 1
    else:
        far_future = ts >= created + sa.literal_column("INTERVAL '1 day'")
    by_arrival = [ts.is_(None), far_future]
    if engine.dialect.name == "sqlite":
        # Text that does not start with a date would match no day: file it under its arrival
        # day, where the cleaner quarantines it as unparseable_timestamp.
        by_arrival.append(sa.and_(sa.func.typeof(ts) == "text", sa.not_(ts.op("GLOB")(SQLITE_DATE_GLOB))))
    # Two index-friendly branches: the timestamp's day, or the arrival (created_at) day.
    return sa.or_(
        sa.and_(ts >= start, ts < end, sa.not_(sa.func.coalesce(far_future, sa.false()))),
        sa.and_(sa.or_(*by_arrival), created >= start, created < end),
    )


def extract_day_query(engine: sa.Engine, day: dt.date) -> sa.Select:
    src = source_events_table()
    columns = [src.c[name] for name in SOURCE_EVENT_COLUMNS if name != "payload"]
    # JSON, JSONB or text payloads all arrive as text, so size checks see the stored bytes.
    columns.append(sa.cast(src.c.payload, sa.Text).label("payload"))
    return sa.select(*columns).where(day_filter(engine, src, day)).order_by(src.c.id, src.c.created_at)


def begin_day(conn: sa.Connection, day: dt.date) -> sa.TableClause:
    """Take the day's write lock, empty its quarantine, and return the table its clean rows go to.

    PostgreSQL: a fresh table, swapped in by :func:`finish_day`. SQLite: ``game_events`` itself,
    emptied of the day.
    """
    lock_partition(conn, "game_events", day)
    conn.execute(quarantined_events.delete().where(quarantined_events.c.partition_date == day))
    if conn.dialect.name == "postgresql":
        return day_partitions.create_stage(conn, day)
    conn.execute(game_events.delete().where(game_events.c.event_date == day))
    return game_events


def record_position_stats(conn: sa.Connection, day: dt.date, ranges: PositionRanges) -> None:
    """Per level: the day's position count and x/y range, for the heatmaps' automatic bounds."""
    conn.execute(position_stats.delete().where(position_stats.c.event_date == day))
    rows = [
        {"event_date": day, "level": level, **vars(summary)} for level, summary in sorted(ranges.by_level.items())
    ]
    if rows:
        conn.execute(position_stats.insert(), rows)


def finish_day(conn: sa.Connection, day: dt.date, target: sa.TableClause, ranges: PositionRanges) -> None:
    """Record the day's position stats and, on PostgreSQL, swap the loaded table in."""
    record_position_stats(conn, day, ranges)
    if conn.dialect.name == "postgresql":
        day_partitions.swap_in(conn, day, target)


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
        bulk_insert(conn, target, clean_rows, _GAME_EVENT_COLUMNS)
        bulk_insert(conn, quarantined_events, rejected, _QUARANTINE_COLUMNS)
        reasons.update(q["reason"] for q in rejected)
        clean += len(clean_rows)
        quarantined += len(rejected)
    return clean, quarantined


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
    query = extract_day_query(source, day)
    with warehouse.begin() as write, source.connect() as read:
        target = begin_day(write, day)
        ranges = PositionRanges()
        rows = read.execution_options(stream_results=True, yield_per=chunk_size).execute(query).mappings()
        result.clean, result.quarantined = write_cleaned_chunks(
            write, rows.partitions(chunk_size), cleaner, reasons, target, ranges
        )
        finish_day(write, day, target, ranges)
    result.extracted = cleaner.extracted
    result.reasons = dict(sorted(reasons.items()))
    return result


def same_database(source: sa.Engine, warehouse: sa.Engine) -> bool:
    return source.url.render_as_string(hide_password=False) == warehouse.url.render_as_string(hide_password=False)


def partition_counts(warehouse: sa.Engine, day: dt.date) -> dict:
    """What is stored for a partition now: clean rows, quarantined rows by reason."""
    with warehouse.connect() as conn:
        clean = conn.execute(
            sa.select(sa.func.count()).select_from(game_events).where(game_events.c.event_date == day)
        ).scalar_one()
        reasons = dict(
            conn.execute(
                sa.select(quarantined_events.c.reason, sa.func.count())
                .where(quarantined_events.c.partition_date == day)
                .group_by(quarantined_events.c.reason)
            ).all()
        )
    return {"clean": clean, "quarantined": sum(reasons.values()), "reasons": reasons}


def load_partition(
    source: sa.Engine,
    warehouse: sa.Engine,
    day: dt.date,
    rules: CleaningRules,
    now: dt.datetime,
    chunk_size: int = 50_000,
) -> EtlResult:
    """Replace the ``game_events`` partition of ``day``; the one entry point the asset calls.

    Same database: the SQL path (falls back to Python when the source's column types are ones
    it does not handle). Two databases: the streaming Python path with bulk loads.
    """
    if same_database(source, warehouse):
        from heatmap_pipeline.warehouse.events_sql import UnsupportedSource, load_partition_sql

        try:
            return load_partition_sql(warehouse, day, rules, now, chunk_size)
        except UnsupportedSource as exc:
            log.warning("SQL fast path not usable for this source (%s); using the Python path", exc)
    return load_partition_python(source, warehouse, day, rules, now, chunk_size)

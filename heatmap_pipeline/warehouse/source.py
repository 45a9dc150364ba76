"""The game backend's ``events`` table, as we read it: its columns, the one-day filter, and arrivals.

Everything that knows how the source is shaped or which rows make up a UTC day lives here, so the
extraction, the reconciliation check and the late-events sensor all use the same filter. No Dagster here.

The late-events read (:func:`arrivals_since`) is one index-friendly query (``created_at > :since``;
the source should have an index on ``created_at``, see ``ix_events_created_at`` in tables.py), grouped
by the UTC day of the event's timestamp - the same day the extraction files the row under. Rows whose
timestamp is NULL are filed under their created_at day, so they are never late and are left out.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from heatmap_pipeline.core.cleaning import Rejected, to_utc_naive
from heatmap_pipeline.warehouse.db import text_sql
from heatmap_pipeline.warehouse.tables import SOURCE_EVENT_COLUMNS


class SourceSchemaError(RuntimeError):
    """The source ``events`` table is missing, or lacks columns we need."""

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
    """A lightweight, untyped view of the source table: drivers hand back native values, and
    values are written as given (the demo writes JSON text and SQLite timestamp text)."""
    return sa.table("events", *(sa.column(name) for name in SOURCE_EVENT_COLUMNS))

SQLITE_DATE_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*"

def day_filter(dialect: str, src: sa.TableClause, day: dt.date) -> sa.ColumnElement[bool]:
    """Rows of one UTC day: by timestamp (index-friendly), or by created_at (arrival) when the
    timestamp is NULL, a day or more after the arrival, or (SQLite) text without a date.

    The one definition of "the source rows of a day": the Python path's extraction, the SQL
    path's statements (through :func:`day_filter_text`) and the reconciliation check's recount
    all use it. ``dialect`` is the engine's ``dialect.name``.

    On SQLite timestamps are text; comparing with 'YYYY-MM-DD' strings works for both the
    'T' and ' ' separators.
    """
    start, end = day_bounds(day)
    if dialect == "sqlite":
        start, end = start.date().isoformat(), end.date().isoformat()
    ts, created = src.c.timestamp, src.c.created_at
    # A row stamped a day or more after it arrived is filed under its arrival day (the cleaner
    # quarantines it as future_timestamp); otherwise it could wait in a day no run has reached.
    if dialect == "sqlite":
        far_future = sa.func.julianday(ts) >= sa.func.julianday(created) + 1
    else:
        far_future = ts >= created + sa.literal_column("INTERVAL '1 day'")
    by_arrival = [ts.is_(None), far_future]
    if dialect == "sqlite":
        # Text that does not start with a date would match no day: file it under its arrival
        # day, where the cleaner quarantines it as unparseable_timestamp.
        by_arrival.append(sa.and_(sa.func.typeof(ts) == "text", sa.not_(ts.op("GLOB")(SQLITE_DATE_GLOB))))
    # Two index-friendly branches: the timestamp's day, or the arrival (created_at) day.
    return sa.or_(
        sa.and_(ts >= start, ts < end, sa.not_(sa.func.coalesce(far_future, sa.false()))),
        sa.and_(sa.or_(*by_arrival), created >= start, created < end),
    )

def day_filter_text(dialect: str, day: dt.date, alias: str = "e") -> str:
    """:func:`day_filter` over ``events AS <alias>`` as SQL for the SQL path's ``sa.text``
    statements: parenthesized, the day's bounds inline (literals, so no parameters to pass)."""
    return "(" + text_sql(day_filter(dialect, source_events_table().alias(alias), day), dialect, literal_binds=True) + ")"

# The columns the extraction hands the cleaner, in this order (a quarantined row's raw_row JSON
# keeps it, so both ETL paths must select them so): the source's order, the payload last.
EXTRACTED_COLUMNS = (*(c for c in SOURCE_EVENT_COLUMNS if c != "payload"), "payload")

def extract_day_query(engine: sa.Engine, day: dt.date) -> sa.Select:
    src = source_events_table()
    # JSON, JSONB or text payloads all arrive as text, so size checks see the stored bytes.
    columns = [sa.cast(src.c[c], sa.Text).label(c) if c == "payload" else src.c[c] for c in EXTRACTED_COLUMNS]
    return sa.select(*columns).where(day_filter(engine.dialect.name, src, day)).order_by(src.c.id, src.c.created_at)


def sqlite_timestamp_text(moment: dt.datetime) -> str:
    """A naive-UTC moment as text in the form the demo writes SQLite's (text) timestamps in,
    'YYYY-MM-DD HH:MM:SS.ffffff': fixed width, so text comparisons order it like time."""
    return moment.isoformat(sep=" ", timespec="microseconds")


def created_at_value(dialect: str, moment: dt.datetime):
    """A naive-UTC moment in the form ``events.created_at`` compares with: the demo's text on
    SQLite (a text column there), an aware UTC datetime elsewhere."""
    if dialect == "sqlite":
        return sqlite_timestamp_text(moment)
    return moment.replace(tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class Arrivals:
    day: dt.date  # UTC day of the events' timestamps
    rows: int  # rows of that day with created_at after ``since``
    newest_created_at: dt.datetime  # naive UTC


def arrivals_since(source: sa.Engine, since: dt.datetime) -> list[Arrivals]:
    """Rows created after ``since`` (naive UTC), per UTC day of their timestamp, oldest day first."""
    src = source_events_table()
    if source.dialect.name == "sqlite":
        day = sa.func.substr(src.c.timestamp, 1, 10)  # the extraction's text-range day filter, same prefix
    else:
        day = sa.cast(src.c.timestamp, sa.Date)  # sessions run in UTC (db.get_engine)
    query = (
        sa.select(day.label("day"), sa.func.count().label("rows"), sa.func.max(src.c.created_at).label("newest"))
        .where(src.c.created_at > created_at_value(source.dialect.name, since), src.c.timestamp.is_not(None))
        .group_by(day)
    )
    with source.connect() as conn:
        result = conn.execute(query).all()
    arrivals = []
    for raw_day, rows, newest in result:
        try:
            day_value = raw_day if isinstance(raw_day, dt.date) else dt.date.fromisoformat(str(raw_day))
            newest_value = to_utc_naive(newest)
        except (ValueError, Rejected):
            continue  # an unparseable timestamp has no day; the extraction quarantines it wherever it lands
        arrivals.append(Arrivals(day_value, int(rows), newest_value))
    return sorted(arrivals, key=lambda a: a.day)

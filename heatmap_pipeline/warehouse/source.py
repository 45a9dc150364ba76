"""The game backend's ``events`` table, as we read it: its columns, the one-day filter, and arrivals.

Everything that knows how the source is shaped or which rows make up a UTC day lives here, so the
extraction, the reconciliation check and the late-events sensor all use the same filter. No Dagster here.

Which day owns a row (the *filing rule*; :func:`day_filter` selects one day's rows by it, :func:`filed_day`
computes it per row, and every source row has exactly one such day from PARTITION_START_DATE on):

* its timestamp's UTC day, when the timestamp names a day (a time in the years 1-9999; on SQLite,
  text starting with a valid date) on or after PARTITION_START_DATE - unless it lies a day or more
  after a usable arrival;
* else its arrival day (created_at's), when created_at is usable: it names a day on or after
  PARTITION_START_DATE. So a row stamped in 1970, in the year 10000, 'infinity', or a day or more
  after it arrived, or with a NULL or unparseable timestamp, is quarantined by the run of the day it
  arrived on;
* else (neither names a usable day: both NULL, both before PARTITION_START_DATE, ...) the first
  partition, PARTITION_START_DATE itself, where it is quarantined for its timestamp.

A row with a valid timestamp and a created_at before PARTITION_START_DATE (1970) is filed under its
timestamp's day, where it is quarantined as ``future_timestamp`` (stamped decades after it arrived).

The late-events read (:func:`arrivals_since`) is one index-friendly query (``created_at > :since``;
the source should have an index on ``created_at``, see ``ix_events_created_at`` in tables.py), grouped
by the filing day. Rows whose created_at Python cannot hold (infinity) have no arrival time: the sensor
cannot see them arrive (``heatmap-pipeline reconcile`` names them if their day was loaded before).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from heatmap_pipeline.core.cleaning import UNHOLDABLE_TIME_COLUMNS, CleaningRules, Rejected, to_utc_naive
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

# The times Python's datetime holds, as PostgreSQL literals (sessions run in UTC, db.get_engine).
# PostgreSQL also holds infinity, -infinity, BC and years up to 294276: such a value is compared
# in SQL only, and handed to Python as text (:func:`extracted_columns`).
HOLDABLE_FROM, HOLDABLE_UNTIL = "0001-01-01 00:00:00+00", "10000-01-01 00:00:00+00"


def _midnight(dialect: str, day: dt.date) -> sa.ColumnElement:
    """The UTC midnight starting ``day`` as ``timestamp``/``created_at`` compare with it: SQLite's
    text 'YYYY-MM-DD', a timestamp elsewhere."""
    if dialect == "sqlite":
        return sa.literal(day.isoformat())
    return sa.literal(dt.datetime.combine(day, dt.time.min))


def names_a_day(dialect: str, column: sa.ColumnElement) -> sa.ColumnElement[bool]:
    """The time names a UTC day we can read: PostgreSQL, within the years 1-9999; SQLite, text
    starting with a valid date (not '2025-02-30'). NULL (unknown) when the value is NULL."""
    if dialect == "sqlite":
        prefix = sa.func.substr(column, 1, 10)
        # date() keeps '2025-02-30' as it is; a modifier makes it normalize the date ('2025-03-02')
        valid = sa.func.date(prefix, "+0 days") == prefix
        return sa.and_(sa.func.typeof(column) == "text", column.op("GLOB")(SQLITE_DATE_GLOB), valid)
    return sa.and_(column >= sa.literal_column(f"'{HOLDABLE_FROM}'"), column < sa.literal_column(f"'{HOLDABLE_UNTIL}'"))


@dataclass(frozen=True)
class _Filing:
    """The filing rule's conditions over one alias of ``events`` (never NULL)."""

    arrival_ok: sa.ColumnElement[bool]  # created_at names a day on or after the start
    stamped_ahead: sa.ColumnElement[bool]  # timestamp a day or more after a usable arrival
    by_timestamp: sa.ColumnElement[bool]  # filed under the timestamp's day


def _filing(dialect: str, src: sa.TableClause, start: dt.date | None) -> _Filing:
    ts, created = src.c.timestamp, src.c.created_at
    arrival = names_a_day(dialect, created)
    stamped = names_a_day(dialect, ts)
    if start is not None:
        arrival = sa.and_(arrival, created >= _midnight(dialect, start))
        stamped = sa.and_(stamped, ts >= _midnight(dialect, start))
    arrival_ok = sa.func.coalesce(arrival, sa.false())
    # A row stamped a day or more after it arrived is filed under its arrival day (the cleaner
    # quarantines it as future_timestamp); otherwise it could wait in a day no run has reached.
    if dialect == "sqlite":  # the cheap comparison first: SQLite stops at the first false term
        far_future = sa.func.julianday(ts) >= sa.func.julianday(created) + 1
        stamped_ahead = sa.func.coalesce(sa.and_(far_future, arrival_ok), sa.false())
    else:  # (created_at + 1 day would overflow at PostgreSQL's own limit: only for usable ones)
        far_future = sa.case((arrival_ok, ts >= created + sa.literal_column("INTERVAL '1 day'")))
        stamped_ahead = sa.func.coalesce(sa.and_(arrival_ok, far_future), sa.false())
    by_timestamp = sa.and_(sa.func.coalesce(stamped, sa.false()), sa.not_(stamped_ahead))
    return _Filing(arrival_ok, stamped_ahead, by_timestamp)


def day_filter(dialect: str, src: sa.TableClause, day: dt.date, start: dt.date | None = None) -> sa.ColumnElement[bool]:
    """The source rows ``day`` owns by the filing rule (module docstring); ``start`` is
    PARTITION_START_DATE (None: no first partition, rows naming no usable day belong to none).

    The one definition of "the source rows of a day": the Python path's extraction, the SQL
    path's statements (through :func:`day_filter_text`) and the reconciliation check's recount
    all use it. ``dialect`` is the engine's ``dialect.name``. Index-friendly: a timestamp range
    or a created_at range (and, on the first day only, the rows before or beyond every range).

    On SQLite timestamps are text; comparing with 'YYYY-MM-DD' strings works for both the
    'T' and ' ' separators, and such a range only holds text starting with that day.
    """
    if start is not None and day < start:
        return sa.false()  # no partition
    lo, hi = _midnight(dialect, day), _midnight(dialect, day + dt.timedelta(days=1))
    ts, created = src.c.timestamp, src.c.created_at
    filing = _filing(dialect, src, start)
    in_range = sa.and_(ts >= lo, ts < hi)
    branches = [
        sa.and_(in_range, sa.not_(filing.stamped_ahead)),
        # A row with its timestamp on this day too is in the branch above (it cannot be a day
        # ahead of an arrival on the same day): the cheap range test spares the full rule for it.
        sa.and_(created >= lo, created < hi, sa.not_(sa.func.coalesce(in_range, sa.false())), sa.not_(filing.by_timestamp)),
    ]
    if start is not None and day == start:
        if dialect == "sqlite":
            branches.append(sa.and_(sa.not_(filing.arrival_ok), sa.not_(filing.by_timestamp)))
        else:  # the same, spelt as ranges an index can serve
            first, until = _midnight(dialect, start), sa.literal_column(f"'{HOLDABLE_UNTIL}'")
            branches.append(
                sa.and_(
                    sa.or_(ts.is_(None), ts < first, ts >= until),
                    sa.or_(created.is_(None), created < first, created >= until),
                )
            )
    return sa.or_(*branches)


def filed_day(dialect: str, src: sa.TableClause, start: dt.date | None = None) -> sa.ColumnElement:
    """The day that owns each row by the filing rule (:func:`day_filter` of that day selects it):
    a date on PostgreSQL, 'YYYY-MM-DD' text on SQLite; NULL only without a ``start``."""
    filing = _filing(dialect, src, start)
    if dialect == "sqlite":
        day_of = lambda column: sa.func.substr(column, 1, 10)  # noqa: E731 - the text ranges' own day
        first = sa.literal(start.isoformat()) if start else None
    else:
        day_of = lambda column: sa.cast(column, sa.Date)  # noqa: E731 - sessions run in UTC
        first = sa.cast(sa.literal(start.isoformat()), sa.Date) if start else None
    return sa.case(
        (filing.by_timestamp, day_of(src.c.timestamp)), (filing.arrival_ok, day_of(src.c.created_at)), else_=first
    )


def day_filter_text(dialect: str, day: dt.date, alias: str = "e", start: dt.date | None = None) -> str:
    """:func:`day_filter` over ``events AS <alias>`` as SQL for the SQL path's ``sa.text``
    statements: parenthesized, the day's bounds inline (literals, so no parameters to pass)."""
    return "(" + text_sql(day_filter(dialect, source_events_table().alias(alias), day, start), dialect, literal_binds=True) + ")"

# The columns the extraction hands the cleaner, in this order (a quarantined row's raw_row JSON
# keeps it, so both ETL paths must select them so): the source's order, the payload last.
EXTRACTED_COLUMNS = (*(c for c in SOURCE_EVENT_COLUMNS if c != "payload"), "payload")

def extracted_columns(dialect: str, table: sa.TableClause) -> list[sa.ColumnElement]:
    """What the extraction selects from ``table`` (``events``, or the SQL path's residue): the
    ``EXTRACTED_COLUMNS``; on PostgreSQL a time Python cannot hold is NULL there and comes as text
    in its ``UNHOLDABLE_TIME_COLUMNS`` column, last (the driver would fail the whole day on it)."""
    columns = []
    for name in EXTRACTED_COLUMNS:
        column = table.c[name]
        if name == "payload":  # JSON, JSONB or text payloads all arrive as text: size checks see the stored bytes
            columns.append(sa.cast(column, sa.Text).label(name))
        elif name in UNHOLDABLE_TIME_COLUMNS and dialect == "postgresql":
            columns.append(sa.case((names_a_day(dialect, column), column)).label(name))
        else:
            columns.append(column)
    if dialect == "postgresql":
        for name, carrier in UNHOLDABLE_TIME_COLUMNS.items():
            column = table.c[name]
            unholdable = sa.and_(column.is_not(None), sa.not_(names_a_day(dialect, column)))
            columns.append(sa.case((unholdable, sa.cast(column, sa.Text))).label(carrier))
    return columns


def extract_day_query(engine: sa.Engine, day: dt.date, start: dt.date | None = None) -> sa.Select:
    src = source_events_table()
    dialect = engine.dialect.name
    return (
        sa.select(*extracted_columns(dialect, src))
        .where(day_filter(dialect, src, day, start))
        .order_by(src.c.id, src.c.created_at)
    )


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


def arrival_floor(dialect: str, rules: CleaningRules):
    """created_at values below this (or NULL) are no arrival time: such rows never fall in an
    incremental tick's window (PARTITION_START_DATE's midnight, in created_at's form)."""
    start = rules.partition_start or dt.date(1, 1, 1)
    moment = dt.datetime.combine(start, dt.time.min)
    return start.isoformat() if dialect == "sqlite" else moment.replace(tzinfo=dt.timezone.utc)


def arrival_bounds(dialect: str, rules: CleaningRules, now: dt.datetime) -> dict:
    """What a full load's watermark counts (``etl.incremental.before_full_load`` reads it), for a
    load that reads it itself (the PostgreSQL SQL path), as parameters: the newest ``created_at``
    in ``[arrival_floor, arrivals_until]``, and the rows whose ``created_at`` is NULL or before
    ``arrival_floor``."""
    return {"arrival_floor": arrival_floor(dialect, rules), "arrivals_until": created_at_value(dialect, now)}


@dataclass(frozen=True)
class Arrivals:
    day: dt.date  # UTC day of the events' timestamps
    rows: int  # rows of that day with created_at after ``since``
    newest_created_at: dt.datetime  # naive UTC


def arrivals_since(source: sa.Engine, since: dt.datetime, start: dt.date | None = None) -> list[Arrivals]:
    """Rows created after ``since`` (naive UTC), per filing day (``start``: PARTITION_START_DATE),
    oldest day first. Rows whose created_at names no day (infinity; SQLite text that is no date)
    have no arrival time and are left out."""
    src = source_events_table()
    dialect = source.dialect.name
    day = filed_day(dialect, src, start)
    query = (
        sa.select(day.label("day"), sa.func.count().label("rows"), sa.func.max(src.c.created_at).label("newest"))
        .where(src.c.created_at > created_at_value(dialect, since), names_a_day(dialect, src.c.created_at))
        .group_by(day)
    )
    with source.connect() as conn:
        result = conn.execute(query).all()
    arrivals = []
    for raw_day, rows, newest in result:
        try:
            day_value = raw_day if isinstance(raw_day, dt.date) else dt.date.fromisoformat(str(raw_day))
            newest_value = to_utc_naive(newest)
        except (ValueError, TypeError, Rejected):
            continue  # (no start: a row owned by no day)
        arrivals.append(Arrivals(day_value, int(rows), newest_value))
    return sorted(arrivals, key=lambda a: a.day)


# The old system's ``events`` table on PostgreSQL as its first migration creates it (the shape a
# migrating team really has; ../shared/reference/old-system.md): uuid ids with foreign keys to
# ``users`` and ``sessions``, timestamptz times, a ``json`` payload, and its six plain indexes -
# none on created_at. We never create it in a real deployment; the tests and the benchmark build
# their sources with it. ``payload_type``: json (the old system's), jsonb or text.
OLD_SYSTEM_PAYLOAD_TYPES = ("json", "jsonb", "text")


def old_system_source_ddl(payload_type: str = "json") -> list[str]:
    if payload_type not in OLD_SYSTEM_PAYLOAD_TYPES:
        raise ValueError(f"payload_type {payload_type!r}: use one of {', '.join(OLD_SYSTEM_PAYLOAD_TYPES)}")
    return [
        "CREATE TABLE users (id uuid PRIMARY KEY)",
        "CREATE TABLE sessions (id uuid PRIMARY KEY)",
        f"""CREATE TABLE events (
            id uuid PRIMARY KEY,
            user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            session_id uuid REFERENCES sessions (id) ON DELETE CASCADE,
            event_type varchar(100) NOT NULL,
            event_name varchar(255) NOT NULL,
            event_category varchar(100),
            payload {payload_type} NOT NULL,
            "timestamp" timestamptz NOT NULL DEFAULT now(),
            created_at timestamptz NOT NULL DEFAULT now()
        )""",
        *(
            f'CREATE INDEX ix_events_{name} ON events ("{name}")'
            for name in ("id", "user_id", "session_id", "event_type", "event_category", "timestamp")
        ),
    ]

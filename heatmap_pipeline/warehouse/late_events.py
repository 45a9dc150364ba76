"""Which days of the source received rows since a moment: the read behind the late-events sensor. No Dagster here.

One index-friendly query (``created_at > :since``; the source should have an index on
``created_at``, see ``ix_events_created_at`` in schema.py), grouped by the UTC day of the
event's timestamp - the same day the extraction files the row under. Rows whose timestamp is
NULL are filed under their created_at day, so they are never late and are left out.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from heatmap_pipeline.core.cleaning import Rejected, to_utc_naive
from heatmap_pipeline.warehouse.events import source_events_table


@dataclass(frozen=True)
class Arrivals:
    day: dt.date  # UTC day of the events' timestamps
    rows: int  # rows of that day with created_at after ``since``
    newest_created_at: dt.datetime  # naive UTC


def _moment_param(engine: sa.Engine, moment: dt.datetime):
    if engine.dialect.name == "sqlite":  # text column: compare in the demo's 'YYYY-MM-DD HH:MM:SS.ffffff' form
        return moment.isoformat(sep=" ", timespec="microseconds")
    return moment.replace(tzinfo=dt.timezone.utc)


def arrivals_since(source: sa.Engine, since: dt.datetime) -> list[Arrivals]:
    """Rows created after ``since`` (naive UTC), per UTC day of their timestamp, oldest day first."""
    src = source_events_table()
    if source.dialect.name == "sqlite":
        day = sa.func.substr(src.c.timestamp, 1, 10)  # the extraction's text-range day filter, same prefix
    else:
        day = sa.cast(src.c.timestamp, sa.Date)  # sessions run in UTC (db.get_engine)
    query = (
        sa.select(day.label("day"), sa.func.count().label("rows"), sa.func.max(src.c.created_at).label("newest"))
        .where(src.c.created_at > _moment_param(source, since), src.c.timestamp.is_not(None))
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

"""The global reconciliation behind ``heatmap-pipeline reconcile``: every source row, over every day. No Dagster here.

The ``rows_reconciled`` asset check compares one day at a time, in the run that loads it. This
compares the whole source table with the whole warehouse: each source row belongs to exactly one
day by the filing rule (``warehouse/source.py``: :func:`~heatmap_pipeline.warehouse.source.filed_day`,
the very rule the extraction uses), and on every loaded day the source must hold exactly as many
rows as ``game_events`` + ``quarantined_events`` store. Where a day's counts differ, the rows are
matched by id and each row in neither table is named, as is each stored row no source row accounts
for. Rows that arrived after the day's last load started are *waiting* (the late-events sensor
loads them), not missing. Rows filed under a day never loaded are listed per day.

With ``compare_ids`` the ids are matched on every loaded day, not only where the counts differ
(the counts cannot tell one row lost and another stored twice apart; ``unique_event_ids`` and the
per-run check catch that case as it happens).
"""

from __future__ import annotations

import collections
import datetime as dt
from dataclasses import dataclass, field
from typing import Mapping

import sqlalchemy as sa

from heatmap_pipeline.core.cleaning import Rejected, to_utc_naive
from heatmap_pipeline.warehouse.source import day_filter, filed_day, names_a_day, source_events_table
from heatmap_pipeline.warehouse.tables import game_events, quarantined_events

SAMPLE = 50  # rows named per day and kind


@dataclass
class DayTally:
    day: dt.date
    source: int = 0
    clean: int = 0
    quarantined: int = 0
    loaded: bool = False  # Dagster materialized it, or the warehouse holds rows of it
    loaded_at: dt.datetime | None = None  # start of the run that last loaded it (naive UTC), if known
    missing: list[str] = field(default_factory=list)  # source rows stored nowhere
    waiting: list[str] = field(default_factory=list)  # ... that arrived after the last load started
    extra: list[str] = field(default_factory=list)  # stored rows no source row of the day accounts for
    missing_count: int = 0
    waiting_count: int = 0
    extra_count: int = 0

    @property
    def stored(self) -> int:
        return self.clean + self.quarantined

    @property
    def ok(self) -> bool:
        return not self.loaded or (self.missing_count == 0 and self.extra_count == 0)


@dataclass
class Reconciliation:
    days: list[DayTally]
    unowned: int = 0  # source rows no day owns: only possible without a PARTITION_START_DATE

    @property
    def passed(self) -> bool:
        return all(day.ok for day in self.days) and not self.unowned

    @property
    def loaded(self) -> list[DayTally]:
        return [day for day in self.days if day.loaded]

    @property
    def not_loaded(self) -> list[DayTally]:
        return [day for day in self.days if not day.loaded]

    def summary(self) -> dict:
        loaded = self.loaded
        return {
            "passed": self.passed,
            "source_rows": sum(d.source for d in self.days),
            "loaded_days": len(loaded),
            "source_rows_of_loaded_days": sum(d.source for d in loaded),
            "clean": sum(d.clean for d in loaded),
            "quarantined": sum(d.quarantined for d in loaded),
            "missing": sum(d.missing_count for d in loaded),
            "waiting": sum(d.waiting_count for d in loaded),
            "extra": sum(d.extra_count for d in loaded),
            "rows_of_days_not_loaded": {d.day.isoformat(): d.source for d in self.not_loaded},
            "rows_of_no_day": self.unowned,
        }


def _as_day(value) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        return None


def _source_counts(source: sa.Engine, start: dt.date | None) -> dict[dt.date | None, int]:
    src = source_events_table()
    day = filed_day(source.dialect.name, src, start).label("day")
    with source.connect() as conn:
        rows = conn.execute(sa.select(day, sa.func.count()).group_by(day)).all()
    counts: dict[dt.date | None, int] = collections.Counter()
    for raw_day, n in rows:
        counts[_as_day(raw_day)] += int(n)  # None: no day owns it (only without a start date)
    return counts


def _stored_counts(warehouse: sa.Engine) -> tuple[dict[dt.date, int], dict[dt.date, int]]:
    g, q = game_events.c, quarantined_events.c
    with warehouse.connect() as conn:
        clean = {_as_day(d): int(n) for d, n in conn.execute(sa.select(g.event_date, sa.func.count()).group_by(g.event_date))}
        quarantined = {
            _as_day(d): int(n)
            for d, n in conn.execute(sa.select(q.partition_date, sa.func.count()).group_by(q.partition_date))
        }
    return clean, quarantined


def _arrival(value) -> dt.datetime | None:
    try:
        return to_utc_naive(value) if value is not None else None
    except Rejected:
        return None


def _name(event_id) -> str:
    return "id NULL" if event_id is None else f"id {event_id}"


def _match_ids(source: sa.Engine, warehouse: sa.Engine, tally: DayTally, start: dt.date | None) -> None:
    """Name the day's source rows stored nowhere (missing, or waiting when they arrived after the
    day's last load started) and the stored rows no source row accounts for (extra)."""
    dialect = source.dialect.name
    src = source_events_table()
    # created_at as the extraction hands it: a time Python cannot hold is NULL here
    created = sa.case((names_a_day(dialect, src.c.created_at), src.c.created_at))
    with source.connect() as conn:
        source_rows = conn.execute(
            sa.select(src.c.id, created).where(day_filter(dialect, src, tally.day, start))
        ).all()
    g, q = game_events.c, quarantined_events.c
    with warehouse.connect() as conn:
        stored = collections.Counter(conn.execute(sa.select(g.event_id).where(g.event_date == tally.day)).scalars())
        stored.update(conn.execute(sa.select(q.source_event_id).where(q.partition_date == tally.day)).scalars())
    by_id: dict[str | None, list[dt.datetime | None]] = collections.defaultdict(list)
    for event_id, created_at in source_rows:
        by_id[None if event_id is None else str(event_id)].append(_arrival(created_at))
    for event_id, arrivals in sorted(by_id.items(), key=lambda item: (item[0] is not None, item[0] or "")):
        surplus = len(arrivals) - stored.pop(event_id, 0)
        if surplus < 0:
            stored[event_id] = -surplus  # stored more often than the source holds it
            continue
        # of several copies, the latest arrivals are the ones a load may not have seen yet
        for arrived in sorted(arrivals, key=lambda a: a or dt.datetime.min)[len(arrivals) - surplus:]:
            late = arrived is not None and tally.loaded_at is not None and arrived > tally.loaded_at
            name = _name(event_id) + (f" (created_at {arrived.isoformat(sep=' ')})" if arrived else "")
            if late:
                tally.waiting_count += 1
                if len(tally.waiting) < SAMPLE:
                    tally.waiting.append(name)
            else:
                tally.missing_count += 1
                if len(tally.missing) < SAMPLE:
                    tally.missing.append(name)
    for event_id, n in sorted(stored.items(), key=lambda item: (item[0] is not None, item[0] or "")):
        tally.extra_count += n
        tally.extra.extend([_name(event_id)] * min(n, SAMPLE - len(tally.extra)))


def reconcile(
    source: sa.Engine,
    warehouse: sa.Engine,
    loads: Mapping[dt.date, dt.datetime | None],
    start: dt.date | None,
    compare_ids: bool = False,
) -> Reconciliation:
    """Every source row against the warehouse, per filing day. ``loads``: the days Dagster
    materialized, each with the start of the run that last loaded it (or None); ``start``:
    PARTITION_START_DATE."""
    source_counts = _source_counts(source, start)
    clean, quarantined = _stored_counts(warehouse)
    days = sorted({d for d in source_counts if d is not None} | set(clean) | set(quarantined) | set(loads))
    tallies = []
    for day in days:
        tally = DayTally(
            day,
            source=source_counts.get(day, 0),
            clean=clean.get(day, 0),
            quarantined=quarantined.get(day, 0),
            loaded=day in loads or day in clean or day in quarantined,
            loaded_at=loads.get(day),
        )
        if tally.loaded and (compare_ids or tally.source != tally.stored):
            _match_ids(source, warehouse, tally, start)
        tallies.append(tally)
    return Reconciliation(tallies, unowned=source_counts.get(None, 0))


def describe(result: Reconciliation) -> list[str]:
    """The report, one line per day that has anything to say, then the totals."""
    lines = []
    for day in result.loaded:
        counts = f"source {day.source}, stored {day.stored} (clean {day.clean} + quarantined {day.quarantined})"
        if day.ok and not day.waiting_count:
            continue
        parts = [f"{day.day}: {counts}"]
        if day.missing_count:
            parts.append(f"{day.missing_count} source row(s) in neither game_events nor quarantined_events: "
                         + ", ".join(day.missing))
        if day.extra_count:
            parts.append(f"{day.extra_count} stored row(s) no source row of the day accounts for: " + ", ".join(day.extra))
        if day.waiting_count:
            parts.append(f"{day.waiting_count} row(s) arrived after the day's last load started and wait for the "
                         "next (late_events_sensor): " + ", ".join(day.waiting))
        lines.append("; ".join(parts))
    for day in result.not_loaded:
        lines.append(f"{day.day}: {day.source} source row(s), day not loaded yet")
    if result.unowned:
        lines.append(f"{result.unowned} source row(s) belong to no day (no PARTITION_START_DATE to file them under)")
    s = result.summary()
    lines.append(
        f"{'OK' if s['passed'] else 'FAILED'}: {s['source_rows']} source row(s); on the {s['loaded_days']} loaded day(s) "
        f"{s['source_rows_of_loaded_days']} = clean {s['clean']} + quarantined {s['quarantined']}"
        + (f" + waiting {s['waiting']}" if s["waiting"] else "")
        + (f", {s['missing']} in neither" if s["missing"] else "")
        + (f", {s['extra']} stored without a source row" if s["extra"] else "")
        + f"; {sum(s['rows_of_days_not_loaded'].values())} on {len(s['rows_of_days_not_loaded'])} day(s) not loaded"
    )
    return lines

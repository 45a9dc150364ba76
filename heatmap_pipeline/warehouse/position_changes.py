"""The log of position rows an incremental ETL tick added or removed, for incremental heatmaps.

An incremental tick (``etl/incremental.py``) knows exactly which ``game_events`` rows it added and
which it removed; it writes their positions (level, x and y present: :func:`change_rows`) to
``position_changes`` in its own transaction, +1 or -1, each with a larger ``seq``. Ticks of
a day hold the day's lock while they write, so on a day the order of ``seq`` is the order of commits.

A full load of the day (``etl/writing.record_position_stats``, which every full load calls) deletes the day's log and moves the day's
generation on (:func:`reset_day`), in the load's transaction: a heatmap computed from an earlier
generation is recomputed in full. A heatmap run removes the rows it folded in (:func:`prune`).
No Dagster here.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterable

import sqlalchemy as sa

from heatmap_pipeline.warehouse.tables import heatmap_increments, position_change_generations, position_changes

# the columns a change copies from its game_events row
COPIED_COLUMNS = ("level", "x", "y", "event_type", "event_name", "session_id", "payload")
# what a tick inserts (seq comes from the table)
CHANGE_COLUMNS = ["event_date", "change", *COPIED_COLUMNS]


def _is_position(row: dict) -> bool:
    return row["level"] is not None and row["x"] is not None and row["y"] is not None


def change_rows(day: dt.date, removed: Iterable[dict], added: Iterable[dict]) -> list[dict]:
    """The log rows (CHANGE_COLUMNS) of a tick's removed (-1) and added (+1) game_events rows that
    are positions. Removed rows first: a row replaced by a changed one of the same id is -old, +new."""
    return [
        {"event_date": day, "change": change, **{c: row[c] for c in COPIED_COLUMNS}}
        for change, batch in ((-1, removed), (1, added))
        for row in batch
        if _is_position(row)
    ]


def reset_day(conn: sa.Connection, day: dt.date) -> None:
    """A full load of the day, in its transaction (under the day's lock): no change before it
    applies to what it loads, and every heatmap of the day computed before is of another generation."""
    conn.execute(position_changes.delete().where(position_changes.c.event_date == day))
    generation = day_generation(conn, day)
    conn.execute(position_change_generations.delete().where(position_change_generations.c.event_date == day))
    conn.execute(position_change_generations.insert().values(event_date=day, generation=generation + 1))


def day_generation(conn: sa.Connection, day: dt.date) -> int:
    value = conn.execute(
        sa.select(position_change_generations.c.generation).where(position_change_generations.c.event_date == day)
    ).scalar_one_or_none()
    return int(value or 0)


@dataclass(frozen=True)
class ChangeMark:
    """Where the log of a (day, level) stands: the day's generation and its newest seq (0: none)."""

    generation: int
    seq: int


def current_mark(conn: sa.Connection, day: dt.date, level: str) -> ChangeMark:
    """Read in the snapshot the heatmap is binned from: the rows binned include every change of
    the (day, level) up to ``seq`` and none after.

    The newest logged change, or, when the heatmaps pruned them all, the one the stored heatmap of
    this generation applied (committed before this snapshot, so the changes up to it are in it)."""
    generation = day_generation(conn, day)
    newest = conn.execute(
        sa.select(sa.func.max(position_changes.c.seq)).where(
            position_changes.c.event_date == day, position_changes.c.level == level
        )
    ).scalar_one()
    applied = conn.execute(
        sa.select(heatmap_increments.c.applied_seq).where(
            heatmap_increments.c.level == level,
            heatmap_increments.c.date == day,
            heatmap_increments.c.generation == generation,
        )
    ).scalar_one_or_none()
    return ChangeMark(generation, max(int(newest or 0), int(applied or 0)))


def prune(conn: sa.Connection, day: dt.date, level: str, applied_seq: int) -> int:
    """Delete the (day, level) changes up to ``applied_seq``: the stored heatmap holds them."""
    return conn.execute(
        position_changes.delete().where(
            position_changes.c.event_date == day,
            position_changes.c.level == level,
            position_changes.c.seq <= applied_seq,
        )
    ).rowcount

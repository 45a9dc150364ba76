"""Per (date, level) heatmaps from ``game_events``, binned inside the database, upserted into ``heatmaps``.

The database returns at most (grid_size + 2)**2 rows (one per non-empty cell), never the points,
and reads the day's positions once: automatic bounds come from ``position_stats``, which the
ETL writes with the partition (a day loaded some other way falls back to a min/max query).

PostgreSQL: ``width_bucket(v, edges)`` with the very edges ``np.linspace`` computes is a binary
search over them: exactly ``np.histogram2d``'s rule, for every value, in one pass. The edge list
ends just above the upper bound, so bucket 0 and the bucket past the last hold the points
outside the bounds, counted in the same pass.

SQLite (no width_bucket; it runs inside our process anyway): the level's (x, y) are streamed from
the covering index in chunks into ``np.bincount`` (``HeatmapAccumulator``), with numpy's own
cell rule. Memory stays at one chunk.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from heatmap_pipeline.core.binning import (
    GridBounds,
    HeatmapAccumulator,
    auto_bounds,
    bin_edges,
    matrix_summary,
    matrix_to_json,
)
from heatmap_pipeline.warehouse.db import text_sql
from heatmap_pipeline.warehouse.tables import game_events, heatmaps, position_stats
from heatmap_pipeline.warehouse.locks import lock_partition


@dataclass
class HeatmapResult:
    level: str
    date: dt.date
    grid_size: int
    matrix: np.ndarray
    bounds: GridBounds | None
    bounds_source: str
    points: int  # position events of that level and day
    out_of_bounds: int

    @property
    def summary(self) -> dict:
        return matrix_summary(self.matrix)


def positions_of(day, level):
    """game_events rows of the level and day that are positions (x and y present).

    ``day`` and ``level`` are values, or bind parameters for the statements below."""
    return sa.and_(
        game_events.c.event_date == day,
        game_events.c.level == level,
        game_events.c.x.is_not(None),
        game_events.c.y.is_not(None),
    )


def search_edges(lo: float, hi: float, grid_size: int) -> list[float]:
    """Thresholds for PostgreSQL's ``width_bucket(v, thresholds)``.

    The lower edges of the grid's cells as ``np.linspace`` computes them, then the next float
    above ``hi``: bucket i (1..grid_size) is cell i-1 for every v in [lo, hi] (hi itself lands
    in the last cell, as in numpy); bucket 0 is below lo, bucket grid_size + 1 above hi.
    """
    edges = bin_edges(lo, hi, grid_size)
    return [float(v) for v in edges[:-1]] + [float(np.nextafter(hi, np.inf))]


def _bucket(column: sa.Column, edges: str) -> sa.ColumnElement[int]:
    return sa.func.width_bucket(column, sa.cast(sa.bindparam(edges), postgresql.ARRAY(sa.Double())))


# Text, for ``sa.text`` (``:day``, ``:level``, ``:x_edges``, ``:y_edges``): test_indexes and the
# benchmark EXPLAIN this very statement. Two grouping keys, not one combined integer: the planner
# estimates far fewer groups for the pair and so aggregates in its parallel workers at 10M
# events/day (one key: 0.72 s a level).
PG_BUCKETS_SQL = text_sql(
    sa.select(
        _bucket(game_events.c.y, "y_edges").label("gy"),
        _bucket(game_events.c.x, "x_edges").label("gx"),
        sa.func.count().label("n"),
    )
    .where(positions_of(sa.bindparam("day"), sa.bindparam("level")))
    .group_by(sa.literal_column("1"), sa.literal_column("2")),
    "postgresql",
)


def recorded_position_stats(conn: sa.Connection, day: dt.date, level: str) -> tuple[int, float, float, float, float] | None:
    """(positions, x_min, x_max, y_min, y_max) of the day's level: the ETL's record, else a scan."""
    recorded = conn.execute(
        sa.select(*(c for c in position_stats.c if not c.primary_key)).where(  # positions, x_min, ..., y_max
            position_stats.c.event_date == day, position_stats.c.level == level
        )
    ).first()
    if recorded is not None:
        return tuple(recorded)
    if conn.execute(sa.select(sa.literal(1)).where(position_stats.c.event_date == day).limit(1)).first():
        return None  # the ETL recorded this day: the level has no positions
    scanned = scan_position_range(conn, day, level)
    return scanned if scanned[0] else None


def scan_position_range(conn: sa.Connection, day: dt.date, level: str) -> tuple[int, float, float, float, float]:
    """(positions, x_min, x_max, y_min, y_max) of the level and day, read from game_events itself."""
    return tuple(
        conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.min(game_events.c.x),
                sa.func.max(game_events.c.x),
                sa.func.min(game_events.c.y),
                sa.func.max(game_events.c.y),
            ).where(positions_of(day, level))
        ).one()
    )


def plan_bucket_query(conn: sa.Connection) -> None:
    """Settings for PG_BUCKETS_SQL, for the rest of the transaction.

    The planner cannot know that the buckets number at most (grid_size + 2)**2: it guesses
    hundreds of thousands of groups, plans a hash table that spills and so runs serially. The
    groups fit in a few kB; with room for its guess and free tuple transfer it aggregates in
    parallel workers (0.47 s instead of 0.79 s a level at 10M events/day).
    """
    conn.execute(sa.text("SET LOCAL work_mem = '64MB'"))
    conn.execute(sa.text("SET LOCAL parallel_tuple_cost = 0"))


def _bin_postgresql(conn: sa.Connection, day: dt.date, level: str, bounds: GridBounds, grid_size: int):
    """One pass: the matrix accumulator and the number of positions (inside the bounds or not)."""
    accumulator = HeatmapAccumulator(bounds, grid_size)
    rows, cols, counts = [], [], []
    points = 0
    plan_bucket_query(conn)
    result = conn.execute(
        sa.text(PG_BUCKETS_SQL),
        {
            "day": day,
            "level": level,
            "x_edges": search_edges(bounds.x_min, bounds.x_max, grid_size),
            "y_edges": search_edges(bounds.y_min, bounds.y_max, grid_size),
        },
    )
    for gy, gx, n in result:
        points += n
        if 1 <= gy <= grid_size and 1 <= gx <= grid_size:  # else outside the bounds
            rows.append(gy - 1)
            cols.append(gx - 1)
            counts.append(n)
    if counts:
        accumulator.add_cells(rows, cols, counts)
    return accumulator, points


# For the driver's own cursor: two ``?``, the day (ISO text) and the level.
SQLITE_POSITIONS_SQL = str(
    sa.select(game_events.c.x, game_events.c.y)
    .where(positions_of(sa.bindparam("day"), sa.bindparam("level")))
    .compile(dialect=sqlite.dialect())
)
SQLITE_CHUNK_ROWS = 65_536


def _bin_sqlite(conn: sa.Connection, day: dt.date, level: str, bounds: GridBounds, grid_size: int):
    """Stream the level's positions in chunks into the accumulator; (accumulator, positions)."""
    accumulator = HeatmapAccumulator(bounds, grid_size)
    points = 0
    # the driver's own cursor: a chunk of plain tuples straight into numpy, no Row objects
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute(SQLITE_POSITIONS_SQL, (day.isoformat(), level))
        while chunk := cursor.fetchmany(SQLITE_CHUNK_ROWS):
            xy = np.asarray(chunk, dtype=np.float64)
            accumulator.add(xy[:, 0], xy[:, 1])
            points += len(chunk)
    finally:
        cursor.close()
    return accumulator, points


def compute_heatmap(
    warehouse: sa.Engine, day: dt.date, level: str, grid_size: int, fixed_bounds: GridBounds | None = None
) -> HeatmapResult:
    """Bin the day's positions of one level in SQL; auto bounds are the day's min/max."""
    postgres = warehouse.dialect.name == "postgresql"
    with warehouse.connect() as conn:
        if postgres:  # the stats and the binning read one snapshot
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        conn.begin()
        stats = recorded_position_stats(conn, day, level)
        points = int(stats[0]) if stats else 0
        if fixed_bounds is not None:
            bounds, source = fixed_bounds, "fixed"
        elif points:
            bounds, source = auto_bounds(*stats[1:]), "auto"
        else:
            bounds, source = None, "auto"  # an empty day has no range of its own
        accumulator = HeatmapAccumulator(bounds or GridBounds(0, 1, 0, 1), grid_size)
        if points and bounds is not None:
            if postgres:
                accumulator, points = _bin_postgresql(conn, day, level, bounds, grid_size)
            else:
                accumulator, points = _bin_sqlite(conn, day, level, bounds, grid_size)
    matrix = accumulator.matrix
    inside = int(matrix.sum())
    return HeatmapResult(
        level=level,
        date=day,
        grid_size=grid_size,
        matrix=matrix,
        bounds=bounds,
        bounds_source=source,
        points=points,
        out_of_bounds=points - inside,
    )


class InconsistentHeatmap(RuntimeError):
    """The heatmap row about to be written fails its consistency rule; nothing was written."""


def upsert_heatmap(
    warehouse: sa.Engine,
    result: HeatmapResult,
    now: dt.datetime,
    verify: Callable[[sa.Connection, Mapping], list[str]] | None = None,
) -> None:
    """Replace the (level, date) row in one transaction; old readers see level/date/grid_size/matrix.

    ``verify(conn, row)`` (the asset passes ``invariants.heatmap_row_check``) lists the row's
    problems, read in this transaction before anything is written: with any, it raises
    :class:`InconsistentHeatmap` and the stored row stays as it was."""
    summary = result.summary
    bounds = result.bounds
    row = {
        "level": result.level,
        "date": result.date,
        "grid_size": str(result.grid_size),
        "matrix": matrix_to_json(result.matrix),
        "x_min": bounds.x_min if bounds else None,
        "x_max": bounds.x_max if bounds else None,
        "y_min": bounds.y_min if bounds else None,
        "y_max": bounds.y_max if bounds else None,
        "bounds_source": result.bounds_source,
        "total": summary["sum"],
        "max_count": summary["max"],
        "nonempty_cells": summary["nonempty_cells"],
        "out_of_bounds": result.out_of_bounds,
        "updated_at": now,
    }
    with warehouse.begin() as conn:
        lock_partition(conn, "heatmaps", result.level, result.date)
        problems = verify(conn, row) if verify is not None else []
        if problems:
            raise InconsistentHeatmap(
                f"heatmap of level {result.level} on {result.date} not written, it fails its consistency rule: "
                + "; ".join(problems) + ". The stored row is unchanged."
            )
        conn.execute(heatmaps.delete().where(heatmaps.c.level == result.level, heatmaps.c.date == result.date))
        conn.execute(heatmaps.insert(), [row])


def read_heatmap(warehouse: sa.Engine, level: str, day: dt.date) -> dict | None:
    with warehouse.connect() as conn:
        row = conn.execute(sa.select(heatmaps).where(heatmaps.c.level == level, heatmaps.c.date == day)).mappings().first()
    return dict(row) if row else None

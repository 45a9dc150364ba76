"""What the read API reads: stored heatmaps of ``heatmap_kinds`` (and the old ``heatmaps`` rows). No HTTP here.

``heatmap_kinds`` holds one row per (level, date, kind), written by level_heatmaps. A ``positions``
day with no row there but a row in the old ``heatmaps`` table (written by the old job, or by this
pipeline before it had kinds) is read from ``heatmaps``: the old reader saw it, so ours must too.
Such a day has no sessions count (``sessions`` is None).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from heatmap_pipeline.core.combine import Binning
from heatmap_pipeline.warehouse.tables import heatmap_kinds, heatmaps

POSITIONS = "positions"  # the kind the old heatmaps row holds


@dataclass(frozen=True)
class StoredHeatmap:
    level: str
    date: dt.date
    kind: str
    grid_x: int
    grid_y: int
    bounds: tuple[float, float, float, float] | None
    bounds_source: str | None
    total: float
    max_count: float
    nonempty_cells: int
    out_of_bounds: int
    events: int | None
    sessions: int | None
    updated_at: dt.datetime | None
    source_table: str  # "heatmap_kinds" or "heatmaps"
    matrix: list | None = None  # None when listed without matrices

    @property
    def binning(self) -> Binning:
        return Binning(self.grid_x, self.grid_y, self.bounds)


def _bounds(row) -> tuple[float, float, float, float] | None:
    values = (row.x_min, row.x_max, row.y_min, row.y_max)
    return None if any(v is None for v in values) else tuple(float(v) for v in values)


def _from_kinds(row, with_matrix: bool) -> StoredHeatmap:
    return StoredHeatmap(
        level=row.level, date=row.date, kind=row.kind, grid_x=row.grid_x, grid_y=row.grid_y, bounds=_bounds(row),
        bounds_source=row.bounds_source, total=float(row.total), max_count=float(row.max_count),
        nonempty_cells=row.nonempty_cells, out_of_bounds=row.out_of_bounds, events=row.events, sessions=row.sessions,
        updated_at=row.updated_at, source_table="heatmap_kinds", matrix=row.matrix if with_matrix else None,
    )


class CorruptHeatmap(ValueError):
    """A stored matrix that is not a grid of numbers (a row edited by hand, or by another writer)."""


def _from_old_table(row, with_matrix: bool) -> StoredHeatmap:
    """An old ``heatmaps`` row. Its totals may be NULL (the old job wrote none): computed from the matrix."""
    matrix = row.matrix or []
    try:
        cells = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        cells = None
    if cells is None or (cells.ndim != 2 and cells.size) or not np.isfinite(cells).all():
        raise CorruptHeatmap(f"the heatmaps row of level {row.level!r} on {row.date} is not a grid of numbers")
    grid_y, grid_x = cells.shape if cells.ndim == 2 else (0, 0)
    total = float(row.total) if row.total is not None else float(cells.sum())
    out_of_bounds = row.out_of_bounds or 0
    return StoredHeatmap(
        level=row.level, date=row.date, kind=POSITIONS, grid_x=grid_x, grid_y=grid_y, bounds=_bounds(row),
        bounds_source=row.bounds_source,
        total=total, max_count=float(row.max_count) if row.max_count is not None else float(cells.max(initial=0.0)),
        nonempty_cells=row.nonempty_cells if row.nonempty_cells is not None else int(np.count_nonzero(cells)),
        out_of_bounds=out_of_bounds, events=round(total) + out_of_bounds, sessions=None, updated_at=row.updated_at,
        source_table="heatmaps", matrix=matrix if with_matrix else None,
    )


_SUMMARY_COLUMNS = [c for c in heatmap_kinds.c if c.name != "matrix"]
_OLD_COLUMNS = [heatmaps.c[name] for name in ("level", "date", "matrix", "x_min", "x_max", "y_min", "y_max",
                                              "bounds_source", "total", "max_count", "nonempty_cells",
                                              "out_of_bounds", "updated_at")]


def read_heatmaps(
    engine: sa.Engine,
    *,
    level: str | None = None,
    kind: str | None = None,
    first: dt.date | None = None,
    last: dt.date | None = None,
    with_matrix: bool = True,
    limit: int | None = None,
) -> list[StoredHeatmap]:
    """Stored heatmaps matching every given filter (None: any), by date, level, kind.

    ``first``/``last`` are inclusive. ``positions`` days found only in the old ``heatmaps`` table
    are included (see the module docstring). ``limit`` caps the rows, newest dates first kept."""
    kinds_filter = [
        cond for cond in (
            heatmap_kinds.c.level == level if level is not None else None,
            heatmap_kinds.c.kind == kind if kind is not None else None,
            heatmap_kinds.c.date >= first if first is not None else None,
            heatmap_kinds.c.date <= last if last is not None else None,
        ) if cond is not None
    ]
    columns = list(heatmap_kinds.c) if with_matrix else _SUMMARY_COLUMNS
    order = (heatmap_kinds.c.date.desc(), heatmap_kinds.c.level, heatmap_kinds.c.kind)
    with engine.connect() as conn:
        query = sa.select(*columns).where(*kinds_filter).order_by(*order)
        found = [_from_kinds(row, with_matrix) for row in conn.execute(query.limit(limit) if limit else query)]
        if kind in (None, POSITIONS):
            found += _old_only_positions(conn, level, first, last, with_matrix, limit)
    found.sort(key=lambda h: (h.date, h.level, h.kind))
    return found[-limit:] if limit else found


def _old_only_positions(conn, level, first, last, with_matrix, limit) -> list[StoredHeatmap]:
    """Old ``heatmaps`` rows with no ``positions`` row in ``heatmap_kinds`` for their (level, date)."""
    has_kinds_row = sa.exists().where(
        heatmap_kinds.c.level == heatmaps.c.level, heatmap_kinds.c.date == heatmaps.c.date,
        heatmap_kinds.c.kind == POSITIONS,
    )
    conditions = [
        cond for cond in (
            heatmaps.c.level == level if level is not None else None,
            heatmaps.c.date >= first if first is not None else None,
            heatmaps.c.date <= last if last is not None else None,
        ) if cond is not None
    ]
    query = sa.select(*_OLD_COLUMNS).where(*conditions, ~has_kinds_row).order_by(heatmaps.c.date.desc(), heatmaps.c.level)
    rows = conn.execute(query.limit(limit) if limit else query)
    # The matrix is needed for the totals the old job did not write; dropped afterwards if not asked for.
    return [_from_old_table(row, with_matrix) for row in rows]


def stored_matrices(engine: sa.Engine, found: Iterable[StoredHeatmap]) -> Iterator[list]:
    """The matrix of each listed heatmap, read one row at a time by its key: a long range of large
    grids never sits in memory at once (92 days of 1000 x 1000 cells would be gigabytes of lists)."""
    with engine.connect() as conn:
        for heatmap in found:
            if heatmap.matrix is not None:
                yield heatmap.matrix
            elif heatmap.source_table == "heatmap_kinds":
                yield conn.execute(sa.select(heatmap_kinds.c.matrix).where(
                    heatmap_kinds.c.level == heatmap.level, heatmap_kinds.c.date == heatmap.date,
                    heatmap_kinds.c.kind == heatmap.kind)).scalar_one()
            else:
                yield conn.execute(sa.select(heatmaps.c.matrix).where(
                    heatmaps.c.level == heatmap.level, heatmaps.c.date == heatmap.date)).scalar_one()

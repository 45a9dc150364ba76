"""Binning positions into a grid, bit-for-bit identical to ``np.histogram2d``. No Dagster here.

Orientation follows the old system: ``matrix[row][col]`` with rows = y bins, cols = x bins,
i.e. ``np.histogram2d(x, y, ...)[0].T``. A point exactly on the upper bound falls in the
last cell; points outside the bounds stay out of the matrix (the heatmap reports them as
``out_of_bounds``: its positions minus the matrix sum, see ``warehouse/heatmaps.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


@dataclass(frozen=True)
class GridBounds:
    x_min: float
    x_max: float
    y_min: float
    y_max: float

    def as_list(self) -> list[float]:
        return [self.x_min, self.x_max, self.y_min, self.y_max]


def widen_if_flat(lo: float, hi: float) -> tuple[float, float]:
    """A zero-width range becomes [v - 0.5, v + 0.5], as np.histogram2d (and the old job) did."""
    if lo == hi:
        return lo - 0.5, hi + 0.5
    return lo, hi


def auto_bounds(x_min: float, x_max: float, y_min: float, y_max: float) -> GridBounds:
    """Bounds from the data's own range, widened where flat."""
    for value in (x_min, x_max, y_min, y_max):
        if value is None or not math.isfinite(value):
            raise ValueError(f"auto bounds need finite min and max, got {(x_min, x_max, y_min, y_max)}")
    x_lo, x_hi = widen_if_flat(float(x_min), float(x_max))
    y_lo, y_hi = widen_if_flat(float(y_min), float(y_max))
    return GridBounds(x_lo, x_hi, y_lo, y_hi)


def bin_edges(lo: float, hi: float, n: int) -> np.ndarray:
    """The edges np.histogram2d uses: ``np.linspace(lo, hi, n + 1)``.

    Except where numpy's own edges break: when ``hi - lo`` overflows (a range wider than the
    largest float, e.g. -1e308 to 1e308) they are NaN and inf and no point lands in any cell.
    Then the edges are linspace's over the halved range, doubled: halving and doubling are
    exact, so these are the very edges linspace would compute without the overflow, and every
    finite value in [lo, hi] gets its cell by the same rule.
    """
    if math.isfinite(hi - lo):
        return np.linspace(lo, hi, n + 1)
    edges = np.linspace(lo / 2, hi / 2, n + 1) * 2
    edges[0], edges[-1] = lo, hi  # exact even if a subnormal bound lost a bit when halved
    return edges


def cell_index(values: np.ndarray, lo: float, hi: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell of each value along one axis, and the mask of values inside [lo, hi].

    Same rule as ``np.histogramdd``: ``searchsorted(edges, v, 'right') - 1``, and values equal
    to the last edge go in the last cell.
    """
    values = np.asarray(values, dtype=np.float64)
    edges = bin_edges(lo, hi, n)
    index = np.searchsorted(edges, values, side="right") - 1
    index[values == edges[-1]] = n - 1
    inside = (values >= lo) & (values <= hi)
    return index, inside


class HeatmapAccumulator:
    """Streams chunks of (x, y) into a grid_y x grid_x grid with ``np.bincount``: constant memory."""

    def __init__(self, bounds: GridBounds, grid_x: int, grid_y: int | None = None):
        grid_y = grid_x if grid_y is None else grid_y
        if grid_x < 1 or grid_y < 1:
            raise ValueError("grid sizes must be at least 1")
        self.bounds = bounds
        self.grid_x, self.grid_y = grid_x, grid_y
        self._flat = np.zeros(grid_x * grid_y, dtype=np.int64)

    def cells(self, x: Iterable[float], y: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
        """Flat cell (row * grid_x + col) of each point, and the mask of points inside the bounds."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        b = self.bounds
        col, x_in = cell_index(x, b.x_min, b.x_max, self.grid_x)
        row, y_in = cell_index(y, b.y_min, b.y_max, self.grid_y)
        return row * self.grid_x + col, x_in & y_in

    def add(self, x: Iterable[float], y: Iterable[float]) -> None:
        flat, inside = self.cells(x, y)
        self.add_flat(flat[inside])

    def add_flat(self, flat: np.ndarray, counts: np.ndarray | None = None) -> None:
        """Add points (or ``counts`` of them) by flat cell; every cell must be inside the grid."""
        size = self.grid_x * self.grid_y
        if counts is None:
            self._flat += np.bincount(flat, minlength=size)
        else:
            self._flat += np.bincount(flat, weights=counts, minlength=size).astype(np.int64)

    def add_cells(self, rows: Iterable[int], cols: Iterable[int], counts: Iterable[int]) -> None:
        """Add pre-aggregated cell counts (from SQL pushdown)."""
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        self.add_flat(rows * self.grid_x + cols, np.asarray(counts, dtype=np.int64))

    @property
    def matrix(self) -> np.ndarray:
        """Counts with rows = y bins and columns = x bins."""
        return self._flat.reshape(self.grid_y, self.grid_x).copy()


class KindsAccumulator:
    """One grid per heatmap kind, filled in one pass: each point (or SQL cell count) carries a
    bitmask of the kinds it belongs to, bit i for ``kinds[i]`` (a death is a position too).
    Also counts each kind's events with x and y, inside the bounds or not."""

    def __init__(self, bounds: GridBounds, grid_x: int, grid_y: int, kinds: Sequence[str]):
        self.kinds = tuple(kinds)
        self.bounds, self.grid_x, self.grid_y = bounds, grid_x, grid_y
        self.grids = {kind: HeatmapAccumulator(bounds, grid_x, grid_y) for kind in self.kinds}
        self.events = dict.fromkeys(self.kinds, 0)

    def _members(self, masks: np.ndarray):
        for bit, kind in enumerate(self.kinds):
            yield kind, ((masks >> bit) & 1).astype(bool)

    def add(self, x: Iterable[float], y: Iterable[float], masks: Iterable[int]) -> None:
        masks = np.asarray(masks, dtype=np.int64)
        flat, inside = self.grids[self.kinds[0]].cells(x, y)  # one cell computation for every kind
        for kind, member in self._members(masks):
            self.events[kind] += int(np.count_nonzero(member))
            self.grids[kind].add_flat(flat[member & inside])

    def add_counts(self, rows, cols, masks, counts, inside) -> None:
        """SQL's (row, col, kinds bitmask, count) groups; ``inside`` marks the groups within the grid."""
        rows, cols, masks, counts = (np.asarray(v, dtype=np.int64) for v in (rows, cols, masks, counts))
        inside = np.asarray(inside, dtype=bool)
        for kind, member in self._members(masks):
            self.events[kind] += int(counts[member].sum())
            take = member & inside
            self.grids[kind].add_cells(rows[take], cols[take], counts[take])

    def matrices(self) -> dict[str, np.ndarray]:
        return {kind: grid.matrix for kind, grid in self.grids.items()}


def matrix_summary(matrix: np.ndarray) -> dict:
    return {
        "sum": float(matrix.sum()),
        "max": float(matrix.max()) if matrix.size else 0.0,
        "nonempty_cells": int(np.count_nonzero(matrix)),
    }


def matrix_to_json(matrix: np.ndarray) -> list[list[float]]:
    """The old JSON shape: a list of rows (y bins) of floats."""
    return matrix.astype(np.float64).tolist()


@dataclass
class LevelRange:
    positions: int
    x_min: float
    x_max: float
    y_min: float
    y_max: float


class PositionRanges:
    """Per level: how many positions (x and y present) and their x/y range.

    Merged from partial summaries (a SQL ``GROUP BY level``) and from rows (the Python cleaner's
    output), so the ETL can record a day's ranges without reading the day again.
    """

    def __init__(self) -> None:
        self.by_level: dict[str, LevelRange] = {}

    def add_summary(self, level: str, positions: int, x_min: float, x_max: float, y_min: float, y_max: float) -> None:
        if not positions:
            return
        current = self.by_level.get(level)
        if current is None:
            self.by_level[level] = LevelRange(int(positions), float(x_min), float(x_max), float(y_min), float(y_max))
            return
        current.positions += int(positions)
        current.x_min, current.x_max = min(current.x_min, x_min), max(current.x_max, x_max)
        current.y_min, current.y_max = min(current.y_min, y_min), max(current.y_max, y_max)

    def add_rows(self, rows: Iterable[dict]) -> None:
        for row in rows:
            level, x, y = row.get("level"), row.get("x"), row.get("y")
            if level is not None and x is not None and y is not None:
                self.add_summary(level, 1, x, x, y, y)

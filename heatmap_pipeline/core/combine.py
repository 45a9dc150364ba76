"""Read-time arithmetic on stored heatmap matrices: sums over days, normalisation, smoothing, differences.

Pure functions of numbers (no Dagster, no database): the read API (web/routers/heatmaps.py) reads
the stored daily matrices and calls these. Matrices are rows = y bins (row 0 = lowest y), columns =
x bins, as in ``heatmap_kinds``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

NORMALISATIONS = ("none", "share", "per_session")
MAX_SMOOTH_SIGMA = 50.0  # cells; a wider kernel only blurs the whole map into one colour


@dataclass(frozen=True)
class Binning:
    """How a day was binned: two days can be summed cell by cell only when these are equal."""

    grid_x: int
    grid_y: int
    bounds: tuple[float, float, float, float] | None  # x_min, x_max, y_min, y_max; None: not recorded

    def describe(self) -> str:
        bounds = "no recorded bounds" if self.bounds is None else "bounds [{:g}, {:g}, {:g}, {:g}]".format(*self.bounds)
        return f"grid {self.grid_x}x{self.grid_y}, {bounds}"


class BinningMismatch(ValueError):
    """The days to combine were binned differently; ``groups`` maps each binning to its days."""

    def __init__(self, groups: dict[Binning, list]):
        self.groups = groups
        parts = [f"{', '.join(str(d) for d in days)} ({binning.describe()})" for binning, days in groups.items()]
        super().__init__("days binned differently cannot be summed cell by cell: " + "; ".join(parts))


def configured_binning(config) -> Binning | None:
    """How a level (a ``LevelConfig``) is binned every day when it has fixed bounds; None for automatic bounds."""
    if config.bounds is None:
        return None
    return Binning(config.grid_x, config.grid_y, tuple(config.bounds.as_list()))


def binned_otherwise(groups: dict[Binning, list], configured: Binning) -> list:
    """The days (or spans) of ``groups`` not binned as ``configured`` (a level's fixed bounds and grid now):
    what must be re-materialized before a range over them can be summed. Bounds equal to 1e-9 relative."""
    def alike(binning: Binning) -> bool:
        return (binning.grid_x, binning.grid_y) == (configured.grid_x, configured.grid_y) and \
            binning.bounds is not None and configured.bounds is not None and \
            bool(np.allclose(binning.bounds, configured.bounds, rtol=1e-9, atol=0.0))
    return sorted((day for binning, days in groups.items() if not alike(binning) for day in days), key=str)


def common_binning(days: Sequence[tuple[object, Binning]]) -> Binning:
    """The one binning of every (day, binning); BinningMismatch naming the groups of days otherwise."""
    groups: dict[Binning, list] = {}
    for day, binning in days:
        groups.setdefault(binning, []).append(day)
    if len(groups) != 1:
        raise BinningMismatch(groups)
    return next(iter(groups))


def sum_matrices(matrices: Iterable, shape: tuple[int, int]) -> np.ndarray:
    """Cell-by-cell sum of matrices of one ``shape`` (rows, columns); zeros for none. ValueError for a
    matrix of another shape or with a cell that is not a finite number."""
    total = np.zeros(shape, dtype=np.float64)
    for matrix in matrices:
        array = np.asarray(matrix, dtype=np.float64)
        if array.size == 0 and total.size == 0:
            continue  # an empty grid (an old row of []) adds nothing, whatever nesting it was stored with
        if array.shape != shape:
            raise ValueError(f"matrix of shape {array.shape} where {shape} was expected")
        if not np.isfinite(array).all():  # a null stored in a cell reads as NaN: no sum to publish
            raise ValueError("matrix with a cell that is not a finite number")
        total += array
    return total


def normalise(matrix: np.ndarray, how: str, *, total: float, sessions: int | None) -> np.ndarray:
    """``none``: counts; ``share``: each cell's share of ``total`` (sums to 1); ``per_session``:
    counts divided by ``sessions``. A zero denominator leaves zeros (nothing happened), never NaN."""
    if how == "none":
        return matrix
    if how == "share":
        return matrix / total if total else np.zeros_like(matrix)
    if how == "per_session":
        if sessions is None:
            raise ValueError("per_session needs the sessions count")
        return matrix / sessions if sessions else np.zeros_like(matrix)
    raise ValueError(f"unknown normalisation {how!r}; use one of {', '.join(NORMALISATIONS)}")


def smooth(matrix: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing with ``sigma`` in cells (0: unchanged). Edges reflect, so the sum is kept."""
    if not 0 <= sigma <= MAX_SMOOTH_SIGMA:
        raise ValueError(f"sigma {sigma!r} outside 0..{MAX_SMOOTH_SIGMA:g}")
    if sigma == 0 or matrix.size == 0:
        return matrix
    return gaussian_filter(matrix.astype(np.float64), sigma=sigma, mode="reflect")

import numpy as np
import pytest

from heatmap_pipeline.core.binning import (
    GridBounds,
    HeatmapAccumulator,
    auto_bounds,
    cell_index,
    matrix_summary,
    matrix_to_json,
)
from heatmap_pipeline_tests.support import histogram2d_reference


def accumulate(x, y, bounds, n, chunk=7):
    acc = HeatmapAccumulator(bounds, n)
    for start in range(0, len(x), chunk):  # streamed in small chunks on purpose
        acc.add(x[start : start + chunk], y[start : start + chunk])
    return acc


@pytest.mark.parametrize("seed", range(5))
def test_random_points_match_histogram2d_with_auto_bounds(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(10, 30, 5000), rng.uniform(-7, 3, 5000)
    bounds = auto_bounds(x.min(), x.max(), y.min(), y.max())
    acc = accumulate(x, y, bounds, 50)
    assert np.array_equal(acc.matrix, histogram2d_reference(x, y, bounds, 50))
    assert acc.matrix.sum() == 5000  # every point inside its own range


def test_fixed_bounds_leave_outside_points_out_of_the_matrix():
    rng = np.random.default_rng(9)
    x, y = rng.uniform(-10, 110, 4000), rng.uniform(-10, 110, 4000)
    bounds = GridBounds(0, 100, 0, 100)
    acc = accumulate(x, y, bounds, 20)
    inside = (x >= 0) & (x <= 100) & (y >= 0) & (y <= 100)
    assert np.array_equal(acc.matrix, histogram2d_reference(x, y, bounds, 20))
    assert int((~inside).sum()) > 0
    assert acc.matrix.sum() == int(inside.sum()) == 4000 - int((~inside).sum())


def test_every_edge_value_lands_where_histogram2d_puts_it():
    edges = np.linspace(0.1, 0.7, 51)  # awkward floats: edges are not exactly representable
    x = np.concatenate([edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf)])
    y = np.full_like(x, 0.5)
    bounds = GridBounds(0.1, 0.7, 0.0, 1.0)
    assert np.array_equal(accumulate(x, y, bounds, 50).matrix, histogram2d_reference(x, y, bounds, 50))


def test_point_on_upper_bound_falls_in_last_cell():
    acc = accumulate(np.array([10.0]), np.array([5.0]), GridBounds(0, 10, 0, 5), 4)
    expected = np.zeros((4, 4), dtype=int)
    expected[3, 3] = 1  # row = last y bin, column = last x bin
    assert np.array_equal(acc.matrix, expected)


def test_orientation_rows_are_y_bins_columns_are_x_bins():
    acc = accumulate(np.array([0.1]), np.array([0.9]), GridBounds(0, 1, 0, 1), 2)  # low x, high y
    assert acc.matrix.tolist() == [[0, 0], [1, 0]]


def test_single_point_gets_widened_bounds_and_centre_cell():
    bounds = auto_bounds(3.0, 3.0, 4.0, 4.0)
    assert bounds == GridBounds(2.5, 3.5, 3.5, 4.5)
    acc = accumulate(np.array([3.0]), np.array([4.0]), bounds, 50)
    assert np.argwhere(acc.matrix).tolist() == [[25, 25]]
    assert np.array_equal(acc.matrix, histogram2d_reference([3.0], [4.0], bounds, 50))


def test_all_points_with_same_x_fill_one_column():
    y = np.linspace(0, 9, 10)
    x = np.full(10, 2.0)
    bounds = auto_bounds(2.0, 2.0, 0.0, 9.0)
    acc = accumulate(x, y, bounds, 5)
    assert np.array_equal(acc.matrix, histogram2d_reference(x, y, bounds, 5))
    assert acc.matrix[:, 2].sum() == 10 and acc.matrix.sum() == 10


def test_empty_day_gives_zero_matrix():
    acc = HeatmapAccumulator(GridBounds(0, 1, 0, 1), 50)
    acc.add(np.array([]), np.array([]))
    assert acc.matrix.shape == (50, 50) and acc.matrix.sum() == 0
    assert matrix_summary(acc.matrix) == {"sum": 0.0, "max": 0.0, "nonempty_cells": 0}


def test_add_cells_accumulates_sql_counts():
    acc = HeatmapAccumulator(GridBounds(0, 1, 0, 1), 3)
    acc.add_cells([0, 2, 0], [1, 2, 1], [4, 5, 1])
    assert acc.matrix.tolist() == [[0, 5, 0], [0, 0, 0], [0, 0, 5]]


def test_cell_index_marks_out_of_range():
    index, inside = cell_index(np.array([-1.0, 0.0, 0.5, 1.0, 1.5]), 0.0, 1.0, 2)
    assert inside.tolist() == [False, True, True, True, False]
    assert index[inside].tolist() == [0, 1, 1]


def test_json_matrix_is_floats_like_the_old_job():
    assert matrix_to_json(np.array([[1, 0], [0, 2]])) == [[1.0, 0.0], [0.0, 2.0]]

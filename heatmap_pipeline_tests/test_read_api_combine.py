"""core/combine.py: the read API's arithmetic on stored matrices, tested directly."""

import numpy as np
import pytest

from heatmap_pipeline.core.combine import Binning, BinningMismatch, common_binning, normalise, smooth, sum_matrices

SQUARE = Binning(3, 3, (0.0, 100.0, 0.0, 100.0))


def test_common_binning_names_each_group_of_days():
    assert common_binning([("d1", SQUARE), ("d2", Binning(3, 3, (0.0, 100.0, 0.0, 100.0)))]) == SQUARE
    wide = Binning(3, 3, (0.0, 200.0, 0.0, 100.0))
    with pytest.raises(BinningMismatch) as error:
        common_binning([("d1", SQUARE), ("d2", wide), ("d3", SQUARE), ("d4", Binning(4, 2, None))])
    assert str(error.value) == (
        "days binned differently cannot be summed cell by cell: d1, d3 (grid 3x3, bounds [0, 100, 0, 100]); "
        "d2 (grid 3x3, bounds [0, 200, 0, 100]); d4 (grid 4x2, no recorded bounds)")


def test_sum_matrices_adds_cell_by_cell_and_refuses_another_shape():
    assert np.array_equal(sum_matrices([[[1, 2]], [[3, 4]]], (1, 2)), [[4, 6]])
    assert np.array_equal(sum_matrices([], (2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"shape \(1, 3\) where \(1, 2\)"):
        sum_matrices([[[1, 2, 3]]], (1, 2))
    with pytest.raises(ValueError, match="not a finite number"):
        sum_matrices([[[1, None]]], (1, 2))  # JSON null: NaN once in numpy


def test_normalise_never_divides_by_zero():
    matrix = np.array([[1.0, 3.0]])
    assert np.array_equal(normalise(matrix, "share", total=4, sessions=None), [[0.25, 0.75]])
    assert np.array_equal(normalise(matrix, "per_session", total=4, sessions=2), [[0.5, 1.5]])
    assert np.array_equal(normalise(np.zeros((1, 2)), "share", total=0, sessions=0), [[0, 0]])
    assert np.array_equal(normalise(np.zeros((1, 2)), "per_session", total=0, sessions=0), [[0, 0]])
    with pytest.raises(ValueError, match="per_session needs the sessions count"):
        normalise(matrix, "per_session", total=4, sessions=None)


def test_smooth_keeps_the_sum_and_refuses_sigmas_out_of_range():
    matrix = np.zeros((5, 7))
    matrix[0, 0] = 6  # in a corner: reflected edges keep what a constant edge would lose
    smoothed = smooth(matrix, 2.0)
    assert np.isclose(smoothed.sum(), 6.0) and smoothed[0, 0] < 6 and smoothed[4, 6] > 0
    assert smooth(matrix, 0) is matrix
    for sigma in (-0.1, 50.1, float("nan")):
        with pytest.raises(ValueError):
            smooth(matrix, sigma)

"""The SQL pushdown of the heatmap gives exactly ``np.histogram2d``'s matrix, on SQLite and PostgreSQL.

Random data with automatic and with fixed bounds, points on every edge, on the upper bound,
a single point, all points equal - and points on the ``np.linspace`` edges of bounds where
floor((v - lo) / step) would put them one cell off.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import sqlalchemy as sa

from heatmap_pipeline.core.binning import GridBounds, auto_bounds, bin_edges
from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.migrations import ensure_warehouse_schema
from heatmap_pipeline.warehouse.tables import game_events
from heatmap_pipeline.warehouse.heatmaps import compute_heatmap
from heatmap_pipeline_tests.support import histogram2d_reference

DAY = dt.date(2025, 11, 16)
GRID = 50
# For these bounds, floor((edge - lo) / step) is one cell off numpy's for edges 11, 15 and 30.
TRICKY = GridBounds(2.364324940051347, 287.5083874681994, 2.364324940051347, 287.5083874681994)


def store(url: str, level: str, x, y) -> sa.Engine:
    engine = get_engine(url)
    ensure_warehouse_schema(engine)
    rows = [
        {"event_date": DAY, "event_id": f"{level}-{i}", "ts": dt.datetime(2025, 11, 16, 12), "level": level, "x": float(a), "y": float(b)}
        for i, (a, b) in enumerate(zip(x, y))
    ]
    with engine.begin() as conn:
        conn.execute(game_events.insert(), rows)
    return engine


def datasets():
    rng = np.random.default_rng(7)
    tricky_edges = bin_edges(TRICKY.x_min, TRICKY.x_max, GRID)
    return {
        "random": (rng.normal(50, 20, 3000), rng.uniform(-10, 10, 3000), None),
        "random-fixed": (rng.uniform(-20, 120, 2000), rng.uniform(-20, 120, 2000), GridBounds(0, 100, 0, 100)),
        "on-every-edge": (np.tile(bin_edges(0, 100, GRID), 3), np.repeat([0.0, 50.0, 100.0], GRID + 1), GridBounds(0, 100, 0, 100)),
        "upper-bound": (np.array([0.0, 10.0, 10.0]), np.array([0.0, 10.0, 5.0]), None),
        "single-point": (np.array([3.25]), np.array([-1.5]), None),
        "all-equal": (np.full(40, 7.0), np.full(40, 7.0), None),
        "tricky-edges": (tricky_edges, tricky_edges[::-1].copy(), TRICKY),
    }


@pytest.mark.parametrize("name", sorted(datasets()))
def test_sql_heatmap_equals_histogram2d(db_url, name):
    x, y, fixed = datasets()[name]
    engine = store(db_url, "1", x, y)
    result = compute_heatmap(engine, DAY, "1", GRID, fixed)
    bounds = fixed or auto_bounds(x.min(), x.max(), y.min(), y.max())
    assert result.bounds == bounds
    expected = histogram2d_reference(x, y, bounds, GRID)
    assert np.array_equal(result.matrix, expected)
    inside = (x >= bounds.x_min) & (x <= bounds.x_max) & (y >= bounds.y_min) & (y <= bounds.y_max)
    assert (result.points, result.out_of_bounds) == (len(x), int((~inside).sum()))

"""Helpers of the read API and page tests: stored heatmaps written straight into the warehouse tables
(as level_heatmaps writes them), and admin-server settings."""

from __future__ import annotations

import datetime as dt

import numpy as np
import sqlalchemy as sa

from heatmap_pipeline.core.binning import matrix_summary, matrix_to_json
from heatmap_pipeline.settings import load_settings
from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.migrations import migrate_once
from heatmap_pipeline.warehouse.tables import heatmap_kinds, heatmaps
from heatmap_pipeline_tests.admin_servers import free_port

KEY = "reader-key"


def read_api_settings(url: str, home, **extra: str):
    env = {
        "DATABASE_URL": url,
        "HEATMAP_PIPELINE_HOME": str(home),
        "ADMIN_API_KEY": KEY,
        "DAGSTER_GRAPHQL_URL": f"http://127.0.0.1:{free_port()}/graphql",  # no webserver: reads do not need one
        **extra,
    }
    return load_settings(env)


def put_kind(url: str, level: str, date: dt.date, kind: str, matrix, bounds=(0.0, 100.0, 0.0, 100.0),
             sessions: int | None = 3, out_of_bounds: int = 0) -> np.ndarray:
    """One heatmap_kinds row, with the totals level_heatmaps would write for ``matrix``."""
    engine = get_engine(url)
    migrate_once(engine)
    array = np.asarray(matrix, dtype=np.float64)
    summary = matrix_summary(array)
    x_min, x_max, y_min, y_max = bounds if bounds is not None else (None,) * 4
    with engine.begin() as conn:
        conn.execute(sa.delete(heatmap_kinds).where(heatmap_kinds.c.level == level, heatmap_kinds.c.date == date,
                                                    heatmap_kinds.c.kind == kind))
        conn.execute(heatmap_kinds.insert().values(
            level=level, date=date, kind=kind, grid_x=array.shape[1], grid_y=array.shape[0],
            matrix=matrix_to_json(array), x_min=x_min, x_max=x_max, y_min=y_min, y_max=y_max,
            bounds_source="fixed" if bounds is not None else None, total=summary["sum"], max_count=summary["max"],
            nonempty_cells=summary["nonempty_cells"], out_of_bounds=out_of_bounds,
            events=int(summary["sum"]) + out_of_bounds, sessions=sessions, updated_at=dt.datetime(2025, 11, 17),
        ))
    return array


def put_old_row(url: str, level: str, date: dt.date, matrix, grid_size: str = "3") -> None:
    """A row of the old ``heatmaps`` table as the old job wrote it: level, date, grid_size, matrix only."""
    engine = get_engine(url)
    migrate_once(engine)
    with engine.begin() as conn:
        conn.execute(heatmaps.insert().values(level=level, date=date, grid_size=grid_size, matrix=matrix))

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


def level_art(path) -> None:
    """A stand-in for a level's art: sea at the bottom, land, a road across (opaque RGB)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (400, 200), (64, 120, 190))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, 400, 140], fill=(118, 160, 92))
    draw.rectangle([0, 90, 400, 104], fill=(190, 180, 150))
    for x in range(20, 400, 60):
        draw.rectangle([x, 30, x + 30, 60], fill=(150, 110, 80))
    image.save(path)


def levels_file(directory) -> str:
    """A levels file naming level 1 "Harbour": bounds 0-100 x 0-50, a 10 x 5 grid, art under the whole level."""
    level_art(directory / "harbour.png")
    path = directory / "levels.toml"
    path.write_text(
        '[levels.1]\nname = "Harbour"\nbounds = [0, 100, 0, 50]\ngrid = [10, 5]\n'
        'background = { image = "harbour.png", x_min = 0, x_max = 100, y_min = 0, y_max = 50 }\n'
    )
    return str(path)

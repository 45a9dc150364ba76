"""The read API over what the real assets wrote: ETL and level_heatmaps materialized (Dagster, in process),
then read over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json

import httpx
import numpy as np
import sqlalchemy as sa

from heatmap_pipeline.core.binning import GridBounds
from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.tables import heatmaps
from heatmap_pipeline.web.app import create_app
from heatmap_pipeline_tests.admin_servers import serve_in_thread
from heatmap_pipeline_tests.read_api_data import KEY, read_api_settings
from heatmap_pipeline_tests.support import (
    build_defs, event, histogram2d_reference, materialize_etl, materialize_heatmap, write_source_events,
)

BOUNDS = GridBounds(0.0, 100.0, 0.0, 50.0)
DAYS = ("2025-11-15", "2025-11-16")


def test_the_api_serves_what_level_heatmaps_wrote(monkeypatch, db_url, tmp_path):
    rng = np.random.default_rng(11)
    source, points = [], {}
    for day in DAYS:
        start = dt.datetime.fromisoformat(day).replace(hour=9)
        for kind, event_type, n in (("moves", "move", 60), ("deaths", "death", 15)):
            x, y = rng.uniform(0, 100, n), rng.uniform(0, 50, n)
            points[(day, kind)] = (x, y)
            source += [event(start + dt.timedelta(seconds=i), {"x": float(a), "y": float(b), "level": 1},
                             event_type=event_type, session_id=f"s{i % 4}") for i, (a, b) in enumerate(zip(x, y))]
    write_source_events(db_url, source)
    defs = build_defs(monkeypatch, db_url, HEATMAP_LEVELS="1", HEATMAP_GRID_SIZE="10",
                      HEATMAP_BOUNDS=json.dumps({"1": [BOUNDS.x_min, BOUNDS.x_max, BOUNDS.y_min, BOUNDS.y_max]}))
    for day in DAYS:
        assert materialize_etl(defs, day).success and materialize_heatmap(defs, day, "1").success

    with serve_in_thread(create_app(read_api_settings(db_url, tmp_path))) as base:
        def read(**params):
            response = httpx.get(f"{base}/api/v1/heatmap", params={"level": "1", **params}, headers={"x-api-key": KEY})
            assert response.status_code == 200, response.text
            return response

        old = read(date="2025-11-16")
        deaths = read(date="2025-11-16", kind="deaths").json()
        week = read(**{"from": DAYS[0], "to": DAYS[1], "kind": "deaths"}).json()

    # The old reader's answer (SELECT matrix FROM heatmaps WHERE level AND date), byte for byte, then our fields.
    with get_engine(db_url).connect() as conn:
        stored = conn.execute(sa.select(heatmaps.c.matrix).where(heatmaps.c.level == "1",
                                                                 heatmaps.c.date == dt.date(2025, 11, 16))).scalar_one()
    old_reader = json.dumps({"level": "1", "date": "2025-11-16", "matrix": stored}, separators=(",", ":")).encode()
    assert old.content.startswith(old_reader[:-1] + b",")
    # positions = every event with x and y (the old behaviour): the moves and the deaths.
    every_x, every_y = (np.concatenate([points[("2025-11-16", kind)][axis] for kind in ("moves", "deaths")])
                        for axis in (0, 1))
    assert np.array_equal(np.array(stored), histogram2d_reference(every_x, every_y, BOUNDS, 10))
    # Each kind against an independent count, and the range as the sum of its days.
    assert np.array_equal(np.array(deaths["matrix"]), histogram2d_reference(*points[("2025-11-16", "deaths")], BOUNDS, 10))
    assert (deaths["total"], deaths["sessions"], deaths["bounds_source"]) == (15.0, 4, "fixed")
    expected_week = sum(histogram2d_reference(*points[(day, "deaths")], BOUNDS, 10) for day in DAYS)
    assert np.array_equal(np.array(week["matrix"]), expected_week) and week["days"] == list(DAYS)
    assert week["total"] == 30.0 and week["sessions"] == 8

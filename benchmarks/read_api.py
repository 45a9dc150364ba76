"""Timing of the heatmap read API: one day, a 92-day range (the default HEATMAP_MAX_RANGE_DAYS) and its PNG,
over real HTTP (uvicorn in a thread) on a temporary SQLite warehouse of 100 x 100 daily matrices.

    PYTHONPATH=. .venv/bin/python benchmarks/read_api.py

Prints the median of 5 requests of each kind and the answer's size.
"""

from __future__ import annotations

import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from heatmap_pipeline.web.app import create_app
from heatmap_pipeline_tests.admin_servers import serve_in_thread
from heatmap_pipeline_tests.read_api_data import KEY, put_kind, read_api_settings

DAYS, GRID, REPEATS = 92, 100, 5


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="read_api_bench_"))
    url = f"sqlite:///{home / 'warehouse.sqlite'}"
    rng = np.random.default_rng(1)
    first = dt.date(2025, 8, 1)
    last = first + dt.timedelta(DAYS - 1)
    for n in range(DAYS):
        put_kind(url, "1", first + dt.timedelta(n), "positions", rng.poisson(2, (GRID, GRID)))
    with serve_in_thread(create_app(read_api_settings(url, home))) as base, \
            httpx.Client(base_url=base, headers={"x-api-key": KEY}, timeout=120) as client:
        cases = {
            f"one day, JSON ({GRID}x{GRID})": ("/api/v1/heatmap", {"level": "1", "date": last.isoformat()}),
            f"{DAYS}-day range, JSON": ("/api/v1/heatmap", {"level": "1", "from": first.isoformat(), "to": last.isoformat()}),
            f"{DAYS}-day range, PNG, sqrt, smooth=1": (f"/api/v1/heatmaps/1/{first}..{last}.png", {"smooth": "1"}),
            f"{DAYS}-day range minus the same range, share, PNG": (
                f"/api/v1/heatmaps/1/{first}..{last}.png",
                {"normalize": "share", "compare_from": first.isoformat(), "compare_to": last.isoformat()}),
            f"listing of {DAYS} rows": ("/api/v1/heatmaps", {"level": "1"}),
        }
        for name, (path, params) in cases.items():
            seconds = []
            for _ in range(REPEATS):
                started = time.perf_counter()
                response = client.get(path, params=params)
                seconds.append(time.perf_counter() - started)
                response.raise_for_status()
            print(f"{name}: {statistics.median(seconds) * 1000:.0f} ms, {len(response.content)} bytes")


if __name__ == "__main__":
    main()

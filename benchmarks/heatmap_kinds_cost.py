"""What heatmap kinds and matplotlib previews cost, on one loaded day (issue 13).

    python benchmarks/heatmap_kinds_cost.py --database postgresql --events 1000000
    python benchmarks/heatmap_kinds_cost.py --database sqlite --events 300000

Loads a day with bench.py's generator and the real ETL, then, best of --repeat, for the 3 levels:
binning positions only, binning positions + deaths + jumps (with sessions), the whole
level_heatmaps runs through Dagster, and the previews alone (one per kind, 480 px, CPU seconds).
"""

from __future__ import annotations

import argparse
import time

import dagster as dg
import sqlalchemy as sa

import bench
from heatmap_pipeline.core.levels import DEFAULT_KINDS
from heatmap_pipeline.core.render import render_heatmap_previews
from heatmap_pipeline.defs.assets.heatmaps import PREVIEW_WIDTH_PX
from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.heatmaps import compute_heatmap


def best_of(repeat: int, work, clock=time.perf_counter) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = clock()
        work()
        best = min(best, clock() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    kinds = tuple(DEFAULT_KINDS.values())
    with bench.fresh_database(args.database, args.admin_url) as url:
        bench.generate_day(url, args.events)
        events_asset, heatmaps_asset, _noop, resources = bench.build(url)
        instance = dg.DagsterInstance.ephemeral()
        bench.materialize_events(events_asset, resources, instance)
        engine = get_engine(url)
        if args.database == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text("VACUUM ANALYZE game_events"))  # as autovacuum would after a big load

        def binning(chosen):
            return lambda: [compute_heatmap(engine, bench.DAY, level, bench.GRID, kinds=chosen) for level in bench.LEVELS]

        results = [compute_heatmap(engine, bench.DAY, level, bench.GRID, kinds=kinds) for level in bench.LEVELS]

        def previews():
            for result in results:  # as level_heatmaps draws them
                matrices = [kind.matrix for kind in result.kinds.values()]
                render_heatmap_previews(matrices, bounds=result.bounds, titles=["t"] * len(matrices), width_px=PREVIEW_WIDTH_PX)

        rows = {
            "binning, positions only (3 levels)": best_of(args.repeat, binning(())),
            "binning, positions + deaths + jumps (3 levels)": best_of(args.repeat, binning(kinds)),
            "level_heatmaps runs in Dagster (3 levels)": best_of(
                args.repeat, lambda: bench.materialize_heatmaps(heatmaps_asset, resources, instance)
            ),
            "previews alone, 9 PNGs (CPU seconds)": best_of(args.repeat, previews, time.process_time),
        }
    print(f"{args.database}, {args.events:,} events/day:")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.3f} s |")


if __name__ == "__main__":
    main()

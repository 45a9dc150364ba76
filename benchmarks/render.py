"""CPU per heatmap picture: one level's kinds (3 matrices of one grid), as the level_heatmaps asset
draws its previews (render_heatmap_previews, Pillow) and as the matplotlib figure the read API
serves (render_heatmap_pngs); median of 15 calls after a warm-up.

    python benchmarks/render.py [--width-px 480] [--grid 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from heatmap_pipeline.core.binning import GridBounds
from heatmap_pipeline.core.render import render_heatmap_pngs, render_heatmap_previews

KINDS = 3
LEVEL_3 = GridBounds(0, 197, 1, 115)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width-px", type=int, default=480, help="the asset's previews are 480 px wide")
    parser.add_argument("--grid", type=int, default=50, help="cells per axis (HEATMAP_GRID_SIZE's default)")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    matrices = [rng.poisson(lam, (args.grid, args.grid)).astype(float) for lam in (30.0, 1.0, 3.0)][:KINDS]
    titles = [f"level 3 - 2025-06-01 - kind {i}: 123456 events" for i in range(KINDS)]
    for name, render in (("preview (Pillow)", render_heatmap_previews), ("figure (matplotlib)", render_heatmap_pngs)):
        render(matrices, bounds=LEVEL_3, titles=titles, width_px=args.width_px)  # fonts, caches
        cpu_ms, wall_ms = [], []
        for _ in range(args.repeat):
            cpu, wall = time.process_time(), time.perf_counter()
            pngs = render(matrices, bounds=LEVEL_3, titles=titles, width_px=args.width_px)
            cpu_ms.append((time.process_time() - cpu) / KINDS * 1000)
            wall_ms.append((time.perf_counter() - wall) / KINDS * 1000)
        print(
            f"{name}, {args.width_px} px, {args.grid}x{args.grid} grid: per picture {statistics.median(cpu_ms):.1f} ms CPU, "
            f"{statistics.median(wall_ms):.1f} ms wall (median of {args.repeat}), {len(pngs[0]):,} bytes"
        )


if __name__ == "__main__":
    main()

"""Heatmap matrix -> PNG bytes (Pillow). No Dagster here.

The picture puts y upwards (row 0, the lowest y bin, at the bottom), as a level designer
reads a map, with a title, the bounds on the axes and a colour scale.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Anchor colours of a perceptual "inferno"-like ramp, from empty (black) to hot (pale yellow).
_RAMP = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]],
    dtype=np.float64,
)


def colorize(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB."""
    values = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(values).astype(int)
    high = np.minimum(low + 1, len(_RAMP) - 1)
    frac = (values - low)[..., None]
    return (_RAMP[low] * (1 - frac) + _RAMP[high] * frac).round().astype(np.uint8)


def render_heatmap_png(matrix, title: str = "", bounds: list[float] | None = None, cell_px: int | None = None) -> bytes:
    """Render counts (rows = y bins, cols = x bins) as a PNG; sqrt scale so sparse paths show."""
    matrix = np.asarray(matrix, dtype=np.float64)
    rows, cols = matrix.shape
    cell_px = cell_px or max(1, 400 // max(rows, cols))
    peak = matrix.max() if matrix.size else 0.0
    scaled = np.sqrt(matrix / peak) if peak > 0 else np.zeros_like(matrix)
    rgb = colorize(np.flipud(scaled))  # flip: y grows upwards in the picture
    grid = Image.fromarray(rgb, "RGB").resize((cols * cell_px, rows * cell_px), Image.NEAREST)

    font = ImageFont.load_default()
    margin_left, margin_top, margin_bottom, bar_w = 60, 28, 34, 70
    canvas = Image.new("RGB", (margin_left + grid.width + bar_w, margin_top + grid.height + margin_bottom), "white")
    canvas.paste(grid, (margin_left, margin_top))
    draw = ImageDraw.Draw(canvas)
    draw.text((margin_left, 8), title or "heatmap", fill="black", font=font)
    if bounds is not None:
        x_min, x_max, y_min, y_max = bounds
        bottom = margin_top + grid.height
        draw.text((margin_left, bottom + 4), f"x {x_min:g}", fill="black", font=font)
        label = f"{x_max:g}"
        draw.text((margin_left + grid.width - 6 * len(label), bottom + 4), label, fill="black", font=font)
        draw.text((4, bottom - 12), f"y {y_min:g}", fill="black", font=font)
        draw.text((4, margin_top), f"y {y_max:g}", fill="black", font=font)
    # colour scale: top = max, bottom = 0
    bar_x = margin_left + grid.width + 10
    ramp = colorize(np.linspace(1, 0, grid.height)[:, None].repeat(12, axis=1))
    canvas.paste(Image.fromarray(ramp, "RGB"), (bar_x, margin_top))
    draw.text((bar_x + 15, margin_top), f"{peak:g}", fill="black", font=font)
    draw.text((bar_x + 15, margin_top + grid.height - 10), "0", fill="black", font=font)
    draw.text((bar_x - 4, margin_top + grid.height + 4), "sqrt scale", fill="black", font=font)
    buffer = io.BytesIO()
    # optimize=True took ~50 ms a heatmap (most of a heatmap run at 1M events/day) for 20% fewer bytes
    canvas.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()

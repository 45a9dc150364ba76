"""Draws the demo levels' stand-in art (examples/art/level*.png) for examples/levels.toml.

    python examples/art/make_art.py

Each image covers its level's world exactly (the corners given in levels.toml): a floor, walls
and the demo's hotspots as pads, so a heatmap drawn over it can be checked by eye.
"""

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent
PX_PER_UNIT = 4
# level: (x_min, x_max, y_min, y_max), hotspots - as in heatmap_pipeline/runtime/demo.py
LEVELS = {
    "1": ((0.0, 100.0, 0.0, 100.0), [(20, 80), (50, 50), (85, 15)], (112, 146, 92)),
    "2": ((-50.0, 50.0, -50.0, 50.0), [(-30, -30), (0, 25), (35, -10)], (150, 128, 96)),
    "3": ((0.0, 200.0, 0.0, 120.0), [(30, 100), (100, 60), (170, 20)], (96, 120, 150)),
}


def draw(level: str) -> None:
    (x0, x1, y0, y1), hotspots, floor = LEVELS[level]
    width, height = int((x1 - x0) * PX_PER_UNIT), int((y1 - y0) * PX_PER_UNIT)
    image = Image.new("RGB", (width, height), floor)
    pen = ImageDraw.Draw(image)

    def pixel(x: float, y: float) -> tuple[float, float]:  # world -> image (row 0 is the top, y_max)
        return (x - x0) * PX_PER_UNIT, (y1 - y) * PX_PER_UNIT

    step = 10
    for gx in range(int(x0), int(x1) + 1, step):
        pen.line([pixel(gx, y0), pixel(gx, y1)], fill=tuple(c - 12 for c in floor), width=1)
    for gy in range(int(y0), int(y1) + 1, step):
        pen.line([pixel(x0, gy), pixel(x1, gy)], fill=tuple(c - 12 for c in floor), width=1)
    pen.rectangle([0, 0, width - 1, height - 1], outline=(40, 40, 40), width=6)  # the outer walls
    for hx, hy in hotspots:
        left, top = pixel(hx - 4, hy + 4)
        right, bottom = pixel(hx + 4, hy - 4)
        pen.ellipse([left, top, right, bottom], fill=(230, 220, 180), outline=(60, 60, 60), width=2)
    image.save(HERE / f"level{level}.png", optimize=True)


if __name__ == "__main__":
    for name in LEVELS:
        draw(name)

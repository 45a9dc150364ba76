import io

import numpy as np
from PIL import Image

from heatmap_pipeline.core.render import colorize, render_heatmap_png


def test_png_decodes_and_scales_with_grid():
    matrix = np.zeros((50, 50))
    matrix[0, 0] = 10
    png = render_heatmap_png(matrix, title="level 1", bounds=[0, 100, 0, 100])
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.width > 400 and image.height > 400  # 8 px per cell plus axes


def test_lowest_y_bin_is_drawn_at_the_bottom():
    matrix = np.zeros((2, 2))
    matrix[0, 0] = 1  # lowest y, lowest x
    image = Image.open(io.BytesIO(render_heatmap_png(matrix, cell_px=100))).convert("RGB")
    # grid starts at (60, 28): the bottom-left cell is hot (bright), the top-left cell empty (black)
    bottom_left = image.getpixel((60 + 50, 28 + 150))
    top_left = image.getpixel((60 + 50, 28 + 50))
    assert sum(bottom_left) > 600 and top_left == (0, 0, 4)


def test_empty_matrix_renders_without_dividing_by_zero():
    image = Image.open(io.BytesIO(render_heatmap_png(np.zeros((3, 3)))))
    assert image.size[0] > 0


def test_colorize_ends_of_the_ramp():
    assert colorize(np.array([0.0])).tolist() == [[0, 0, 4]]
    assert colorize(np.array([1.0])).tolist() == [[252, 255, 164]]

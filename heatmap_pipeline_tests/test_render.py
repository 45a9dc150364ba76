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
    # 8 px per cell (400 // 50) plus the margins: 60 left, 70 colour bar; 28 top, 34 bottom
    assert image.size == (60 + 50 * 8 + 70, 28 + 50 * 8 + 34)
    rgb = image.convert("RGB")
    assert sum(rgb.getpixel((60 + 4, 28 + 49 * 8 + 4))) > 600  # the one hot cell: lowest x, lowest y
    assert rgb.getpixel((60 + 49 * 8 + 4, 28 + 4)) == (0, 0, 4)  # highest x, highest y: empty


def test_lowest_y_bin_is_drawn_at_the_bottom():
    matrix = np.zeros((2, 2))
    matrix[0, 0] = 1  # lowest y, lowest x
    image = Image.open(io.BytesIO(render_heatmap_png(matrix, cell_px=100))).convert("RGB")
    # grid starts at (60, 28): the bottom-left cell is hot (bright), the top-left cell empty (black)
    bottom_left = image.getpixel((60 + 50, 28 + 150))
    top_left = image.getpixel((60 + 50, 28 + 50))
    assert sum(bottom_left) > 600 and top_left == (0, 0, 4)


def test_empty_matrix_renders_every_cell_empty_without_dividing_by_zero():
    image = Image.open(io.BytesIO(render_heatmap_png(np.zeros((3, 3)), cell_px=10))).convert("RGB")
    assert image.size == (60 + 30 + 70, 28 + 30 + 34)
    cells = {image.getpixel((60 + x, 28 + y)) for x in range(30) for y in range(30)}
    assert cells == {(0, 0, 4)}  # no NaN colours, no hot cell


def test_colorize_ends_of_the_ramp():
    assert colorize(np.array([0.0])).tolist() == [[0, 0, 4]]
    assert colorize(np.array([1.0])).tolist() == [[252, 255, 164]]

"""core/render.py: PNGs decoded with Pillow and checked - size, aspect ratio, transparent empty
cells, the hottest cell where the data puts it, the background visible under empty cells, the
scales and the diverging map."""

import io

import numpy as np
import pytest
from PIL import Image

from heatmap_pipeline.core.binning import GridBounds
from heatmap_pipeline.core.levels import Background
from heatmap_pipeline.core.render import (
    plot_geometry,
    render_heatmap_png,
    render_heatmap_pngs,
    render_heatmap_previews,
    world_to_pixel,
)

LEVEL_3 = GridBounds(0, 197, 1, 115)  # the example: 1.7 times wider than high


def decode(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return image.convert("RGBA")


def cell_centre(bounds: GridBounds, shape, row: int, col: int) -> tuple[float, float]:
    rows, cols = shape
    x = bounds.x_min + (col + 0.5) * (bounds.x_max - bounds.x_min) / cols
    y = bounds.y_min + (row + 0.5) * (bounds.y_max - bounds.y_min) / rows
    return x, y


def hottest_pixel(image: Image.Image, box) -> tuple[int, int]:
    """The brightest opaque pixel of the plot area (inferno's hot end is pale yellow)."""
    left, top, right, bottom = box
    rgba = np.asarray(image)[top:bottom, left:right].astype(int)
    brightness = np.where(rgba[..., 3] > 200, rgba[..., :3].sum(axis=2), -1)
    row, col = np.unravel_index(np.argmax(brightness), brightness.shape)
    return left + col, top + row


def test_size_and_aspect_follow_the_world_bounds():
    matrix = np.ones((50, 50))
    png = render_heatmap_png(matrix, bounds=LEVEL_3, title="level 3", width_px=640)
    image = decode(png)
    (left, top, right, bottom), bounds = plot_geometry(png)
    assert image.width == 640 and bounds == LEVEL_3
    ratio = (right - left) / (bottom - top)
    assert ratio == pytest.approx(197 / 114, rel=0.02)  # not a square: the level's own shape
    tall = plot_geometry(render_heatmap_png(matrix, bounds=GridBounds(0, 50, 0, 100), width_px=640))[0]
    assert (tall[3] - tall[1]) / (tall[2] - tall[0]) == pytest.approx(2.0, rel=0.02)


def test_the_hottest_cell_is_where_the_data_puts_it_with_y_upwards():
    matrix = np.zeros((20, 30))
    matrix[16, 4] = 50  # high y, low x
    matrix[2, 25] = 3  # low y, high x
    png = render_heatmap_png(matrix, bounds=LEVEL_3, scale="linear")
    image = decode(png)
    box, _ = plot_geometry(png)
    x, y = hottest_pixel(image, box)
    expected = world_to_pixel(png, *cell_centre(LEVEL_3, matrix.shape, 16, 4))
    cell_w = (box[2] - box[0]) / 30
    cell_h = (box[3] - box[1]) / 20
    assert abs(x - expected[0]) <= cell_w and abs(y - expected[1]) <= cell_h
    assert y < (box[1] + box[3]) / 2  # high y is drawn in the upper half


def test_empty_cells_are_transparent_and_the_margins_white():
    matrix = np.zeros((10, 10))
    matrix[5, 5] = 7
    png = render_heatmap_png(matrix, bounds=GridBounds(0, 10, 0, 10))
    image = decode(png)
    empty = world_to_pixel(png, 1.5, 8.5)
    full = world_to_pixel(png, 5.5, 5.5)
    assert image.getpixel(empty)[3] == 0
    assert image.getpixel(full)[3] == 255
    assert image.getpixel((2, 2)) == (255, 255, 255, 255)


def green_and_blue_art(tmp_path) -> Background:
    """Art whose left half is green and right half blue, placed by its own corners on world x 0-100, y 0-50."""
    art = tmp_path / "art.png"
    pixels = np.zeros((50, 100, 3), dtype=np.uint8)
    pixels[:, :50] = (0, 160, 0)
    pixels[:, 50:] = (0, 0, 200)
    Image.fromarray(pixels).save(art)
    return Background(art, 0, 100, 0, 50)


def hot_cell_over_the_blue_half() -> np.ndarray:
    matrix = np.zeros((5, 10))
    matrix[2, 8] = 4
    return matrix


def assert_art_under_empty_cells_and_the_hot_cell_over_it(png: bytes) -> Image.Image:
    image = decode(png)
    r, g, b, a = image.getpixel(world_to_pixel(png, 20, 40))  # an empty cell over the green half
    assert a == 255 and g > 140 and r < 20 and b < 20
    r, g, b, a = image.getpixel(world_to_pixel(png, 70, 10))  # an empty cell over the blue half
    assert a == 255 and b > 180 and r < 20 and g < 20
    r, g, b, a = image.getpixel(world_to_pixel(png, 85, 25))  # the hot cell covers the art
    assert r > 150
    return image


def test_the_background_is_visible_under_empty_cells(tmp_path):
    png = render_heatmap_png(
        hot_cell_over_the_blue_half(), bounds=GridBounds(0, 100, 0, 50), background=green_and_blue_art(tmp_path)
    )
    assert_art_under_empty_cells_and_the_hot_cell_over_it(png)


def test_a_background_placed_by_its_corners_inside_larger_bounds(tmp_path):
    art = tmp_path / "art.png"
    Image.new("RGB", (10, 10), (200, 0, 0)).save(art)
    png = render_heatmap_png(
        np.zeros((4, 4)), bounds=GridBounds(0, 40, 0, 40), background=Background(art, 10, 20, 10, 20)
    )
    image = decode(png)
    assert image.getpixel(world_to_pixel(png, 15, 15))[:3] == (200, 0, 0)
    assert image.getpixel(world_to_pixel(png, 30, 30))[3] == 0  # outside the art: nothing drawn


@pytest.mark.parametrize("scale", ["linear", "sqrt", "log"])
def test_scales_order_the_colours_by_count(scale):
    matrix = np.zeros((1, 3))
    matrix[0] = [1, 10, 100]
    png = render_heatmap_png(matrix, bounds=GridBounds(0, 3, 0, 1), scale=scale)
    image = decode(png)
    brightness = [sum(image.getpixel(world_to_pixel(png, x + 0.5, 0.5))[:3]) for x in range(3)]
    assert brightness[0] < brightness[1] < brightness[2]
    if scale == "log":  # log spreads 1, 10, 100 evenly; linear squeezes 1 and 10 together
        linear = decode(render_heatmap_png(matrix, bounds=GridBounds(0, 3, 0, 1), scale="linear"))
        lin = [sum(linear.getpixel(world_to_pixel(png, x + 0.5, 0.5))[:3]) for x in range(3)]
        assert brightness[1] - brightness[0] > lin[1] - lin[0]


def test_diverging_is_symmetric_around_zero_and_zero_is_transparent():
    import matplotlib

    matrix = np.array([[-5.0, 0.0, 2.5, 5.0]])
    png = render_heatmap_png(matrix, bounds=GridBounds(0, 4, 0, 1), diverging=True, scale="linear",
                             colorbar_label="difference")
    image = decode(png)
    pixels = [image.getpixel(world_to_pixel(png, x + 0.5, 0.5)) for x in range(4)]
    reference = matplotlib.colormaps["RdBu_r"]
    # -5 and +5 at the two ends of the map, +2.5 half-way from the middle (0) to the red end
    for pixel, position in ((pixels[0], 0.0), (pixels[2], 0.75), (pixels[3], 1.0)):
        expected = [round(c * 255) for c in reference(position)[:3]]
        assert all(abs(p - e) <= 3 for p, e in zip(pixel[:3], expected)), (pixel, expected)
    assert pixels[0][2] > pixels[0][0] and pixels[3][0] > pixels[3][2]  # blue below zero, red above
    assert pixels[1][3] == 0


def test_an_empty_matrix_and_no_bounds_still_render():
    png = render_heatmap_png(np.zeros((3, 4)), bounds=None)
    image = decode(png)
    (left, top, right, bottom), bounds = plot_geometry(png)
    assert bounds == GridBounds(0, 4, 0, 3)  # cell indices
    assert np.asarray(image)[top + 2:bottom - 2, left + 2:right - 2, 3].max() == 0  # every cell empty


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale": "cubic"}, "scale must be one of linear, sqrt, log"),
        ({"width_px": 50}, "width_px must be at least 200"),
        ({"bounds": GridBounds(5, 5, 0, 1)}, "x_min < x_max"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        render_heatmap_png(np.ones((2, 2)), **{"bounds": GridBounds(0, 1, 0, 1), **kwargs})


def test_coordinates_near_the_largest_float_are_drawn_in_powers_of_ten():
    bounds = GridBounds(-1e308, 1e308, -0.5, 0.5)
    matrix = np.zeros((2, 4))
    matrix[1, 3] = 2  # highest x, highest y
    png = render_heatmap_png(matrix, bounds=bounds, scale="linear")
    box, read_back = plot_geometry(png)
    assert read_back == bounds  # the true world, for readers
    x, y = hottest_pixel(decode(png), box)
    expected = world_to_pixel(png, 0.75e308, 0.25)
    assert abs(x - expected[0]) <= (box[2] - box[0]) / 4 and abs(y - expected[1]) <= (box[3] - box[1]) / 2


def test_several_matrices_in_one_figure_draw_as_each_alone(tmp_path):
    art = tmp_path / "art.png"
    Image.new("RGB", (20, 10), (0, 120, 0)).save(art)
    background = Background(art, 0, 100, 0, 50)
    rng = np.random.default_rng(4)
    matrices = [rng.poisson(lam, (5, 10)) * 1.0 for lam in (4.0, 0.5, 0.0)]
    titles = ["positions", "deaths", "jumps"]
    together = render_heatmap_pngs(matrices, bounds=GridBounds(0, 100, 0, 50), titles=titles, background=background,
                                   width_px=480)
    for png, matrix, title in zip(together, matrices, titles):
        alone = render_heatmap_png(matrix, bounds=GridBounds(0, 100, 0, 50), title=title, background=background,
                                   width_px=480)
        assert np.array_equal(np.asarray(decode(png)), np.asarray(decode(alone))), title


# ------------------------------------------------------------ previews (the Dagster UI's) ---


def test_previews_follow_the_world_aspect_and_carry_the_geometry():
    matrices = [np.ones((50, 50)), np.zeros((50, 50))]
    pngs = render_heatmap_previews(matrices, bounds=LEVEL_3, titles=["positions", "deaths"], width_px=480)
    assert len(pngs) == 2
    for png in pngs:
        image = decode(png)
        (left, top, right, bottom), bounds = plot_geometry(png)
        assert image.width == 480 and bounds == LEVEL_3
        assert (right - left) / (bottom - top) == pytest.approx(197 / 114, rel=0.02)
    (tall_png,) = render_heatmap_previews([np.ones((4, 4))], bounds=GridBounds(0, 50, 0, 100), titles=["t"])
    tall = plot_geometry(tall_png)[0]
    assert (tall[3] - tall[1]) / (tall[2] - tall[0]) == pytest.approx(2.0, rel=0.02)


def test_a_preview_puts_the_hottest_cell_where_the_data_puts_it_with_y_upwards():
    matrix = np.zeros((20, 30))
    matrix[16, 4] = 50  # high y, low x
    matrix[2, 25] = 3  # low y, high x
    (png,) = render_heatmap_previews([matrix], bounds=LEVEL_3, titles=["t"], scale="linear")
    image = decode(png)
    box, _ = plot_geometry(png)
    x, y = hottest_pixel(image, box)
    expected = world_to_pixel(png, *cell_centre(LEVEL_3, matrix.shape, 16, 4))
    assert abs(x - expected[0]) <= (box[2] - box[0]) / 30 and abs(y - expected[1]) <= (box[3] - box[1]) / 20
    assert y < (box[1] + box[3]) / 2  # high y is drawn in the upper half
    low = image.getpixel(world_to_pixel(png, *cell_centre(LEVEL_3, matrix.shape, 2, 25)))
    mirrored = image.getpixel(world_to_pixel(png, *cell_centre(LEVEL_3, matrix.shape, 17, 25)))
    assert low[3] == 255 and mirrored[3] == 0  # the low-y cell at the bottom, nothing at its mirror image


def test_a_preview_shows_the_background_under_empty_cells_and_white_margins(tmp_path):
    (png,) = render_heatmap_previews([hot_cell_over_the_blue_half()], bounds=GridBounds(0, 100, 0, 50), titles=["t"],
                                     background=green_and_blue_art(tmp_path))
    image = assert_art_under_empty_cells_and_the_hot_cell_over_it(png)
    assert image.getpixel((image.width - 2, image.height - 2)) == (255, 255, 255, 255)


def test_a_preview_places_the_background_by_its_corners_and_leaves_the_rest_transparent(tmp_path):
    art = tmp_path / "art.png"
    Image.new("RGB", (10, 10), (200, 0, 0)).save(art)
    (png,) = render_heatmap_previews([np.zeros((4, 4))], bounds=GridBounds(0, 40, 0, 40), titles=["t"],
                                     background=Background(art, 10, 20, 10, 20))
    image = decode(png)
    assert image.getpixel(world_to_pixel(png, 15, 15))[:3] == (200, 0, 0)
    assert image.getpixel(world_to_pixel(png, 30, 30))[3] == 0  # outside the art: nothing drawn
    assert image.getpixel(world_to_pixel(png, 5, 35))[3] == 0


def test_previews_colour_as_the_full_render_does():
    matrix = np.zeros((1, 3))
    matrix[0] = [1, 10, 100]
    (preview,) = render_heatmap_previews([matrix], bounds=GridBounds(0, 3, 0, 1), titles=["t"], scale="log")
    full = render_heatmap_png(matrix, bounds=GridBounds(0, 3, 0, 1), scale="log")
    for x in range(3):
        ours = decode(preview).getpixel(world_to_pixel(preview, x + 0.5, 0.5))
        theirs = decode(full).getpixel(world_to_pixel(full, x + 0.5, 0.5))
        assert all(abs(a - b) <= 3 for a, b in zip(ours, theirs)), (x, ours, theirs)


def test_previews_name_bad_arguments():
    with pytest.raises(ValueError, match="scale must be one of"):
        render_heatmap_previews([np.ones((2, 2))], bounds=GridBounds(0, 1, 0, 1), titles=["t"], scale="cubic")
    with pytest.raises(ValueError, match="1 matrices but 2 titles"):
        render_heatmap_previews([np.ones((2, 2))], bounds=GridBounds(0, 1, 0, 1), titles=["t", "u"])

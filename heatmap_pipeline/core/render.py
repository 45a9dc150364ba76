"""Heatmap matrix -> PNG bytes with matplotlib (Agg, no display, no pyplot state). No Dagster here.

The picture is in world coordinates: the plot area spans the heatmap's bounds with the world's
aspect ratio (a level 197 wide and 114 high is drawn 1.7 times wider than high), y upwards
(row 0, the lowest y bin, at the bottom), ticks in world units on both axes, and a labelled
colour bar. Empty (0) cells are transparent: the level's background image, drawn under the
heatmap at its world corners, shows through them; without one, the PNG itself is transparent
there (so a page can lay it over the level art). The margins with the title, ticks and colour
bar are white.

The Dagster UI's previews (render_heatmap_previews) are the same plot area drawn with Pillow:
the same colour map and scale, cells upscaled, the art under empty cells, a title and a colour
bar with its range, but no axes or ticks (a few ms instead of ~36 ms each).

Both PNGs carry their own geometry as text chunks, so a reader (a test, a page) can map a pixel to
the world: ``heatmap:plot_box`` = left, top, right, bottom pixel edges of the plot area and
``heatmap:bounds`` = x_min, x_max, y_min, y_max.
"""

from __future__ import annotations

import functools
import io
import math
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot; we never do (Figure is used directly)

import numpy as np
from matplotlib import colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from heatmap_pipeline.core.binning import GridBounds
from heatmap_pipeline.core.levels import Background

SCALES = ("linear", "sqrt", "log")
_DPI = 100
_FONT = 8  # points at 100 dpi: about 11 px
_MARGIN = {"left": 58, "right": 96, "top": 30, "bottom": 34}  # pixels: tick labels, colour bar, title
_MAX_ASPECT = 3.0  # a plot area at most 3x taller than wide (a thin level is drawn thin, not tall)


def _as_bounds(bounds: GridBounds | Sequence[float] | None, shape: tuple[int, int]) -> tuple[GridBounds, bool]:
    """The world box to draw in, and whether it is real world coordinates (else cell indices)."""
    if bounds is None:
        rows, cols = shape
        return GridBounds(0.0, float(max(cols, 1)), 0.0, float(max(rows, 1))), False
    if not isinstance(bounds, GridBounds):
        bounds = GridBounds(*(float(v) for v in bounds))
    return bounds, True


def _norm(matrix: np.ndarray, scale: str, diverging: bool) -> colors.Normalize:
    finite = matrix[np.isfinite(matrix)]
    if diverging:
        limit = float(np.abs(finite).max()) if finite.size else 0.0
        limit = limit or 1.0
        if scale == "linear":
            return colors.Normalize(-limit, limit)
        if scale == "sqrt":
            return colors.FuncNorm(
                (lambda v: np.sign(v) * np.sqrt(np.abs(v)), lambda v: np.sign(v) * np.square(v)), -limit, limit
            )
        smallest = float(np.abs(finite[finite != 0]).min()) if np.any(finite != 0) else 1.0
        return colors.SymLogNorm(linthresh=smallest, vmin=-limit, vmax=limit, base=10)
    peak = float(finite.max()) if finite.size else 0.0
    peak = peak if peak > 0 else 1.0
    if scale == "linear":
        return colors.Normalize(0.0, peak)
    if scale == "sqrt":
        return colors.PowerNorm(0.5, vmin=0.0, vmax=peak)
    positive = finite[finite > 0]
    low = float(positive.min()) if positive.size else 1.0
    return colors.LogNorm(vmin=min(low, peak), vmax=peak if peak > low else low * 10)


def _checked(matrices: Sequence, *, bounds, titles: Sequence[str], scale: str, width_px: int):
    """The matrices as float arrays, the world box and whether it is world coordinates; a
    ValueError naming what is wrong with the arguments."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    matrices = [np.asarray(m, dtype=np.float64) for m in matrices]
    if len(titles) != len(matrices):
        raise ValueError(f"{len(matrices)} matrices but {len(titles)} titles")
    for matrix in matrices:
        if matrix.ndim != 2 or not matrix.size or matrix.shape != matrices[0].shape:
            raise ValueError(f"matrices must be non-empty 2-D grids of one shape, got shape {matrix.shape}")
    if width_px < 200:
        raise ValueError(f"width_px must be at least 200, got {width_px}")
    box, world = _as_bounds(bounds, matrices[0].shape)
    if not (all(math.isfinite(v) for v in box.as_list()) and box.x_min < box.x_max and box.y_min < box.y_max):
        raise ValueError(f"bounds must be finite with x_min < x_max and y_min < y_max, got {box.as_list()}")
    return matrices, box, world


def _plot_height(plot_w: int, box: GridBounds) -> int:
    """The plot area's pixel height for ``plot_w`` pixels of width: the world's aspect, clamped
    (so a very thin or tall level still fits). Halves: a width near the largest float."""
    ratio = (box.y_max / 2 - box.y_min / 2) / (box.x_max / 2 - box.x_min / 2)
    return max(24, min(round(plot_w * ratio), round(plot_w * _MAX_ASPECT)))


def _unit(low: float, high: float) -> float:
    """1, or the power of ten to draw an axis in when its width would overflow a float (or come
    near it: matplotlib's transforms multiply them)."""
    largest = max(abs(low), abs(high))
    return 10.0 ** math.floor(math.log10(largest)) if largest > 1e150 else 1.0


def render_heatmap_png(
    matrix,
    *,
    bounds: GridBounds | Sequence[float] | None,
    title: str = "",
    scale: str = "sqrt",
    background: Background | None = None,
    diverging: bool = False,
    colorbar_label: str = "events",
    width_px: int = 640,
) -> bytes:
    """Render ``matrix`` (rows = y bins, row 0 the lowest y; columns = x bins) as a PNG.

    ``bounds``: the world box the matrix covers (None: cell indices). ``scale``: the colour
    scale, linear, sqrt or log. ``diverging``: values of both signs (a difference of heatmaps)
    on a blue-white-red map symmetric around 0. ``background``: the level art, drawn under the
    heatmap at its world corners. ``width_px``: the PNG's width; its height follows the world's
    aspect ratio."""
    return render_heatmap_pngs(
        [matrix], bounds=bounds, titles=[title], scale=scale, background=background,
        diverging=diverging, colorbar_label=colorbar_label, width_px=width_px,
    )[0]


def render_heatmap_pngs(
    matrices: Sequence,
    *,
    bounds: GridBounds | Sequence[float] | None,
    titles: Sequence[str],
    scale: str = "sqrt",
    background: Background | None = None,
    diverging: bool = False,
    colorbar_label: str = "events",
    width_px: int = 640,
) -> list[bytes]:
    """One PNG per matrix, as render_heatmap_png draws it, for matrices of one grid and bounds
    (the kinds of a level and day). One figure serves them all: its axes, ticks, margins and
    background are built and drawn once; each PNG redraws only the heatmap, its frame, colour bar
    and title over that (pixel for pixel what a full draw gives)."""
    matrices, box, world = _checked(matrices, bounds=bounds, titles=titles, scale=scale, width_px=width_px)
    true_box, x_unit, y_unit = box, _unit(box.x_min, box.x_max), _unit(box.y_min, box.y_max)
    if (x_unit, y_unit) != (1.0, 1.0):  # near the largest float: drawn in units of 10**k (labelled), no overflow
        box = GridBounds(box.x_min / x_unit, box.x_max / x_unit, box.y_min / y_unit, box.y_max / y_unit)
        background = None if background is None else Background(
            background.path, background.x_min / x_unit, background.x_max / x_unit,
            background.y_min / y_unit, background.y_max / y_unit,
        )

    # The plot area's pixel size: the full width left by the margins, the height by the world's aspect.
    plot_w = width_px - _MARGIN["left"] - _MARGIN["right"]
    plot_h = _plot_height(plot_w, box)
    height_px = plot_h + _MARGIN["top"] + _MARGIN["bottom"]
    fig = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    fig.patch.set_alpha(0.0)  # transparent under the plot area; the margins get white below
    left, bottom = _MARGIN["left"] / width_px, _MARGIN["bottom"] / height_px
    axes_box = [left, bottom, plot_w / width_px, plot_h / height_px]
    for x, y, w, h in (  # white margins around the plot area (figure fractions)
        (0, 0, left, 1),
        (left + axes_box[2], 0, 1, 1),
        (left, 0, axes_box[2], bottom),
        (left, bottom + axes_box[3], axes_box[2], 1),
    ):
        fig.patches.append(Rectangle((x, y), w, h, transform=fig.transFigure, facecolor="white", edgecolor="none", zorder=-10))
    ax = fig.add_axes(axes_box)
    ax.set_facecolor("none")

    if background is not None:
        with Image.open(background.path) as art:
            ax.imshow(
                np.asarray(art.convert("RGBA")),
                extent=(background.x_min, background.x_max, background.y_min, background.y_max),
                origin="upper",  # the image's first row is its top edge, y_max
                interpolation="bilinear",
                zorder=0,
            )

    # masked (empty) cells: transparent
    cmap = matplotlib.colormaps["RdBu_r" if diverging else "inferno"].with_extremes(bad=(0, 0, 0, 0))
    image = ax.imshow(
        _shown(matrices[0]),
        extent=(box.x_min, box.x_max, box.y_min, box.y_max),
        origin="lower",
        interpolation="nearest",
        cmap=cmap,
        norm=_norm(matrices[0], scale, diverging),
        alpha=0.85 if background is not None else 1.0,
        zorder=1,
    )
    ax.set_xlim(box.x_min, box.x_max)
    ax.set_ylim(box.y_min, box.y_max)
    # the box is already sized to the world's aspect; only a clamped one (a level over 3x taller
    # than wide, or flatter than 24 px) is stretched rather than drawn as a sliver
    ax.set_aspect("auto")
    ax.tick_params(labelsize=_FONT, length=3)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=6))
    # Title and axis names as figure text at fixed places: matplotlib's own (set_title, set_xlabel)
    # measure every tick label to place themselves, which was a third of a preview's time.
    centre = left + axes_box[2] / 2
    title = fig.text(centre, 1 - 6 / height_px, "", fontsize=_FONT + 1, ha="center", va="top")
    x_name = ("x" if world else "x cell") + (f" (x{x_unit:.0e})" if x_unit != 1.0 else "")
    y_name = ("y" if world else "y cell") + (f" (x{y_unit:.0e})" if y_unit != 1.0 else "")
    fig.text(centre, 2 / height_px, x_name, fontsize=_FONT, ha="center", va="bottom")
    fig.text(2 / width_px, bottom + axes_box[3] / 2, y_name, fontsize=_FONT, ha="left", va="center", rotation=90)

    bar_axes = fig.add_axes([
        (width_px - _MARGIN["right"] + 12) / width_px, bottom, 12 / width_px, axes_box[3],
    ])
    bar = fig.colorbar(image, cax=bar_axes)
    bar.ax.tick_params(labelsize=_FONT - 1, length=2)
    bar.ax.xaxis.set_visible(False)  # a vertical bar's x axis shows nothing, but drawing it measured its (no) labels
    fig.text((width_px - 4) / width_px, bottom + axes_box[3] / 2, f"{colorbar_label} ({scale})",
             fontsize=_FONT, ha="right", va="center", rotation=90)

    position = ax.get_position()  # figure fractions, origin at the bottom
    x0, x1 = position.x0 * width_px, position.x1 * width_px
    y0, y1 = position.y0 * height_px, position.y1 * height_px
    geometry = {
        "heatmap:plot_box": f"{round(x0)},{round(height_px - y1)},{round(x1)},{round(height_px - y0)}",
        "heatmap:bounds": ",".join(f"{v:.17g}" for v in true_box.as_list()),
    }
    # Everything but the heatmap, its colour bar, the title and the frame over the heatmap is the
    # same for every matrix: drawn once, then each PNG restores that and draws only those
    # (matplotlib's blitting). The axes' ticks and labels were ~80% of a full draw.
    changing = [image, bar.ax, title, *ax.spines.values()]
    for artist in changing:
        artist.set_visible(False)
    canvas = fig.canvas
    canvas.draw()
    static = canvas.copy_from_bbox(fig.bbox)
    for artist in changing:
        artist.set_visible(True)
    info = PngInfo()
    for key, value in geometry.items():
        info.add_text(key, value)
    pngs = []
    for matrix, text in zip(matrices, titles):
        canvas.restore_region(static)
        image.set_data(_shown(matrix))
        image.set_norm(_norm(matrix, scale, diverging))
        bar.update_normal(image)
        bar.solids.set_alpha(1.0)
        title.set_text(text)
        for artist in (image, *ax.spines.values(), bar.ax, title):  # the order a full draw uses
            fig.draw_artist(artist)
        buffer = io.BytesIO()
        # optimize=True cost ~50 ms a PNG for 20% fewer bytes
        Image.fromarray(np.asarray(canvas.buffer_rgba())).save(buffer, format="png", pnginfo=info, compress_level=3)
        pngs.append(buffer.getvalue())
    return pngs


_PREVIEW_MARGIN = {"left": 4, "right": 64, "top": 18, "bottom": 4}  # pixels: title, colour bar and its labels
_PREVIEW_BAR_PX = 10
_PREVIEW_BACKGROUND_ALPHA = round(0.85 * 255)  # as the full render's heatmap over the art


def render_heatmap_previews(
    matrices: Sequence,
    *,
    bounds: GridBounds | Sequence[float] | None,
    titles: Sequence[str],
    scale: str = "sqrt",
    background: Background | None = None,
    width_px: int = 480,
) -> list[bytes]:
    """Small PNGs for the Dagster UI, one per matrix of one grid and bounds, without matplotlib's
    figure: a few ms each where render_heatmap_pngs takes ~35 ms (axes, ticks, colour bar).

    The same picture in its plot area: the same colour map and scale (matplotlib's), each cell an
    upscaled block, row 0 (the lowest y) at the bottom, the plot area sized by the world's aspect,
    empty cells transparent over the level's art (placed by its world corners) or over nothing.
    Around it, white: the title above, a colour bar with its lowest and highest value on the right.
    No ticks or axis names; the PNG carries the same ``heatmap:plot_box`` / ``heatmap:bounds`` text
    chunks as render_heatmap_png, so plot_geometry and world_to_pixel read it the same way."""
    matrices, box, _ = _checked(matrices, bounds=bounds, titles=titles, scale=scale, width_px=width_px)
    left, top = _PREVIEW_MARGIN["left"], _PREVIEW_MARGIN["top"]
    plot_w = width_px - left - _PREVIEW_MARGIN["right"]
    plot_h = _plot_height(plot_w, box)
    height_px = top + plot_h + _PREVIEW_MARGIN["bottom"]
    right, bottom = left + plot_w, top + plot_h

    art = _art_layer(background, box, plot_w, plot_h) if background is not None else None
    # the cell under each pixel's centre; pixel row 0 is the top, so the highest y row
    rows, cols = matrices[0].shape
    row_of = rows - 1 - ((np.arange(plot_h) + 0.5) * rows / plot_h).astype(np.intp)
    col_of = ((np.arange(plot_w) + 0.5) * cols / plot_w).astype(np.intp)
    cmap = matplotlib.colormaps["inferno"]
    font = _preview_font()
    info = PngInfo()
    info.add_text("heatmap:plot_box", f"{left},{top},{right},{bottom}")
    info.add_text("heatmap:bounds", ",".join(f"{v:.17g}" for v in box.as_list()))
    pngs = []
    for matrix, title in zip(matrices, titles):
        norm = _norm(matrix, scale, False)
        cells = cmap(norm(_shown(matrix)), bytes=True)  # masked (empty) cells: the map's "bad", transparent
        cells[..., 3] = np.where(np.ma.getmaskarray(_shown(matrix)), 0, 255 if art is None else _PREVIEW_BACKGROUND_ALPHA)
        plot = Image.fromarray(np.ascontiguousarray(cells[row_of[:, None], col_of[None, :]]), "RGBA")
        if art is not None:
            plot = Image.alpha_composite(art, plot)
        picture = Image.new("RGBA", (width_px, height_px), (255, 255, 255, 255))
        picture.paste(plot, (left, top))  # replaces the white: transparent where neither heatmap nor art
        draw = ImageDraw.Draw(picture)
        draw.rectangle((left - 1, top - 1, right, bottom), outline=(0, 0, 0, 255))
        draw.text((left, 2), title, fill=(0, 0, 0, 255), font=font)
        # the colour bar: the map from the scale's highest value (top) to its lowest
        bar_left = right + 8
        levels = np.linspace(1.0, 0.0, plot_h)[:, None].repeat(_PREVIEW_BAR_PX, axis=1)
        picture.paste(Image.fromarray(cmap(levels, bytes=True), "RGBA"), (bar_left, top))
        draw.rectangle((bar_left - 1, top - 1, bar_left + _PREVIEW_BAR_PX, bottom), outline=(0, 0, 0, 255))
        label_x = bar_left + _PREVIEW_BAR_PX + 3
        draw.text((label_x, top), _tick_text(norm.vmax), fill=(0, 0, 0, 255), font=font)
        draw.text((label_x, top + plot_h // 2 - 5), scale, fill=(0, 0, 0, 255), font=font)
        draw.text((label_x, bottom - 11), _tick_text(norm.vmin), fill=(0, 0, 0, 255), font=font)
        buffer = io.BytesIO()
        picture.save(buffer, format="png", pnginfo=info, compress_level=3)
        pngs.append(buffer.getvalue())
    return pngs


def _art_layer(background: Background, box: GridBounds, plot_w: int, plot_h: int) -> Image.Image:
    """The level's art resampled onto the plot area's pixels by its world corners (transparent
    where the art does not reach). Halves: a world near the largest float must not overflow."""
    with Image.open(background.path) as opened:
        art = opened.convert("RGBA")
    art_w, art_h = art.size
    art_x = (background.x_max / 2 - background.x_min / 2) / art_w  # world units per art pixel
    art_y = (background.y_max / 2 - background.y_min / 2) / art_h
    # plot pixel (u, v) -> art pixel: x = box.x_min + u * plot x step; the art's row 0 is its y_max
    return art.transform(
        (plot_w, plot_h),
        Image.Transform.AFFINE,
        (
            (box.x_max / 2 - box.x_min / 2) / plot_w / art_x, 0.0, (box.x_min / 2 - background.x_min / 2) / art_x,
            0.0, (box.y_max / 2 - box.y_min / 2) / plot_h / art_y, (background.y_max / 2 - box.y_max / 2) / art_y,
        ),
        resample=Image.Resampling.BILINEAR,
        fillcolor=(0, 0, 0, 0),
    )


@functools.cache
def _preview_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _tick_text(value: float) -> str:
    return f"{value:.4g}"


def _shown(matrix: np.ndarray) -> np.ma.MaskedArray:
    """Empty (0) and non-finite cells masked: drawn transparent."""
    return np.ma.masked_where((matrix == 0) | ~np.isfinite(matrix), matrix)


def plot_geometry(png: bytes) -> tuple[tuple[int, int, int, int], GridBounds]:
    """(left, top, right, bottom) pixel edges of the plot area and the world bounds it shows,
    read back from a PNG made by render_heatmap_png."""
    with Image.open(io.BytesIO(png)) as image:
        text = image.text
    left, top, right, bottom = (int(v) for v in text["heatmap:plot_box"].split(","))
    return (left, top, right, bottom), GridBounds(*(float(v) for v in text["heatmap:bounds"].split(",")))


def world_to_pixel(png: bytes, x: float, y: float) -> tuple[int, int]:
    """The PNG pixel (column, row) showing world point (x, y)."""
    (left, top, right, bottom), b = plot_geometry(png)
    # halves: a world near the largest float must not overflow (halving is exact)
    column = left + (x / 2 - b.x_min / 2) / (b.x_max / 2 - b.x_min / 2) * (right - left)
    row = bottom - (y / 2 - b.y_min / 2) / (b.y_max / 2 - b.y_min / 2) * (bottom - top)
    return min(int(column), right - 1), min(int(row), bottom - 1)

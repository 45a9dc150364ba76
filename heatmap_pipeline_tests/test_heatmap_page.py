"""The /heatmaps page in Debian's Chromium (Playwright), against a real admin server on a free port.

The hottest cell is found in the PNG the page itself loaded, without knowing the renderer's layout:
with the level art off, the only coloured blocks in the plot are the stored non-empty cells (empty
cells are transparent) and the colour bar (a tall strip). A hot cell at the lower left and a weaker
marker cell at the upper right must come out as two blocks: the brighter one left of and below the
other, at the distance the data puts between them (world units are square: 10 x 10 per cell).
"""

from __future__ import annotations

import base64
import datetime as dt
import io

import httpx
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from heatmap_pipeline.core.render import world_to_pixel
from heatmap_pipeline.web.app import create_app
from heatmap_pipeline_tests.admin_servers import CHROMIUM, CHROMIUM_ARGS, browser_or_skip, serve_in_thread
from heatmap_pipeline_tests.read_api_data import KEY, levels_file, put_kind, read_api_settings

BOUNDS = (0.0, 100.0, 0.0, 50.0)  # level 1 "Harbour" in the levels file: a 10 x 5 grid of 10 x 10 cells
HOT, MARKER = (1, 1), (8, 3)  # (column, row); row 0 is the lowest y
WEEK = [dt.date(2025, 11, 14), dt.date(2025, 11, 15), dt.date(2025, 11, 16)]
BEFORE = dt.date(2025, 11, 13)  # outside the picked range: its marker cell is far hotter


def deaths_of(day: dt.date) -> np.ndarray:
    matrix = np.zeros((5, 10))
    if day == BEFORE:
        matrix[MARKER[1], MARKER[0]] = 100  # would make the marker the hottest if the range were wrong
    else:
        matrix[HOT[1], HOT[0]], matrix[MARKER[1], MARKER[0]] = 6, 1
    return matrix


@pytest.fixture
def page_server(tmp_path, sqlite_url):
    settings = read_api_settings(sqlite_url, tmp_path, HEATMAP_LEVELS_FILE=levels_file(tmp_path), HEATMAP_LEVELS="1,2")
    rng = np.random.default_rng(3)
    for day in [BEFORE, *WEEK]:
        put_kind(sqlite_url, "1", day, "deaths", deaths_of(day), bounds=BOUNDS, sessions=4)
        put_kind(sqlite_url, "1", day, "positions", rng.poisson(3, (5, 10)), bounds=BOUNDS, sessions=4)
    # An older day binned with other (automatic) bounds: the page's default range must stop after it.
    put_kind(sqlite_url, "1", dt.date(2025, 11, 12), "positions", np.ones((5, 10)), bounds=(0.0, 90.0, 0.0, 50.0))
    with serve_in_thread(create_app(settings)) as base:
        yield base


def coloured_blocks(png: bytes) -> list[dict]:
    """Connected blocks of saturated colour in the picture, with box, centre and mean lightness."""
    rgba = Image.open(io.BytesIO(png)).convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = np.asarray(Image.alpha_composite(white, rgba).convert("RGB")).astype(int)
    saturated = (rgb.max(axis=2) - rgb.min(axis=2)) > 60  # not white, grey or black (text, axes, empty cells)
    labels, count = ndimage.label(saturated)
    blocks = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        rows, cols = box
        height, width = rows.stop - rows.start, cols.stop - cols.start
        mask = labels[box] == index
        blocks.append({"box": (cols.start, rows.start, width, height), "area": int(mask.sum()),
                       "centre": ((cols.start + cols.stop) / 2, (rows.start + rows.stop) / 2),
                       "lightness": float(rgb[box][mask].mean())})
    return blocks


def hot_and_marker(png: bytes) -> tuple[dict, dict]:
    """The two cell-shaped blocks (the colour bar is a tall strip; text is not saturated): brighter first."""
    cells = [b for b in coloured_blocks(png) if b["area"] >= 16 and 0.5 <= b["box"][3] / b["box"][2] <= 2]
    assert len(cells) == 2, f"expected the hot cell and the marker cell, found {[b['box'] for b in cells]}"
    return tuple(sorted(cells, key=lambda b: -b["lightness"]))


@pytest.mark.slow
def test_a_designer_picks_a_level_and_a_range_and_sees_the_hottest_cell_where_the_data_puts_it(page_server, tmp_path):
    sync_playwright = browser_or_skip()
    base = page_server
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            # Without the key the page is refused, with a Basic challenge a browser would prompt for.
            anonymous = browser.new_context()
            assert anonymous.request.get(f"{base}/heatmaps").status == 401
            anonymous.close()

            context = browser.new_context(http_credentials={"username": "designer", "password": KEY},
                                          viewport={"width": 1500, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(30000)
            try:
                assert page.goto(f"{base}/heatmaps").status == 200
                assert page.locator("#level option").all_inner_texts() == ["Harbour (1)", "level 2"]
                # The page opens on the newest days of the first kind (positions) that sum: not 2025-11-12,
                # binned with other bounds, and it says why.
                page.locator("img.heatmap[data-loaded='true']").wait_for()
                assert (page.input_value("#from"), page.input_value("#to")) == ("2025-11-13", "2025-11-16")
                assert "Days before 2025-11-13 are binned with other bounds" in page.inner_text("#available")
                assert page.locator("#error").is_hidden()

                page.select_option("#level", "1")
                page.select_option("#kind", "deaths")
                page.locator("#available", has_text="Stored deaths heatmaps of level 1: 4 day(s), 2025-11-13 … 2025-11-16.").wait_for()
                page.check("#mode-range")
                page.fill("#from", WEEK[0].isoformat())
                page.fill("#to", WEEK[-1].isoformat())
                page.select_option("#scale", "sqrt")
                page.click("#show")
                picture = page.locator("img.heatmap[src*='kind=deaths'][data-loaded='true']")
                picture.wait_for()
                assert picture.evaluate("img => img.naturalWidth") > 300  # decoded, not a broken image
                panel = page.locator(".panel")
                assert panel.count() == 1
                assert "events in bounds\t21" in panel.inner_text()  # 3 days x (6 + 1)
                assert "Harbour · deaths · 2025-11-14..2025-11-16" in panel.inner_text()
                page.screenshot(path=shots / "1-range-over-level-art.png", full_page=True)

                # The hottest cell, in the very PNG the page loads (level art off: only cells are coloured).
                page.uncheck("#background")
                with page.expect_response(lambda r: ".png" in r.url and "background=false" in r.url) as loaded:
                    page.click("#show")
                response = loaded.value
                assert response.status == 200 and response.headers["content-type"] == "image/png"
                hot, marker = hot_and_marker(response.body())
                dx = marker["centre"][0] - hot["centre"][0]
                dy = hot["centre"][1] - marker["centre"][1]  # image rows grow downwards, world y upwards
                columns, rows = MARKER[0] - HOT[0], MARKER[1] - HOT[1]
                assert dx > 0 and dy > 0, (hot, marker)  # hot at the lower left, as stored
                assert dx / dy == pytest.approx(columns / rows, rel=0.15)  # square world units: the right aspect
                assert hot["box"][2] == pytest.approx(dx / columns, rel=0.3)  # a block is one cell wide
                # And by the plot box the renderer writes into the PNG: the hot block holds the hot cell's middle.
                column, row = world_to_pixel(response.body(), BOUNDS[0] + (HOT[0] + 0.5) * 10, BOUNDS[2] + (HOT[1] + 0.5) * 10)
                left, top, width, height = hot["box"]
                assert left <= column < left + width and top <= row < top + height, (column, row, hot["box"])

                # The compare range follows the range: the 3 days before it, until picked by hand.
                assert (page.input_value("#compare-from"), page.input_value("#compare-to")) == ("2025-11-11", "2025-11-13")
                # Compare with the day before: side by side, then as a difference.
                page.check("#background")
                page.select_option("#compare", "side")
                page.fill("#compare-from", BEFORE.isoformat())
                page.fill("#compare-to", BEFORE.isoformat())
                page.click("#show")
                page.locator(".panel img.heatmap[src*='2025-11-13.png'][data-loaded='true']").wait_for()
                assert page.locator(".panel").count() == 2
                page.screenshot(path=shots / "2-side-by-side.png", full_page=True)
                page.select_option("#compare", "diff")
                page.click("#show")
                page.locator("img.heatmap[src*='compare_from=2025-11-13'][data-loaded='true']").wait_for()
                assert page.locator(".panel").count() == 1 and "minus" in page.locator(".panel").inner_text()
                page.screenshot(path=shots / "3-difference.png", full_page=True)

                # A refused request shows the API's own message.
                page.select_option("#compare", "none")
                page.fill("#from", "2025-01-01")
                page.fill("#to", "2025-12-31")
                page.click("#show")
                page.locator("#error", has_text="HEATMAP_MAX_RANGE_DAYS").wait_for()
            except Exception:
                page.screenshot(path=shots / "failure.png", full_page=True)
                raise
        finally:
            browser.close()
    print(f"screenshots in {shots}")


def test_the_page_is_served_with_this_deployments_levels_and_kinds(page_server):
    auth = {"authorization": "Basic " + base64.b64encode(f"designer:{KEY}".encode()).decode()}
    response = httpx.get(f"{page_server}/heatmaps", headers=auth)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert '{"levels": [{"id": "1", "name": "Harbour"}, {"id": "2", "name": "level 2"}], ' \
           '"kinds": ["positions", "deaths", "jumps"], "maxRangeDays": 92}' in response.text
    assert "/*CONFIG*/null" not in response.text

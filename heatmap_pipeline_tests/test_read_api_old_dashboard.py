"""The old React dashboard, unchanged, against our read API in a real browser (Debian's Chromium, Playwright):
a page on another origin GETs /api/v1/heatmap with its own JWT, as the old dashboard does with axios."""

from __future__ import annotations

import datetime as dt

import pytest

from heatmap_pipeline.web.app import create_app
from heatmap_pipeline_tests.admin_servers import CHROMIUM, CHROMIUM_ARGS, browser_or_skip, free_port, serve_in_thread
from heatmap_pipeline_tests.read_api_data import put_kind, read_api_settings

DAY = dt.date(2025, 11, 16)

OLD_DASHBOARD = """<!doctype html><html><body><canvas id="heatmap" width="500" height="500"></canvas><script>
// What the old dashboard does: GET {VITE_API_URL}/api/v1/heatmap, params {level, date}, with the user's JWT.
async function load(api, level, date) {
  try {
    const response = await fetch(`${api}/api/v1/heatmap?level=${level}&date=${date}`,
                                 {headers: {Authorization: "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwbGF5ZXIifQ.sig"}});
    const data = await response.json();
    const matrix = data.matrix || [];
    if (matrix.length > 0) {  // "has data"; drawn matrix[y][x], row 0 at the top, as the old page did
      const ctx = document.getElementById("heatmap").getContext("2d");
      const max = Math.max(...matrix.flat()) || 1, h = 500 / matrix.length, w = 500 / matrix[0].length;
      matrix.forEach((row, y) => row.forEach((v, x) => { ctx.fillStyle = `rgba(255,0,0,${v / max})`; ctx.fillRect(x * w, y * h, w, h); }));
    }
    return {status: response.status, level: data.level, date: data.date, matrix};
  } catch (error) {
    return {error: String(error)};
  }
}
</script></body></html>"""


@pytest.mark.slow
def test_the_old_dashboard_reads_cross_origin_with_its_jwt_when_reads_are_public(tmp_path, sqlite_url):
    """A real browser's CORS: the Bearer header makes Chromium send a preflight, which the configured
    origin passes and another origin fails."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse


    sync_playwright = browser_or_skip()
    matrix = put_kind(sqlite_url, "1", DAY, "positions", [[0, 2, 0], [1, 0, 0]])
    dashboard = FastAPI()
    dashboard.get("/", response_class=HTMLResponse)(lambda: OLD_DASHBOARD)
    allowed_port = free_port()
    settings = read_api_settings(sqlite_url, tmp_path, HEATMAP_READS_PUBLIC="true",
                                 CORS_ALLOWED_ORIGINS=f"http://127.0.0.1:{allowed_port}")
    with serve_in_thread(create_app(settings)) as api, serve_in_thread(dashboard, allowed_port) as allowed, \
            serve_in_thread(dashboard) as other, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(allowed)
            answer = page.evaluate("([api, date]) => load(api, '1', date)", [api, DAY.isoformat()])
            assert answer == {"status": 200, "level": "1", "date": "2025-11-16", "matrix": matrix.tolist()}
            page.screenshot(path=tmp_path / "old-dashboard.png")
            page.goto(other)  # an origin not in CORS_ALLOWED_ORIGINS: the browser withholds the answer
            refused = page.evaluate("([api, date]) => load(api, '1', date)", [api, DAY.isoformat()])
            assert "Failed to fetch" in refused.get("error", ""), refused
        finally:
            browser.close()

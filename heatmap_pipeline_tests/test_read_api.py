"""The heatmap read API through real HTTP (uvicorn on a free port) over real SQLite and PostgreSQL warehouses.

Stored heatmaps are written straight into ``heatmap_kinds`` / the old ``heatmaps`` table (what
level_heatmaps writes; test_read_api_assets.py reads what the real asset wrote).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.tables import heatmap_kinds, heatmaps
from heatmap_pipeline.web.app import create_app
from heatmap_pipeline.web.auth import UI_COOKIE, session_token
from heatmap_pipeline_tests.admin_servers import serve_in_thread
from heatmap_pipeline_tests.read_api_data import KEY, put_kind, put_old_row, read_api_settings

D1, D2, D3 = dt.date(2025, 11, 14), dt.date(2025, 11, 15), dt.date(2025, 11, 16)
AUTH = {"x-api-key": KEY}
OLD_DATE_ERROR = b'{"detail":"Invalid date format. Use YYYY-MM-DD"}'
OLD_NOT_FOUND = b'{"detail":"Heatmap not found for specified level/date"}'


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("read_api")
    url = f"sqlite:///{home / 'warehouse.sqlite'}"
    with serve_in_thread(create_app(read_api_settings(url, home))) as base:
        yield base, url


@pytest.fixture
def server(shared_server):
    """(base URL, warehouse URL) of an admin server with keyed reads (SQLite), its heatmap tables emptied:
    one server for the module, as starting one per test cost most of the module's time."""
    base, url = shared_server
    with get_engine(url).begin() as conn:
        conn.execute(sa.delete(heatmap_kinds))
        conn.execute(sa.delete(heatmaps))
    return base, url


# One client for the module: httpx.get() builds a client (and its TLS context) per call, ~50 ms each.
CLIENT = httpx.Client(timeout=30)


def get(base: str, path: str, params=None, headers=None) -> httpx.Response:
    return CLIENT.get(base + path, params=params, headers=AUTH if headers is None else headers)


def old_bytes(level: str, date: str, matrix) -> bytes:
    """What the old FastAPI reader sent: its dict through Starlette's JSONResponse."""
    return json.dumps({"level": level, "date": date, "matrix": matrix}, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode()


# --- the old contract ------------------------------------------------------------------------------

def test_the_old_contract_byte_for_byte_on_both_databases(db_url, tmp_path):
    old_matrix = [[0.0, 1.0, 0.0], [2.0, 0.0, 5.0]]
    put_old_row(db_url, "1", D1, old_matrix)  # the old job's row, never seen by heatmap_kinds
    kinds_matrix = put_kind(db_url, "1", D2, "positions", [[1, 0, 0], [0, 3, 0]])
    with serve_in_thread(create_app(read_api_settings(db_url, tmp_path))) as base:
        old_day = get(base, "/api/v1/heatmap", {"level": "1", "date": D1.isoformat()})
        new_day = get(base, "/api/v1/heatmap", {"level": "1", "date": D2.isoformat()})
        bad_date = get(base, "/api/v1/heatmap", {"level": "1", "date": "16-11-2025"})
        absent = get(base, "/api/v1/heatmap", {"level": "1", "date": "2025-11-20"})
        unknown_level = get(base, "/api/v1/heatmap", {"level": "nope", "date": D1.isoformat()})
        # As the old reader did, the old route ignores a query parameter it does not know (a cache buster).
        cache_buster = get(base, "/api/v1/heatmap", {"level": "1", "date": D1.isoformat(), "_": "17"})
    # The old three fields come first, serialised as the old reader did; ours follow after a comma.
    assert old_day.status_code == 200 and old_day.content.startswith(old_bytes("1", "2025-11-14", old_matrix)[:-1] + b",")
    assert new_day.status_code == 200
    assert new_day.content.startswith(old_bytes("1", "2025-11-15", kinds_matrix.tolist())[:-1] + b",")
    assert (bad_date.status_code, bad_date.content) == (400, OLD_DATE_ERROR)
    assert (absent.status_code, absent.content) == (404, OLD_NOT_FOUND)
    assert (unknown_level.status_code, unknown_level.content) == (404, OLD_NOT_FOUND)
    assert cache_buster.content == old_day.content
    # The old row's extras are derived from its matrix: it has no bounds nor sessions.
    extras = old_day.json()
    assert (extras["grid_x"], extras["grid_y"], extras["total"], extras["bounds"], extras["sessions"]) == (3, 2, 8.0, None, None)



def test_extra_fields_name_bounds_grid_kind_and_total(server):
    base, url = server
    put_kind(url, "2", D3, "deaths", [[0, 0, 0, 4], [1, 0, 0, 0]], bounds=(-50.0, 50.0, 0.0, 25.0), sessions=2,
             out_of_bounds=3)
    body = get(base, "/api/v1/heatmap", {"level": "2", "date": "2025-11-16", "kind": "deaths"}).json()
    assert list(body)[:3] == ["level", "date", "matrix"]
    assert body["matrix"] == [[0.0, 0.0, 0.0, 4.0], [1.0, 0.0, 0.0, 0.0]]
    assert body["bounds"] == {"x_min": -50.0, "x_max": 50.0, "y_min": 0.0, "y_max": 25.0}
    assert (body["kind"], body["grid_x"], body["grid_y"], body["total"]) == ("deaths", 4, 2, 5.0)
    assert (body["out_of_bounds"], body["events"], body["sessions"], body["days"]) == (3, 8, 2, ["2025-11-16"])
    # The positions kind of that day does not exist: the default kind is positions.
    assert get(base, "/api/v1/heatmap", {"level": "2", "date": "2025-11-16"}).status_code == 404


# --- ranges ----------------------------------------------------------------------------------------

def test_a_range_sums_the_stored_days_and_names_the_missing_ones(db_url, tmp_path):
    rng = np.random.default_rng(7)
    days = {D1: rng.integers(0, 9, (4, 5)), D3: rng.integers(0, 9, (4, 5))}  # D2 is missing
    for day, matrix in days.items():
        put_kind(db_url, "1", day, "jumps", matrix, sessions=4)
    put_kind(db_url, "1", D2, "deaths", np.ones((4, 5)))  # another kind on the missing day: not summed
    with serve_in_thread(create_app(read_api_settings(db_url, tmp_path))) as base:
        body = get(base, "/api/v1/heatmap", {"level": "1", "from": "2025-11-14", "to": "2025-11-16", "kind": "jumps"}).json()
    expected = days[D1] + days[D3]
    assert np.array_equal(np.array(body["matrix"]), expected)
    assert (body["date"], body["from"], body["to"]) == (None, "2025-11-14", "2025-11-16")
    assert body["days"] == ["2025-11-14", "2025-11-16"] and body["missing_days"] == ["2025-11-15"]
    assert body["total"] == float(expected.sum()) and body["sessions"] == 8


def test_a_range_over_days_binned_differently_is_refused_naming_them(server):
    base, url = server
    put_kind(url, "1", D1, "positions", np.ones((3, 3)), bounds=(0.0, 100.0, 0.0, 100.0))
    put_kind(url, "1", D2, "positions", np.ones((3, 3)), bounds=(0.0, 80.0, 0.0, 100.0))  # auto bounds moved
    put_kind(url, "1", D3, "positions", np.ones((4, 4)), bounds=(0.0, 100.0, 0.0, 100.0))  # another grid
    response = get(base, "/api/v1/heatmap", {"level": "1", "from": "2025-11-14", "to": "2025-11-16"})
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert "2025-11-14 (grid 3x3, bounds [0, 100, 0, 100])" in detail
    assert "2025-11-15 (grid 3x3, bounds [0, 80, 0, 100])" in detail
    assert "2025-11-16 (grid 4x4, bounds [0, 100, 0, 100])" in detail
    assert "HEATMAP_LEVELS_FILE" in detail  # says what to do
    # Two days binned alike still sum.
    ok = get(base, "/api/v1/heatmap", {"level": "1", "from": "2025-11-13", "to": "2025-11-14"})
    assert ok.status_code == 200 and ok.json()["total"] == 9.0


def test_days_binned_before_the_level_got_fixed_bounds_are_named_with_the_command_that_rebins_them(tmp_path):
    """The designer's path in the README: the demo ran with automatic bounds, then restarted with a levels
    file. Those days cannot be summed with the new ones; the answer must say which and how to re-bin them,
    not ask for the fixed bounds the level already has."""
    url = f"sqlite:///{tmp_path / 'warehouse.sqlite'}"
    put_kind(url, "1", D1, "deaths", np.ones((3, 3)), bounds=(4.25, 99.27, 2.5, 95.57))  # automatic bounds
    put_kind(url, "1", D2, "deaths", np.ones((3, 3)), bounds=(0.0, 98.0, 1.0, 97.0))  # automatic bounds
    put_kind(url, "1", D3, "deaths", np.ones((3, 3)))  # the levels file's: 0-100 x 0-100 on a 3 x 3 grid
    settings = read_api_settings(url, tmp_path, HEATMAP_BOUNDS='{"1": [0, 100, 0, 100]}', HEATMAP_GRID_SIZE="3")
    with serve_in_thread(create_app(settings)) as base:
        json_answer = get(base, "/api/v1/heatmap", {"level": "1", "from": "2025-11-14", "to": "2025-11-16", "kind": "deaths"})
        png_answer = get(base, "/api/v1/heatmaps/1/2025-11-14..2025-11-16.png", {"kind": "deaths"})
        compared = get(base, "/api/v1/heatmap", {"level": "1", "date": "2025-11-16", "kind": "deaths",
                                                 "compare_from": "2025-11-15", "compare_to": "2025-11-15"})
        fine = get(base, "/api/v1/heatmap", {"level": "1", "from": "2025-11-16", "to": "2025-11-16", "kind": "deaths"})
    command = "`heatmap-pipeline backfill --job heatmap --levels 1 --start 2025-11-14 --end 2025-11-15`"
    for answer in (json_answer, png_answer):
        detail = answer.json()["detail"]
        assert answer.status_code == 409, detail
        assert "binned with grid 3x3, bounds [0, 100, 0, 100] now" in detail
        assert "2025-11-14, 2025-11-15 were binned before that" in detail and command in detail
    assert compared.status_code == 409
    assert "`heatmap-pipeline backfill --job heatmap --levels 1 --start 2025-11-15 --end 2025-11-15`" in compared.json()["detail"]
    assert fine.status_code == 200


@pytest.mark.parametrize("params, status, named", [
    ({"from": "2025-11-16", "to": "2025-11-14"}, 422, "from (2025-11-16) is after to (2025-11-14)"),
    ({"from": "2025-01-01", "to": "2025-12-31"}, 422, "spans 365 days; at most 92 (HEATMAP_MAX_RANGE_DAYS)"),
    ({"from": "0001-01-01", "to": "9999-12-31"}, 422, "HEATMAP_MAX_RANGE_DAYS"),
    ({"from": "2025-11-14"}, 422, "from and to go together"),
    ({"to": "2025-11-14"}, 422, "from and to go together"),
    ({"date": "2025-11-14", "from": "2025-11-14", "to": "2025-11-16"}, 422, "either date, or from and to"),
    ({}, 422, "date is required"),
    ({"from": "2025-13-01", "to": "2025-11-16"}, 400, "parameter 'from'"),
    ({"from": "2025-11-01", "to": "tomorrow"}, 400, "parameter 'to'"),
    ({"date": "2025-11-16", "kind": "teleports"}, 422, "'teleports' is not a heatmap kind; allowed: positions, deaths, jumps"),
    ({"date": "2025-11-16", "compare_from": "2025-11-01"}, 422, "compare_from and compare_to go together"),
    ({"date": "2025-11-16", "compare_from": "2025-11-09", "compare_to": "2025-11-01"}, 422, "compare_from (2025-11-09) is after"),
    ({"date": "2025-11-16", "compare_from": "x", "compare_to": "2025-11-01"}, 400, "parameter 'compare_from'"),
])
def test_bad_range_and_kind_parameters_are_named(server, params, status, named):
    base, url = server
    put_kind(url, "1", D3, "positions", np.ones((3, 3)))
    response = get(base, "/api/v1/heatmap", {"level": "1", **params})
    assert response.status_code == status, response.text
    assert named in response.json()["detail"]


@pytest.mark.parametrize("params, named", [
    ({"smooth": "-1"}, "smooth"),
    ({"smooth": "nan"}, "smooth"),
    ({"smooth": "inf"}, "smooth"),
    ({"smooth": "1e308"}, "smooth"),
    ({"smooth": "50.5"}, "smooth"),
    ({"normalize": "percent"}, "normalize"),
    ({"level": "x" * 65}, "level"),
    ({"level": ""}, "level"),
    ({"level": "1\u0000"}, "level"),
])
def test_bad_option_values_get_422_naming_the_parameter(server, params, named):
    base, url = server
    put_kind(url, "1", D3, "positions", np.ones((3, 3)))
    response = get(base, "/api/v1/heatmap", {"level": "1", "date": "2025-11-16", **params})
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["query", named]]


# --- read-time options -----------------------------------------------------------------------------

def test_share_and_per_session_normalisation(server):
    base, url = server
    put_kind(url, "1", D1, "positions", [[1, 0, 3], [0, 0, 0]], sessions=2)
    put_kind(url, "1", D2, "positions", [[1, 0, 1], [2, 0, 0]], sessions=3)
    share = get(base, "/api/v1/heatmap", {"level": "1", "from": "2025-11-14", "to": "2025-11-15", "normalize": "share"}).json()
    assert np.allclose(share["matrix"], np.array([[2, 0, 4], [2, 0, 0]]) / 8) and share["units"] == "share of events"
    assert share["total"] == 8.0  # the totals stay counts
    per_session = get(base, "/api/v1/heatmap", {"level": "1", "from": "2025-11-14", "to": "2025-11-15",
                                                "normalize": "per_session"}).json()
    assert np.allclose(per_session["matrix"], np.array([[2, 0, 4], [2, 0, 0]]) / 5) and per_session["sessions"] == 5


def test_per_session_over_an_old_row_without_sessions_is_refused(server):
    base, url = server
    put_old_row(url, "1", D1, [[1.0, 2.0], [0.0, 0.0]])
    response = get(base, "/api/v1/heatmap", {"level": "1", "date": "2025-11-14", "normalize": "per_session"})
    assert response.status_code == 409 and "2025-11-14" in response.json()["detail"]


def test_smoothing_spreads_a_hot_cell_and_keeps_the_sum(server):
    base, url = server
    matrix = np.zeros((9, 9))
    matrix[4, 4] = 10
    put_kind(url, "1", D1, "positions", matrix)
    smoothed = np.array(get(base, "/api/v1/heatmap", {"level": "1", "date": "2025-11-14", "smooth": "1.5"}).json()["matrix"])
    assert np.isclose(smoothed.sum(), 10.0)
    assert smoothed.argmax() == 4 * 9 + 4 and smoothed.max() < 10 and smoothed[4, 5] > 0 and smoothed[3, 4] > 0


def test_the_difference_of_two_ranges(server):
    base, url = server
    this_week = put_kind(url, "1", D3, "deaths", [[5, 0], [0, 1]])
    last_week = put_kind(url, "1", D1, "deaths", [[1, 0], [0, 4]]) + put_kind(url, "1", D2, "deaths", [[1, 1], [0, 0]])
    body = get(base, "/api/v1/heatmap", {"level": "1", "date": "2025-11-16", "kind": "deaths",
                                         "compare_from": "2025-11-14", "compare_to": "2025-11-15"}).json()
    assert np.array_equal(np.array(body["matrix"]), this_week - last_week)
    assert (body["value_min"], body["value_max"]) == (-3.0, 3.0)
    assert body["compare"]["days"] == ["2025-11-14", "2025-11-15"] and body["compare"]["total"] == 7.0
    assert body["units"] == "difference in events"
    # Share normalisation compares distributions of ranges of different volume.
    shares = get(base, "/api/v1/heatmap", {"level": "1", "date": "2025-11-16", "kind": "deaths", "normalize": "share",
                                           "compare_from": "2025-11-14", "compare_to": "2025-11-15"}).json()
    assert np.allclose(shares["matrix"], this_week / 6 - last_week / 7)
    # A compare range with no data, or binned differently, is refused naming it.
    none = get(base, "/api/v1/heatmap", {"level": "1", "date": "2025-11-16", "kind": "deaths",
                                         "compare_from": "2025-10-01", "compare_to": "2025-10-07"})
    assert none.status_code == 404 and "compare range 2025-10-01..2025-10-07" in none.json()["detail"]
    put_kind(url, "1", D1, "jumps", np.ones((2, 2)), bounds=(0.0, 50.0, 0.0, 50.0))
    put_kind(url, "1", D3, "jumps", np.ones((2, 2)))
    mismatch = get(base, "/api/v1/heatmap", {"level": "1", "date": "2025-11-16", "kind": "jumps",
                                             "compare_from": "2025-11-14", "compare_to": "2025-11-14"})
    assert mismatch.status_code == 409 and "2025-11-14 (grid 2x2, bounds [0, 50, 0, 50])" in mismatch.json()["detail"]


# --- listing ---------------------------------------------------------------------------------------

def test_the_listing_filters_by_level_kind_and_days(server):
    base, url = server
    for day in (D1, D2, D3):
        put_kind(url, "1", day, "positions", np.ones((2, 2)))
        put_kind(url, "2", day, "deaths", np.ones((2, 2)))
    put_old_row(url, "3", D1, [[1.0]])
    everything = get(base, "/api/v1/heatmaps").json()
    assert everything["count"] == 7 and not everything["truncated"]
    assert {(h["level"], h["kind"]) for h in everything["heatmaps"]} == {("1", "positions"), ("2", "deaths"), ("3", "positions")}
    some = get(base, "/api/v1/heatmaps", {"level": "2", "kind": "deaths", "from": "2025-11-15", "to": "2025-11-16"}).json()
    assert [h["date"] for h in some["heatmaps"]] == ["2025-11-15", "2025-11-16"]
    assert some["heatmaps"][0]["png"] == "/api/v1/heatmaps/2/2025-11-15.png?kind=deaths" and "matrix" not in some["heatmaps"][0]
    newest = get(base, "/api/v1/heatmaps", {"level": "1", "limit": "2"}).json()
    assert [h["date"] for h in newest["heatmaps"]] == ["2025-11-15", "2025-11-16"] and newest["truncated"]
    for params, status in [({"limit": str(10**30)}, 422), ({"limit": "0"}, 422), ({"from": "yesterday"}, 400),
                           ({"levle": "1"}, 422),
                           ({"kind": "nope"}, 422), ({"from": "2025-11-16", "to": "2025-11-01"}, 422)]:
        assert get(base, "/api/v1/heatmaps", params).status_code == status, params


# --- auth ------------------------------------------------------------------------------------------

def test_keyed_reads_accept_the_key_basic_auth_and_the_ui_cookie_only(server):
    base, url = server
    put_kind(url, "1", D3, "positions", np.ones((2, 2)))
    path, params = "/api/v1/heatmap", {"level": "1", "date": "2025-11-16"}
    basic = "Basic " + base64.b64encode(f"designer:{KEY}".encode()).decode()
    assert get(base, path, params, {"x-api-key": KEY}).status_code == 200
    assert get(base, path, params, {"authorization": basic}).status_code == 200
    assert httpx.get(base + path, params=params, cookies={UI_COOKIE: session_token(KEY)}).status_code == 200
    for headers in ({}, {"x-api-key": "wrong"}, {"authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"}):
        refused = get(base, path, params, headers)
        assert refused.status_code == 401 and refused.json() == {"detail": "Unauthorized: invalid API key"}
        assert refused.headers["www-authenticate"].startswith("Basic ")  # a browser asks for the key
    for other in ("/api/v1/heatmaps", "/api/v1/heatmaps/1/2025-11-16.png", "/heatmaps"):
        assert get(base, other, headers={}).status_code == 401, other


def test_public_reads_ignore_an_unknown_bearer_token(tmp_path, sqlite_url):
    put_kind(sqlite_url, "1", D3, "positions", np.ones((2, 2)))
    settings = read_api_settings(sqlite_url, tmp_path, HEATMAP_READS_PUBLIC="true", ADMIN_API_KEY="")
    with serve_in_thread(create_app(settings)) as base:
        jwt = {"authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"}
        assert get(base, "/api/v1/heatmap", {"level": "1", "date": "2025-11-16"}, jwt).status_code == 200
        assert get(base, "/api/v1/heatmaps", headers={}).status_code == 200
        # The admin endpoint is not a read: still locked without a key.
        assert httpx.post(base + "/admin/run-jobs", json={}, timeout=30).status_code == 503


def test_keyed_reads_without_a_configured_key_answer_503_saying_how_to_open_them(tmp_path, sqlite_url):
    with serve_in_thread(create_app(read_api_settings(sqlite_url, tmp_path, ADMIN_API_KEY=""))) as base:
        response = get(base, "/api/v1/heatmap", {"level": "1", "date": "2025-11-16"}, {})
    assert response.status_code == 503 and "HEATMAP_READS_PUBLIC=true" in response.json()["detail"]


# --- CORS: the old dashboard on another origin -----------------------------------------------------

DASHBOARD = "http://localhost:5173"  # the old React dashboard's Vite dev server


def test_cors_lets_the_configured_dashboard_read_with_its_jwt_and_refuses_other_origins(tmp_path, sqlite_url):
    matrix = put_kind(sqlite_url, "1", D3, "positions", [[0, 2], [1, 0]])
    settings = read_api_settings(sqlite_url, tmp_path, HEATMAP_READS_PUBLIC="true",
                                 CORS_ALLOWED_ORIGINS=f"{DASHBOARD}, https://dash.example.com")
    with serve_in_thread(create_app(settings)) as base:
        # axios with Authorization: Bearer is not a simple request: the browser sends a preflight first.
        preflight = httpx.options(base + "/api/v1/heatmap?level=1&date=2025-11-16", headers={
            "origin": DASHBOARD, "access-control-request-method": "GET",
            "access-control-request-headers": "authorization"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == DASHBOARD
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        actual = get(base, "/api/v1/heatmap", {"level": "1", "date": "2025-11-16"},
                     {"origin": DASHBOARD, "authorization": "Bearer some.jwt.token"})
        assert actual.status_code == 200 and actual.headers["access-control-allow-origin"] == DASHBOARD
        assert actual.json()["matrix"] == matrix.tolist()
        refused = httpx.options(base + "/api/v1/heatmap", headers={
            "origin": "https://evil.example", "access-control-request-method": "GET",
            "access-control-request-headers": "authorization"})
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
        no_origin_header = get(base, "/api/v1/heatmap", {"level": "1", "date": "2025-11-16"}, {"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in no_origin_header.headers  # the browser will not hand it over
        # Cross-origin POSTs to the admin trigger are not allowed.
        post_preflight = httpx.options(base + "/admin/run-jobs", headers={
            "origin": DASHBOARD, "access-control-request-method": "POST"})
        assert post_preflight.status_code == 400


def test_without_cors_origins_no_cross_origin_header_is_sent(server):
    base, url = server
    put_kind(url, "1", D3, "positions", np.ones((2, 2)))
    response = get(base, "/api/v1/heatmap", {"level": "1", "date": "2025-11-16"}, {**AUTH, "origin": DASHBOARD})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


# --- the OpenAPI schema and hostile input ----------------------------------------------------------

def test_the_openapi_schema_describes_every_read_parameter(server):
    base, _ = server
    paths = httpx.get(base + "/openapi.json").json()["paths"]
    for path in ("/api/v1/heatmap", "/api/v1/heatmaps", "/api/v1/heatmaps/{level}/{span}.png"):
        parameters = paths[path]["get"]["parameters"]
        assert parameters and all(p.get("description") for p in parameters), (path, parameters)
    names = {p["name"] for p in paths["/api/v1/heatmap"]["get"]["parameters"]}
    assert names == {"level", "date", "from", "to", "kind", "normalize", "smooth", "compare_from", "compare_to"}
    kinds = [p["schema"] for path in paths.values() for p in path.get("get", {}).get("parameters", []) if p["name"] == "kind"]
    assert len(kinds) == 3  # the day/range read, the listing, the PNG: each lists this deployment's kinds
    assert all("positions, deaths, jumps" == ", ".join(
        next((o for o in k.get("anyOf", [k]) if o.get("type") == "string"))["enum"]) for k in kinds), kinds


HOSTILE = ["", " ", "-1", "0", "1e309", "nan", "-inf", "9" * 400, "2025-02-30", "0000-01-01", "9999-12-31",
           "../../etc/passwd", "'; DROP TABLE heatmaps; --", "\u0000", "\u202e1", "1..2", "2025-11-16..", "%00"]


def test_no_parameter_value_makes_a_5xx(db_url, tmp_path):
    put_kind(db_url, "1", D3, "positions", np.ones((3, 3)))
    with serve_in_thread(create_app(read_api_settings(db_url, tmp_path))) as base:
        hostile_requests(base)


def hostile_requests(base: str) -> None:
    base_params = {"level": "1", "date": "2025-11-16"}
    for name in ("level", "date", "from", "to", "kind", "normalize", "smooth", "compare_from", "compare_to"):
        for value in HOSTILE:
            response = get(base, "/api/v1/heatmap", {**base_params, name: value})
            assert response.status_code < 500, (name, value, response.text)
    for name in ("level", "kind", "from", "to", "limit"):
        for value in HOSTILE:
            assert get(base, "/api/v1/heatmaps", {name: value}).status_code < 500, (name, value)


# --- the PNG -----------------------------------------------------------------------------------------

def png(response: httpx.Response):
    from PIL import Image
    import io

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def test_the_png_of_a_day_a_range_and_a_difference(tmp_path, sqlite_url):
    from heatmap_pipeline.core.render import plot_geometry, world_to_pixel
    from heatmap_pipeline_tests.read_api_data import levels_file

    settings = read_api_settings(sqlite_url, tmp_path, HEATMAP_LEVELS_FILE=levels_file(tmp_path))
    bounds = (0.0, 100.0, 0.0, 50.0)
    for day in (D1, D2, D3):
        put_kind(sqlite_url, "1", day, "deaths", np.eye(5, 10) * day.day, bounds=bounds)
    with serve_in_thread(create_app(settings)) as base:
        one_day = png(get(base, "/api/v1/heatmaps/1/2025-11-16.png", {"kind": "deaths", "width": "500"}))
        assert one_day.width == 500
        week = get(base, "/api/v1/heatmaps/1/2025-11-14..2025-11-16.png", {"kind": "deaths", "scale": "log", "smooth": "1"})
        png(week)
        (left, top, right, bottom), drawn = plot_geometry(get(base, "/api/v1/heatmaps/1/2025-11-16.png",
                                                              {"kind": "deaths"}).content)
        assert (drawn.x_min, drawn.x_max, drawn.y_min, drawn.y_max) == bounds  # the stored day's world bounds
        assert (right - left) / (bottom - top) == pytest.approx(2.0, rel=0.03)  # 100 x 50 world units
        # A difference: more jumps at the lower left this day than the days before (red), fewer at the upper right (blue).
        this, before = np.zeros((5, 10)), np.zeros((5, 10))
        this[0, 0], before[0, 0], before[4, 9] = 5, 1, 4
        put_kind(sqlite_url, "1", D3, "jumps", this, bounds=bounds)
        put_kind(sqlite_url, "1", D1, "jumps", before, bounds=bounds)
        diff = get(base, "/api/v1/heatmaps/1/2025-11-16.png", {"kind": "jumps", "compare_from": "2025-11-14",
                                                               "compare_to": "2025-11-14", "background": "false"})
        picture = png(diff).convert("RGB")
        red, _, blue = picture.getpixel(world_to_pixel(diff.content, 5, 5))
        assert red > blue + 60
        red, _, blue = picture.getpixel(world_to_pixel(diff.content, 95, 45))
        assert blue > red + 60
        png(get(base, "/api/v1/heatmaps/1/2025-11-16.png", {"kind": "deaths", "compare_from": "2025-11-14",
                                                            "compare_to": "2025-11-15", "normalize": "share"}))
        plain = get(base, "/api/v1/heatmaps/1/2025-11-16.png", {"kind": "deaths", "background": "false"}).content
        with_art = get(base, "/api/v1/heatmaps/1/2025-11-16.png", {"kind": "deaths"}).content
        assert plain != with_art  # the level art is drawn under the heatmap unless background=false
        for path, params, status, named in [
            ("/api/v1/heatmaps/1/2025-11-31.png", {}, 400, "parameter 'span'"),
            ("/api/v1/heatmaps/1/2025-11-14..16.png", {}, 400, "parameter 'span's last day'"),
            ("/api/v1/heatmaps/1/2025-11-16..2025-11-14.png", {}, 422, "span's first day (2025-11-16) is after span's last day"),
            ("/api/v1/heatmaps/1/2025-01-01..2025-12-31.png", {}, 422, "HEATMAP_MAX_RANGE_DAYS"),
            ("/api/v1/heatmaps/1/2025-11-16.png", {}, 404, "Heatmap not found"),  # no positions that day
            ("/api/v1/heatmaps/9/2025-11-16.png", {"kind": "deaths"}, 404, "Heatmap not found"),
        ]:
            response = get(base, path, params)
            assert response.status_code == status and named in response.json()["detail"], (path, response.text)
        typo = get(base, "/api/v1/heatmaps/1/2025-11-16.png", {"kind": "deaths", "scael": "log"})
        assert typo.status_code == 422 and typo.json()["detail"].startswith("scael: is not a known query parameter")
        for params, named in [({"scale": "cubic"}, "scale"), ({"width": str(10**20)}, "width"),
                              ({"width": "199"}, "width"), ({"background": "maybe"}, "background")]:
            response = get(base, "/api/v1/heatmaps/1/2025-11-16.png", {"kind": "deaths", **params})
            assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", named], params


def test_no_png_parameter_value_makes_a_5xx(server):
    base, url = server
    put_kind(url, "1", D3, "positions", np.ones((3, 3)))
    for name in ("kind", "scale", "smooth", "normalize", "background", "width", "compare_from", "compare_to"):
        for value in HOSTILE:
            response = get(base, "/api/v1/heatmaps/1/2025-11-16.png", {name: value})
            assert response.status_code < 500, (name, value, response.text)
    for span in HOSTILE:
        response = get(base, f"/api/v1/heatmaps/1/{quote(span, safe='')}.png")
        assert response.status_code < 500, (span, response.text)
    # Every scale over a matrix of zeros (log of nothing) and a difference of equal ranges (all zeros).
    put_kind(url, "1", D1, "deaths", np.zeros((3, 3)))
    for scale in ("linear", "sqrt", "log"):
        png(get(base, "/api/v1/heatmaps/1/2025-11-14.png", {"kind": "deaths", "scale": scale}))
        png(get(base, "/api/v1/heatmaps/1/2025-11-16.png", {"scale": scale, "compare_from": "2025-11-16",
                                                            "compare_to": "2025-11-16"}))


def test_a_stored_matrix_not_of_its_recorded_grid_is_a_409_not_a_500(server):
    base, url = server
    put_kind(url, "1", D3, "positions", np.ones((3, 3)))
    with get_engine(url).begin() as conn:  # a row edited by hand: 3 x 3 cells claimed, 2 x 2 stored
        conn.execute(sa.update(heatmap_kinds).values(matrix=[[1.0, 1.0], [1.0, 1.0]]))
    response = get(base, "/api/v1/heatmap", {"level": "1", "date": "2025-11-16", "smooth": "1"})
    assert response.status_code == 409 and "re-materialize" in response.json()["detail"]
    for matrix in ([[1.0, None, 1.0]] * 3, [["a", "b", "c"]] * 3, {"not": "a grid"}):
        with get_engine(url).begin() as conn:
            conn.execute(sa.update(heatmap_kinds).values(matrix=matrix))
        assert get(base, "/api/v1/heatmap", {"level": "1", "date": "2025-11-16"}).status_code == 409, matrix
    for matrix in ([[1.0, None]], [[1.0], [2.0, 3.0]], "text"):  # old rows: their totals come from the matrix
        put_old_row(url, "2", D1, matrix)
        response = get(base, "/api/v1/heatmap", {"level": "2", "date": "2025-11-14"})
        assert response.status_code == 409 and "not a grid of numbers" in response.json()["detail"], matrix
        with get_engine(url).begin() as conn:
            conn.execute(sa.delete(heatmaps))


def test_a_background_that_went_missing_is_left_out_not_a_500(tmp_path, sqlite_url):
    from heatmap_pipeline_tests.read_api_data import levels_file

    settings = read_api_settings(sqlite_url, tmp_path, HEATMAP_LEVELS_FILE=levels_file(tmp_path))
    put_kind(sqlite_url, "1", D3, "positions", np.eye(5, 10), bounds=(0.0, 100.0, 0.0, 50.0))
    (tmp_path / "harbour.png").write_bytes(b"not a picture any more")  # replaced after start-up
    with serve_in_thread(create_app(settings)) as base:
        response = get(base, "/api/v1/heatmaps/1/2025-11-16.png")
    png(response)
    assert response.headers["x-heatmap-background"] == "unreadable"


def test_summaries_carry_no_matrix_and_the_matrices_come_one_row_at_a_time(sqlite_url):
    from heatmap_pipeline.warehouse.heatmap_reads import read_heatmaps, stored_matrices

    put_old_row(sqlite_url, "1", D1, [[1.0, 2.0]])
    put_kind(sqlite_url, "1", D2, "positions", [[3, 4]])
    engine = get_engine(sqlite_url)
    found = read_heatmaps(engine, level="1", kind="positions", with_matrix=False)
    assert [(h.date, h.source_table, h.matrix, h.total) for h in found] == [
        (D1, "heatmaps", None, 3.0), (D2, "heatmap_kinds", None, 7.0)]
    matrices = stored_matrices(engine, found)
    assert next(matrices) == [[1.0, 2.0]]
    with engine.begin() as conn:  # read lazily: the next row is fetched only when asked for
        conn.execute(sa.update(heatmap_kinds).values(matrix=[[5.0, 6.0]]))
    assert next(matrices) == [[5.0, 6.0]]


OLD_TABLE_SHAPES = {
    # the old system's migration 003
    "migration_003": "CREATE TABLE heatmaps (id bigint PRIMARY KEY, level varchar(100), date date, matrix jsonb, "
                     "created_at timestamptz, CONSTRAINT uq_heatmaps_level_date UNIQUE (level, date))",
    # the old heatmap job, when the table was missing
    "old_job": "CREATE TABLE heatmaps (level text, date date, grid_size text, matrix json)",
}


@pytest.mark.postgres
@pytest.mark.parametrize("shape", sorted(OLD_TABLE_SHAPES))
def test_an_old_systems_heatmaps_table_reads_as_the_old_reader_read_it(postgres_url, tmp_path, shape):
    """A migrating team's database: the old table in either of its shapes, with the old job's rows
    (integers and floats, as pandas/numpy wrote them), migrated by our admin server at start."""
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text(OLD_TABLE_SHAPES[shape]))
        columns = "id, level, date, matrix" if shape == "migration_003" else "level, date, grid_size, matrix"
        values = "1, '1', '2025-11-16', CAST(:m AS jsonb)" if shape == "migration_003" else "'1', '2025-11-16', '3', CAST(:m AS json)"
        conn.execute(sa.text(f"INSERT INTO heatmaps ({columns}) VALUES ({values})"), {"m": "[[0, 1.0, 2.5], [3, 0.0, 0]]"})
        stored = conn.execute(sa.text("SELECT matrix FROM heatmaps WHERE level = '1' AND date = '2025-11-16'")).scalar_one()
    engine.dispose()
    with serve_in_thread(create_app(read_api_settings(postgres_url, tmp_path))) as base:
        response = get(base, "/api/v1/heatmap", {"level": "1", "date": "2025-11-16"})
        ranged = get(base, "/api/v1/heatmap", {"level": "1", "from": "2025-11-15", "to": "2025-11-16"})
    assert response.status_code == 200 and response.content.startswith(old_bytes("1", "2025-11-16", stored)[:-1] + b",")
    assert response.json()["total"] == 6.5 and response.json()["grid_x"] == 3
    assert ranged.json()["matrix"] == [[0.0, 1.0, 2.5], [3.0, 0.0, 0.0]] and ranged.json()["missing_days"] == ["2025-11-15"]

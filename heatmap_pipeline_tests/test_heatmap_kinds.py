"""Heatmap kinds (issue 13): every kind of a (level, date) binned in one pass, on SQLite and
PostgreSQL, each against an independent count (np.histogram2d over the kind's own events);
written to heatmap_kinds with the positions kind also in the old heatmaps row, unchanged."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
import sqlalchemy as sa

from heatmap_pipeline.core.binning import GridBounds, auto_bounds
from heatmap_pipeline.core.levels import DEFAULT_KINDS, KindConfig
from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.heatmaps import InconsistentHeatmap, compute_heatmap, read_heatmap, upsert_heatmap
from heatmap_pipeline.warehouse.migrations import ensure_warehouse_schema
from heatmap_pipeline.warehouse.tables import game_events, heatmap_kinds, heatmaps
from heatmap_pipeline_tests.support import histogram2d_reference

DAY = dt.date(2025, 11, 16)
NOW = dt.datetime(2025, 11, 17, 3)
BUILD_42_DEATHS = KindConfig("deaths_build_42", frozenset({"death"}), {"build": "42"})
KINDS = (*DEFAULT_KINDS.values(), BUILD_42_DEATHS)


def generated_events(n: int = 4000, seed: int = 3) -> list[dict]:
    """Events of level 1 (and a few of level 2) with x and y, of several types and names, builds
    as numbers and strings, sessions; plus events without coordinates (never in a heatmap)."""
    rng = np.random.default_rng(seed)
    rows = []
    names = {"move": "move", "death": "death", "jump": "jump", "player_death": "player_death", "gameplay": "jump"}
    types = list(names)
    for i in range(n):
        event_type = types[rng.integers(len(types))]
        payload = {"build": [42, "42", "43", 41][rng.integers(4)]}
        has_xy = rng.random() > 0.05
        rows.append(
            {
                "event_date": DAY,
                "event_id": f"e{i}",
                "session_id": f"s{rng.integers(60)}" if rng.random() > 0.02 else None,
                "event_type": event_type,
                "event_name": names[event_type],  # "gameplay" events named "jump" are jumps
                "ts": dt.datetime(2025, 11, 16, 12),
                "level": "1" if rng.random() > 0.1 else "2",
                "x": float(rng.normal(40, 25)) if has_xy else None,
                "y": float(rng.uniform(-5, 15)) if has_xy else None,
                "payload": json.dumps(payload),
            }
        )
    return rows


def store(url: str, rows: list[dict]) -> sa.Engine:
    engine = get_engine(url)
    ensure_warehouse_schema(engine)
    with engine.begin() as conn:
        conn.execute(game_events.insert(), rows)
    return engine


def belongs(row: dict, kind: KindConfig) -> bool:
    """The kind's rule, written again in Python."""
    if kind.event_types and not ({row["event_type"], row["event_name"]} & kind.event_types):
        return False
    payload = json.loads(row["payload"])
    return all(str(payload.get(key)) == value for key, value in kind.payload_filter.items())


@pytest.mark.parametrize("fixed", [None, GridBounds(0, 80, 0, 10)], ids=["auto", "fixed"])
def test_every_kind_matches_an_independent_count(db_url, fixed):
    rows = generated_events()
    engine = store(db_url, rows)
    grid_x, grid_y = 12, 7
    result = compute_heatmap(engine, DAY, "1", grid_x, fixed, grid_y=grid_y, kinds=KINDS)
    level_rows = [r for r in rows if r["level"] == "1" and r["x"] is not None]
    xs = np.array([r["x"] for r in level_rows])
    ys = np.array([r["y"] for r in level_rows])
    bounds = fixed or auto_bounds(xs.min(), xs.max(), ys.min(), ys.max())
    assert result.bounds == bounds  # one set of bounds for every kind: the day's positions range
    assert list(result.kinds) == ["positions", "deaths", "jumps", "deaths_build_42"]
    for kind in KINDS:
        chosen = [r for r in level_rows if belongs(r, kind)]
        x = np.array([r["x"] for r in chosen])
        y = np.array([r["y"] for r in chosen])
        expected = histogram2d_reference(x, y, bounds, grid_x, grid_y)
        got = result.kinds[kind.name]
        assert got.matrix.shape == (grid_y, grid_x)
        assert np.array_equal(got.matrix, expected), kind.name
        assert got.events == len(chosen), kind.name
        assert got.out_of_bounds == len(chosen) - int(expected.sum()), kind.name
        assert got.sessions == len({r["session_id"] for r in chosen} - {None}), kind.name
    counts = {name: k.events for name, k in result.kinds.items()}
    # the data exercises every rule: types, names, a payload filter matching 42 and "42"
    assert counts["positions"] > counts["deaths"] > counts["deaths_build_42"] > 0 and counts["jumps"] > 0
    if fixed is not None:
        assert result.kinds["positions"].out_of_bounds > 0


def test_a_level_without_positions_writes_empty_kinds(db_url):
    engine = store(db_url, generated_events(200))
    result = compute_heatmap(engine, DAY, "3", 5, kinds=KINDS)
    assert result.bounds is None and result.points == 0
    assert {name: (k.matrix.shape, int(k.matrix.sum()), k.events, k.sessions) for name, k in result.kinds.items()} == {
        name: ((5, 5), 0, 0, 0) for name in ["positions", "deaths", "jumps", "deaths_build_42"]
    }


def old_row_reference(rows: list[dict], level: str, grid: int, fixed: GridBounds | None) -> dict:
    """The old heatmaps row as the job wrote it before kinds existed: np.histogram2d of every
    event of the level with x and y, whatever its type; JSON floats; grid_size as text."""
    points = [r for r in rows if r["level"] == level and r["x"] is not None]
    x, y = np.array([r["x"] for r in points]), np.array([r["y"] for r in points])
    bounds = fixed or auto_bounds(x.min(), x.max(), y.min(), y.max())
    matrix = histogram2d_reference(x, y, bounds, grid)
    return {
        "level": level,
        "date": DAY,
        "grid_size": str(grid),
        "matrix": matrix.astype(np.float64).tolist(),
        "x_min": bounds.x_min,
        "x_max": bounds.x_max,
        "y_min": bounds.y_min,
        "y_max": bounds.y_max,
        "bounds_source": "fixed" if fixed else "auto",
        "total": float(matrix.sum()),
        "max_count": float(matrix.max()),
        "nonempty_cells": int(np.count_nonzero(matrix)),
        "out_of_bounds": len(points) - int(matrix.sum()),
        "updated_at": NOW,
    }


@pytest.mark.parametrize("fixed", [None, GridBounds(0, 80, 0, 10)], ids=["auto", "fixed"])
def test_the_old_row_stays_the_positions_kind_unchanged(db_url, fixed):
    rows = generated_events()
    engine = store(db_url, rows)
    upsert_heatmap(engine, compute_heatmap(engine, DAY, "1", 10, fixed, kinds=KINDS), NOW)
    stored = read_heatmap(engine, "1", DAY)
    stored.pop("id")
    stored["matrix"] = json.loads(stored["matrix"]) if isinstance(stored["matrix"], str) else stored["matrix"]
    expected = old_row_reference(rows, "1", 10, fixed)
    assert stored == expected
    with engine.connect() as conn:
        # the old reader's query still returns exactly one row, and its JSON is the old job's
        matrices = conn.execute(sa.text("SELECT matrix FROM heatmaps WHERE level = :l AND date = :d"), {"l": "1", "d": DAY}).all()
        kinds = conn.execute(sa.select(heatmap_kinds).where(heatmap_kinds.c.level == "1").order_by(heatmap_kinds.c.kind)).mappings().all()
    assert len(matrices) == 1
    old_json = matrices[0][0] if isinstance(matrices[0][0], str) else json.dumps(matrices[0][0])
    assert json.loads(old_json) == expected["matrix"]
    assert [k["kind"] for k in kinds] == ["deaths", "deaths_build_42", "jumps", "positions"]
    positions = next(k for k in kinds if k["kind"] == "positions")
    positions_matrix = positions["matrix"] if isinstance(positions["matrix"], list) else json.loads(positions["matrix"])
    assert positions_matrix == expected["matrix"]
    assert (positions["grid_x"], positions["grid_y"], positions["total"], positions["out_of_bounds"]) == (
        10, 10, expected["total"], expected["out_of_bounds"]
    )
    assert all(k["x_min"] == expected["x_min"] and k["y_max"] == expected["y_max"] for k in kinds)


def test_rewriting_replaces_every_kind_of_the_level_and_date_only(db_url):
    engine = store(db_url, generated_events(500))
    upsert_heatmap(engine, compute_heatmap(engine, DAY, "1", 6, kinds=KINDS), NOW)
    upsert_heatmap(engine, compute_heatmap(engine, DAY, "2", 6, kinds=KINDS), NOW)
    # the configuration drops deaths_build_42 for level 1: its row goes with the rewrite
    upsert_heatmap(engine, compute_heatmap(engine, DAY, "1", 6, kinds=tuple(DEFAULT_KINDS.values())), NOW)
    with engine.connect() as conn:
        pairs = conn.execute(sa.select(heatmap_kinds.c.level, heatmap_kinds.c.kind).order_by(heatmap_kinds.c.level, heatmap_kinds.c.kind)).all()
        old_rows = conn.execute(sa.select(sa.func.count()).select_from(heatmaps)).scalar_one()
    assert [tuple(p) for p in pairs] == [
        ("1", "deaths"), ("1", "jumps"), ("1", "positions"),
        ("2", "deaths"), ("2", "deaths_build_42"), ("2", "jumps"), ("2", "positions"),
    ]
    assert old_rows == 2


def test_a_non_square_grid_is_named_in_the_old_grid_size_column(db_url):
    engine = store(db_url, generated_events(300))
    upsert_heatmap(engine, compute_heatmap(engine, DAY, "1", 8, grid_y=4, kinds=KINDS), NOW)
    row = read_heatmap(engine, "1", DAY)
    matrix = row["matrix"] if isinstance(row["matrix"], list) else json.loads(row["matrix"])
    assert row["grid_size"] == "8x4" and len(matrix) == 4 and {len(r) for r in matrix} == {8}


LEVELS_TOML = """\
[kinds.deaths_build_42]
event_types = ["death"]
payload = { build = 42 }

[levels.1]
name = "Meadow"
bounds = [0, 100, 0, 50]
grid = [8, 5]
kinds = ["deaths", "deaths_build_42"]
background = { image = "meadow.png", x_min = 0, x_max = 100, y_min = 0, y_max = 50 }
"""


def test_the_asset_writes_the_kinds_of_the_levels_file(monkeypatch, sqlite_url, tmp_path):
    from heatmap_pipeline_tests.support import build_defs, event, materialize_etl, materialize_heatmap, table_rows, write_source_events

    start = dt.datetime(2025, 11, 16, 9)
    source = [
        event(start, {"x": 10, "y": 10, "level": 1}),
        event(start, {"x": 90, "y": 40, "level": 1, "build": 42}, event_type="death"),
        event(start, {"x": 95, "y": 45, "level": 1, "build": 41}, event_type="death", session_id="s2"),
        event(start, {"x": 50, "y": 25, "level": 1}, event_type="jump"),
        event(start, {"x": 150, "y": 25, "level": 1}, event_type="death"),  # out of the level's bounds
    ]
    write_source_events(sqlite_url, source)
    levels_file = tmp_path / "levels.toml"
    levels_file.write_text(LEVELS_TOML)
    from PIL import Image

    Image.new("RGB", (200, 100), (0, 160, 0)).save(tmp_path / "meadow.png")
    defs = build_defs(monkeypatch, sqlite_url, HEATMAP_LEVELS="1", HEATMAP_LEVELS_FILE=str(levels_file))
    assert materialize_etl(defs, "2025-11-16").success
    result = materialize_heatmap(defs, "2025-11-16", "1")
    assert result.success
    rows = {r["kind"]: r for r in table_rows(sqlite_url, heatmap_kinds)}
    assert sorted(rows) == ["deaths", "deaths_build_42", "positions"]  # jumps not chosen for this level
    assert {k: (r["grid_x"], r["grid_y"], r["total"], r["events"], r["out_of_bounds"], r["sessions"]) for k, r in rows.items()} == {
        "positions": (8, 5, 4.0, 5, 1, 2),
        "deaths": (8, 5, 2.0, 3, 1, 2),
        "deaths_build_42": (8, 5, 1.0, 1, 0, 1),
    }
    assert rows["deaths_build_42"]["matrix"][4][7] == 1.0  # x 90 of 0-100 in 8 cells, y 40 of 0-50 in 5
    old = table_rows(sqlite_url, heatmaps)
    assert len(old) == 1 and old[0]["grid_size"] == "8x5" and old[0]["total"] == 4.0
    metadata = result.asset_materializations_for_node("level_heatmaps")[0].metadata
    assert {metadata[f"sum_{k}"].value for k in ("positions", "deaths", "deaths_build_42")} == {4.0, 2.0, 1.0}
    assert metadata["kinds"].value["deaths"]["events"] == 3
    # a preview per kind, in the level's world (100 wide, 50 high), over the level's art
    import base64
    import io
    import re

    from PIL import Image

    from heatmap_pipeline.core.render import plot_geometry, world_to_pixel

    for key in ("preview", "preview_deaths", "preview_deaths_build_42"):
        png = base64.b64decode(re.search(r"base64,([A-Za-z0-9+/=]+)\)", metadata[key].value).group(1))
        (left, top, right, bottom), bounds = plot_geometry(png)
        assert bounds == GridBounds(0, 100, 0, 50)
        assert (right - left) / (bottom - top) == pytest.approx(2.0, rel=0.03)
        picture = Image.open(io.BytesIO(png)).convert("RGB")
        assert picture.getpixel(world_to_pixel(png, 30, 45)) == (0, 160, 0), key  # an empty cell: the art
    # deaths_build_42's one event, x 90 y 40: its cell (top row, last column) is drawn top right, over
    # the art; the cell mirrored to the bottom row is empty
    png = base64.b64decode(re.search(r"base64,([A-Za-z0-9+/=]+)\)", metadata["preview_deaths_build_42"].value).group(1))
    picture = Image.open(io.BytesIO(png)).convert("RGB")
    assert picture.getpixel(world_to_pixel(png, 93.75, 45)) != (0, 160, 0)
    assert picture.getpixel(world_to_pixel(png, 93.75, 5)) == (0, 160, 0)


def test_a_kind_counting_more_than_the_positions_is_never_written(db_url):
    engine = store(db_url, generated_events(300))
    upsert_heatmap(engine, compute_heatmap(engine, DAY, "1", 6, kinds=KINDS), NOW)
    broken = compute_heatmap(engine, DAY, "1", 6, kinds=KINDS)
    broken.kinds["deaths"].matrix[0, 0] = broken.matrix[0, 0] + 1  # a bitmask bug would look like this
    with pytest.raises(InconsistentHeatmap, match="kind deaths counts more than the positions"):
        upsert_heatmap(engine, broken, NOW + dt.timedelta(hours=1))
    with engine.connect() as conn:
        stamps = conn.execute(sa.select(heatmap_kinds.c.updated_at.distinct())).scalars().all()
    assert stamps == [NOW]  # the rows written before are all still there, unchanged


def test_the_kinds_check_finds_a_missing_kind_a_kind_above_the_positions_and_a_moved_grid(db_url):
    from heatmap_pipeline.warehouse.invariants import heatmap_kinds_consistent

    engine = store(db_url, generated_events(400))
    upsert_heatmap(engine, compute_heatmap(engine, DAY, "1", 6, kinds=KINDS), NOW)
    names = [k.name for k in KINDS]
    assert heatmap_kinds_consistent(engine, DAY, "1", names).passed

    def change(kind: str, **values):
        with engine.begin() as conn:
            conn.execute(heatmap_kinds.update().where(heatmap_kinds.c.level == "1", heatmap_kinds.c.kind == kind).values(**values))

    positions = next(r for r in table_rows_of(engine) if r["kind"] == "positions")
    matrix = positions["matrix"] if isinstance(positions["matrix"], list) else json.loads(positions["matrix"])
    above = [row[:] for row in matrix]
    above[0][0] += 1
    change("jumps", matrix=above, total=sum(map(sum, above)), out_of_bounds=0, events=int(sum(map(sum, above))))
    verdict = heatmap_kinds_consistent(engine, DAY, "1", names)
    assert not verdict.passed and "jumps: counts more than the positions" in verdict.description
    change("deaths", x_max=1e9)
    assert "deaths: grid or bounds differ from the positions'" in heatmap_kinds_consistent(engine, DAY, "1", names).description
    verdict = heatmap_kinds_consistent(engine, DAY, "1", [*names, "falls"])
    assert not verdict.passed and "no heatmap_kinds row for falls" in verdict.description


def table_rows_of(engine: sa.Engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(heatmap_kinds)).mappings()]


def test_payloads_holding_a_nul_escape_are_binned_by_their_filter_like_any_other(db_url):
    r"""PostgreSQL's JSON functions refuse a payload with a \u0000 escape anywhere in it; one such event
    (a client's stray NUL in another member) must not fail the level's heatmap or change any match."""
    tag = KindConfig("tagged", frozenset(), {"tag": "\\u0000"})  # the six characters backslash-u-0-0-0-0
    payloads = [
        {"build": "42", "note": "a\x00b"},  # NUL in another member: still build 42
        {"build": "4\x002"},  # a NUL inside the value: not 42
        {"build": "42", "tag": "\\u0000"},  # an escaped backslash, no NUL: tagged
        {"build": "42", "tag": "\x00"},  # a NUL: not tagged
        {"build": "42", "tag": "\\\x00"},  # a backslash then a NUL: not tagged
        {"build": 42},
    ]
    rows = [
        {"event_date": DAY, "event_id": f"n{i}", "session_id": f"s{i}", "event_type": "death", "event_name": "death",
         "ts": dt.datetime(2025, 11, 16, 12), "level": "1", "x": float(i), "y": 1.0, "payload": json.dumps(payload)}
        for i, payload in enumerate(payloads)
    ]
    assert '"a\\u0000b"' in rows[0]["payload"]  # stored as the JSON escape, as the ETL writes it
    engine = store(db_url, rows)
    result = compute_heatmap(engine, DAY, "1", 6, GridBounds(0, 6, 0, 2), kinds=(BUILD_42_DEATHS, tag))
    assert result.kinds["deaths_build_42"].matrix.sum(axis=0).tolist() == [1, 0, 1, 1, 1, 1]
    assert result.kinds["tagged"].matrix.sum(axis=0).tolist() == [0, 0, 1, 0, 0, 0]
    for name, kind in (("deaths_build_42", BUILD_42_DEATHS), ("tagged", tag)):
        assert result.kinds[name].events == sum(belongs(r, kind) for r in rows)

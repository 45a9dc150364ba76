"""Incremental heatmaps give exactly the rows of one full computation over one full load.

N incremental ETL ticks, each followed by the heatmaps of every level (fixed bounds: the stored
matrices plus the tick's position changes; automatic bounds: recomputed), are compared row by row
(heatmaps and heatmap_kinds: matrices, events, sessions, out of bounds, total/max/nonempty) with a
fresh warehouse loaded once in full and binned once - on SQLite and PostgreSQL, on the
same-database SQL path and the two-database Python path. The ticks remove rows too (a later row
displacing a kept one, a duplicate id), points fall outside the fixed bounds, sessions gain and
lose a kind's events, and a kind filters on the payload.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa

from heatmap_pipeline.core.binning import GridBounds
from heatmap_pipeline.core.levels import DEFAULT_KINDS, KindConfig
from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.heatmap_increments import AUTO_BOUNDS, FULL, INCREMENTAL, refresh_heatmap
from heatmap_pipeline.warehouse.invariants import heatmap_consistent, heatmap_kinds_consistent, heatmap_row_check
from heatmap_pipeline.warehouse.migrations import ensure_warehouse_schema
from heatmap_pipeline.warehouse.tables import heatmap_increments, heatmap_kind_sessions, heatmap_kinds, heatmaps, position_changes
from heatmap_pipeline_tests.support import event
from heatmap_pipeline_tests.test_etl_sql_path import DAY, NOW, at, source_day
from heatmap_pipeline_tests.test_incremental import TICKS, _databases, _insert, _load, _new_source, arrivals_by_tick

GRID_X, GRID_Y = 6, 4
FIXED = {"1": GridBounds(-10.0, 10.0, -8.0, 8.0), "2": GridBounds(0.0, 5.0, -5.0, 5.0)}
LEVELS = ("1", "2", "3")  # level 3: automatic bounds
KINDS = (
    DEFAULT_KINDS["deaths"],
    DEFAULT_KINDS["jumps"],
    KindConfig("axe", payload_filter={"weapon": "axe"}),  # a payload filter
)


def more_positions(batches: list[list[dict]]) -> None:
    """Moves, deaths and jumps of a few sessions in every tick, inside and outside the bounds; a
    session's only death arrives in one tick and is displaced (removed) by an earlier row later."""
    for i, batch in enumerate(batches[:-1]):
        moment = TICKS[i] - dt.timedelta(minutes=15)
        for j in range(12):
            kind = ("move", "death", "jump")[j % 3]
            payload = {"x": (j * 7 + i * 3) % 25 - 12, "y": (j * 5 + i) % 19 - 9, "level": 1 + (i + j) % 3}
            if j % 4 == 0:
                payload["weapon"] = "axe" if j % 8 == 0 else "bow"
            batch.append(
                event(moment + dt.timedelta(seconds=j), payload, id=20_000 + 100 * i + j, event_type=kind,
                      session_id=f"s{(i + j) % 5}", created_at=moment + dt.timedelta(seconds=j))
            )
    # s9's one death (level 2) arrives in tick 1; in tick 2 an earlier row of its id takes its place
    first = TICKS[0] + dt.timedelta(minutes=3)
    batches[1].append(event(first, {"x": 1, "y": 1, "level": 2, "weapon": "axe"}, id=30_000, event_type="death",
                            session_id="s9", created_at=first))
    displacing = first - dt.timedelta(seconds=1)
    batches[2].append(event(displacing, {"x": 2, "y": 2, "level": 2}, id=30_000, event_type="move",
                            session_id="s8", created_at=TICKS[1] + dt.timedelta(minutes=2)))


def heatmap_tables(engine: sa.Engine) -> dict[str, list[tuple]]:
    """heatmaps and heatmap_kinds, comparable between runs (no ids, no times of the run)."""
    def rows(table, leave_out):
        columns = [c for c in table.c if c.name not in leave_out]
        with engine.connect() as conn:
            found = [dict(r) for r in conn.execute(sa.select(*columns)).mappings()]
        for row in found:
            row["matrix"] = json.loads(row["matrix"]) if isinstance(row["matrix"], str) else row["matrix"]
        return sorted((tuple(sorted(r.items())) for r in found), key=repr)

    return {
        "heatmaps": rows(heatmaps, ("id", "updated_at")),
        "heatmap_kinds": rows(heatmap_kinds, ("updated_at",)),
    }


def refresh_levels(warehouse: sa.Engine) -> dict[str, tuple[str, str]]:
    modes = {}
    for level in LEVELS:
        bounds = FIXED.get(level)
        verify = heatmap_row_check(DAY, level, GRID_X, bounds, GRID_Y)
        done = refresh_heatmap(warehouse, DAY, level, GRID_X, bounds, grid_y=GRID_Y, kinds=KINDS, now=NOW, verify=verify)
        modes[level] = (done.mode, done.reason)
        assert heatmap_consistent(warehouse, DAY, level, GRID_X, bounds, grid_y=GRID_Y).passed
        assert heatmap_kinds_consistent(warehouse, DAY, level, ["positions", "deaths", "jumps", "axe"]).passed
    return modes


@pytest.mark.parametrize("dialect", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
@pytest.mark.parametrize("path", ["same-database", "two-databases"])
def test_incremental_heatmaps_after_ticks_equal_one_full_computation(dialect, path, tmp_path):
    with _databases(dialect, tmp_path, 3 if path == "two-databases" else 2) as urls:
        source = _new_source(urls[0])
        warehouse = get_engine(urls[1]) if path == "two-databases" else source
        ensure_warehouse_schema(warehouse)
        rows = source_day(with_duplicates=True, sqlite=dialect == "sqlite")  # a payload with \u0000 among them
        assert any("\\u0000" in str(r["payload"]) for r in rows)
        batches = arrivals_by_tick(rows)
        more_positions(batches)
        modes = []
        for batch in batches:
            _insert(source, batch)
            _load(source, warehouse, tick=True)
            modes.append(refresh_levels(warehouse))
            with warehouse.connect() as conn:  # what the heatmaps applied is pruned from the log
                logged = set(conn.execute(sa.select(position_changes.c.level).distinct()).scalars())
            assert not logged & set(LEVELS), logged

        assert modes[0]["1"] == (FULL, "no stored heatmap records which changes it holds")
        assert all(m[level][0] == INCREMENTAL for m in modes[1:] for level in FIXED), modes
        assert all(m["3"] == (FULL, AUTO_BOUNDS) for m in modes), modes

        full_source = _new_source(urls[-1])
        _insert(full_source, [row for batch in batches for row in batch])
        ensure_warehouse_schema(full_source)
        _load(full_source, full_source, tick=False)
        assert all(mode == FULL for mode, _ in refresh_levels(full_source).values())

        ticked, full = heatmap_tables(warehouse), heatmap_tables(full_source)
        for table in full:
            assert ticked[table] == full[table], table
        by_kind = {(dict(r)["level"], dict(r)["kind"]): dict(r) for r in full["heatmap_kinds"]}
        assert by_kind[("1", "positions")]["out_of_bounds"] > 0 and by_kind[("2", "axe")]["events"] > 0
        assert all(by_kind[(level, "deaths")]["sessions"] > 0 for level in LEVELS)


@pytest.mark.parametrize("dialect", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_full_load_of_the_day_makes_the_next_heatmap_full(dialect, tmp_path):
    """A full load (each path: SQL, and PostgreSQL's parallel fill) starts a new generation:
    changes before it do not apply to what it loaded."""
    with _databases(dialect, tmp_path, 1) as (url,):
        full_load_after_ticks(_new_source(url))


def full_load_after_ticks(source: sa.Engine) -> None:
    ensure_warehouse_schema(source)
    _insert(source, [event(at(9), {"x": 1, "y": 1, "level": 1}, created_at=at(9))])
    _load(source, source, tick=True)
    assert refresh_levels(source)["1"][0] == FULL
    _insert(source, [event(at(10), {"x": 2, "y": 2, "level": 1}, created_at=at(10))])
    _load(source, source, tick=True)
    assert refresh_levels(source)["1"][0] == INCREMENTAL
    _insert(source, [event(at(11), {"x": 3, "y": 3, "level": 1}, created_at=at(11))])
    _load(source, source, tick=False)
    assert refresh_levels(source)["1"] == (FULL, "game_events of the day was loaded in full since the stored heatmap")
    with source.connect() as conn:
        assert conn.execute(sa.select(heatmaps.c.total).where(heatmaps.c.level == "1")).scalar_one() == 3


def test_other_bounds_or_kinds_make_the_heatmap_full(sqlite_url):
    source = _new_source(sqlite_url)
    ensure_warehouse_schema(source)
    _insert(source, [event(at(9), {"x": 1, "y": 1, "level": 1}, created_at=at(9), session_id="a")])
    _load(source, source, tick=True)
    bounds = FIXED["1"]
    refresh_heatmap(source, DAY, "1", GRID_X, bounds, grid_y=GRID_Y, kinds=KINDS, now=NOW)
    _insert(source, [event(at(10), {"x": 2, "y": 2, "level": 1}, created_at=at(10), session_id="b")])
    _load(source, source, tick=True)
    other = GridBounds(-20.0, 20.0, -8.0, 8.0)
    done = refresh_heatmap(source, DAY, "1", GRID_X, other, grid_y=GRID_Y, kinds=KINDS, now=NOW)
    assert (done.mode, done.reason) == (FULL, "the grid, bounds or kinds differ from the stored heatmap's")
    done = refresh_heatmap(source, DAY, "1", GRID_X, other, grid_y=GRID_Y, kinds=KINDS[:1], now=NOW)
    assert (done.mode, done.reason) == (FULL, "the grid, bounds or kinds differ from the stored heatmap's")
    _insert(source, [event(at(11), {"x": 3, "y": 3, "level": 1}, created_at=at(11), session_id="b")])
    _load(source, source, tick=True)
    done = refresh_heatmap(source, DAY, "1", GRID_X, other, grid_y=GRID_Y, kinds=KINDS[:1], now=NOW)
    assert done.mode == INCREMENTAL and done.changes_applied == 1
    assert (done.result.points, done.result.kinds["positions"].sessions) == (3, 2)
    with source.connect() as conn:  # auto bounds and levels without fixed bounds keep no session counts
        assert conn.execute(sa.select(sa.func.count()).select_from(heatmap_kind_sessions)).scalar_one() == 2
        assert conn.execute(sa.select(heatmap_increments.c.applied_seq)).scalar_one() > 0


LEVELS_FILE = """\
[levels.1]
bounds = [0, 100, 0, 50]
grid = [8, 5]
kinds = ["deaths"]

[levels.2]
grid = [8, 5]
"""


@pytest.mark.parametrize("dialect", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_asset_adds_a_tick_to_a_fixed_bounds_heatmap_and_says_so(dialect, tmp_path, monkeypatch):
    from heatmap_pipeline.orchestration import INCREMENTAL as TICK, LOAD_MODE_TAG
    from heatmap_pipeline_tests.support import build_defs, instance_of, materialize_heatmap, write_source_events

    with _databases(dialect, tmp_path, 1) as (url,):
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        start = now - dt.timedelta(minutes=30)
        write_source_events(url, [event(start, {"x": 10 * i, "y": 5 * i, "level": 1 + i % 2}, session_id=f"s{i % 3}")
                                  for i in range(8)])
        levels_file = tmp_path / "levels.toml"
        levels_file.write_text(LEVELS_FILE)
        defs = build_defs(monkeypatch, url, HEATMAP_LEVELS="1,2", HEATMAP_LEVELS_FILE=str(levels_file),
                          PARTITION_START_DATE="2025-01-01", ETL_INCREMENTAL_OVERLAP_SECONDS="0")
        instance = instance_of(defs)
        day = now.date().isoformat()

        def tick_and_heatmaps():
            etl = defs.resolve_job_def("etl_job").execute_in_process(partition_key=day, instance=instance, tags={LOAD_MODE_TAG: TICK})
            assert etl.success
            found = {}
            for level in ("1", "2"):
                result = materialize_heatmap(defs, day, level, instance)
                assert result.success
                assert all(e.passed for e in result.get_asset_check_evaluations())  # matrix_consistent
                found[level] = result.asset_materializations_for_node("level_heatmaps")[0].metadata
            return found

        first = tick_and_heatmaps()
        assert first["1"]["heatmap_mode"].value == "full"
        assert first["1"]["full_reason"].value == "no stored heatmap records which changes it holds"
        write_source_events(url, [event(now - dt.timedelta(seconds=5), {"x": 95, "y": 45, "level": 1}, event_type="death", session_id="s7"),
                                  event(now - dt.timedelta(seconds=5), {"x": 500, "y": 45, "level": 1}, session_id="s7")])
        second = tick_and_heatmaps()
        assert second["1"]["heatmap_mode"].value == "incremental" and second["1"]["changes_applied"].value == 2
        assert (second["1"]["position_events"].value, second["1"]["out_of_bounds"].value) == (6, 1)
        assert second["1"]["kinds"].value["deaths"] == {**second["1"]["kinds"].value["deaths"], "events": 1, "sessions": 1}
        assert second["2"]["heatmap_mode"].value == "full" and second["2"]["full_reason"].value == AUTO_BOUNDS


def test_a_full_computation_overtaken_by_a_newer_heatmap_is_not_written(sqlite_url):
    """Its rows would hold fewer changes than the stored ones while the log no longer has the
    changes in between (pruned by the newer run): refused, the newer rows stay."""
    from heatmap_pipeline.warehouse.heatmap_increments import record_full
    from heatmap_pipeline.warehouse.heatmaps import InconsistentHeatmap, compute_heatmap, upsert_heatmap

    source = _new_source(sqlite_url)
    ensure_warehouse_schema(source)
    _insert(source, [event(at(9), {"x": 1, "y": 1, "level": 1}, created_at=at(9))])
    _load(source, source, tick=True)
    bounds = FIXED["1"]
    refresh_heatmap(source, DAY, "1", GRID_X, bounds, grid_y=GRID_Y, kinds=KINDS, now=NOW)
    _insert(source, [event(at(10), {"x": 2, "y": 2, "level": 1}, created_at=at(10))])
    _load(source, source, tick=True)
    slow = compute_heatmap(source, DAY, "1", GRID_X, bounds, grid_y=GRID_Y, kinds=KINDS, per_session=True)
    _insert(source, [event(at(11), {"x": 3, "y": 3, "level": 1}, created_at=at(11))])
    _load(source, source, tick=True)
    assert refresh_heatmap(source, DAY, "1", GRID_X, bounds, grid_y=GRID_Y, kinds=KINDS, now=NOW).mode == INCREMENTAL
    with pytest.raises(InconsistentHeatmap, match="a newer heatmap of level 1"):
        upsert_heatmap(source, slow, NOW, also=lambda conn: record_full(conn, slow, True, NOW))
    with source.connect() as conn:
        assert conn.execute(sa.select(heatmaps.c.total).where(heatmaps.c.level == "1")).scalar_one() == 3


def test_per_session_counts_of_older_days_are_forgotten_and_their_next_heatmap_is_full(sqlite_url):
    """Only the last days keep heatmap_kind_sessions (it would grow by a day's sessions a day)."""
    source = _new_source(sqlite_url)
    ensure_warehouse_schema(source)
    old_day = DAY - dt.timedelta(days=3)
    old_rows = [event(dt.datetime.combine(old_day, dt.time(9)), {"x": 1, "y": 1, "level": 1}, created_at=at(9))]
    _insert(source, old_rows + [event(at(9), {"x": 1, "y": 1, "level": 1}, created_at=at(9))])
    bounds = FIXED["1"]
    for day in (old_day, DAY):
        from heatmap_pipeline.warehouse.etl import load_partition
        from heatmap_pipeline_tests.test_etl_sql_path import RULES

        load_partition(source, source, day, RULES, NOW, 1000)
    refresh_heatmap(source, old_day, "1", GRID_X, bounds, grid_y=GRID_Y, kinds=KINDS, now=NOW)
    with source.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(heatmap_kind_sessions)).scalar_one() == 1
    refresh_heatmap(source, DAY, "1", GRID_X, bounds, grid_y=GRID_Y, kinds=KINDS, now=NOW)
    with source.connect() as conn:
        kept = conn.execute(sa.select(heatmap_kind_sessions.c.date).distinct()).scalars().all()
        marks = conn.execute(sa.select(heatmap_increments.c.date)).scalars().all()
    assert kept == [DAY] and marks == [DAY]
    done = refresh_heatmap(source, old_day, "1", GRID_X, bounds, grid_y=GRID_Y, kinds=KINDS, now=NOW)
    assert (done.mode, done.reason) == (FULL, "no stored heatmap records which changes it holds")

"""Hostile source data (issue 11, points 1-5): nothing lost, nothing crashes.

Times Python cannot hold, rows that name no usable day, extreme coordinates, lenient numbers and a
SQL_ASCII source, each on SQLite and PostgreSQL, through both ETL paths (same database: the SQL fast
path; two databases: the streaming Python path) and with text, JSON and JSONB payload columns where
the payload matters. Then the global reconciliation (``heatmap-pipeline reconcile``) over it all.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid

import dagster as dg
import numpy as np
import pytest
import sqlalchemy as sa

from heatmap_pipeline.core.binning import GridBounds, HeatmapAccumulator, bin_edges
from heatmap_pipeline.core.cleaning import CleaningRules
from heatmap_pipeline.defs.late_data import read_cursor, write_cursor
from heatmap_pipeline.defs.resources import SourceDatabase
from heatmap_pipeline.runtime import cli
from heatmap_pipeline.runtime.instance import prepare_dagster_home
from heatmap_pipeline.warehouse import heatmap_increments
from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.etl.python_path import load_partition_python
from heatmap_pipeline.warehouse.etl.sql_path import load_partition_sql
from heatmap_pipeline.warehouse.migrations import ensure_warehouse_schema
from heatmap_pipeline.warehouse.source import arrivals_since, day_filter, filed_day, source_events_table
from heatmap_pipeline.warehouse.tables import game_events, heatmaps, quarantined_events
from heatmap_pipeline_tests.support import (
    build_defs,
    event,
    histogram2d_reference,
    materialize_etl,
    materialize_heatmap,
    write_source_events,
)
from heatmap_pipeline_tests.test_etl_sql_path import create_source

USE_MEMORY_INSTANCE = True

DAY = dt.date(2025, 11, 16)
START = dt.date(2025, 1, 1)  # PARTITION_START_DATE in these tests
NOW = dt.datetime(2025, 11, 16, 20)
RULES = CleaningRules(
    levels=frozenset({"1", "2", "3"}),
    default_level="1",
    future_cutoff=NOW + dt.timedelta(minutes=10),
    partition_start=START,
)
PAYLOADS = {"text": ("text", "TEXT"), "json": ("json", "JSON"), "jsonb": ("jsonb", "TEXT")}  # PostgreSQL, SQLite


def at(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2025, 11, 16, hour, minute)


PATHS = ["sql", "python", "two_databases"]


def load(path: str, url: str, tmp_path, rules: CleaningRules = RULES):
    """The day through one ETL path: "sql" (the same-database fast path), "python" (the streaming
    path, into the same database) or "two_databases" (the streaming path into a separate SQLite
    warehouse, as when WAREHOUSE_DATABASE_URL differs). Returns the result and the warehouse URL."""
    engine = get_engine(url)
    if path in ("sql", "python"):
        ensure_warehouse_schema(engine)
        if path == "sql":
            return load_partition_sql(engine, DAY, rules, NOW, chunk_size=3), url
        return load_partition_python(engine, engine, DAY, rules, NOW, chunk_size=3), url
    warehouse_url = f"sqlite:///{tmp_path / f'warehouse_{uuid.uuid4().hex[:6]}.sqlite'}"
    warehouse = get_engine(warehouse_url)
    ensure_warehouse_schema(warehouse)
    return load_partition_python(engine, warehouse, DAY, rules, NOW, chunk_size=3), warehouse_url


def fates(url: str, day: dt.date = DAY) -> dict[str, str]:
    """Source id -> 'clean' or its quarantine reason, for one day."""
    with get_engine(url).connect() as conn:
        clean = conn.execute(sa.select(game_events.c.event_id).where(game_events.c.event_date == day)).scalars().all()
        quarantined = conn.execute(
            sa.select(quarantined_events.c.source_event_id, quarantined_events.c.reason).where(
                quarantined_events.c.partition_date == day
            )
        ).all()
    result = {event_id: "clean" for event_id in clean}
    for event_id, reason in quarantined:
        assert event_id not in result, f"id {event_id} stored twice"
        result[event_id] = reason
    return result


def raw_rows(url: str) -> dict[str, dict]:
    with get_engine(url).connect() as conn:
        return {
            r.source_event_id: json.loads(r.raw_row)
            for r in conn.execute(sa.select(quarantined_events.c.source_event_id, quarantined_events.c.raw_row))
        }


# --- 1. times Python cannot hold ------------------------------------------------------------------


def unholdable_rows(sqlite: bool) -> tuple[list[dict], dict[str, str]]:
    """Rows of DAY with times outside Python's datetime, and the fate of each id."""
    cases = [
        ("clean", event(at(9), {"x": 1, "y": 2, "level": 1}, id=1)),
        ("timestamp_out_of_range", event("infinity", {"x": 1, "y": 2}, id=2, created_at=at(10))),
        ("timestamp_out_of_range", event("-infinity", {"x": 1, "y": 2}, id=3, created_at=at(10))),
        ("timestamp_out_of_range", event("10000-01-01 00:00:00", {"x": 1, "y": 2}, id=4, created_at=at(10))),
        ("timestamp_out_of_range", event(at(9, 5), {"x": 1, "y": 2}, id=5, created_at="infinity")),
        ("timestamp_out_of_range", event(at(9, 6), {"x": 1, "y": 2}, id=6, created_at="10000-01-01 00:00:00")),
        ("timestamp_out_of_range", event(at(9, 7), {"x": 1, "y": 2}, id=7, created_at="-infinity")),
        ("clean", event(at(9, 8), {"x": 3, "y": 4, "level": 2}, id=8)),
    ]
    if not sqlite:
        cases.append(("timestamp_out_of_range", event(at(9, 9), {"x": 1, "y": 2}, id=11, created_at="0044-03-15 BC")))
    return [row for _, row in cases], {str(row["id"]): fate for fate, row in cases}


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("path", PATHS)
def test_times_python_cannot_hold_are_quarantined_and_the_rest_of_the_day_loads(db_url, tmp_path, path, payload):
    sqlite = db_url.startswith("sqlite")
    pg_type, sqlite_type = PAYLOADS[payload]
    create_source(db_url, sqlite_type if sqlite else pg_type, unique_id=False)
    rows, expected = unholdable_rows(sqlite)
    write_source_events(db_url, rows)

    result, warehouse_url = load(path, db_url, tmp_path)

    assert fates(warehouse_url) == expected
    assert (result.extracted, result.clean) == (len(rows), 2) and result.reconciled
    raw = raw_rows(warehouse_url)
    assert raw["2"]["timestamp"] == "infinity" and raw["5"]["created_at"] == "infinity"  # the raw row keeps the value
    assert "timestamp_unholdable" not in raw["2"]
    with get_engine(warehouse_url).connect() as conn:  # what is stored reads back (no infinity in game_events)
        assert conn.execute(sa.select(game_events.c.ts, game_events.c.created_at)).all()


def test_late_events_sensor_keeps_working_beside_times_python_cannot_hold(db_url, monkeypatch, instance):
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    arrived = now - dt.timedelta(minutes=2)
    write_source_events(
        db_url,
        [
            event(at(8), {"x": 1, "y": 1}, created_at=arrived),  # late: DAY was never loaded
            event(at(8, 1), {"x": 1, "y": 1}, created_at="infinity"),  # no arrival time: not seen arriving
            event("infinity", {"x": 1, "y": 1}, created_at=arrived),  # filed under its arrival day: today
            event("10000-01-01 00:00:00", {"x": 1, "y": 1}, created_at=arrived),
        ],
    )
    found = arrivals_since(get_engine(db_url), arrived - dt.timedelta(hours=1), START)
    assert [(a.day, a.rows) for a in found] == [(DAY, 1), (arrived.date(), 2)]
    defs = build_defs(monkeypatch, db_url, PARTITION_START_DATE=START.isoformat())
    sensor = defs.get_sensor_def("late_events_sensor")
    context = dg.build_sensor_context(
        instance=instance, cursor=write_cursor(arrived - dt.timedelta(hours=1)), resources={"source": SourceDatabase(url=db_url)}
    )
    result = sensor(context)
    assert [r.partition_key for r in result.run_requests] == [DAY.isoformat()]
    assert read_cursor(result.cursor) == arrived  # not infinity


# --- 2. rows that name no usable day ---------------------------------------------------------------

YEAR_1970 = dt.datetime(1970, 1, 1)


def odd_rows(sqlite: bool) -> tuple[list[dict], dict[str, dt.date]]:
    """Rows whose timestamp or created_at names no usable day, and the day that owns each."""
    next_day = DAY + dt.timedelta(days=1)
    cases = [
        (DAY, event(at(9), {"x": 1, "y": 2}, id=100)),
        (START, {**event(None, {"x": 1, "y": 2}, id=101), "created_at": None}),  # both NULL
        (DAY, event(YEAR_1970, {"x": 1, "y": 2}, id=102, created_at=at(10))),  # before the start, arrived on DAY
        (DAY, event(dt.datetime(2024, 6, 1, 12), {"x": 1, "y": 2}, id=103, created_at=at(10))),  # last year
        (DAY, event(at(9, 1), {"x": 1, "y": 2}, id=104, created_at=YEAR_1970)),  # arrival in 1970
        (START, {**event(YEAR_1970, {"x": 1, "y": 2}, id=105), "created_at": None}),
        (START, event(None, {"x": 1, "y": 2}, id=106, created_at=YEAR_1970)),
        (START, event(YEAR_1970, {"x": 1, "y": 2}, id=107, created_at=YEAR_1970)),
        (START, {**event("infinity", {"x": 1, "y": 2}, id=108), "created_at": None}),
        (DAY, event("infinity", {"x": 1, "y": 2}, id=109, created_at=at(10))),
        (DAY, event(at(9, 2), {"x": 1, "y": 2}, id=110, created_at="infinity")),
        (DAY, event(dt.datetime(2099, 1, 1), {"x": 1, "y": 2}, id=111, created_at=at(10))),  # a day or more ahead
        (next_day, event(dt.datetime(2025, 11, 17, 0, 0, 5), {"x": 1, "y": 2}, id=112, created_at=at(23, 59))),
        (START, event(dt.datetime(2024, 12, 31, 23), {"x": 1, "y": 2}, id=113, created_at=dt.datetime(2025, 1, 1, 0, 30))),
        (next_day, event(None, {"x": 1, "y": 2}, id=114, created_at=dt.datetime(2025, 11, 17, 1))),
    ]
    if sqlite:
        cases += [
            (DAY, event("2025-02-30 10:00:00", {"x": 1, "y": 2}, id=120, created_at=at(10))),  # no such date
            (START, {**event("garbage", {"x": 1, "y": 2}, id=121), "created_at": None}),
            (DAY, event(1763287200.0, {"x": 1, "y": 2}, id=122, created_at=at(10))),  # epoch seconds
            (DAY, event("2025-11-16 11:00:00", {"x": 1, "y": 2}, id=123, created_at="yesterday-ish")),
            (START, event("garbage", {"x": 1, "y": 2}, id=124, created_at="garbage")),
        ]
    else:
        cases.append((START, {**event("0044-03-15 BC", {"x": 1, "y": 2}, id=125), "created_at": None}))
    return [row for _, row in cases], {str(row["id"]): day for day, row in cases}


def test_every_source_row_is_owned_by_exactly_one_day(db_url):
    rows, owners = odd_rows(db_url.startswith("sqlite"))
    engine = write_source_events(db_url, rows)
    dialect, src = engine.dialect.name, source_events_table()
    candidates = sorted(set(owners.values()) | {YEAR_1970.date(), dt.date(2024, 6, 1), dt.date(2024, 12, 31),
                                                 dt.date(2099, 1, 1), START + dt.timedelta(days=1)})
    selected: dict[str, list[dt.date]] = {}
    with engine.connect() as conn:
        for day in candidates:
            for event_id in conn.execute(sa.select(src.c.id).where(day_filter(dialect, src, day, START))).scalars():
                selected.setdefault(str(event_id), []).append(day)
        filed = dict(conn.execute(sa.select(src.c.id, filed_day(dialect, src, START))).all())
    assert selected == {event_id: [day] for event_id, day in owners.items()}  # exactly one day each
    assert {str(k): (v if isinstance(v, dt.date) else dt.date.fromisoformat(v)) for k, v in filed.items()} == owners


def test_rows_naming_no_usable_day_are_quarantined_by_the_run_of_the_day_that_owns_them(db_url, monkeypatch, instance):
    rows, owners = odd_rows(db_url.startswith("sqlite"))
    write_source_events(db_url, rows)
    defs = build_defs(monkeypatch, db_url, PARTITION_START_DATE=START.isoformat())
    for day in sorted(set(owners.values())):
        result = materialize_etl(defs, day.isoformat(), instance)
        assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    stored = {}
    for day in sorted(set(owners.values())):
        stored.update({event_id: (day, fate) for event_id, fate in fates(db_url, day).items()})
    assert {event_id: day for event_id, (day, _) in stored.items()} == owners  # every row, on its day, once
    reasons = {event_id: fate for event_id, (_, fate) in stored.items()}
    assert reasons["100"] == "clean"
    assert reasons["101"] == reasons["106"] == "null_timestamp"
    assert reasons["102"] == reasons["103"] == reasons["105"] == reasons["107"] == reasons["113"] == "timestamp_before_start"
    assert reasons["104"] == "future_timestamp"  # stamped 55 years after it arrived
    assert reasons["108"] == reasons["109"] == reasons["110"] == "timestamp_out_of_range"
    assert reasons["111"] == "future_timestamp" and reasons["112"] == "clean" and reasons["114"] == "null_timestamp"


def reconcile(monkeypatch, capsys, url: str, home, *options: str) -> tuple[int, str]:
    for name in ("WAREHOUSE_DATABASE_URL", "HEATMAP_LEVELS", "HEATMAP_BOUNDS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("PARTITION_START_DATE", START.isoformat())
    monkeypatch.setenv("HEATMAP_PIPELINE_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster_home"))
    code = cli.main(["reconcile", *options])
    return code, capsys.readouterr().out


def test_reconcile_proves_every_row_is_stored_and_names_each_row_in_neither(db_url, monkeypatch, capsys, tmp_path):
    rows, owners = odd_rows(db_url.startswith("sqlite"))
    rows += unholdable_rows(db_url.startswith("sqlite"))[0]
    engine = write_source_events(db_url, rows)
    loaded_days = sorted({START, DAY})  # DAY + 1 (rows 112, 114) is never loaded
    home = tmp_path / "home"
    dagster_home = prepare_dagster_home(home / "dagster_home")
    defs = build_defs(monkeypatch, db_url, PARTITION_START_DATE=START.isoformat())
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        for day in loaded_days:
            assert materialize_etl(defs, day.isoformat(), instance).success

    code, out = reconcile(monkeypatch, capsys, db_url, home)
    on_loaded = len(rows) - 2
    assert code == 0, out
    assert f"OK: {len(rows)} source row(s); on the 2 loaded day(s) {on_loaded} = clean " in out
    assert "2025-11-17: 2 source row(s), day not loaded yet" in out
    code, out = reconcile(monkeypatch, capsys, db_url, home, "--json", "--ids")
    summary = json.loads(out)
    assert code == 0 and summary["passed"] and summary["missing"] == summary["extra"] == 0
    assert summary["clean"] + summary["quarantined"] == summary["source_rows_of_loaded_days"] == on_loaded

    # a clean row and a quarantined row lost, a stored row with no source row, a row arriving now
    with engine.begin() as conn:
        conn.execute(game_events.delete().where(game_events.c.event_id == "100"))
        conn.execute(quarantined_events.delete().where(quarantined_events.c.source_event_id == "101"))
        conn.execute(quarantined_events.insert().values(
            partition_date=DAY, source_event_id="ghost", reason="null_payload", raw_row="{}",
            quarantined_at=NOW))
    write_source_events(db_url, [event(at(12), {"x": 1, "y": 1}, id=900, created_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))])
    code, out = reconcile(monkeypatch, capsys, db_url, home)
    assert code == 1
    assert "2025-11-16: " in out and "1 source row(s) in neither game_events nor quarantined_events: id 100" in out
    assert "1 stored row(s) no source row of the day accounts for: id ghost" in out
    assert "wait for the next (late_events_sensor): id 900" in out
    assert "2025-01-01: " in out and "in neither game_events nor quarantined_events: id 101" in out
    assert out.strip().splitlines()[-1].startswith("FAILED: ")


# --- 3. extreme coordinates --------------------------------------------------------------------------

BIGGEST = float(np.finfo(np.float64).max)


@pytest.mark.parametrize("lo, hi", [(-1e308, 1e308), (-BIGGEST, BIGGEST), (-BIGGEST, 1e300), (-1e308, 9e307)])
def test_every_finite_value_is_binned_when_the_range_is_wider_than_the_largest_float(lo, hi):
    assert not math.isfinite(hi - lo)
    edges = bin_edges(lo, hi, 50)
    assert np.all(np.isfinite(edges)) and np.all(np.diff(edges) >= 0) and (edges[0], edges[-1]) == (lo, hi)
    rng = np.random.default_rng(7)
    x = np.concatenate([[lo, hi, 0.0], rng.uniform(lo / 2, hi / 2, 997) * 2])
    y = rng.uniform(0, 1, x.size)
    grid = HeatmapAccumulator(GridBounds(lo, hi, 0.0, 1.0), 50)
    grid.add(x, y)
    assert grid.matrix.sum() == x.size  # every point in a cell
    half = GridBounds(lo / 2, hi / 2, 0.0, 1.0)  # np.histogram2d's own rule, on a range it can hold
    assert np.array_equal(grid.matrix, histogram2d_reference(x / 2, y, half, 50))


def test_ranges_numpy_can_hold_keep_numpy_s_own_edges():
    for lo, hi, n in [(0.0, 10.0, 50), (-7.25, 1e6, 13), (-8e307, 8e307, 50), (1.0, 1.0 + 2**-40, 3)]:
        assert np.array_equal(bin_edges(lo, hi, n), np.linspace(lo, hi, n + 1))


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_extreme_coordinates_are_binned_exactly_and_the_heatmap_passes_its_check(db_url, monkeypatch, instance, payload):
    sqlite = db_url.startswith("sqlite")
    create_source(db_url, PAYLOADS[payload][1] if sqlite else PAYLOADS[payload][0], unique_id=True)
    points = {"1": [(1e308, 0.0), (-1e308, 0.0)], "2": [(BIGGEST, -BIGGEST), (-BIGGEST, BIGGEST), (0.0, 0.0), (5e-324, 1.0)]}
    rows = [
        event(at(9, i), {"x": x, "y": y, "level": int(level)}, id=10 * int(level) + i)
        for level, pts in points.items() for i, (x, y) in enumerate(pts)
    ]
    write_source_events(db_url, rows)
    defs = build_defs(monkeypatch, db_url, HEATMAP_GRID_SIZE="10", HEATMAP_LEVELS="1,2")
    assert materialize_etl(defs, DAY.isoformat(), instance).success
    for level, pts in points.items():
        result = materialize_heatmap(defs, DAY.isoformat(), level, instance)
        assert result.success and result.get_asset_check_evaluations()[0].passed
        with get_engine(db_url).connect() as conn:
            row = conn.execute(sa.select(heatmaps).where(heatmaps.c.level == level)).mappings().one()
        matrix = np.asarray(json.loads(row["matrix"]) if isinstance(row["matrix"], str) else row["matrix"])
        assert matrix.sum() == len(pts) and row["out_of_bounds"] == 0
        # exact: np.histogram2d's rule on the halved points and bounds (halving is exact; numpy's
        # own edges over the full range overflow to NaN and bin nothing)
        bounds = GridBounds(row["x_min"], row["x_max"], row["y_min"], row["y_max"])
        half = GridBounds(*(v / 2 for v in bounds.as_list()))
        xs, ys = zip(*pts)
        expected = histogram2d_reference(np.asarray(xs) / 2, np.asarray(ys) / 2, half, 10)
        assert np.array_equal(matrix, expected)


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    """Every error message of the run's failure events, causes included."""
    messages = []
    for failed in result.all_events:
        error = getattr(failed.event_specific_data, "error", None)
        while error is not None:
            messages.append(error.message)
            error = error.cause
    return "\n".join(messages)


def test_a_heatmap_failing_its_consistency_rule_is_never_written(db_url, monkeypatch, instance):
    write_source_events(db_url, [event(at(9, i), {"x": x, "y": 1.0 + level, "level": level})
                                 for level in (1, 2) for i, x in enumerate((1e308, -1e308))])
    defs = build_defs(monkeypatch, db_url, HEATMAP_GRID_SIZE="10", HEATMAP_LEVELS="1,2")
    assert materialize_etl(defs, DAY.isoformat(), instance).success
    assert materialize_heatmap(defs, DAY.isoformat(), "1", instance).success
    with get_engine(db_url).connect() as conn:
        before = [tuple(r) for r in conn.execute(sa.select(heatmaps))]
    assert len(before) == 1

    # A binning that loses its points, as numpy's own edges over [-1e308, 1e308] (NaN and inf) did
    # on PostgreSQL before the fix: the computed matrix is all zeros.
    real = heatmap_increments.compute_heatmap

    def binning_that_loses_points(*args, **kwargs):
        result = real(*args, **kwargs)
        result.matrix[:] = 0
        return result

    monkeypatch.setattr(heatmap_increments, "compute_heatmap", binning_that_loses_points)
    for level in ("1", "2"):  # 1 has a (right) row already, 2 none
        key = dg.MultiPartitionKey({"date": DAY.isoformat(), "level": level})
        result = defs.resolve_job_def("heatmap_job").execute_in_process(partition_key=key, instance=instance, raise_on_error=False)
        assert not result.success
        message = failure_text(result)
        assert f"heatmap of level {level} on 2025-11-16 not written, it fails its consistency rule" in message
        assert "matrix sum 0 + 0 out of bounds != 2 position events the ETL recorded" in message and "stored row is unchanged" in message
        assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]  # wrong, not busy
    with get_engine(db_url).connect() as conn:
        after = [tuple(r) for r in conn.execute(sa.select(heatmaps))]
    assert after == before  # level 1: the earlier, right row, untouched; level 2: nothing written


# --- 4. lenient numbers ------------------------------------------------------------------------------


def number_rows(text_payload: bool) -> tuple[list[dict], dict[str, tuple]]:
    """Rows with numbers pd.to_numeric would refuse, or read its way; expected (fate, x, y, level)."""
    cases = [
        (("non_numeric_coordinate",), event(at(9, 1), {"x": "1_000", "y": 2}, id=1)),
        (("non_numeric_coordinate",), event(at(9, 2), {"x": "١٢", "y": 2}, id=2)),  # Arabic-Indic digits
        (("non_numeric_coordinate",), event(at(9, 3), {"x": 1, "y": "１２"}, id=3)),  # fullwidth digits
        (("invalid_score",), event(at(9, 4), {"score": "1_0"}, id=4, event_type="game_over")),
        (("clean", 0.0, 0.0, "2"), event(at(9, 5), {"x": "-0.0", "y": -0.0, "level": 2}, id=5)),
        (("clean", 0.0, 0.0, "1"), event(at(9, 6), '{"x": -0.0, "y": -0}', id=6)),
        (("clean", 1.0, 2.0, "1"), event(at(9, 7), {"x": 1, "y": 2, "level": "1.0"}, id=7)),
        (("clean", 1.0, 2.0, "1"), event(at(9, 8), {"x": 1, "y": 2, "level": 1.0}, id=8)),
        (("clean", 1.0, 2.0, "3"), event(at(9, 9), {"x": 1, "y": 2, "level": " 03 "}, id=9)),
        (("unknown_level",), event(at(9, 10), {"x": 1, "y": 2, "level": "2.5"}, id=10)),
        (("clean", 0.5, 5.0, "1"), event(at(9, 11), {"x": "+.5", "y": "5.", "level": 1}, id=11)),
        (("clean", 1000.0, -0.02, "1"), event(at(9, 12), {"x": " 1e3 ", "y": "-2E-2", "level": 1}, id=12)),
        (("clean", 1.0, 2.0, "1"), event(at(9, 13), {"x": 1, "y": 2, "note": "NaN and Infinity"}, id=13)),
    ]
    if text_payload:  # NaN and Infinity only a text column holds
        cases += [
            (("unparseable_payload",), event(at(9, 20), '{"x": 1, "y": 2, "speed": NaN}', id=20)),
            (("unparseable_payload",), event(at(9, 21), '{"x": 1, "y": 2, "meta": {"v": [-Infinity]}}', id=21)),
            (("non_finite_coordinate",), event(at(9, 22), '{"x": NaN, "y": 2}', id=22)),
            (("invalid_score",), event(at(9, 23), '{"score": Infinity}', id=23, event_type="game_over")),
        ]
    return [row for _, row in cases], {str(row["id"]): expected for expected, row in cases}


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("path", PATHS)
def test_numbers_are_read_as_pd_to_numeric_reads_them_on_both_paths(db_url, tmp_path, path, payload):
    sqlite = db_url.startswith("sqlite")
    create_source(db_url, PAYLOADS[payload][1] if sqlite else PAYLOADS[payload][0], unique_id=True)
    rows, expected = number_rows(text_payload=sqlite or payload == "text")
    write_source_events(db_url, rows)
    _, warehouse_url = load(path, db_url, tmp_path)
    assert fates(warehouse_url) == {event_id: e[0] for event_id, e in expected.items()}
    with get_engine(warehouse_url).connect() as conn:
        stored = {r.event_id: r for r in conn.execute(sa.select(game_events))}
    for event_id, (fate, *values) in expected.items():
        if fate == "clean":
            row = stored[event_id]
            assert (row.x, row.y, row.level) == tuple(values), event_id
            assert all(math.copysign(1.0, v) == 1.0 for v in (row.x, row.y) if v == 0), (event_id, row.x, row.y)
            if row.payload is not None:  # (NULL: nothing beside the typed members)
                json.loads(row.payload, parse_constant=lambda name: pytest.fail(f"{name} in stored payload {event_id}"))


# --- 5. a SQL_ASCII source database ------------------------------------------------------------------


@pytest.fixture
def sql_ascii_url():
    from heatmap_pipeline_tests.conftest import postgres_database

    with postgres_database("ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'") as url:
        yield url


@pytest.mark.postgres
def test_a_sql_ascii_source_is_refused_with_a_message_that_says_what_to_do(sql_ascii_url, monkeypatch, instance):
    # not get_engine, which refuses this database; as UTF8 text SQLAlchemy itself can connect
    plain = sa.create_engine(sql_ascii_url, connect_args={"options": "-c client_encoding=UTF8"})
    with plain.begin() as conn:  # a valid table and a valid row: the encoding alone is the problem
        conn.exec_driver_sql(
            'CREATE TABLE events (id bigint, user_id text, session_id text, event_type text, event_name text, '
            'event_category text, payload text, "timestamp" timestamptz, created_at timestamptz)'
        )
        conn.exec_driver_sql("INSERT INTO events VALUES (1, 'u', 's', 'move', 'move', 'c', '{\"x\": 1, \"y\": 2}', "
                             "'2025-11-16 10:00+00', '2025-11-16 10:00+00')")
    plain.dispose()
    defs = build_defs(monkeypatch, sql_ascii_url, DB_RETRY_DELAY_SECONDS="0")
    result = defs.resolve_job_def("etl_job").execute_in_process(
        partition_key=DAY.isoformat(), instance=instance, raise_on_error=False
    )
    assert not result.success
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]  # not retried
    text = failure_text(result)
    assert "has server_encoding SQL_ASCII" in text and "createdb -E UTF8" in text
    assert "cannot use a string pattern" not in text

"""Each asset materialized for a partition on SQLite and PostgreSQL, tables checked row by row."""

import datetime as dt
import json

import numpy as np
import sqlalchemy as sa

from heatmap_pipeline.core.binning import GridBounds
from heatmap_pipeline.warehouse.tables import game_events, heatmaps, leaderboard_aggregates, quarantined_events, session_stats
from heatmap_pipeline_tests.support import (
    build_defs,
    event,
    histogram2d_reference,
    materialize_etl,
    materialize_heatmap,
    old_readme_sample,
    table_rows,
    write_source_events,
)

DAY = "2025-11-16"
T = dt.datetime(2025, 11, 16, 8, 0)


def at(minutes: float) -> dt.datetime:
    return T + dt.timedelta(minutes=minutes)


def mixed_day() -> list[dict]:
    return [
        event(at(0), {"level": 1}, id=1, event_type="session_start", session_id="a", user_id="ann"),
        event(at(1), {"x": 10, "y": 20, "level": 1}, id=2, session_id="a", user_id="ann"),
        event(at(2), {"x": 30, "y": 40, "level": "2"}, id=3, session_id="a", user_id="ann"),
        event(at(3), {"x": 5, "y": 5, "level": 1}, id=4, event_type="death", session_id="a", user_id="ann"),
        event(at(4), {"score": 50, "level": 1}, id=5, event_type="score", session_id="a", user_id="ann"),
        event(at(9), {"final_score": 70}, id=6, event_type="game_over", session_id="a", user_id="ann"),
        event(at(5), {"x": 1, "y": 2}, id=7, session_id="b", user_id="bob"),  # no level -> "1"
        event(at(6), None, id=8, session_id="b", user_id="bob"),
        event(at(7), {"x": "far", "y": 2}, id=9, session_id="b", user_id="bob"),
        event(at(8), {"x": 1, "y": 2, "level": 42}, id=10, session_id="b", user_id="bob"),
        event(dt.datetime(2025, 11, 17, 0, 0), {"x": 1, "y": 1}, id=11),  # next day: not extracted today
        event(dt.datetime(2025, 11, 15, 23, 59), {"x": 1, "y": 1}, id=12),  # previous day
    ]


def test_etl_partition_writes_typed_events_quarantine_and_sessions(db_url, monkeypatch):
    write_source_events(db_url, mixed_day())
    defs = build_defs(monkeypatch, db_url)
    result = materialize_etl(defs, DAY)
    assert result.success

    events = table_rows(db_url, game_events, order_by=[game_events.c.event_id])
    assert sorted(int(e["event_id"]) for e in events) == [1, 2, 3, 4, 5, 6, 7]
    by_id = {int(e["event_id"]): e for e in events}
    assert (by_id[2]["x"], by_id[2]["y"], by_id[2]["level"]) == (10.0, 20.0, "1")
    assert by_id[3]["level"] == "2"
    assert by_id[7]["level"] == "1"  # HEATMAP_DEFAULT_LEVEL
    assert by_id[1]["level"] == "1" and by_id[1]["x"] is None
    assert by_id[6]["final_score"] == 70.0 and by_id[5]["score"] == 50.0
    assert all(e["event_date"] == dt.date(2025, 11, 16) for e in events)

    quarantined = table_rows(db_url, quarantined_events, order_by=[quarantined_events.c.source_event_id])
    assert [(q["source_event_id"], q["reason"]) for q in quarantined] == [
        ("10", "unknown_level"),
        ("8", "null_payload"),
        ("9", "non_numeric_coordinate"),
    ]
    assert json.loads(quarantined[2]["raw_row"])["id"] == 9

    metadata = result.asset_materializations_for_node("game_events")[0].metadata
    assert metadata["rows_extracted"].value == 10
    assert metadata["dagster/row_count"].value == 7
    assert metadata["rows_quarantined"].value == 3
    assert metadata["quarantine_reasons"].value == {"non_numeric_coordinate": 1, "null_payload": 1, "unknown_level": 1}

    sessions = {s["session_id"]: s for s in table_rows(db_url, session_stats)}
    assert set(sessions) == {"a", "b"}
    a = sessions["a"]
    assert (a["user_id"], a["event_count"], a["deaths"], a["max_score"], a["final_score"]) == ("ann", 6, 1, 70.0, 70.0)
    assert a["duration_seconds"] == 540.0 and a["levels_played"] == "1,2"
    assert sessions["b"]["event_count"] == 1
    leaderboard = {r["session_id"]: (r["event_count"], r["score_max"]) for r in table_rows(db_url, leaderboard_aggregates)}
    assert leaderboard == {"a": (6, 70.0), "b": (1, None)}


def test_old_readme_sample_gives_level_1_sum_30_in_old_orientation(db_url, monkeypatch):
    rows = old_readme_sample()
    write_source_events(db_url, rows)
    defs = build_defs(monkeypatch, db_url)
    assert materialize_etl(defs, DAY).success
    result = materialize_heatmap(defs, DAY, "1")
    assert result.success
    stored = table_rows(db_url, heatmaps)
    assert len(stored) == 1
    row = stored[0]
    assert (row["level"], row["date"], row["grid_size"]) == ("1", dt.date(2025, 11, 16), "50")
    matrix = np.array(row["matrix"])
    assert matrix.shape == (50, 50) and matrix.sum() == 30.0 and row["total"] == 30.0
    xs = [json.loads(r["payload"])["x"] for r in rows]
    ys = [json.loads(r["payload"])["y"] for r in rows]
    bounds = GridBounds(row["x_min"], row["x_max"], row["y_min"], row["y_max"])
    assert bounds == GridBounds(0.0, 9.0, 0.0, 2.0) and row["bounds_source"] == "auto"
    assert np.array_equal(matrix, histogram2d_reference(xs, ys, bounds, 50))  # rows = y bins
    assert matrix[49, 0] == 1.0 and matrix[0, 49] == 1.0  # (x=0, y=2) top-left row; (x=9, y=0) bottom row
    metadata = result.asset_materializations_for_node("level_heatmaps")[0].metadata
    assert metadata["sum"].value == 30.0 and metadata["max"].value == 1.0
    assert metadata["nonempty_cells"].value == 30
    assert metadata["preview"].value.startswith("![heatmap level 1 2025-11-16](data:image/png;base64,")


def test_level_without_events_stores_an_empty_matrix(db_url, monkeypatch):
    write_source_events(db_url, old_readme_sample())
    defs = build_defs(monkeypatch, db_url)
    assert materialize_etl(defs, DAY).success
    assert materialize_heatmap(defs, DAY, "2").success
    (row,) = table_rows(db_url, heatmaps)
    assert row["level"] == "2" and row["total"] == 0.0 and np.array(row["matrix"]).shape == (50, 50)


def test_fixed_bounds_keep_days_comparable_and_count_outside_points(db_url, monkeypatch):
    rows = [event(at(i), {"x": x, "y": 5, "level": 1}) for i, x in enumerate([0, 5, 10, 10.5, -3])]
    write_source_events(db_url, rows)
    defs = build_defs(monkeypatch, db_url, HEATMAP_BOUNDS='{"1": [0, 10, 0, 10]}', HEATMAP_GRID_SIZE="10")
    assert materialize_etl(defs, DAY).success
    result = materialize_heatmap(defs, DAY, "1")
    (row,) = table_rows(db_url, heatmaps)
    assert (row["x_min"], row["x_max"], row["bounds_source"], row["grid_size"]) == (0.0, 10.0, "fixed", "10")
    matrix = np.array(row["matrix"])
    assert matrix.sum() == 3 and matrix[5, 9] == 1  # x=10 on the upper bound: last column
    assert row["out_of_bounds"] == 2
    assert result.asset_materializations_for_node("level_heatmaps")[0].metadata["out_of_bounds"].value == 2


def test_rematerializing_partitions_leaves_identical_tables(db_url, monkeypatch):
    write_source_events(db_url, mixed_day() + old_readme_sample())
    defs = build_defs(monkeypatch, db_url)

    def snapshot():
        tables = {}
        for table, key in [
            (game_events, [game_events.c.event_id]),
            (quarantined_events, [quarantined_events.c.source_event_id]),
            (session_stats, [session_stats.c.session_id]),
            (leaderboard_aggregates, [leaderboard_aggregates.c.session_id]),
            (heatmaps, [heatmaps.c.level]),
        ]:
            volatile = {"id", "quarantined_at", "updated_at"}
            tables[table.name] = [
                {k: v for k, v in row.items() if k not in volatile} for row in table_rows(db_url, table, order_by=key)
            ]
        return tables

    for _ in range(2):
        assert materialize_etl(defs, DAY).success
        assert materialize_heatmap(defs, DAY, "1").success
        assert materialize_heatmap(defs, DAY, "2").success
    first = snapshot()
    assert materialize_etl(defs, DAY).success
    assert materialize_heatmap(defs, DAY, "1").success
    assert snapshot() == first
    assert len(first["game_events"]) == 37 and len(first["heatmaps"]) == 2
    assert len(first["leaderboard_aggregates"]) == len({r["session_id"] for r in first["leaderboard_aggregates"]})


def test_leaderboard_sums_a_session_across_midnight(db_url, monkeypatch):
    rows = [
        event(dt.datetime(2025, 11, 16, 23, 58), {"score": 10}, event_type="score", session_id="night"),
        event(dt.datetime(2025, 11, 17, 0, 2), {"final_score": 25}, event_type="game_over", session_id="night"),
    ]
    write_source_events(db_url, rows)
    defs = build_defs(monkeypatch, db_url)
    assert materialize_etl(defs, "2025-11-16").success
    assert materialize_etl(defs, "2025-11-17").success
    assert materialize_etl(defs, "2025-11-16").success  # recomputing an earlier day keeps the full total
    (row,) = table_rows(db_url, leaderboard_aggregates)
    assert (row["session_id"], row["event_count"], row["score_max"]) == ("night", 2, 25.0)
    per_day = {(r["event_date"].isoformat(), r["event_count"]) for r in table_rows(db_url, session_stats)}
    assert per_day == {("2025-11-16", 1), ("2025-11-17", 1)}


def test_etl_backfill_range_runs_as_one_run(sqlite_url, monkeypatch, instance):
    rows = [event(dt.datetime(2025, 11, d, 12), {"x": d, "y": d, "level": 1}) for d in (14, 15, 16)]
    write_source_events(sqlite_url, rows)
    defs = build_defs(monkeypatch, sqlite_url)
    job = defs.resolve_job_def("etl_job")
    result = job.execute_in_process(
        instance=instance,
        tags={"dagster/asset_partition_range_start": "2025-11-14", "dagster/asset_partition_range_end": "2025-11-16"},
    )
    assert result.success
    dates = sorted(r["event_date"].isoformat() for r in table_rows(sqlite_url, game_events))
    assert dates == ["2025-11-14", "2025-11-15", "2025-11-16"]
    assert result.asset_materializations_for_node("game_events")[0].metadata["rows_extracted"].value == 3


def test_asyncpg_style_url_of_the_old_app_works(postgres_url, monkeypatch):
    old_style = postgres_url.replace("postgresql+psycopg://", "postgresql+asyncpg://")
    write_source_events(postgres_url, old_readme_sample())
    defs = build_defs(monkeypatch, old_style)
    assert materialize_etl(defs, DAY).success
    assert materialize_heatmap(defs, DAY, "1").success
    assert table_rows(postgres_url, heatmaps)[0]["total"] == 30.0


def test_jsonb_and_text_payload_columns_are_read(postgres_url, monkeypatch):
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "CREATE TABLE events (id bigint, user_id text, session_id text, event_type text, event_name text, "
            "event_category text, payload jsonb, timestamp timestamptz, created_at timestamptz)"
        ))
        conn.execute(sa.text(
            "INSERT INTO events VALUES (1, 'u', 's', 'move', 'move', 'm', '{\"x\": 1, \"y\": 2}', '2025-11-16 10:00+00', now()),"
            " (2, 'u', 's', 'move', 'move', 'm', '[1]', '2025-11-16 11:00+02', now())"
        ))
    engine.dispose()
    defs = build_defs(monkeypatch, postgres_url)
    assert materialize_etl(defs, DAY).success
    (clean,) = table_rows(postgres_url, game_events)
    assert (clean["x"], clean["y"], clean["ts"]) == (1.0, 2.0, dt.datetime(2025, 11, 16, 10, 0))
    assert [q["reason"] for q in table_rows(postgres_url, quarantined_events)] == ["payload_not_object"]


def test_sqlite_text_timestamp_without_a_date_is_quarantined_under_its_arrival_day(tmp_path, monkeypatch):
    source = f"sqlite:///{tmp_path / 'source.sqlite'}"
    rows = [
        event("garbage", {"x": 1, "y": 2}, id=1, created_at=dt.datetime(2025, 11, 16, 9)),
        event("garbage", {"x": 1, "y": 2}, id=2, created_at=dt.datetime(2025, 11, 17, 9)),  # another day
        event(at(1), {"x": 1, "y": 2}, id=3),
    ]
    write_source_events(source, rows)
    for warehouse in (source, f"sqlite:///{tmp_path / 'warehouse.sqlite'}"):  # SQL path, then Python path
        defs = build_defs(monkeypatch, source, WAREHOUSE_DATABASE_URL=warehouse)
        result = materialize_etl(defs, DAY)
        assert result.success
        quarantined = table_rows(warehouse, quarantined_events)
        assert [(q["source_event_id"], q["reason"]) for q in quarantined] == [("1", "unparseable_timestamp")]
        assert [e["event_id"] for e in table_rows(warehouse, game_events)] == ["3"]
        assert result.asset_materializations_for_node("game_events")[0].metadata["rows_extracted"].value == 2


def test_event_stamped_on_a_far_future_day_is_quarantined_under_its_arrival_day(db_url, tmp_path, monkeypatch):
    arrived = dt.datetime(2025, 11, 16, 9, 0)
    rows = [
        event(dt.datetime(2099, 1, 1, 12), {"x": 1, "y": 2}, id=1, created_at=arrived),  # far future
        event(dt.datetime(2025, 11, 17, 0, 5), {"x": 1, "y": 2}, id=2, created_at=dt.datetime(2025, 11, 16, 23, 58)),
        event(at(1), {"x": 1, "y": 2}, id=3, created_at=at(1)),
    ]
    write_source_events(db_url, rows)
    warehouses = [db_url] + ([f"sqlite:///{tmp_path / 'warehouse.sqlite'}"] if db_url.startswith("sqlite") else [])
    for warehouse in warehouses:  # same database (SQL path), then another one (Python path)
        defs = build_defs(monkeypatch, db_url, WAREHOUSE_DATABASE_URL=warehouse)
        assert materialize_etl(defs, DAY).success
        assert [(q["source_event_id"], q["reason"]) for q in table_rows(warehouse, quarantined_events)] == [
            ("1", "future_timestamp")
        ]
        assert [e["event_id"] for e in table_rows(warehouse, game_events)] == ["3"]
        # 7 minutes of clock skew across midnight is within tolerance: the event belongs to the 17th
        assert materialize_etl(defs, "2025-11-17").success
        assert sorted(e["event_id"] for e in table_rows(warehouse, game_events)) == ["2", "3"]

"""Day partitions (PostgreSQL) and the position ranges the ETL records for the heatmaps.

A day is loaded into a fresh table and swapped in; a rerun replaces it; rows written straight
into ``game_events`` are replaced too; an earlier version's plain table is migrated; the swap
never makes readers queue behind it for long, and gives up cleanly. On both databases the
recorded ``position_stats`` equal the day's real ranges, and a heatmap binned with them equals
``np.histogram2d`` on the day's own range.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import numpy as np
import pytest
import sqlalchemy as sa

from heatmap_pipeline.core.binning import auto_bounds
from heatmap_pipeline.core.cleaning import CleaningRules
from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.migrations import ensure_warehouse_schema
from heatmap_pipeline.warehouse.tables import game_events, position_stats
from heatmap_pipeline.warehouse.etl import pg_partitions as day_partitions
from heatmap_pipeline.warehouse.etl import load_partition
from heatmap_pipeline.warehouse.etl.python_path import load_partition_python
from heatmap_pipeline.warehouse.heatmaps import compute_heatmap
from heatmap_pipeline_tests.support import event, histogram2d_reference, warehouse_snapshot, write_source_events

DAY = dt.date(2025, 11, 16)
NOW = dt.datetime(2025, 11, 17)
RULES = CleaningRules(levels=frozenset({"1", "2"}), default_level="1", position_event_types=frozenset({"move"}))


def at(minute: int) -> dt.datetime:
    return dt.datetime(2025, 11, 16, 10) + dt.timedelta(minutes=minute)


def day_rows(n: int = 40) -> list[dict]:
    rng = np.random.default_rng(3)
    rows = [event(at(i), {"x": float(rng.uniform(-5, 50)), "y": float(rng.uniform(0, 9)), "level": 1 + i % 2}) for i in range(n)]
    # rows only the Python cleaner takes (SQL leaves them to it): their positions count too
    rows.append(event(at(n), {"x": " 99.5 ", "y": "-3", "level": 2}))
    rows.append(event(at(n + 1), {"x": 1.5e300, "y": 4, "level": 1}))
    rows.append(event(at(n + 2), {"score": 7, "level": 1}, event_type="score"))  # not a position
    return rows


def source(url: str, rows: list[dict]) -> sa.Engine:
    """Source events in the warehouse database, and the warehouse tables."""
    engine = write_source_events(url, rows)
    ensure_warehouse_schema(engine)
    return engine


def partitions(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT c.relname || ' ' || pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'game_events'::regclass ORDER BY 1"
            )
        ).scalars().all()


def day_tables(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT relname FROM pg_class WHERE relname LIKE 'game_events_20251116%' AND relkind = 'r'")
        ).scalars().all()


# --- PostgreSQL day partitions ---------------------------------------------------------------


@pytest.mark.postgres
def test_a_day_is_its_own_partition_and_a_rerun_swaps_it_for_a_new_one(postgres_url):
    engine = source(postgres_url, day_rows())
    first = load_partition(engine, engine, DAY, RULES, NOW)
    [day_partition] = [p for p in partitions(engine) if "2025-11-16" in p]
    snapshot = warehouse_snapshot(postgres_url)
    second = load_partition(engine, engine, DAY, RULES, NOW)
    assert (first.clean, first.quarantined) == (second.clean, second.quarantined) == (43, 0)
    [new_partition] = [p for p in partitions(engine) if "2025-11-16" in p]
    assert new_partition != day_partition and new_partition.endswith("FOR VALUES IN ('2025-11-16')")
    assert len(day_tables(engine)) == 1  # the old partition is dropped, no table left behind
    assert warehouse_snapshot(postgres_url)["game_events"] == snapshot["game_events"]


@pytest.mark.postgres
def test_a_full_load_leaves_its_partition_vacuumed_for_index_only_reads(postgres_url):
    """The heatmaps run right after the ETL: every page holding the new partition's rows is
    all-visible already (VACUUM after the swap committed), so their index reads need no heap visit.
    (Pages without a row may not be: two connections filling the table at once extend it by
    several pages at a time; such pages hold no row an index points to.)"""
    engine = source(postgres_url, day_rows(400))
    load_partition(engine, engine, DAY, RULES, NOW)
    with engine.connect() as conn:
        name = day_partitions.current_partition(conn, DAY)
        vacuumed, visible = conn.execute(
            sa.text(
                "SELECT s.last_vacuum IS NOT NULL, c.relallvisible FROM pg_class c "
                "JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.relname = :name"
            ),
            {"name": name},
        ).one()
        conn.execute(sa.text("SET enable_seqscan = off"))  # so small a table: the planner would read the heap
        conn.execute(sa.text("SET enable_bitmapscan = off"))
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                sa.text(
                    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT count(x) FROM game_events "
                    "WHERE event_date = :d AND level = '1'"
                ),
                {"d": DAY},
            )
        )
    assert vacuumed and visible >= 1
    assert "Index Only Scan" in plan and "Heap Fetches: 0" in plan, plan


@pytest.mark.postgres
def test_rows_written_straight_into_game_events_are_replaced_by_the_next_load(postgres_url):
    engine = source(postgres_url, day_rows(4))
    with engine.begin() as conn:  # by hand, before any load: the day has no partition yet
        conn.execute(game_events.insert().values(event_date=DAY, event_id="by-hand", ts=at(0)))
    assert day_partitions.DEFAULT_PARTITION + " DEFAULT" in partitions(engine)
    load_partition(engine, engine, DAY, RULES, NOW)
    with engine.connect() as conn:
        ids = conn.execute(sa.select(game_events.c.event_id).where(game_events.c.event_date == DAY)).scalars().all()
    assert "by-hand" not in ids and len(ids) == 7


@pytest.mark.postgres
def test_an_unpartitioned_game_events_of_an_earlier_version_is_migrated_with_its_rows(postgres_url):
    engine = get_engine(postgres_url)
    old = sa.MetaData()
    plain = sa.Table("game_events", old, *(sa.Column(c.name, c.type, primary_key=c.primary_key) for c in game_events.columns))
    sa.Index("ix_game_events_session", plain.c.session_id)
    old.create_all(engine)
    rows = [
        {"event_date": day, "event_id": f"e{i}", "ts": dt.datetime.combine(day, dt.time(i)), "level": "1", "x": i, "y": i}
        for i, day in enumerate([DAY, DAY, DAY + dt.timedelta(days=1)])
    ]
    with engine.begin() as conn:
        conn.execute(plain.insert(), rows)
    ensure_warehouse_schema(engine)
    ensure_warehouse_schema(engine)  # idempotent
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT relkind FROM pg_class WHERE relname = 'game_events'")).scalar() == "p"
        kept = conn.execute(sa.select(game_events.c.event_id, game_events.c.event_date).order_by(game_events.c.event_id)).all()
        indexes = conn.execute(sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'game_events'")).scalars().all()
    assert kept == [(r["event_id"], r["event_date"]) for r in rows]
    assert sorted(p.split(" ", 1)[1] for p in partitions(engine)) == [
        "DEFAULT", "FOR VALUES IN ('2025-11-16')", "FOR VALUES IN ('2025-11-17')"
    ]
    assert "ix_game_events_session" not in indexes  # the leaderboard reads session_stats now


@pytest.mark.postgres
def test_the_swap_steps_back_for_readers_while_a_long_transaction_holds_the_table(postgres_url, monkeypatch):
    monkeypatch.setattr(day_partitions, "SWAP_LOCK_WAIT", dt.timedelta(milliseconds=200))
    engine = source(postgres_url, day_rows(4))
    load_partition(engine, engine, DAY, RULES, NOW)
    write_source_events(postgres_url, [event(at(30), {"x": 1, "y": 1})])
    long_reader = sa.create_engine(postgres_url).connect()
    tx = long_reader.begin()
    long_reader.execute(sa.select(sa.func.count()).select_from(game_events)).scalar_one()  # holds ACCESS SHARE
    done = {}
    loader = threading.Thread(target=lambda: done.setdefault("result", load_partition(engine, engine, DAY, RULES, NOW)))
    loader.start()
    try:
        time.sleep(1.0)  # the load is waiting for the table by now
        assert loader.is_alive()
        started = time.monotonic()
        other = sa.create_engine(postgres_url)
        with other.connect() as conn:  # a new reader is not stuck behind the waiting swap
            assert conn.execute(sa.select(sa.func.count()).select_from(game_events)).scalar_one() == 7
        other.dispose()
        assert time.monotonic() - started < 1.5
    finally:
        tx.rollback()
        long_reader.close()
    loader.join(timeout=30)
    assert done["result"].clean == 8


@pytest.mark.postgres
def test_a_swap_that_cannot_get_the_table_gives_up_and_leaves_the_old_partition(postgres_url, monkeypatch):
    monkeypatch.setattr(day_partitions, "SWAP_LOCK_WAIT", dt.timedelta(milliseconds=100))
    monkeypatch.setattr(day_partitions, "SWAP_LOCK_PATIENCE", dt.timedelta(seconds=1))
    engine = source(postgres_url, day_rows(4))
    load_partition(engine, engine, DAY, RULES, NOW)
    before = warehouse_snapshot(postgres_url)
    write_source_events(postgres_url, [event(at(30), {"x": 1, "y": 1})])
    holder = sa.create_engine(postgres_url).connect()
    tx = holder.begin()
    holder.execute(sa.select(sa.func.count()).select_from(game_events)).scalar_one()
    try:
        with pytest.raises(day_partitions.SwapLockTimeout, match="held game_events for more than 0:00:01"):
            load_partition(engine, engine, DAY, RULES, NOW)
    finally:
        tx.rollback()
        holder.close()
    assert warehouse_snapshot(postgres_url) == before
    assert len(day_tables(engine)) == 1  # the loaded table went with the rollback


def _game_events_locks(conn: sa.Connection, pid_condition: str = "pid = pg_backend_pid()") -> list[tuple]:
    return conn.execute(
        sa.text(
            f"SELECT pid, mode, granted FROM pg_locks WHERE locktype = 'relation' "
            f"AND relation = 'game_events'::regclass AND {pid_condition}"
        )
    ).all()


@pytest.mark.postgres
def test_staging_a_day_takes_no_lock_on_game_events(postgres_url):
    """A lock taken while staging would be upgraded by the swap: two days, two holders, a deadlock."""
    engine = source(postgres_url, day_rows(4))
    with engine.begin() as conn:
        stage = day_partitions.create_stage(conn, DAY)
        assert _game_events_locks(conn) == []
        day_partitions.swap_in(conn, DAY, stage)  # and the table it built is one ATTACH accepts
    assert partitions(engine) == [f"{stage.name} FOR VALUES IN ('2025-11-16')", "game_events_default DEFAULT"]


@pytest.mark.postgres
def test_two_days_loaded_at_once_never_deadlock(postgres_url, monkeypatch):
    """Both runs stage their day while a reader holds game_events, so both wait at the swap together."""
    monkeypatch.setattr(day_partitions, "SWAP_LOCK_WAIT", dt.timedelta(milliseconds=100))
    # before the fix the two waited on each other until this patience ran out (10 minutes by default)
    monkeypatch.setattr(day_partitions, "SWAP_LOCK_PATIENCE", dt.timedelta(seconds=5))
    other_day = DAY + dt.timedelta(days=1)
    engine = source(postgres_url, day_rows(6) + [event(dt.datetime(2025, 11, 17, 9, i), {"x": i, "y": 1}) for i in range(5)])
    reader = sa.create_engine(postgres_url).connect()
    tx = reader.begin()
    reader.execute(sa.select(sa.func.count()).select_from(game_events)).scalar_one()  # holds ACCESS SHARE
    results, errors = {}, []

    def run(day):
        try:
            results[day] = load_partition(engine, engine, day, RULES, NOW)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(day,)) for day in (DAY, other_day)]
    try:
        for thread in threads:
            thread.start()
        waiting: set[int] = set()
        deadline = time.monotonic() + 30
        while len(waiting) < 2:  # both runs have loaded their day and ask for the table
            assert time.monotonic() < deadline and not errors, errors
            waiting |= {pid for pid, mode, granted in _game_events_locks(reader, "NOT granted") if mode == "AccessExclusiveLock"}
            time.sleep(0.01)
    finally:
        tx.rollback()
        reader.close()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and results[DAY].clean == 9 and results[other_day].clean == 5
    assert len(partitions(engine)) == 3


# --- position_stats, both databases ----------------------------------------------------------


def recorded_ranges(engine: sa.Engine) -> dict:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(position_stats).where(position_stats.c.event_date == DAY)).mappings().all()
    return {r["level"]: (r["positions"], r["x_min"], r["x_max"], r["y_min"], r["y_max"]) for r in rows}


def real_ranges(engine: sa.Engine) -> dict:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                game_events.c.level,
                sa.func.count(),
                sa.func.min(game_events.c.x),
                sa.func.max(game_events.c.x),
                sa.func.min(game_events.c.y),
                sa.func.max(game_events.c.y),
            )
            .where(game_events.c.event_date == DAY, game_events.c.x.is_not(None), game_events.c.y.is_not(None))
            .group_by(game_events.c.level)
        ).all()
    return {level: tuple(rest) for level, *rest in rows}


@pytest.mark.parametrize("path", ["sql", "python"])
def test_the_etl_records_the_day_s_position_ranges_per_level(db_url, path):
    engine = source(db_url, day_rows())
    load = load_partition if path == "sql" else load_partition_python
    result = load(engine, engine, DAY, RULES, NOW)
    if path == "sql":  # ranges from SQL's GROUP BY merged with those of the rows it handed to Python
        assert result.method.startswith("sql") and 0 < result.residue < result.extracted
    else:  # ranges from the cleaned rows alone
        assert result.method.startswith("python") and result.residue == 0
    recorded = recorded_ranges(engine)
    assert recorded == real_ranges(engine)
    assert recorded["2"][2] == 99.5  # a position only the Python cleaner took is in the range
    assert sum(r[0] for r in recorded.values()) == 42


def test_a_heatmap_binned_with_the_recorded_ranges_equals_histogram2d_on_the_day_s_own_range(db_url):
    engine = source(db_url, day_rows())
    load_partition(engine, engine, DAY, RULES, NOW)
    with engine.connect() as conn:
        xy = conn.execute(
            sa.select(game_events.c.x, game_events.c.y).where(
                game_events.c.event_date == DAY, game_events.c.level == "1", game_events.c.x.is_not(None)
            )
        ).all()
    x, y = np.array([r[0] for r in xy]), np.array([r[1] for r in xy])
    result = compute_heatmap(engine, DAY, "1", 10)
    assert result.bounds == auto_bounds(x.min(), x.max(), y.min(), y.max())
    assert np.array_equal(result.matrix, histogram2d_reference(x, y, result.bounds, 10))
    assert (result.points, result.out_of_bounds) == (len(x), 0)


def test_a_level_without_positions_on_a_recorded_day_gives_an_empty_heatmap(db_url):
    engine = source(db_url, day_rows())
    load_partition(engine, engine, DAY, RULES, NOW)
    assert recorded_ranges(engine) and "7" not in recorded_ranges(engine)  # the day is recorded, level 7 is not in it
    result = compute_heatmap(engine, DAY, "7", 10)
    assert (result.points, result.bounds, float(result.matrix.sum())) == (0, None, 0.0)

"""Incremental ticks give exactly the tables of one full load of the same source rows.

Rows arrive between ticks: every kind of good and bad row the cleaner knows (``source_day`` of the
SQL path's test), rows committed late inside the overlap, later duplicates of ids already loaded, a
row that displaces an already kept row of its id, sessions that span ticks. After the ticks every
warehouse table the ETL writes is compared, row by row, with a fresh warehouse loaded once in full -
on SQLite and PostgreSQL, on the same-database SQL path and the two-database Python path.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt

import dagster as dg
import pytest
import sqlalchemy as sa

from heatmap_pipeline.orchestration import INCREMENTAL, LOAD_MODE_TAG
from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.etl import load_partition
from heatmap_pipeline.warehouse.migrations import ensure_warehouse_schema
from heatmap_pipeline.warehouse.sessions import replace_session_partition, update_session_partition
from heatmap_pipeline.warehouse.tables import (
    etl_watermarks,
    game_events,
    leaderboard_aggregates,
    position_stats,
    quarantined_events,
    session_stats,
)
from heatmap_pipeline_tests.conftest import postgres_database
from heatmap_pipeline_tests.support import build_defs, event, instance_of, write_source_events
from heatmap_pipeline_tests.test_etl_sql_path import DAY, NOW, RULES, at, create_source, source_day

OVERLAP = dt.timedelta(minutes=5)
TICKS = [at(10, 0), at(10, 20), at(10, 40), at(11, 0), dt.datetime(9999, 1, 1)]  # by created_at


def _arrival(row: dict) -> dt.datetime | None:
    return row["created_at"] if isinstance(row["created_at"], dt.datetime) else None


def arrivals_by_tick(rows: list[dict], duplicates: bool = True) -> list[list[dict]]:
    """The rows each tick finds newly inserted: by created_at, a few committed late (inserted after
    the tick their created_at belongs to, within the overlap), later duplicates and a displacing
    row of ids loaded before, and one session's events in every tick."""
    batches: list[list[dict]] = [[] for _ in TICKS]
    for row in rows:
        arrival = _arrival(row)
        # no usable arrival time (NULL, text, 1970, infinity): there from the start, as a full load needs
        index = 0 if arrival is None or arrival.year < 2025 else next(i for i, t in enumerate(TICKS) if arrival < t)
        batches[index].append(row)
    for i in range(1, len(TICKS) - 1):  # committed late: inserted after the tick that should have seen them
        late = [r for r in batches[i] if TICKS[i] - dt.timedelta(minutes=2) <= _arrival(r) < TICKS[i]][:3]
        assert late, f"no row just before tick {i}"
        for row in late:
            batches[i].remove(row)
            batches[i + 1].append(row)
    if duplicates:
        ids = [r for r in batches[1] if isinstance(r["id"], int)]
        recent = [r for r in ids if TICKS[1] - dt.timedelta(minutes=4) <= _arrival(r)]  # inside the next tick's overlap
        kept = [ids[0], recent[0]]
        batches[2].append(event(at(10, 30), {"x": 9, "y": 9, "level": 1}, id=kept[0]["id"], created_at=at(10, 30)))  # duplicate_id
        # an earlier valid row of an id already kept, committed late inside the overlap: it becomes the kept one
        displacing = _arrival(kept[1]) - dt.timedelta(microseconds=1)
        batches[2].append(event(displacing, {"x": -50, "y": 77, "level": 1}, id=kept[1]["id"], created_at=displacing, session_id="sZ"))
    for i, tick in enumerate(TICKS[:-1]):  # one session across every tick
        moment = tick - dt.timedelta(minutes=10)
        kind = "death" if i == 1 else "move"  # deaths, a smaller user id and a better score arrive later
        payload = {"x": i, "y": -i, "level": 2 + i % 2, "score": 10 * i, "final_score": 15 * i if i == 2 else None}
        batches[i].append(event(moment, payload, id=9000 + i, session_id="sA", user_id=f"u{9 - i}", event_type=kind, created_at=moment))
    return batches


def warehouse_tables(engine: sa.Engine) -> dict[str, list[tuple]]:
    """Every table the ETL writes, comparable between loads (no quarantine ids, no times of the run)."""
    with engine.connect() as conn:
        def rows(query):
            return sorted((tuple(r) for r in conn.execute(query)), key=repr)

        return {
            "game_events": rows(sa.select(game_events)),
            "quarantined_events": rows(
                sa.select(*(c for c in quarantined_events.c if c.name not in ("id", "quarantined_at")))
            ),
            "position_stats": rows(sa.select(position_stats)),
            "session_stats": rows(sa.select(session_stats)),
            "leaderboard_aggregates": rows(sa.select(*(c for c in leaderboard_aggregates.c if c.name != "updated_at"))),
        }


def _new_source(url: str, unique_id: bool = False) -> sa.Engine:
    engine = get_engine(url)
    create_source(url, "TEXT" if engine.dialect.name == "sqlite" else "text", unique_id=unique_id)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE INDEX ix_events_created_at ON events (created_at)"))
    return engine


def _insert(engine: sa.Engine, rows: list[dict]) -> None:
    write_source_events(engine.url.render_as_string(hide_password=False), rows)


def _load(source, warehouse, *, tick: bool):
    result = load_partition(source, warehouse, DAY, RULES, NOW, 1000, incremental_tick=tick, overlap=OVERLAP)
    assert result.reconciled
    (update_session_partition if tick else replace_session_partition)(warehouse, DAY, NOW)
    return result


@contextlib.contextmanager
def _databases(dialect: str, tmp_path, count: int):
    """``count`` fresh database URLs of one dialect."""
    if dialect == "sqlite":
        yield [f"sqlite:///{tmp_path / f'db{i}.sqlite'}" for i in range(count)]
        return
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(postgres_database()) for _ in range(count)]


@pytest.mark.parametrize("dialect", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
@pytest.mark.parametrize("path", ["same-database", "two-databases"])
@pytest.mark.parametrize("ids", ["duplicate-ids", "primary-key"])
def test_incremental_ticks_equal_one_full_load(dialect, path, ids, tmp_path):
    """With a primary key on events.id (the old schema), a tick looks up only the rows a load can have read."""
    unique_id = ids == "primary-key"
    with _databases(dialect, tmp_path, 3 if path == "two-databases" else 2) as urls:
        source = _new_source(urls[0], unique_id)
        warehouse = get_engine(urls[1]) if path == "two-databases" else source
        full_url = urls[-1]
        ensure_warehouse_schema(warehouse)
        rows = source_day(with_duplicates=not unique_id, sqlite=dialect == "sqlite")
        batches = arrivals_by_tick(rows, duplicates=not unique_id)
        results = []
        for batch in batches:
            _insert(source, batch)
            results.append(_load(source, warehouse, tick=True))
        assert [r.load_mode for r in results] == ["full"] + ["incremental"] * (len(TICKS) - 1)
        assert "no watermark" in results[0].full_reason
        assert all(r.extracted < len(rows) // 2 for r in results[1:]), [r.extracted for r in results]
        expected_method = "sql" if path == "same-database" else "python"
        assert results[0].method.startswith(expected_method)
        # a tick on PostgreSQL with the source in the warehouse judges its rows with the full load's SQL
        sql_tick = path == "same-database" and dialect == "postgres"
        assert {r.method for r in results[1:]} == {"incremental (sql+python-residue)" if sql_tick else "incremental (python)"}

        # the same source rows, loaded once in full into a fresh warehouse
        full_source = _new_source(full_url, unique_id)
        _insert(full_source, [row for batch in batches for row in batch])
        ensure_warehouse_schema(full_source)
        _load(full_source, full_source, tick=False)

        ticked, full = warehouse_tables(warehouse), warehouse_tables(full_source)
        with warehouse.connect() as conn:  # the day's counts the ticks kept are the stored ones
            mark = conn.execute(sa.select(etl_watermarks)).mappings().one()
        reasons = collections.Counter(row[2] for row in full["quarantined_events"] if row[0] == DAY)
        assert (mark["clean_rows"], mark["quarantined_rows"], mark["quarantine_reasons"]) == (
            sum(1 for row in full["game_events"] if row[0] == DAY), sum(reasons.values()), dict(sorted(reasons.items())))
        for table in full:
            assert ticked[table] == full[table], table
        assert len(full["game_events"]) > 30 and len(full["quarantined_events"]) > 30
        assert any(r[1] == "sA" for r in full["session_stats"])


def test_a_row_without_created_at_arriving_makes_the_tick_load_the_day_in_full(sqlite_url, tmp_path):
    source = _new_source(sqlite_url)
    ensure_warehouse_schema(source)
    _insert(source, [event(at(9), {"x": 1, "y": 1}, created_at=at(9))])
    assert _load(source, source, tick=True).load_mode == "full"
    _insert(source, [event(at(9, 30), {"x": 2, "y": 2}, created_at=at(9, 30))])
    assert _load(source, source, tick=True).load_mode == "incremental"
    late = event(at(9, 45), {"x": 3, "y": 3})
    late["created_at"] = None
    _insert(source, [late])
    result = _load(source, source, tick=True)
    assert result.load_mode == "full"
    assert "without a usable created_at" in result.full_reason
    with source.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(game_events)).scalar_one() == 3
        mark = conn.execute(sa.select(etl_watermarks)).mappings().one()
    assert (mark["rows_without_arrival"], mark["clean_rows"], mark["load_mode"]) == (1, 3, "full")
    assert _load(source, source, tick=True).load_mode == "incremental"  # counted: the next tick is incremental


def test_other_cleaning_settings_load_the_day_in_full(sqlite_url):
    source = _new_source(sqlite_url)
    ensure_warehouse_schema(source)
    _insert(source, [event(at(9), {"x": 1, "y": 1, "level": 4}, created_at=at(9))])
    assert _load(source, source, tick=True).quarantined == 1
    more_levels = RULES.__class__(**{**vars(RULES), "levels": frozenset({"1", "2", "3", "4"})})
    result = load_partition(source, source, DAY, more_levels, NOW, incremental_tick=True, overlap=OVERLAP)
    assert (result.load_mode, result.clean, result.quarantined) == ("full", 1, 0)
    assert "other cleaning settings" in result.full_reason


@pytest.mark.parametrize("dialect", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_scheduled_tick_loads_incrementally_and_a_plain_run_in_full(dialect, tmp_path, monkeypatch):
    with _databases(dialect, tmp_path, 1) as (url,):
        today = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        start = today - dt.timedelta(minutes=30)
        source = get_engine(url)
        write_source_events(url, [event(start + dt.timedelta(seconds=i), {"x": i, "y": i}, session_id="s1") for i in range(5)])
        # no overlap: the second tick reads only the row that arrived after the first
        defs = build_defs(monkeypatch, url, PARTITION_START_DATE="2025-01-01", ETL_INCREMENTAL_OVERLAP_SECONDS="0")
        job = defs.resolve_job_def("etl_job")
        instance = instance_of(defs)
        key = today.date().isoformat()
        tick_tags = {LOAD_MODE_TAG: INCREMENTAL}

        forms = {}

        def run(tags):
            result = job.execute_in_process(partition_key=key, instance=instance, tags=tags)
            assert result.success
            events = result.asset_materializations_for_node("game_events")[0].metadata
            sessions = result.asset_materializations_for_node("session_stats")[0].metadata
            checks = result.get_asset_check_evaluations()
            assert all(check.passed for check in checks)
            forms.clear()  # which form of each blocking check ran: after a tick of today, the tick-aware one
            forms.update({check.check_name: check.metadata["form"].value.split(":")[0] for check in checks})
            return events, sessions

        events, sessions = run(tick_tags)  # the day's first tick: no watermark yet
        assert events["load_mode"].value == "full" and "no watermark" in events["full_load_reason"].value
        full_forms = {"rows_reconciled": "full", "unique_event_ids": "full", "event_counts_reconciled": "full"}
        assert forms == full_forms
        write_source_events(url, [event(today - dt.timedelta(seconds=5), {"x": 9, "y": 9}, session_id="s1")])
        events, sessions = run(tick_tags)
        assert events["load_mode"].value == "incremental"
        assert events["rows_extracted_this_load"].value == 1
        assert events["rows_extracted"].value == 6 and events["dagster/row_count"].value == 6  # the day
        assert events["created_at_watermark"].value == {key: (today - dt.timedelta(seconds=5)).isoformat()}
        assert sessions["load_mode"].value == "incremental"
        assert forms == {"rows_reconciled": "tick", "unique_event_ids": "tick", "event_counts_reconciled": "tick"}
        assert (sessions["dagster/row_count"].value, sessions["sessions_written"].value, sessions["events_summed"].value) == (1, 1, 6)
        with source.connect() as conn:
            assert conn.execute(sa.select(session_stats.c.event_count)).scalar_one() == 6
            assert conn.execute(sa.select(leaderboard_aggregates.c.event_count)).scalar_one() == 6
        events, sessions = run({})  # a UI materialization, a backfill, the admin trigger
        assert events["load_mode"].value == "full" and "full_load_reason" not in events
        assert events["rows_extracted_this_load"].value == 6 and sessions["load_mode"].value == "full"
        assert forms == full_forms


def test_the_schedule_tags_its_runs_as_ticks(sqlite_url, monkeypatch):
    defs = build_defs(monkeypatch, sqlite_url)
    schedule = defs.resolve_schedule_def("etl_schedule")
    midnight = dt.datetime(2025, 11, 16, 0, 0, tzinfo=dt.timezone.utc)  # today and yesterday
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=midnight, repository_def=defs.get_repository_def()
        )
        requests = schedule.evaluate_tick(context).run_requests
    assert len(requests) == 2 and all(r.tags[LOAD_MODE_TAG] == INCREMENTAL for r in requests)


@pytest.mark.parametrize("dialect", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_failed_tick_leaves_every_table_and_the_watermark_as_they_were(dialect, tmp_path, monkeypatch):
    from heatmap_pipeline.warehouse.etl import incremental

    with _databases(dialect, tmp_path, 1) as (url,):
        source = _new_source(url)
        ensure_warehouse_schema(source)
        _insert(source, [event(at(9, i), {"x": i, "y": i, "level": 1}, id=100 + i, created_at=at(9, i)) for i in range(5)])
        _load(source, source, tick=True)
        before = warehouse_tables(source)
        with source.connect() as conn:
            mark = conn.execute(sa.select(etl_watermarks)).all()
        # an arrival that replaces a held id and adds a new one, then a failure after the deletes
        _insert(source, [event(at(9, 4, 1), {"x": 9, "y": 9, "level": 2}, id=104, created_at=at(9, 3, 59)),
                         event(at(9, 6), {"x": 6, "y": 6, "level": 1}, id=106, created_at=at(9, 6))])

        def fail(*args, **kwargs):
            raise RuntimeError("disk full")

        monkeypatch.setattr(incremental, "_update_position_stats", fail)
        with pytest.raises(RuntimeError, match="disk full"):
            _load(source, source, tick=True)
        assert warehouse_tables(source) == before
        with source.connect() as conn:
            assert conn.execute(sa.select(etl_watermarks)).all() == mark
        monkeypatch.undo()
        result = _load(source, source, tick=True)  # the next tick loads what the failed one did not
        assert (result.load_mode, result.clean) == ("incremental", 2)
        with source.connect() as conn:
            assert conn.execute(sa.select(game_events.c.x).where(game_events.c.event_id == "104")).scalar_one() == 9


@pytest.mark.parametrize("dialect", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_full_load_whose_watermark_write_fails_makes_the_next_tick_a_full_load(dialect, tmp_path, monkeypatch):
    """The full load commits, then writing its watermark fails: the old watermark (with the old load's
    counts) must not survive for the next tick to build on."""
    from heatmap_pipeline.warehouse.etl import incremental

    with _databases(dialect, tmp_path, 1) as (url,):
        source = _new_source(url)
        ensure_warehouse_schema(source)
        _insert(source, [event(at(9, i), {"x": i, "y": i, "level": 1}, id=100 + i, created_at=at(9, i)) for i in range(5)])
        _load(source, source, tick=True)  # no watermark yet: a full load, which records one
        _insert(source, [event(at(9, 6), {"x": 6, "y": 6, "level": 1}, id=106, created_at=at(9, 6))])

        def fail(*args, **kwargs):
            raise sa.exc.OperationalError("INSERT INTO etl_watermarks", {}, Exception("server closed the connection"))

        monkeypatch.setattr(incremental, "_write_watermark", fail)
        with pytest.raises(sa.exc.OperationalError):
            _load(source, source, tick=False)  # a backfill: the day (6 rows) is replaced and committed
        monkeypatch.undo()
        with source.connect() as conn:
            assert conn.execute(sa.select(game_events.c.event_id)).scalars().all().__len__() == 6
            assert conn.execute(sa.select(etl_watermarks)).all() == []  # not the old load's (5 clean rows)
        _insert(source, [event(at(9, 7), {"x": 7, "y": 7, "level": 1}, id=107, created_at=at(9, 7))])
        result = _load(source, source, tick=True)
        assert result.load_mode == "full" and "no watermark" in result.full_reason
        with source.connect() as conn:
            assert conn.execute(sa.select(etl_watermarks.c.clean_rows)).scalar_one() == 7


def test_a_row_committed_later_than_the_overlap_fails_the_reconciliation_until_a_full_load(sqlite_url):
    from heatmap_pipeline.warehouse.invariants import game_events_reconciled

    source = _new_source(sqlite_url)
    ensure_warehouse_schema(source)
    _insert(source, [event(at(12), {"x": 1, "y": 1}, created_at=at(12))])
    _load(source, source, tick=True)
    _insert(source, [event(at(11), {"x": 2, "y": 2}, created_at=at(11))])  # an hour older than the watermark
    result = _load(source, source, tick=True)
    assert (result.extracted, result.already_loaded) == (0, 1)  # the overlap re-reads the 12:00 row only
    check = game_events_reconciled(source, source, DAY, NOW, RULES.partition_start)
    assert not check.passed and "1 source row(s) of the day are neither clean nor quarantined" in check.description
    assert _load(source, source, tick=False).clean == 2  # a backfill or Materialize picks it up
    assert game_events_reconciled(source, source, DAY, NOW, RULES.partition_start).passed

"""The blocking checks after a tick verify what the tick touched, and still fail on tampered tables.

After a scheduled tick of a day that is not over, ``rows_reconciled``, ``unique_event_ids`` and
``event_counts_reconciled`` no longer recount the whole day (16 s at 10M events): they read the tick's
window again, look up its ids, check the day's counts against the tick's recorded increments, and
rely on game_events' unique key. Each test here tampers with one table after a tick and expects the
tick-aware form to fail; after a full load, and for a day that is over, the full recount runs.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from heatmap_pipeline.warehouse import invariants
from heatmap_pipeline.warehouse.migrations import ensure_warehouse_schema
from heatmap_pipeline.warehouse.tables import etl_watermarks, game_events, quarantined_events, session_stats
from heatmap_pipeline_tests.support import event
from heatmap_pipeline_tests.test_etl_sql_path import DAY, RULES, at
from heatmap_pipeline_tests.test_incremental import _databases, _insert, _load, _new_source

START = RULES.partition_start
RUN_START = dt.datetime(2025, 11, 16, 20, 0)  # after every row below arrived


def _rows(hour: int, count: int, first_id: int) -> list[dict]:
    rows = [
        event(at(hour, i), {"x": i, "y": i, "level": 1}, id=first_id + i, session_id=f"s{i % 3}", created_at=at(hour, i))
        for i in range(count)
    ]
    rows.append(event(at(hour, 30), "[1, 2]", id=first_id + 50, created_at=at(hour, 30)))  # quarantined
    return rows


@pytest.fixture(
    params=[
        ("sqlite", "primary-key"),
        ("sqlite", "no-key"),
        pytest.param(("postgres", "primary-key"), marks=pytest.mark.postgres),
        pytest.param(("postgres", "no-key"), marks=pytest.mark.postgres),
    ],
    ids=lambda p: "-".join(p),
)
def ticked(request, tmp_path):
    """A day loaded in full at 9:00, then one tick with the rows of 10:00 (source in the warehouse;
    with a primary key on events.id the check takes the window's rows as all the rows of its ids)."""
    dialect, key = request.param
    with _databases(dialect, tmp_path, 1) as (url,):
        engine = _new_source(url, unique_id=key == "primary-key")
        ensure_warehouse_schema(engine)
        _insert(engine, _rows(9, 10, 100))
        assert _load(engine, engine, tick=True).load_mode == "full"
        _insert(engine, _rows(10, 10, 200))
        assert _load(engine, engine, tick=True).load_mode == "incremental"
        yield engine


def _checks(engine: sa.Engine, today: dt.date = DAY) -> dict[str, invariants.Invariant]:
    return {
        "rows_reconciled": invariants.game_events_reconciled_after_last_load(engine, engine, DAY, RUN_START, START, today),
        "unique_event_ids": invariants.game_events_unique_ids_after_last_load(engine, DAY, today),
        "event_counts_reconciled": invariants.session_stats_reconciled_after_last_load(engine, DAY, today),
    }


def test_after_a_tick_each_check_verifies_the_tick_and_says_so(ticked):
    results = _checks(ticked)
    assert all(r.passed for r in results.values()), {k: r.description for k, r in results.items()}
    assert all(r.metadata["form"].startswith("tick") for r in results.values())
    assert all("(after a tick)" in r.description for r in results.values())
    reconciled = results["rows_reconciled"].metadata
    # the window: the 11 rows of 10:00, and the quarantined 9:30 row inside the 5-minute overlap
    assert (reconciled["window_ids"], reconciled["stored_clean_of_those_ids"], reconciled["stored_quarantined_of_those_ids"]) == (12, 10, 2)


def test_a_day_that_is_over_and_a_full_load_are_recounted(ticked):
    over = _checks(ticked, today=DAY + dt.timedelta(days=1))  # the day's last tick, after midnight
    assert all(r.passed and r.metadata["form"].startswith("full") for r in over.values())
    _load(ticked, ticked, tick=False)
    full = _checks(ticked)
    assert all(r.passed and r.metadata["form"].startswith("full") for r in full.values())


def test_a_lost_row_of_the_tick_fails_rows_reconciled(ticked):
    with ticked.begin() as conn:
        conn.execute(game_events.delete().where(game_events.c.event_id == "205"))
    result = _checks(ticked)["rows_reconciled"]
    assert not result.passed
    assert "1 source row(s) of the tick's window or its ids are neither clean nor quarantined" in result.description


def test_a_row_stored_twice_for_the_tick_fails_rows_reconciled(ticked):
    with ticked.begin() as conn:  # the clean row 205 also quarantined
        conn.execute(quarantined_events.insert().values(partition_date=DAY, source_event_id="205", reason="duplicate_id", raw_row="{}", quarantined_at=RUN_START))
    result = _checks(ticked)["rows_reconciled"]
    assert not result.passed and "1 more row(s) stored for the tick's window ids than the source holds" in result.description


@pytest.mark.parametrize("column", ["clean_rows", "quarantined_rows"])
def test_day_counts_that_disagree_with_the_ticks_increments_fail_rows_reconciled(ticked, column):
    with ticked.begin() as conn:
        conn.execute(etl_watermarks.update().values({column: getattr(etl_watermarks.c, column) + 1}))
    result = _checks(ticked)["rows_reconciled"]
    assert not result.passed and "but the tick recorded" in result.description
    # the day's last tick (after midnight) recounts the day and compares the counts the ticks kept
    over = _checks(ticked, today=DAY + dt.timedelta(days=1))["rows_reconciled"]
    assert not over.passed and over.metadata["form"].startswith("full")
    assert "the ticks' counts in etl_watermarks" in over.description


def test_session_counts_that_disagree_with_the_recorded_clean_rows_fail_event_counts_reconciled(ticked):
    with ticked.begin() as conn:
        conn.execute(session_stats.update().where(session_stats.c.session_id == "s1").values(event_count=session_stats.c.event_count + 1))
    result = _checks(ticked)["event_counts_reconciled"]
    assert not result.passed and "the ETL recorded 20 clean events" in result.description


def test_without_the_unique_key_a_duplicated_id_fails_unique_event_ids(ticked):
    with ticked.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("ALTER TABLE game_events DROP CONSTRAINT game_events_pkey"))
        else:  # SQLite cannot drop a primary key: the same rows in a table without one
            conn.execute(sa.text("CREATE TABLE game_events_copy AS SELECT * FROM game_events"))
            conn.execute(sa.text("DROP TABLE game_events"))
            conn.execute(sa.text("ALTER TABLE game_events_copy RENAME TO game_events"))
        row = conn.execute(sa.select(game_events).where(game_events.c.event_id == "205")).mappings().one()
        conn.execute(game_events.insert().values(**row))
    result = _checks(ticked)["unique_event_ids"]
    assert not result.passed
    assert result.metadata["form"].startswith("full: no unique key") and "205" in result.description

"""Heatmaps follow the ETL: computed only from loaded data, never ahead of it, and naming the load they read.

Real materializations on a temporary instance, on SQLite and PostgreSQL; the automation condition is
evaluated by Dagster's own evaluator against real materializations at real times.
"""

from __future__ import annotations

import datetime as dt
import time

import dagster as dg
import pytest
import sqlalchemy as sa

from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.tables import heatmaps
from heatmap_pipeline_tests.support import (
    build_defs,
    materialize_etl,
    materialize_heatmap,
    old_readme_sample,
    table_rows,
    write_source_events,
)

DAY = "2025-11-16"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, sqlite_url):
    return sqlite_url if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def try_heatmap(defs, day: str, level: str, instance) -> dg.ExecuteInProcessResult:
    key = dg.MultiPartitionKey({"date": day, "level": level})
    return defs.resolve_job_def("heatmap_job").execute_in_process(partition_key=key, instance=instance, raise_on_error=False)


def try_etl(defs, day: str, instance) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("etl_job").execute_in_process(partition_key=day, instance=instance, raise_on_error=False)


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    [failure] = result.get_step_failure_events()
    return failure.step_failure_data.error.message


def test_a_heatmap_of_a_day_never_loaded_fails_and_writes_nothing(db_url, monkeypatch, instance):
    write_source_events(db_url, old_readme_sample())  # 30 position events the ETL has not loaded
    defs = build_defs(monkeypatch, db_url)
    result = try_heatmap(defs, DAY, "1", instance)
    assert not result.success
    text = failure_text(result)
    assert f"game_events for {DAY} has never been loaded" in text and "nothing was written" in text
    assert f"heatmap-pipeline backfill --start {DAY} --end {DAY}" in text
    with get_engine(db_url).connect() as conn:
        assert sa.inspect(conn).has_table("heatmaps")  # the migration ran; only the row is missing
    assert table_rows(db_url, heatmaps) == []
    # the step failed deterministically: no retry was spent on it
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]


def test_a_heatmap_after_a_failed_reload_keeps_the_old_row_and_fails(db_url, monkeypatch, instance):
    write_source_events(db_url, old_readme_sample())
    defs = build_defs(monkeypatch, db_url, DB_RETRY_MAX_RETRIES="0")
    assert materialize_etl(defs, DAY, instance).success
    assert materialize_heatmap(defs, DAY, "1", instance).success
    before = table_rows(db_url, heatmaps)
    assert before[0]["total"] == 30
    with get_engine(db_url).begin() as conn:  # the next load of the day fails: the source lost a column
        conn.execute(sa.text("ALTER TABLE events RENAME COLUMN payload TO payload_old"))
    assert not try_etl(defs, DAY, instance).success
    result = try_heatmap(defs, DAY, "1", instance)
    assert not result.success
    assert f"the latest load of game_events for {DAY} failed" in failure_text(result)
    assert table_rows(db_url, heatmaps) == before


def test_the_heatmap_names_the_load_it_was_computed_from(sqlite_url, monkeypatch, instance):
    write_source_events(sqlite_url, old_readme_sample())
    defs = build_defs(monkeypatch, sqlite_url)
    etl = materialize_etl(defs, DAY, instance)
    heatmap = materialize_heatmap(defs, DAY, "1", instance)
    [materialization] = heatmap.asset_materializations_for_node("level_heatmaps")
    [upstream] = [m for m in etl.get_asset_materialization_events() if m.asset_key == dg.AssetKey("game_events")]
    assert materialization.metadata["game_events_run_id"].value == etl.run_id
    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("game_events"), asset_partitions=[DAY]), limit=1
    ).records[0]
    assert materialization.metadata["game_events_materialized_at"].value == pytest.approx(record.timestamp)
    assert upstream.partition == DAY


@pytest.mark.slow
def test_todays_heatmaps_wait_for_the_etl_after_each_tick(sqlite_url, monkeypatch, instance):
    """At a HEATMAP_INTERVAL_MINUTES tick the heatmaps are not requested until game_events of today was
    updated after the tick; then every level once, and not again for that tick."""
    today = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    write_source_events(sqlite_url, old_readme_sample(today.date()))
    defs = build_defs(
        monkeypatch, sqlite_url, HEATMAP_INTERVAL_MINUTES="1", HEATMAP_LEVELS="1,boss",
        PARTITION_START_DATE=(today.date() - dt.timedelta(days=3)).isoformat(),
    )
    heatmap_key = dg.AssetKey("level_heatmaps")
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert first.total_requested == 0
    time.sleep(61 - dt.datetime.now().second)  # the next minute's tick has passed
    after_tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert after_tick.total_requested == 0  # the tick alone does not launch: the ETL has not run since
    assert materialize_etl(defs, dt.datetime.now(dt.timezone.utc).date().isoformat(), instance).success
    after_etl = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=after_tick.cursor)
    day = dt.datetime.now(dt.timezone.utc).date().isoformat()
    assert set(after_etl.get_requested_partitions(heatmap_key)) == {
        dg.MultiPartitionKey({"date": day, "level": "1"}),
        dg.MultiPartitionKey({"date": day, "level": "boss"}),
    }
    again = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=after_etl.cursor)
    assert again.total_requested == 0  # handled for this tick


# --- freshness of today's partitions -----------------------------------------------------------------
from heatmap_pipeline.core.freshness import todays_freshness  # noqa: E402

NOON = dt.datetime(2026, 12, 1, 12, 0)


@pytest.mark.parametrize(
    ("last_update", "fresh", "age"),
    [
        (NOON - dt.timedelta(minutes=59), True, 59.0),
        (NOON - dt.timedelta(minutes=60), True, 60.0),  # exactly twice a 30-minute interval
        (NOON - dt.timedelta(minutes=61), False, 61.0),
        (NOON - dt.timedelta(hours=13), False, None),  # yesterday's update does not count for today
        (None, False, None),
    ],
)
def test_todays_freshness_allows_twice_the_interval(last_update, fresh, age):
    result = todays_freshness("level_heatmaps 2026-12-01|1", NOON, last_update, 30)
    assert (result.fresh, result.age_minutes, result.limit_minutes) == (fresh, age, 60)
    assert ("STALE" in result.description) is (not fresh)


def test_nothing_today_just_after_midnight_is_not_stale_yet():
    just_after = dt.datetime(2026, 12, 1, 0, 20)
    assert todays_freshness("game_events 2026-12-01", just_after, None, 15).fresh
    assert not todays_freshness("game_events 2026-12-01", just_after + dt.timedelta(minutes=11), None, 15).fresh


def freshness_results(defs, instance) -> dict[str, dg.AssetCheckEvaluation]:
    result = defs.resolve_job_def("freshness_job").execute_in_process(instance=instance)
    assert result.success  # a WARN never fails the run
    return {e.asset_key.to_user_string(): e for e in result.get_asset_check_evaluations()}


def test_freshness_checks_warn_until_todays_heatmaps_are_refreshed(sqlite_url, monkeypatch, instance):
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    if now.hour == 0 and now.minute < 65:
        pytest.skip("within the first hour of the UTC day nothing of today is due yet")
    today = now.date().isoformat()
    write_source_events(sqlite_url, old_readme_sample(now.date()))
    defs = build_defs(monkeypatch, sqlite_url, HEATMAP_LEVELS="1,2",
                      PARTITION_START_DATE=(now.date() - dt.timedelta(days=2)).isoformat())
    before = freshness_results(defs, instance)
    assert not before["game_events"].passed and before["game_events"].severity == dg.AssetCheckSeverity.WARN
    assert materialize_etl(defs, today, instance).success
    after_etl = freshness_results(defs, instance)
    assert after_etl["game_events"].passed
    assert not after_etl["level_heatmaps"].passed and after_etl["level_heatmaps"].metadata["stale_levels"].value == 2
    assert materialize_heatmap(defs, today, "1", instance).success
    one_level = freshness_results(defs, instance)
    assert one_level["level_heatmaps"].metadata["stale_levels"].value == 1  # level 2 is still missing
    assert materialize_heatmap(defs, today, "2", instance).success
    assert freshness_results(defs, instance)["level_heatmaps"].passed

"""Late events: a row stamped on an earlier day reaches that day's tables and heatmaps.

The sensors are evaluated as the daemon would (real instance, real source query), and the runs
they request are executed for real; then the heatmap shows the late point.
"""

import datetime as dt
import time

import dagster as dg
import sqlalchemy as sa

from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.defs.late_data import LATE_ROWS_TAG, read_cursor, run_days, write_cursor
from heatmap_pipeline.defs.resources import SourceDatabase
from heatmap_pipeline.warehouse.tables import game_events
from heatmap_pipeline.defs.schedules import TRIGGER_TAG
from heatmap_pipeline.orchestration import INCREMENTAL, LOAD_MODE_TAG
from heatmap_pipeline.settings import load_settings
from heatmap_pipeline.warehouse.source import arrivals_since
from heatmap_pipeline_tests.support import (
    build_defs,
    event,
    materialize_etl,
    materialize_heatmap,
    old_readme_sample,
    write_source_events,
)

DAY = dt.date(2025, 11, 16)


USE_MEMORY_INSTANCE = True  # the conftest `instance` fixture is then in-memory: faster runs


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _evaluate_late_sensor(defs, url, instance, cursor):
    sensor = defs.get_sensor_def("late_events_sensor")
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"source": SourceDatabase(url=url)})
    return sensor(context)


def _evaluate_refresh_sensor(defs, instance, etl_result):
    sensor = defs.get_sensor_def("heatmap_refresh_sensor")
    context = dg.build_run_status_sensor_context(
        sensor_name="heatmap_refresh_sensor",
        dagster_event=etl_result.get_run_success_event(),
        dagster_instance=instance,
        dagster_run=etl_result.dagster_run,
    )
    return sensor(context)


def test_late_event_is_folded_into_its_day_and_the_heatmap_refreshed(db_url, monkeypatch, instance):
    write_source_events(db_url, old_readme_sample(DAY, 30))
    defs = build_defs(monkeypatch, db_url, PARTITION_START_DATE="2025-01-01")
    assert materialize_etl(defs, DAY.isoformat(), instance).success
    before = materialize_heatmap(defs, DAY.isoformat(), "1", instance)
    assert before.asset_materializations_for_node("level_heatmaps")[0].metadata["sum"].value == 30

    arrived = started = _now()  # after the last load of the day
    write_source_events(
        db_url,
        [
            event(
                dt.datetime(2025, 11, 16, 23, 59), {"x": 5.0, "y": 1.0}, created_at=arrived
            ),  # late: yesterday's and older
            event(started, {"x": 1.0, "y": 1.0}, created_at=arrived),  # today's: left to etl_schedule
            event(dt.datetime(2024, 6, 1, 12), {"x": 1.0, "y": 1.0}, created_at=arrived),  # before PARTITION_START_DATE
        ],
    )
    time.sleep(0.01)
    result = _evaluate_late_sensor(defs, db_url, instance, write_cursor(started - dt.timedelta(hours=1)))
    [request] = result.run_requests
    assert request.partition_key == DAY.isoformat()
    assert request.tags[TRIGGER_TAG] == "late_events_sensor" and request.tags[LATE_ROWS_TAG] == "1"
    assert request.tags[LOAD_MODE_TAG] == INCREMENTAL  # it loads what arrived, not the whole day
    assert DAY.isoformat() in request.run_key and arrived.isoformat() in request.run_key
    assert read_cursor(result.cursor) == arrived  # the cursor moves to the newest created_at seen

    etl = defs.get_job_def("etl_job").execute_in_process(
        partition_key=request.partition_key, tags=request.tags, instance=instance
    )
    assert etl.success and all(e.passed for e in etl.get_asset_check_evaluations())
    with get_engine(db_url).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(game_events.c.event_date == DAY)).scalar_one() == 31

    refresh = _evaluate_refresh_sensor(defs, instance, etl)
    assert sorted(str(r.partition_key) for r in refresh) == [f"{DAY.isoformat()}|{level}" for level in ("1", "2", "3")]
    assert all(r.tags[TRIGGER_TAG] == "heatmap_refresh_sensor" for r in refresh)
    level_1 = next(r for r in refresh if r.partition_key.keys_by_dimension["level"] == "1")
    after = defs.get_job_def("heatmap_job").execute_in_process(
        partition_key=level_1.partition_key, tags=level_1.tags, instance=instance
    )
    assert after.asset_materializations_for_node("level_heatmaps")[0].metadata["sum"].value == 31
    assert after.get_asset_check_evaluations()[0].passed

    # the next tick: nothing new; and re-reading the overlap window does not launch the day again
    again = _evaluate_late_sensor(defs, db_url, instance, result.cursor)
    assert again.run_requests == [] and again.skip_reason is not None
    reread = _evaluate_late_sensor(defs, db_url, instance, write_cursor(started - dt.timedelta(hours=1)))
    assert reread.run_requests == []


def test_late_sensor_leaves_a_day_whose_last_load_started_after_the_rows_arrived(sqlite_url, monkeypatch, instance):
    arrived = _now() - dt.timedelta(minutes=3)
    write_source_events(sqlite_url, [event(dt.datetime(2025, 11, 16, 8), {"x": 1, "y": 1}, created_at=arrived)])
    defs = build_defs(monkeypatch, sqlite_url)
    first = _evaluate_late_sensor(defs, sqlite_url, instance, write_cursor(arrived - dt.timedelta(minutes=30)))
    assert [r.partition_key for r in first.run_requests] == [DAY.isoformat()]  # never loaded: requested
    assert materialize_etl(defs, DAY.isoformat(), instance).success  # loaded after the row arrived
    second = _evaluate_late_sensor(defs, sqlite_url, instance, write_cursor(arrived - dt.timedelta(minutes=30)))
    assert second.run_requests == []


def test_arrivals_are_grouped_by_the_day_that_owns_them(db_url):
    """By the UTC day of their timestamp, or (no timestamp) of their arrival, as the extraction files them."""
    since = dt.datetime(2026, 1, 10, 12)
    write_source_events(
        db_url,
        [
            event(dt.datetime(2026, 1, 8, 3), {}, created_at=since + dt.timedelta(minutes=1)),
            event(dt.datetime(2026, 1, 8, 23, 59), {}, created_at=since + dt.timedelta(minutes=2)),
            event(dt.datetime(2026, 1, 9, 0, 0), {}, created_at=since + dt.timedelta(minutes=3)),
            event(dt.datetime(2026, 1, 7, 0, 0), {}, created_at=since - dt.timedelta(minutes=1)),  # before since
            event(None, {}, created_at=since + dt.timedelta(minutes=4)),  # no timestamp: filed under its arrival day
        ],
    )
    found = arrivals_since(get_engine(db_url), since)
    assert [(a.day, a.rows, a.newest_created_at) for a in found] == [
        (dt.date(2026, 1, 8), 2, since + dt.timedelta(minutes=2)),
        (dt.date(2026, 1, 9), 1, since + dt.timedelta(minutes=3)),
        (dt.date(2026, 1, 10), 1, since + dt.timedelta(minutes=4)),
    ]


def test_refresh_covers_every_day_of_a_backfill_range():
    ranged = dg.DagsterRun(
        job_name="etl_job",
        tags={"dagster/asset_partition_range_start": "2025-11-14", "dagster/asset_partition_range_end": "2025-11-16"},
    )
    assert run_days(ranged) == ["2025-11-14", "2025-11-15", "2025-11-16"]
    assert run_days(dg.DagsterRun(job_name="etl_job", tags={"dagster/partition": "2025-11-16"})) == ["2025-11-16"]


def test_an_etl_run_of_today_does_not_trigger_a_heatmap_refresh(sqlite_url, monkeypatch, instance):
    write_source_events(sqlite_url, [])
    defs = build_defs(monkeypatch, sqlite_url)
    today = defs.get_job_def("etl_job").execute_in_process(partition_key=_now().date().isoformat(), instance=instance)
    result = _evaluate_refresh_sensor(defs, instance, today)
    assert isinstance(result, dg.SkipReason) and "heatmap_automation_sensor refreshes today" in result.skip_message


def test_late_sensors_run_by_default_and_poll_at_least_once_per_etl_interval(monkeypatch, sqlite_url):
    defs = build_defs(monkeypatch, sqlite_url, ETL_INTERVAL_MINUTES="1")
    settings = load_settings({"ETL_INTERVAL_MINUTES": "1"})
    late, refresh = defs.get_sensor_def("late_events_sensor"), defs.get_sensor_def("heatmap_refresh_sensor")
    # the shortest ETL interval is 1 minute: the sensor polls at least that often
    assert late.minimum_interval_seconds <= settings.etl_interval_minutes * 60
    assert (
        late.default_status == dg.DefaultSensorStatus.RUNNING
        and refresh.default_status == dg.DefaultSensorStatus.RUNNING
    )

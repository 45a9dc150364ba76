"""Schedules evaluated at fixed times with non-default intervals."""

import datetime as dt

import dagster as dg
import pytest

from heatmap_pipeline_tests.support import build_defs

UTC = dt.timezone.utc


def evaluate(defs, name, when, instance):
    schedule = defs.resolve_schedule_def(name)
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=when, repository_def=defs.get_repository_def()
    )
    return schedule, schedule.evaluate_tick(context)


def test_etl_schedule_uses_interval_and_refreshes_today(sqlite_url, monkeypatch, instance):
    defs = build_defs(monkeypatch, sqlite_url, ETL_INTERVAL_MINUTES="7")
    schedule, data = evaluate(defs, "etl_schedule", dt.datetime(2025, 11, 16, 14, 7, tzinfo=UTC), instance)
    assert "0,7,14" in schedule.cron_schedule[0]
    assert [r.partition_key for r in data.run_requests] == ["2025-11-16"]
    assert data.run_requests[0].tags["heatmap_pipeline/trigger"] == "etl_schedule"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def ran(defs, instance, requests, status=dg.DagsterRunStatus.SUCCESS) -> None:
    """The daemon launched these run requests (tags included) and they reached ``status``."""
    for request in requests:
        instance.create_run_for_job(job_def=defs.resolve_job_def("etl_job"), status=status,
                                    tags={**request.tags, "dagster/partition": request.partition_key})


def test_first_etl_tick_after_midnight_also_refreshes_yesterday(sqlite_url, monkeypatch, instance):
    defs = build_defs(monkeypatch, sqlite_url, ETL_INTERVAL_MINUTES="20")
    _, data = evaluate(defs, "etl_schedule", dt.datetime(2025, 11, 17, 0, 0, tzinfo=UTC), instance)
    assert [r.partition_key for r in data.run_requests] == ["2025-11-16", "2025-11-17"]
    ran(defs, instance, data.run_requests)
    _, later = evaluate(defs, "etl_schedule", dt.datetime(2025, 11, 17, 0, 20, tzinfo=UTC), instance)
    assert [r.partition_key for r in later.run_requests] == ["2025-11-17"]


def test_tick_skips_a_partition_whose_run_is_still_in_flight(sqlite_url, monkeypatch, instance):
    defs = build_defs(monkeypatch, sqlite_url, ETL_INTERVAL_MINUTES="15")
    job = defs.resolve_job_def("etl_job")
    # a run of today's partition that is still running
    instance.create_run_for_job(job_def=job, tags={"dagster/partition": "2025-11-16"}, status=dg.DagsterRunStatus.STARTED)
    _, data = evaluate(defs, "etl_schedule", dt.datetime(2025, 11, 16, 10, 15, tzinfo=UTC), instance)
    assert data.run_requests == []
    assert "already queued or running" in data.skip_message
    _, other_day = evaluate(defs, "etl_schedule", dt.datetime(2025, 11, 17, 10, 15, tzinfo=UTC), instance)
    assert [r.partition_key for r in other_day.run_requests] == ["2025-11-17"]


def test_scheduled_run_request_executes(sqlite_url, monkeypatch, instance):
    from heatmap_pipeline_tests.support import old_readme_sample, write_source_events

    write_source_events(sqlite_url, old_readme_sample())
    defs = build_defs(monkeypatch, sqlite_url)
    _, data = evaluate(defs, "etl_schedule", dt.datetime(2025, 11, 16, 12, 30, tzinfo=UTC), instance)
    request = data.run_requests[0]
    result = defs.resolve_job_def("etl_job").execute_in_process(
        partition_key=request.partition_key, instance=instance, tags=request.tags
    )
    assert result.success
    assert result.asset_materializations_for_node("game_events")[0].metadata["dagster/row_count"].value == 30


@pytest.mark.parametrize("name", ["ETL_INTERVAL_MINUTES", "HEATMAP_INTERVAL_MINUTES"])
def test_invalid_interval_stops_definitions_loading(name, sqlite_url, monkeypatch):
    from heatmap_pipeline.settings import SettingsError

    with pytest.raises(SettingsError, match=name):
        build_defs(monkeypatch, sqlite_url, **{name: "0"})

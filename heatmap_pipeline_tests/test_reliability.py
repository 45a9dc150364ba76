"""Database unreachable, source table missing or incomplete, retry settings, daemon catch-up.

Real materializations against real databases (a closed port for "unreachable"), real Dagster
instances; the catch-up test runs the real scheduler iteration against our dagster.yaml.
"""

import datetime as dt
import logging
import sys
import time

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.runtime.instance import DAGSTER_YAML
from heatmap_pipeline.orchestration import is_transient_db_error
from heatmap_pipeline.settings import SettingsError, load_settings
from heatmap_pipeline_tests.support import build_defs, old_readme_sample, write_source_events


USE_MEMORY_INSTANCE = True  # the conftest `instance` fixture is then in-memory: faster runs


DAY = "2025-11-16"


def _run_etl(defs, instance):
    return defs.get_job_def("etl_job").execute_in_process(partition_key=DAY, instance=instance, raise_on_error=False)


def _step_events(result, kind: str) -> list:
    return [e for e in result.all_events if e.event_type_value == kind]


def _failure_text(result) -> str:
    """Everything the UI shows for the failed step: the error and its causes."""
    [failure] = result.get_step_failure_events()
    error, parts = failure.step_failure_data.error, []
    while error is not None:
        parts.append(error.message)
        error = error.cause
    return "\n".join(parts)


def test_unreachable_database_is_retried_with_backoff_then_fails_naming_it(monkeypatch, instance):
    url = "postgresql://pipeline:s3cret@127.0.0.1:1/telemetry"  # nothing listens on port 1
    defs = build_defs(monkeypatch, url, DB_RETRY_MAX_RETRIES="2", DB_RETRY_DELAY_SECONDS="0.1")
    started = time.monotonic()
    result = _run_etl(defs, instance)
    assert not result.success
    assert len(_step_events(result, "STEP_UP_FOR_RETRY")) == 2  # DB_RETRY_MAX_RETRIES
    assert len(_step_events(result, "STEP_RESTARTED")) == 2
    delays = [e.event_specific_data.seconds_to_wait for e in _step_events(result, "STEP_UP_FOR_RETRY")]
    assert delays[1] > delays[0] >= 0.1  # exponential backoff
    assert time.monotonic() - started >= sum(delays)
    text = _failure_text(result)
    assert "Database unreachable or connection lost (postgresql://pipeline:***@127.0.0.1:1/telemetry)" in text
    assert "Connection refused" in text and "s3cret" not in text
    assert "session_stats" not in {e.step_key for e in result.get_step_success_events()}


def test_missing_source_table_fails_at_once_naming_it(sqlite_url, monkeypatch, instance):
    get_engine(sqlite_url).connect().close()  # an empty database: no events table
    defs = build_defs(monkeypatch, sqlite_url, DB_RETRY_MAX_RETRIES="3", DB_RETRY_DELAY_SECONDS="5")
    result = _run_etl(defs, instance)
    assert not result.success
    assert not _step_events(result, "STEP_UP_FOR_RETRY")  # a missing table is not retried
    text = _failure_text(result)
    assert "source table 'events' does not exist in sqlite:///" in text
    assert "expected columns: id, user_id, session_id, event_type" in text


@pytest.mark.postgres
def test_source_table_missing_a_column_fails_naming_the_column(postgres_url, monkeypatch, instance):
    write_source_events(postgres_url, old_readme_sample())
    with get_engine(postgres_url).begin() as conn:
        conn.execute(sa.text("ALTER TABLE events DROP COLUMN created_at"))
        conn.execute(sa.text("ALTER TABLE events DROP COLUMN payload"))
    defs = build_defs(monkeypatch, postgres_url, DB_RETRY_DELAY_SECONDS="5")
    result = _run_etl(defs, instance)
    assert not result.success and not _step_events(result, "STEP_UP_FOR_RETRY")
    assert "source table 'events' is missing column(s): payload, created_at" in _failure_text(result)


def test_transient_errors_are_told_apart_from_deterministic_ones(sqlite_url):
    engine = get_engine(sqlite_url)
    with pytest.raises(sa.exc.OperationalError) as missing:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT * FROM no_such_table"))
    assert not is_transient_db_error(missing.value)
    refused = sa.create_engine("postgresql+psycopg://u@127.0.0.1:1/db", connect_args={"connect_timeout": 2})
    with pytest.raises(sa.exc.OperationalError) as unreachable:
        refused.connect()
    assert is_transient_db_error(unreachable.value)
    assert not is_transient_db_error(ValueError("bug"))


def test_retry_settings_are_validated_naming_the_variable():
    settings = load_settings({"DB_RETRY_MAX_RETRIES": "5", "DB_RETRY_DELAY_SECONDS": "2.5"})
    assert (settings.db_retry_max_retries, settings.db_retry_delay_seconds) == (5, 2.5)
    assert (load_settings({}).db_retry_max_retries, load_settings({}).db_retry_delay_seconds) == (3, 10.0)
    with pytest.raises(SettingsError, match="DB_RETRY_MAX_RETRIES='eleven'"):
        load_settings({"DB_RETRY_MAX_RETRIES": "eleven"})
    with pytest.raises(SettingsError, match="DB_RETRY_DELAY_SECONDS='-1' is out of range"):
        load_settings({"DB_RETRY_DELAY_SECONDS": "-1"})


# --- the daemon down for hours: one catch-up run per job ------------------------------------------


def test_daemon_back_after_hours_launches_one_catch_up_run_per_job(monkeypatch, tmp_path):
    """The real scheduler iteration, with the scheduler and concurrency.runs config of our dagster.yaml.

    The daemon last ran at 10:00:30 and comes back at 15:00:30: 20 ETL ticks were missed. Only the
    latest tick is evaluated (max_catchup_runs: 1): one ETL run. The next tick finds it still queued and
    launches nothing (the schedule's in-flight skip). Heatmaps are no schedule any more: they follow
    the ETL through Declarative Automation, which requests each level once per tick after the ETL
    (test_heatmap_follows_etl.py).
    """
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import freeze_time
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster._scheduler.scheduler import launch_scheduled_runs

    overrides = yaml.safe_load(DAGSTER_YAML)
    overrides.pop("telemetry")
    max_catchup = overrides["scheduler"]["config"]["max_catchup_runs"]
    build_defs(monkeypatch, f"sqlite:///{tmp_path / 'game.sqlite'}")  # the environment the code location reads
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name="heatmap_pipeline.definitions"),
        location_name="heatmap_pipeline",
    )

    def daemon_iteration(context, when: dt.datetime):
        with freeze_time(when):
            list(
                launch_scheduled_runs(
                    context,
                    logging.getLogger("test"),
                    end_datetime_utc=when,
                    iteration_times={},
                    max_catchup_runs=max_catchup,
                )
            )

    with (
        dg.instance_for_test(overrides=overrides) as instance,
        WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as context,
    ):
        # The run queue reads concurrency.runs (not the legacy run_queue key): one run per partition key.
        run_queue = instance.get_concurrency_config().run_queue_config
        assert "run_queue" not in overrides
        assert run_queue.tag_concurrency_limits == [
            {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
        ]
        assert instance.scheduler.max_catchup_runs == 1
        down_since = dt.datetime(2026, 1, 10, 10, 0, 30, tzinfo=dt.timezone.utc)
        daemon_iteration(context, down_since)
        assert instance.get_runs() == []
        daemon_iteration(context, down_since + dt.timedelta(hours=5))
        runs = instance.get_runs()
        by_job = {job: [r for r in runs if r.job_name == job] for job in ("etl_job", "heatmap_job", "freshness_job")}
        assert [r.tags["dagster/partition"] for r in by_job["etl_job"]] == ["2026-01-10"]
        assert by_job["heatmap_job"] == []  # no heatmap ahead of its ETL
        assert len(by_job["freshness_job"]) == 1  # its schedule coalesces too
        assert all(r.status == dg.DagsterRunStatus.QUEUED for r in runs)  # submitted to the run queue
        ticks = {
            state.instigator_name: instance.get_ticks(state.instigator_origin_id, state.selector_id)
            for state in instance.all_instigator_state()
            if state.instigator_name in ("etl_schedule", "freshness_schedule")
        }
        caught_up_at = (down_since + dt.timedelta(hours=5)).replace(second=0).timestamp()
        assert {name: [t.timestamp for t in tick_list] for name, tick_list in ticks.items()} == {
            "etl_schedule": [caught_up_at],  # one tick each, the latest
            "freshness_schedule": [caught_up_at],
        }

        daemon_iteration(context, down_since + dt.timedelta(hours=5, minutes=15))
        etl_runs = [r for r in instance.get_runs() if r.job_name == "etl_job"]
        assert len(etl_runs) == 1  # the ETL run of today is still queued: not launched again
        [etl_state] = [s for s in instance.all_instigator_state() if s.instigator_name == "etl_schedule"]
        latest = instance.get_ticks(etl_state.instigator_origin_id, etl_state.selector_id)[0]
        assert latest.status.value == "SKIPPED" and "already queued or running: 2026-01-10" in latest.skip_reason

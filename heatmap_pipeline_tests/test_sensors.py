"""admin_trigger_sensor with build_sensor_context, a real Dagster instance, real runs and SQLite."""

import datetime as dt

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
from dagster._core.utils import make_new_run_id

from heatmap_pipeline.trigger import store
from heatmap_pipeline_tests.test_admin_results import request_body
from heatmap_pipeline.web.app import create_app
from heatmap_pipeline.trigger.plan import REQUEST_TAG
from heatmap_pipeline.trigger.validation import TriggerSpec
from heatmap_pipeline.defs.resources import WarehouseDatabase
from heatmap_pipeline.defs.schedules import TRIGGER_TAG
from heatmap_pipeline.warehouse.tables import admin_trigger_requests, heatmaps
from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.migrations import ensure_warehouse_schema
from heatmap_pipeline.settings import load_settings
from heatmap_pipeline_tests.admin_servers import free_port, serve_in_thread
from heatmap_pipeline_tests.support import build_defs, materialize_etl, old_readme_sample, table_rows, write_source_events

DAY = dt.date(2025, 11, 16)


@pytest.fixture
def setup(sqlite_url, monkeypatch, instance):
    write_source_events(sqlite_url, old_readme_sample())
    defs = build_defs(monkeypatch, sqlite_url, HEATMAP_LEVELS="1,2")
    engine = sa.create_engine(sqlite_url)
    ensure_warehouse_schema(engine)
    return defs, engine, instance


def tick(defs, instance, url):
    sensor = defs.resolve_sensor_def("admin_trigger_sensor")
    context = dg.build_sensor_context(instance=instance, resources={"warehouse": WarehouseDatabase(url=url)}, definitions=defs)
    return sensor.evaluate_tick(context).run_requests or []


def execute(defs, instance, run_request: dg.RunRequest, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    """Run a sensor's run request for real, as the daemon would (same job, partition and tags)."""
    tags = {k: v for k, v in run_request.tags.items() if not k.startswith("dagster/partition")}
    key = run_request.partition_key
    if "|" in key:
        date, level = key.split("|")
        key = dg.MultiPartitionKey({"date": date, "level": level})
    return defs.resolve_job_def(run_request.job_name).execute_in_process(
        partition_key=key, instance=instance, tags=tags, raise_on_error=raise_on_error
    )


def run_sensor_until_finished(defs, instance, url, engine, request_id, max_ticks=10) -> list[dg.RunRequest]:
    """Tick the sensor and run what it asks, as the daemon would, until the request finishes;
    returns the run requests in launch order."""
    launched = []
    for _ in range(max_ticks):
        for run_request in tick(defs, instance, url):
            launched.append(run_request)
            execute(defs, instance, run_request, raise_on_error=False)
        if store.get_request(engine, request_id).finished:
            return launched
    raise AssertionError(f"request {request_id} not finished after {max_ticks} ticks: {store.get_request(engine, request_id)}")


def test_pending_request_is_launched_once_etl_before_heatmaps_then_never_again(setup, sqlite_url):
    defs, engine, instance = setup
    request = store.create_request(engine, TriggerSpec(("etl", "heatmap"), ("1", "2"), DAY), "10.1.2.3")

    [etl] = tick(defs, instance, sqlite_url)
    assert (etl.job_name, etl.partition_key, etl.run_key) == ("etl_job", "2025-11-16", f"admin_request:{request.id}:etl")
    assert etl.tags[REQUEST_TAG] == request.id and etl.tags[TRIGGER_TAG] == "admin_trigger_sensor"
    assert store.get_request(engine, request.id).launched_by == "admin_trigger_sensor"
    # Until the daemon has created the run, the same run key comes back; Dagster launches a run key once.
    assert [r.run_key for r in tick(defs, instance, sqlite_url)] == [etl.run_key]

    etl_run = execute(defs, instance, etl)
    assert etl_run.success
    assert tick(defs, instance, sqlite_url) == []  # adopts the run it created
    assert store.get_request(engine, request.id).run_ids == {"etl": etl_run.run_id}

    heatmap_requests = tick(defs, instance, sqlite_url)  # ETL succeeded: the heatmaps are due now
    assert sorted(r.partition_key for r in heatmap_requests) == ["2025-11-16|1", "2025-11-16|2"]
    for run_request in heatmap_requests:
        assert run_request.tags["dagster/partition/level"] in ("1", "2") and run_request.tags["dagster/partition/date"] == "2025-11-16"
        assert execute(defs, instance, run_request).success
    assert tick(defs, instance, sqlite_url) == []  # adopt
    assert tick(defs, instance, sqlite_url) == []  # settle: done
    done = store.get_request(engine, request.id)
    assert done.state == "done" and set(done.run_ids) == {"etl", "heatmap:1", "heatmap:2"}
    assert set(done.run_statuses.values()) == {"SUCCESS"}
    totals = {r["level"]: r["total"] for r in table_rows(sqlite_url, heatmaps) if r["date"] == DAY}
    assert totals == {"1": 30.0, "2": 0.0}
    assert tick(defs, instance, sqlite_url) == []  # a finished request is never launched again
    assert len(instance.get_run_records(filters=dg.RunsFilter(tags={REQUEST_TAG: request.id}))) == 3


def test_failed_etl_ends_the_request_in_error_without_heatmaps(setup, sqlite_url):
    defs, engine, instance = setup
    request = store.create_request(engine, TriggerSpec(("etl", "heatmap"), ("1",), DAY), None)
    [etl] = tick(defs, instance, sqlite_url)
    with engine.begin() as conn:  # the real failure mode: the source table is gone
        conn.execute(sa.text("ALTER TABLE events RENAME TO events_gone"))
    tags = {k: v for k, v in etl.tags.items() if not k.startswith("dagster/partition")}
    result = defs.resolve_job_def("etl_job").execute_in_process(partition_key="2025-11-16", instance=instance, tags=tags,
                                                                raise_on_error=False)
    assert not result.success
    assert tick(defs, instance, sqlite_url) == []
    assert tick(defs, instance, sqlite_url) == []
    failed = store.get_request(engine, request.id)
    assert failed.state == "error" and f"etl_job run {result.run_id}" in failed.error and "FAILURE" in failed.error


def test_request_for_a_partition_already_running_shares_that_run(setup, sqlite_url):
    defs, engine, instance = setup
    running = instance.add_run(dg.DagsterRun(job_name="etl_job", run_id=make_new_run_id(),
                                            status=dg.DagsterRunStatus.STARTED, tags={"dagster/partition": "2025-11-16"}))
    request = store.create_request(engine, TriggerSpec(("etl",), ("1",), DAY), None)
    assert tick(defs, instance, sqlite_url) == []
    shared = store.get_request(engine, request.id)
    assert shared.state == "launched" and shared.run_ids == {"etl": running.run_id}


def test_endpoint_claim_abandoned_midway_is_taken_over(setup, sqlite_url):
    defs, engine, instance = setup
    request = store.create_request(engine, TriggerSpec(("etl",), ("1",), DAY), None)
    assert store.claim(engine, request.id, "etl", "admin_api")
    assert tick(defs, instance, sqlite_url) == []  # a fresh claim is the endpoint's business
    with engine.begin() as conn:
        conn.execute(admin_trigger_requests.update().values(updated_at=dt.datetime(2025, 1, 1)))
    [etl] = tick(defs, instance, sqlite_url)
    assert etl.run_key == f"admin_request:{request.id}:etl"


def test_request_recorded_while_the_webserver_was_down_is_launched_by_the_sensor(setup, sqlite_url, tmp_path):
    defs, engine, instance = setup
    settings = load_settings({"DATABASE_URL": sqlite_url, "HEATMAP_LEVELS": "1,2", "ADMIN_API_KEY": "k",
                              "HEATMAP_PIPELINE_HOME": str(tmp_path),
                              "DAGSTER_GRAPHQL_URL": f"http://127.0.0.1:{free_port()}/graphql"})
    with serve_in_thread(create_app(settings)) as api:
        response = httpx.post(f"{api}/admin/run-jobs?wait=false", headers={"x-api-key": "k"},
                              json={"tasks": ["heatmap"], "levels": ["2"], "date": "2025-11-16"})
    assert response.status_code == 202 and response.json()["state"] == "pending"
    request_id = response.json()["request_id"]
    # 2025-11-16 was never loaded, so the sensor runs its ETL first (issue 10), then the heatmap.
    [etl] = tick(defs, instance, sqlite_url)
    assert etl.run_key == f"admin_request:{request_id}:etl" and etl.partition_key == "2025-11-16"
    assert execute(defs, instance, etl).success
    assert tick(defs, instance, sqlite_url) == []  # adopt the ETL run
    [run_request] = tick(defs, instance, sqlite_url)  # ETL succeeded: the heatmap is due now
    assert run_request.run_key == f"admin_request:{request_id}:heatmap:2" and run_request.partition_key == "2025-11-16|2"
    assert execute(defs, instance, run_request).success
    tick(defs, instance, sqlite_url)
    tick(defs, instance, sqlite_url)
    assert store.get_request(engine, request_id).state == "done"


# --- issue 10: a heatmap is computed only from a loaded day -------------------------------------
@pytest.fixture
def on_db(db_url, monkeypatch, instance):
    """The sample on SQLite or PostgreSQL (source and warehouse in one database), levels 1 and 2."""
    write_source_events(db_url, old_readme_sample())
    defs = build_defs(monkeypatch, db_url, HEATMAP_LEVELS="1,2")
    engine = get_engine(db_url)
    ensure_warehouse_schema(engine)
    return defs, engine, instance, db_url


def test_heatmap_only_request_for_a_never_loaded_day_runs_its_etl_first_and_answers_the_true_sum(on_db):
    defs, engine, instance, url = on_db
    request = store.create_request(engine, TriggerSpec(("heatmap",), ("1",), DAY), None)

    launched = run_sensor_until_finished(defs, instance, url, engine, request.id)
    assert [(r.job_name, r.partition_key) for r in launched] == [("etl_job", "2025-11-16"), ("heatmap_job", "2025-11-16|1")]
    done = store.get_request(engine, request.id)
    assert done.state == "done" and done.tasks == ["heatmap"] and done.stages == ["etl", "heatmap"]
    assert done.etl_reason == "game_events 2025-11-16 was never materialized; a heatmap would read no rows"
    body = request_body(engine, done)
    assert body["status"] == "ok" and body["tasks"] == ["heatmap"] and body["levels"] == ["1"]
    etl, heatmap = body["results"]
    assert {k: etl[k] for k in ("status", "job", "run_id", "date")} == {
        "status": "ok", "job": "etl", "run_id": done.run_ids["etl"], "date": "2025-11-16"}
    assert etl["reason"] == f"added before the heatmap: {done.etl_reason}"
    assert heatmap["status"] == "ok" and [(r["level"], r["sum"]) for r in heatmap["results"]] == [("1", 30.0)]
    etl_run, heatmap_run = (instance.get_run_by_id(done.run_ids[slot]) for slot in ("etl", "heatmap:1"))
    assert etl_run.tags[REQUEST_TAG] == heatmap_run.tags[REQUEST_TAG] == request.id
    assert instance.get_run_record_by_id(etl_run.run_id).end_time <= instance.get_run_record_by_id(heatmap_run.run_id).start_time

    # The day is loaded now: the next heatmap-only request runs the heatmap alone, as asked.
    again = store.create_request(engine, TriggerSpec(("heatmap",), ("1",), DAY), None)
    launched = run_sensor_until_finished(defs, instance, url, engine, again.id)
    assert [r.job_name for r in launched] == ["heatmap_job"]
    body = request_body(engine, store.get_request(engine, again.id))
    assert [item["job"] for item in body["results"]] == ["heatmap"] and body["results"][0]["results"][0]["sum"] == 30.0


def test_heatmap_only_request_after_a_failed_reload_reloads_first_and_sees_the_new_rows(on_db):
    defs, engine, instance, url = on_db
    assert materialize_etl(defs, "2025-11-16", instance).success  # 30 events loaded
    write_source_events(url, old_readme_sample(n=42)[30:])  # 12 more arrive
    with engine.begin() as conn:  # the next ETL fails: the source table is gone for a while
        conn.execute(sa.text("ALTER TABLE events RENAME TO events_gone"))
    assert not defs.resolve_job_def("etl_job").execute_in_process(partition_key="2025-11-16", instance=instance,
                                                                 raise_on_error=False).success
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE events_gone RENAME TO events"))

    request = store.create_request(engine, TriggerSpec(("heatmap",), ("1",), DAY), None)
    launched = run_sensor_until_finished(defs, instance, url, engine, request.id)
    assert [r.job_name for r in launched] == ["etl_job", "heatmap_job"]
    done = store.get_request(engine, request.id)
    assert done.etl_reason.startswith("the latest materialization of game_events 2025-11-16 failed")
    body = request_body(engine, done)
    assert body["status"] == "ok" and body["results"][1]["results"][0]["sum"] == 42.0  # not the stale 30


def test_heatmap_only_request_whose_etl_fails_answers_error_and_skips_the_heatmap(on_db):
    defs, engine, instance, url = on_db
    with engine.begin() as conn:  # the real failure mode: the source table is gone
        conn.execute(sa.text("ALTER TABLE events RENAME TO events_gone"))
    request = store.create_request(engine, TriggerSpec(("heatmap",), ("1", "2"), DAY), None)

    launched = run_sensor_until_finished(defs, instance, url, engine, request.id)
    assert [r.job_name for r in launched] == ["etl_job"]
    failed = store.get_request(engine, request.id)
    body = request_body(engine, failed)
    assert body["status"] == "error" and failed.state == "error"
    etl, heatmap = body["results"]
    assert etl["status"] == "error" and etl["dagster_status"] == "FAILURE"
    # The reason: the run, and what its failed step said.
    assert f"etl_job run {etl['run_id']} (partition 2025-11-16) ended FAILURE: game_events: SourceSchemaError: " \
           "source table 'events' does not exist" in etl["error"]
    assert heatmap["status"] == "skipped" and [(r["status"], r["sum"], r["run_id"]) for r in heatmap["results"]] == [
        ("skipped", None, None), ("skipped", None, None)]
    assert len(instance.get_run_records(filters=dg.RunsFilter(tags={REQUEST_TAG: request.id}))) == 1
    assert [r["date"] for r in table_rows(url, heatmaps)] == []  # never a zero row

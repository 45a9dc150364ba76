"""/metrics, /healthz and /readyz of the admin API, over real HTTP, against a real Dagster instance
(persistent, on disk) whose runs really materialized the assets, and a real warehouse."""

from __future__ import annotations

import datetime as dt
import time

import dagster as dg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from heatmap_pipeline.settings import load_settings
from heatmap_pipeline.trigger import store
from heatmap_pipeline.trigger.validation import TriggerSpec
from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.migrations import ensure_warehouse_schema
from heatmap_pipeline.web.app import create_app
from heatmap_pipeline.web.routers.metrics import todays_heatmap_age, totals_of_latest_loads
from heatmap_pipeline_tests.admin_servers import free_port, serve_in_thread
from heatmap_pipeline_tests.support import build_defs, event, materialize_heatmap, old_readme_sample, write_source_events


def scrape(base: str) -> dict[tuple[str, tuple], float]:
    response = httpx.get(f"{base}/metrics", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_totals_count_a_single_run_backfill_once_and_a_reloaded_day_by_its_latest_load():
    range_run = {"rows_extracted": 30, "dagster/row_count": 27, "rows_quarantined": 3, "quarantine_reasons": {"null_id": 3}}
    reload = {"rows_extracted": 12, "dagster/row_count": 12, "rows_quarantined": 0, "quarantine_reasons": {}}
    # Days 1 and 2 latest from the range run (its metadata repeated per day), day 3 re-loaded alone.
    totals = totals_of_latest_loads([("range", range_run), ("range", range_run), ("day3", reload)])
    assert totals == {"extracted": 42, "clean": 39, "quarantined": 3, "reasons": {"null_id": 3}}


def test_todays_heatmap_age_counts_from_midnight_until_the_first_write():
    now = dt.datetime(2026, 1, 10, 6, 30, tzinfo=dt.timezone.utc)
    assert todays_heatmap_age(now, None) == 6.5 * 3600
    assert todays_heatmap_age(now, now - dt.timedelta(minutes=2)) == 120.0


def test_metrics_and_health_over_http_from_a_real_instance(sqlite_url, monkeypatch, tmp_path):
    today = dt.datetime.now(dt.timezone.utc).date()
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    rows = old_readme_sample(dt.date(2025, 11, 16))
    rows += [event(now - dt.timedelta(minutes=1), {"x": 1.0, "y": 2.0}), event(now, {"x": "abc", "y": 1.0}),
             event(now, None)]
    write_source_events(sqlite_url, rows)
    defs = build_defs(monkeypatch, sqlite_url, HEATMAP_LEVELS="1,2")
    settings = load_settings({"DATABASE_URL": sqlite_url, "HEATMAP_LEVELS": "1,2", "ADMIN_API_KEY": "k",
                              "DAGSTER_GRAPHQL_URL": f"http://127.0.0.1:{free_port()}/graphql"})
    (tmp_path / "dagster_home").mkdir()
    # instance_for_test sets DAGSTER_HOME to its directory: the app's router opens the same instance.
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        for day in ("2025-11-16", today.isoformat()):
            assert defs.resolve_job_def("etl_job").execute_in_process(partition_key=day, instance=instance).success
        assert materialize_heatmap(defs, today.isoformat(), "1", instance=instance).success
        engine = get_engine(sqlite_url)
        ensure_warehouse_schema(engine)
        done = store.create_request(engine, TriggerSpec(("etl",), ("1",), today), "127.0.0.1")
        store.create_request(engine, TriggerSpec(("etl",), ("1",), today), "127.0.0.1")
        assert store.claim(engine, done.id, "etl", "test") and store.finish(engine, store.get_request(engine, done.id))

        app = create_app(settings)
        with serve_in_thread(app) as base:
            assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
            metrics = scrape(base)

            def value(name, **labels):
                return metrics[(name, tuple(sorted(labels.items())))]

            assert value("heatmap_pipeline_metrics_source_up", source="dagster") == 1
            assert value("heatmap_pipeline_metrics_source_up", source="warehouse") == 1
            assert value("dagster_runs", job="etl_job", status="SUCCESS") == 2
            assert value("dagster_runs", job="heatmap_job", status="SUCCESS") == 1
            assert value("dagster_runs", job="heatmap_job", status="FAILURE") == 0
            assert value("dagster_run_queue_depth") == 0
            for asset in ("game_events", "session_stats", "level_heatmaps"):
                assert time.time() - value("heatmap_pipeline_asset_last_materialization_timestamp_seconds", asset=asset) < 300
            assert value("heatmap_pipeline_todays_heatmap_age_seconds", level="1") < 300  # written just now
            midnight = dt.datetime.combine(today, dt.time(0), dt.timezone.utc)
            assert value("heatmap_pipeline_todays_heatmap_age_seconds", level="2") >= (
                dt.datetime.now(dt.timezone.utc) - midnight).total_seconds() - 60  # not written today: since midnight
            # 30 sample events + today's 3 (one clean, two quarantined)
            assert value("heatmap_pipeline_rows", kind="extracted") == 33
            assert value("heatmap_pipeline_rows", kind="clean") == 31
            assert value("heatmap_pipeline_rows", kind="quarantined") == 2
            assert value("heatmap_pipeline_rows_quarantined", reason="non_numeric_coordinate") == 1
            assert value("heatmap_pipeline_rows_quarantined", reason="null_payload") == 1
            assert value("events_received_total") == 33
            assert value("sessions_created_total") == 2  # session s1 on each of the two days
            assert value("heatmap_pipeline_admin_trigger_requests", state="done") == 1
            assert value("heatmap_pipeline_admin_trigger_requests", state="pending") == 1

            # Readiness: the database answers; no webserver listens, no daemon beats.
            ready = httpx.get(f"{base}/readyz", timeout=30)
            assert ready.status_code == 503 and ready.json()["status"] == "not ready"
            checks = ready.json()["checks"]
            assert checks["database"]["ok"] and not checks["dagster_webserver"]["ok"]
            assert "ConnectError" in checks["dagster_webserver"]["detail"]
            assert not checks["dagster_daemon"]["ok"] and "SENSOR (never)" in checks["dagster_daemon"]["detail"]

            # The daemons' heartbeats, as the daemon writes them: an old one is stale, by name.
            from dagster._daemon.types import DaemonHeartbeat

            for daemon in instance.get_required_daemon_types():
                instance.add_daemon_heartbeat(DaemonHeartbeat(time.time() - 600, daemon, "test"))
            checks = httpx.get(f"{base}/readyz", timeout=30).json()["checks"]
            assert "READYZ_MAX_HEARTBEAT_AGE_SECONDS=120s" in checks["dagster_daemon"]["detail"]
            assert "SCHEDULER (600s ago)" in checks["dagster_daemon"]["detail"]
            for daemon in instance.get_required_daemon_types():
                instance.add_daemon_heartbeat(DaemonHeartbeat(time.time(), daemon, "test"))
            assert httpx.get(f"{base}/readyz", timeout=30).json()["checks"]["dagster_daemon"]["ok"]
            assert 590 > scrape(base)[("dagster_daemon_heartbeat_age_seconds", (("daemon", "SENSOR"),))] >= 0


def test_metrics_report_an_unreadable_instance_and_keep_serving_the_warehouse(sqlite_url, monkeypatch, tmp_path):
    engine = get_engine(sqlite_url)
    ensure_warehouse_schema(engine)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # no instance to open
    app = create_app(load_settings({"DATABASE_URL": sqlite_url}))
    with serve_in_thread(app) as base:
        metrics = scrape(base)
    assert metrics[("heatmap_pipeline_metrics_source_up", (("source", "dagster"),))] == 0
    assert metrics[("heatmap_pipeline_metrics_source_up", (("source", "warehouse"),))] == 1
    assert not any(name == "dagster_runs" for name, _ in metrics)

"""The production instance (deploy/dagster.yaml): PostgreSQL storage, the run queue's limits,
pools, run monitoring and retries, and the whole stack running on it: webserver, daemon, admin API
and a Celery worker on RabbitMQ, as real processes against real databases.
"""

from __future__ import annotations

import datetime as dt
import re
import time

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
import yaml

from heatmap_pipeline.orchestration import WAREHOUSE_POOL
from heatmap_pipeline.warehouse.tables import game_events, heatmaps
from heatmap_pipeline_tests.admin_servers import CHROMIUM, browser_or_skip
from heatmap_pipeline_tests.prod_stack import DEPLOY, KEY, instance_env, production_stack
from heatmap_pipeline_tests.support import (
    build_defs,
    event,
    materialize_heatmap,
    old_readme_sample,
    table_rows,
    write_source_events,
)

BACKFILL_DAYS = ["2025-11-14", "2025-11-15", "2025-11-16"]


def _source_rows() -> list[dict]:
    rows = []
    for day in BACKFILL_DAYS:
        rows += old_readme_sample(dt.date.fromisoformat(day), n=10 + 10 * BACKFILL_DAYS.index(day))
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    for i in range(5):  # today's events, for the scheduled runs
        rows.append(event(now - dt.timedelta(minutes=i + 1), {"x": float(i), "y": 1.0, "level": "2"}))
    return rows


# --- the instance config, loaded by a real DagsterInstance ---------------------------------------


@pytest.mark.postgres
def test_deploy_dagster_yaml_is_a_postgres_instance_with_the_old_limits(postgres_url, tmp_path, monkeypatch):
    (tmp_path / "dagster.yaml").write_text((DEPLOY / "dagster.yaml").read_text())
    for key, value in instance_env(postgres_url).items():
        monkeypatch.setenv(key, value)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert type(instance.run_launcher).__name__ == "CeleryRunLauncher"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        concurrency = instance.get_concurrency_config()
        queue = concurrency.run_queue_config
        assert queue.max_concurrent_runs == 8
        assert queue.tag_concurrency_limits == [  # max_instances=1: one run per partition key
            {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
        ]
        assert concurrency.pool_config.default_pool_limit == 4
        assert instance.run_monitoring_enabled and instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 300
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert instance.scheduler.max_catchup_runs == 1  # coalesce=True
        raw = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
        assert "run_queue" not in raw and raw["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"

        # Runs recorded in PostgreSQL, their steps in the warehouse pool (so the pool limit applies).
        assert WAREHOUSE_POOL not in instance.event_log_storage.get_concurrency_keys()
        defs = build_defs(monkeypatch, f"sqlite:///{tmp_path / 'game.sqlite'}")
        write_source_events(f"sqlite:///{tmp_path / 'game.sqlite'}", old_readme_sample())
        defs.resolve_job_def("etl_job").execute_in_process(partition_key="2025-11-16", instance=instance)
        result = materialize_heatmap(defs, "2025-11-16", "1", instance=instance)
        assert result.success
        assert {defs.resolve_assets_def(name).op.pool for name in ("game_events", "session_stats", "level_heatmaps")} == {
            WAREHOUSE_POOL
        }
        pool = instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL)
        assert (pool.limit, pool.using_default_limit, pool.claimed_slots) == (4, True, [])  # claimed, then freed
        assert WAREHOUSE_POOL in instance.event_log_storage.get_concurrency_keys()  # created by the steps' claims
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        runs = conn.execute(sa.text("SELECT pipeline_name, status FROM runs ORDER BY create_timestamp")).all()
    engine.dispose()
    assert [tuple(r) for r in runs] == [("etl_job", "SUCCESS"), ("heatmap_job", "SUCCESS")]


# --- the stack: webserver, daemon, admin API and a Celery worker on the instance --------------

LAUNCH_RUN = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
LAUNCH_BACKFILL = """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }"""
BACKFILL_RUNS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
  ... on PartitionBackfill { status runs(limit: 10) { runId } } } }"""
LOCATION = {"repositoryLocationName": "heatmap_pipeline", "repositoryName": "__repository__"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with production_stack(tmp_path_factory.mktemp("prod"), _source_rows()) as running:
        yield running


def _step_pids(stack, run_ids) -> dict[str, int]:
    """The pid each run executed its steps in, from its own event log in PostgreSQL."""
    engine = sa.create_engine(stack.instance_db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT run_id, event FROM event_logs WHERE dagster_event_type = 'ENGINE_EVENT' "
                        "AND run_id = ANY(:ids)"), {"ids": list(run_ids)}).all()
    finally:
        engine.dispose()
    pids = {}
    for run_id, text in rows:
        found = re.search(r"Executing steps in process \(pid: (\d+)\)", text)
        if found:
            pids[run_id] = int(found.group(1))
    return pids


def _launch_heatmap(stack, day: str, level: str) -> str:
    tags = [{"key": "dagster/partition", "value": f"{day}|{level}"},
            {"key": "dagster/partition/date", "value": day}, {"key": "dagster/partition/level", "value": level}]
    result = stack.graphql(LAUNCH_RUN, {"params": {"selector": {**LOCATION, "jobName": "heatmap_job"},
                                                    "executionMetadata": {"tags": tags}}})["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


@pytest.mark.slow
def test_scheduled_and_triggered_runs_complete_with_their_records_in_postgres(stack):
    # The schedules' midnight tick (queued before the daemon started): ETL of yesterday and today and
    # the freshness checks; the daemon's run queue launched them. Heatmaps are no schedule: yesterday's
    # follow its ETL (heatmap_refresh_sensor), today's wait for the next HEATMAP_INTERVAL_MINUTES tick.
    today = dt.datetime.now(dt.timezone.utc).date()
    scheduled = stack.wait_for_runs(stack.scheduled_run_ids)
    assert len(scheduled) == 3 and set(scheduled.values()) == {"SUCCESS"}, scheduled
    refreshed = stack.wait_for_runs(_runs_tagged(stack, "heatmap_refresh_sensor", 2))
    assert len(refreshed) == 2 and set(refreshed.values()) == {"SUCCESS"}, refreshed

    # A triggered run: the old endpoint, through the admin API and the webserver's GraphQL.
    response = httpx.post(f"{stack.admin_url}/admin/run-jobs", headers={"x-api-key": KEY},
                          json={"tasks": ["heatmap"], "levels": ["2"]}, timeout=60)
    assert response.status_code == 200 and response.json()["status"] == "ok", response.text
    [triggered] = response.json()["run_ids"].values()

    runs = {r["run_id"]: r for r in stack.dagster_runs()}  # the PostgreSQL runs table
    assert runs[triggered]["status"] == "SUCCESS" and runs[triggered]["pipeline_name"] == "heatmap_job"
    assert sorted(runs[run_id]["pipeline_name"] for run_id in stack.scheduled_run_ids) == ["etl_job"] * 2 + ["freshness_job"]
    assert {runs[run_id]["pipeline_name"] for run_id in refreshed} == {"heatmap_job"}
    engine = sa.create_engine(stack.instance_db_url)
    with engine.connect() as conn:
        tags = dict(conn.execute(sa.text("SELECT key, value FROM run_tags WHERE run_id = :id"), {"id": triggered}).all())
        schedule_tags = conn.execute(sa.text(
            "SELECT value, COUNT(*) FROM run_tags WHERE key = 'dagster/schedule_name' GROUP BY value")).all()
    engine.dispose()
    assert tags["heatmap_pipeline/trigger"] == "admin_api" and tags["dagster/partition"] == f"{today}|2"
    assert dict(schedule_tags) == {"etl_schedule": 2, "freshness_schedule": 1}
    totals = {(r["level"], r["date"]): r["total"] for r in table_rows(stack.warehouse_url, heatmaps)}
    assert totals[("2", today)] == 5.0  # today's five level-2 events


def _runs_tagged(stack, trigger: str, count: int, timeout: float = 60.0) -> list[str]:
    """The ids of ``count`` runs tagged heatmap_pipeline/trigger=``trigger``, once that many exist."""
    deadline = time.monotonic() + timeout
    engine = sa.create_engine(stack.instance_db_url)
    try:
        while True:
            with engine.connect() as conn:
                ids = conn.execute(sa.text("SELECT run_id FROM run_tags WHERE key = 'heatmap_pipeline/trigger' "
                                           "AND value = :v"), {"v": trigger}).scalars().all()
            if len(ids) >= count:
                return list(ids)
            assert time.monotonic() < deadline, f"only {len(ids)} {trigger} run(s) after {timeout}s"
            stack.check_alive()
            time.sleep(0.5)
    finally:
        engine.dispose()


@pytest.mark.slow
def test_celery_worker_runs_heatmaps_of_several_levels_and_a_three_day_etl_backfill(stack):
    backfill = stack.graphql(LAUNCH_BACKFILL, {"params": {
        "selector": {"partitionSetName": "etl_job_partition_set", "repositorySelector": LOCATION},
        "partitionNames": BACKFILL_DAYS}})["launchPartitionBackfill"]
    assert backfill["__typename"] == "LaunchBackfillSuccess", backfill
    # Date-only assets have BackfillPolicy.single_run(): the backfill is one run over the 3 days.
    deadline = time.monotonic() + 40
    while not (runs := stack.graphql(BACKFILL_RUNS, {"id": backfill["backfillId"]})["partitionBackfillOrError"]["runs"]):
        assert time.monotonic() < deadline, "the backfill daemon launched no run"
        time.sleep(0.5)
    etl_runs = [run["runId"] for run in runs]
    assert set(stack.wait_for_runs(etl_runs).values()) == {"SUCCESS"}
    [etl_run] = [r for r in stack.dagster_runs() if r["run_id"] in etl_runs]
    assert etl_run["pipeline_name"] == "etl_job"
    heatmap_runs = [_launch_heatmap(stack, BACKFILL_DAYS[-1], level) for level in ("1", "2")]
    assert set(stack.wait_for_runs(heatmap_runs).values()) == {"SUCCESS"}

    # The rows: each backfilled day's events, and the heatmaps of the last day.
    counts = {}
    for row in table_rows(stack.warehouse_url, game_events):
        counts[row["event_date"].isoformat()] = counts.get(row["event_date"].isoformat(), 0) + 1
    assert {day: counts.get(day) for day in BACKFILL_DAYS} == {"2025-11-14": 10, "2025-11-15": 20, "2025-11-16": 30}
    totals = {(r["level"], r["date"].isoformat()): r["total"] for r in table_rows(stack.warehouse_url, heatmaps)}
    assert totals[("1", "2025-11-16")] == 30.0 and totals[("2", "2025-11-16")] == 0.0

    # The work ran in the Celery worker's pool processes, not in the daemon that launched it.
    pids = _step_pids(stack, etl_runs + heatmap_runs)
    assert set(pids) == set(etl_runs + heatmap_runs)
    worker, daemon = stack.process_tree("worker"), stack.process_tree("daemon")
    assert set(pids.values()) <= worker - {stack.processes["worker"].pid}, (pids, worker)
    assert not set(pids.values()) & daemon


@pytest.mark.slow
def test_readyz_and_metrics_of_the_running_stack(stack):
    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + 30
    while (ready := httpx.get(f"{stack.admin_url}/readyz", timeout=30)).status_code != 200:
        assert time.monotonic() < deadline, ready.text  # the daemon's first heartbeats take a few seconds
        time.sleep(1)
    checks = ready.json()["checks"]
    assert all(check["ok"] for check in checks.values()) and set(checks) == {"database", "dagster_webserver", "dagster_daemon"}
    text = httpx.get(f"{stack.admin_url}/metrics", timeout=30).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("heatmap_pipeline_metrics_source_up", (("source", "dagster"),))] == 1
    assert samples[("dagster_runs", (("job", "etl_job"), ("status", "SUCCESS")))] >= 2  # the scheduled ETL runs
    heartbeats = {dict(labels)["daemon"]: value for (name, labels), value in samples.items()
                  if name == "dagster_daemon_heartbeat_age_seconds"}
    assert {"SCHEDULER", "SENSOR", "QUEUED_RUN_COORDINATOR"} <= set(heartbeats) and max(heartbeats.values()) < 120


# --- the Dagster UI in a real browser --------------------------------------------------------------


@pytest.mark.slow
def test_dagster_ui_in_chromium_shows_the_assets_partitions_and_a_heatmap_preview(stack, tmp_path):
    sync_playwright = browser_or_skip()
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    stack.wait_for_runs(stack.scheduled_run_ids)  # today's ETL, written by the scheduled run
    # Today's level-2 heatmap, through the old endpoint (its ETL is loaded, so the heatmap runs alone).
    response = httpx.post(f"{stack.admin_url}/admin/run-jobs", headers={"x-api-key": KEY},
                          json={"tasks": ["heatmap"], "levels": ["2"]}, timeout=60)
    assert response.status_code == 200 and response.json()["status"] == "ok", response.text
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            # Without credentials the front door refuses the UI: a 401 asking for Basic auth, which a
            # headless browser cannot answer.
            from playwright.sync_api import Error as BrowserError

            anonymous = browser.new_context()
            with pytest.raises(BrowserError, match="ERR_INVALID_AUTH_CREDENTIALS"):
                anonymous.new_page().goto(stack.ui_url)
            assert anonymous.request.get(stack.ui_url).status == 401
            anonymous.close()
            # Basic auth, as a browser's login prompt sends it: any user name, the key as password.
            context = browser.new_context(http_credentials={"username": "operator", "password": KEY},
                                          viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(20000)
            try:
                assert page.goto(f"{stack.ui_url}/asset-groups/game_analytics/list").status == 200
                for asset in ("game_events", "session_stats", "level_heatmaps"):
                    page.get_by_text(asset, exact=True).first.wait_for()
                # The graph's nodes: every day since PARTITION_START_DATE; level_heatmaps x 2 levels.
                days = (dt.date.fromisoformat(today) - dt.date(2025, 1, 1)).days + 1
                page.get_by_text(f"{days * 2:,} partitions", exact=True).first.wait_for()
                assert page.get_by_text(f"{days:,} partitions", exact=True).count() == 2  # game_events, session_stats
                page.screenshot(path=shots / "1-assets.png")

                # level_heatmaps: its date and level dimensions.
                page.goto(f"{stack.ui_url}/assets/level_heatmaps?view=partitions")
                page.locator("input[placeholder^='Filter by date']").wait_for()
                page.locator("input[placeholder^='Filter by level']").wait_for()
                page.get_by_text(f"{days * 2:,} Partitions Selected").wait_for()
                page.screenshot(path=shots / "2-partitions.png")

                # A materialized heatmap (today's level 2: five events) and its PNG preview.
                page.goto(f"{stack.ui_url}/assets/level_heatmaps?view=partitions&partition={today}|2")
                page.get_by_text("[Show Markdown]").first.click()
                preview = page.locator(f"img[alt='heatmap level 2 {today}'][src^='data:image/png;base64']")
                preview.wait_for()
                width = preview.evaluate("img => img.complete ? img.naturalWidth : 0")
                assert width > 100  # the PNG decoded and rendered, not a broken image
                page.screenshot(path=shots / "3-heatmap-preview.png")
            except Exception:
                page.screenshot(path=shots / "failure.png")  # what the browser showed, for the failure report
                raise
        finally:
            browser.close()
    assert sorted(p.name for p in shots.iterdir()) == ["1-assets.png", "2-partitions.png", "3-heatmap-preview.png"]
    print(f"screenshots in {shots}")

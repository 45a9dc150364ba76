"""Issue 10 through the endpoint's own path: POST /admin/run-jobs (uvicorn in a thread) decides
"loaded?" and launches through the real authenticated Dagster webserver's GraphQL.

No daemon runs, so admin_trigger_sensor never touches these requests: every decision and launch is
the endpoint's. The instance uses the DefaultRunCoordinator, so the webserver starts each launched
run at once (the embedded default queues runs for the daemon).
"""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
from dagster._core.instance.ref import InstanceRef

from heatmap_pipeline.defs.partitions import date_partitions
from heatmap_pipeline.orchestration import TRIGGER_TAG, game_events_status
from heatmap_pipeline.settings import load_settings
from heatmap_pipeline.trigger.graphql import DagsterGraphQL
from heatmap_pipeline.trigger.plan import REQUEST_TAG
from heatmap_pipeline.warehouse.tables import heatmaps
from heatmap_pipeline.web.app import create_app
from heatmap_pipeline_tests.admin_servers import free_port, serve_in_thread, stop, wait_until_answering
from heatmap_pipeline_tests.support import old_readme_sample, table_rows, write_source_events

ROOT = Path(__file__).resolve().parents[1]
KEY = "loads-first-key"
LAUNCH_AT_ONCE = """\
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
telemetry:
  enabled: false
"""


@pytest.mark.slow
def test_endpoint_runs_the_etl_first_for_a_never_loaded_day_and_reports_a_failed_one(tmp_path):
    source_url = f"sqlite:///{tmp_path / 'game.sqlite'}"
    write_source_events(source_url, old_readme_sample())  # 30 events on 2025-11-16, level 1
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(LAUNCH_AT_ONCE)
    port = free_port()
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "DATABASE_URL": source_url,
           "HEATMAP_PIPELINE_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(dagster_home),
           "HEATMAP_LEVELS": "1,2", "ADMIN_API_KEY": KEY, "DB_RETRY_MAX_RETRIES": "0"}
    settings = load_settings({**env, "DAGSTER_GRAPHQL_URL": f"http://127.0.0.1:{port}/graphql",
                              "ADMIN_WAIT_TIMEOUT_SECONDS": "240"})
    graphql = DagsterGraphQL(settings.dagster_graphql_url, KEY)
    logs = open(tmp_path / "webserver.log", "w")
    webserver = subprocess.Popen([sys.executable, "-m", "heatmap_pipeline.runtime.cli", "webserver", "--port", str(port)],
                                 env=env, cwd=ROOT, stdout=logs, stderr=subprocess.STDOUT)
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/server_info", webserver)
        with serve_in_thread(create_app(settings)) as api:
            def post(body: dict) -> dict:
                response = httpx.post(f"{api}/admin/run-jobs", json=body, headers={"x-api-key": KEY}, timeout=300)
                assert response.status_code == 200, response.text
                return response.json()

            # 1. Heatmap only, the day never loaded: the ETL runs first and the sum is the true one.
            assert graphql.game_events_status("2025-11-16") is None
            body = post({"tasks": ["heatmap"], "levels": ["1"], "date": "2025-11-16"})
            assert body["status"] == "ok", body
            assert body["tasks"] == ["heatmap"] and body["levels"] == ["1"]
            etl, heatmap = body["results"]
            assert (etl["status"], etl["job"], etl["date"]) == ("ok", "etl", "2025-11-16") and etl["run_id"]
            assert etl["reason"] == "added before the heatmap: game_events 2025-11-16 was never materialized; " \
                                    "a heatmap would read no rows"
            assert heatmap["status"] == "ok" and [(r["level"], r["sum"]) for r in heatmap["results"]] == [("1", 30.0)]
            runs = graphql.execute(
                "query($f: RunsFilter){ runsOrError(filter: $f) { ... on Runs { results { runId pipelineName tags { key value } } } } }",
                {"f": {"tags": [{"key": REQUEST_TAG, "value": body["request_id"]}]}})["runsOrError"]["results"]
            assert sorted(run["pipelineName"] for run in runs) == ["etl_job", "heatmap_job"]
            for run in runs:  # launched by the endpoint through GraphQL, not by the sensor
                assert {"key": TRIGGER_TAG, "value": "admin_api"} in run["tags"]

            # 2. ETL only: no heatmap levels in the answer.
            body = post({"tasks": ["etl"], "date": "2025-11-16"})
            assert body["status"] == "ok" and body["levels"] == [] and [r["job"] for r in body["results"]] == ["etl"]
            assert "reason" not in body["results"][0]

            # 3. Heatmap only, and the ETL it needs fails: error with the reason, heatmap skipped, no zero row.
            with sa.create_engine(source_url).begin() as conn:
                conn.execute(sa.text("ALTER TABLE events RENAME TO events_moved_away"))
            body = post({"tasks": ["heatmap"], "levels": ["1", "2"], "date": "2025-11-15"})
            assert body["status"] == "error" and body["state"] == "error"
            etl, heatmap = body["results"]
            assert etl["status"] == "error" and etl["reason"].startswith("added before the heatmap: game_events 2025-11-15")
            assert f"etl_job run {etl['run_id']} (partition 2025-11-15) ended FAILURE: game_events: SourceSchemaError: " \
                   "source table 'events' does not exist" in etl["error"]
            assert body["error"] == etl["error"]
            assert heatmap["status"] == "skipped" and all(r["run_id"] is None and r["sum"] is None for r in heatmap["results"])
        assert {(r["level"], r["date"].isoformat()) for r in table_rows(source_url, heatmaps)} == {("1", "2025-11-16")}

        # The endpoint (GraphQL) and the sensor (instance) read the same status for every case.
        with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home))) as instance:
            dates = date_partitions(settings)
            for day, expected in [("2025-11-14", None), ("2025-11-15", "FAILED"), ("2025-11-16", "MATERIALIZED")]:
                assert graphql.game_events_status(day) == expected
                assert game_events_status(instance, dates, day) == expected
    finally:
        graphql.close()
        stop(webserver)
        logs.close()

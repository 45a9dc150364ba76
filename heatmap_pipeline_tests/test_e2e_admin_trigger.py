"""End to end: ``heatmap-pipeline dev`` (daemon, authenticated webserver, admin API) on free ports,
a temporary DAGSTER_HOME and SQLite data; the old README's curl and PowerShell calls verbatim
(only the port differs), DagsterGraphQLClient with and without the key, and the heatmap rows."""

import datetime as dt
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

from heatmap_pipeline.trigger.plan import REQUEST_TAG
from heatmap_pipeline.defs.partitions import heatmap_partitions
from heatmap_pipeline.settings import load_settings
from heatmap_pipeline.warehouse.tables import heatmaps
from heatmap_pipeline_tests.admin_servers import free_port, stop, wait_until_answering
from heatmap_pipeline_tests.support import old_readme_sample, table_rows, write_source_events

KEY = "dev-admin-key"  # the old README's key
OLD_README_CURL = [
    """curl -X POST http://localhost:8000/admin/run-jobs \\
  -H "x-api-key: dev-admin-key" \\
  -H "Content-Type: application/json" \\
  -d '{}'""",
    """curl -X POST http://localhost:8000/admin/run-jobs \\
  -H "x-api-key: dev-admin-key" \\
  -H "Content-Type: application/json" \\
  -d '{"tasks":["heatmap"],"levels":["1"]}'""",
]
# Invoke-RestMethod -Method POST -Headers @{"x-api-key"="dev-admin-key"} -ContentType 'application/json' -Body ...
OLD_README_POWERSHELL_BODIES = ["{}", '{"tasks":["etl"]}', '{"tasks":["heatmap"],"levels":["1","2"],"date":"2025-11-15"}']


def base_env(tmp_path: Path, source_url: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "DATABASE_URL": source_url,
        "HEATMAP_PIPELINE_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "HEATMAP_LEVELS": "1,2",
        "ADMIN_API_KEY": f"{KEY},rotated-key",
        "ADMIN_SENSOR_INTERVAL_SECONDS": "2",
        "ADMIN_WAIT_TIMEOUT_SECONDS": "240",
        "ETL_INTERVAL_MINUTES": "1440",  # keep the schedules' runs out of the way
        "HEATMAP_INTERVAL_MINUTES": "1440",
        "DB_RETRY_MAX_RETRIES": "0",
    }


def run_curl(command: str, port: int) -> dict:
    result = subprocess.run(["bash", "-c", command.replace("localhost:8000", f"localhost:{port}") + " -sS"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def invoke_rest_method(body: str, port: int) -> dict:
    """What PowerShell's Invoke-RestMethod of the old README sends (and it throws on non-2xx)."""
    response = httpx.post(f"http://localhost:{port}/admin/run-jobs", content=body.encode(),
                          headers={"x-api-key": KEY, "Content-Type": "application/json"}, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def assert_ok(body: dict, tasks: list[str], levels: list[str], date: str, etl_added: bool | None = False) -> None:
    """``etl_added``: whether a heatmap-only request ran the day's ETL first (issue 10: True for a day
    never loaded; None when a concurrent request may have loaded it already)."""
    assert body["status"] == "ok", body
    jobs = [item["job"] for item in body["results"]]
    added = "etl" not in tasks and jobs[:1] == ["etl"]
    if etl_added is not None:
        assert added == etl_added, body
    assert (jobs[1:] if added else jobs) == tasks
    assert body["tasks"] == tasks and body["levels"] == (levels if "heatmap" in tasks else [])
    if added:
        assert "was never materialized" in body["results"][0]["reason"] or "being materialized" in body["results"][0]["reason"]
    for item in body["results"]:
        assert item["status"] == "ok"
        if item["job"] == "etl":
            assert item["run_id"]
        else:
            assert [(r["level"], r["date"]) for r in item["results"]] == [(level, date) for level in levels]
            assert all(r["run_id"] and isinstance(r["sum"], float) for r in item["results"])


@pytest.mark.slow
def test_old_readme_calls_and_graphql_client_against_heatmap_pipeline_dev(tmp_path):
    source_url = f"sqlite:///{tmp_path / 'game.sqlite'}"
    write_source_events(source_url, old_readme_sample())
    env = base_env(tmp_path, source_url)
    ui_port, admin_port = free_port(), free_port()
    cli = [sys.executable, "-m", "heatmap_pipeline.runtime.cli"]
    logs = open(tmp_path / "servers.log", "w")

    # 1. Dagster is down: the admin API alone records the request and leaves it pending.
    admin_alone = subprocess.Popen([*cli, "admin", "--port", str(admin_port)], env={**env, "DAGSTER_UI_PORT": str(ui_port)},
                                   stdout=logs, stderr=subprocess.STDOUT)
    try:
        wait_until_answering(f"http://127.0.0.1:{admin_port}/healthz", admin_alone)
        early = httpx.post(f"http://127.0.0.1:{admin_port}/admin/run-jobs?wait=false", headers={"x-api-key": "rotated-key"},
                           json={"levels": ["2"], "date": "2025-11-14"}, timeout=30)
        assert early.status_code == 202 and early.json()["state"] == "pending", early.text
    finally:
        stop(admin_alone)

    # 2. The project's run command: daemon + authenticated webserver + admin API.
    dev = subprocess.Popen([*cli, "dev", "--port", str(ui_port), "--admin-port", str(admin_port)], env=env,
                           stdout=logs, stderr=subprocess.STDOUT)
    try:
        wait_until_answering(f"http://127.0.0.1:{ui_port}/server_info", dev)
        wait_until_answering(f"http://127.0.0.1:{admin_port}/healthz", dev)
        started = time.monotonic()
        today = dt.datetime.now(dt.timezone.utc).date().isoformat()
        with ThreadPoolExecutor(max_workers=6) as pool:
            curl_all, curl_heatmap = [pool.submit(run_curl, command, admin_port) for command in OLD_README_CURL]
            powershell = [pool.submit(invoke_rest_method, body, admin_port) for body in OLD_README_POWERSHELL_BODIES]
            sample_day = pool.submit(invoke_rest_method, '{"date":"2025-11-16"}', admin_port)
            assert_ok(curl_all.result(), ["etl", "heatmap"], ["1", "2"], today)
            # Today may be loaded by the concurrent requests before this one asks.
            assert_ok(curl_heatmap.result(), ["heatmap"], ["1"], today, etl_added=None)
            assert_ok(powershell[0].result(), ["etl", "heatmap"], ["1", "2"], today)
            assert_ok(powershell[1].result(), ["etl"], [], today)
            # 2025-11-15 was never loaded: its ETL runs first (issue 10).
            assert_ok(powershell[2].result(), ["heatmap"], ["1", "2"], "2025-11-15", etl_added=True)
            sample = sample_day.result()
        elapsed = time.monotonic() - started
        assert_ok(sample, ["etl", "heatmap"], ["1", "2"], "2025-11-16")
        assert [(r["level"], r["sum"]) for r in sample["results"][1]["results"]] == [("1", 30.0), ("2", 0.0)]
        rows = {(r["level"], r["date"].isoformat()): r["total"] for r in table_rows(source_url, heatmaps)}
        assert rows[("1", "2025-11-16")] == 30.0 and rows[("2", "2025-11-16")] == 0.0
        print(f"old README calls answered in {elapsed:.1f}s")

        # A partitioned (multi-partition) run launched by DagsterGraphQLClient with the key, of a day
        # loaded above (a heatmap of a day never loaded fails, issue 10).
        client = DagsterGraphQLClient("127.0.0.1", port_number=ui_port, headers={"x-api-key": KEY})
        tags = dict(heatmap_partitions(load_settings(env)).get_tags_for_partition_key("2025-11-16|1"))
        run_id = client.submit_job_execution("heatmap_job", tags=tags)

        # The request made while Dagster was down was launched by admin_trigger_sensor, once.
        early_id = early.json()["request_id"]
        deadline = time.monotonic() + 60
        while True:
            status = httpx.get(f"http://127.0.0.1:{admin_port}/admin/run-jobs/{early_id}",
                               headers={"x-api-key": KEY}, timeout=30).json()
            if status["state"] in ("done", "error") or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert status["status"] == "ok" and [r["status"] for r in status["results"]] == ["ok", "ok"], status
        early_runs = httpx.post(f"http://127.0.0.1:{ui_port}/graphql", headers={"x-api-key": KEY}, json={
            "query": "query($f: RunsFilter){ runsOrError(filter: $f) { ... on Runs { results { runId tags { key value } } } } }",
            "variables": {"f": {"tags": [{"key": REQUEST_TAG, "value": early_id}]}}}).json()["data"]["runsOrError"]["results"]
        assert {run["runId"] for run in early_runs} == set(status["run_ids"].values()) and len(early_runs) == 2
        for run in early_runs:  # launched by the daemon's sensor, with every partition tag
            tags = {tag["key"]: tag["value"] for tag in run["tags"]}
            assert tags["heatmap_pipeline/trigger"] == "admin_trigger_sensor"
        assert {"key": "dagster/partition/level", "value": "2"} in [t for run in early_runs for t in run["tags"]]

        # GraphQL: the run launched with the key (above) succeeded; without the key, 401.
        with pytest.raises(DagsterGraphQLClientError, match="401"):
            DagsterGraphQLClient("127.0.0.1", port_number=ui_port).submit_job_execution(
                "heatmap_job", tags={"dagster/partition": "2025-11-16|2"})
        with pytest.raises(DagsterGraphQLClientError, match="401"):
            DagsterGraphQLClient("127.0.0.1", port_number=ui_port, headers={"x-api-key": "wrong"}).get_run_status(run_id)
        deadline = time.monotonic() + 120
        while client.get_run_status(run_id).value not in ("SUCCESS", "FAILURE", "CANCELED") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert client.get_run_status(run_id).value == "SUCCESS"

        # The browser: Basic auth (any user, key as password) works and sets the cookie; nothing without.
        assert httpx.get(f"http://127.0.0.1:{ui_port}/").status_code == 401
        page = httpx.get(f"http://127.0.0.1:{ui_port}/", auth=("operator", KEY))
        assert page.status_code == 200 and "heatmap_pipeline_ui=" in page.headers["set-cookie"]

        # A failed run: the job says error (with the run and why to look), later tasks are skipped.
        with sa.create_engine(source_url).begin() as conn:
            conn.execute(sa.text("ALTER TABLE events RENAME TO events_moved_away"))
        failed = invoke_rest_method('{"date":"2025-11-13"}', admin_port)
        assert failed["status"] == "error" and "FAILURE" in failed["error"]
        etl_result, heatmap_result = failed["results"]
        assert etl_result["status"] == "error" and f"etl_job run {etl_result['run_id']}" in etl_result["error"]
        assert heatmap_result["status"] == "skipped" and all(r["run_id"] is None for r in heatmap_result["results"])

        # Each request launched each of its runs once (shared runs carry the first request's tag).
        for body in [sample, curl_all.result()]:
            graphql = httpx.post(f"http://127.0.0.1:{ui_port}/graphql", headers={"x-api-key": KEY}, json={
                "query": "query($f: RunsFilter){ runsOrError(filter: $f) { ... on Runs { results { runId } } } }",
                "variables": {"f": {"tags": [{"key": REQUEST_TAG, "value": body["request_id"]}]}}}).json()
            launched = {run["runId"] for run in graphql["data"]["runsOrError"]["results"]}
            assert launched <= set(body["run_ids"].values())
    finally:
        dev.terminate()
        try:
            dev.wait(timeout=30)
        finally:
            stop(dev)
            logs.close()
    assert dev.returncode is not None
    log_text = (tmp_path / "servers.log").read_text()
    assert "rotated-key" not in log_text and KEY not in log_text.replace("x-api-key", "")
    with sa.create_engine(source_url).connect() as conn:
        states = conn.execute(sa.text("SELECT state, COUNT(*) FROM admin_trigger_requests GROUP BY state")).all()
    assert dict(states) == {"done": 7, "error": 1}

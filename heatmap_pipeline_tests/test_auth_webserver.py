"""The real Dagster webserver as `heatmap-pipeline webserver` serves it, with
DAGSTER_UI_ANONYMOUS_READ_ONLY=true: anyone may read, only a key may launch."""

import os
import subprocess
import sys

import httpx
import pytest

from heatmap_pipeline_tests.admin_servers import free_port, stop, wait_until_answering

LAUNCH = """
mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
  __typename ... on Error { message } ... on LaunchRunSuccess { run { runId } } } }"""
PARAMS = {"selector": {"repositoryLocationName": "heatmap_pipeline", "repositoryName": "__repository__", "jobName": "etl_job"},
          "runConfigData": {}, "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "2025-11-16"}]}}


@pytest.mark.slow
def test_anonymous_read_only_ui_reads_but_cannot_launch(tmp_path):
    port = free_port()
    env = {"PATH": os.environ["PATH"], "HEATMAP_PIPELINE_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path / "dh"),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'game.sqlite'}", "ADMIN_API_KEY": "the-key",
           "DAGSTER_UI_ANONYMOUS_READ_ONLY": "true"}
    server = subprocess.Popen([sys.executable, "-m", "heatmap_pipeline.runtime.cli", "webserver", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    graphql = f"http://127.0.0.1:{port}/graphql"
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/server_info", server)
        assert httpx.post(graphql, json={"query": "{ version }"}, timeout=30).json()["data"]["version"].startswith("1.13")
        anonymous = httpx.post(graphql, json={"query": LAUNCH, "variables": {"p": PARAMS}}, timeout=60).json()
        assert anonymous["data"]["launchRun"]["__typename"] == "UnauthorizedError"
        keyed = httpx.post(graphql, json={"query": LAUNCH, "variables": {"p": PARAMS}}, headers={"x-api-key": "the-key"},
                           timeout=60).json()
        assert keyed["data"]["launchRun"]["__typename"] == "LaunchRunSuccess", keyed
        report = httpx.post(f"http://127.0.0.1:{port}/report_asset_materialization/game_events", timeout=30)
        assert report.status_code == 401
    finally:
        stop(server)

"""run_failure_sensor: a real failed run (the source table is missing) is logged at ERROR with its
partition and reason, and POSTed to RUN_FAILURE_WEBHOOK_URL, received by a real local HTTP server."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline_tests.support import build_defs

USE_MEMORY_INSTANCE = True


@contextlib.contextmanager
def http_receiver(status: int = 200):
    """A local HTTP server recording the JSON bodies POSTed to it."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            received.append({"path": self.path, "body": json.loads(body)})
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def _failed_etl_run(defs, instance):
    result = defs.resolve_job_def("etl_job").execute_in_process(partition_key="2025-11-16", instance=instance,
                                                                 raise_on_error=False)
    assert not result.success
    return result


def _evaluate(defs, instance, result):
    sensor = defs.get_sensor_def("run_failure_sensor")
    failure = [e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE"][0]
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_sensor", dagster_instance=instance, dagster_run=result.dagster_run,
        dagster_event=failure,
    ).for_run_failure()
    return sensor(context)


def test_failed_run_is_logged_at_error_and_posted_to_the_webhook(sqlite_url, monkeypatch, instance, caplog):
    get_engine(sqlite_url).connect().close()  # no events table: the ETL fails
    with http_receiver() as (url, received):
        defs = build_defs(monkeypatch, sqlite_url, RUN_FAILURE_WEBHOOK_URL=f"{url}/hooks/secret-token",
                          DB_RETRY_MAX_RETRIES="0")
        result = _failed_etl_run(defs, instance)
        with caplog.at_level(logging.ERROR, logger="heatmap_pipeline.alerts"):
            _evaluate(defs, instance, result)
    [record] = [r for r in caplog.records if r.name == "heatmap_pipeline.alerts"]
    assert record.levelno == logging.ERROR
    assert "etl_job failed: partition 2025-11-16" in record.getMessage()
    assert "source table 'events' does not exist" in record.getMessage()
    [post] = received
    assert post["path"] == "/hooks/secret-token"
    body = post["body"]
    assert (body["job"], body["partition"], body["run_id"]) == ("etl_job", "2025-11-16", result.run_id)
    assert body["reason"].startswith("step game_events: ") and "source table 'events' does not exist" in body["reason"]
    assert body["run_url"].endswith(f"/runs/{result.run_id}") and "etl_job partition 2025-11-16" in body["text"]


def test_without_a_webhook_the_failure_is_only_logged_and_a_refusing_webhook_does_not_fail_the_tick(
    sqlite_url, monkeypatch, instance, caplog
):
    get_engine(sqlite_url).connect().close()
    defs = build_defs(monkeypatch, sqlite_url, DB_RETRY_MAX_RETRIES="0")
    result = _failed_etl_run(defs, instance)
    with caplog.at_level(logging.ERROR, logger="heatmap_pipeline.alerts"):
        _evaluate(defs, instance, result)
    assert any("partition 2025-11-16" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    with http_receiver(status=500) as (url, received):
        defs = build_defs(monkeypatch, sqlite_url, RUN_FAILURE_WEBHOOK_URL=url, DB_RETRY_MAX_RETRIES="0")
        _evaluate(defs, instance, result)  # no exception: the alert is logged, the tick goes on
    assert len(received) == 1


@pytest.mark.parametrize("value", ["ftp://hooks.example/x", "not a url", "http://:99999/x"])
def test_webhook_url_is_validated_without_echoing_it(value):
    from heatmap_pipeline.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="RUN_FAILURE_WEBHOOK_URL") as error:
        load_settings({"RUN_FAILURE_WEBHOOK_URL": value})
    assert value not in str(error.value)

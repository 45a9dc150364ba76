"""POST /admin/run-jobs through real HTTP (uvicorn on a free port), with a real SQLite warehouse.

The Dagster webserver is deliberately absent here (its URL points at a closed port): requests are
recorded and stay pending for admin_trigger_sensor. Launching real runs is test_e2e_admin_trigger.py.
"""

import datetime as dt
import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from heatmap_pipeline.web.app import create_app
from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.tables import admin_trigger_requests
from heatmap_pipeline.settings import load_settings
from heatmap_pipeline_tests.admin_servers import free_port, serve_in_thread

KEY, OLD_KEY = "dev-admin-key", "previous-key"


def admin_settings(tmp_path, **extra):
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'warehouse.sqlite'}",
        "HEATMAP_PIPELINE_HOME": str(tmp_path),
        "ADMIN_API_KEY": f"{KEY}, {OLD_KEY}",
        "DAGSTER_GRAPHQL_URL": f"http://127.0.0.1:{free_port()}/graphql",  # nothing listens: webserver down
        "ADMIN_WAIT_TIMEOUT_SECONDS": "1",
        **extra,
    }
    return load_settings(env)


@pytest.fixture
def settings(tmp_path):
    return admin_settings(tmp_path)


@pytest.fixture
def api(settings):
    with serve_in_thread(create_app(settings)) as url:
        yield url


def post(api, body: bytes | str = b"{}", key: str | None = KEY, path="/admin/run-jobs", **headers):
    if key is not None:
        headers["x-api-key"] = key
    headers.setdefault("content-type", "application/json")
    return httpx.post(api + path, content=body, headers=headers, timeout=30)


def rows(settings):
    with get_engine(settings.warehouse_url).connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(admin_trigger_requests)).mappings()]


def test_without_a_configured_key_the_endpoint_answers_503_saying_how_to_enable_it(tmp_path):
    settings = admin_settings(tmp_path, ADMIN_API_KEY="")
    with serve_in_thread(create_app(settings)) as url:
        response = post(url, key="anything")
    assert response.status_code == 503
    assert "Set ADMIN_API_KEY" in response.json()["detail"]


@pytest.mark.parametrize(
    "key, path",
    [
        (None, "/admin/run-jobs"),
        ("", "/admin/run-jobs"),
        ("wrong-key", "/admin/run-jobs"),
        (f"{KEY},{OLD_KEY}", "/admin/run-jobs"),
        (None, f"/admin/run-jobs?x-api-key={KEY}"),
        (None, f"/admin/run-jobs?api_key={KEY}"),
    ],
)
def test_missing_or_wrong_key_is_401_and_records_nothing(api, settings, key, path, caplog):
    caplog.set_level(logging.INFO, logger="heatmap_pipeline.admin")
    response = post(api, key=key, path=path)
    assert response.status_code == 401
    assert response.json() == {"detail": "Unauthorized: invalid API key"}
    assert KEY not in caplog.text and OLD_KEY not in caplog.text
    assert rows(settings) == []


def test_status_endpoint_needs_the_key_too(api):
    assert httpx.get(f"{api}/admin/run-jobs/whatever").status_code == 401


def test_both_rotated_keys_are_accepted_and_every_trigger_is_logged_without_the_key(api, settings, caplog):
    caplog.set_level(logging.INFO, logger="heatmap_pipeline.admin")
    first = post(api, b'{"tasks":["etl"],"date":"2025-11-16"}', key=KEY, path="/admin/run-jobs?wait=false")
    second = post(api, b'{"tasks":["heatmap"],"levels":["2"],"date":"2025-11-16"}', key=OLD_KEY, path="/admin/run-jobs?wait=false")
    assert first.status_code == second.status_code == 202
    ids = {first.json()["request_id"], second.json()["request_id"]}
    assert {row["id"] for row in rows(settings)} == ids
    assert f"admin trigger {first.json()['request_id']}: tasks=['etl'] partitions=['2025-11-16'] client=127.0.0.1" in caplog.text
    assert f"admin trigger {second.json()['request_id']}: tasks=['heatmap'] partitions=['2025-11-16|2'] client=127.0.0.1" in caplog.text
    assert KEY not in caplog.text and OLD_KEY not in caplog.text


def test_with_dagster_down_the_request_is_recorded_pending_and_answered_in_the_old_shape(api, settings):
    response = post(api, b"{}")  # waits ADMIN_WAIT_TIMEOUT_SECONDS=1, then answers
    assert response.status_code == 202
    body = response.json()
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    assert body["status"] == "pending" and body["state"] == "pending"
    assert "admin_trigger_sensor" in body["message"]
    assert body["results"] == [
        {"status": "pending", "job": "etl", "run_id": None, "date": today, "dagster_status": None},
        {"status": "pending", "job": "heatmap", "results": [
            {"level": level, "date": today, "sum": None, "run_id": None, "status": "pending", "dagster_status": None}
            for level in ("1", "2", "3")
        ]},
    ]
    [row] = rows(settings)
    # "launching" for the instant the background retry holds the claim; never launched.
    assert row["id"] == body["request_id"] and row["state"] in ("pending", "launching") and row["stage"] == "etl"
    assert row["run_ids"] == {}
    assert row["tasks"] == ["etl", "heatmap"] and row["levels"] == ["1", "2", "3"] and row["requester"] == "127.0.0.1"
    status = httpx.get(f"{api}{body['status_url']}", headers={"x-api-key": OLD_KEY})
    assert status.status_code == 202 and status.json()["request_id"] == body["request_id"]


def test_no_wait_answers_at_once(api):
    response = post(api, b'{"tasks":["etl"]}', path="/admin/run-jobs?wait=false")
    assert response.status_code == 202
    assert response.elapsed.total_seconds() < 1.0  # the wait mode would take ADMIN_WAIT_TIMEOUT_SECONDS
    assert response.json()["tasks"] == ["etl"]


def test_unknown_request_id_is_404(api):
    response = httpx.get(f"{api}/admin/run-jobs/no-such-request", headers={"x-api-key": KEY})
    assert response.status_code == 404 and "request_id" in response.json()["detail"]


@pytest.mark.parametrize(
    "body, path, status, fragment",
    [
        (b"tasks=etl", "/admin/run-jobs", 400, "body: is not valid JSON"),
        (b'["etl"]', "/admin/run-jobs", 422, "body: must be a JSON object"),
        (b'{"tasks":["cleanup"]}', "/admin/run-jobs", 422, "tasks[0]: 'cleanup' is not a known task; allowed: etl, heatmap"),
        (b'{"levels":["7"]}', "/admin/run-jobs", 422, "levels[0]: '7' is not a level in HEATMAP_LEVELS; allowed: 1, 2, 3"),
        (b'{"date":"2025-13-01"}', "/admin/run-jobs", 422, "date: '2025-13-01' is not a real calendar date"),
        (b'{"date":"2024-06-01"}', "/admin/run-jobs", 422, "before the first partition 2025-01-01"),
        (b'{"date":"2999-01-01"}', "/admin/run-jobs", 422, "after the last partition"),
        (b'{"tasks":"etl"}', "/admin/run-jobs", 422, "tasks: must be a JSON array of strings"),
        (b"{" + b" " * 70000 + b"}", "/admin/run-jobs", 413, "at most 65536 bytes"),
        (b"{}", "/admin/run-jobs?wait=maybe", 422, "wait: 'maybe' is not a boolean"),
        (b"{}", "/admin/run-jobs?wiat=false", 422, "wiat: is not a known query parameter; allowed: wait"),
        # Over Python's 4300-digit limit for int(): was a 500 (ValueError while parsing the JSON)
        (b'{"levels":[' + b"7" * 5000 + b"]}", "/admin/run-jobs", 422, "levels[0]: must be a string, got a JSON number"),
        (b'{"date":' + b"7" * 5000 + b"}", "/admin/run-jobs", 422, "date: 7777777777"),
        (b'{"tasks":["etl"],"x":-' + b"1" * 5000 + b"}", "/admin/run-jobs", 422, "x: is not a known field"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_field(api, settings, body, path, status, fragment):
    response = post(api, body, path=path)
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]
    assert rows(settings) == []


def test_odd_inputs_never_produce_a_500(api):
    odd = [b"null", b"0", b'"x"', b"{}" * 3, b'{"tasks":null,"levels":[],"date":""}', b'{"date":null,"levels":[null]}',
           b"\x00\x01", b'{"tasks":[{"a":1}]}', b'{"levels":["1","' + b"x" * 5000 + b'"]}', b"[" * 3000]
    for body in odd:
        response = post(api, body, path="/admin/run-jobs?wait=false")
        assert response.status_code < 500, (body[:40], response.status_code, response.text)
    chunked = httpx.post(f"{api}/admin/run-jobs", content=iter([b"{", b" " * 40000, b" " * 40000, b"}"]),
                         headers={"x-api-key": KEY}, timeout=30)
    assert chunked.status_code == 413  # no Content-Length: counted while reading


def test_request_headers_over_16_kb_are_refused_with_431_before_the_key_is_read(api, settings):
    for headers in ({"x-api-key": "k" * 1_000_000}, {"x-padding": "p" * 17_000}):
        response = post(api, b"{}", key=None, **headers)
        assert response.status_code == 431, response.text
        assert "at most 16384 bytes" in response.json()["detail"]
    assert post(api, b"{}", path="/admin/run-jobs?wait=false", **{"x-padding": "p" * 15_000}).status_code == 202
    assert len(rows(settings)) == 1


def test_openapi_schema_documents_the_endpoint(api):
    schema = httpx.get(f"{api}/openapi.json").json()
    operation = schema["paths"]["/admin/run-jobs"]["post"]
    body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert set(body_schema["properties"]) == {"tasks", "levels", "date"}
    assert {"200", "202", "401", "422", "503"} <= set(operation["responses"])
    assert "RunJobsResponse" in schema["components"]["schemas"]
    assert "/admin/run-jobs/{request_id}" in schema["paths"]


def test_openapi_body_schema_is_the_validating_model_with_this_deployments_levels(api):
    schema = httpx.get(f"{api}/openapi.json").json()
    body = schema["paths"]["/admin/run-jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["additionalProperties"] is False  # unknown fields are refused (422)

    def array(name):
        [option] = [o for o in body["properties"][name]["anyOf"] if o.get("type") == "array"]
        return option

    assert array("tasks")["items"]["enum"] == ["etl", "heatmap"] and array("tasks")["minItems"] == 1
    assert array("levels")["items"]["enum"] == ["1", "2", "3"] and array("levels")["minItems"] == 1  # HEATMAP_LEVELS
    [date] = [o for o in body["properties"]["date"]["anyOf"] if o.get("type") == "string"]
    assert date["format"] == "date" and date["pattern"] == r"^\d{4}-\d{2}-\d{2}$"
    assert "2025-01-01" in body["properties"]["date"]["description"]  # PARTITION_START_DATE
    # What the schema allows is accepted, and what it forbids is refused, by the same model.
    assert post(api, b'{"tasks":["heatmap"],"levels":["3"],"date":"2025-01-01"}', path="/admin/run-jobs?wait=false").status_code == 202
    assert post(api, b'{"levels":[]}').status_code == 422


def test_openapi_declares_the_response_model_and_the_key_scheme(api):
    schema = httpx.get(f"{api}/openapi.json").json()
    assert schema["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey", "in": "header", "name": "x-api-key",
        "description": schema["components"]["securitySchemes"]["ApiKey"]["description"],
    }
    for path, method in (("/admin/run-jobs", "post"), ("/admin/run-jobs/{request_id}", "get")):
        operation = schema["paths"][path][method]
        assert operation["security"] == [{"ApiKey": []}]
        for status in ("200", "202"):
            assert operation["responses"][status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/RunJobsResponse"}
    response = schema["components"]["schemas"]["RunJobsResponse"]
    assert {"status", "results", "request_id", "state", "status_url"} <= set(response["required"])
    assert "error" not in response["required"] and "message" not in response["required"]  # absent when they do not apply
    assert set(response["properties"]["results"]["items"]["discriminator"]["mapping"]) == {"etl", "heatmap"}
    assert "/healthz" not in schema["paths"]


@pytest.mark.parametrize(
    "body, path",
    [
        (b"tasks=etl", "/admin/run-jobs"),  # would be 400
        (b'{"levels":["7"]}', "/admin/run-jobs"),  # would be 422
        (b"{" + b" " * 70000 + b"}", "/admin/run-jobs"),  # would be 413
        (b"{}", "/admin/run-jobs?wait=maybe"),  # would be 422
    ],
)
def test_without_the_key_nothing_else_of_the_request_is_looked_at(api, settings, body, path):
    response = post(api, body, key="wrong-key", path=path)
    assert response.status_code == 401 and response.json() == {"detail": "Unauthorized: invalid API key"}
    assert rows(settings) == []


def test_every_admin_route_depends_on_the_key_check_first(api):
    from heatmap_pipeline.web.deps import require_api_key
    from heatmap_pipeline.web.routers import run_jobs

    # Every /admin path the app serves comes from the run-jobs router ...
    served = {(path, method.upper()) for path, item in httpx.get(f"{api}/openapi.json").json()["paths"].items()
              if path.startswith("/admin") for method in item}
    assert served == {(r.path, *r.methods) for r in run_jobs.router.routes}
    # ... and each of its routes resolves the key check before any other input (query, body, database).
    for route in run_jobs.router.routes:
        assert route.dependant.dependencies[0].call is require_api_key, route.path


def test_migrations_run_once_at_startup_before_any_request(tmp_path):
    settings = admin_settings(tmp_path)
    app = create_app(settings)
    assert not sa.inspect(get_engine(settings.warehouse_url)).has_table("admin_trigger_requests")  # create_app does not migrate
    with serve_in_thread(app):
        assert sa.inspect(get_engine(settings.warehouse_url)).has_table("admin_trigger_requests")


def test_an_unreachable_warehouse_stops_the_start_naming_the_variable(tmp_path):
    env = {"PATH": os.environ["PATH"], "HEATMAP_PIPELINE_HOME": str(tmp_path), "ADMIN_API_KEY": KEY,
           "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"}  # nothing listens there
    result = subprocess.run([sys.executable, "-m", "heatmap_pipeline.runtime.cli", "admin", "--port", str(free_port())],
                            env=env, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0  # uvicorn exits when the lifespan's startup fails
    assert "cannot create or migrate the warehouse tables" in result.stderr and "WAREHOUSE_DATABASE_URL" in result.stderr


def test_shutdown_closes_the_dagster_client(settings):
    app = create_app(settings)
    with serve_in_thread(app):
        assert not app.state.dagster._http.is_closed
    assert app.state.dagster._http.is_closed

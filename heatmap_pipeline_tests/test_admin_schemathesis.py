"""The running admin API (real uvicorn on a free port, real HTTP, with the key) against its own
OpenAPI schema, with schemathesis' Python API: bodies, query strings and ids the schema allows
must be accepted, those it forbids refused with a 4xx, no answer may be a 5xx, and every answer
must match its documented response schema.

The Dagster webserver is absent (its URL is a closed port), so accepted requests are recorded
pending for admin_trigger_sensor and answered 202: nothing is launched.
"""

import datetime as dt
import re

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from heatmap_pipeline.trigger.validation import parse_trigger_body
from heatmap_pipeline.web.app import create_app
from heatmap_pipeline_tests.admin_servers import serve_in_thread
from heatmap_pipeline_tests.test_admin_api import KEY, admin_settings

EXAMPLES_PER_MODE = 40  # per operation and mode: ~160 requests, about 10 s


@pytest.fixture(scope="module")
def running_api(tmp_path_factory):
    settings = admin_settings(tmp_path_factory.mktemp("schemathesis"), HEATMAP_LEVELS="1,2,3",
                              PARTITION_START_DATE=(dt.date.today() - dt.timedelta(days=40)).isoformat())
    with serve_in_thread(create_app(settings)) as url:
        yield url, settings


def _run(url: str, operation, mode: GenerationMode, **fixed) -> list[tuple[int, str]]:
    """Call ``operation`` with generated cases and validate every answer; returns (status, mode) seen."""
    seen = []

    @hypothesis_settings(max_examples=EXAMPLES_PER_MODE, deadline=None, database=None, derandomize=True,
                         phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    def check(case):
        response = case.call_and_validate(base_url=url, timeout=30)
        seen.append((response.status_code, mode.value))

    check()
    return seen


def test_the_running_admin_api_keeps_its_openapi_schema_both_ways(running_api):
    url, _settings = running_api
    config = SchemathesisConfig.from_dict({"auth": {"openapi": {"ApiKey": {"api_key": KEY}}}})
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)
    post, status = schema["/admin/run-jobs"]["POST"], schema["/admin/run-jobs/{request_id}"]["GET"]
    # Positive POSTs with ?wait=false: each would otherwise wait ADMIN_WAIT_TIMEOUT_SECONDS (1 s) for
    # the absent webserver. The wait values themselves are covered by the negative cases and below.
    seen = (_run(url, post, GenerationMode.POSITIVE, query={"wait": "false"}) + _run(url, post, GenerationMode.NEGATIVE)
            + _run(url, status, GenerationMode.POSITIVE) + _run(url, status, GenerationMode.NEGATIVE))
    statuses = {code for code, _mode in seen}
    assert max(statuses) < 500, sorted(statuses)
    assert 202 in statuses and 422 in statuses and 404 in statuses, sorted(statuses)  # the run exercised both sides


def test_the_schema_lists_exactly_the_dates_and_wait_values_the_server_takes(running_api):
    url, settings = running_api
    operation = httpx.get(f"{url}/openapi.json").json()["paths"]["/admin/run-jobs"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    [dates] = [o for o in body["properties"]["date"]["anyOf"] if o.get("type") == "string"]
    today = dt.datetime.now(dt.timezone.utc).date()
    assert dates["enum"][0] == settings.partition_start_date.isoformat() and dates["enum"][-1] == today.isoformat()
    rules = {"levels": settings.heatmap_levels, "first_date": settings.partition_start_date, "today": today}
    for day in dates["enum"]:
        assert parse_trigger_body(f'{{"date":"{day}"}}'.encode(), **rules).date.isoformat() == day
    [wait] = [p for p in operation["parameters"] if p["name"] == "wait"]
    pattern = re.compile(wait["schema"]["pattern"])
    for value in ("", "true", "TRUE", "False", "1", "0", "yes", "No", "on", "OFF", " true", "maybe", "true\n", "tru"):
        answer = httpx.post(f"{url}/admin/run-jobs", params={"wait": value}, content=b'{"levels":["9"]}',
                            headers={"x-api-key": KEY})
        # With a valid wait, the body's unknown level is what is refused; with an invalid one, wait is.
        refused_field = answer.json()["detail"].split(":")[0]
        assert refused_field == ("levels[0]" if pattern.fullmatch(value) else "wait"), (value, answer.text)

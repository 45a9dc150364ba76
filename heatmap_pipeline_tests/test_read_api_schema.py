"""The running read API against its own OpenAPI schema (schemathesis, as test_admin_schemathesis.py does
for the admin endpoint): values the schema forbids are refused with a 4xx, no answer is a 5xx, and every
answer (status, content type, body) matches what the schema documents.

Unlike the admin body, a schema-valid read may still be refused: OpenAPI cannot say "date, or from and
to", nor that 2025-02-30 is no day (any day may be asked for, so there is no enum of dates). Those are
the documented 400/422 answers, so the positive-data-acceptance check is left out here;
test_read_api.py checks what is accepted."""

import datetime as dt

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from heatmap_pipeline.web.app import create_app
from heatmap_pipeline_tests.admin_servers import serve_in_thread
from heatmap_pipeline_tests.read_api_data import put_kind, read_api_settings

EXAMPLES_PER_MODE = 25  # per operation and mode: 150 requests, a few seconds


@pytest.fixture(scope="module")
def running_reads(tmp_path_factory):
    home = tmp_path_factory.mktemp("read_schema")
    url = f"sqlite:///{home / 'warehouse.sqlite'}"
    for day in (dt.date(2025, 11, 15), dt.date(2025, 11, 16)):
        put_kind(url, "1", day, "positions", np.arange(6).reshape(2, 3))
    with serve_in_thread(create_app(read_api_settings(url, home, HEATMAP_READS_PUBLIC="true"))) as base:
        yield base


def _statuses(base: str, operation, mode: GenerationMode) -> list[int]:
    seen = []

    @hypothesis_settings(max_examples=EXAMPLES_PER_MODE, deadline=None, database=None, derandomize=True,
                         phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        seen.append(case.call_and_validate(base_url=base, timeout=30, excluded_checks=[positive_data_acceptance]).status_code)

    check()
    return seen


@pytest.mark.parametrize("path", ["/api/v1/heatmap", "/api/v1/heatmaps", "/api/v1/heatmaps/{level}/{span}.png"])
def test_the_read_routes_keep_their_openapi_schema(running_reads, path):
    schema = schemathesis.openapi.from_url(f"{running_reads}/openapi.json")
    operation = schema[path]["GET"]
    seen = _statuses(running_reads, operation, GenerationMode.POSITIVE) + _statuses(running_reads, operation, GenerationMode.NEGATIVE)
    assert max(seen) < 500, sorted(set(seen))
    assert any(400 <= status < 500 for status in seen), sorted(set(seen))  # the refusing side was exercised

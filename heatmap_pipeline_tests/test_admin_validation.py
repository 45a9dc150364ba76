"""The POST /admin/run-jobs body: the old defaults, and a message naming the field for each bad input."""

import datetime as dt
import json

import pytest

from heatmap_pipeline.trigger.validation import MAX_BODY_BYTES, InvalidTrigger, TriggerSpec, parse_trigger_body

LEVELS = ("1", "2", "3")
FIRST, TODAY = dt.date(2025, 1, 1), dt.date(2025, 11, 20)


def parse(body):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_trigger_body(raw, levels=LEVELS, first_date=FIRST, today=TODAY)


@pytest.mark.parametrize("body", [b"", b"  ", {}, {"tasks": None, "levels": None, "date": None}])
def test_empty_body_means_the_old_defaults(body):
    assert parse(body) == TriggerSpec(tasks=("etl", "heatmap"), levels=LEVELS, date=TODAY)


def test_old_readme_bodies():
    assert parse({"tasks": ["etl"]}) == TriggerSpec(("etl",), LEVELS, TODAY)
    assert parse({"tasks": ["heatmap"], "levels": ["1"]}) == TriggerSpec(("heatmap",), ("1",), TODAY)
    assert parse({"tasks": ["heatmap"], "levels": ["1", "2"], "date": "2025-11-15"}) == TriggerSpec(
        ("heatmap",), ("1", "2"), dt.date(2025, 11, 15)
    )


def test_tasks_run_etl_first_and_duplicates_collapse():
    assert parse({"tasks": ["heatmap", "etl", "heatmap"], "levels": ["2", "2"]}) == TriggerSpec(("etl", "heatmap"), ("2",), TODAY)


def test_date_bounds_are_the_partitions():
    assert parse({"date": "2025-01-01"}).date == FIRST
    assert parse({"date": "2025-11-20"}).date == TODAY


@pytest.mark.parametrize(
    "body, status, expected",
    [
        (b"{not json", 400, "body: is not valid JSON"),
        (b"{\"date\": \"\xc3\x28\"}", 400, "body: is not valid JSON (not UTF-8)"),
        (b"[" * 100000, 413, "body: is 100000 bytes; at most 65536"),
        (b"[" * 5000 + b"]" * 5000, 400, "nested too deeply"),
        ([], 422, "body: must be a JSON object"),
        ("etl", 422, "body: must be a JSON object with optional fields tasks, levels, date; got a JSON string"),
        ({"task": ["etl"]}, 422, "task: is not a known field; allowed fields: tasks, levels, date"),
        ({"tasks": "etl"}, 422, "tasks: must be a JSON array of strings"),
        ({"tasks": []}, 422, "tasks: must not be empty; allowed: etl, heatmap"),
        ({"tasks": ["etl", "backup"]}, 422, "tasks[1]: 'backup' is not a known task; allowed: etl, heatmap"),
        ({"tasks": [1]}, 422, "tasks[0]: must be a string, got a JSON number"),
        ({"levels": ["4"]}, 422, "levels[0]: '4' is not a level in HEATMAP_LEVELS; allowed: 1, 2, 3"),
        ({"levels": [1]}, 422, "levels[0]: must be a string, got a JSON number"),
        ({"levels": {"1": True}}, 422, "levels: must be a JSON array of strings, e.g. [\"1\", \"2\"]; got a JSON object"),
        ({"date": "16/11/2025"}, 422, 'date: "16/11/2025" is not a date; use YYYY-MM-DD'),
        ({"date": 20251116}, 422, "date: 20251116 is not a date; use YYYY-MM-DD"),
        ({"date": "2025-02-30"}, 422, "date: '2025-02-30' is not a real calendar date"),
        ({"date": "2024-12-31"}, 422, "date: 2024-12-31 is before the first partition 2025-01-01 (PARTITION_START_DATE)"),
        ({"date": "2025-11-22"}, 422, "date: 2025-11-22 is after the last partition 2025-11-20 (today, UTC)"),
    ],
)
def test_bad_input_names_the_field_and_what_is_allowed(body, status, expected):
    with pytest.raises(InvalidTrigger) as info:
        parse(body)
    assert info.value.status == status
    assert expected in str(info.value)


def test_body_of_exactly_the_limit_is_read():
    padding = " " * (MAX_BODY_BYTES - 2)
    assert parse(("{" + padding + "}").encode()).tasks == ("etl", "heatmap")

"""The request body of POST /admin/run-jobs: parse, apply the old defaults, validate. No Dagster here.

Every rejection is an :class:`InvalidTrigger` whose message names the field, the value and what
is allowed, and carries the HTTP status to answer (400 unreadable body, 413 too large, 422 invalid).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass

TASKS = ("etl", "heatmap")  # also the order they run in: ETL first, so heatmaps see its output
FIELDS = ("tasks", "levels", "date")
MAX_BODY_BYTES = 64 * 1024
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class InvalidTrigger(ValueError):
    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.status = status
        self.field = field
        self.message = message


@dataclass(frozen=True)
class TriggerSpec:
    """What one request asks for, defaults applied: tasks in run order, levels, the partition date."""

    tasks: tuple[str, ...]
    levels: tuple[str, ...]
    date: dt.date


def _json_type(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _string_list(value, field: str, allowed: tuple[str, ...], unknown_means: str) -> tuple[str, ...]:
    choices = ", ".join(allowed)
    if not isinstance(value, list):
        raise InvalidTrigger(422, field, f"must be a JSON array of strings, e.g. {json.dumps(list(allowed[:2]))}; got a JSON {_json_type(value)}")
    if not value:
        raise InvalidTrigger(422, field, f"must not be empty; allowed: {choices} (leave {field} out for all of them)")
    result: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidTrigger(422, f"{field}[{index}]", f"must be a string, got a JSON {_json_type(item)}; allowed: {choices}")
        if item not in allowed:
            raise InvalidTrigger(422, f"{field}[{index}]", f"{item[:64]!r} is not {unknown_means}; allowed: {choices}")
        if item not in result:
            result.append(item)
    return tuple(result)


def _date(value, first: dt.date, last: dt.date) -> dt.date:
    if not isinstance(value, str) or not _DATE_RE.match(value):
        shown = json.dumps(value)[:40]
        raise InvalidTrigger(422, "date", f"{shown} is not a date; use YYYY-MM-DD, e.g. {last.isoformat()}")
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidTrigger(422, "date", f"{value!r} is not a real calendar date; use YYYY-MM-DD") from None
    if day < first:
        raise InvalidTrigger(422, "date", f"{value} is before the first partition {first} (PARTITION_START_DATE); allowed {first} to {last}")
    if day > last:
        raise InvalidTrigger(422, "date", f"{value} is after the last partition {last} (today, UTC); allowed {first} to {last}")
    return day


def parse_trigger_body(
    body: bytes,
    *,
    levels: tuple[str, ...],
    first_date: dt.date,
    today: dt.date,
) -> TriggerSpec:
    """Validate a raw request body against the configured levels and the date partitions.

    An empty body or ``{}`` means the old defaults: both tasks, every level, today (UTC).
    ``null`` for a field also means its default, as in the old pydantic model.
    """
    if len(body) > MAX_BODY_BYTES:
        raise InvalidTrigger(413, "body", f"is {len(body)} bytes; at most {MAX_BODY_BYTES} bytes (64 KB) are accepted")
    data: object = {}
    if body.strip():
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else ("nested too deeply" if isinstance(exc, RecursionError) else "not UTF-8")
            raise InvalidTrigger(400, "body", f"is not valid JSON ({detail}); send an object like "
                                 '{"tasks": ["etl", "heatmap"], "levels": ["1"], "date": "2025-11-16"} or {}') from None
    if not isinstance(data, dict):
        raise InvalidTrigger(422, "body", f"must be a JSON object with optional fields {', '.join(FIELDS)}; got a JSON {_json_type(data)}")
    unknown = [key for key in data if key not in FIELDS]
    if unknown:
        raise InvalidTrigger(422, str(unknown[0])[:64], f"is not a known field; allowed fields: {', '.join(FIELDS)}")
    tasks = TASKS if data.get("tasks") is None else _string_list(data["tasks"], "tasks", TASKS, "a known task")
    chosen_levels = levels if data.get("levels") is None else _string_list(data["levels"], "levels", levels, "a level in HEATMAP_LEVELS")
    day = today if data.get("date") is None else _date(data["date"], first_date, today)
    return TriggerSpec(tasks=tuple(t for t in TASKS if t in tasks), levels=chosen_levels, date=day)

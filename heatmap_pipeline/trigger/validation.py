"""The request body of POST /admin/run-jobs: parse, validate, apply the old defaults. No Dagster, no HTTP framework.

:class:`RunJobsBody` is the one owner of what a body may hold: its field types and constraints
are both what pydantic enforces and what the OpenAPI schema shows (:func:`body_schema`). The two
rules that depend on the deployment, the levels of ``HEATMAP_LEVELS`` and the partition dates,
read the validation context that :func:`parse_trigger_body` passes.

Every rejection is an :class:`InvalidTrigger` whose message names the field, the value and what
is allowed, and carries the HTTP status to answer (400 unreadable body, 413 too large, 422 invalid).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, WithJsonSchema
from pydantic_core import PydanticCustomError

Task = Literal["etl", "heatmap"]
TASKS: tuple[str, ...] = get_args(Task)  # also the order they run in: ETL first, so heatmaps see its output
MAX_BODY_BYTES = 64 * 1024
# Longer JSON integers are kept as Decimal instead of int: Python refuses to convert strings of
# over 4300 digits to int (ValueError, "Exceeds the limit"), and no field here takes a number anyway.
_MAX_INT_DIGITS = 100
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
_DATE_RE = re.compile(DATE_PATTERN)
_OURS = "trigger_body"  # error type of the rules below, whose messages are final


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


@dataclass(frozen=True)
class TriggerRules:
    """The validation context: what this deployment accepts."""

    levels: tuple[str, ...]
    first_date: dt.date
    today: dt.date


def _rules(info: ValidationInfo) -> TriggerRules:
    rules = (info.context or {}).get("rules")
    if not isinstance(rules, TriggerRules):
        raise TypeError("validate RunJobsBody through parse_trigger_body, which passes the configured levels and dates")
    return rules


def _reject(message: str) -> PydanticCustomError:
    return PydanticCustomError(_OURS, "{message}", {"message": message})


def _json_type(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _json_int(digits: str) -> int | decimal.Decimal:
    return int(digits) if len(digits) <= _MAX_INT_DIGITS else decimal.Decimal(digits)


def _json_text(value: Any, limit: int = 40) -> str:
    """A value as the client wrote it, shortened, for messages (a long integer is a Decimal here)."""
    text = str(value) if isinstance(value, decimal.Decimal) else json.dumps(value)
    return text[:limit]


def _known_level(level: str, info: ValidationInfo) -> str:
    allowed = _rules(info).levels
    if level not in allowed:
        raise _reject(f"{level[:64]!r} is not a level in HEATMAP_LEVELS; allowed: {', '.join(allowed)}")
    return level


def _distinct(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _date_shaped(value: Any, info: ValidationInfo) -> Any:
    # pydantic alone would also take timestamps and "2025-11-16T00:00:00"; the old API took YYYY-MM-DD only.
    if value is not None and not (isinstance(value, str) and _DATE_RE.match(value)):
        raise _reject(f"{_json_text(value)} is not a date; use YYYY-MM-DD, e.g. {_rules(info).today.isoformat()}")
    return value


def _within_partitions(day: dt.date, info: ValidationInfo) -> dt.date:
    rules = _rules(info)
    if day < rules.first_date:
        raise _reject(f"{day} is before the first partition {rules.first_date} (PARTITION_START_DATE); "
                      f"allowed {rules.first_date} to {rules.today}")
    if day > rules.today:
        raise _reject(f"{day} is after the last partition {rules.today} (today, UTC); allowed {rules.first_date} to {rules.today}")
    return day


class RunJobsBody(BaseModel):
    """The optional JSON body of POST /admin/run-jobs (the old runner's fields). A missing field or
    ``null`` means its default; an empty body means ``{}``."""

    model_config = ConfigDict(extra="forbid")

    tasks: Annotated[list[Task], Field(min_length=1), AfterValidator(_distinct)] | None = Field(
        None, description='Jobs to run; they run in the order etl, then heatmap. Default: ["etl", "heatmap"].',
    )
    levels: Annotated[list[Annotated[str, AfterValidator(_known_level)]], Field(min_length=1), AfterValidator(_distinct)] | None = Field(
        None, description="Heatmap levels, each one of HEATMAP_LEVELS. Default: all of them.",
    )
    date: Annotated[dt.date, BeforeValidator(_date_shaped), AfterValidator(_within_partitions),
                  WithJsonSchema({"type": "string", "format": "date", "pattern": DATE_PATTERN})] | None = Field(
        None, description="The ETL and heatmap partition, YYYY-MM-DD (UTC), from PARTITION_START_DATE to today. Default: today.",
        examples=["2025-11-16"],
    )

    def spec(self, rules: TriggerRules) -> TriggerSpec:
        tasks = TASKS if self.tasks is None else self.tasks
        return TriggerSpec(
            tasks=tuple(task for task in TASKS if task in tasks),
            levels=rules.levels if self.levels is None else tuple(self.levels),
            date=rules.today if self.date is None else self.date,
        )


FIELDS: tuple[str, ...] = tuple(RunJobsBody.model_fields)


def partition_dates(first_date: dt.date, today: dt.date) -> list[str]:
    """Every date the body may name, oldest first: the daily partitions from first_date to today."""
    return [(first_date + dt.timedelta(days=offset)).isoformat() for offset in range((today - first_date).days + 1)]


def body_schema(levels: tuple[str, ...], first_date: dt.date, today: dt.date) -> dict:
    """RunJobsBody's JSON schema with this deployment's levels and dates filled in: exactly the
    bodies :func:`parse_trigger_body` accepts on ``today`` (a shape pattern alone would also allow
    days before PARTITION_START_DATE, after today, or like 2025-02-30, which are refused)."""
    schema = RunJobsBody.model_json_schema()
    level_list = next(option for option in schema["properties"]["levels"]["anyOf"] if option.get("type") == "array")
    level_list["items"]["enum"] = list(levels)
    date = schema["properties"]["date"]
    date["description"] = date["description"].replace("PARTITION_START_DATE", f"PARTITION_START_DATE ({first_date})")
    date_string = next(option for option in date["anyOf"] if option.get("type") == "string")
    date_string["enum"] = partition_dates(first_date, today)
    return schema


def _first(errors: list[dict]) -> dict:
    """The error to report: an unknown field first (it explains the others), then in field order."""
    order = {name: index for index, name in enumerate(FIELDS)}
    return min(errors, key=lambda e: (e["type"] != "extra_forbidden", order.get(e["loc"][0] if e["loc"] else "", -1)))


def _invalid(error: dict, rules: TriggerRules) -> InvalidTrigger:
    """The one message naming the field, for pydantic's first error."""
    loc, kind, value = error["loc"], error["type"], error["input"]
    if not loc:
        return InvalidTrigger(422, "body", f"must be a JSON object with optional fields {', '.join(FIELDS)}; got a JSON {_json_type(value)}")
    name = str(loc[0])
    if kind == "extra_forbidden":
        return InvalidTrigger(422, name[:64], f"is not a known field; allowed fields: {', '.join(FIELDS)}")
    field = name + "".join(f"[{index}]" for index in loc[1:])
    if kind == _OURS:
        return InvalidTrigger(422, field, error["msg"])
    if name == "date":  # the shape was checked first: what is left is a day that does not exist
        return InvalidTrigger(422, field, f"{value!r} is not a real calendar date; use YYYY-MM-DD")
    allowed = TASKS if name == "tasks" else rules.levels
    choices = ", ".join(allowed)
    if kind == "list_type":
        return InvalidTrigger(422, field, f"must be a JSON array of strings, e.g. {json.dumps(list(allowed[:2]))}; got a JSON {_json_type(value)}")
    if kind == "too_short":
        return InvalidTrigger(422, field, f"must not be empty; allowed: {choices} (leave {name} out for all of them)")
    if not isinstance(value, str):
        return InvalidTrigger(422, field, f"must be a string, got a JSON {_json_type(value)}; allowed: {choices}")
    if kind == "literal_error":
        return InvalidTrigger(422, field, f"{value[:64]!r} is not a known task; allowed: {choices}")
    return InvalidTrigger(422, field, error["msg"])


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
            data = json.loads(body, parse_int=_json_int)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else ("nested too deeply" if isinstance(exc, RecursionError) else "not UTF-8")
            raise InvalidTrigger(400, "body", f"is not valid JSON ({detail}); send an object like "
                                 '{"tasks": ["etl", "heatmap"], "levels": ["1"], "date": "2025-11-16"} or {}') from None
    rules = TriggerRules(levels=levels, first_date=first_date, today=today)
    try:
        model = RunJobsBody.model_validate(data, context={"rules": rules})
    except ValidationError as exc:
        raise _invalid(_first(exc.errors()), rules) from None
    return model.spec(rules)

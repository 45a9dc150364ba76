"""Raw ``events`` rows -> typed game events, or quarantined rows with a reason. No Dagster here.

Rules (the SQL fast path in ``warehouse/etl/sql_path.py`` implements the same ones and is tested against this):

* the payload must be a JSON object no larger than ``max_payload_bytes``;
* a *position event* (payload has ``x`` or ``y``, or ``event_type`` is a position type) needs
  both coordinates as finite numbers. Numeric strings are read as ``pd.to_numeric`` reads them:
  ASCII digits, an optional sign, point and exponent, whitespace around; not ``"1_000"``, not
  ``"١٢"`` (see :func:`parse_number`). ``-0.0`` is stored as ``0.0``, as the SQL path stores it;
* NaN and Infinity are not JSON: a text payload holding one anywhere but in ``x``, ``y``,
  ``score`` or ``final_score`` (which have reasons of their own) is ``unparseable_payload``, so
  every stored payload is valid JSON;
* a ``level`` named in the payload must be one of the configured levels (see
  :func:`normalize_level`: ``1``, ``1.0``, ``"1"`` and ``"1.0"`` are all level "1"); position
  events without one get ``default_level``;
* ``score`` / ``final_score``, when present, must be finite numbers;
* the timestamp must parse, lie within the years 1-9999 (so must ``created_at``: PostgreSQL holds
  ``infinity`` and year 10000, Python cannot), not before the first partition, fall on the
  partition's UTC day, and lie no further than the tolerance after the row's ``created_at`` (its
  arrival) nor after the run's clock;
* of several *valid* rows with one id, the first (rows arrive ordered by id, created_at) is
  kept and the others are quarantined as ``duplicate_id``.

A clean row's stored ``payload`` keeps only the members that are not typed columns
(``TYPED_PAYLOAD_KEYS``), as JSON text in one canonical form (:func:`slim_payload_text`), and is
NULL when nothing is left.

Clean rows plus quarantined rows always equal the rows given.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

REASONS = {
    "null_id": "the event has no id",
    "null_payload": "payload is NULL",
    "unparseable_payload": "payload is not valid JSON",
    "payload_not_object": "payload is JSON but not an object",
    "payload_too_large": "payload is larger than MAX_PAYLOAD_BYTES",
    "missing_coordinate": "a position event lacks x or y",
    "non_numeric_coordinate": "x or y is not a number",
    "non_finite_coordinate": "x or y is NaN or infinite",
    "unknown_level": "payload names a level not in HEATMAP_LEVELS",
    "invalid_score": "score or final_score is not a finite number",
    "null_timestamp": "timestamp is NULL",
    "unparseable_timestamp": "timestamp cannot be parsed",
    "timestamp_out_of_range": "timestamp or created_at is infinite or outside the years 1-9999",
    "timestamp_before_start": "timestamp falls before PARTITION_START_DATE, which no partition holds",
    "timestamp_outside_partition": "timestamp, read as UTC, falls on another day",
    "future_timestamp": "timestamp lies further in the future than FUTURE_TOLERANCE_MINUTES",
    "duplicate_id": "another valid row with the same id was kept",
}


class Rejected(Exception):
    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class CleaningRules:
    levels: frozenset[str]
    default_level: str
    position_event_types: frozenset[str] = frozenset({"move", "position"})
    max_payload_bytes: int = 65536
    future_cutoff: dt.datetime | None = None  # naive UTC; later timestamps are quarantined
    # A timestamp this far after the row's own created_at is from the future when it arrived.
    arrival_tolerance: dt.timedelta = dt.timedelta(minutes=10)
    # PARTITION_START_DATE: an earlier timestamp has no partition (the row is filed under its
    # arrival day, or this first day; see warehouse/source.py) and is quarantined.
    partition_start: dt.date | None = None


# The extraction (warehouse/source.py) hands a time the database holds but Python's datetime cannot
# (PostgreSQL's infinity, year 10000 or BC) as text in an extra column, the time column NULL: the
# driver would fail the whole day converting it. Quarantined rows keep the text in their raw row.
UNHOLDABLE_TIME_COLUMNS = {"timestamp": "timestamp_unholdable", "created_at": "created_at_unholdable"}
_CARRIERS = frozenset(UNHOLDABLE_TIME_COLUMNS.values())

# Text naming a time outside Python's datetime: infinity, a year of 5+ digits, signed, 0 or BC.
_OUT_OF_RANGE_TIME = re.compile(
    r"\s*(?:[+-]?infinity|[+-]\d{4,}-.*|\d{5,}-.*|0000-.*|.*\sBC)\s*", re.IGNORECASE | re.DOTALL
)


def to_utc_naive(value: Any, what: str = "timestamp") -> dt.datetime:
    """A timestamp from any driver (aware, naive-as-UTC, ISO text, epoch seconds) as naive UTC.

    Raises ``timestamp_out_of_range`` for a time Python cannot hold (infinite, outside the years
    1-9999, also after conversion to UTC), ``unparseable_timestamp`` for anything else not a time.
    """
    try:
        if isinstance(value, dt.datetime):
            parsed = value
        elif isinstance(value, str):
            text = value.strip()
            try:
                parsed = dt.datetime.fromisoformat(text)
            except ValueError:
                if _OUT_OF_RANGE_TIME.fullmatch(text):
                    raise OverflowError from None
                raise Rejected("unparseable_timestamp", f"{what} {value[:64]!r} is not ISO 8601") from None
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            parsed = dt.datetime.fromtimestamp(value, tz=dt.timezone.utc)
        elif isinstance(value, float) and math.isinf(value):
            raise OverflowError
        else:
            raise Rejected("unparseable_timestamp", f"{what} {value!r} is not a time")
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)
    except (OverflowError, OSError, ValueError):
        # fromtimestamp: OverflowError / OSError / ValueError past year 9999; astimezone: OverflowError
        raise Rejected("timestamp_out_of_range", f"{what} {str(value)[:64]!r} is outside the years 1-9999 (UTC)") from None
    return parsed


def _time_of(row: Mapping[str, Any], column: str) -> Any:
    """The row's ``column`` as given, or raise ``timestamp_out_of_range`` when the extraction could
    only hand it over as text (see ``UNHOLDABLE_TIME_COLUMNS``): then the column itself is NULL."""
    value = row.get(column)
    if value is None:
        carrier = UNHOLDABLE_TIME_COLUMNS[column]
        # (`in` first: a RowMapping's get() of a key it lacks, as on SQLite, goes through an exception)
        unholdable = row[carrier] if carrier in row else None
        if unholdable is not None:
            raise Rejected("timestamp_out_of_range", f"{column} {str(unholdable)[:64]!r} is outside the years 1-9999 (UTC)")
    return value


def normalize_level(value: Any, levels: frozenset[str] | None = None) -> str | None:
    """The level a payload names; None means it names none.

    A level is a name. A JSON number names the level written as that number (1, 1.0 and 1e0 are
    "1", 2.5 is "2.5"); so does a numeric string (``parse_number``'s rule) that is not itself one of
    ``levels``: "1.0" and " 01 " are "1", like the numbers. Other strings are their stripped text.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    if levels is not None and text in levels:
        return text
    try:
        number = parse_number(text)
    except ValueError:
        return text
    return normalize_level(number) if math.isfinite(number) else text


# What pd.to_numeric reads as a number: ASCII digits only (float() would also take "1_000" and
# "١٢"), an optional sign, decimal point and exponent, whitespace around; or an infinity.
_NUMERIC_TEXT = re.compile(r"[ \t\n\r\f\v]*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[ \t\n\r\f\v]*")
_NON_FINITE_TEXT = re.compile(r"[ \t\n\r\f\v]*[+-]?(?:inf|infinity|nan)[ \t\n\r\f\v]*", re.IGNORECASE)


def parse_number(text: str) -> float:
    """A numeric string as a float, strictly: ``ValueError`` unless it is a number by
    ``pd.to_numeric``'s rules (or nan / inf, which come back as such for the caller to refuse)."""
    if _NUMERIC_TEXT.fullmatch(text) or _NON_FINITE_TEXT.fullmatch(text):
        return float(text)
    raise ValueError(f"{text[:32]!r} is not a number")


def _number(value: Any, what: str, reason_non_numeric: str, reason_non_finite: str) -> float:
    if isinstance(value, bool):
        raise Rejected(reason_non_numeric, f"{what}={value!r} is a boolean, not a number")
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # a JSON integer beyond float range
            raise Rejected(reason_non_finite, f"{what} is an integer too large for a float") from None
    elif isinstance(value, str):
        try:
            number = parse_number(value)
        except ValueError:
            raise Rejected(reason_non_numeric, f"{what}={value[:32]!r} is not a number") from None
    else:
        raise Rejected(reason_non_numeric, f"{what}={str(value)[:32]!r} is not a number")
    if not math.isfinite(number):
        raise Rejected(reason_non_finite, f"{what}={value!r} is not finite")
    return number + 0.0  # -0.0 + 0.0 is 0.0: no negative zero (PostgreSQL's numeric has none)


# Payload members with a quarantine reason of their own when they are NaN or Infinity.
_TYPED_MEMBERS = frozenset({"x", "y", "score", "final_score"})


def _non_finite_member(payload: dict) -> str | None:
    """The first member, outside ``_TYPED_MEMBERS``, holding NaN or Infinity anywhere inside it."""

    def holds(value: Any) -> bool:
        if isinstance(value, float):
            return not math.isfinite(value)
        if isinstance(value, dict):
            return any(holds(v) for v in value.values())
        if isinstance(value, list):
            return any(holds(v) for v in value)
        return False

    return next((key for key, value in payload.items() if key not in _TYPED_MEMBERS and holds(value)), None)


# Payload members game_events holds in typed columns (x, y, level, score, final_score): the stored
# payload leaves them out.
TYPED_PAYLOAD_KEYS = ("x", "y", "level", "score", "final_score")


def _canonical_json(value: Any) -> str:
    """JSON text in PostgreSQL's ``jsonb`` output form, so the SQL fast path (``CAST(jsonb AS
    text)``) and this cleaner store the same bytes: object keys ordered by byte length, then
    bytes, ", " and ": " separators, non-ASCII as is, and numbers as decimals parsed exactly
    (``Decimal``) and printed without exponent (1.50 stays 1.50, 1e3 is 1000, -0.0 is 0.0)."""
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda item: (len(item[0].encode("utf-8", "surrogatepass")), item[0].encode("utf-8", "surrogatepass")))
        return "{" + ", ".join(f"{_canonical_json(k)}: {_canonical_json(v)}" for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_canonical_json(v) for v in value) + "]"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (from a \ud800 escape): only its escape is storable
            text = json.dumps(value)
        return text
    if value is True or value is False or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, decimal.Decimal) and value.is_finite():
        return format(abs(value) if value.is_zero() else value, "f")
    raise ValueError(f"{value!r} has no JSON form")


def slim_payload_text(payload: dict, payload_text: str) -> str | None:
    """The payload as ``game_events`` stores it: the members that are not typed columns, as
    canonical JSON text (:func:`_canonical_json`), or None when nothing else is left."""
    if all(key in TYPED_PAYLOAD_KEYS for key in payload):
        return None
    # parsed again, numbers as exact decimals (a float would print 1.50 as 1.5); duplicate keys: the last wins
    exact = json.loads(payload_text, parse_float=decimal.Decimal)
    return _canonical_json({key: value for key, value in exact.items() if key not in TYPED_PAYLOAD_KEYS})


def parse_payload(raw: Any, max_bytes: int) -> tuple[dict, str]:
    """Return the payload as a dict and as JSON text."""
    if raw is None:
        raise Rejected("null_payload", "payload is NULL")
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw).decode("utf-8", errors="replace")
    if isinstance(raw, str):
        size = len(raw) if len(raw) * 4 <= max_bytes else len(raw.encode("utf-8"))
        if size > max_bytes:
            raise Rejected("payload_too_large", f"payload is {size} bytes, over MAX_PAYLOAD_BYTES={max_bytes}")
        try:
            payload = json.loads(raw)
        except (ValueError, RecursionError):
            raise Rejected("unparseable_payload", f"payload is not JSON: {raw[:64]!r}") from None
        text = raw
        # Python's json reads NaN and Infinity, which are not JSON: stored, the payload would not parse.
        if ("NaN" in raw or "Infinity" in raw) and isinstance(payload, dict):
            member = _non_finite_member(payload)
            if member is not None:
                raise Rejected("unparseable_payload", f"payload member {member[:32]!r} holds NaN or Infinity, which is not JSON")
    else:
        payload = raw
        text = json.dumps(raw, default=str)
        if len(text.encode("utf-8")) > max_bytes:
            raise Rejected("payload_too_large", f"payload is over MAX_PAYLOAD_BYTES={max_bytes}")
    if not isinstance(payload, dict):
        raise Rejected("payload_not_object", f"payload is a JSON {type(payload).__name__}, not an object")
    return payload, text


def clean_event(row: Mapping[str, Any], partition_date: dt.date, rules: CleaningRules) -> dict:
    """One source row -> a ``game_events`` row, or raise :class:`Rejected`."""
    if row.get("id") is None:
        raise Rejected("null_id", "id is NULL")
    timestamp = _time_of(row, "timestamp")
    if timestamp is None:
        raise Rejected("null_timestamp", "timestamp is NULL")
    ts = to_utc_naive(timestamp)
    created = _time_of(row, "created_at")
    try:
        created_at = to_utc_naive(created, "created_at") if created is not None else None
    except Rejected as rejected:
        if rejected.reason == "timestamp_out_of_range":
            raise  # a time, but none Python can hold (nor game_events store)
        created_at = None  # created_at is informational; an odd one is not a reason to reject
    # (a difference, not created_at + tolerance, which overflows for a created_at in year 9999)
    if created_at is not None and ts - created_at > rules.arrival_tolerance:
        # judged against arrival, so re-running the partition later gives the same answer
        raise Rejected(
            "future_timestamp",
            f"timestamp {ts.isoformat()} is more than {rules.arrival_tolerance} after created_at {created_at.isoformat()}",
        )
    day = ts.date()
    if rules.partition_start is not None and day < rules.partition_start:
        raise Rejected(
            "timestamp_before_start",
            f"timestamp {ts.isoformat()} UTC is before PARTITION_START_DATE={rules.partition_start}",
        )
    if day != partition_date:
        raise Rejected("timestamp_outside_partition", f"timestamp {ts.isoformat()} UTC is not on {partition_date}")
    if rules.future_cutoff is not None and ts > rules.future_cutoff:
        raise Rejected("future_timestamp", f"timestamp {ts.isoformat()} is after {rules.future_cutoff.isoformat()}")
    payload, payload_text = parse_payload(row.get("payload"), rules.max_payload_bytes)

    x_raw, y_raw = payload.get("x"), payload.get("y")
    is_position = "x" in payload or "y" in payload or row.get("event_type") in rules.position_event_types
    x = y = None
    if is_position:
        if x_raw is None or y_raw is None:
            missing = " and ".join(name for name, v in (("x", x_raw), ("y", y_raw)) if v is None)
            raise Rejected("missing_coordinate", f"position event without {missing}")
        x = _number(x_raw, "x", "non_numeric_coordinate", "non_finite_coordinate")
        y = _number(y_raw, "y", "non_numeric_coordinate", "non_finite_coordinate")

    level = normalize_level(payload.get("level"), rules.levels)
    if level is not None and level not in rules.levels:
        raise Rejected("unknown_level", f"level {level!r} is not in HEATMAP_LEVELS ({','.join(sorted(rules.levels))})")
    if level is None and is_position:
        level = rules.default_level

    scores = {}
    for key in ("score", "final_score"):
        value = payload.get(key)
        scores[key] = None if value is None else _number(value, key, "invalid_score", "invalid_score")

    return {
        "event_date": partition_date,
        "event_id": str(row["id"]),
        "user_id": _text(row.get("user_id")),
        "session_id": _text(row.get("session_id")),
        "event_type": _text(row.get("event_type")),
        "event_name": _text(row.get("event_name")),
        "event_category": _text(row.get("event_category")),
        "ts": ts,
        "level": level,
        "x": x,
        "y": y,
        "score": scores["score"],
        "final_score": scores["final_score"],
        "payload": slim_payload_text(payload, payload_text),
        "created_at": created_at,
    }


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def raw_row_json(row: Mapping[str, Any]) -> str:
    """The source row as JSON text; a time handed over as text (``UNHOLDABLE_TIME_COLUMNS``) in its column."""
    raw = {key: row[key] for key in row.keys() if key not in _CARRIERS}
    for column, carrier in UNHOLDABLE_TIME_COLUMNS.items():
        if carrier in row and row[carrier] is not None:
            raw[column] = row[carrier]
    return json.dumps(raw, default=str, allow_nan=True)


class EventCleaner:
    """Cleans a partition's rows chunk by chunk; remembers the last kept id for de-duplication.

    Rows must arrive ordered by id (then created_at) so that duplicates are adjacent and
    memory stays constant however large the day is.
    """

    def __init__(self, partition_date: dt.date, rules: CleaningRules, now: dt.datetime):
        self.partition_date = partition_date
        self.rules = rules
        self.now = now
        self._last_kept_id: str | None = None
        self.extracted = 0

    def clean(self, rows: Iterable[Mapping[str, Any]]) -> tuple[list[dict], list[dict]]:
        clean_rows: list[dict] = []
        quarantined: list[dict] = []
        for row in rows:
            self.extracted += 1
            try:
                event = clean_event(row, self.partition_date, self.rules)
                if event["event_id"] == self._last_kept_id:
                    raise Rejected("duplicate_id", f"id {event['event_id']} was already kept")
            except Rejected as rejected:
                quarantined.append(
                    {
                        "partition_date": self.partition_date,
                        "source_event_id": None if row.get("id") is None else str(row.get("id")),
                        "reason": rejected.reason,
                        "detail": rejected.detail,
                        "raw_row": raw_row_json(row),
                        "quarantined_at": self.now,
                    }
                )
                continue
            self._last_kept_id = event["event_id"]
            clean_rows.append(event)
        return clean_rows, quarantined

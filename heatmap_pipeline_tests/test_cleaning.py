import datetime as dt
import json
import math

import pytest

from heatmap_pipeline.core.cleaning import REASONS, CleaningRules, EventCleaner, Rejected, clean_event

DAY = dt.date(2025, 11, 16)
TS = dt.datetime(2025, 11, 16, 10, 30)
RULES = CleaningRules(
    levels=frozenset({"1", "2", "3"}),
    default_level="1",
    max_payload_bytes=200,
    future_cutoff=dt.datetime(2025, 11, 16, 20, 0),
)


def row(payload, **overrides):
    base = {
        "id": 7,
        "user_id": "u",
        "session_id": "s",
        "event_type": "move",
        "event_name": "move",
        "event_category": "movement",
        "payload": payload if isinstance(payload, str) or payload is None else json.dumps(payload),
        "timestamp": TS,
        "created_at": TS,
    }
    base.update(overrides)
    return base


def reason_of(raw_row) -> str:
    with pytest.raises(Rejected) as rejected:
        clean_event(raw_row, DAY, RULES)
    return rejected.value.reason


def test_position_event_is_typed():
    event = clean_event(row({"x": 1.5, "y": "2", "level": 2}), DAY, RULES)
    assert (event["x"], event["y"], event["level"]) == (1.5, 2.0, "2")
    assert event["event_id"] == "7" and event["event_date"] == DAY and event["ts"] == TS


def test_position_without_level_gets_default_level():
    assert clean_event(row({"x": 1, "y": 2}), DAY, RULES)["level"] == "1"


@pytest.mark.parametrize("level, expected", [(3, "3"), (3.0, "3"), ("3", "3"), (" 2 ", "2")])
def test_level_forms_are_normalized(level, expected):
    assert clean_event(row({"x": 1, "y": 2, "level": level}), DAY, RULES)["level"] == expected


def test_non_position_event_keeps_scores_and_no_level():
    event = clean_event(row({"final_score": "120", "score": 80}, event_type="game_over"), DAY, RULES)
    assert (event["score"], event["final_score"], event["x"], event["level"]) == (80.0, 120.0, None, None)


def test_unknown_event_type_is_kept():
    assert clean_event(row({"anything": True}, event_type="brand_new_type"), DAY, RULES)["event_type"] == "brand_new_type"


@pytest.mark.parametrize(
    "raw_row, reason",
    [
        (row(None), "null_payload"),
        (row("{not json"), "unparseable_payload"),
        (row("[1, 2]"), "payload_not_object"),
        (row('"text"'), "payload_not_object"),
        (row({"pad": "x" * 300}), "payload_too_large"),
        (row({"x": 1}), "missing_coordinate"),
        (row({"y": 1}), "missing_coordinate"),
        (row({"x": None, "y": 2}), "missing_coordinate"),
        (row({"level": 1}), "missing_coordinate"),  # a "move" without coordinates
        (row({"x": "left", "y": 2}), "non_numeric_coordinate"),
        (row({"x": True, "y": 2}), "non_numeric_coordinate"),
        (row({"x": [1], "y": 2}), "non_numeric_coordinate"),
        (row('{"x": NaN, "y": 2}'), "non_finite_coordinate"),
        (row('{"x": 1, "y": Infinity}'), "non_finite_coordinate"),
        (row({"x": "inf", "y": 2}), "non_finite_coordinate"),
        (row({"x": 1, "y": 2, "level": 99}), "unknown_level"),
        (row({"score": "lots"}, event_type="score"), "invalid_score"),
        (row({"x": 1, "y": 2}, timestamp=None), "null_timestamp"),
        (row({"x": 1, "y": 2}, timestamp="yesterday-ish"), "unparseable_timestamp"),
        (row({"x": 1, "y": 2}, timestamp=dt.datetime(2025, 11, 17, 0, 0), created_at=dt.datetime(2025, 11, 17)),
         "timestamp_outside_partition"),
        # an hour after its own arrival: from the future, whatever the run's clock says
        (row({"x": 1, "y": 2}, timestamp=dt.datetime(2025, 11, 16, 12, 0), created_at=dt.datetime(2025, 11, 16, 11, 0)),
         "future_timestamp"),
        (row({"x": 1, "y": 2}, timestamp=dt.datetime(2099, 1, 1), created_at=TS), "future_timestamp"),
        (row({"x": 1, "y": 2}, timestamp=dt.datetime(2025, 11, 16, 23, 0)), "future_timestamp"),
        (row({"x": 1, "y": 2}, id=None), "null_id"),
    ],
)
def test_malformed_rows_are_rejected_with_reason(raw_row, reason):
    assert reason in REASONS
    assert reason_of(raw_row) == reason


def test_aware_and_text_timestamps_are_read_as_utc():
    aware = dt.datetime(2025, 11, 16, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert clean_event(row({"x": 1, "y": 1}, timestamp=aware), DAY, RULES)["ts"] == dt.datetime(2025, 11, 16, 10, 0)
    assert clean_event(row({"x": 1, "y": 1}, timestamp="2025-11-16T10:00:00Z"), DAY, RULES)["ts"] == dt.datetime(2025, 11, 16, 10)


def test_cleaner_keeps_first_valid_duplicate_and_accounts_for_every_row():
    rows = [
        row({"x": 1, "y": 1}, id=1),
        row(None, id=2),  # invalid copy: quarantined for its own reason
        row({"x": 2, "y": 2}, id=2),  # first valid copy of id 2: kept
        row({"x": 3, "y": 3}, id=2),  # second valid copy: duplicate
        row({"x": 4, "y": 4}, id=3),
    ]
    cleaner = EventCleaner(DAY, RULES, now=TS)
    clean, quarantined = cleaner.clean(rows[:2])
    clean2, quarantined2 = cleaner.clean(rows[2:])  # duplicates are found across chunks too
    clean, quarantined = clean + clean2, quarantined + quarantined2
    assert [(c["event_id"], c["x"]) for c in clean] == [("1", 1.0), ("2", 2.0), ("3", 4.0)]
    assert [(q["source_event_id"], q["reason"]) for q in quarantined] == [("2", "null_payload"), ("2", "duplicate_id")]
    assert cleaner.extracted == len(clean) + len(quarantined) == 5
    assert json.loads(quarantined[1]["raw_row"])["payload"] == json.dumps({"x": 3, "y": 3})


# --- strict numbers, as pd.to_numeric reads them (issue 11, point 4) ----------------------------

NUMERIC_TEXTS = [
    "1", "1.5", " 7 ", "\t7\n", "1e3", "1E3", "+5", "-5", ".5", "5.", "+.5", "-.5e1", "3.5e+2", "00012", "-0",
    "-0.0", "1e-400", "1_000", "1__0", "١٢", "١", "१२", "１２", "²", "0x10", "1,000", "1 000", "", "  ", "1e", "e3",
    "--1", "+-1", "1.2.3", ".", "+", "1.5f", "1d3", "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "INF", "1e400",
    "\u00a01", "1\u2003",
]


@pytest.mark.parametrize("text", NUMERIC_TEXTS)
def test_a_numeric_string_is_a_finite_number_exactly_when_pd_to_numeric_reads_one(text):
    pd = pytest.importorskip("pandas")
    try:
        reference = float(pd.to_numeric(pd.Series([text], dtype=object))[0])
    except ValueError:
        reference = math.nan  # refused
    raw = row({"x": text, "y": 1})
    if math.isfinite(reference):
        assert clean_event(raw, DAY, RULES)["x"] == reference
    else:
        assert reason_of(raw) in ("non_numeric_coordinate", "non_finite_coordinate")


@pytest.mark.parametrize(
    "payload, reason",
    [
        ({"x": "1_000", "y": 2}, "non_numeric_coordinate"),  # float() reads 1000
        ({"x": "١٢", "y": 2}, "non_numeric_coordinate"),  # float() reads 12
        ({"x": 1, "y": 2, "score": "1_0"}, "invalid_score"),
        ('{"x": 1, "y": 2, "speed": NaN}', "unparseable_payload"),  # would be stored, and not parse as JSON
        ('{"x": 1, "y": 2, "a": {"b": [Infinity]}}', "unparseable_payload"),
        ('{"x": 1, "y": 2, "level": NaN}', "unparseable_payload"),
        ('{"x": NaN, "y": 2}', "non_finite_coordinate"),  # x, y, score have reasons of their own
        ('{"x": 1, "y": 2, "final_score": -Infinity}', "invalid_score"),
        ({"x": 1, "y": 2, "level": "2.5"}, "unknown_level"),
    ],
)
def test_lenient_numbers_are_refused(payload, reason):
    assert reason_of(row(payload)) == reason


def test_nan_and_infinity_as_words_in_a_string_are_kept():
    event = clean_event(row('{"x": 1, "y": 2, "note": "NaN or Infinity"}'), DAY, RULES)
    assert json.loads(event["payload"])["note"] == "NaN or Infinity"


@pytest.mark.parametrize("payload", [{"x": -0.0, "y": "-0.0", "score": "-0"}, '{"x": -0.0, "y": -0, "score": -0.0}'])
def test_negative_zero_is_stored_as_zero(payload):
    event = clean_event(row(payload), DAY, RULES)
    assert [math.copysign(1.0, event[k]) for k in ("x", "y", "score")] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("level", [1, 1.0, 1e0, "1", " 1 ", "1.0", "01", "+1", "1e0"])
def test_a_level_as_a_string_or_a_number_is_the_same_level(level):
    assert clean_event(row({"x": 1, "y": 2, "level": level}), DAY, RULES)["level"] == "1"


def test_a_configured_level_name_is_taken_as_written_before_it_is_read_as_a_number():
    rules = CleaningRules(levels=frozenset({"1.0", "2"}), default_level="2")
    assert clean_event(row({"x": 1, "y": 2, "level": "1.0"}), DAY, rules)["level"] == "1.0"


# --- times Python cannot hold, times before the first partition (issue 11, points 1 and 2) -------


@pytest.mark.parametrize(
    "timestamp",
    ["infinity", "-infinity", "+Infinity", "10000-01-01 00:00:00", "294276-12-31 23:59:59+00", "0000-01-01",
     "0044-03-15 00:00:00+00 BC", "9999-12-31T23:00:00-05:00", "0001-01-01T00:30:00+01:00", 1e20, -1e13,
     float("inf"), dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(dt.timedelta(hours=-5)))],
)
def test_a_time_python_cannot_hold_is_quarantined_not_a_crash(timestamp):
    assert reason_of(row({"x": 1, "y": 2}, timestamp=timestamp, created_at=None)) == "timestamp_out_of_range"
    created = row({"x": 1, "y": 2}, created_at=timestamp)
    assert reason_of(created) == "timestamp_out_of_range"  # a created_at neither: it would be stored


def test_a_time_the_extraction_could_only_hand_over_as_text_is_quarantined_with_it_in_the_raw_row():
    raw = row({"x": 1, "y": 2}, timestamp=None, timestamp_unholdable="infinity")
    cleaner = EventCleaner(DAY, RULES, now=TS)
    clean, [quarantined] = cleaner.clean([raw])
    assert clean == [] and quarantined["reason"] == "timestamp_out_of_range"
    kept = json.loads(quarantined["raw_row"])
    assert kept["timestamp"] == "infinity" and "timestamp_unholdable" not in kept


def test_created_at_in_year_9999_does_not_overflow_the_tolerance():
    assert clean_event(row({"x": 1, "y": 2}, created_at=dt.datetime(9999, 12, 31, 23, 55)), DAY, RULES)["x"] == 1.0


def test_a_timestamp_before_the_first_partition_is_quarantined():
    rules = CleaningRules(levels=frozenset({"1"}), default_level="1", partition_start=dt.date(2025, 1, 1))
    with pytest.raises(Rejected) as rejected:
        clean_event(row({"x": 1, "y": 2}, timestamp=dt.datetime(1970, 1, 1), created_at=TS), DAY, rules)
    assert rejected.value.reason == "timestamp_before_start" and "PARTITION_START_DATE=2025-01-01" in rejected.value.detail


def test_the_stored_payload_keeps_only_what_is_not_a_typed_column():
    assert clean_event(row('{"x": 1, "y": 2, "level": 1, "score": 3}'), DAY, RULES)["payload"] is None
    kept = clean_event(row('{"x": 1, "y": 2, "zone": "b", "hp": 1.50, "a": {"z": 1e3, "b": -0.0}}'), DAY, RULES)
    # jsonb's text form: keys by length then bytes, decimals exactly as written, no exponent, no -0
    assert kept["payload"] == '{"a": {"b": 0.0, "z": 1000}, "hp": 1.50, "zone": "b"}'
    assert (kept["x"], kept["y"]) == (1.0, 2.0)

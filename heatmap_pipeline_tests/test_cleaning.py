import datetime as dt
import json

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

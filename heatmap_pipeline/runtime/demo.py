"""Deterministic synthetic telemetry for the embedded default (SQLite, no server needed).

Only used when DATABASE_URL is unset; it never writes into a configured database.
Time is cut into 10-minute slots; the events of a slot are a pure function of the slot's
index, so the demo is the same on every machine. :func:`top_up` inserts every event whose
timestamp has passed since the last call: 7 days of history the first time, then a trickle
as time goes by, so scheduled runs visibly change the heatmaps.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import random

import sqlalchemy as sa

from heatmap_pipeline.warehouse.migrations import ensure_source_schema
from heatmap_pipeline.warehouse.source import source_events_table, sqlite_timestamp_text

log = logging.getLogger(__name__)

SLOT = dt.timedelta(minutes=10)
EPOCH = dt.datetime(2020, 1, 1)
HISTORY_DAYS = 7
MAX_SESSION = dt.timedelta(hours=1)
# World bounds of the demo levels (xmin, xmax, ymin, ymax) and their hot spots.
LEVEL_WORLDS = {
    "1": ((0.0, 100.0, 0.0, 100.0), [(20, 80), (50, 50), (85, 15)]),
    "2": ((-50.0, 50.0, -50.0, 50.0), [(-30, -30), (0, 25), (35, -10)]),
    "3": ((0.0, 200.0, 0.0, 120.0), [(30, 100), (100, 60), (170, 20)]),
}
MALFORMED_KINDS = (
    "null_payload",
    "unparseable_payload",
    "payload_not_object",
    "missing_coordinate",
    "non_numeric_coordinate",
    "non_finite_coordinate",
    "unknown_level",
    "invalid_score",
    "null_timestamp",
)

demo_state = sa.Table(
    "demo_state",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("watermark", sa.String(32), nullable=False),
)


def _slot_index(moment: dt.datetime) -> int:
    return int((moment - EPOCH) / SLOT)


def _session_events(rng: random.Random, slot: int, k: int, start: dt.datetime, next_id) -> list[dict]:
    level = rng.choice(sorted(LEVEL_WORLDS))
    (x0, x1, y0, y1), hotspots = LEVEL_WORLDS[level]
    user = f"user-{rng.randrange(1, 60):03d}"
    session = f"demo-{slot}-{k}"
    x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
    target = rng.choice(hotspots)
    moment = start
    score = 0
    rows = []

    def emit(event_type, category, payload, name=None):
        rows.append(
            {
                "id": next_id(),
                "user_id": user,
                "session_id": session,
                "event_type": event_type,
                "event_name": name or event_type,
                "event_category": category,
                "payload": json.dumps(payload),
                "timestamp": sqlite_timestamp_text(moment),
                "created_at": sqlite_timestamp_text(moment + dt.timedelta(seconds=1)),
            }
        )

    emit("session_start", "session", {"level": int(level)})
    for _ in range(rng.randint(8, 60)):
        moment += dt.timedelta(seconds=rng.uniform(2, 40))
        if rng.random() < 0.08:
            target = rng.choice(hotspots)
        x += (target[0] - x) * 0.15 + rng.gauss(0, (x1 - x0) / 40)
        y += (target[1] - y) * 0.15 + rng.gauss(0, (y1 - y0) / 40)
        x, y = min(max(x, x0), x1), min(max(y, y0), y1)
        roll = rng.random()
        point = {"x": round(x, 2), "y": round(y, 2)}
        if roll < 0.08:
            emit("death", "combat", {**point, "level": int(level)})
        elif roll < 0.2:
            emit("jump", "movement", {**point, "level": level})
        elif roll < 0.3:
            score += rng.randint(10, 100)
            emit("score", "progress", {"score": score, "level": int(level)})
        elif roll < 0.33 and level == "1":
            emit("move", "movement", point)  # no level: lands on HEATMAP_DEFAULT_LEVEL
        else:
            emit("move", "movement", {**point, "level": int(level)})
    moment += dt.timedelta(seconds=5)
    emit("game_over", "session", {"final_score": score, "level": int(level)})
    return rows


def _malformed(kind: str, slot: int, moment: dt.datetime, next_id) -> dict:
    payloads = {
        "null_payload": None,
        "unparseable_payload": "{x: 1, y:",
        "payload_not_object": json.dumps([1, 2, 3]),
        "missing_coordinate": json.dumps({"x": 10.0, "level": 1}),
        "non_numeric_coordinate": json.dumps({"x": "left", "y": 3, "level": 1}),
        "non_finite_coordinate": '{"x": NaN, "y": 4, "level": 2}',
        "unknown_level": json.dumps({"x": 1, "y": 2, "level": 99}),
        "invalid_score": json.dumps({"score": "lots", "level": 3}),
        "null_timestamp": json.dumps({"x": 5, "y": 5, "level": 1}),
    }
    return {
        "id": next_id(),
        "user_id": "user-bad",
        "session_id": f"demo-bad-{slot}",
        "event_type": "move" if kind != "invalid_score" else "score",
        "event_name": kind,
        "event_category": "malformed",
        "payload": payloads[kind],
        "timestamp": None if kind == "null_timestamp" else sqlite_timestamp_text(moment),
        "created_at": sqlite_timestamp_text(moment),
    }


def events_for_slot(slot: int) -> list[dict]:
    """All events of the sessions that start in ``slot`` (some reach into later slots)."""
    rng = random.Random(slot * 7919 + 17)
    slot_start = EPOCH + slot * SLOT
    counter = iter(range(slot * 10_000, (slot + 1) * 10_000))
    next_id = lambda: next(counter)  # noqa: E731 - ids are unique per slot, deterministic
    # more players in the evening (UTC) than at night
    hour = slot_start.hour + slot_start.minute / 60
    sessions = 1 + int(2.5 * (1 + math.sin((hour - 14) / 24 * 2 * math.pi)) * rng.random())
    rows: list[dict] = []
    for k in range(sessions):
        start = slot_start + dt.timedelta(seconds=rng.uniform(0, SLOT.total_seconds()))
        rows.extend(_session_events(rng, slot, k, start, next_id))
    if slot % 5 == 0:  # a malformed row every 50 minutes, cycling through the kinds
        kind = MALFORMED_KINDS[(slot // 5) % len(MALFORMED_KINDS)]
        rows.append(_malformed(kind, slot, slot_start + dt.timedelta(seconds=30), next_id))
    return rows


def history_start(now: dt.datetime) -> dt.datetime:
    return dt.datetime.combine(now.date() - dt.timedelta(days=HISTORY_DAYS - 1), dt.time.min)


def top_up(engine: sa.Engine, now: dt.datetime | None = None) -> int:
    """Insert the demo events whose time has come since the last call. Returns rows inserted."""
    now = now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    ensure_source_schema(engine)
    demo_state.create(engine, checkfirst=True)
    with engine.begin() as conn:
        state = conn.execute(sa.select(demo_state.c.watermark).where(demo_state.c.id == 1)).scalar()
        watermark = dt.datetime.fromisoformat(state) if state else history_start(now)
        if now <= watermark:
            return 0
        first_slot = _slot_index(max(watermark - MAX_SESSION, history_start(now)))
        rows = []
        for slot in range(first_slot, _slot_index(now) + 1):
            for row in events_for_slot(slot):
                moment = dt.datetime.fromisoformat(row["timestamp"] or row["created_at"])
                if watermark <= moment < now and moment >= history_start(now):
                    rows.append(row)
        if rows:
            # untyped columns: the JSON text and timestamp text go in exactly as generated
            conn.execute(source_events_table().insert(), rows)
        values = {"watermark": now.isoformat()}
        if state:
            conn.execute(demo_state.update().where(demo_state.c.id == 1).values(values))
        else:
            conn.execute(demo_state.insert().values(id=1, **values))
    log.info("demo data: inserted %d synthetic events up to %s (DATABASE_URL unset: demo mode)", len(rows), now)
    return len(rows)


def first_day(engine: sa.Engine) -> dt.date | None:
    """The UTC day of the oldest demo event (the start of its week), or None before the first top-up."""
    if not sa.inspect(engine).has_table("events"):
        return None
    src = source_events_table()
    oldest = sa.select(sa.func.min(src.c.timestamp)).where(src.c.timestamp.op("GLOB")("[0-9][0-9][0-9][0-9]-*"))
    with engine.connect() as conn:
        value = conn.execute(oldest).scalar()
    return dt.date.fromisoformat(str(value)[:10]) if value else None

"""``session_stats`` for one day, and the old ``leaderboard_aggregates`` for the sessions seen that day."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from heatmap_pipeline.warehouse.tables import game_events, leaderboard_aggregates, session_stats
from heatmap_pipeline.warehouse.locks import lock_partition

NO_SESSION = "(none)"  # events without a session_id are summed under this id, not dropped
DEATH_EVENTS = ("death", "player_death")


@dataclass
class SessionResult:
    sessions: int
    events: int
    leaderboard_rows: int


def _session_key():
    return sa.func.coalesce(game_events.c.session_id, NO_SESSION)


def _best_score():
    score, final = game_events.c.score, game_events.c.final_score
    return sa.case((sa.and_(final.is_not(None), sa.or_(score.is_(None), final > score)), final), else_=score)


def build_session_rows(conn: sa.Connection, day: dt.date) -> list[dict]:
    session = _session_key().label("session_id")
    is_death = sa.or_(game_events.c.event_type.in_(DEATH_EVENTS), game_events.c.event_name.in_(DEATH_EVENTS))
    aggregates = conn.execute(
        sa.select(
            session,
            sa.func.min(game_events.c.user_id).label("user_id"),
            sa.func.min(game_events.c.ts).label("first_event_at"),
            sa.func.max(game_events.c.ts).label("last_event_at"),
            sa.func.count().label("event_count"),
            sa.func.max(_best_score()).label("max_score"),
            sa.func.max(game_events.c.final_score).label("final_score"),
            sa.func.sum(sa.case((is_death, 1), else_=0)).label("deaths"),
        )
        .where(game_events.c.event_date == day)
        .group_by(session)
    ).mappings()
    levels: dict[str, set[str]] = {}
    for session_id, level in conn.execute(
        sa.select(session, game_events.c.level)
        .where(game_events.c.event_date == day, game_events.c.level.is_not(None))
        .distinct()
    ):
        levels.setdefault(session_id, set()).add(level)
    rows = []
    for agg in aggregates:
        first, last = _as_datetime(agg["first_event_at"]), _as_datetime(agg["last_event_at"])
        rows.append(
            {
                "event_date": day,
                "session_id": agg["session_id"],
                "user_id": agg["user_id"],
                "first_event_at": first,
                "last_event_at": last,
                "duration_seconds": (last - first).total_seconds(),
                "event_count": int(agg["event_count"]),
                "max_score": agg["max_score"],
                "final_score": agg["final_score"],
                "levels_played": ",".join(sorted(levels.get(agg["session_id"], ()), key=_level_sort_key)),
                "deaths": int(agg["deaths"] or 0),
            }
        )
    return rows


def _as_datetime(value) -> dt.datetime:
    # SQLite hands aggregate results of DateTime columns back as text
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


def _level_sort_key(level: str):
    return (0, int(level), level) if level.isdigit() else (1, 0, level)


def replace_session_partition(warehouse: sa.Engine, day: dt.date, now: dt.datetime) -> SessionResult:
    """Recompute the day's ``session_stats`` and the touched sessions' leaderboard rows, in one transaction."""
    with warehouse.begin() as conn:
        lock_partition(conn, "session_stats", day)
        rows = build_session_rows(conn, day)
        conn.execute(session_stats.delete().where(session_stats.c.event_date == day))
        if rows:
            conn.execute(session_stats.insert(), rows)
        # A session can span midnight: its leaderboard row sums all of its days' session_stats.
        touched = sorted({r["session_id"] for r in rows} - {NO_SESSION})
        inserted = 0
        for start in range(0, len(touched), 1000):  # bounded IN lists
            batch = touched[start : start + 1000]
            conn.execute(leaderboard_aggregates.delete().where(leaderboard_aggregates.c.session_id.in_(batch)))
            totals = (
                sa.select(
                    session_stats.c.session_id,
                    sa.func.sum(session_stats.c.event_count),
                    sa.func.max(session_stats.c.max_score),
                    sa.literal(now, sa.DateTime()),
                )
                .where(session_stats.c.session_id.in_(batch))
                .group_by(session_stats.c.session_id)
            )
            inserted += conn.execute(
                leaderboard_aggregates.insert().from_select(["session_id", "event_count", "score_max", "updated_at"], totals)
            ).rowcount
    return SessionResult(sessions=len(rows), events=sum(r["event_count"] for r in rows), leaderboard_rows=inserted)

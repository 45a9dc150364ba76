"""``session_stats`` for one day, and the old ``leaderboard_aggregates`` for the sessions seen that day.

A full run rebuilds the day. A scheduled tick folds in only what the ETL recorded in
``session_stats_pending`` since (``update_session_partition``): the rows it added are merged into
their sessions' stored rows (every column is a min, max, sum or union, so adding rows never needs
the old ones), a session that lost a row is summed again from ``game_events``, and a full load of
the day asks for the whole day again.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from heatmap_pipeline.warehouse.tables import game_events, leaderboard_aggregates, session_stats, session_stats_pending
from heatmap_pipeline.warehouse.locks import lock_partition

NO_SESSION = "(none)"  # events without a session_id are summed under this id, not dropped
DEATH_EVENTS = ("death", "player_death")
WHOLE_DAY, WHOLE_SESSION = "*", ""  # session_stats_pending markers: rebuild the day / the session


@dataclass
class SessionResult:
    sessions: int  # session rows written
    events: int  # their events
    leaderboard_rows: int
    day_sessions: int  # session rows the day holds afterwards


def _session_key():
    return sa.func.coalesce(game_events.c.session_id, NO_SESSION)


def _best_score():
    score, final = game_events.c.score, game_events.c.final_score
    return sa.case((sa.and_(final.is_not(None), sa.or_(score.is_(None), final > score)), final), else_=score)


def _is_death():
    return sa.or_(game_events.c.event_type.in_(DEATH_EVENTS), game_events.c.event_name.in_(DEATH_EVENTS))


def build_session_rows(conn: sa.Connection, day: dt.date, sessions: list[str] | None = None) -> list[dict]:
    """The day's session rows summed from game_events; only ``sessions`` when given (at most ~1000)."""
    session = _session_key().label("session_id")
    where = [game_events.c.event_date == day]
    if sessions is not None:
        where.append(_session_key().in_(sessions))
    aggregates = conn.execute(
        sa.select(
            session,
            sa.func.min(game_events.c.user_id).label("user_id"),
            sa.func.min(game_events.c.ts).label("first_event_at"),
            sa.func.max(game_events.c.ts).label("last_event_at"),
            sa.func.count().label("event_count"),
            sa.func.max(_best_score()).label("max_score"),
            sa.func.max(game_events.c.final_score).label("final_score"),
            sa.func.sum(sa.case((_is_death(), 1), else_=0)).label("deaths"),
        )
        .where(*where)
        .group_by(session)
    ).mappings()
    levels: dict[str, set[str]] = {}
    for session_id, level in conn.execute(
        sa.select(session, game_events.c.level).where(*where, game_events.c.level.is_not(None)).distinct()
    ):
        levels.setdefault(session_id, set()).add(level)
    return [_session_row(day, agg, levels.get(agg["session_id"], ())) for agg in aggregates]


def _session_row(day: dt.date, agg, levels) -> dict:
    first, last = _as_datetime(agg["first_event_at"]), _as_datetime(agg["last_event_at"])
    return {
        "event_date": day,
        "session_id": agg["session_id"],
        "user_id": agg["user_id"],
        "first_event_at": first,
        "last_event_at": last,
        "duration_seconds": (last - first).total_seconds(),
        "event_count": int(agg["event_count"]),
        "max_score": agg["max_score"],
        "final_score": agg["final_score"],
        "levels_played": ",".join(sorted(set(levels), key=_level_sort_key)),
        "deaths": int(agg["deaths"] or 0),
    }


def merge_added_rows(conn: sa.Connection, day: dt.date, sessions: list[str]) -> list[dict]:
    """``sessions``' stored rows with their pending added rows folded in (SQL does the min/max, so
    text compares as in a full rebuild)."""
    pending = session_stats_pending
    added_where = [pending.c.event_date == day, pending.c.session_id.in_(sessions), pending.c.event_id != WHOLE_SESSION]
    added = sa.select(
        pending.c.session_id,
        pending.c.user_id,
        pending.c.ts.label("first_event_at"),
        pending.c.ts.label("last_event_at"),
        sa.literal(1).label("event_count"),
        pending.c.max_score,
        pending.c.final_score,
        pending.c.deaths,
    ).where(*added_where)
    stored = sa.select(
        session_stats.c.session_id,
        session_stats.c.user_id,
        session_stats.c.first_event_at,
        session_stats.c.last_event_at,
        session_stats.c.event_count,
        session_stats.c.max_score,
        session_stats.c.final_score,
        session_stats.c.deaths,
    ).where(session_stats.c.event_date == day, session_stats.c.session_id.in_(sessions))
    both = sa.union_all(added, stored).subquery()
    aggregates = conn.execute(
        sa.select(
            both.c.session_id,
            sa.func.min(both.c.user_id).label("user_id"),
            sa.func.min(both.c.first_event_at).label("first_event_at"),
            sa.func.max(both.c.last_event_at).label("last_event_at"),
            sa.func.sum(both.c.event_count).label("event_count"),
            sa.func.max(both.c.max_score).label("max_score"),
            sa.func.max(both.c.final_score).label("final_score"),
            sa.func.sum(both.c.deaths).label("deaths"),
        ).group_by(both.c.session_id)
    ).mappings()
    levels: dict[str, set[str]] = {}
    for session_id, played in conn.execute(
        sa.select(session_stats.c.session_id, session_stats.c.levels_played).where(
            session_stats.c.event_date == day, session_stats.c.session_id.in_(sessions)
        )
    ):
        levels.setdefault(session_id, set()).update(level for level in (played or "").split(",") if level)
    for session_id, level in conn.execute(
        sa.select(pending.c.session_id, pending.c.level).where(*added_where, pending.c.level.is_not(None)).distinct()
    ):
        levels.setdefault(session_id, set()).add(level)
    return [_session_row(day, agg, levels.get(agg["session_id"], ())) for agg in aggregates]


def _as_datetime(value) -> dt.datetime:
    # SQLite hands aggregate results of DateTime columns back as text
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


def _level_sort_key(level: str):
    return (0, int(level), level) if level.isdigit() else (1, 0, level)


def _refresh_leaderboard(conn: sa.Connection, sessions: set[str], now: dt.datetime) -> int:
    """Each session's leaderboard row, summed over all of its days' session_stats (a session can
    span midnight); return the rows written."""
    touched = sorted(sessions - {NO_SESSION})
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
    return inserted


def _lock_day(conn: sa.Connection, day: dt.date) -> None:
    # game_events' lock too: no ETL of the day may add pending rows between our read and our delete
    lock_partition(conn, "session_stats", day)
    lock_partition(conn, "game_events", day)


def _replace_day(conn: sa.Connection, day: dt.date, now: dt.datetime) -> SessionResult:
    rows = build_session_rows(conn, day)
    conn.execute(session_stats.delete().where(session_stats.c.event_date == day))
    if rows:
        conn.execute(session_stats.insert(), rows)
    conn.execute(session_stats_pending.delete().where(session_stats_pending.c.event_date == day))
    inserted = _refresh_leaderboard(conn, {r["session_id"] for r in rows}, now)
    return SessionResult(len(rows), sum(r["event_count"] for r in rows), inserted, day_sessions=len(rows))


def replace_session_partition(warehouse: sa.Engine, day: dt.date, now: dt.datetime) -> SessionResult:
    """Recompute the day's ``session_stats`` and the touched sessions' leaderboard rows, in one transaction."""
    with warehouse.begin() as conn:
        _lock_day(conn, day)
        return _replace_day(conn, day, now)


def update_session_partition(warehouse: sa.Engine, day: dt.date, now: dt.datetime) -> SessionResult:
    """A tick: fold what the ETL recorded since into the day's ``session_stats`` and the leaderboard
    rows of the sessions it touched (module docstring), in one transaction. A day with a full load
    pending is rebuilt; ``sessions``/``events`` count the sessions written and their events."""
    pending = session_stats_pending
    with warehouse.begin() as conn:
        _lock_day(conn, day)
        entries = conn.execute(sa.select(pending.c.session_id, pending.c.event_id).where(pending.c.event_date == day)).all()
        if any(session == WHOLE_DAY for session, _ in entries):
            return _replace_day(conn, day, now)
        recompute = sorted({session for session, event in entries if event == WHOLE_SESSION})
        merge = sorted({session for session, event in entries if event != WHOLE_SESSION} - set(recompute))
        rows: list[dict] = []
        for start in range(0, len(recompute), 1000):
            rows += build_session_rows(conn, day, recompute[start : start + 1000])
        for start in range(0, len(merge), 1000):
            rows += merge_added_rows(conn, day, merge[start : start + 1000])
        touched = recompute + merge
        for start in range(0, len(touched), 1000):
            batch = touched[start : start + 1000]
            conn.execute(session_stats.delete().where(session_stats.c.event_date == day, session_stats.c.session_id.in_(batch)))
        if rows:
            conn.execute(session_stats.insert(), rows)
        conn.execute(pending.delete().where(pending.c.event_date == day))
        inserted = _refresh_leaderboard(conn, set(touched), now)
        day_sessions = conn.execute(
            sa.select(sa.func.count()).select_from(session_stats).where(session_stats.c.event_date == day)
        ).scalar_one()
    return SessionResult(len(rows), sum(r["event_count"] for r in rows), inserted, day_sessions=int(day_sessions))


def mark_day_for_rebuild(conn: sa.Connection, day: dt.date) -> None:
    """A full load of ``day`` is coming: the next update rebuilds the day's session_stats."""
    lock_partition(conn, "game_events", day)
    conn.execute(session_stats_pending.delete().where(session_stats_pending.c.event_date == day))
    conn.execute(session_stats_pending.insert().values(event_date=day, session_id=WHOLE_DAY, event_id=""))


def session_key(session_id: str | None) -> str:
    return NO_SESSION if session_id is None else session_id


def pending_rows(day: dt.date, added: list[dict], lost: set[str]) -> list[dict]:
    """The ``session_stats_pending`` rows an ETL tick writes in its transaction: each added
    game_events row with what its session's stats need (``build_session_rows``' rules, in Python),
    and a marker for each session that lost a row (summed again from game_events)."""
    rows = []
    for row in added:
        score, final = row["score"], row["final_score"]
        rows.append(
            {
                "event_date": day,
                "session_id": session_key(row["session_id"]),
                "event_id": row["event_id"],
                "user_id": row["user_id"],
                "ts": row["ts"],
                "max_score": final if final is not None and (score is None or final > score) else score,
                "final_score": final,
                "deaths": int(row["event_type"] in DEATH_EVENTS or row["event_name"] in DEATH_EVENTS),
                "level": row["level"],
            }
        )
    for session in sorted(lost):
        rows.append({"event_date": day, "session_id": session, "event_id": WHOLE_SESSION, "user_id": None, "ts": None,
                     "max_score": None, "final_score": None, "deaths": None, "level": None})
    return rows


PENDING_COLUMNS = [c.name for c in session_stats_pending.columns]

"""Incremental heatmaps: after an ETL tick, a fixed-bounds heatmap adds the tick's changes to its
stored matrices instead of binning the whole day again. No Dagster here.

Every heatmap write records in ``heatmap_increments`` what its rows were computed from: the
day's generation and the newest ``position_changes.seq`` binned (``position_changes.py``), and a
fingerprint of the grid, the fixed bounds and the kinds. :func:`refresh_heatmap` then, in one
transaction holding the heatmap's and the day's locks:

1. applies only the changes after that seq, as signed counts on the same grid with the same
   kind rules as the full binning (``heatmaps.kinds_mask`` on the log's own columns, numpy's
   cell rule, which the PostgreSQL binning's ``width_bucket`` edges reproduce);
2. keeps each kind's distinct sessions exact with ``heatmap_kind_sessions`` (a kind's events per
   session; a session counts while it has any): only the touched sessions are read and written;
3. checks the result with the same rule as a full computation (matrix sum + out of bounds = the
   day's positions in ``position_stats``), writes the rows and the new mark, and deletes the
   applied changes.

It recomputes in full, and says why, when the level has automatic bounds (a new point can move
them: the whole grid changes), when nothing records the stored rows, when the day was loaded in
full since (another generation), when the grid, bounds or kinds changed, or when the increment
would not pass the consistency rule.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import sqlalchemy as sa

from heatmap_pipeline.core.binning import GridBounds, KindsAccumulator
from heatmap_pipeline.core.levels import DEFAULT_KINDS, POSITIONS, KindConfig
from heatmap_pipeline.warehouse import position_changes as changes_log
from heatmap_pipeline.warehouse.etl.writing import bulk_insert
from heatmap_pipeline.warehouse.heatmaps import (
    HeatmapResult,
    InconsistentHeatmap,
    KindHeatmap,
    compute_heatmap,
    heatmap_problems,
    kinds_mask,
    replace_heatmap_rows,
    upsert_heatmap,
)
from heatmap_pipeline.warehouse.locks import lock_partition
from heatmap_pipeline.warehouse.tables import heatmap_increments, heatmap_kind_sessions, heatmap_kinds, position_changes

FULL, INCREMENTAL = "full", "incremental"
AUTO_BOUNDS = "automatic bounds are recomputed from the day's own range"

# Sessions looked up per statement (bind parameters stay well under SQLite's limit).
_SESSION_CHUNK = 1000


class NeedsFullHeatmap(Exception):
    """The stored heatmap cannot take the changes; the message says why."""


@dataclass
class Refresh:
    result: HeatmapResult
    mode: str  # FULL or INCREMENTAL
    reason: str = ""  # FULL: why not incremental
    changes_applied: int = 0  # INCREMENTAL: position_changes rows folded in


def all_kinds(kinds: Sequence[KindConfig]) -> tuple[KindConfig, ...]:
    """The kinds in the order compute_heatmap bins them: positions first (bit 0)."""
    return (DEFAULT_KINDS[POSITIONS], *(k for k in kinds if k.name != POSITIONS))


def fingerprint(grid_x: int, grid_y: int, bounds: GridBounds | None, kinds: Sequence[KindConfig]) -> str:
    """The configuration a heatmap was binned with: increments apply only under the same one."""
    text = repr(
        (
            grid_x,
            grid_y,
            bounds.as_list() if bounds else None,
            [(k.name, sorted(k.event_types), sorted(k.payload_filter.items())) for k in all_kinds(kinds)],
        )
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _write_mark(conn: sa.Connection, result: HeatmapResult, print_: str, now: dt.datetime) -> None:
    conn.execute(
        heatmap_increments.delete().where(heatmap_increments.c.level == result.level, heatmap_increments.c.date == result.date)
    )
    conn.execute(
        heatmap_increments.insert().values(
            level=result.level,
            date=result.date,
            generation=result.changes.generation,
            applied_seq=result.changes.seq,
            fingerprint=print_,
            updated_at=now,
        )
    )
    changes_log.prune(conn, result.date, result.level, result.changes.seq)


def record_full(conn: sa.Connection, result: HeatmapResult, incremental_next: bool, now: dt.datetime) -> None:
    """With a full computation's rows, in their transaction: its mark, and (fixed bounds: the next
    run can be incremental) each kind's events per session.

    A result binned from an earlier generation of the day, or older than the stored rows' mark, is
    refused (:class:`InconsistentHeatmap`: the caller computes once more): writing it would lose
    the changes the stored run already applied and pruned."""
    day, level = result.date, result.level
    generation = changes_log.day_generation(conn, day)
    if result.changes.generation != generation:
        raise InconsistentHeatmap(f"game_events of {day} was loaded in full while the heatmap of level {level} was computed")
    stored = conn.execute(
        sa.select(heatmap_increments.c.generation, heatmap_increments.c.applied_seq).where(
            heatmap_increments.c.level == level, heatmap_increments.c.date == day
        )
    ).first()
    if stored is not None and stored.generation == generation and stored.applied_seq > result.changes.seq:
        raise InconsistentHeatmap(f"a newer heatmap of level {level} on {day} was written while this one was computed")
    conn.execute(heatmap_kind_sessions.delete().where(heatmap_kind_sessions.c.level == level, heatmap_kind_sessions.c.date == day))
    if incremental_next:
        rows = [
            {"level": level, "date": day, "kind": kind, "session_id": session, "events": n}
            for kind, sessions in result.session_events.items()
            for session, n in sessions.items()
        ]
        bulk_insert(conn, heatmap_kind_sessions, rows, ["level", "date", "kind", "session_id", "events"])
    grid_y = result.rows
    print_ = fingerprint(result.grid_x, grid_y, result.bounds if result.bounds_source == "fixed" else None, result.kind_order)
    _write_mark(conn, result, print_, now)


def _stored_kinds(conn: sa.Connection, day: dt.date, level: str) -> dict[str, Mapping]:
    return {
        row["kind"]: row
        for row in conn.execute(
            sa.select(heatmap_kinds).where(heatmap_kinds.c.level == level, heatmap_kinds.c.date == day)
        ).mappings()
    }


def _matrix(value) -> np.ndarray:
    return np.asarray(json.loads(value) if isinstance(value, str) else value, dtype=np.float64).astype(np.int64)


def _session_counts(conn: sa.Connection, day: dt.date, level: str, sessions: list[str]) -> dict[tuple[str, str], int]:
    """The stored (kind, session) -> events of these sessions, every kind."""
    found: dict[tuple[str, str], int] = {}
    t = heatmap_kind_sessions
    for start in range(0, len(sessions), _SESSION_CHUNK):
        chunk = sessions[start : start + _SESSION_CHUNK]
        for kind, session, n in conn.execute(
            sa.select(t.c.kind, t.c.session_id, t.c.events).where(t.c.level == level, t.c.date == day, t.c.session_id.in_(chunk))
        ):
            found[(kind, session)] = int(n)
    return found


def _replace_session_counts(
    conn: sa.Connection, day: dt.date, level: str, sessions: list[str], counts: dict[tuple[str, str], int]
) -> None:
    t = heatmap_kind_sessions
    for start in range(0, len(sessions), _SESSION_CHUNK):
        chunk = sessions[start : start + _SESSION_CHUNK]
        conn.execute(t.delete().where(t.c.level == level, t.c.date == day, t.c.session_id.in_(chunk)))
    rows = [
        {"level": level, "date": day, "kind": kind, "session_id": session, "events": n}
        for (kind, session), n in sorted(counts.items())
        if n
    ]
    if rows:
        conn.execute(t.insert(), rows)


def apply_changes(
    warehouse: sa.Engine,
    day: dt.date,
    level: str,
    grid_x: int,
    grid_y: int,
    bounds: GridBounds,
    kinds: Sequence[KindConfig],
    now: dt.datetime,
    verify: Callable[[sa.Connection, Mapping], list[str]] | None = None,
) -> Refresh:
    """Fold the day's position changes after the stored heatmap's mark into it and write it, in one
    transaction; :class:`NeedsFullHeatmap` (nothing written) when it cannot (module docstring)."""
    ordered = all_kinds(kinds)
    names = [k.name for k in ordered]
    with warehouse.begin() as conn:
        # the day's lock too: no tick commits while the changes, position_stats and game_events are read
        lock_partition(conn, "heatmaps", level, day)
        lock_partition(conn, "game_events", day)
        mark = conn.execute(
            sa.select(heatmap_increments).where(heatmap_increments.c.level == level, heatmap_increments.c.date == day)
        ).mappings().first()
        if mark is None:
            raise NeedsFullHeatmap("no stored heatmap records which changes it holds")
        if mark["fingerprint"] != fingerprint(grid_x, grid_y, bounds, ordered):
            raise NeedsFullHeatmap("the grid, bounds or kinds differ from the stored heatmap's")
        generation = changes_log.day_generation(conn, day)
        if mark["generation"] != generation:
            raise NeedsFullHeatmap("game_events of the day was loaded in full since the stored heatmap")
        stored = _stored_kinds(conn, day, level)
        if sorted(stored) != sorted(names):
            raise NeedsFullHeatmap("the stored heatmap_kinds rows are not the configured kinds")

        t = position_changes
        rows = conn.execute(
            sa.select(t.c.seq, t.c.change, t.c.x, t.c.y, kinds_mask(ordered, conn.dialect.name, t), t.c.session_id)
            .where(t.c.event_date == day, t.c.level == level, t.c.seq > mark["applied_seq"])
            .order_by(t.c.seq)
        ).all()
        grid = KindsAccumulator(bounds, grid_x, grid_y, names)
        session_delta: collections.Counter[tuple[str, str]] = collections.Counter()
        applied = int(mark["applied_seq"])
        if rows:
            seqs, signs, xs, ys, masks, sessions = zip(*rows)
            applied = int(seqs[-1])
            masks_array = np.asarray(masks, dtype=np.int64)
            flat, inside = grid.grids[names[0]].cells(xs, ys)
            flat = np.where(inside, flat, 0)
            grid.add_counts(flat // grid_x, flat % grid_x, masks_array, np.asarray(signs, dtype=np.int64), inside)
            for sign, mask, session in zip(signs, masks, sessions):
                if session is not None:
                    for bit, name in enumerate(names):
                        if mask >> bit & 1:
                            session_delta[(name, session)] += sign

        touched = sorted({session for _, session in session_delta})
        counts = _session_counts(conn, day, level, touched)
        session_change = collections.Counter()
        for key, delta in session_delta.items():
            before = counts.get(key, 0)
            after = before + delta
            if after < 0:
                raise NeedsFullHeatmap(f"the change log takes more events of session {key[1]} than the stored heatmap holds")
            counts[key] = after
            session_change[key[0]] += (after > 0) - (before > 0)

        delta_matrices = grid.matrices()
        per_kind = {}
        for name in names:
            row = stored[name]
            per_kind[name] = KindHeatmap(
                name,
                _matrix(row["matrix"]) + delta_matrices[name],
                int(row["events"]) + grid.events[name],
                int(row["sessions"]) + session_change[name],
            )
        positions = per_kind[POSITIONS]
        result = HeatmapResult(
            level=level,
            date=day,
            grid_size=grid_x,
            matrix=positions.matrix,
            bounds=bounds,
            bounds_source="fixed",
            points=positions.events,
            out_of_bounds=positions.out_of_bounds,
            grid_y=grid_y,
            kinds=per_kind,
            kind_order=ordered,
            changes=changes_log.ChangeMark(generation, applied),
        )
        problems = heatmap_problems(conn, result, now, verify)
        if any(k.matrix.min(initial=0) < 0 or k.sessions < 0 for k in per_kind.values()):
            problems.append("a negative cell or session count")
        if problems:
            raise NeedsFullHeatmap("the stored heatmap with the changes fails the consistency rule: " + "; ".join(problems))
        replace_heatmap_rows(conn, result, now)
        _replace_session_counts(conn, day, level, touched, counts)
        _write_mark(conn, result, mark["fingerprint"], now)
    return Refresh(result, INCREMENTAL, changes_applied=len(rows))


def refresh_heatmap(
    warehouse: sa.Engine,
    day: dt.date,
    level: str,
    grid_x: int,
    fixed_bounds: GridBounds | None,
    *,
    grid_y: int | None = None,
    kinds: Sequence[KindConfig] = (),
    now: dt.datetime,
    verify: Callable[[sa.Connection, Mapping], list[str]] | None = None,
    full_reason: str = "",
) -> Refresh:
    """The (level, date) heatmap brought up to date and written: the stored one plus the changes
    since it when that is possible, else computed in full (``Refresh.reason`` says why).
    ``full_reason``: compute in full for this reason. Raises :class:`InconsistentHeatmap` (nothing
    written) when the full computation fails its consistency rule or was overtaken."""
    grid_y = grid_x if grid_y is None else grid_y
    reason = full_reason
    if not reason and fixed_bounds is None:
        reason = AUTO_BOUNDS
    refreshed = None
    if not reason:
        try:
            refreshed = apply_changes(warehouse, day, level, grid_x, grid_y, fixed_bounds, kinds, now, verify)
        except NeedsFullHeatmap as exc:
            reason = str(exc)
    if refreshed is None:
        incremental_next = fixed_bounds is not None
        result = compute_heatmap(
            warehouse, day, level, grid_x, fixed_bounds, grid_y=grid_y, kinds=kinds, per_session=incremental_next
        )
        upsert_heatmap(
            warehouse, result, now, verify, also=lambda conn: record_full(conn, result, incremental_next, now)
        )
        refreshed = Refresh(result, FULL, reason)
    forget_old_days(warehouse, level, day - KEEP_SESSIONS)
    return refreshed


# Days before the heatmap just written keep their per-session counts this long: ticks come for
# today (and yesterday, just after midnight); an older day's late events are rare, and its next
# heatmap is then computed in full. Without this the counts would grow by a day's sessions a day.
KEEP_SESSIONS = dt.timedelta(days=2)


def forget_old_days(warehouse: sa.Engine, level: str, before: dt.date) -> int:
    """Delete the level's per-session counts of the days before ``before`` and their marks (the
    stored heatmap rows stay; the next heatmap of such a day is computed in full). One
    transaction per day under that heatmap's lock, so no increment of it runs meanwhile; return
    the days forgotten."""
    with warehouse.connect() as conn:
        days = conn.execute(
            sa.select(heatmap_kind_sessions.c.date)
            .distinct()
            .where(heatmap_kind_sessions.c.level == level, heatmap_kind_sessions.c.date < before)
        ).scalars().all()
    for old in days:
        with warehouse.begin() as conn:
            lock_partition(conn, "heatmaps", level, old)
            for table in (heatmap_kind_sessions, heatmap_increments):
                conn.execute(table.delete().where(table.c.level == level, table.c.date == old))
    return len(days)

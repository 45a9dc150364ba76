"""Per (date, level) heatmaps from ``game_events``, every kind (positions, deaths, jumps, ...) binned
in one pass inside the database; written to ``heatmap_kinds`` and, for positions, to the old ``heatmaps``.

The database returns at most (grid_x + 2) * (grid_y + 2) rows per combination of kinds (one per
non-empty cell), never the points. Automatic bounds come from ``position_stats``, which the ETL
writes with the partition (a day loaded some other way falls back to a min/max query); every kind
of a (level, date) shares them, so kinds can be compared (and subtracted) cell by cell.

Kinds overlap (a death is a position too), so each event carries a bitmask of its kinds, bit i
for kind i, computed in SQL (event_type OR event_name in the kind's types, payload filters),
and the cells are grouped by (y bucket, x bucket, bitmask).

PostgreSQL: ``width_bucket(v, edges)`` with the very edges ``np.linspace`` computes is a binary
search over them: exactly ``np.histogram2d``'s rule, for every value, in one pass. The edge list
ends just above the upper bound, so bucket 0 and the bucket past the last hold the points
outside the bounds, counted in the same pass. The distinct sessions of each kind (for
per-session normalisation) come from a second statement in the same snapshot: each session's
kinds OR-ed together, counted per kind. Both are plain GROUP BYs that parallel workers
aggregate in part (a single GROUPING SETS scan could not, and shipped every row to one process).

SQLite (no width_bucket; it runs inside our process anyway): the level's (x, y, bitmask,
session) are streamed in chunks into ``np.bincount`` (``KindsAccumulator``), with numpy's own
cell rule. Memory stays at one chunk (plus the sets of session ids).
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import operator
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from heatmap_pipeline.core.binning import (
    GridBounds,
    KindsAccumulator,
    auto_bounds,
    bin_edges,
    matrix_summary,
    matrix_to_json,
)
from heatmap_pipeline.core.levels import DEFAULT_KINDS, POSITIONS, KindConfig
from heatmap_pipeline.warehouse.tables import game_events, heatmap_kinds, heatmaps, position_stats
from heatmap_pipeline.warehouse.locks import lock_partition
from heatmap_pipeline.warehouse import position_changes


# Per kind: its events per session (sessions without id are not counted), for incremental heatmaps.
SessionEvents = dict[str, dict[str, int]]


@dataclass
class KindHeatmap:
    """One kind's grid of a (level, date); all kinds of a (level, date) share bounds and grid."""

    kind: str
    matrix: np.ndarray
    events: int  # events of the kind with x and y, inside the bounds or not
    sessions: int  # distinct sessions among them

    @property
    def out_of_bounds(self) -> int:
        return self.events - int(self.matrix.sum())

    @property
    def summary(self) -> dict:
        return matrix_summary(self.matrix)


@dataclass
class HeatmapResult:
    level: str
    date: dt.date
    grid_size: int  # x cells (columns); grid_y rows
    matrix: np.ndarray  # the positions kind: the old heatmaps row
    bounds: GridBounds | None
    bounds_source: str
    points: int  # position events of that level and day
    out_of_bounds: int
    grid_y: int | None = None  # None: square
    kinds: dict[str, KindHeatmap] = field(default_factory=dict)
    kind_order: tuple[KindConfig, ...] = ()  # bit i of a kinds bitmask is kind_order[i]
    session_events: SessionEvents | None = None  # compute_heatmap(per_session=True)
    # the day's position change log where the binned rows stand (warehouse/heatmap_increments.py)
    changes: position_changes.ChangeMark | None = None

    @property
    def summary(self) -> dict:
        return matrix_summary(self.matrix)

    @property
    def grid_x(self) -> int:
        return self.grid_size

    @property
    def rows(self) -> int:
        return self.grid_size if self.grid_y is None else self.grid_y


def grid_size_text(grid_x: int, grid_y: int) -> str:
    """The old ``heatmaps.grid_size`` column: ``"50"`` as the old job wrote, ``"80x40"`` when not square."""
    return str(grid_x) if grid_x == grid_y else f"{grid_x}x{grid_y}"


def positions_of(day, level):
    """game_events rows of the level and day that are positions (x and y present).

    ``day`` and ``level`` are values, or bind parameters for the statements below."""
    return sa.and_(
        game_events.c.event_date == day,
        game_events.c.level == level,
        game_events.c.x.is_not(None),
        game_events.c.y.is_not(None),
    )


def search_edges(lo: float, hi: float, grid_size: int) -> list[float]:
    """Thresholds for PostgreSQL's ``width_bucket(v, thresholds)``.

    The lower edges of the grid's cells as ``np.linspace`` computes them, then the next float
    above ``hi``: bucket i (1..grid_size) is cell i-1 for every v in [lo, hi] (hi itself lands
    in the last cell, as in numpy); bucket 0 is below lo, bucket grid_size + 1 above hi.
    """
    edges = bin_edges(lo, hi, grid_size)
    return [float(v) for v in edges[:-1]] + [float(np.nextafter(hi, np.inf))]


def _bucket(column: sa.Column, edges: str) -> sa.ColumnElement[int]:
    return sa.func.width_bucket(column, sa.cast(sa.bindparam(edges), postgresql.ARRAY(sa.Double())))


# A JSON \u0000 escape (not one whose backslash is itself escaped, as in "\\u0000"): PostgreSQL's
# JSON functions refuse a payload holding one anywhere ("unsupported Unicode escape sequence"), even
# when the member asked for is another, so one such event would fail the level's whole heatmap.
_NUL_ESCAPE = r"(?<!\\)((?:\\\\)*)\\u0000"


def _pg_parsable_payload(table: sa.Table) -> sa.ColumnElement[str]:
    r"""The payload with each \u0000 escape made \ufffd (no filter value can hold a NUL, since no
    PostgreSQL text can, so no match changes); the rows without one (nearly all) pay a strpos."""
    payload = table.c.payload
    return sa.case(
        (sa.func.strpos(payload, "\\u0000") == 0, payload),
        else_=sa.func.regexp_replace(payload, _NUL_ESCAPE, r"\1\\ufffd", "g"),
    )


def _payload_field(key: str, dialect: str, table: sa.Table = game_events) -> sa.ColumnElement[str]:
    """A payload member as text (a number as it is written: 42 -> '42'); payloads are valid JSON text."""
    if dialect == "postgresql":
        return sa.func.json_extract_path_text(sa.cast(_pg_parsable_payload(table), postgresql.JSON), key)
    return sa.cast(sa.func.json_extract(table.c.payload, '$."' + key + '"'), sa.Text)


def kind_condition(kind: KindConfig, dialect: str, table: sa.Table = game_events) -> sa.ColumnElement[bool] | None:
    """Which of a level's position events belong to ``kind``; None: all of them (positions).

    An event type matches game_events.event_type OR event_name (the old game sends e.g.
    event_type "gameplay"-ish values with the name in event_name; the session stats count
    deaths the same way). ``table``: game_events, or a table with its columns (position_changes)."""
    terms = []
    if kind.event_types:
        types = sorted(kind.event_types)
        # equalities, not IN: plain bind parameters, so the statement also works as text (pg_binning_sql)
        columns = (table.c.event_type, table.c.event_name)
        terms.append(sa.or_(*(column == name for column in columns for name in types)))
    for key, value in sorted(kind.payload_filter.items()):
        terms.append(_payload_field(key, dialect, table) == value)
    return sa.and_(*terms) if terms else None


def kinds_mask(kinds: Sequence[KindConfig], dialect: str, table: sa.Table = game_events) -> sa.ColumnElement[int]:
    """Bit i set when the event belongs to ``kinds[i]``: the kinds overlap (a death is a position)."""
    terms = []
    for bit, kind in enumerate(kinds):
        condition = kind_condition(kind, dialect, table)
        terms.append(
            sa.literal_column(str(1 << bit))
            if condition is None
            else sa.case((condition, sa.literal_column(str(1 << bit))), else_=sa.literal_column("0"))
        )
    return functools.reduce(operator.add, terms)


def _kinds_filter(kinds: Sequence[KindConfig], dialect: str) -> sa.ColumnElement[bool]:
    """Rows of the level's positions that belong to at least one kind (all of them with positions)."""
    conditions = [kind_condition(kind, dialect) for kind in kinds]
    if any(c is None for c in conditions):
        return positions_of(sa.bindparam("day"), sa.bindparam("level"))
    return sa.and_(positions_of(sa.bindparam("day"), sa.bindparam("level")), sa.or_(*conditions))


def pg_cells_query(kinds: Sequence[KindConfig]) -> sa.Select:
    """(gy, gx, kinds bitmask) -> count over the level's positions of the day: the cells.

    A plain GROUP BY, so each parallel worker aggregates its share of the scan and ships at
    most a few thousand groups (a GROUPING SETS with the sessions, which this and
    pg_sessions_query replaced, cannot: its workers shipped every row to one HashAggregate)."""
    return (
        sa.select(
            _bucket(game_events.c.y, "y_edges").label("gy"),
            _bucket(game_events.c.x, "x_edges").label("gx"),
            kinds_mask(kinds, "postgresql").label("kinds"),
            sa.func.count().label("n"),
        )
        .where(_kinds_filter(kinds, "postgresql"))
        .group_by(sa.text("1, 2, 3"))
    )


def pg_sessions_query(kinds: Sequence[KindConfig]) -> sa.Select:
    """One row: the distinct sessions of each kind (``sessions_0``, ``sessions_1``, ...) among
    the level's positions of the day. Each session's kinds are OR-ed together (bit_or, which
    parallel workers aggregate in part), then counted per bit; a NULL session is not counted."""
    per_session = (
        sa.select(game_events.c.session_id, sa.func.bit_or(kinds_mask(kinds, "postgresql")).label("kinds"))
        .where(_kinds_filter(kinds, "postgresql"))
        .group_by(game_events.c.session_id)
        .subquery("per_session")
    )
    return sa.select(
        *(
            sa.func.count(per_session.c.session_id)
            .filter(per_session.c.kinds.op("&")(sa.literal_column(str(1 << bit))) != sa.literal_column("0"))
            .label(f"sessions_{bit}")
            for bit in range(len(kinds))
        )
    )


def pg_session_events_query(kinds: Sequence[KindConfig]) -> sa.Select:
    """Per session (not NULL) of the level's positions of the day: its events of each kind
    (``events_0``, ``events_1``, ...). Instead of pg_sessions_query when the counts are kept
    (fixed bounds: incremental heatmaps, warehouse/heatmap_increments.py); a plain GROUP BY too."""
    mask = kinds_mask(kinds, "postgresql")
    return (
        sa.select(
            game_events.c.session_id,
            *(
                sa.func.count().filter(mask.op("&")(sa.literal_column(str(1 << bit))) != sa.literal_column("0")).label(f"events_{bit}")
                for bit in range(len(kinds))
            ),
        )
        .where(_kinds_filter(kinds, "postgresql"), game_events.c.session_id.is_not(None))
        .group_by(game_events.c.session_id)
    )


def sessions_per_kind(pairs: Iterable[tuple[int, str | None]], kinds: int) -> list[int]:
    """Distinct sessions of each kind from distinct (kinds bitmask, session_id) pairs."""
    seen: list[set] = [set() for _ in range(kinds)]
    for mask, session in pairs:
        if session is not None:
            for bit in range(kinds):
                if mask >> bit & 1:
                    seen[bit].add(session)
    return [len(s) for s in seen]


def sqlite_points_query(kinds: Sequence[KindConfig]) -> sa.Select:
    """The level's positions of the day with their kinds bitmask and session, to stream into numpy."""
    return sa.select(
        game_events.c.x, game_events.c.y, kinds_mask(kinds, "sqlite").label("kinds"), game_events.c.session_id
    ).where(_kinds_filter(kinds, "sqlite"))


def pg_binning_sql(kinds: Sequence[KindConfig]) -> tuple[dict[str, str], dict]:
    """pg_cells_query and pg_sessions_query as text for ``sa.text`` (``:day``, ``:level``,
    ``:x_edges``, ``:y_edges``) and the values of their kinds' own parameters (event types,
    payload filters)."""
    statements, params = {}, {}
    for name, query in (("cells", pg_cells_query(kinds)), ("sessions", pg_sessions_query(kinds))):
        compiled = query.compile(dialect=postgresql.psycopg2.dialect(paramstyle="named"))
        statements[name] = str(compiled)
        params.update(compiled.params)
    runtime = {"day", "level", "x_edges", "y_edges"}
    return statements, {name: value for name, value in params.items() if name not in runtime}


# With the default kinds (positions, deaths, jumps): test_indexes and the benchmark EXPLAIN them.
PG_BINNING_SQL, PG_BINNING_KIND_PARAMS = pg_binning_sql(tuple(DEFAULT_KINDS.values()))


def recorded_position_stats(conn: sa.Connection, day: dt.date, level: str) -> tuple[int, float, float, float, float] | None:
    """(positions, x_min, x_max, y_min, y_max) of the day's level: the ETL's record, else a scan."""
    recorded = conn.execute(
        sa.select(*(c for c in position_stats.c if not c.primary_key)).where(  # positions, x_min, ..., y_max
            position_stats.c.event_date == day, position_stats.c.level == level
        )
    ).first()
    if recorded is not None:
        return tuple(recorded)
    if conn.execute(sa.select(sa.literal(1)).where(position_stats.c.event_date == day).limit(1)).first():
        return None  # the ETL recorded this day: the level has no positions
    scanned = scan_position_range(conn, day, level)
    return scanned if scanned[0] else None


def scan_position_range(conn: sa.Connection, day: dt.date, level: str) -> tuple[int, float, float, float, float]:
    """(positions, x_min, x_max, y_min, y_max) of the level and day, read from game_events itself."""
    return tuple(
        conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.min(game_events.c.x),
                sa.func.max(game_events.c.x),
                sa.func.min(game_events.c.y),
                sa.func.max(game_events.c.y),
            ).where(positions_of(day, level))
        ).one()
    )


def plan_bucket_query(conn: sa.Connection) -> None:
    """Settings for PG_BINNING_SQL, for the rest of the transaction.

    The planner cannot know that the buckets number at most (grid_size + 2)**2: it guesses
    hundreds of thousands of groups, plans a hash table that spills and so runs serially. The
    groups fit in a few kB; with room for its guess and free tuple transfer it aggregates in
    parallel workers (0.47 s instead of 0.79 s a level at 10M events/day).
    """
    conn.execute(sa.text("SET LOCAL work_mem = '64MB'"))
    conn.execute(sa.text("SET LOCAL parallel_tuple_cost = 0"))


def _bin_postgresql(
    conn: sa.Connection, day: dt.date, level: str, grid: KindsAccumulator, kinds, per_session: bool
) -> tuple[list[int], SessionEvents | None]:
    """Fill ``grid`` from one GROUP BY over the level's positions; the sessions of each kind
    from a second (both in the caller's snapshot), and with ``per_session`` their events."""
    bounds, gx_n, gy_n = grid.bounds, grid.grid_x, grid.grid_y
    plan_bucket_query(conn)
    params = {"day": day, "level": level}
    cells = conn.execute(
        pg_cells_query(kinds),
        {
            **params,
            "x_edges": search_edges(bounds.x_min, bounds.x_max, gx_n),
            "y_edges": search_edges(bounds.y_min, bounds.y_max, gy_n),
        },
    ).all()
    if cells:
        gy, gx, masks, counts = (np.asarray(column, dtype=np.int64) for column in zip(*cells))
        inside = (gy >= 1) & (gy <= gy_n) & (gx >= 1) & (gx <= gx_n)  # else outside the bounds
        grid.add_counts(np.where(inside, gy - 1, 0), np.where(inside, gx - 1, 0), masks, counts, inside)
    if not per_session:
        return [int(n) for n in conn.execute(pg_sessions_query(kinds), params).one()], None
    events: SessionEvents = {kind.name: {} for kind in kinds}
    for session, *counts in conn.execute(pg_session_events_query(kinds), params):
        for kind, n in zip(kinds, counts):
            if n:
                events[kind.name][session] = int(n)
    return [len(events[kind.name]) for kind in kinds], events


SQLITE_CHUNK_ROWS = 65_536
# A chunk of the points query's rows as one numpy record array: np.fromiter fills it straight from
# the driver's tuples (zip(*chunk) into four tuples, then arrays, was ~40% of the binning's CPU).
_SQLITE_POINT = np.dtype([("x", np.float64), ("y", np.float64), ("kinds", np.int64), ("session_id", object)])


def sqlite_points_sql(kinds: Sequence[KindConfig], day: dt.date, level: str) -> tuple[str, tuple]:
    """sqlite_points_query for the driver's own cursor: the SQL with ``?`` and its parameters."""
    compiled = sqlite_points_query(kinds).compile(dialect=sqlite.dialect())
    values = {**compiled.params, "day": day.isoformat(), "level": level}
    return str(compiled), tuple(values[name] for name in compiled.positiontup)


def _bin_sqlite(
    conn: sa.Connection, day: dt.date, level: str, grid: KindsAccumulator, kinds, per_session: bool
) -> tuple[list[int], SessionEvents | None]:
    """Stream the level's positions in chunks into ``grid``; the sessions of each kind, and with
    ``per_session`` their events."""
    # distinct (kinds bitmask, session_id); counted only when the events per session are kept
    pairs: set[tuple[int, str | None]] | collections.Counter = collections.Counter() if per_session else set()
    # the driver's own cursor: a chunk of plain tuples straight into numpy, no Row objects
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute(*sqlite_points_sql(kinds, day, level))
        while chunk := cursor.fetchmany(SQLITE_CHUNK_ROWS):
            points = np.fromiter(chunk, dtype=_SQLITE_POINT, count=len(chunk))
            grid.add(points["x"], points["y"], points["kinds"])
            pairs.update(zip(points["kinds"].tolist(), points["session_id"].tolist()))
    finally:
        cursor.close()
    if not per_session:
        return sessions_per_kind(pairs, len(kinds)), None
    events: SessionEvents = {kind.name: collections.Counter() for kind in kinds}
    for (mask, session), n in pairs.items():
        if session is not None:
            for bit, kind in enumerate(kinds):
                if mask >> bit & 1:
                    events[kind.name][session] += n
    return [len(events[kind.name]) for kind in kinds], events


def compute_heatmap(
    warehouse: sa.Engine,
    day: dt.date,
    level: str,
    grid_size: int,
    fixed_bounds: GridBounds | None = None,
    *,
    grid_y: int | None = None,
    kinds: Sequence[KindConfig] = (),
    per_session: bool = False,
) -> HeatmapResult:
    """Bin the day's positions of one level, every kind in the same pass; auto bounds are the
    day's positions' min/max, shared by every kind (so kinds compare cell by cell).

    ``grid_size`` is the number of x cells, ``grid_y`` of y cells (default: square). ``kinds``:
    the kinds besides positions, which is always binned (the old ``heatmaps`` row). ``per_session``:
    also each kind's events per session (``HeatmapResult.session_events``)."""
    kinds = (DEFAULT_KINDS[POSITIONS], *(k for k in kinds if k.name != POSITIONS))
    grid_y = grid_size if grid_y is None else grid_y
    postgres = warehouse.dialect.name == "postgresql"
    with warehouse.connect() as conn:
        # the stats, the binning and the change log's mark read one snapshot
        if postgres:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        conn.begin()
        if not postgres:  # the driver opens no transaction for reads: a deferred one, a WAL snapshot
            conn.exec_driver_sql("BEGIN")
        stats = recorded_position_stats(conn, day, level)
        points = int(stats[0]) if stats else 0
        if fixed_bounds is not None:
            bounds, source = fixed_bounds, "fixed"
        elif points:
            bounds, source = auto_bounds(*stats[1:]), "auto"
        else:
            bounds, source = None, "auto"  # an empty day has no range of its own
        grid = KindsAccumulator(bounds or GridBounds(0, 1, 0, 1), grid_size, grid_y, [k.name for k in kinds])
        sessions, session_events = [0] * len(kinds), ({k.name: {} for k in kinds} if per_session else None)
        if points and bounds is not None:
            binner = _bin_postgresql if postgres else _bin_sqlite
            sessions, session_events = binner(conn, day, level, grid, kinds, per_session)
        changes = position_changes.current_mark(conn, day, level)
    matrices = grid.matrices()
    per_kind = {
        kind.name: KindHeatmap(kind.name, matrices[kind.name], grid.events[kind.name], n)
        for kind, n in zip(kinds, sessions)
    }
    positions = per_kind[POSITIONS]
    return HeatmapResult(
        level=level,
        date=day,
        grid_size=grid_size,
        matrix=positions.matrix,
        bounds=bounds,
        bounds_source=source,
        points=positions.events,
        out_of_bounds=positions.out_of_bounds,
        grid_y=grid_y,
        kinds=per_kind,
        kind_order=kinds,
        session_events=session_events,
        changes=changes,
    )


class InconsistentHeatmap(RuntimeError):
    """The heatmap row about to be written fails its consistency rule; nothing was written."""


def _bounds_columns(bounds: GridBounds | None) -> dict:
    return {
        "x_min": bounds.x_min if bounds else None,
        "x_max": bounds.x_max if bounds else None,
        "y_min": bounds.y_min if bounds else None,
        "y_max": bounds.y_max if bounds else None,
    }


def heatmap_row(result: HeatmapResult, now: dt.datetime) -> dict:
    """The old ``heatmaps`` row: the positions kind, as it always was."""
    summary = result.summary
    return {
        "level": result.level,
        "date": result.date,
        "grid_size": grid_size_text(result.grid_x, result.rows),
        "matrix": matrix_to_json(result.matrix),
        **_bounds_columns(result.bounds),
        "bounds_source": result.bounds_source,
        "total": summary["sum"],
        "max_count": summary["max"],
        "nonempty_cells": summary["nonempty_cells"],
        "out_of_bounds": result.out_of_bounds,
        "updated_at": now,
    }


def kind_rows(result: HeatmapResult, now: dt.datetime) -> list[dict]:
    """One ``heatmap_kinds`` row per kind, positions included."""
    rows = []
    for kind in result.kinds.values():
        summary = kind.summary
        rows.append(
            {
                "level": result.level,
                "date": result.date,
                "kind": kind.kind,
                "grid_x": result.grid_x,
                "grid_y": result.rows,
                "matrix": matrix_to_json(kind.matrix),
                **_bounds_columns(result.bounds),
                "bounds_source": result.bounds_source,
                "total": summary["sum"],
                "max_count": summary["max"],
                "nonempty_cells": summary["nonempty_cells"],
                "out_of_bounds": kind.out_of_bounds,
                "events": kind.events,
                "sessions": kind.sessions,
                "updated_at": now,
            }
        )
    return rows


def kinds_within_positions(result: HeatmapResult) -> list[str]:
    """Every kind is a subset of the positions: its events no more, and no cell above the
    positions' cell (the kinds' bitmasks and the positions were binned in the same pass)."""
    problems = []
    for name, kind in result.kinds.items():
        if kind.events > result.points or np.any(kind.matrix > result.matrix):
            problems.append(f"kind {name} counts more than the positions ({kind.events} events of {result.points})")
    return problems


def upsert_heatmap(
    warehouse: sa.Engine,
    result: HeatmapResult,
    now: dt.datetime,
    verify: Callable[[sa.Connection, Mapping], list[str]] | None = None,
    also: Callable[[sa.Connection], None] | None = None,
) -> None:
    """Replace the (level, date) row of ``heatmaps`` (old readers see level/date/grid_size/matrix
    of the positions kind) and every ``heatmap_kinds`` row of the (level, date), in one transaction.

    ``verify(conn, row)`` (the asset passes ``invariants.heatmap_row_check``) lists the old row's
    problems, read in this transaction before anything is written: with any, it raises
    :class:`InconsistentHeatmap` and the stored rows stay as they were. The kinds share the
    positions' bounds and grid, and each kind's events are a subset of the positions, so the
    positions' check covers the binning they all went through. ``also(conn)`` then writes what
    belongs with the rows in the same transaction (warehouse/heatmap_increments.py)."""
    with warehouse.begin() as conn:
        lock_partition(conn, "heatmaps", result.level, result.date)
        problems = heatmap_problems(conn, result, now, verify)
        if problems:
            raise InconsistentHeatmap(
                f"heatmap of level {result.level} on {result.date} not written, it fails its consistency rule: "
                + "; ".join(problems) + ". The stored row is unchanged."
            )
        replace_heatmap_rows(conn, result, now)
        if also is not None:
            also(conn)


def heatmap_problems(
    conn: sa.Connection, result: HeatmapResult, now: dt.datetime, verify: Callable[[sa.Connection, Mapping], list[str]] | None
) -> list[str]:
    """What is wrong with ``result`` by ``verify`` (the old row) and the kinds' own rule, read on ``conn``."""
    problems = verify(conn, heatmap_row(result, now)) if verify is not None else []
    return problems + kinds_within_positions(result)


def replace_heatmap_rows(conn: sa.Connection, result: HeatmapResult, now: dt.datetime) -> None:
    """Write the (level, date) row of ``heatmaps`` and its ``heatmap_kinds`` rows over the stored ones."""
    conn.execute(heatmaps.delete().where(heatmaps.c.level == result.level, heatmaps.c.date == result.date))
    conn.execute(heatmaps.insert(), [heatmap_row(result, now)])
    # every kind of the (level, date) is replaced: a kind dropped from the configuration goes too
    conn.execute(heatmap_kinds.delete().where(heatmap_kinds.c.level == result.level, heatmap_kinds.c.date == result.date))
    kinds = kind_rows(result, now)
    if kinds:
        conn.execute(heatmap_kinds.insert(), kinds)


def read_heatmap(warehouse: sa.Engine, level: str, day: dt.date) -> dict | None:
    with warehouse.connect() as conn:
        row = conn.execute(sa.select(heatmaps).where(heatmaps.c.level == level, heatmaps.c.date == day)).mappings().first()
    return dict(row) if row else None

"""The invariants behind the asset checks, as plain SQL comparisons. No Dagster here.

Each function reads the tables and returns an :class:`Invariant`: passed or not, a severity
("ERROR" blocks the run, "WARN" only reports), a one-line description and metadata the UI shows.
The asset checks in ``defs/assets/`` turn them into Dagster asset checks.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import sqlalchemy as sa

from heatmap_pipeline.core.clock import utcnow
from heatmap_pipeline.core.binning import GridBounds, auto_bounds
from heatmap_pipeline.warehouse.tables import game_events, heatmap_kinds, heatmaps, quarantined_events, session_stats
from heatmap_pipeline.warehouse.source import created_at_value, day_filter, source_events_table
from heatmap_pipeline.warehouse.etl.incremental import Watermark, _one_of, read_watermark, window_condition
from heatmap_pipeline.warehouse.etl.sql_path import source_id_is_unique
from heatmap_pipeline.warehouse.etl.writing import partition_counts
from heatmap_pipeline.warehouse.heatmaps import grid_size_text, recorded_position_stats

ERROR, WARN = "ERROR", "WARN"


@dataclass
class Invariant:
    passed: bool
    description: str
    metadata: dict = field(default_factory=dict)
    severity: str = ERROR  # the severity of a failure; ERROR fails the run (blocking checks)


def count_source_rows(
    source: sa.Engine, day: dt.date, created_before: dt.datetime | None = None, start: dt.date | None = None
) -> int:
    """Rows of ``day`` in the source (the extraction's own day filter; ``start``: PARTITION_START_DATE),
    optionally only those whose created_at is NULL or not after ``created_before`` (naive UTC)."""
    src = source_events_table()
    condition = day_filter(source.dialect.name, src, day, start)
    if created_before is not None:
        condition = sa.and_(
            condition,
            sa.or_(src.c.created_at.is_(None), src.c.created_at <= created_at_value(source.dialect.name, created_before)),
        )
    with source.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(src).where(condition)).scalar_one())


def game_events_reconciled(
    source: sa.Engine,
    warehouse: sa.Engine,
    day: dt.date,
    extraction_started: dt.datetime | None,
    start: dt.date | None = None,
) -> Invariant:
    """Rows extracted (recounted from the source) = clean + quarantined rows stored for the day.

    Events keep arriving while a run works, so the recount is a bracket: every source row of
    the day that existed when the run started (created_at <= ``extraction_started``, or NULL)
    must be stored, and no more rows may be stored than the source holds now. Without a start
    time the comparison is strict equality.
    """
    stored = partition_counts(warehouse, day)
    total = stored["clean"] + stored["quarantined"]
    now_count = count_source_rows(source, day, start=start)
    before = count_source_rows(source, day, extraction_started, start) if extraction_started else now_count
    metadata = {
        "source_rows_now": now_count,
        "source_rows_before_run": before,
        "clean": stored["clean"],
        "quarantined": stored["quarantined"],
        "quarantine_reasons": stored["reasons"],
        "arrived_during_or_after_run": now_count - before,
        "form": "full: the whole day recounted",
    }
    if total < before:
        return Invariant(
            False,
            f"{day}: {before - total} source row(s) of the day are neither clean nor quarantined "
            f"(source {before} before the run, stored {stored['clean']} + {stored['quarantined']})",
            metadata,
        )
    if total > now_count:
        return Invariant(
            False,
            f"{day}: {total - now_count} more row(s) stored than the source holds "
            f"(source {now_count}, stored {stored['clean']} + {stored['quarantined']})",
            metadata,
        )
    waiting = now_count - total
    note = f"; {waiting} newer row(s) wait for the next run" if waiting else ""
    return Invariant(
        True, f"{day}: clean {stored['clean']} + quarantined {stored['quarantined']} = source {total}{note}", metadata
    )


# --- after a tick: verify what it touched --------------------------------------------------------
# The full forms above recount the whole day (16 s at 10M events): too much after every 15-minute tick
# that added 10,000 rows. After a tick of a day that is not over yet, the checks verify what the tick
# touched instead, from its record in etl_watermarks (incremental.tick_record). The day's last tick
# (the first after midnight) and every full load are checked by recounting the day again.


def last_tick(warehouse: sa.Engine, day: dt.date, today: dt.date) -> Watermark | None:
    """The day's watermark when its last load was a tick and the day is not over (``today``: the
    run's UTC date); None: check the day in full."""
    if day < today:  # the day's last tick: recount, so rows committed later than the overlap are found
        return None
    with warehouse.connect() as conn:
        mark = read_watermark(conn, day)
    if mark is None or mark.load_mode != "incremental" or mark.last_tick is None:
        return None
    return mark


def _tick_totals_problems(mark: Watermark) -> list[str]:
    """The day's counts in etl_watermarks against the tick's recorded increments."""
    tick = mark.last_tick
    problems = []
    for kind, total in (("clean", mark.clean_rows), ("quarantined", mark.quarantined_rows)):
        expected = tick["before"][kind] - tick["removed"][kind] + tick["added"][kind]
        if total != expected:
            problems.append(
                f"etl_watermarks says {total} {kind} rows, but the tick recorded {tick['before'][kind]} before it, "
                f"{tick['removed'][kind]} removed and {tick['added'][kind]} added ({expected})"
            )
    if mark.quarantine_reasons is not None and sum(mark.quarantine_reasons.values()) != mark.quarantined_rows:
        problems.append(
            f"quarantine reasons in etl_watermarks sum to {sum(mark.quarantine_reasons.values())}, "
            f"not the {mark.quarantined_rows} quarantined rows"
        )
    return problems


def game_events_tick_reconciled(
    source: sa.Engine,
    warehouse: sa.Engine,
    day: dt.date,
    mark: Watermark,
    extraction_started: dt.datetime | None,
    start: dt.date | None = None,
) -> Invariant:
    """After a tick: the source rows of its window (read again with the tick's recorded bound), with
    every other row of the day that shares their ids, and the day's rows without an id, are all stored
    clean or quarantined (the same bracket as :func:`game_events_reconciled`: every such row that
    existed when the run started, no more than exist now); and the day's counts in etl_watermarks are
    the counts before the tick, less what it removed, plus what it added."""
    tick = mark.last_tick
    after = None if tick["window_after"] is None else dt.datetime.fromisoformat(tick["window_after"])
    src = source_events_table()
    dialect = source.dialect.name
    in_day = day_filter(dialect, src, day, start)
    arrived_before = sa.true()
    if extraction_started is not None:
        arrived_before = sa.or_(src.c.created_at.is_(None), src.c.created_at <= created_at_value(dialect, extraction_started))
    with source.connect() as conn:
        window = conn.execute(
            sa.select(src.c.id, sa.case((arrived_before, 1), else_=0)).where(in_day, window_condition(dialect, src, start, after))
        ).all()
        native = list({row[0] for row in window if row[0] is not None})
        null_ids = tick["null_ids"] or len(native) < len(window)
        if source_id_is_unique(conn):  # one row per id, none without: the window's rows are all the rows of its ids
            now_count, before = len(window), sum(row[1] for row in window)
        else:
            rows_of_ids = _one_of(dialect, src.c.id, native)
            if null_ids:
                rows_of_ids = sa.or_(rows_of_ids, src.c.id.is_(None))
            now_count, before = conn.execute(
                sa.select(sa.func.count(), sa.func.count().filter(arrived_before)).select_from(src).where(in_day, rows_of_ids)
            ).one()
    ids = sorted(str(i) for i in native)
    with warehouse.connect() as conn:
        wdialect = conn.dialect.name
        clean = conn.execute(
            sa.select(sa.func.count()).select_from(game_events).where(
                game_events.c.event_date == day, _one_of(wdialect, game_events.c.event_id, ids)
            )
        ).scalar_one()
        held = _one_of(wdialect, quarantined_events.c.source_event_id, ids)
        if null_ids:
            held = sa.or_(held, quarantined_events.c.source_event_id.is_(None))
        quarantined = conn.execute(
            sa.select(sa.func.count()).select_from(quarantined_events).where(quarantined_events.c.partition_date == day, held)
        ).scalar_one()
    stored = int(clean) + int(quarantined)
    metadata = {
        "form": "tick: the tick's window and its ids, and the day's counts against the tick's increments",
        "window_created_after": tick["window_after"],
        "window_ids": len(ids),
        "source_rows_of_those_ids_now": int(now_count),
        "source_rows_of_those_ids_before_run": int(before),
        "stored_clean_of_those_ids": int(clean),
        "stored_quarantined_of_those_ids": int(quarantined),
        "day_clean": mark.clean_rows,
        "day_quarantined": mark.quarantined_rows,
        "tick": tick,
    }
    problems = _tick_totals_problems(mark)
    if stored < before:
        problems.insert(0, f"{before - stored} source row(s) of the tick's window or its ids are neither clean nor "
                           f"quarantined (source {before} before the run, stored {clean} + {quarantined})")
    if stored > now_count:
        problems.insert(0, f"{stored - now_count} more row(s) stored for the tick's window ids than the source holds "
                           f"(source {now_count}, stored {clean} + {quarantined})")
    if problems:
        return Invariant(False, f"{day} (after a tick): " + "; ".join(problems), metadata)
    return Invariant(
        True,
        f"{day} (after a tick): the {now_count} source row(s) of its window's {len(ids)} id(s) are stored "
        f"({clean} clean + {quarantined} quarantined); the day's {mark.clean_rows} clean + {mark.quarantined_rows} "
        "quarantined rows are the counts before the tick, less what it removed, plus what it added",
        metadata,
    )


def _unique_key_on_day(conn: sa.Connection) -> str | None:
    """The name of the unique index on exactly (event_date, event_id) of game_events (on PostgreSQL the
    partitioned table's: every partition has it); None when there is none."""
    if conn.dialect.name == "postgresql":
        return conn.execute(
            sa.text(
                """
                SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                WHERE i.indrelid = 'game_events'::regclass AND i.indisunique AND i.indpred IS NULL
                  AND i.indexprs IS NULL AND i.indnkeyatts = 2
                  AND ARRAY(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
                            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.n)
                      = ARRAY['event_date', 'event_id']
                """
            )
        ).scalar()
    for index in conn.exec_driver_sql("PRAGMA index_list(game_events)").all():
        name, unique, partial = index[1], index[2], index[4]
        if unique and not partial:
            columns = [row[2] for row in conn.exec_driver_sql(f'PRAGMA index_info("{name}")').all()]
            if columns == ["event_date", "event_id"]:
                return name
    return None


def game_events_unique_ids_after_tick(warehouse: sa.Engine, day: dt.date) -> Invariant:
    """After a tick: no event id twice in the day, because game_events' unique key on (event_date,
    event_id) forbids it (looked up in the catalog); without that key, the day is searched as in
    :func:`game_events_unique_ids`. Ids also stored on another day are looked for by the full form."""
    with warehouse.connect() as conn:
        key = _unique_key_on_day(conn)
    if key is None:
        result = game_events_unique_ids(warehouse, day)
        result.description = "game_events has no unique key on (event_date, event_id), so the day was searched: " + result.description
        result.metadata["form"] = "full: no unique key on (event_date, event_id)"
        return result
    return Invariant(
        True,
        f"{day} (after a tick): every event id is stored once: game_events' unique key {key} on (event_date, "
        "event_id) enforces it (ids also on other days are looked for after a full load)",
        {"form": "tick: the unique key enforces it", "unique_key": key},
    )


def _ids_also_on_other_days(dialect: str, day: dt.date) -> sa.Select:
    """Ids of ``day`` also stored on another day (at most 20).

    PostgreSQL hash-joins the day's ids with the other days. SQLite would scan every other row for
    each id of the day (game_events has no index on event_id alone: minutes for a demo week), so it
    looks each id up by the primary key (event_date, event_id) in each other day instead.
    """
    if dialect == "postgresql":
        other = game_events.alias("other")
        return (
            sa.select(game_events.c.event_id)
            .distinct()
            .select_from(game_events.join(other, other.c.event_id == game_events.c.event_id))
            .where(game_events.c.event_date == day, other.c.event_date != day)
            .order_by(game_events.c.event_id)
            .limit(20)
        )
    other, days = game_events.alias("other"), game_events.alias("days")
    other_days = sa.select(days.c.event_date).distinct().where(days.c.event_date != day)
    on_another_day = sa.exists().where(other.c.event_date.in_(other_days), other.c.event_id == game_events.c.event_id)
    return (
        sa.select(game_events.c.event_id)
        .where(game_events.c.event_date == day, on_another_day)
        .order_by(game_events.c.event_id)
        .limit(20)
    )


def game_events_unique_ids(warehouse: sa.Engine, day: dt.date) -> Invariant:
    """No event id twice in the day's partition (ERROR), nor also stored on another day (WARN)."""
    with warehouse.connect() as conn:
        within = conn.execute(
            sa.select(game_events.c.event_id, sa.func.count())
            .where(game_events.c.event_date == day)
            .group_by(game_events.c.event_id)
            .having(sa.func.count() > 1)
            .order_by(game_events.c.event_id)
            .limit(20)
        ).all()
        elsewhere = conn.execute(_ids_also_on_other_days(conn.dialect.name, day)).scalars().all()
    metadata = {
        "duplicated_ids_sample": [row[0] for row in within],
        "ids_also_on_other_days_sample": list(elsewhere),
        "form": "full: the whole day searched",
    }
    if within:
        return Invariant(
            False, f"{day}: event id(s) stored more than once: {', '.join(r[0] for r in within)}", metadata
        )
    if elsewhere:
        return Invariant(
            False, f"{day}: event id(s) also stored on another day: {', '.join(elsewhere)}", metadata, WARN
        )
    return Invariant(True, f"{day}: every event id is stored once", metadata)


def _matrix(value) -> list:
    return json.loads(value) if isinstance(value, str) else value


def heatmap_consistent(
    warehouse: sa.Engine,
    day: dt.date,
    level: str,
    grid_size: int,
    fixed_bounds: GridBounds | None,
    upstream_written_at: dt.datetime | None = None,
    grid_y: int | None = None,
) -> Invariant:
    """The stored heatmap of (day, level) against ``game_events`` and the configuration.

    ERROR when: no row; matrix not grid_size x grid_size or grid_size column different; a
    negative or non-finite cell; bounds other than HEATMAP_BOUNDS (fixed) or the day's own
    min/max (auto); matrix sum + stored out-of-bounds != the level's position events of the day;
    out-of-bounds points under automatic bounds (the day's own range holds every point).

    The position events and their range are the ones the ETL recorded in ``position_stats`` in
    the transaction that wrote the day (the same numbers the heatmap took its automatic bounds
    from), not a rescan of the day: the heatmap bins the rows themselves, so a matrix that lost or
    invented points still disagrees with the ETL's count. A day loaded without position_stats is
    scanned. Rows written into game_events behind the ETL's back are not seen.
    ``upstream_written_at`` (naive UTC): when game_events of the day was last written. If that is
    after the heatmap's updated_at, a count mismatch means "stale, the next run refreshes it"
    (WARN), not wrong.
    """
    with warehouse.connect() as conn:
        row = (
            conn.execute(sa.select(heatmaps).where(heatmaps.c.level == level, heatmaps.c.date == day))
            .mappings()
            .first()
        )
        if row is None:
            stats = recorded_position_stats(conn, day, level)
            total = int(stats[0]) if stats else 0
            return Invariant(
                False, f"level {level} {day}: no row in heatmaps ({total} position events)", {"position_events": total}
            )
        problems, count_ok, metadata = heatmap_row_verdict(conn, row, day, level, grid_size, fixed_bounds, grid_y)
    updated_at = row["updated_at"]
    stale = upstream_written_at is not None and updated_at is not None and upstream_written_at > updated_at
    if problems or (not count_ok and not stale):
        if not count_ok:
            problems.append(_count_problem(metadata))
        return Invariant(False, f"level {level} {day}: " + "; ".join(problems), metadata)
    if not count_ok:
        return Invariant(
            False,
            f"level {level} {day}: {_count_problem(metadata)}, but game_events "
            "of the day changed after this heatmap was written: stale, the next heatmap run refreshes it",
            metadata,
            WARN,
        )
    return Invariant(
        True,
        f"level {level} {day}: sum {metadata['matrix_sum']:g} + {metadata['stored_out_of_bounds']} out of bounds = "
        f"{metadata['position_events']} position events the ETL recorded; bounds and grid as configured",
        metadata,
    )


def _count_problem(metadata: dict) -> str:
    return (
        f"matrix sum {metadata['matrix_sum']:g} + {metadata['stored_out_of_bounds']} out of bounds != "
        f"{metadata['position_events']} position events the ETL recorded"
    )


def heatmap_row_verdict(
    conn: sa.Connection,
    row,
    day: dt.date,
    level: str,
    grid_size: int,
    fixed_bounds: GridBounds | None,
    grid_y: int | None = None,
) -> tuple[list[str], bool, dict]:
    """The consistency rule of one ``heatmaps`` row (stored, or about to be written: a mapping of
    its columns) against the day's recorded position stats read on ``conn`` (see
    :func:`heatmap_consistent`): (its problems other than the count, whether matrix sum +
    out-of-bounds equals the position events, metadata). ``grid_size`` x cells by ``grid_y`` y
    cells (default: square)."""
    grid_y = grid_size if grid_y is None else grid_y
    stats = recorded_position_stats(conn, day, level)
    total, position_range = (int(stats[0]), stats[1:]) if stats else (0, None)
    stored_bounds = None
    if row["x_min"] is not None:
        stored_bounds = GridBounds(row["x_min"], row["x_max"], row["y_min"], row["y_max"])
    out_of_bounds = int(row["out_of_bounds"] or 0)
    problems: list[str] = []
    matrix = _matrix(row["matrix"])
    shape_ok = (
        isinstance(matrix, list)
        and len(matrix) == grid_y
        and all(isinstance(r, list) and len(r) == grid_size for r in matrix)
    )
    cells = [c for r in matrix for c in r] if shape_ok else []
    if not shape_ok:
        problems.append(f"matrix is not {grid_size}x{grid_y}")  # x cells by y cells
    if str(row["grid_size"]) != grid_size_text(grid_size, grid_y):
        problems.append(f"grid_size column is {row['grid_size']!r}, configuration says {grid_size_text(grid_size, grid_y)}")
    bad_cells = [c for c in cells if not isinstance(c, (int, float)) or not math.isfinite(c) or c < 0]
    if bad_cells:
        problems.append(f"{len(bad_cells)} negative or non-finite cell(s), e.g. {bad_cells[0]!r}")
    if fixed_bounds is not None:
        expected, expected_source = fixed_bounds, "fixed"
    elif total:
        expected, expected_source = auto_bounds(*position_range), "auto"
        if out_of_bounds:
            problems.append(f"{out_of_bounds} point(s) out of bounds, but automatic bounds hold the whole day")
    else:
        expected, expected_source = None, "auto"
    if stored_bounds != expected or row["bounds_source"] != expected_source:
        problems.append(
            f"bounds {stored_bounds.as_list() if stored_bounds else None} ({row['bounds_source']}) differ from "
            f"{expected.as_list() if expected else None} ({expected_source})"
        )
    matrix_sum = float(sum(c for c in cells if isinstance(c, (int, float)) and math.isfinite(c)))
    metadata = {
        "matrix_sum": matrix_sum,
        "position_events": total,
        "stored_out_of_bounds": out_of_bounds,
        "stored_bounds": stored_bounds.as_list() if stored_bounds else None,
        "expected_bounds": expected.as_list() if expected else None,
        "grid_size": grid_size,
    }
    return problems, matrix_sum + out_of_bounds == total, metadata


def heatmap_row_check(
    day: dt.date, level: str, grid_size: int, fixed_bounds: GridBounds | None, grid_y: int | None = None
):
    """For ``upsert_heatmap(verify=...)``: every problem of the row about to be written, the count
    included, read in the upsert's own transaction (so a row failing the rule is never written)."""

    def problems_of(conn: sa.Connection, row) -> list[str]:
        problems, count_ok, metadata = heatmap_row_verdict(conn, row, day, level, grid_size, fixed_bounds, grid_y)
        return problems if count_ok else [*problems, _count_problem(metadata)]

    return problems_of


def heatmap_kinds_consistent(warehouse: sa.Engine, day: dt.date, level: str, kinds: Sequence[str]) -> Invariant:
    """The ``heatmap_kinds`` rows of (day, level) against its ``heatmaps`` row, no rescan: a row for
    each configured kind; each on the positions' grid and bounds; total + out_of_bounds = events;
    no negative cell; every kind within the positions (no more events, no cell above the
    positions' cell); the positions kind's matrix is the old row's."""
    with warehouse.connect() as conn:
        old = conn.execute(
            sa.select(heatmaps.c.matrix).where(heatmaps.c.level == level, heatmaps.c.date == day)
        ).scalar_one_or_none()
        rows = {
            r["kind"]: r
            for r in conn.execute(
                sa.select(heatmap_kinds).where(heatmap_kinds.c.level == level, heatmap_kinds.c.date == day)
            ).mappings()
        }
    missing = [kind for kind in kinds if kind not in rows]
    if missing or old is None:
        return Invariant(False, f"level {level} {day}: no heatmap_kinds row for {', '.join(missing) or 'the old row'}",
                         {"kinds_stored": sorted(rows)})
    positions = rows["positions"]
    reference = np.asarray(_matrix(positions["matrix"]), dtype=np.float64)
    problems = []
    if _matrix(old) != _matrix(positions["matrix"]):
        problems.append("the positions kind differs from the old heatmaps row")
    for kind in kinds:
        row = rows[kind]
        matrix = np.asarray(_matrix(row["matrix"]), dtype=np.float64)
        same_frame = all(row[c] == positions[c] for c in ("grid_x", "grid_y", "x_min", "x_max", "y_min", "y_max", "bounds_source"))
        if not same_frame or matrix.shape != (row["grid_y"], row["grid_x"]) or matrix.shape != reference.shape:
            problems.append(f"{kind}: grid or bounds differ from the positions'")
            continue
        if not np.all(np.isfinite(matrix)) or matrix.min(initial=0) < 0:
            problems.append(f"{kind}: a negative or non-finite cell")
        if matrix.sum() != row["total"] or row["total"] + row["out_of_bounds"] != row["events"]:
            problems.append(f"{kind}: total {row['total']:g} + {row['out_of_bounds']} out of bounds != {row['events']} events")
        if row["events"] > positions["events"] or np.any(matrix > reference):
            problems.append(f"{kind}: counts more than the positions")
    metadata = {"kinds": {k: rows[k]["total"] for k in kinds}}
    if problems:
        return Invariant(False, f"level {level} {day}: " + "; ".join(problems), metadata)
    return Invariant(True, f"kinds {', '.join(kinds)} on the positions' grid and bounds, each within the positions", metadata)


def session_stats_tick_reconciled(warehouse: sa.Engine, day: dt.date, mark: Watermark) -> Invariant:
    """After a tick: the sum of the day's session event counts = the day's clean rows the ETL
    recorded in etl_watermarks (which ``rows_reconciled`` checks against the tick's increments), not
    a recount of game_events."""
    with warehouse.connect() as conn:
        summed, sessions = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(session_stats.c.event_count), 0), sa.func.count()).where(
                session_stats.c.event_date == day
            )
        ).one()
    metadata = {
        "form": "tick: against the day's clean rows recorded by the ETL",
        "events_summed": int(summed),
        "clean_events_recorded": mark.clean_rows,
        "sessions": int(sessions),
    }
    if int(summed) != mark.clean_rows:
        return Invariant(
            False,
            f"{day} (after a tick): session event counts sum to {summed}, the ETL recorded {mark.clean_rows} clean events",
            metadata,
        )
    return Invariant(
        True, f"{day} (after a tick): {sessions} sessions sum to the {mark.clean_rows} clean events the ETL recorded", metadata
    )


def session_stats_reconciled(warehouse: sa.Engine, day: dt.date) -> Invariant:
    """Sum of session_stats.event_count of the day = clean game_events rows of the day."""
    with warehouse.connect() as conn:
        summed = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(session_stats.c.event_count), 0)).where(
                session_stats.c.event_date == day
            )
        ).scalar_one()
        clean = conn.execute(
            sa.select(sa.func.count()).select_from(game_events).where(game_events.c.event_date == day)
        ).scalar_one()
        sessions = conn.execute(
            sa.select(sa.func.count()).select_from(session_stats).where(session_stats.c.event_date == day)
        ).scalar_one()
    metadata = {"events_summed": int(summed), "clean_events": int(clean), "sessions": int(sessions),
                "form": "full: the day's game_events recounted"}
    if int(summed) != int(clean):
        return Invariant(
            False, f"{day}: session event counts sum to {summed}, game_events holds {clean} clean events", metadata
        )
    return Invariant(True, f"{day}: {sessions} sessions sum to the {clean} clean events", metadata)


# --- which form runs -------------------------------------------------------------------------------


def _today(today: dt.date | None) -> dt.date:
    return today if today is not None else utcnow().date()


def game_events_reconciled_after_last_load(
    source: sa.Engine,
    warehouse: sa.Engine,
    day: dt.date,
    extraction_started: dt.datetime | None,
    start: dt.date | None = None,
    today: dt.date | None = None,
) -> Invariant:
    """``rows_reconciled``: the tick form after a tick of a day not over yet, else the full recount;
    when the day's last load was a tick, the recount also compares the day's counts the ticks kept in
    etl_watermarks (the tick form's reference) with the tables."""
    mark = last_tick(warehouse, day, _today(today))
    if mark is not None:
        return game_events_tick_reconciled(source, warehouse, day, mark, extraction_started, start)
    result = game_events_reconciled(source, warehouse, day, extraction_started, start)
    with warehouse.connect() as conn:
        kept = read_watermark(conn, day)
    if kept is None or kept.load_mode != "incremental":
        return result
    clean, quarantined = result.metadata["clean"], result.metadata["quarantined"]
    result.metadata["counts_kept_by_ticks"] = {"clean": kept.clean_rows, "quarantined": kept.quarantined_rows}
    if (kept.clean_rows, kept.quarantined_rows) != (clean, quarantined):
        return Invariant(
            False,
            f"{day}: the ticks' counts in etl_watermarks ({kept.clean_rows} clean + {kept.quarantined_rows} "
            f"quarantined) differ from the tables ({clean} + {quarantined}); " + result.description,
            result.metadata,
        )
    return result


def game_events_unique_ids_after_last_load(warehouse: sa.Engine, day: dt.date, today: dt.date | None = None) -> Invariant:
    """``unique_event_ids``: the tick form after a tick of a day not over yet, else the full search."""
    if last_tick(warehouse, day, _today(today)) is None:
        return game_events_unique_ids(warehouse, day)
    return game_events_unique_ids_after_tick(warehouse, day)


def session_stats_reconciled_after_last_load(warehouse: sa.Engine, day: dt.date, today: dt.date | None = None) -> Invariant:
    """``event_counts_reconciled``: the tick form after a tick of a day not over yet, else the full recount."""
    mark = last_tick(warehouse, day, _today(today))
    if mark is None:
        return session_stats_reconciled(warehouse, day)
    return session_stats_tick_reconciled(warehouse, day, mark)

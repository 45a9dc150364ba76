"""A scheduled tick loads what arrived since the day's last load, not the whole day again.

Every load of a day records in ``etl_watermarks`` the newest source ``created_at`` it read (not
after the run's clock), how many of the day's rows have no usable arrival time (``created_at``
NULL or before PARTITION_START_DATE), the cleaning settings and the day's row counts. A tick
(``load_increment``) then:

1. reads the day's source rows with ``created_at > watermark - overlap`` (the *window*; the overlap
   catches rows whose transaction committed after a later row's: ETL_INCREMENTAL_OVERLAP_SECONDS);
2. finds which of their ids the day already holds (in ``game_events`` or the quarantine) and reads
   every source row of the day with those ids again, so each id is judged on all its rows exactly as
   a full load judges it (the first valid row by created_at is kept, the others are ``duplicate_id``);
   an id whose one row in the window is the very row held clean (same created_at, nothing of it
   quarantined) is left as it is: the overlap re-reads those every tick. With a primary key on
   ``events.id`` only rows a load can have read are looked up: not those that arrived after the
   watermark up to the last tick's clock (``created_at_read_until``), and not those the last tick
   loaded itself (``window_ids``), which are left as they are;
3. judges them as the full load does and replaces what the day held for those ids: on PostgreSQL
   with ``events`` in the warehouse database the full load's own SQL classification restricted to
   those ids (``sql_path.py``; the residue through the Python cleaner), otherwise the Python cleaner
   (``core/cleaning.py``);
4. updates ``position_stats`` by the difference, records the added rows and the sessions that lost
   one in ``session_stats_pending`` (``warehouse/sessions.py`` folds them in), and moves the
   watermark - all in one transaction under the day's lock.

Ids the day does not hold yet have all their rows in the window (an older row of theirs would
have been loaded), so the result equals a full load of the same source rows. A tick loads the day
in full instead (and says why) when the day has no watermark yet, was loaded with other cleaning
settings, or the count of rows without a usable arrival time changed: such rows are never in a
window. Rows committed more than the overlap after their ``created_at`` are missed by ticks; any
full load (backfill, UI, admin trigger) picks them up. No Dagster here.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from heatmap_pipeline.core.binning import PositionRanges
from heatmap_pipeline.core.cleaning import CleaningRules, EventCleaner, Rejected, to_utc_naive
from heatmap_pipeline.warehouse.etl import pg_partitions, sql_path
from heatmap_pipeline.warehouse.etl.sql_path import source_id_is_unique
from heatmap_pipeline.warehouse.etl.writing import EtlResult, bulk_insert, insert_cleaned, quarantine_by_reason
from heatmap_pipeline.warehouse.locks import lock_partition
from heatmap_pipeline.warehouse.position_changes import CHANGE_COLUMNS, change_rows
from heatmap_pipeline.warehouse.sessions import PENDING_COLUMNS, mark_day_for_rebuild, pending_rows, session_key
from heatmap_pipeline.warehouse.source import arrival_floor as _arrival_floor
from heatmap_pipeline.warehouse.source import (
    EXTRACTED_COLUMNS,
    created_at_value,
    day_filter,
    extracted_columns,
    source_events_table,
)
from heatmap_pipeline.warehouse.tables import (
    etl_watermarks,
    game_events,
    position_changes,
    position_stats,
    quarantined_events,
    session_stats_pending,
)

DEFAULT_OVERLAP = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Watermark:
    created_at: dt.datetime | None  # newest created_at loaded (naive UTC); None: the day had no usable one
    # A tick's clock: rows with created_at after ``created_at`` up to this were not loaded (the tick
    # read every committed row, and its watermark is the newest of them up to its clock). None
    # after a full load, whose watermark is read before the load.
    read_until: dt.datetime | None
    rows_without_arrival: int
    rules_fingerprint: str
    clean_rows: int
    quarantined_rows: int
    quarantine_reasons: dict[str, int] | None  # None: written before this was recorded
    # Primary-key source only: ids of the last tick's rows the next window can hold again (arrived
    # after its watermark minus the overlap, or with no arrival time). None: look them all up.
    window_ids: list[str] | None = None
    # What the last load did when it was a tick (:func:`tick_record`); None after a full load.
    last_tick: dict | None = None
    load_mode: str = "full"


def rules_fingerprint(rules: CleaningRules) -> str:
    """The cleaning settings a day was loaded with (not the run's clock): a tick under other
    settings would mix two rule sets in one day, so it loads the day in full."""
    text = repr(
        (
            sorted(rules.levels),
            rules.default_level,
            sorted(rules.position_event_types),
            rules.max_payload_bytes,
            rules.arrival_tolerance.total_seconds(),
            str(rules.partition_start),
        )
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _one_of(dialect: str, column: sa.ColumnElement, values: Sequence) -> sa.ColumnElement[bool]:
    """``column IN values`` with one parameter however many values (no statement to expand and
    compile per list): PostgreSQL ``IN (SELECT unnest(:array))``, SQLite ``IN (SELECT value FROM
    json_each(:json))``. (PostgreSQL's ``= ANY(:array)`` of a tick's 10,000 ids scanned the whole
    day's partition; the semi-join probes its primary key once per id.)"""
    if dialect == "postgresql":
        if isinstance(column.type, sa.String):  # one JSON text: the driver checks each string of an array for quoting
            text = sa.cast(sa.bindparam(None, json.dumps(list(values)), type_=sa.Text), postgresql.JSON)
            return column.in_(sa.select(sa.func.json_array_elements_text(text)))
        array = sa.bindparam(None, list(values))  # the source's ids as the driver adapts them (uuid[], bigint[])
        return column.in_(sa.select(sa.func.unnest(array)))
    ids = json.dumps([v if isinstance(v, (int, str)) else str(v) for v in values])
    return column.in_(sa.select(sa.column("value")).select_from(sa.func.json_each(sa.literal(ids))))


def _count_rows_without_arrival(read: sa.Connection, day: dt.date, rules: CleaningRules) -> int:
    """Rows of the day whose created_at is NULL or before PARTITION_START_DATE (index-friendly)."""
    src = source_events_table()
    dialect = read.dialect.name
    created = src.c.created_at
    query = (
        sa.select(sa.func.count())
        .select_from(src)
        .where(
            sa.or_(created.is_(None), created < _arrival_floor(dialect, rules)),
            day_filter(dialect, src, day, rules.partition_start),
        )
    )
    return int(read.execute(query).scalar_one())


def _arrival(value) -> dt.datetime | None:
    """A created_at as naive UTC, or None when it is no time Python holds."""
    if value is None:
        return None
    try:
        return to_utc_naive(value, "created_at")
    except Rejected:
        return None


def _newest_arrival(read: sa.Connection, day: dt.date, rules: CleaningRules, now: dt.datetime) -> dt.datetime | None:
    """The newest created_at among the day's source rows, not after ``now``."""
    src = source_events_table()
    dialect = read.dialect.name
    created = src.c.created_at
    query = sa.select(sa.func.max(created)).where(
        created <= created_at_value(dialect, now),
        created >= _arrival_floor(dialect, rules),
        day_filter(dialect, src, day, rules.partition_start),
    )
    return _arrival(read.execute(query).scalar_one())


def read_watermark(conn: sa.Connection, day: dt.date) -> Watermark | None:
    row = conn.execute(sa.select(etl_watermarks).where(etl_watermarks.c.event_date == day)).mappings().first()
    if row is None:
        return None
    return Watermark(
        row["created_at_watermark"],
        row["created_at_read_until"],
        int(row["rows_without_arrival"]),
        row["rules_fingerprint"],
        int(row["clean_rows"]),
        int(row["quarantined_rows"]),
        row["quarantine_reasons"],
        row["window_ids"],
        row["last_tick"],
        row["load_mode"],
    )


def _write_watermark(conn: sa.Connection, day: dt.date, mark: Watermark, mode: str, now: dt.datetime) -> None:
    conn.execute(etl_watermarks.delete().where(etl_watermarks.c.event_date == day))
    conn.execute(
        etl_watermarks.insert().values(
            event_date=day,
            created_at_watermark=mark.created_at,
            created_at_read_until=mark.read_until,
            rows_without_arrival=mark.rows_without_arrival,
            rules_fingerprint=mark.rules_fingerprint,
            clean_rows=mark.clean_rows,
            quarantined_rows=mark.quarantined_rows,
            quarantine_reasons=mark.quarantine_reasons,
            window_ids=mark.window_ids,
            last_tick=mark.last_tick,
            load_mode=mode,
            loaded_at=now,
        )
    )


# --- a full load: bracket it ------------------------------------------------------------------------
@dataclass(frozen=True)
class FullLoadMark:
    newest_arrival: dt.datetime | None
    rows_without_arrival: int


def before_full_load(
    source: sa.Engine, warehouse: sa.Engine, day: dt.date, rules: CleaningRules, now: dt.datetime
) -> FullLoadMark:
    """Before a full load: read the watermark it will reach (the load reads at least these rows),
    and tell session_stats to rebuild the day (committed first: if the load fails, that only costs a
    rebuild)."""
    with source.connect() as read:
        mark = FullLoadMark(_newest_arrival(read, day, rules, now), _count_rows_without_arrival(read, day, rules))
    with warehouse.begin() as write:
        mark_day_for_rebuild(write, day)
    return mark


def after_full_load(
    warehouse: sa.Engine, day: dt.date, rules: CleaningRules, mark: FullLoadMark, result: EtlResult, now: dt.datetime
) -> None:
    """Record the full load's watermark. Its own transaction after the load's, which deleted the
    day's previous watermark (writing.record_position_stats): should this fail, the day has none,
    and the next tick loads the day in full."""
    with warehouse.begin() as write:
        lock_partition(write, "game_events", day)
        watermark = Watermark(
            mark.newest_arrival,
            None,
            mark.rows_without_arrival,
            rules_fingerprint(rules),
            result.clean,
            result.quarantined,
            dict(result.reasons),
        )
        _write_watermark(write, day, watermark, "full", now)
        if write.dialect.name == "postgresql":
            # A fresh partition has no statistics until autovacuum visits it (never, where it is off):
            # without them the next tick's id lookups scan the day instead of probing its primary key.
            # ANALYZE reads a fixed-size sample (0.1-0.3 s however big the day).
            partition = pg_partitions.current_partition(write, day)
            if partition:
                write.execute(sa.text(f"ANALYZE {pg_partitions.quote_ident(partition)}"))
            write.execute(sa.text("ANALYZE quarantined_events"))
    result.watermark = mark.newest_arrival


# --- a tick -----------------------------------------------------------------------------------------
class NeedsFullLoad(Exception):
    """This tick cannot load incrementally; the message says why."""


def _extract(read: sa.Connection, day: dt.date, rules: CleaningRules, condition) -> list[sa.RowMapping]:
    src = source_events_table()
    dialect = read.dialect.name
    query = (
        sa.select(*extracted_columns(dialect, src))
        .where(day_filter(dialect, src, day, rules.partition_start), condition(src))
        .order_by(src.c.id, src.c.created_at)
    )
    return list(read.execute(query).mappings())


def _held_ids(write: sa.Connection, day: dt.date, ids: list[str]) -> tuple[dict[str, dt.datetime | None], set[str]]:
    """Which of ``ids`` the day holds already: clean ones with their created_at, and quarantined
    ones (primary key and ``ix_quarantined_events_source_id`` lookups)."""
    dialect = write.dialect.name
    clean = dict(
        write.execute(
            sa.select(game_events.c.event_id, game_events.c.created_at).where(
                game_events.c.event_date == day, _one_of(dialect, game_events.c.event_id, ids)
            )
        ).all()
    )
    quarantined = set(
        write.execute(
            sa.select(quarantined_events.c.source_event_id)
            .where(quarantined_events.c.partition_date == day, _one_of(dialect, quarantined_events.c.source_event_id, ids))
            .distinct()
        ).scalars()
    )
    return clean, quarantined


def _surely_unread(mark: Watermark, arrival: dt.datetime | None) -> bool:
    """The row arrived after the watermark and no later than the last tick's clock: no load read it."""
    return (
        arrival is not None
        and mark.read_until is not None
        and (mark.created_at is None or arrival > mark.created_at)
        and arrival <= mark.read_until
    )


def _already_loaded(
    keyed: list[tuple[str, dt.datetime | None, sa.RowMapping]], clean: dict[str, dt.datetime | None], quarantined: set[str]
) -> set[str]:
    """Ids whose one row in the window is the very row the day holds clean: the same created_at,
    no other row of the id in the window or the quarantine. Nothing about them can have changed
    (the overlap re-reads each tick's latest rows), so they are not loaded again."""
    rows_of = collections.Counter(key for key, _, _ in keyed)
    return {
        key
        for key, arrival, _ in keyed
        if rows_of[key] == 1 and key not in quarantined and clean.get(key) is not None and clean[key] == arrival
    }


_COLUMNS = [c.name for c in game_events.columns]


def _stored_rows(write: sa.Connection, day: dt.date, ids: list[str]) -> dict[str, dict]:
    query = sa.select(game_events).where(game_events.c.event_date == day, _one_of(write.dialect.name, game_events.c.event_id, ids))
    return {row["event_id"]: dict(row) for row in write.execute(query).mappings()}


def _delete_held(
    write: sa.Connection, day: dt.date, ids: list[str], null_ids: bool
) -> tuple[int, collections.Counter[str]]:
    """Delete what the day holds for ``ids`` (and its rows without id); return the clean rows
    deleted and the quarantined ones by reason."""
    dialect = write.dialect.name
    clean = write.execute(
        game_events.delete().where(game_events.c.event_date == day, _one_of(dialect, game_events.c.event_id, ids))
    ).rowcount
    held_quarantine = _one_of(dialect, quarantined_events.c.source_event_id, ids)
    if null_ids:
        held_quarantine = sa.or_(held_quarantine, quarantined_events.c.source_event_id.is_(None))
    reasons = collections.Counter(
        write.execute(
            quarantined_events.delete()
            .where(quarantined_events.c.partition_date == day, held_quarantine)
            .returning(quarantined_events.c.reason)
        ).scalars()
    )
    return clean, reasons


def _is_position(row: dict) -> bool:
    return row["level"] is not None and row["x"] is not None and row["y"] is not None


def _update_position_stats(write: sa.Connection, day: dt.date, removed: list[dict], added: list[dict]) -> None:
    """Fold the difference into the day's position_stats. A level that lost a position on the edge
    of its range is summed again from game_events (rare: an id whose kept row changed)."""
    removed = [r for r in removed if _is_position(r)]
    added = [r for r in added if _is_position(r)]
    levels = sorted({r["level"] for r in removed} | {r["level"] for r in added})
    if not levels:
        return
    stored = {
        row["level"]: row
        for row in write.execute(
            sa.select(position_stats).where(position_stats.c.event_date == day, position_stats.c.level.in_(levels))
        ).mappings()
    }
    ranges = PositionRanges()
    for level in levels:
        gone = [r for r in removed if r["level"] == level]
        current = stored.get(level)
        on_edge = current is not None and any(
            r["x"] in (current["x_min"], current["x_max"]) or r["y"] in (current["y_min"], current["y_max"]) for r in gone
        )
        if on_edge or (gone and current is None):
            x, y = game_events.c.x, game_events.c.y
            summary = write.execute(
                sa.select(sa.func.count(), sa.func.min(x), sa.func.max(x), sa.func.min(y), sa.func.max(y)).where(
                    game_events.c.event_date == day, game_events.c.level == level, x.is_not(None), y.is_not(None)
                )
            ).one()
            ranges.add_summary(level, *summary)
            continue
        if current is not None:
            ranges.add_summary(
                level,
                int(current["positions"]) - len(gone),
                current["x_min"],
                current["x_max"],
                current["y_min"],
                current["y_max"],
            )
        ranges.add_rows(r for r in added if r["level"] == level)
    write.execute(position_stats.delete().where(position_stats.c.event_date == day, position_stats.c.level.in_(levels)))
    rows = [{"event_date": day, "level": level, **vars(summary)} for level, summary in sorted(ranges.by_level.items())]
    if rows:
        write.execute(position_stats.insert(), rows)


def _day_positions(conn: sa.Connection, day: dt.date) -> dict[str, int]:
    return {
        level: int(positions)
        for level, positions in conn.execute(
            sa.select(position_stats.c.level, position_stats.c.positions)
            .where(position_stats.c.event_date == day)
            .order_by(position_stats.c.level)
        )
    }


def window_condition(
    dialect: str, src: sa.TableClause, start: dt.date | None, after: dt.datetime | None
) -> sa.ColumnElement[bool]:
    """A tick's window: rows that arrived after ``after`` (naive UTC), or with no watermark yet, every
    row with an arrival time (created_at from PARTITION_START_DATE, ``start``, on)."""
    if after is None:
        floor = start or dt.date(1, 1, 1)
        value = floor.isoformat() if dialect == "sqlite" else dt.datetime.combine(floor, dt.time.min, dt.timezone.utc)
        return src.c.created_at >= value
    return src.c.created_at > created_at_value(dialect, after)


def tick_record(
    window_after: dt.datetime | None,
    null_ids: bool,
    before: Watermark,
    removed_clean: int,
    removed_quarantined: int,
    added_clean: int,
    added_quarantined: int,
    kept: int,
) -> dict:
    """What a tick did, written with its rows (``etl_watermarks.last_tick``): the tick-aware checks
    (``invariants.py``) read the window again from the source and verify that its rows are stored,
    and that the day's counts are the ones before the tick, less what it removed, plus what it added."""
    return {
        "window_after": None if window_after is None else window_after.isoformat(),
        "null_ids": null_ids,
        "before": {"clean": before.clean_rows, "quarantined": before.quarantined_rows},
        "removed": {"clean": removed_clean, "quarantined": removed_quarantined},
        "added": {"clean": added_clean, "quarantined": added_quarantined},
        "kept": kept,
    }


def _window_rows(read: sa.Connection, day: dt.date, rules: CleaningRules, condition, ids_only: bool) -> list[sa.RowMapping]:
    """The day's source rows matching ``condition``: every extracted column, or (``ids_only``, when
    SQL judges the rows) just the id as text and the created_at."""
    if not ids_only:
        return _extract(read, day, rules, condition)
    src = source_events_table()
    dialect = read.dialect.name
    created = next(c for c in extracted_columns(dialect, src) if c.name == "created_at")
    query = sa.select(sa.cast(src.c.id, sa.Text).label("id"), created).where(
        day_filter(dialect, src, day, rules.partition_start), condition(src)
    )
    return read.execute(query).mappings().all()


def sql_tick_source_types(conn: sa.Connection) -> dict[str, str] | None:
    """The source's column types when the full load's SQL classification can judge a tick's rows
    (PostgreSQL, ``events`` in the warehouse database, UTF8, column types it handles: the
    conditions of ``sql_path.load_partition_sql``); None: the Python cleaner judges them."""
    if conn.dialect.name != "postgresql" or conn.execute(sa.text("SHOW server_encoding")).scalar() != "UTF8":
        return None
    types = sql_path._pg_source_columns(conn)
    try:
        sql_path._pg_check_types(types)
    except sql_path.UnsupportedSource:
        return None
    return types


def _judge_in_sql(
    write: sa.Connection,
    types: dict[str, str],
    id_unique: bool,
    day: dt.date,
    rules: CleaningRules,
    now: dt.datetime,
    ids: list[str],
    null_ids: bool,
) -> tuple[list[dict], list[dict], int]:
    """Judge every source row of the day with one of ``ids`` (and, ``null_ids``, every row without
    an id) as a full load does on this database: the full load's own statement
    (``sql_path._pg_statement``, restricted to those rows) inserts the certainly clean ones into
    ``game_events``, and the residue goes through the Python cleaner. Per row that is a fraction of
    the Python cleaner's cost (about 45 us a row). Returns the ids' clean rows (SQL's as stored, the
    residue's as the cleaner made them), the quarantined rows, and the source rows judged."""
    if not ids and not null_ids:
        return [], [], 0
    write.execute(
        sa.text(
            "CREATE TEMP TABLE etl_residue ON COMMIT DROP AS "
            f"SELECT {sql_path._extracted_columns('e')} FROM events e WITH NO DATA"
        )
    )
    # The certainly clean rows go to a scratch table first, then into game_events with RETURNING:
    # the tick needs them back (position_stats, session_stats_pending, position_changes), and reading
    # them back from game_events cost 10,000 primary key probes. In key order: neighbouring keys share
    # index pages.
    write.execute(sa.text("CREATE TEMP TABLE etl_tick_clean ON COMMIT DROP AS SELECT * FROM game_events WITH NO DATA"))
    # the ids as one JSON text (as _one_of passes text), each cast to the source's id type: a semi-join
    # on events' key
    rows = f"e.id IN (SELECT CAST(json_array_elements_text(CAST(:tick_ids AS json)) AS {types['id']}))"
    if null_ids:
        rows += " OR e.id IS NULL"
    statement = sql_path._pg_statement(types, id_unique, "etl_tick_clean", day, rules.partition_start, rows)
    write.execute(sa.text(statement), {**sql_path._params(day, rules, "postgresql"), "tick_ids": json.dumps(ids)})
    columns = ", ".join(f'"{c}"' for c in _COLUMNS)
    inserted = write.execute(
        sa.text(
            f"INSERT INTO game_events ({columns}) SELECT {columns} FROM etl_tick_clean ORDER BY event_id RETURNING {columns}"
        )
    )
    fast = [dict(zip(_COLUMNS, row)) for row in inserted.all()]  # (all(): one fetch, not one call a row)
    residue = sa.table("etl_residue", *(sa.column(c) for c in EXTRACTED_COLUMNS))
    query = sa.select(*extracted_columns("postgresql", residue)).order_by(residue.c.id, residue.c.created_at)
    cleaner = EventCleaner(day, rules, now)
    residue_clean, rejected = cleaner.clean(write.execute(query).mappings())
    insert_cleaned(write, game_events, residue_clean, rejected)
    return fast + residue_clean, rejected, len(fast) + cleaner.extracted


def load_increment(
    source: sa.Engine,
    warehouse: sa.Engine,
    day: dt.date,
    rules: CleaningRules,
    now: dt.datetime,
    overlap: dt.timedelta = DEFAULT_OVERLAP,
    *,
    in_warehouse: bool = False,
) -> EtlResult:
    """Load the rows of ``day`` that arrived since its last load (module docstring), in one
    transaction under the day's lock. ``in_warehouse``: the source is the warehouse database, so
    the full load's SQL can judge the rows. Raises :class:`NeedsFullLoad` (nothing written) when
    the day must be loaded in full instead."""
    with warehouse.begin() as write, source.connect() as read:
        lock_partition(write, "game_events", day)
        mark = read_watermark(write, day)
        if mark is None:
            raise NeedsFullLoad(f"{day} has no watermark yet (never loaded since incremental loads exist)")
        if mark.rules_fingerprint != rules_fingerprint(rules):
            raise NeedsFullLoad(f"{day} was loaded with other cleaning settings")
        without_arrival = _count_rows_without_arrival(read, day, rules)
        if without_arrival != mark.rows_without_arrival:
            raise NeedsFullLoad(
                f"{day} now has {without_arrival} source row(s) without a usable created_at, "
                f"{mark.rows_without_arrival} at its last load: such rows are only read by a full load"
            )
        dialect = read.dialect.name
        window_after = None if mark.created_at is None else mark.created_at - overlap
        window = lambda src: window_condition(dialect, src, rules.partition_start, window_after)  # noqa: E731
        sql_types = sql_tick_source_types(write) if in_warehouse else None
        method = "incremental (sql+python-residue)" if sql_types else "incremental (python)"
        result = EtlResult(partition_date=day, method=method, load_mode="incremental")
        arrived = _window_rows(read, day, rules, window, ids_only=sql_types is not None)

        # (key, arrival, row) of each row with an id (str: a uuid's text); arrival read once
        keyed = [(str(row["id"]), _arrival(row["created_at"]), row) for row in arrived if row["id"] is not None]
        unique_ids = source_id_is_unique(read)  # (the old schema's primary key)
        settled: set[str] = set()
        if unique_ids:
            # With one row per id, a row the last tick loaded (and judged by its created_at, not by the
            # clock) is in the day unchanged, and a row that arrived after the watermark up to the
            # last tick's clock was never read: only the others are looked up.
            last_window = set(mark.window_ids or ())
            arrivals = {key: arrival for key, arrival, _ in keyed}
            settled = {
                key
                for key in last_window.intersection(arrivals)
                if arrivals[key] is not None and mark.read_until is not None and arrivals[key] <= mark.read_until
            }
            maybe_held = sorted(key for key in arrivals if key not in settled and not _surely_unread(mark, arrivals[key]))
        else:
            maybe_held = sorted({key for key, _, _ in keyed})
        held_clean, held_quarantined = _held_ids(write, day, maybe_held)
        unchanged = settled | _already_loaded(keyed, held_clean, held_quarantined)
        held = sorted((held_clean.keys() | held_quarantined) - unchanged)
        has_null_ids = len(keyed) < len(arrived)
        before = _stored_rows(write, day, held)

        if sql_types is not None:
            deleted_clean, deleted_quarantined = _delete_held(write, day, held, has_null_ids)
            judged = sorted({key for key, _, _ in keyed} - unchanged)
            clean_rows, rejected, extracted = _judge_in_sql(
                write, sql_types, unique_ids, day, rules, now, judged, has_null_ids
            )
        else:
            # Each id the day holds is judged again on all its rows of the day; null ids all again.
            native_ids = {key: row["id"] for key, _, row in keyed}
            again: list[sa.RowMapping] = []
            if held:
                values = [native_ids[key] for key in held]
                again.extend(_extract(read, day, rules, lambda src: _one_of(dialect, src.c.id, values)))
            if has_null_ids:
                again.extend(_extract(read, day, rules, lambda src: src.c.id.is_(None)))
            not_fresh = set(held) | unchanged
            fresh = [row for key, _, row in keyed if key not in not_fresh]
            cleaner = EventCleaner(day, rules, now)
            clean_rows, rejected = cleaner.clean(fresh)
            clean_again, rejected_again = cleaner.clean(again)
            clean_rows += clean_again
            rejected += rejected_again
            extracted = cleaner.extracted
            deleted_clean, deleted_quarantined = _delete_held(write, day, held, has_null_ids)
            insert_cleaned(write, game_events, clean_rows, rejected)

        after = {row["event_id"]: row for row in clean_rows}
        removed = [old for key, old in before.items() if key not in after or any(old[c] != after[key][c] for c in _COLUMNS)]
        removed_ids = {row["event_id"] for row in removed}
        added = [row for key, row in after.items() if key not in before or key in removed_ids]
        _update_position_stats(write, day, removed, added)
        # for incremental heatmaps (warehouse/heatmap_increments.py); COPY: 9k rows 0.1 s, executemany 0.6 s
        bulk_insert(write, position_changes, change_rows(day, removed, added), CHANGE_COLUMNS)
        pending = pending_rows(day, added, {session_key(row["session_id"]) for row in removed})
        bulk_insert(write, session_stats_pending, pending, PENDING_COLUMNS)

        reasons = None
        if mark.quarantine_reasons is not None:
            counts = collections.Counter(mark.quarantine_reasons)
            counts.subtract(deleted_quarantined)
            counts.update(q["reason"] for q in rejected)
            reasons = {reason: n for reason, n in sorted(counts.items()) if n}
        window_arrivals = [arrival for _, arrival, _ in keyed]
        window_arrivals += [_arrival(row["created_at"]) for row in arrived if row["id"] is None]
        newest = max((a for a in window_arrivals if a is not None and a <= now), default=None)
        watermark = max((m for m in (mark.created_at, newest) if m is not None), default=None)
        window_ids = None
        if unique_ids:
            next_since = None if watermark is None else watermark - overlap
            window_ids = sorted(
                key for key, arrival, _ in keyed if next_since is None or arrival is None or arrival > next_since
            )
        _write_watermark(
            write,
            day,
            Watermark(
                watermark,
                now,
                mark.rows_without_arrival,
                mark.rules_fingerprint,
                mark.clean_rows - deleted_clean + len(clean_rows),
                mark.quarantined_rows - sum(deleted_quarantined.values()) + len(rejected),
                reasons,
                window_ids,
                tick_record(
                    window_after, has_null_ids, mark, deleted_clean, sum(deleted_quarantined.values()),
                    len(clean_rows), len(rejected), len(unchanged),
                ),
            ),
            "incremental",
            now,
        )
        result.positions = _day_positions(write, day)
    result.extracted = extracted
    result.already_loaded = len(unchanged)
    result.clean, result.quarantined = len(clean_rows), len(rejected)
    result.reasons = dict(sorted(collections.Counter(q["reason"] for q in rejected).items()))
    result.watermark = watermark
    return result


@dataclass(frozen=True)
class DayTotals:
    clean: int
    quarantined: int
    reasons: dict[str, int]


def day_totals(warehouse: sa.Engine, day: dt.date) -> DayTotals:
    """What the day holds after its last load: clean and quarantined rows (from its watermark row)
    and the quarantine by reason (recorded there too; counted for a day loaded before it was)."""
    with warehouse.connect() as conn:
        mark = read_watermark(conn, day)
        if mark is not None and mark.quarantine_reasons is not None:
            return DayTotals(mark.clean_rows, mark.quarantined_rows, dict(mark.quarantine_reasons))
        reasons = quarantine_by_reason(conn, day)
    if mark is None:
        return DayTotals(0, sum(reasons.values()), reasons)
    return DayTotals(mark.clean_rows, mark.quarantined_rows, reasons)


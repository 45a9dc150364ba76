"""PostgreSQL: ``game_events`` is partitioned by day; a day is replaced by swapping in a new table.

Keeping three indexes up to date row by row cost more than everything else in the load (about
15 of 27 microseconds a row at 1M rows). So each ETL run writes the day into a fresh table with
no index, builds the indexes once at the end (sorted bulk builds, parallel where PostgreSQL
can), and swaps it in: drop the day's old partition, attach the new one. The swap happens in
the run's single transaction, so readers see the old day or the new day, never a mix, and a
failed run leaves the old partition in place. The Python path stages the table in that same
transaction too (it disappears with a rollback); the SQL path stages it outside, so several
connections can fill and index it at once, and drops it itself when it fails (last section).

The swap takes ``ACCESS EXCLUSIVE`` on ``game_events`` for the few milliseconds of
drop + attach; queries on other days wait that long. The lock is taken up front, before any
other lock on the table, so two runs of different days queue instead of deadlocking. A waiting
lock request would also hold up every new reader behind it, so a run never waits for it more
than ``SWAP_LOCK_WAIT`` at a time: while a long query holds the table, the run steps back, lets
readers through, and tries again, for up to ``SWAP_LOCK_PATIENCE`` before it fails.

Rows written straight into ``game_events`` (by hand, by a test) for a day with no partition
land in ``game_events_default``; the next run of that day replaces them like any other row.

SQLite has no partitions: there the ETL deletes and inserts the day in one transaction.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import time
import uuid
from typing import Callable, TypeVar

import sqlalchemy as sa

from heatmap_pipeline.warehouse.db import sqlstate
from heatmap_pipeline.warehouse.locks import DatabaseBusy
from heatmap_pipeline.warehouse.tables import game_events

DEFAULT_PARTITION = "game_events_default"
SWAP_LOCK_WAIT = dt.timedelta(milliseconds=500)
SWAP_LOCK_PATIENCE = dt.timedelta(minutes=10)
LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout
T = TypeVar("T")


class SwapLockTimeout(DatabaseBusy):
    """Other transactions kept ``game_events`` busy for longer than ``SWAP_LOCK_PATIENCE``; retried."""


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def partition_name(day: dt.date) -> str:
    return f"game_events_{day:%Y%m%d}"


def create_stage(conn: sa.Connection, day: dt.date) -> sa.TableClause:
    """A fresh, index-less table shaped like ``game_events`` that only accepts rows of ``day``.

    Built from the columns in tables.py, not ``LIKE game_events``: LIKE takes a lock on
    game_events that the swap later upgrades, and two runs of different days each holding it
    while waiting for the other's upgrade deadlock (40P01). The CHECK constraint lets ATTACH skip
    its validation scan.
    """
    name = f"{partition_name(day)}_{uuid.uuid4().hex[:8]}"
    stage = sa.Table(
        name,
        sa.MetaData(),
        # the same names, types, collations and NOT NULLs (ATTACH requires them); no key, no index yet
        *(sa.Column(c.name, c.type, nullable=c.nullable and not c.primary_key) for c in game_events.columns),
        sa.CheckConstraint(f"event_date = DATE '{day.isoformat()}'", name=f"{name}_day"),
    )
    conn.execute(sa.schema.CreateTable(stage))
    return sa.table(name, *(sa.column(c.name) for c in game_events.columns))


# Memory for the index builds (SET LOCAL, this transaction only): with the default 64 MB a 1M-event
# day's primary key (36-character uuid text) sorts on disk, and took 8.9 s instead of 2.2 s while the
# machine was busy (BENCHMARKS.md).
INDEX_BUILD_MEMORY = "256MB"


def _index_statements(name: str) -> tuple[str, list[str]]:
    """The parent's indexes for the table ``name``: its primary key (as ``ALTER TABLE``) and the
    ``CREATE INDEX`` of every other index this dialect has."""
    pk = ", ".join(quote_ident(c.name) for c in game_events.primary_key.columns)
    others = []
    for index in sorted(game_events.indexes, key=lambda i: i.name):
        if index._ddl_if is not None and index._ddl_if.dialect not in (None, "postgresql"):
            continue  # another dialect's index
        columns = ", ".join(quote_ident(c.name) for c in index.columns)
        include = index.dialect_options["postgresql"].get("include") or []
        suffix = f" INCLUDE ({', '.join(quote_ident(str(c)) for c in include)})" if include else ""
        others.append(f"CREATE INDEX ON {quote_ident(name)} ({columns}){suffix}")
    return pk, others


def _build_indexes(conn: sa.Connection, name: str) -> None:
    """The parent's indexes, built once on the loaded table; ATTACH adopts them as they are."""
    conn.execute(sa.text(f"SET LOCAL maintenance_work_mem = '{INDEX_BUILD_MEMORY}'"))
    pk, others = _index_statements(name)
    conn.execute(sa.text(f"ALTER TABLE {quote_ident(name)} ADD PRIMARY KEY ({pk})"))
    for statement in others:
        conn.execute(sa.text(statement))


def current_partition(conn: sa.Connection, day: dt.date) -> str | None:
    return conn.execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'game_events'::regclass AND pg_get_expr(c.relpartbound, c.oid) = :bound"
        ),
        {"bound": f"FOR VALUES IN ('{day.isoformat()}')"},
    ).scalar()


def lock_for_swap(conn: sa.Connection, wait: dt.timedelta | None = None, patience: dt.timedelta | None = None) -> None:
    """``ACCESS EXCLUSIVE`` on game_events, asked for ``wait`` at a time so readers never queue long."""
    wait = wait or SWAP_LOCK_WAIT
    patience = patience or SWAP_LOCK_PATIENCE
    deadline = time.monotonic() + patience.total_seconds()
    pause = 0.05
    while True:
        conn.execute(sa.text("SAVEPOINT swap_lock"))
        conn.execute(sa.text(f"SET LOCAL lock_timeout = '{int(wait.total_seconds() * 1000)}ms'"))
        try:
            conn.execute(sa.text("LOCK TABLE game_events IN ACCESS EXCLUSIVE MODE"))
        except sa.exc.OperationalError as exc:
            if sqlstate(exc) != LOCK_NOT_AVAILABLE:
                raise
            conn.execute(sa.text("ROLLBACK TO SAVEPOINT swap_lock"))  # undoes the SET LOCAL too
            if time.monotonic() > deadline:
                raise SwapLockTimeout(
                    f"could not swap in the new partition: other transactions held game_events for "
                    f"more than {patience}; the old partition is unchanged"
                ) from exc
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
            continue
        conn.execute(sa.text("SET LOCAL lock_timeout = 0"))
        conn.execute(sa.text("RELEASE SAVEPOINT swap_lock"))
        return


def swap_in(conn: sa.Connection, day: dt.date, stage: sa.TableClause) -> None:
    """Index the loaded table and make it the day's partition, replacing the old one."""
    _build_indexes(conn, stage.name)
    attach(conn, day, stage.name)


def attach(conn: sa.Connection, day: dt.date, name: str) -> None:
    """Make the indexed table ``name`` the day's partition, replacing the old one."""
    lock_for_swap(conn)
    old = current_partition(conn, day)
    if old is not None:
        conn.execute(sa.text(f"DROP TABLE {quote_ident(old)}"))
    # rows of this day written straight into the parent (default partition) are replaced too
    conn.execute(sa.text(f"DELETE FROM {DEFAULT_PARTITION} WHERE event_date = :d"), {"d": day})
    conn.execute(sa.text(f"ALTER TABLE game_events ATTACH PARTITION {quote_ident(name)} FOR VALUES IN ('{day.isoformat()}')"))


# --- a day staged outside the load's transaction ------------------------------------------------
# One backend uses one core, and filling and indexing the day's table is most of a full load. So
# the SQL path creates the table (and a residue table beside it) in a transaction of its own,
# fills it and builds its indexes from several connections at once, and only then, in the load's
# transaction, swaps it in. Readers still see the old day or the new one, never a mix; but a
# failed load must drop these committed tables itself (``drop_tables``), and those of a load that
# was killed are dropped by the next load of the day (``leftover_tables``).


def residue_name(stage: str) -> str:
    """The residue table that goes with the stage table ``stage`` (same day and suffix)."""
    return "etl_residue_" + stage.removeprefix("game_events_")


def create_stage_committed(engine: sa.Engine, day: dt.date) -> sa.TableClause:
    """:func:`create_stage` in a transaction of its own, so other connections can fill the table.
    Call under the day's advisory lock (held by the load's transaction), after ``leftover_tables``."""
    with engine.begin() as conn:
        return create_stage(conn, day)


def leftover_tables(conn: sa.Connection, day: dt.date) -> list[str]:
    """Stage and residue tables of ``day`` that are no partition: left by a load that was killed.
    Only the holder of the day's advisory lock may create them, so under that lock none is in use."""
    return conn.execute(
        sa.text(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = CAST(current_schema() AS regnamespace) "
            "AND ((relname LIKE :stage AND NOT relispartition) OR relname LIKE :residue) ORDER BY relname"
        ),
        {"stage": f"game\\_events\\_{day:%Y%m%d}\\_%", "residue": f"etl\\_residue\\_{day:%Y%m%d}\\_%"},
    ).scalars().all()


def drop_tables(conn: sa.Connection, names: list[str]) -> None:
    for name in names:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {quote_ident(name)}"))


def on_connections(jobs: list[Callable[[], T]]) -> list[T]:
    """Run the jobs at once, each in a thread on a connection no other job uses (the driver waits
    for the server without holding the GIL); their results in order. Every job runs to its end;
    the first failure is raised after that."""
    if len(jobs) == 1:
        return [jobs[0]()]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(job) for job in jobs]
        concurrent.futures.wait(futures)
    return [future.result() for future in futures]


def index_builds(engine: sa.Engine, name: str) -> list[Callable[[], None]]:
    """The parent's indexes on the committed, filled table ``name``, as jobs for
    :func:`on_connections`: each builds one index on a connection of its own (a build is one
    sort, one core), the primary key as a unique index that :func:`adopt_primary_key` turns into
    the constraint ATTACH looks for. Run them before the load's transaction writes into the
    table: a build waits for every writer of the table."""
    pk, others = _index_statements(name)
    statements = [f"CREATE UNIQUE INDEX {quote_ident(name + '_pkey')} ON {quote_ident(name)} ({pk})", *others]

    def build(statement: str) -> Callable[[], None]:
        def run() -> None:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text(f"SET maintenance_work_mem = '{INDEX_BUILD_MEMORY}'"))
                try:
                    conn.execute(sa.text(statement))
                finally:
                    conn.execute(sa.text("RESET maintenance_work_mem"))

        return run

    return [build(statement) for statement in statements]


def adopt_primary_key(conn: sa.Connection, name: str) -> None:
    """The unique index :func:`index_builds` built becomes the table's primary key (no scan)."""
    index = quote_ident(name + "_pkey")
    conn.execute(sa.text(f"ALTER TABLE {quote_ident(name)} ADD CONSTRAINT {index} PRIMARY KEY USING INDEX {index}"))


def vacuum_partition(engine: sa.Engine, day: dt.date) -> None:
    """VACUUM the day's partition once its load has committed, so the heatmaps that follow the ETL
    read it with index-only scans and without setting hint bits on every page themselves.

    A freshly loaded partition has no visibility map: until autovacuum visits it (a minute or so
    later, or never where it is off) every index read also visits the heap. VACUUM cannot run in
    the load's transaction; run after it, its time is part of the ETL's. A failure here loses
    nothing (the day is loaded): the caller logs it.
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        partition = current_partition(conn, day)
        if partition is not None:
            conn.execute(sa.text(f"VACUUM {quote_ident(partition)}"))

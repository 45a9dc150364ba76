"""Creating and migrating the warehouse tables: one explicit step, never a side effect of a getter.

``heatmap-pipeline migrate`` runs :func:`ensure_warehouse_schema`; so does ``heatmap-pipeline dev`` at
start, the admin API at start, and ``WarehouseDatabase.setup_for_execution`` before a run uses the
warehouse. It creates what is missing, adds missing columns to the old system's ``heatmaps`` and
``leaderboard_aggregates`` and to an earlier version's ``admin_trigger_requests``, and on PostgreSQL makes ``game_events`` the day-partitioned table
(migrating an earlier version's plain table once, rows and all). Idempotent and cheap when done.
"""

from __future__ import annotations

import threading

import sqlalchemy as sa

from heatmap_pipeline.warehouse.etl.pg_partitions import DEFAULT_PARTITION, partition_name, quote_ident
from heatmap_pipeline.warehouse.locks import lock_partition
from heatmap_pipeline.warehouse.tables import game_events, metadata, source_metadata


UNPARTITIONED = "game_events_unpartitioned"

def _relkind(conn: sa.Connection, name: str) -> str | None:
    return conn.execute(sa.text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:n)"), {"n": name}).scalar()

def ensure_partitioned(conn: sa.Connection) -> None:
    """Make ``game_events`` the partitioned table; migrate an earlier version's plain table.

    Called by :func:`ensure_warehouse_schema` under its lock, after ``create_all``.
    """
    if _relkind(conn, "game_events") == "r":
        # An earlier version's plain table: move its rows into day partitions, once.
        conn.execute(sa.text(f"ALTER TABLE game_events RENAME TO {UNPARTITIONED}"))
        for index in conn.execute(
            sa.text("SELECT indexname FROM pg_indexes WHERE tablename = :t AND schemaname = current_schema()"),
            {"t": UNPARTITIONED},
        ).scalars():
            conn.execute(sa.text(f"ALTER INDEX {quote_ident(index)} RENAME TO {quote_ident('old_' + index)}"))
        game_events.create(conn)
        days = conn.execute(sa.text(f"SELECT DISTINCT event_date FROM {UNPARTITIONED} ORDER BY 1")).scalars().all()
        for day in days:
            conn.execute(
                sa.text(f"CREATE TABLE {quote_ident(partition_name(day))} PARTITION OF game_events FOR VALUES IN ('{day.isoformat()}')")
            )
        columns = ", ".join(quote_ident(c.name) for c in game_events.columns)
        conn.execute(sa.text(f"INSERT INTO game_events ({columns}) SELECT {columns} FROM {UNPARTITIONED}"))
        conn.execute(sa.text(f"DROP TABLE {UNPARTITIONED}"))
    conn.execute(sa.text(f"CREATE TABLE IF NOT EXISTS {DEFAULT_PARTITION} PARTITION OF game_events DEFAULT"))


def _add_missing_columns(conn: sa.Connection, table: sa.Table) -> None:
    existing = {col["name"] for col in sa.inspect(conn).get_columns(table.name)}
    for column in table.columns:
        if column.name not in existing and not column.primary_key:
            col_type = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {col_type}'))

def _index_shape(columns, include) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(str(c) for c in columns), tuple(str(c) for c in include or ())


def rebuild_changed_indexes(conn: sa.Connection, table: sa.Table) -> None:
    """Drop and re-create each of ``table``'s indexes (of this dialect) whose columns differ from
    the definition in tables.py: ``create_all`` leaves an existing index as it is, e.g. the
    heatmap index before it covered the kinds' columns. On PostgreSQL the index of the
    partitioned table is rebuilt on every partition (one build per loaded day, here, once)."""
    existing = {
        found["name"]: _index_shape(found["column_names"], found.get("dialect_options", {}).get("postgresql_include"))
        for found in sa.inspect(conn).get_indexes(table.name)
    }
    for index in sorted(table.indexes, key=lambda i: i.name):
        if index._ddl_if is not None and index._ddl_if.dialect not in (None, conn.dialect.name):
            continue  # another dialect's index
        include = index.dialect_options["postgresql"].get("include") if conn.dialect.name == "postgresql" else None
        if existing.get(index.name, None) in (None, _index_shape((c.name for c in index.columns), include)):
            continue  # missing ones come from create_all with the table; this one is as defined
        conn.execute(sa.text(f"DROP INDEX {quote_ident(index.name)}"))
        index.create(conn)


class OldTableConflict(RuntimeError):
    """An old table holds data our constraints cannot take; the migration changed nothing."""


def refuse_duplicate_heatmaps(conn: sa.Connection) -> None:
    """The old heatmap job's own table has no unique (level, date): if it holds two rows for one,
    the old reader showed either, and our unique index cannot be built. Which to keep is the
    team's call, so name them and stop (the transaction is rolled back: nothing changed)."""
    duplicated = conn.execute(
        sa.text("SELECT level, date, count(*) FROM heatmaps GROUP BY level, date HAVING count(*) > 1 ORDER BY date, level")
    ).all()
    if duplicated:
        shown = ", ".join(f"level {level!r} on {day} ({count} rows)" for level, day, count in duplicated[:5])
        raise OldTableConflict(
            f"the old heatmaps table has more than one row for {len(duplicated)} (level, date) pair(s): {shown}"
            f"{', ...' if len(duplicated) > 5 else ''}. Delete the rows you do not want to keep (README: Migrating from "
            "the old job runner), then run heatmap-pipeline migrate again; nothing was changed."
        )


def ensure_heatmaps_id(conn: sa.Connection) -> None:
    """Give an old ``heatmaps`` table the generated ``id`` our insert relies on (PostgreSQL).

    The old system's migration 003 made ``id`` a plain ``bigint`` primary key (its app chose the ids):
    no default, so our insert, which names no id, failed with a NotNullViolation. It gets an owned
    sequence starting past the highest id there. The table the old heatmap job created has no ``id``
    at all (our insert returns it): it gets a ``bigserial`` one, numbering the existing rows."""
    row = conn.execute(
        sa.text(
            "SELECT column_default, is_identity FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = 'heatmaps' AND column_name = 'id'"
        )
    ).first()
    if row is None:
        has_key = conn.execute(
            sa.text("SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass('heatmaps') AND contype = 'p'")
        ).first()
        conn.execute(sa.text("ALTER TABLE heatmaps ADD COLUMN id bigserial" + ("" if has_key else " PRIMARY KEY")))
        return
    if row.column_default is not None or row.is_identity == "YES":
        return
    conn.execute(sa.text("CREATE SEQUENCE IF NOT EXISTS heatmaps_id_seq OWNED BY heatmaps.id"))
    conn.execute(sa.text("SELECT setval('heatmaps_id_seq', COALESCE(MAX(id), 0) + 1, false) FROM heatmaps"))
    conn.execute(sa.text("ALTER TABLE heatmaps ALTER COLUMN id SET DEFAULT nextval('heatmaps_id_seq')"))


def stamp_old_created_at(conn: sa.Connection) -> None:
    """Migration 003's ``heatmaps.created_at`` (not ours: we keep ``updated_at``) would stay NULL on
    the rows we write; without a default of its own it gets ``now()``, so it still says when a row was written."""
    conn.execute(
        sa.text(
            "DO $$ BEGIN IF EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = 'heatmaps' AND column_name = 'created_at' AND column_default IS NULL) THEN "
            "ALTER TABLE heatmaps ALTER COLUMN created_at SET DEFAULT now(); END IF; END $$"
        )
    )


def ensure_warehouse_schema(engine: sa.Engine) -> None:
    """Create our tables if missing, and bring an old deployment's tables up to date (idempotent)."""
    with engine.begin() as conn:
        lock_partition(conn, "schema")  # two first runs at once must not both create the tables
        inspector = sa.inspect(conn)
        old_tables = {t.name for t in metadata.sorted_tables if inspector.has_table(t.name)}
        if "heatmaps" in old_tables:
            refuse_duplicate_heatmaps(conn)
        metadata.create_all(conn, checkfirst=True)
        for name in ("heatmaps", "leaderboard_aggregates", "admin_trigger_requests", "etl_watermarks", "session_stats_pending"):
            if name in old_tables:
                _add_missing_columns(conn, metadata.tables[name])
        if "quarantined_events" in old_tables:  # create_all adds no index to an existing table
            conn.execute(
                sa.text(
                    "CREATE INDEX IF NOT EXISTS ix_quarantined_events_source_id ON quarantined_events (partition_date, source_event_id)"
                )
            )
        if "heatmaps" in old_tables:
            # An old table may lack the unique (level, date) our upsert relies on.
            conn.execute(sa.text("CREATE UNIQUE INDEX IF NOT EXISTS uq_heatmaps_level_date_idx ON heatmaps (level, date)"))
            if conn.dialect.name == "postgresql":
                ensure_heatmaps_id(conn)
                stamp_old_created_at(conn)
        # Earlier versions indexed game_events.session_id for the leaderboard, which now reads
        # session_stats; the index only slowed every load down.
        conn.execute(sa.text("DROP INDEX IF EXISTS ix_game_events_session"))
        if conn.dialect.name == "sqlite":  # replaced by the covering ix_game_events_positions
            conn.execute(sa.text("DROP INDEX IF EXISTS ix_game_events_date_level"))
        if conn.dialect.name == "postgresql":
            ensure_partitioned(conn)
        rebuild_changed_indexes(conn, game_events)

def ensure_source_schema(engine: sa.Engine) -> None:
    """Create the game backend's ``events`` table (demo and tests only) and its timestamp index."""
    source_metadata.create_all(engine, checkfirst=True)


_migrated: set[str] = set()
_migrated_lock = threading.Lock()


def migrate_once(engine: sa.Engine) -> None:
    """:func:`ensure_warehouse_schema`, at most once per process and database: for the resource's
    ``setup_for_execution``, which Dagster calls before every run, check and sensor tick."""
    key = engine.url.render_as_string(hide_password=False)
    with _migrated_lock:
        if key in _migrated:
            return
        ensure_warehouse_schema(engine)
        _migrated.add(key)

"""The warehouse schema, as SQLAlchemy Core tables. Every other module imports tables from here.

``heatmaps`` and ``leaderboard_aggregates`` keep the old system's names and columns, so
existing readers (the game's ``/api/v1/heatmap``, dashboards) keep working; we only add
columns. ``migrations.py`` creates what is missing and adds missing columns to tables an old deployment
already has.
"""

from __future__ import annotations

import sqlalchemy as sa

# --- The game backend's table (not ours: we read it; the demo and the tests create it) -----
source_metadata = sa.MetaData()

events = sa.Table(
    "events",
    source_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.String(128)),
    sa.Column("session_id", sa.String(128)),
    sa.Column("event_type", sa.String(64)),
    sa.Column("event_name", sa.String(128)),
    sa.Column("event_category", sa.String(64)),
    sa.Column("payload", sa.JSON),
    sa.Column("timestamp", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Index("ix_events_timestamp", "timestamp"),
    sa.Index("ix_events_created_at", "created_at"),  # the late-events sensor reads created_at > cursor
)

# The columns we read, in the order the extraction selects them (and quarantined raw rows keep).
SOURCE_EVENT_COLUMNS = tuple(column.name for column in events.columns)

# --- The warehouse: tables this project owns ------------------------------------------------
metadata = sa.MetaData()

def _bytewise(length: int) -> sa.types.TypeEngine:
    """Text compared byte by byte on PostgreSQL: its indexes build ~1.5x faster than under a
    locale collation, and ids sort the way Python sorts them. SQLite already compares bytes."""
    return sa.String(length, collation="C").with_variant(sa.String(length), "sqlite")


# The game_events columns the heatmap binning reads besides (event_date, level): the covering
# indexes below carry them (warehouse/heatmaps.py: positions, kinds bitmask, sessions).
HEATMAP_READ_COLUMNS = ("x", "y", "event_type", "event_name", "session_id")

game_events = sa.Table(
    "game_events",
    metadata,
    sa.Column("event_date", sa.Date, primary_key=True, comment="UTC day of ts: the daily partition"),
    sa.Column("event_id", _bytewise(64), primary_key=True, comment="events.id of the source row"),
    sa.Column("user_id", sa.String(128)),
    sa.Column("session_id", sa.String(128)),
    sa.Column("event_type", sa.String(64)),
    sa.Column("event_name", sa.String(128)),
    sa.Column("event_category", sa.String(64)),
    sa.Column("ts", sa.DateTime(timezone=False), nullable=False, comment="event time, UTC"),
    sa.Column("level", _bytewise(64), comment="payload level, or HEATMAP_DEFAULT_LEVEL for positions without one"),
    sa.Column("x", sa.Float),
    sa.Column("y", sa.Float),
    sa.Column("score", sa.Float),
    sa.Column("final_score", sa.Float),
    sa.Column("payload", sa.Text, comment="the payload as JSON text, for anything not typed above"),
    sa.Column("created_at", sa.DateTime(timezone=False)),
    # PostgreSQL: covering, so the heatmap queries (per date and level) are index-only scans once
    # the pages are all-visible (the ETL vacuums a loaded day). They read x and y, and for the
    # kinds and their sessions event_type, event_name and session_id (a kind's payload filter
    # still reads the heap). migrations.py rebuilds an existing index whose columns differ.
    sa.Index(
        "ix_game_events_date_level", "event_date", "level", postgresql_include=list(HEATMAP_READ_COLUMNS)
    ).ddl_if(dialect="postgresql"),
    # SQLite has no INCLUDE: the same columns as key columns make its heatmap queries index-only too.
    sa.Index("ix_game_events_positions", "event_date", "level", *HEATMAP_READ_COLUMNS).ddl_if(dialect="sqlite"),
    # PostgreSQL: one partition per day (warehouse/etl/pg_partitions.py). A day is loaded into a
    # fresh table, indexed after the load and attached: far cheaper than keeping three indexes
    # up to date row by row, and replacing a day is a swap instead of a DELETE.
    postgresql_partition_by="LIST (event_date)",
)

# Written by the ETL in the transaction that replaces a day of game_events: per level, how many
# position events (x and y present) the day has and their range. The heatmaps read their
# automatic bounds here instead of scanning the day once more for min/max.
position_stats = sa.Table(
    "position_stats",
    metadata,
    sa.Column("event_date", sa.Date, primary_key=True),
    sa.Column("level", sa.String(64), primary_key=True),
    sa.Column("positions", sa.BigInteger, nullable=False),
    sa.Column("x_min", sa.Float, nullable=False),
    sa.Column("x_max", sa.Float, nullable=False),
    sa.Column("y_min", sa.Float, nullable=False),
    sa.Column("y_max", sa.Float, nullable=False),
)

quarantined_events = sa.Table(
    "quarantined_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("partition_date", sa.Date, nullable=False),
    sa.Column("source_event_id", sa.String(64)),
    sa.Column("reason", sa.String(64), nullable=False, comment="machine-readable, see core/cleaning.py REASONS"),
    sa.Column("detail", sa.Text),
    sa.Column("raw_row", sa.Text, nullable=False, comment="the source row as JSON text"),
    sa.Column("quarantined_at", sa.DateTime(timezone=False), nullable=False),
    sa.Index("ix_quarantined_events_partition", "partition_date", "reason"),
    # an incremental tick looks up the ids that arrived (warehouse/etl/incremental.py)
    sa.Index("ix_quarantined_events_source_id", "partition_date", "source_event_id"),
)

session_stats = sa.Table(
    "session_stats",
    metadata,
    sa.Column("event_date", sa.Date, primary_key=True),
    sa.Column("session_id", sa.String(128), primary_key=True),
    sa.Column("user_id", sa.String(128)),
    sa.Column("first_event_at", sa.DateTime(timezone=False)),
    sa.Column("last_event_at", sa.DateTime(timezone=False)),
    sa.Column("duration_seconds", sa.Float),
    sa.Column("event_count", sa.Integer, nullable=False),
    sa.Column("max_score", sa.Float),
    sa.Column("final_score", sa.Float),
    sa.Column("levels_played", sa.Text, comment="comma-separated, sorted"),
    sa.Column("deaths", sa.Integer, nullable=False),
    # the leaderboard sums each touched session over all its days
    sa.Index("ix_session_stats_session", "session_id"),
)

# The old ETL's table: one row per session over all days (the old job appended duplicates).
leaderboard_aggregates = sa.Table(
    "leaderboard_aggregates",
    metadata,
    sa.Column("session_id", sa.String(128), primary_key=True),
    sa.Column("event_count", sa.Integer, nullable=False),
    sa.Column("score_max", sa.Float),
    sa.Column("updated_at", sa.DateTime(timezone=False)),
)

# The old heatmap table. level/date/grid_size/matrix are the old columns, in the old types:
# matrix rows are y bins, columns are x bins.
heatmaps = sa.Table(
    "heatmaps",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("level", sa.String(64), nullable=False),
    sa.Column("date", sa.Date, nullable=False),
    sa.Column("grid_size", sa.String(16), nullable=False),
    sa.Column("matrix", sa.JSON, nullable=False),
    sa.Column("x_min", sa.Float),
    sa.Column("x_max", sa.Float),
    sa.Column("y_min", sa.Float),
    sa.Column("y_max", sa.Float),
    sa.Column("bounds_source", sa.String(16), comment="'fixed' (HEATMAP_BOUNDS) or 'auto' (the day's own min/max)"),
    sa.Column("total", sa.Float),
    sa.Column("max_count", sa.Float),
    sa.Column("nonempty_cells", sa.Integer),
    sa.Column("out_of_bounds", sa.Integer),
    sa.Column("updated_at", sa.DateTime(timezone=False)),
    sa.UniqueConstraint("level", "date", name="uq_heatmaps_level_date"),
)

# Every heatmap kind of a (level, date): positions, deaths, jumps, ... (see the levels file, HEATMAP_LEVELS_FILE).
# The positions kind is also written to the old ``heatmaps`` row, unchanged, so old readers
# (``SELECT matrix FROM heatmaps WHERE level AND date``) still get exactly one row; the read API and
# the designer page read this table only. Written by level_heatmaps in the transaction of the old row.
heatmap_kinds = sa.Table(
    "heatmap_kinds",
    metadata,
    sa.Column("level", sa.String(64), primary_key=True),
    sa.Column("date", sa.Date, primary_key=True),
    sa.Column("kind", sa.String(64), primary_key=True),
    sa.Column("grid_x", sa.Integer, nullable=False, comment="columns of matrix (x bins)"),
    sa.Column("grid_y", sa.Integer, nullable=False, comment="rows of matrix (y bins)"),
    sa.Column("matrix", sa.JSON, nullable=False, comment="rows = y bins (row 0 = lowest y), columns = x bins"),
    sa.Column("x_min", sa.Float),
    sa.Column("x_max", sa.Float),
    sa.Column("y_min", sa.Float),
    sa.Column("y_max", sa.Float),
    sa.Column("bounds_source", sa.String(16), comment="'fixed' (levels file / HEATMAP_BOUNDS) or 'auto'"),
    sa.Column("total", sa.Float, nullable=False, comment="sum of the matrix: in-bounds events of the kind"),
    sa.Column("max_count", sa.Float, nullable=False),
    sa.Column("nonempty_cells", sa.Integer, nullable=False),
    sa.Column("out_of_bounds", sa.Integer, nullable=False),
    sa.Column("events", sa.Integer, nullable=False, comment="events of the kind with x and y, in bounds or not"),
    sa.Column("sessions", sa.Integer, nullable=False, comment="distinct sessions among those events (per-session normalisation)"),
    sa.Column("updated_at", sa.DateTime(timezone=False), nullable=False),
    sa.Index("ix_heatmap_kinds_level_kind_date", "level", "kind", "date"),
)

admin_trigger_requests = sa.Table(
    "admin_trigger_requests",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("tasks", sa.JSON, nullable=False),
    sa.Column("levels", sa.JSON, nullable=False),
    sa.Column("date", sa.Date, nullable=False),
    sa.Column("state", sa.String(16), nullable=False, comment="pending, launching, launched, done, error"),
    sa.Column("stage", sa.String(16), nullable=False, comment="the task being launched or run: etl, then heatmap"),
    sa.Column("run_ids", sa.JSON, nullable=False, comment='{"etl": run id, "heatmap:<level>": run id}'),
    sa.Column("run_statuses", sa.JSON, comment="last Dagster status seen per run slot, same keys as run_ids"),
    sa.Column("launched_by", sa.String(32), comment="who claimed the current stage: 'endpoint' or 'sensor'"),
    sa.Column("requester", sa.String(128), comment="client address of the HTTP request"),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=False), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=False), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=False)),
    sa.Column("etl_reason", sa.Text, comment="why the ETL stage was put before a heatmap-only request's heatmaps"),
    sa.Index("ix_admin_trigger_requests_state", "state"),
)

# One claim per job and partition: whoever launches a run of them (the admin API, the admin,
# schedule and sensors) first takes this row in one transaction (warehouse/run_claims.py), so
# two processes never both launch one. The claimed run carries ``claim`` as its
# heatmap_pipeline/claim tag; the claim is free again once that run has ended.
run_claims = sa.Table(
    "run_claims",
    metadata,
    sa.Column("job_name", sa.String(64), primary_key=True),
    sa.Column("partition_key", sa.String(128), primary_key=True),
    sa.Column("claim", sa.String(200), nullable=False, comment="the holder's token, also the run's heatmap_pipeline/claim tag"),
    sa.Column("claimed_by", sa.String(64), nullable=False, comment="admin_api, admin_trigger_sensor, etl_schedule"),
    sa.Column("run_id", sa.String(64), comment="the claimed run, once the holder knows it"),
    sa.Column("claimed_at", sa.DateTime(timezone=False), nullable=False),
)

# --- Incremental ETL (warehouse/etl/incremental.py) -----------------------------------------
# Per day: how far its game_events are loaded. A scheduled tick reads only the source rows with
# created_at after ``created_at_watermark`` minus ETL_INCREMENTAL_OVERLAP_SECONDS. Written by every
# load of the day (full or incremental); a tick finding no row, another ``rules_fingerprint`` or
# another count of rows without a usable created_at rebuilds the day in full.
etl_watermarks = sa.Table(
    "etl_watermarks",
    metadata,
    sa.Column("event_date", sa.Date, primary_key=True),
    sa.Column("created_at_watermark", sa.DateTime(timezone=False), comment="newest source created_at loaded (UTC, not after the run's clock)"),
    sa.Column("rows_without_arrival", sa.BigInteger, nullable=False, comment="source rows of the day with created_at NULL or before PARTITION_START_DATE"),
    sa.Column("created_at_read_until", sa.DateTime(timezone=False), comment="a tick's clock: no row with created_at after the watermark up to this was loaded (NULL after a full load)"),
    sa.Column("rules_fingerprint", sa.String(64), nullable=False, comment="the cleaning settings the day was loaded with"),
    sa.Column("clean_rows", sa.BigInteger, nullable=False, comment="game_events rows of the day after the last load"),
    sa.Column("quarantined_rows", sa.BigInteger, nullable=False, comment="quarantined_events rows of the day after the last load"),
    sa.Column("quarantine_reasons", sa.JSON, comment="those rows by reason, {reason: rows}"),
    sa.Column("window_ids", sa.JSON, comment="primary-key source: ids of the last tick's rows its next window re-reads"),
    sa.Column("last_tick", sa.JSON, comment="what the last load did when it was a tick (its window, the day's counts before, removed, added): the tick-aware checks verify it"),
    sa.Column("load_mode", sa.String(16), nullable=False, comment="'full' or 'incremental': the last load"),
    sa.Column("loaded_at", sa.DateTime(timezone=False), nullable=False),
)

# What session_stats has not folded in yet, written by the ETL in the transaction of its rows and
# emptied by session_stats: each added game_events row with what its session's stats need (so the
# merge reads no game_events); (session, '') when a session lost a row (recompute it); ('*', '')
# after a full load of the day (rebuild the day).
session_stats_pending = sa.Table(
    "session_stats_pending",
    metadata,
    sa.Column("event_date", sa.Date, nullable=False),
    sa.Column("session_id", sa.String(128), nullable=False),
    sa.Column("event_id", _bytewise(64), nullable=False),
    sa.Column("user_id", sa.String(128)),
    sa.Column("ts", sa.DateTime(timezone=False)),
    sa.Column("max_score", sa.Float, comment="the better of score and final_score, as session_stats.max_score counts it"),
    sa.Column("final_score", sa.Float),
    sa.Column("deaths", sa.Integer),
    sa.Column("level", sa.String(64)),
    sa.Index("ix_session_stats_pending_date", "event_date"),
)

# --- Incremental heatmaps (warehouse/position_changes.py, warehouse/heatmap_increments.py) ------
# The day's position rows (level, x and y present) an incremental ETL tick added (+1) or removed
# (-1), written in the tick's transaction; ``seq`` grows with every row (AUTOINCREMENT on SQLite:
# a pruned number is never reused). A full load of the day deletes the day's rows and moves its
# generation on. A heatmap with fixed bounds folds in the rows after the ``seq`` it applied last.
position_changes = sa.Table(
    "position_changes",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("event_date", sa.Date, nullable=False),
    sa.Column("level", sa.String(64), nullable=False),
    sa.Column("change", sa.SmallInteger, nullable=False, comment="+1 the tick added the row, -1 it removed it"),
    # the game_events columns a heatmap bins and sorts into kinds (HEATMAP_READ_COLUMNS, payload filters)
    sa.Column("x", sa.Float, nullable=False),
    sa.Column("y", sa.Float, nullable=False),
    sa.Column("event_type", sa.String(64)),
    sa.Column("event_name", sa.String(128)),
    sa.Column("session_id", sa.String(128)),
    sa.Column("payload", sa.Text),
    sa.Index("ix_position_changes_day_level_seq", "event_date", "level", "seq"),
    sqlite_autoincrement=True,
)

# Per day: which full load its position_changes follow. Moved on (in the load's transaction) by
# every full load of the day; a day without a row is generation 0.
position_change_generations = sa.Table(
    "position_change_generations",
    metadata,
    sa.Column("event_date", sa.Date, primary_key=True),
    sa.Column("generation", sa.BigInteger, nullable=False),
)

# Per (level, date): what its stored heatmap_kinds rows were computed from, written with them. A
# later run applies only newer position_changes when the day's generation and the configuration
# (grid, fixed bounds, kinds: ``fingerprint``) are still these.
heatmap_increments = sa.Table(
    "heatmap_increments",
    metadata,
    sa.Column("level", sa.String(64), primary_key=True),
    sa.Column("date", sa.Date, primary_key=True),
    sa.Column("generation", sa.BigInteger, nullable=False, comment="position_change_generations of the day"),
    sa.Column("applied_seq", sa.BigInteger, nullable=False, comment="newest position_changes.seq folded in (0: none)"),
    sa.Column("fingerprint", sa.String(64), nullable=False, comment="grid, fixed bounds and kinds the rows were binned with"),
    sa.Column("updated_at", sa.DateTime(timezone=False), nullable=False),
)

# Per (level, date, kind, session): the kind's position events of the session (in bounds or not),
# kept for fixed-bounds levels only, so an incremental run keeps heatmap_kinds.sessions exact: a
# session counts while its count is above zero. Sessions without id are not counted, as in full.
heatmap_kind_sessions = sa.Table(
    "heatmap_kind_sessions",
    metadata,
    sa.Column("level", sa.String(64), primary_key=True),
    sa.Column("date", sa.Date, primary_key=True),
    sa.Column("kind", sa.String(64), primary_key=True),
    sa.Column("session_id", sa.String(128), primary_key=True),
    sa.Column("events", sa.Integer, nullable=False),
)

"""Benchmark: the old heatmap job's approach against our pipeline, on the same data, in one process.

For each database (PostgreSQL, SQLite) and day size it builds the old system's ``events`` table
(PostgreSQL: uuid ids, timestamptz, a json payload - ``--payload-type`` jsonb or text - its six
indexes and the created_at index README.md asks for; SQLite: the same columns, text ids), generates
one deterministic day of events (3 levels, ~1% malformed rows) into a fresh database and measures,
in this order:

* ``etl``       - ``game_events`` for that day, materialized in-process with ``dagster.materialize``
                  (extract, clean, quarantine, load, index, swap, VACUUM); its time split by statement;
* ``heatmaps``  - ``level_heatmaps`` for the 3 levels of that day right after the ETL, as production
                  runs them: 3 in-process materializations with their ``matrix_consistent`` check;
* ``floor_read``- the database's own time to read the typed columns a heatmap needs
                  (level, x, y of the day, per level, aggregated server-side so nothing is shipped);
* ``floor_bincount`` - ``np.bincount`` over in-memory cell indices of all the day's positions;
* ``dagster_overhead`` - one in-process materialization of a no-op partitioned asset;
* ``reference`` - the old job re-implemented: per level, ``SELECT id, timestamp, payload FROM
                  events WHERE DATE(timestamp) = :d ORDER BY timestamp``, ``pd.json_normalize``,
                  the level filter, ``pd.to_numeric``, ``np.histogram2d`` on the data's own range;
* ``heatmaps_fixed`` - the 3 heatmaps again with fixed bounds (a levels file: level L's bounds
                  [0, 100 L] x [0, 80], the data's range), computed in full: what the tick builds on;
* ``tick_etl``, ``tick_heatmaps`` - 10k more events arrive; ``game_events`` as ``etl_schedule`` runs it
                  (incremental), then the 3 fixed-bounds heatmaps with their check (incremental:
                  the tick's changes added to the stored matrices);
* ``tick_heatmaps_auto`` - then the same 3 heatmaps with automatic bounds (recomputed in full).

Each phase records wall seconds, this process's CPU and (PostgreSQL) its backends' CPU: the
machine may be shared, and wall time then waits for cores.

Peak RSS is per phase: the kernel's high-water mark (VmHWM) is reset before each phase through
/proc/self/clear_refs. Our matrices must equal the reference's on the same bounds; a mismatch
exits with status 1, as does a tick that was not incremental or lost rows. ``--quick`` (100k
events, both databases, no tick) is the CI smoke check; it also exits non-zero (status 2) if the
binning (``heatmaps_no_dagster``) is not clearly faster than the reference.

    python benchmarks/bench.py --quick
    python benchmarks/bench.py --sizes 100k,1M,10M --databases postgresql,sqlite --reference-max 1M
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import sqlalchemy as sa

DAY = dt.date(2025, 6, 1)
LEVELS = ("1", "2", "3")
GRID = 50
ADMIN_PG_URL_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


# ------------------------------------------------------------------------ measurement ----


def _status_kb(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


def reset_peak_rss() -> None:
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


class Phase:
    def __init__(self, name: str):
        self.name = name
        self.seconds = 0.0
        self.peak_rss_mb = 0.0
        self.start_rss_mb = 0.0
        self.cpu_seconds = 0.0  # this process (Python, Dagster, SQLite)
        self.db_cpu_seconds = None  # PostgreSQL: the benchmark database's backends


def _backend_cpu(url: str | None) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend connected to the benchmark's database (the
    server runs on this machine; its /proc entries are readable). Parallel workers and backends
    that exit during a phase are not counted."""
    if url is None or not url.startswith("postgresql"):
        return {}
    from heatmap_pipeline.warehouse.db import get_engine

    with get_engine(url).connect() as conn:
        pids = conn.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")).scalars().all()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # a server elsewhere, or the backend just left
            continue
        cpu[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return cpu


@contextmanager
def measure(name: str, url: str | None = None):
    """Wall seconds, this process's CPU and peak RSS of the block; with a PostgreSQL ``url``, the
    CPU its backends spent (on a shared machine wall time waits for cores, CPU time does not)."""
    phase = Phase(name)
    reset_peak_rss()
    phase.start_rss_mb = _status_kb("VmRSS") / 1024
    db_before = _backend_cpu(url)
    started, cpu_started = time.perf_counter(), time.process_time()
    yield phase
    phase.seconds = time.perf_counter() - started
    phase.cpu_seconds = time.process_time() - cpu_started
    phase.peak_rss_mb = _status_kb("VmHWM") / 1024
    if url is not None and url.startswith("postgresql"):
        db_after = _backend_cpu(url)
        phase.db_cpu_seconds = sum(cpu - db_before.get(pid, 0.0) for pid, cpu in db_after.items())


def load_average() -> str:
    """The machine's load (1, 5, 15 minutes) as ``uptime`` reports it: the machine is shared."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# Statement kinds for the split of the ETL's time: the first pattern a statement matches names it.
_STATEMENT_KINDS = [
    ("clean insert (INSERT ... SELECT, classify + insert clean rows + residue)", r"^\s*WITH source_day AS|^\s*WITH RECURSIVE|^\s*WITH src AS"),
    ("primary key build", r"ADD PRIMARY KEY|^CREATE UNIQUE INDEX"),
    ("index build", r"^CREATE INDEX"),
    ("COPY (residue / Python path rows)", r"^COPY"),
    ("VACUUM / ANALYZE of the new partition", r"^(VACUUM|ANALYZE)"),
    ("swap (lock, drop, attach)", r"LOCK TABLE|DROP TABLE|ATTACH PARTITION|DELETE FROM game_events_default"),
    ("residue read (Python cleaner input)", r"FROM etl_residue|NOT EXISTS \(\s*SELECT 1 FROM game_events g"),
    ("stage table create", r"^\s*CREATE TABLE game_events_"),
    ("SQLite delete / insert of the day", r"^(DELETE FROM game_events|INSERT INTO game_events )"),
]


@contextmanager
def statement_split(url: str):
    """Seconds per statement kind executed through our engine while the block runs (the driver
    call itself; Python time between statements, e.g. the cleaner on the residue, is the rest)."""
    from heatmap_pipeline.warehouse.db import get_engine

    engine = get_engine(url)
    split: dict[str, float] = {}
    starts: dict[int, list[float]] = {}  # per thread: the SQL path runs statements on several connections at once

    def before(conn, cursor, statement, parameters, context, executemany):
        starts.setdefault(threading.get_ident(), []).append(time.perf_counter())

    def after(conn, cursor, statement, parameters, context, executemany):
        seconds = time.perf_counter() - starts[threading.get_ident()].pop()
        kind = next((name for name, pattern in _STATEMENT_KINDS if re.search(pattern, statement, re.I | re.M)), "other statements")
        split[kind] = split.get(kind, 0.0) + seconds

    sa.event.listen(engine, "before_cursor_execute", before)
    sa.event.listen(engine, "after_cursor_execute", after)
    try:
        yield split
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)
        sa.event.remove(engine, "after_cursor_execute", after)


def parse_size(text: str) -> int:
    text = text.strip().lower()
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if text[-1] in "km" else text) * factor)


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


# ------------------------------------------------------------------------ data --------------
# One deterministic day. 90% moves with x, y (3-decimal numbers; every 100th a numeric
# string) and level 1..3; 8% score events; 1% unknown level 9; every 1000th move lacks y.
# The malformed rows are ones the old job also ignored (level filter, to_numeric coercion),
# so both sides bin exactly the same points.

# Ids are uuids, as in the old system (PostgreSQL: md5 of the row number, so random order like
# uuid4; SQLite, which has no uuid type, the same shape as text). Users and sessions too.
_PG_GENERATE = [
    "INSERT INTO users (id) SELECT CAST(md5('u' || u) AS uuid) FROM generate_series(0, 996) AS u",
    """INSERT INTO sessions (id) SELECT CAST(md5('s' || s) AS uuid)
       FROM generate_series(0, (CAST(:n AS bigint) + :tick_room) / 200) AS s""",
]

# Rows :first..:last, stamped evenly over :span seconds from :t0, arriving :delay seconds later.
_PG_EVENTS = """
INSERT INTO events (id, user_id, session_id, event_type, event_name, event_category, payload, "timestamp", created_at)
SELECT CAST(md5('e' || i) AS uuid), CAST(md5('u' || (i % 997)) AS uuid), CAST(md5('s' || (i / 200)) AS uuid),
       CASE WHEN k < 90 OR k >= 98 THEN 'move' ELSE 'score' END,
       CASE WHEN k < 90 OR k >= 98 THEN 'move' ELSE 'score' END,
       'gameplay',
       CAST(CASE
         WHEN k < 90 AND i % 1000 = 7 THEN '{"x": ' || round((a % 100000) / 1000.0, 3) || ', "level": ' || (1 + i % 3) || '}'
         WHEN k < 90 AND i % 100 = 3 THEN '{"x": "' || round((a % 100000) / 1000.0, 3) || '", "y": ' || round((b % 80000) / 1000.0, 3) || ', "level": ' || (1 + i % 3) || '}'
         WHEN k < 90 OR k = 99 THEN '{"x": ' || round((a % 100000) / 1000.0 * (1 + i % 3), 3) || ', "y": ' || round((b % 80000) / 1000.0, 3) || ', "level": ' || (1 + i % 3) || '}'
         WHEN k = 98 THEN '{"x": 1.5, "y": 2.5, "level": 9}'
         ELSE '{"score": ' || (a % 5000) || ', "level": ' || (1 + i % 3) || '}'
       END AS {payload_type}),
       ts, ts + CAST(:delay AS float8) * INTERVAL '1 second'
FROM (
    SELECT i, (i * 48271) % 2147483647 AS a, (i * 69621) % 2147483647 AS b, i % 100 AS k,
           CAST(:t0 AS timestamptz) + ((i - :first) * CAST(:span AS float8) / (:last - :first + 1)) * INTERVAL '1 second' AS ts
    FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS i
) g
"""


# A uuid-shaped text from an integer (SQLite has neither uuid nor md5): 36 characters, scattered.
_SQLITE_UUID = (
    "printf('%08x-%04x-4%03x-a%03x-%012x', ({v} * 2654435761) % 4294967296, ({v} * 40503) % 65536, "
    "({v} * 2053) % 4096, ({v} * 1597) % 4096, ({v} * 11400714819323198485) % 281474976710656)"
)

_SQLITE_EVENTS = f"""
WITH RECURSIVE s(i) AS (SELECT :first UNION ALL SELECT i + 1 FROM s WHERE i < :last),
g AS (
    SELECT i, (i * 48271) % 2147483647 AS a, (i * 69621) % 2147483647 AS b, i % 100 AS k,
           strftime('%Y-%m-%d %H:%M:%f', :t0, '+' || ((i - :first) * :span / (:last - :first + 1.0)) || ' seconds') AS ts
    FROM s
)
INSERT INTO events (id, user_id, session_id, event_type, event_name, event_category, payload, "timestamp", created_at)
SELECT {_SQLITE_UUID.format(v="i")}, {_SQLITE_UUID.format(v="(i % 997)")}, {_SQLITE_UUID.format(v="(i / 200)")},
       CASE WHEN k < 90 OR k >= 98 THEN 'move' ELSE 'score' END,
       CASE WHEN k < 90 OR k >= 98 THEN 'move' ELSE 'score' END,
       'gameplay',
       CASE
         WHEN k < 90 AND i % 1000 = 7 THEN '{{"x": ' || printf('%.3f', (a % 100000) / 1000.0) || ', "level": ' || (1 + i % 3) || '}}'
         WHEN k < 90 AND i % 100 = 3 THEN '{{"x": "' || printf('%.3f', (a % 100000) / 1000.0) || '", "y": ' || printf('%.3f', (b % 80000) / 1000.0) || ', "level": ' || (1 + i % 3) || '}}'
         WHEN k < 90 OR k = 99 THEN '{{"x": ' || printf('%.3f', (a % 100000) / 1000.0 * (1 + i % 3)) || ', "y": ' || printf('%.3f', (b % 80000) / 1000.0) || ', "level": ' || (1 + i % 3) || '}}'
         WHEN k = 98 THEN '{{"x": 1.5, "y": 2.5, "level": 9}}'
         ELSE '{{"score": ' || (a % 5000) || ', "level": ' || (1 + i % 3) || '}}'
       END,
       ts, strftime('%Y-%m-%d %H:%M:%f', ts, '+' || :delay || ' seconds')
FROM g
"""

# SQLite: the old system's columns and indexes, with text ids (no uuid type) and text times.
_SQLITE_SCHEMA = [
    """CREATE TABLE events (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, session_id TEXT, event_type VARCHAR(100) NOT NULL,
       event_name VARCHAR(255) NOT NULL, event_category VARCHAR(100), payload JSON NOT NULL,
       "timestamp" DATETIME NOT NULL, created_at DATETIME NOT NULL)""",
    *(
        f'CREATE INDEX ix_events_{name} ON events ("{name}")'
        for name in ("id", "user_id", "session_id", "event_type", "event_category", "timestamp")
    ),
]


# The index README.md asks a deployment to add (extraction of late rows, incremental ticks).
_CREATED_AT_INDEX = "CREATE INDEX ix_events_created_at ON events (created_at)"
TICK_EVENTS = 10_000


def insert_events(
    url: str, first: int, last: int, t0: str, span_seconds: float, delay_seconds: float, payload_type: str = "json"
) -> None:
    """Events number ``first``..``last`` of the generator, stamped evenly over ``span_seconds``
    from ``t0`` (UTC, 'YYYY-MM-DD HH:MM:SS'), each arriving ``delay_seconds`` after its timestamp."""
    from heatmap_pipeline.warehouse.db import get_engine

    engine = get_engine(url)
    params = {"first": first, "last": last, "t0": t0, "span": span_seconds, "delay": delay_seconds}
    with engine.begin() as conn:
        statement = _PG_EVENTS.replace("{payload_type}", payload_type) if engine.dialect.name == "postgresql" else _SQLITE_EVENTS
        conn.execute(sa.text(statement), params)


def generate_day(url: str, n: int, payload_type: str = "json") -> None:
    """The old system's events table (PostgreSQL: ``source.old_system_source_ddl``) plus the
    created_at index README.md asks for, one day of ``n`` events arriving as they are stamped,
    the indexes built after the rows (as a long-lived table has them), analyzed."""
    from heatmap_pipeline.warehouse.db import get_engine
    from heatmap_pipeline.warehouse.source import old_system_source_ddl

    engine = get_engine(url)
    pg = engine.dialect.name == "postgresql"
    ddl = old_system_source_ddl(payload_type) if pg else _SQLITE_SCHEMA
    tables = [d for d in ddl if not d.startswith("CREATE INDEX")]
    indexes = [d for d in ddl if d.startswith("CREATE INDEX")] + [_CREATED_AT_INDEX]
    with engine.begin() as conn:
        for statement in tables:
            conn.execute(sa.text(statement))
        if pg:
            for statement in _PG_GENERATE:
                conn.execute(sa.text(statement), {"n": n, "tick_room": TICK_EVENTS})
    insert_events(url, 1, n, "2025-06-01 00:00:00", 86400, 0, payload_type)
    with engine.begin() as conn:
        for statement in indexes:
            conn.execute(sa.text(statement))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE events" if pg else "ANALYZE"))


@contextmanager
def fresh_database(kind: str, admin_url: str):
    from heatmap_pipeline.warehouse.db import get_engine

    if kind == "sqlite":
        path = Path(tempfile.gettempdir()) / f"hp_bench_{uuid.uuid4().hex[:8]}.sqlite"
        try:
            yield f"sqlite:///{path}"
        finally:
            get_engine.cache_clear()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    name = f"hp_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        get_engine.cache_clear()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# ------------------------------------------------------------------------ the old job -----


def reference_heatmaps(url: str) -> dict[str, tuple[np.ndarray, list[float]]]:
    """The old job, per level: the whole day's payloads into pandas, filter, histogram2d."""
    import pandas as pd

    from heatmap_pipeline.warehouse.db import get_engine

    engine = get_engine(url)
    out = {}
    for level in LEVELS:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text('SELECT id, "timestamp", payload FROM events WHERE DATE("timestamp") = :d ORDER BY "timestamp"'),
                {"d": DAY if engine.dialect.name == "postgresql" else DAY.isoformat()},
            ).all()
        payloads = [json.loads(p) if isinstance(p, str) else (p or {}) for _, _, p in rows]
        df = pd.json_normalize(payloads)
        df = df[df["level"].astype(str) == level]
        x = pd.to_numeric(df["x"], errors="coerce")
        y = pd.to_numeric(df["y"], errors="coerce")
        keep = x.notna() & y.notna()
        counts, x_edges, y_edges = np.histogram2d(x[keep].to_numpy(), y[keep].to_numpy(), bins=GRID)
        out[level] = (counts.T, [x_edges[0], x_edges[-1], y_edges[0], y_edges[-1]])
        del rows, payloads, df, x, y
    return out


# ------------------------------------------------------------------------ our side ---------


def fixed_levels_file(directory: str) -> str:
    """A levels file giving each level fixed bounds that hold its generated positions (x < 100 L, y < 80)."""
    path = Path(directory) / "levels.toml"
    path.write_text("".join(f"[levels.{level}]\nbounds = [0, {100 * int(level)}, 0, 80]\n\n" for level in LEVELS))
    return str(path)


def fixed_bounds(level: str) -> list[float]:
    return [0.0, 100.0 * int(level), 0.0, 80.0]


def build(url: str, levels_file: str | None = None):
    import dagster as dg

    from heatmap_pipeline.defs.assets.events import build_game_events_asset
    from heatmap_pipeline.defs.assets.heatmaps import build_level_heatmaps_asset, build_level_heatmaps_checks
    from heatmap_pipeline.defs.partitions import date_partitions, heatmap_partitions
    from heatmap_pipeline.defs.resources import SourceDatabase, WarehouseDatabase
    from heatmap_pipeline.settings import load_settings

    env = {"DATABASE_URL": url, "HEATMAP_LEVELS": ",".join(LEVELS), "HEATMAP_GRID_SIZE": str(GRID)}
    if levels_file:
        env["HEATMAP_LEVELS_FILE"] = levels_file
    settings = load_settings(env)
    resources = {"source": SourceDatabase(url=url), "warehouse": WarehouseDatabase(url=url)}
    events_asset = build_game_events_asset(settings, date_partitions(settings))
    heatmaps_asset = build_level_heatmaps_asset(settings, heatmap_partitions(settings), date_partitions(settings))
    heatmap_checks = build_level_heatmaps_checks(settings, heatmap_partitions(settings))

    @dg.asset(partitions_def=date_partitions(settings), name="noop", required_resource_keys={"warehouse"})
    def noop(context) -> None:
        return None

    return events_asset, (heatmaps_asset, heatmap_checks), noop, resources


def materialize_events(events_asset, resources, instance, tags: dict | None = None):
    import dagster as dg

    result = dg.materialize([events_asset], resources=resources, partition_key=DAY.isoformat(), instance=instance, tags=tags)
    assert result.success
    metadata = result.asset_materializations_for_node("game_events")[0].metadata
    return {key: getattr(value, "value", value) for key, value in metadata.items()}


def materialize_heatmaps(heatmaps, resources, instance) -> dict[str, str]:
    """The 3 levels as production runs them: the asset and its blocking matrix_consistent check.
    Returns each level's heatmap_mode (incremental or full)."""
    import dagster as dg

    heatmaps_asset, checks = heatmaps
    modes = {}
    for level in LEVELS:
        key = dg.MultiPartitionKey({"date": DAY.isoformat(), "level": level})
        result = dg.materialize([heatmaps_asset, *checks], resources=resources, partition_key=key, instance=instance)
        assert result.success
        evaluations = result.get_asset_check_evaluations()
        assert [e.check_name for e in evaluations] == ["matrix_consistent"] and all(e.passed for e in evaluations)
        metadata = result.asset_materializations_for_node("level_heatmaps")[0].metadata
        modes[level] = metadata["heatmap_mode"].value
    return modes


def stored_heatmaps(url: str) -> dict[str, tuple[np.ndarray, list[float]]]:
    from heatmap_pipeline.warehouse.db import get_engine
    from heatmap_pipeline.warehouse.heatmaps import read_heatmap

    out = {}
    for level in LEVELS:
        row = read_heatmap(get_engine(url), level, DAY)
        out[level] = (np.asarray(row["matrix"], dtype=np.float64), [row["x_min"], row["x_max"], row["y_min"], row["y_max"]])
    return out


def typed_histograms(url: str, fixed: bool = False) -> dict[str, tuple[np.ndarray, list[float]]]:
    """np.histogram2d over game_events' typed x, y (streamed) on the data's own range, as the old
    job binned: the check when the reference is too slow to run. Checks our bounds too.
    ``fixed``: on the levels file's fixed bounds (fixed_levels_file) instead."""
    from heatmap_pipeline.warehouse.db import get_engine

    engine = get_engine(url)
    out = {}
    for level in LEVELS:
        xs, ys = [], []
        with engine.connect() as conn:
            result = conn.execute(
                sa.text("SELECT x, y FROM game_events WHERE event_date = :d AND level = :l AND x IS NOT NULL AND y IS NOT NULL"),
                {"d": DAY if engine.dialect.name == "postgresql" else DAY.isoformat(), "l": level},
                execution_options={"yield_per": 200_000},
            )
            for chunk in result.partitions():
                arr = np.asarray(chunk, dtype=np.float64)
                xs.append(arr[:, 0])
                ys.append(arr[:, 1])
        x, y = np.concatenate(xs), np.concatenate(ys)
        if fixed:
            x_min, x_max, y_min, y_max = fixed_bounds(level)
            counts, x_edges, y_edges = np.histogram2d(x, y, bins=GRID, range=[[x_min, x_max], [y_min, y_max]])
        else:
            counts, x_edges, y_edges = np.histogram2d(x, y, bins=GRID)
        out[level] = (counts.T, [x_edges[0], x_edges[-1], y_edges[0], y_edges[-1]])
    return out


def floor_read(url: str) -> int:
    """The database reading (level, x, y) of the day, per level, without shipping rows."""
    from heatmap_pipeline.warehouse.db import get_engine

    engine = get_engine(url)
    total = 0
    with engine.connect() as conn:
        for level in LEVELS:
            n, _, _ = conn.execute(
                sa.text("SELECT count(x), sum(x), sum(y) FROM game_events WHERE event_date = :d AND level = :l"),
                {"d": DAY if engine.dialect.name == "postgresql" else DAY.isoformat(), "l": level},
            ).one()
            total += n
    return total


def floor_bincount(n_points: int) -> float:
    cells = np.random.default_rng(0).integers(0, GRID * GRID, size=n_points)
    started = time.perf_counter()
    np.bincount(cells, minlength=GRID * GRID)
    return time.perf_counter() - started


def explain(url: str) -> dict[str, str]:
    from heatmap_pipeline.warehouse.db import get_engine
    from heatmap_pipeline.core.levels import DEFAULT_KINDS
    from heatmap_pipeline.warehouse.heatmaps import (
        PG_BINNING_KIND_PARAMS,
        PG_BINNING_SQL,
        plan_bucket_query,
        search_edges,
        sqlite_points_sql,
    )
    from heatmap_pipeline.warehouse.source import day_filter_text

    engine = get_engine(url)
    pg = engine.dialect.name == "postgresql"
    day = DAY if pg else DAY.isoformat()
    queries = {
        "source day (extract)": (
            f"SELECT count(*) FROM events e WHERE {day_filter_text(engine.dialect.name, DAY, 'e')}",
            {},
        ),
    }
    if pg:
        binning_params = {
            "day": day,
            "level": "2",
            "x_edges": search_edges(0.0, 200.0, GRID),
            "y_edges": search_edges(0.0, 80.0, GRID),
            **PG_BINNING_KIND_PARAMS,
        }
        queries["heatmap cells (date, level): the level's positions by cell and kinds"] = (PG_BINNING_SQL["cells"], binning_params)
        queries["heatmap sessions (date, level): each kind's distinct sessions"] = (PG_BINNING_SQL["sessions"], binning_params)
    else:
        sql, values = sqlite_points_sql(tuple(DEFAULT_KINDS.values()), DAY, "2")
        parts = sql.split("?")  # the driver's "?" as sa.text's :p0, :p1, ...
        queries["heatmap positions and kinds (date, level), streamed into np.bincount"] = (
            "".join(part + (f":p{i}" if i < len(values) else "") for i, part in enumerate(parts)),
            {f"p{i}": v for i, v in enumerate(values)},
        )
    plans = {}
    with engine.connect() as conn:
        if pg:
            plan_bucket_query(conn)
        for name, (sql, params) in queries.items():
            prefix = "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) " if pg else "EXPLAIN QUERY PLAN "
            rows = conn.execute(sa.text(prefix + sql), params).all()
            plans[name] = "\n".join(str(r[0]) if pg else str(r[-1]) for r in rows)
    return plans


# ------------------------------------------------------------------------ one run ----------


def run_one(kind: str, n: int, args) -> dict:
    import dagster as dg

    from heatmap_pipeline.warehouse.db import get_engine
    from heatmap_pipeline.warehouse.heatmaps import compute_heatmap

    record: dict = {"database": kind, "events": n, "phases": {}, "payload_type": args.payload_type if kind == "postgresql" else "JSON (text)"}
    with fresh_database(kind, args.admin_url) as url:
        t0 = time.perf_counter()
        generate_day(url, n, args.payload_type)
        record["generate_seconds"] = time.perf_counter() - t0
        events_asset, heatmaps_asset, noop, resources = build(url)
        instance = dg.DagsterInstance.ephemeral()

        with measure("dagster_overhead") as phase:
            dg.materialize([noop], resources=resources, partition_key=DAY.isoformat(), instance=instance)
        record["phases"][phase.name] = vars(phase)

        record["load_before_etl"] = load_average()
        with measure("etl", url) as phase, statement_split(url) as split:
            meta = materialize_events(events_asset, resources, instance)
        record["phases"][phase.name] = vars(phase)
        split["everything else (Python: cleaner, Dagster, bookkeeping)"] = phase.seconds - sum(split.values())
        record["etl_split"] = dict(sorted(split.items(), key=lambda kv: -kv[1]))
        record["etl_metadata"] = {k: meta[k] for k in ("rows_extracted", "dagster/row_count", "rows_quarantined", "load_method") if k in meta}
        # no VACUUM here: the heatmaps run right after the ETL, as the schedule runs them
        with measure("heatmaps", url) as phase:
            materialize_heatmaps(heatmaps_asset, resources, instance)
        record["phases"][phase.name] = vars(phase)

        with measure("heatmaps_no_dagster") as phase:
            points = sum(compute_heatmap(get_engine(url), DAY, level, GRID).points for level in LEVELS)
        record["phases"][phase.name] = vars(phase)
        record["positions"] = points
        record["load_after_heatmaps"] = load_average()

        with measure("floor_read") as phase:
            floor_read(url)
        record["phases"][phase.name] = vars(phase)
        record["phases"]["floor_bincount"] = {"name": "floor_bincount", "seconds": floor_bincount(points), "peak_rss_mb": None}

        ours = stored_heatmaps(url)
        if n <= args.reference_max:
            with measure("reference") as phase:
                reference = reference_heatmaps(url)
            record["phases"][phase.name] = vars(phase)
            record["reference_measured"] = True
        else:
            reference = typed_histograms(url)
            record["reference_measured"] = False
        mismatches = compare_matrices(ours, reference)
        record["mismatched_levels"] = mismatches
        record["matrices_match"] = not mismatches
        if args.explain:
            record["plans"] = explain(url)
        if not args.no_tick:
            with tempfile.TemporaryDirectory() as directory:
                _, fixed_heatmaps, _, _ = build(url, fixed_levels_file(directory))
                with measure("heatmaps_fixed", url) as phase:
                    record["heatmaps_fixed_modes"] = materialize_heatmaps(fixed_heatmaps, resources, instance)
                record["phases"][phase.name] = vars(phase)
                run_tick(url, n, args, events_asset, (fixed_heatmaps, heatmaps_asset), resources, instance, record)
    return record


def run_tick(url: str, n: int, args, events_asset, heatmaps, resources, instance, record: dict) -> None:
    """A scheduled tick after 10k more events arrived (stamped 23:50-24:00, arriving 10 minutes
    later): game_events as etl_schedule launches it (incremental), then the 3 heatmaps with their
    check, as they follow the ETL: with fixed bounds (incremental), then with automatic bounds.
    Checked: the tick and the fixed-bounds heatmaps were incremental, every source row of the day
    is stored (clean or quarantined), the heatmaps equal np.histogram2d of the typed rows."""
    fixed_heatmaps, auto_heatmaps = heatmaps
    from heatmap_pipeline.orchestration import INCREMENTAL, LOAD_MODE_TAG
    from heatmap_pipeline.warehouse.db import get_engine
    from heatmap_pipeline.warehouse.etl.writing import partition_counts
    from heatmap_pipeline.warehouse.invariants import count_source_rows

    insert_events(url, n + 1, n + TICK_EVENTS, "2025-06-01 23:50:00", 600, 600, args.payload_type)
    record["load_before_tick"] = load_average()
    with measure("tick_etl", url) as phase:
        meta = materialize_events(events_asset, resources, instance, tags={LOAD_MODE_TAG: INCREMENTAL})
    record["phases"][phase.name] = vars(phase)
    with measure("tick_heatmaps", url) as phase:
        modes = materialize_heatmaps(fixed_heatmaps, resources, instance)
    record["phases"][phase.name] = vars(phase)
    fixed_match = not compare_matrices(stored_heatmaps(url), typed_histograms(url, fixed=True))
    with measure("tick_heatmaps_auto", url) as phase:
        auto_modes = materialize_heatmaps(auto_heatmaps, resources, instance)
    record["phases"][phase.name] = vars(phase)
    stored = partition_counts(get_engine(url), DAY)
    record["tick"] = {
        "events": TICK_EVENTS,
        "load_mode": meta.get("load_mode"),
        "rows_extracted_this_load": meta.get("rows_extracted_this_load"),
        "source_rows": count_source_rows(get_engine(url), DAY),
        "stored_rows": stored["clean"] + stored["quarantined"],
        "heatmap_modes": modes,
        "heatmap_modes_auto": auto_modes,
        "fixed_matrices_match": fixed_match,
        "matrices_match": not compare_matrices(stored_heatmaps(url), typed_histograms(url)),
    }
    tick = record["tick"]
    tick["ok"] = (
        tick["load_mode"] == INCREMENTAL
        and tick["source_rows"] == tick["stored_rows"]
        and tick["matrices_match"]
        and tick["fixed_matrices_match"]
        and set(modes.values()) == {"incremental"}
    )


def compare_matrices(ours: dict, reference: dict) -> list[str]:
    """Levels whose matrix or bounds differ (exact equality: counts are integers, bounds the same floats)."""
    bad = []
    for level in LEVELS:
        matrix, bounds = ours[level]
        ref_matrix, ref_bounds = reference[level]
        if [float(b) for b in bounds] != [float(b) for b in ref_bounds] or not np.array_equal(matrix, ref_matrix):
            bad.append(level)
    return bad


def extrapolate(records: list[dict]) -> None:
    """Fill the reference of unmeasured sizes linearly from the largest measured size of that database."""
    for rec in records:
        if rec["reference_measured"]:
            continue
        measured = [r for r in records if r["database"] == rec["database"] and r["reference_measured"]]
        if not measured:
            continue
        base = max(measured, key=lambda r: r["events"])
        seconds = base["phases"]["reference"]["seconds"] * rec["events"] / base["events"]
        rec["phases"]["reference"] = {"name": "reference", "seconds": seconds, "peak_rss_mb": None, "extrapolated_from": base["events"]}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return {"nproc": os.cpu_count(), "memory_gib": round(mem_kb / 1024 / 1024, 1), "cpu": cpu, "python": platform.python_version()}


def table(records: list[dict]) -> str:
    lines = [
        "| db | events/day | phase | seconds | events/s | CPU s: ours / PostgreSQL | peak RSS MB | vs reference | vs floor_read |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rec in records:
        p = rec["phases"]
        ref = p.get("reference", {}).get("seconds")
        floor = p["floor_read"]["seconds"]
        phases = ("etl", "heatmaps", "heatmaps_no_dagster", "floor_read", "floor_bincount", "dagster_overhead", "reference",
                  "heatmaps_fixed", "tick_etl", "tick_heatmaps", "tick_heatmaps_auto")
        for name in phases:
            if name not in p:
                continue
            ph = p[name]
            secs = ph["seconds"]
            rate = f"{rec['events'] / secs:,.0f}" if not name.startswith(("dagster_overhead", "tick_")) and secs else ""
            if name == "tick_etl" and secs:
                rate = f"{rec['tick']['events'] / secs:,.0f} (tick)"
            cpu = ""
            if ph.get("cpu_seconds") is not None and "cpu_seconds" in ph:
                db = ph.get("db_cpu_seconds")
                cpu = f"{ph['cpu_seconds']:.2f} / {db:.2f}" if db is not None else f"{ph['cpu_seconds']:.2f} / -"
            rss = f"{ph['peak_rss_mb']:.0f}" if ph.get("peak_rss_mb") else "-"
            vs_ref = f"{ref / secs:.1f}x faster" if ref and name in ("heatmaps", "heatmaps_no_dagster") else ""
            vs_floor = f"{secs / floor:.2f}x" if name.startswith("heatmaps") else ""
            note = " (extrapolated)" if ph.get("extrapolated_from") else ""
            lines.append(f"| {rec['database']} | {label(rec['events'])} | {name}{note} | {secs:.3f} | {rate} | {cpu} | {rss} | {vs_ref} | {vs_floor} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100k events on both databases: the CI smoke check")
    parser.add_argument("--sizes", default="100k,1M", help="comma-separated events per day, e.g. 100k,1M,10M")
    parser.add_argument("--databases", default="postgresql,sqlite")
    parser.add_argument(
        "--payload-type", default="json", choices=("json", "jsonb", "text"),
        help="PostgreSQL source payload column: json (the old system's), or the older schema's jsonb / text",
    )
    parser.add_argument("--reference-max", default="1M", help="run the (slow) reference up to this size; extrapolate above")
    parser.add_argument("--admin-url", default=os.environ.get("HEATMAP_TEST_POSTGRES_URL", ADMIN_PG_URL_DEFAULT))
    parser.add_argument("--explain", action="store_true", help="record query plans")
    parser.add_argument("--no-tick", action="store_true", help="skip the incremental tick phases")
    parser.add_argument("--json", help="write the raw results to this file")
    parser.add_argument("--min-speedup", type=float, default=None, help="fail (exit 2) if heatmaps are not this much faster")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")  # Dagster's beta/preview notices
    if args.quick:  # (the incremental tick has its own tests; CI keeps this short)
        args.sizes, args.min_speedup, args.no_tick = "100k", args.min_speedup or 2.0, True
    args.reference_max = parse_size(args.reference_max)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    kinds = [k.strip() for k in args.databases.split(",") if k.strip()]

    info = machine()
    try:
        pg_version = subprocess.run(
            ["psql", args.admin_url.replace("+psycopg", "").replace("+psycopg2", ""), "-tAc", "SHOW server_version"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
    except Exception:  # noqa: BLE001 - informational only
        pg_version = "?"
    info["postgresql"] = pg_version
    info["sqlite"] = __import__("sqlite3").sqlite_version
    info["load_at_start"] = load_average()
    print(f"machine: {info}", flush=True)
    print(f"command: python benchmarks/bench.py {' '.join(argv if argv is not None else sys.argv[1:])}", flush=True)

    records = []
    for kind in kinds:
        for n in sizes:
            print(f"--- {kind} {label(n)} ...", flush=True)
            rec = run_one(kind, n, args)
            records.append(rec)
            print(json.dumps({k: v for k, v in rec.items() if k != "plans"}, default=str), flush=True)
    extrapolate(records)
    print()
    print(table(records))
    for rec in records:
        print(f"\nETL split, {rec['database']} {label(rec['events'])} (seconds; load before the ETL {rec['load_before_etl']}):")
        for kind, seconds in rec["etl_split"].items():
            print(f"  {seconds:7.3f}  {kind}")
    for rec in records:
        for name, plan in rec.get("plans", {}).items():
            print(f"\n#### {rec['database']} {label(rec['events'])}: {name}\n```\n{plan}\n```")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "records": records}, indent=2, default=str))

    status = 0
    bad = [f"{r['database']} {label(r['events'])} levels {r['mismatched_levels']}" for r in records if not r["matrices_match"]]
    if bad:
        print(f"MISMATCH: our matrices differ from the reference: {'; '.join(bad)}")
        status = 1
    else:
        print("MATRICES MATCH: every level of every run equals the reference on the same bounds")
    failed_ticks = [f"{r['database']} {label(r['events'])}: {r['tick']}" for r in records if "tick" in r and not r["tick"]["ok"]]
    if failed_ticks:
        print(f"TICK WRONG: {'; '.join(failed_ticks)}")
        status = 1
    if args.min_speedup and status == 0:
        # The gate is the binning itself (compute_heatmap, no Dagster run, no PNG previews): at the
        # quick mode's 100k events a run's fixed costs (Dagster, three matplotlib previews) are most
        # of a heatmap run, and on a shared machine they swing with its load. The table shows both.
        for rec in records:
            ref = rec["phases"].get("reference", {}).get("seconds")
            ours = rec["phases"]["heatmaps_no_dagster"]["seconds"]
            if ref and ref / ours < args.min_speedup:
                print(f"TOO SLOW: {rec['database']} {label(rec['events'])} binning only {ref / ours:.1f}x faster than the reference (< {args.min_speedup}x)")
                status = 2
    return status


if __name__ == "__main__":
    sys.exit(main())

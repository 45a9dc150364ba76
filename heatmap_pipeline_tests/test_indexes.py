"""The indexes the per-day and per-(date, level) queries need exist, and the planner uses them.

PostgreSQL picks a sequential scan for the handful of rows a test holds, so there the plan is
taken with ``enable_seqscan = off``: it shows the index is usable for the predicate, which is
what a big table needs. SQLite's ``EXPLAIN QUERY PLAN`` names the index outright.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from heatmap_pipeline.warehouse.migrations import ensure_warehouse_schema
from heatmap_pipeline.warehouse.source import extract_day_query
from heatmap_pipeline.core.levels import DEFAULT_KINDS
from heatmap_pipeline.warehouse.heatmaps import PG_BINNING_KIND_PARAMS, PG_BINNING_SQL, sqlite_points_sql
from heatmap_pipeline_tests.support import event, write_source_events

DAY = dt.date(2025, 11, 16)


def plan_of(conn: sa.Connection, sql: str, params) -> str:
    pg = conn.dialect.name == "postgresql"
    if pg:
        conn.exec_driver_sql("SET enable_seqscan = off")
    rows = conn.exec_driver_sql(("EXPLAIN " if pg else "EXPLAIN QUERY PLAN ") + sql, params).all()
    return "\n".join(str(row[0] if pg else row[-1]) for row in rows)


def text_plan(conn: sa.Connection, sql: str, params: dict) -> str:
    pg = conn.dialect.name == "postgresql"
    if pg:
        conn.exec_driver_sql("SET enable_seqscan = off")
    rows = conn.execute(sa.text(("EXPLAIN " if pg else "EXPLAIN QUERY PLAN ") + sql), params).all()
    return "\n".join(str(row[0] if pg else row[-1]) for row in rows)


def compiled(conn: sa.Connection, query) -> tuple[str, object]:
    c = query.compile(dialect=conn.dialect)
    if conn.dialect.paramstyle in ("qmark", "numeric"):
        return str(c), tuple(c.params[name] for name in c.positiontup)
    return str(c), c.params


def test_source_timestamp_index_serves_the_day_extract(db_url):
    engine = write_source_events(db_url, [event(dt.datetime(2025, 11, 16, h), {"x": h, "y": 1}) for h in range(5)])
    assert "ix_events_timestamp" in {ix["name"] for ix in sa.inspect(engine).get_indexes("events")}
    with engine.connect() as conn:
        plan = plan_of(conn, *compiled(conn, extract_day_query(engine, DAY)))
    assert "ix_events_timestamp" in plan, plan


def _load_day(db_url: str) -> sa.Engine:
    from heatmap_pipeline.core.cleaning import CleaningRules
    from heatmap_pipeline.warehouse.etl import load_partition

    engine = write_source_events(db_url, [event(dt.datetime(2025, 11, 16, h), {"x": h, "y": 1}) for h in range(5)])
    ensure_warehouse_schema(engine)
    rules = CleaningRules(levels=frozenset({"1"}), default_level="1", position_event_types=frozenset({"move"}))
    assert load_partition(engine, engine, DAY, rules, dt.datetime(2025, 11, 17)).clean == 5
    return engine


def test_heatmap_queries_are_index_only_scans_of_the_covering_index(db_url):
    """The binning queries read the level's positions of the day with their kinds and sessions
    (x, y, event_type, event_name, session_id) from the covering index alone: an index-only scan.
    PostgreSQL can only plan one when the index carries every column the query reads (bitmap scans
    are off too, so it cannot fall back to one that visits the heap)."""
    engine = _load_day(db_url)
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET enable_bitmapscan = off")
            params = {"day": DAY, "level": "1", "x_edges": [0.0, 5.0, 10.0], "y_edges": [0.0, 5.0, 10.0],
                      **PG_BINNING_KIND_PARAMS}
            assert sorted(PG_BINNING_SQL) == ["cells", "sessions"]
            for name, sql in PG_BINNING_SQL.items():  # the cells, and the sessions of each kind
                plan = text_plan(conn, sql, params)
                assert "Index Only Scan using game_events_20251116_" in plan, (name, plan)
        else:
            plan = plan_of(conn, *sqlite_points_sql(tuple(DEFAULT_KINDS.values()), DAY, "1"))
            assert "USING COVERING INDEX ix_game_events_positions" in plan, plan


COVERED = "event_date, level) INCLUDE (x, y, event_type, event_name, session_id)"


@pytest.mark.postgres
def test_postgres_day_partition_indexes_cover_the_heatmap_columns(postgres_url):
    """On PostgreSQL the heatmap index carries what the binning reads, on the parent and on each loaded day."""
    engine = _load_day(postgres_url)
    with engine.connect() as conn:
        definitions = conn.execute(
            sa.text("SELECT tablename, indexdef FROM pg_indexes WHERE indexdef LIKE '%INCLUDE (x, y%' ORDER BY 1")
        ).all()
    tables = [t for t, _ in definitions]
    assert "game_events" in tables and any(t.startswith("game_events_20251116_") for t in tables), definitions
    assert all(COVERED in d for _, d in definitions), definitions


def _index_columns(engine: sa.Engine, name: str) -> list[str]:
    found = {ix["name"]: ix for ix in sa.inspect(engine).get_indexes("game_events")}[name]
    return found["column_names"] + list(found.get("dialect_options", {}).get("postgresql_include") or [])


def test_migration_rebuilds_the_heatmap_index_of_an_earlier_version(db_url):
    """A deployment whose heatmap index covers only x and y (before the kinds) gets the covering
    one at its next migration, its loaded days included; the binning is index-only again."""
    engine = _load_day(db_url)
    pg = engine.dialect.name == "postgresql"
    name = "ix_game_events_date_level" if pg else "ix_game_events_positions"
    with engine.begin() as conn:  # put back the earlier version's index
        conn.execute(sa.text(f"DROP INDEX {name}"))
        shape = "(event_date, level) INCLUDE (x, y)" if pg else "(event_date, level, x, y)"
        conn.execute(sa.text(f"CREATE INDEX {name} ON game_events {shape}"))
    assert _index_columns(engine, name) == ["event_date", "level", "x", "y"]

    ensure_warehouse_schema(engine)

    assert _index_columns(engine, name) == ["event_date", "level", "x", "y", "event_type", "event_name", "session_id"]
    with engine.connect() as conn:
        if pg:
            days = conn.execute(
                sa.text("SELECT tablename, indexdef FROM pg_indexes WHERE tablename LIKE 'game_events_2025%' AND indexdef LIKE '%INCLUDE%'")
            ).all()
            assert days and all(COVERED in d for _, d in days), days
            oid = conn.execute(sa.text(f"SELECT '{name}'::regclass::oid")).scalar()
    ensure_warehouse_schema(engine)  # once in shape, a start-up leaves the index alone
    with engine.connect() as conn:
        if pg:
            assert conn.execute(sa.text(f"SELECT '{name}'::regclass::oid")).scalar() == oid
        else:
            plan = plan_of(conn, *sqlite_points_sql(tuple(DEFAULT_KINDS.values()), DAY, "1"))
            assert "USING COVERING INDEX ix_game_events_positions" in plan, plan

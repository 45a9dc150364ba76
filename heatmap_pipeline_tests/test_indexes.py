"""The indexes the per-day and per-(date, level) queries need exist, and the planner uses them.

PostgreSQL picks a sequential scan for the handful of rows a test holds, so there the plan is
taken with ``enable_seqscan = off``: it shows the index is usable for the predicate, which is
what a big table needs. SQLite's ``EXPLAIN QUERY PLAN`` names the index outright.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from heatmap_pipeline.db import get_engine
from heatmap_pipeline.schema import ensure_warehouse_schema
from heatmap_pipeline.warehouse.events import extract_day_query
from heatmap_pipeline.warehouse.heatmaps import cell_counts_sql
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


def test_heatmap_queries_use_the_date_level_index(db_url):
    engine = get_engine(db_url)
    ensure_warehouse_schema(engine)
    assert "ix_game_events_date_level" in {ix["name"] for ix in sa.inspect(engine).get_indexes("game_events")}
    day = DAY if engine.dialect.name == "postgresql" else DAY.isoformat()
    params = {"day": day, "level": "1", "x0": 0.0, "x1": 10.0, "sx": 1.0, "y0": 0.0, "y1": 10.0, "sy": 1.0, "last": 9}
    stats_sql = (
        "SELECT count(*), min(x), max(x), min(y), max(y) FROM game_events "
        "WHERE event_date = :day AND level = :level AND x IS NOT NULL AND y IS NOT NULL"
    )
    with engine.connect() as conn:
        stats_plan = text_plan(conn, stats_sql, params)
        cells_plan = text_plan(conn, cell_counts_sql(engine.dialect.name), params)
    assert "ix_game_events_date_level" in stats_plan, stats_plan
    assert "ix_game_events_date_level" in cells_plan, cells_plan


@pytest.mark.postgres
def test_postgres_date_level_index_covers_x_and_y(postgres_url):
    """On PostgreSQL the heatmap index carries x and y, so the heatmap reads never touch the heap."""
    engine = get_engine(postgres_url)
    ensure_warehouse_schema(engine)
    with engine.connect() as conn:
        definition = conn.execute(
            sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_game_events_date_level'")
        ).scalar_one()
    assert "(event_date, level) INCLUDE (x, y)" in definition

"""Test helpers: build source rows, write them to a real ``events`` table, build definitions."""

from __future__ import annotations

import datetime as dt
import itertools
import json

import dagster as dg
import numpy as np
import sqlalchemy as sa

from heatmap_pipeline.core.binning import GridBounds

from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.tables import game_events, heatmaps, quarantined_events, session_stats
from heatmap_pipeline.warehouse.migrations import ensure_source_schema
from heatmap_pipeline.warehouse.source import source_events_table
from heatmap_pipeline.settings import load_settings

_ids = itertools.count(1)


def histogram2d_reference(x, y, bounds: GridBounds, grid_size: int, grid_y: int | None = None) -> np.ndarray:
    """What the old job computed: np.histogram2d, transposed so rows are y bins (grid_size x cells,
    grid_y y cells, default square)."""
    counts, _, _ = np.histogram2d(
        np.asarray(x, dtype=np.float64),
        np.asarray(y, dtype=np.float64),
        bins=[grid_size, grid_size if grid_y is None else grid_y],
        range=[[bounds.x_min, bounds.x_max], [bounds.y_min, bounds.y_max]],
    )
    return counts.T


def event(
    timestamp: dt.datetime | str | None,
    payload: dict | str | None,
    *,
    id=None,
    event_type: str = "move",
    session_id: str | None = "s1",
    user_id: str | None = "u1",
    created_at: dt.datetime | None = None,
) -> dict:
    """One source row. A dict payload is stored as JSON text; a str payload is stored verbatim."""
    return {
        "id": next(_ids) if id is None else id,
        "user_id": user_id,
        "session_id": session_id,
        "event_type": event_type,
        "event_name": event_type,
        "event_category": "test",
        "payload": json.dumps(payload) if isinstance(payload, dict) else payload,
        "timestamp": timestamp,
        "created_at": created_at or (timestamp if isinstance(timestamp, dt.datetime) else dt.datetime(2025, 11, 16, 12)),
    }


def old_readme_sample(day: dt.date = dt.date(2025, 11, 16), n: int = 30) -> list[dict]:
    """The old system's sample: n move events with x, y and no level on one date."""
    start = dt.datetime.combine(day, dt.time(9))
    return [event(start + dt.timedelta(minutes=i), {"x": float(i % 10), "y": float(i // 10)}) for i in range(n)]


def write_source_events(url: str, rows: list[dict]) -> sa.Engine:
    """Create ``events`` (if needed) and insert rows, payloads as text, through the real driver."""
    engine = get_engine(url)
    ensure_source_schema(engine)
    if rows:
        with engine.begin() as conn:
            conn.execute(source_events_table().insert(), [_for_dialect(engine, row) for row in rows])
    return engine


def _for_dialect(engine: sa.Engine, row: dict) -> dict:
    row = dict(row)
    if engine.dialect.name == "sqlite":
        for key in ("timestamp", "created_at"):
            if isinstance(row[key], dt.datetime):
                row[key] = row[key].isoformat(sep=" ")
    return row


def settings_env(url: str | None, **extra: str) -> dict[str, str]:
    env = {"DATABASE_URL": url} if url else {}
    env.update({key: str(value) for key, value in extra.items()})
    return env


def build_defs(monkeypatch, url: str | None, **extra: str) -> dg.Definitions:
    """Definitions exactly as production builds them, from real environment variables."""
    from heatmap_pipeline.definitions import build_definitions

    for name in ("DATABASE_URL", "WAREHOUSE_DATABASE_URL", "HEATMAP_LEVELS", "HEATMAP_BOUNDS", "HEATMAP_DEFAULT_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    for key, value in settings_env(url, **extra).items():
        monkeypatch.setenv(key, value)
    return build_definitions(load_settings())


_INSTANCES: dict[int, tuple[dg.Definitions, dg.DagsterInstance]] = {}


def instance_of(defs: dg.Definitions, instance=None) -> dg.DagsterInstance:
    """The instance given, or one in-memory instance per Definitions: a heatmap run must see the ETL
    run before it (level_heatmaps refuses a day whose game_events was never materialized)."""
    if instance is not None:
        return instance
    if id(defs) not in _INSTANCES:
        _INSTANCES[id(defs)] = (defs, dg.DagsterInstance.ephemeral())  # defs kept alive: its id stays unique
    return _INSTANCES[id(defs)][1]


def materialize_etl(defs: dg.Definitions, day: str, instance=None) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("etl_job").execute_in_process(partition_key=day, instance=instance_of(defs, instance))


def materialize_heatmap(defs: dg.Definitions, day: str, level: str, instance=None) -> dg.ExecuteInProcessResult:
    key = dg.MultiPartitionKey({"date": day, "level": level})
    return defs.resolve_job_def("heatmap_job").execute_in_process(partition_key=key, instance=instance_of(defs, instance))


def table_rows(url: str, table: sa.Table, order_by=None) -> list[dict]:
    with get_engine(url).connect() as conn:
        query = sa.select(table)
        if order_by is not None:
            query = query.order_by(*order_by)
        return [dict(r) for r in conn.execute(query).mappings()]


def warehouse_snapshot(url: str) -> dict:
    """The written tables, comparable between runs: quarantine ids and times, heatmap ids and
    update times are left out."""
    engine = get_engine(url)
    heatmap_rows = []
    with engine.connect() as conn:
        if sa.inspect(conn).has_table("heatmaps"):
            heatmap_rows = [
                tuple(r)
                for r in conn.execute(
                    sa.select(
                        heatmaps.c.level, heatmaps.c.date, heatmaps.c.matrix, heatmaps.c.total, heatmaps.c.out_of_bounds
                    ).order_by(heatmaps.c.level, heatmaps.c.date)
                )
            ]
        return {
            "game_events": [tuple(r) for r in conn.execute(sa.select(game_events).order_by(game_events.c.event_id))],
            "quarantined": sorted(
                tuple(r)
                for r in conn.execute(
                    sa.select(
                        quarantined_events.c.partition_date,
                        quarantined_events.c.source_event_id,
                        quarantined_events.c.reason,
                        quarantined_events.c.raw_row,
                    )
                )
            ),
            "session_stats": [
                tuple(r) for r in conn.execute(sa.select(session_stats).order_by(session_stats.c.session_id))
            ],
            "heatmaps": heatmap_rows,
        }

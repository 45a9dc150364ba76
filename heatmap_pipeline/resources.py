"""Resources: the source game database and the warehouse, built from EnvVar in definitions.py."""

from __future__ import annotations

import datetime as dt
import weakref

import dagster as dg
import sqlalchemy as sa

from heatmap_pipeline import demo
from heatmap_pipeline.db import get_engine, redact
from heatmap_pipeline.schema import ensure_warehouse_schema
from heatmap_pipeline.warehouse.events import check_source_table


class SourceDatabase(dg.ConfigurableResource):
    """The game backend's database holding ``events`` (DATABASE_URL)."""

    url: str
    demo: bool = False  # True only for the embedded SQLite default; then demo events are generated

    def engine(self) -> sa.Engine:
        return get_engine(self.url)

    def prepare(self, now: dt.datetime, log=None) -> None:
        """Top up demo data (demo mode only), then check the events table has what we read."""
        if self.demo:
            inserted = demo.top_up(self.engine(), now)
            if log:
                log.info(f"DEMO DATA in use (DATABASE_URL unset): {inserted} synthetic events added")
        check_source_table(self.engine())

    @property
    def display_url(self) -> str:
        return redact(self.url)


_schema_checked: "weakref.WeakSet[sa.Engine]" = weakref.WeakSet()


class WarehouseDatabase(dg.ConfigurableResource):
    """Where our tables live (WAREHOUSE_DATABASE_URL, by default the same as DATABASE_URL)."""

    url: str

    def engine(self) -> sa.Engine:
        """The warehouse engine, with our tables created or migrated (cheap when they exist)."""
        engine = get_engine(self.url)
        if engine not in _schema_checked:  # once per engine and process, not on every call
            ensure_warehouse_schema(engine)
            _schema_checked.add(engine)
        return engine

    @property
    def display_url(self) -> str:
        return redact(self.url)


"""Resources: the source game database and the warehouse, built from EnvVar in definitions.py."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import sqlalchemy as sa

from heatmap_pipeline.orchestration import is_transient_db_error
from heatmap_pipeline.runtime import demo
from heatmap_pipeline.warehouse.db import get_engine, redact
from heatmap_pipeline.warehouse.migrations import migrate_once
from heatmap_pipeline.warehouse.source import check_source_table


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


class WarehouseDatabase(dg.ConfigurableResource):
    """Where our tables live (WAREHOUSE_DATABASE_URL, by default the same as DATABASE_URL).

    Dagster calls ``setup_for_execution`` before a run, a check or a sensor tick uses the resource:
    that is where our tables are created or migrated (once per process and URL), never in a getter.
    """

    url: str

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        try:
            migrate_once(get_engine(self.url))
        except Exception as exc:  # noqa: BLE001 - re-raised unless a retry can cure it
            if not is_transient_db_error(exc):
                raise
            # Resource set-up is outside the step's retry policy. The step's first query meets the
            # same error and is retried with backoff (DB_RETRY_*), so leave it to the step.
            context.log.warning(f"warehouse {self.display_url} not reachable to migrate; the step will retry: {exc}")

    def engine(self) -> sa.Engine:
        return get_engine(self.url)

    @property
    def display_url(self) -> str:
        return redact(self.url)

"""Small helpers shared by the asset modules."""

from __future__ import annotations

import datetime as dt

import dagster as dg


def utcnow() -> dt.datetime:
    """Naive UTC now: every timestamp we store is naive UTC."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def partition_days(context: dg.AssetExecutionContext) -> list[dt.date]:
    """The days of this run: one, or a range when a backfill runs as a single run."""
    return [dt.date.fromisoformat(key) for key in context.partition_keys]

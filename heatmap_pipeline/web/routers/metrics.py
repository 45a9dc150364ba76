"""Prometheus metrics, liveness and readiness of the pipeline, served by the admin API.

Dagster has no pull endpoint of its own (dagster-prometheus only pushes from inside a run), so
``GET /metrics`` reads, on each scrape, what an operator needs from where it is recorded:

* the Dagster instance (DAGSTER_HOME): runs by job and status, the run queue's depth, each
  asset's last materialization, the age of today's heatmaps, the daemons' heartbeats, and the
  row counts each day's latest ``game_events`` / ``session_stats`` load reported in its metadata;
* the warehouse: ``admin_trigger_requests`` by state.

A source that cannot be read is reported by ``heatmap_pipeline_metrics_source_up{source}`` = 0
and its metrics are left out, so one scrape never fails as a whole.

``GET /healthz`` is liveness (the process answers). ``GET /readyz`` checks the warehouse
database, the Dagster webserver (DAGSTER_GRAPHQL_URL) and the daemon heartbeats, and answers 503
naming what is not ready.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterable, Mapping

import httpx
import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from heatmap_pipeline.settings import Settings
from heatmap_pipeline.warehouse.tables import admin_trigger_requests

log = logging.getLogger("heatmap_pipeline.metrics")
JOBS = ("etl_job", "heatmap_job")
ASSETS = ("game_events", "session_stats", "level_heatmaps")
RUN_STATUSES = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "SUCCESS", "FAILURE", "CANCELING", "CANCELED")
READY_TIMEOUT_SECONDS = 5.0


# --- pure parts: what the numbers are -------------------------------------------------------------
def totals_of_latest_loads(loads: Iterable[tuple[str, Mapping]]) -> dict:
    """Sum the metadata of the latest load of each day, counting each run once.

    ``loads`` holds (run id, metadata) of the latest materialization of each partition. A
    single-run backfill records one materialization per day of its range, each with the range's
    totals: counting its run once keeps those totals from being multiplied by the days.
    """
    seen: dict[str, Mapping] = {}
    for run_id, metadata in loads:
        seen.setdefault(run_id, metadata)
    totals = {"extracted": 0, "clean": 0, "quarantined": 0, "reasons": {}}
    for metadata in seen.values():
        totals["extracted"] += int(metadata.get("rows_extracted", 0) or 0)
        totals["clean"] += int(metadata.get("dagster/row_count", 0) or 0)
        totals["quarantined"] += int(metadata.get("rows_quarantined", 0) or 0)
        for reason, count in (metadata.get("quarantine_reasons") or {}).items():
            totals["reasons"][reason] = totals["reasons"].get(reason, 0) + int(count)
    return totals


def todays_heatmap_age(now: dt.datetime, materialized_at: dt.datetime | None) -> float:
    """Seconds since today's heatmap was last written; before its first write today, seconds since
    00:00 UTC (the day's data has been waiting that long)."""
    if materialized_at is not None:
        return max(0.0, (now - materialized_at).total_seconds())
    midnight = dt.datetime.combine(now.date(), dt.time(0), now.tzinfo)
    return (now - midnight).total_seconds()


# --- reading the sources -----------------------------------------------------------------------------
class _Instance:
    """The Dagster instance of DAGSTER_HOME, opened on first use (the admin API may start first)."""

    def __init__(self, factory=None):
        self._factory = factory
        self._instance = None
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self._instance is None:
                if self._factory is not None:
                    self._instance = self._factory()
                else:
                    import dagster as dg

                    self._instance = dg.DagsterInstance.get()
            return self._instance


def _metadata_values(entry) -> dict:
    materialization = entry.asset_materialization
    return {key: getattr(value, "value", value) for key, value in (materialization.metadata or {}).items()}


def _latest_loads(instance, asset: str) -> list[tuple[str, dict]]:
    import dagster as dg

    key = dg.AssetKey(asset)
    ids = instance.get_latest_storage_id_by_partition(key, dg.DagsterEventType.ASSET_MATERIALIZATION)
    if not ids:
        return []
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, storage_ids=list(ids.values())), limit=len(ids)
    ).records
    return [(record.run_id, _metadata_values(record.event_log_entry)) for record in records]


class PipelineCollector(Collector):
    def __init__(self, settings: Settings, engine: sa.Engine, instance: _Instance):
        self.settings, self.engine, self.instance = settings, engine, instance

    def collect(self):
        up = GaugeMetricFamily("heatmap_pipeline_metrics_source_up", "1 if this scrape could read the source", labels=["source"])
        for source, read in (("dagster", self._dagster), ("warehouse", self._warehouse)):
            try:
                families = list(read())
            except Exception as exc:  # noqa: BLE001 - reported as a metric; the other source is still served
                log.warning(f"metrics: cannot read the {source}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                up.add_metric([source], 0)
                continue
            up.add_metric([source], 1)
            yield from families
        yield up

    def _dagster(self):
        import dagster as dg

        instance = self.instance.get()
        now = time.time()
        runs = GaugeMetricFamily("dagster_runs", "Runs in the Dagster instance by job and status", labels=["job", "status"])
        for job in JOBS:
            for status in RUN_STATUSES:
                count = instance.get_runs_count(dg.RunsFilter(job_name=job, statuses=[dg.DagsterRunStatus(status)]))
                runs.add_metric([job, status], count)
        yield runs
        queued = instance.get_runs_count(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))
        yield GaugeMetricFamily("dagster_run_queue_depth", "Runs waiting in the run queue (QUEUED)", value=queued)

        last = GaugeMetricFamily(
            "heatmap_pipeline_asset_last_materialization_timestamp_seconds",
            "Unix time of the asset's last successful materialization (any partition)", labels=["asset"],
        )
        for asset in ASSETS:
            event = instance.get_latest_materialization_event(dg.AssetKey(asset))
            if event is not None:
                last.add_metric([asset], event.timestamp)
        yield last

        today = dt.datetime.now(dt.timezone.utc)
        age = GaugeMetricFamily(
            "heatmap_pipeline_todays_heatmap_age_seconds",
            "Seconds since today's (UTC) heatmap of the level was written; since 00:00 UTC if not yet today",
            labels=["level"],
        )
        for level in self.settings.heatmap_levels:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("level_heatmaps"),
                                      asset_partitions=[f"{today.date().isoformat()}|{level}"]), limit=1,
            ).records
            written = dt.datetime.fromtimestamp(records[0].timestamp, dt.timezone.utc) if records else None
            age.add_metric([level], todays_heatmap_age(today, written))
        yield age

        heartbeat = GaugeMetricFamily("dagster_daemon_heartbeat_age_seconds",
                                      "Seconds since each Dagster daemon's last heartbeat", labels=["daemon"])
        for daemon, beat in sorted(instance.get_daemon_heartbeats().items()):
            heartbeat.add_metric([daemon], max(0.0, now - beat.timestamp))
        yield heartbeat

        events = totals_of_latest_loads(_latest_loads(instance, "game_events"))
        rows = GaugeMetricFamily("heatmap_pipeline_rows",
                                 "Source rows of the latest load of each day: extracted = clean + quarantined",
                                 labels=["kind"])
        for kind in ("extracted", "clean", "quarantined"):
            rows.add_metric([kind], events[kind])
        yield rows
        reasons = GaugeMetricFamily("heatmap_pipeline_rows_quarantined", "Quarantined rows of the latest load of each day, by reason",
                                    labels=["reason"])
        for reason, count in sorted(events["reasons"].items()):
            reasons.add_metric([reason], count)
        yield reasons
        # The old runner's counter names. They count what the warehouse holds now (the latest
        # load of each day), so a re-load of a day replaces its numbers instead of adding to them.
        yield CounterMetricFamily("events_received", "Source events read by the ETL (latest load of each day; "
                                  "clean + quarantined). The old runner's counter.", value=events["extracted"])
        sessions = totals_of_latest_loads(_latest_loads(instance, "session_stats"))
        yield CounterMetricFamily("sessions_created", "Sessions in session_stats (one per session and day; latest load "
                                  "of each day). The old runner's counter.", value=sessions["clean"])

    def _warehouse(self):
        requests = GaugeMetricFamily("heatmap_pipeline_admin_trigger_requests",
                                     "POST /admin/run-jobs requests by state (done and error are outcomes)", labels=["state"])
        with self.engine.connect() as conn:
            counts = dict(conn.execute(sa.select(admin_trigger_requests.c.state, sa.func.count())
                                       .group_by(admin_trigger_requests.c.state)).all())
        for state in ("pending", "launching", "launched", "done", "error"):
            requests.add_metric([state], counts.get(state, 0))
        yield requests


# --- the routes ---------------------------------------------------------------------------------
def build_metrics_router(settings: Settings, engine: sa.Engine, instance_factory=None) -> APIRouter:
    """``/metrics``, ``/healthz`` and ``/readyz``. ``instance_factory`` defaults to
    ``DagsterInstance.get`` (DAGSTER_HOME); the instance is opened on the first scrape."""
    instance = _Instance(instance_factory)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(settings, engine, instance))
    ui_url = settings.dagster_graphql_url.rsplit("/graphql", 1)[0]
    headers = {"x-api-key": settings.admin_api_keys[0]} if settings.admin_api_keys else {}
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @router.get("/healthz", include_in_schema=False)
    async def healthz():  # async: liveness must not queue behind busy worker threads
        return {"status": "ok"}

    def check_database() -> str:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return "warehouse database answers"

    def check_webserver() -> str:
        response = httpx.get(f"{ui_url}/server_info", headers=headers, timeout=READY_TIMEOUT_SECONDS)
        if response.status_code != 200:
            raise RuntimeError(f"{ui_url}/server_info answered {response.status_code}")
        return f"{ui_url} answers"

    def check_daemon() -> str:
        dagster = instance.get()
        beats = dagster.get_daemon_heartbeats()
        now, limit = time.time(), settings.readyz_max_heartbeat_age_seconds
        stale = {daemon: (round(now - beats[daemon].timestamp) if daemon in beats else None)
                 for daemon in dagster.get_required_daemon_types()
                 if daemon not in beats or now - beats[daemon].timestamp > limit}
        if stale:
            raise RuntimeError("no heartbeat within READYZ_MAX_HEARTBEAT_AGE_SECONDS="
                               f"{limit:g}s from: {', '.join(f'{d} ({a}s ago)' if a is not None else f'{d} (never)' for d, a in stale.items())}")
        return f"{len(beats)} daemons beating"

    @router.get("/readyz", include_in_schema=False)
    def readyz():
        checks = {}
        for name, check in (("database", check_database), ("dagster_webserver", check_webserver), ("dagster_daemon", check_daemon)):
            try:
                checks[name] = {"ok": True, "detail": check()}
            except Exception as exc:  # noqa: BLE001 - the answer names what failed
                first = str(exc).splitlines()[0] if str(exc) else ""
                checks[name] = {"ok": False, "detail": f"{type(exc).__name__}: {first}"}
        ready = all(c["ok"] for c in checks.values())
        return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503)

    return router

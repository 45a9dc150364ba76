"""Late events: rows stamped on an earlier day than the one they arrive on.

Two sensors, so a late row reaches its day's tables and heatmaps within one ETL interval:

``late_events_sensor`` (every LATE_SENSOR_SECONDS, 60 s) asks the source which days received
rows since its cursor (``created_at > cursor - overlap``, one grouped, index-friendly query; see
``warehouse/source.py``). For each such day before today (UTC) whose ``game_events``
partition was last written by a run that started before the newest of those rows (or never),
it requests an ``etl_job`` run of that day. Today is left to ``etl_schedule``. The overlap
re-reads a few minutes before the cursor, so a row whose created_at is a little older than its
commit is not missed; the "written since?" comparison keeps the overlap from launching twice.

``heatmap_refresh_sensor`` fires when an ``etl_job`` run succeeds and requests ``heatmap_job``
runs of every level for each of its days before today: after a late-event run, after the first
ETL after midnight (which finishes yesterday), after a manual re-run or a backfill of old days.
Today's heatmaps are left to ``heatmap_automation_sensor``.

Why a sensor and not a lookback window in the schedule: a lookback re-extracts N whole days on
every tick whether or not anything arrived, and still misses anything later than N days; the
sensor costs one small query per minute and re-extracts only the days that did receive rows.
"""

import datetime as dt
import json

import dagster as dg

from heatmap_pipeline.core.clock import utcnow
from heatmap_pipeline.defs.resources import SourceDatabase
from heatmap_pipeline.orchestration import (
    ETL_JOB,
    GAME_EVENTS,
    INCREMENTAL,
    LOAD_MODE_TAG,
    LATE_ROWS_TAG,
    NOT_STARTED,
    SOURCE_RUN_TAG,
    TRIGGER_TAG,
    partition_run,
    run_days,
    run_start_of_latest_materialization,
)
from heatmap_pipeline.settings import Settings
from heatmap_pipeline.warehouse.source import arrivals_since

LATE_SENSOR_SECONDS = 60
OVERLAP = dt.timedelta(minutes=5)  # re-read window before the cursor (commit later than created_at)
FIRST_LOOKBACK = dt.timedelta(days=1)  # with no cursor yet, rows created in the last day are looked at


def read_cursor(cursor: str | None) -> dt.datetime | None:
    if not cursor:
        return None
    return dt.datetime.fromisoformat(json.loads(cursor)["created_after"])


def write_cursor(moment: dt.datetime) -> str:
    return json.dumps({"created_after": moment.isoformat()})


def build_late_events_sensor(settings: Settings, etl_job) -> dg.SensorDefinition:
    first_day = settings.partition_start_date

    @dg.sensor(
        name="late_events_sensor",
        job=etl_job,
        minimum_interval_seconds=LATE_SENSOR_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Re-runs the ETL of an earlier day when rows stamped on that day arrive after it was last "
        "loaded (source rows with created_at newer than the cursor).",
    )
    def late_events_sensor(context: dg.SensorEvaluationContext, source: SourceDatabase):
        now = utcnow()
        cursor = read_cursor(context.cursor) or now - FIRST_LOOKBACK
        arrivals = arrivals_since(source.engine(), cursor - OVERLAP, first_day)
        requests, notes = [], []
        for arrived in arrivals:
            day = arrived.day.isoformat()
            if arrived.day >= now.date() or arrived.day < first_day:
                continue  # today: etl_schedule; before PARTITION_START_DATE: no partition to fold into
            written_by = run_start_of_latest_materialization(context.instance, GAME_EVENTS, day)
            if written_by is not None and written_by > arrived.newest_created_at:
                continue  # the last load of that day started after these rows arrived
            if partition_run(context.instance, ETL_JOB, day, NOT_STARTED) is not None:  # it will read them
                notes.append(f"{day}: a queued run will read them")
                continue
            requests.append(
                dg.RunRequest(
                    run_key=f"late_events:{day}:{arrived.newest_created_at.isoformat()}",
                    partition_key=day,
                    tags={TRIGGER_TAG: "late_events_sensor", LATE_ROWS_TAG: str(arrived.rows), LOAD_MODE_TAG: INCREMENTAL},
                )
            )
            notes.append(f"{day}: {arrived.rows} row(s) arrived up to {arrived.newest_created_at.isoformat()}")
        newest = max((a.newest_created_at for a in arrivals), default=cursor)
        new_cursor = max(cursor, min(newest, now))
        if notes:
            context.log.info("late events: " + "; ".join(notes))
        return dg.SensorResult(
            run_requests=requests,
            cursor=write_cursor(new_cursor),
            skip_reason=None if requests else dg.SkipReason(f"no late rows since {cursor.isoformat()}"),
        )

    return late_events_sensor


def build_heatmap_refresh_sensor(settings: Settings, etl_job, heatmap_job) -> dg.SensorDefinition:
    @dg.run_status_sensor(
        name="heatmap_refresh_sensor",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[etl_job],
        request_job=heatmap_job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="After an etl_job run of an earlier day succeeds, refreshes that day's heatmaps of every level.",
    )
    def heatmap_refresh_sensor(context: dg.RunStatusSensorContext):
        today = utcnow().date()
        run = context.dagster_run
        days = [day for day in run_days(run) if dt.date.fromisoformat(day) < today]
        if not days:
            return dg.SkipReason(f"run {run.run_id} loaded no day before today; heatmap_automation_sensor refreshes today")
        return [
            dg.RunRequest(
                run_key=f"heatmap_refresh:{run.run_id}:{day}:{level}",
                partition_key=dg.MultiPartitionKey({"date": day, "level": level}),
                tags={TRIGGER_TAG: "heatmap_refresh_sensor", SOURCE_RUN_TAG: run.run_id},
            )
            for day in days
            for level in settings.heatmap_levels
        ]

    return heatmap_refresh_sensor


def build_late_data_sensors(settings: Settings, etl_job, heatmap_job) -> list[dg.SensorDefinition]:
    return [build_late_events_sensor(settings, etl_job), build_heatmap_refresh_sensor(settings, etl_job, heatmap_job)]

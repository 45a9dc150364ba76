"""Run facts in one place: job names, tags, run statuses, run lookups, and retry classification.

The schedules, the sensors, the admin trigger and the CLI all ask "is a run of this job and
partition in flight?", tag their runs, and read run statuses. They import the answers from here,
so they cannot drift apart.

Retries: every asset and check carries :func:`db_retry_policy` (DB_RETRY_MAX_RETRIES retries, the
first after DB_RETRY_DELAY_SECONDS, doubling) and is wrapped by :func:`reports_database_errors`,
which turns what escapes the step into a :class:`dagster.Failure`. :func:`classify_database_error`
decides, by SQLSTATE and connection state, which of these an error is:

* ``unreachable``: connection refused or lost, server shutting down or not accepting connections
  (SQLSTATE class 08, 57P01-57P03, 53300, or a driver error with no server answer): retried, with a
  message naming the database (URL without password);
* ``busy``: a lock timeout (55P03), deadlock (40P01), serialization failure (40001), statement
  timeout or cancel (57014), SQLite's "database is locked", or our own partition swap giving up
  (:class:`~heatmap_pipeline.warehouse.locks.DatabaseBusy`): retried, with a message saying the
  database was busy, not down;
* ``resources``: the server ran out of disk, memory or another resource (class 53): retried;
* anything else (a missing source column, a reconciliation failure, a bug): the same message it
  had, retries *not* allowed - retrying a deterministic error only delays it.

Each partition write is one transaction, so a retried step starts from the partition's previous
contents, never from a half-written one.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import Mapping

import dagster as dg
import sqlalchemy as sa

from heatmap_pipeline.settings import Settings
from heatmap_pipeline.warehouse.db import sqlstate
from heatmap_pipeline.warehouse.locks import DatabaseBusy

# --- jobs, assets, tags ------------------------------------------------------------------------
ETL_JOB = "etl_job"
HEATMAP_JOB = "heatmap_job"
GAME_EVENTS = dg.AssetKey("game_events")
LEVEL_HEATMAPS = dg.AssetKey("level_heatmaps")

PARTITION_TAG = "dagster/partition"
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"
TRIGGER_TAG = "heatmap_pipeline/trigger"  # who launched the run: a schedule, a sensor, admin_api, cli_backfill
REQUEST_TAG = "heatmap_pipeline/admin_request"  # the admin_trigger_requests id
REQUESTER_TAG = "heatmap_pipeline/requester"  # client address of the admin request
LATE_ROWS_TAG = "heatmap_pipeline/late_rows"
SOURCE_RUN_TAG = "heatmap_pipeline/after_run"
CLAIM_TAG = "heatmap_pipeline/claim"  # the run_claims token its launcher held (warehouse/run_claims.py)
# Set by etl_schedule and late_events_sensor: the run loads only what arrived since the day's last
# load (warehouse/etl/incremental.py). Without it (backfill, UI, admin trigger) a run rebuilds the day.
LOAD_MODE_TAG = "heatmap_pipeline/load_mode"
INCREMENTAL = "incremental"


def is_incremental_run(tags: Mapping[str, str]) -> bool:
    return tags.get(LOAD_MODE_TAG) == INCREMENTAL
# The header that carries an API key (ADMIN_API_KEY): the authenticated Dagster webserver and the
# admin API read it, and the admin API's GraphQL client sends it to the webserver.
API_KEY_HEADER = "x-api-key"

# The concurrency pool of the steps that read and write the warehouse. Its limit is the instance's
# (deploy/dagster.yaml, concurrency.pools): it caps the warehouse connections busy at once across
# every run and worker. Without a limit (the embedded default) it changes nothing.
WAREHOUSE_POOL = "warehouse"

# --- run statuses --------------------------------------------------------------------------------
# A run in one of these has not ended: a new request for its job and partition shares it.
IN_FLIGHT = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.MANAGED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
)
NOT_STARTED = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED)
IN_FLIGHT_NAMES = tuple(status.value for status in IN_FLIGHT)  # as GraphQL spells them
SUCCESS = dg.DagsterRunStatus.SUCCESS.value
FAILED = (dg.DagsterRunStatus.FAILURE.value, dg.DagsterRunStatus.CANCELED.value)


# --- run lookups ---------------------------------------------------------------------------------
def partition_run(
    instance: dg.DagsterInstance, job_name: str, partition_key: str, statuses=IN_FLIGHT
) -> str | None:
    """The id of a run of this job and partition in one of ``statuses`` (default: in flight)."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=job_name, statuses=list(statuses), tags={PARTITION_TAG: partition_key}),
        limit=1,
    )
    return records[0].dagster_run.run_id if records else None


def claimed_run(instance: dg.DagsterInstance, claim: str, run_id: str | None) -> tuple[str, bool] | None:
    """(run id, whether it is still in flight) of the run a run_claims row names: by its id once
    known, else by its claim tag; None when no such run exists (yet)."""
    if run_id:
        run = instance.get_run_by_id(run_id)
        return (run_id, run.status in IN_FLIGHT) if run else None
    records = instance.get_run_records(filters=dg.RunsFilter(tags={CLAIM_TAG: claim}), limit=1)
    return (records[0].dagster_run.run_id, records[0].dagster_run.status in IN_FLIGHT) if records else None


def run_days(run: dg.DagsterRun) -> list[str]:
    """The daily partition keys of a run: its partition, or every day of its partition range."""
    tags = run.tags
    if PARTITION_TAG in tags:
        return [tags[PARTITION_TAG]]
    start, end = tags.get(PARTITION_RANGE_START_TAG), tags.get(PARTITION_RANGE_END_TAG)
    if not (start and end):
        return []
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    return [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def latest_materialization(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    return records[0] if records else None


def materialized_partitions(instance: dg.DagsterInstance, key: dg.AssetKey) -> set[str]:
    """The partition keys of ``key`` with at least one materialization."""
    return set(instance.get_materialized_partitions(key))


# --- is a day loaded? ----------------------------------------------------------------------------
# A heatmap reads game_events, so a day is "loaded" only when Dagster says the latest attempt to
# materialize its game_events partition succeeded. Both launchers of the admin trigger and the
# backfill command decide with :func:`etl_needed_because`: the sensor and the CLI feed it
# :func:`game_events_status` (the instance), the admin API the same status read through GraphQL
# (``assetPartitionStatuses``, trigger/graphql.py). Dagster ranks a partition's statuses
# in progress > failed > materialized, in the instance and in GraphQL alike.
_IN_PROGRESS_NAMES = ("IN_PROGRESS", "MATERIALIZING")  # the instance's name, GraphQL's name
_FAILED_NAME, _MATERIALIZED_NAME = "FAILED", "MATERIALIZED"


def etl_needed_because(day: str, status: str | None) -> str | None:
    """Why ``day``'s ETL must run before its heatmap, or None when game_events ``day`` is loaded.

    ``status``: the partition's Dagster status name (MATERIALIZED, FAILED, IN_PROGRESS or
    MATERIALIZING), None when it was never materialized or attempted."""
    if status == _MATERIALIZED_NAME:
        return None
    if status in _IN_PROGRESS_NAMES:
        return f"game_events {day} is being materialized right now; the heatmap waits for that ETL run"
    if status == _FAILED_NAME:
        return f"the latest materialization of game_events {day} failed; a heatmap would read stale or no rows"
    return f"game_events {day} was never materialized; a heatmap would read no rows"


def game_events_status(instance: dg.DagsterInstance, dates: dg.PartitionsDefinition, day: str) -> str | None:
    """Dagster's status of the game_events partition ``day`` (see :func:`etl_needed_because`)."""
    statuses = instance.get_status_by_partition(GAME_EVENTS, [day], dates) or {}  # None: never materialized at all
    status = statuses.get(day)
    return status.value if status else None


def run_failure_reason(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """What made a run fail, as its failed steps said it (``step: message``); None if no step failed."""
    records = instance.get_records_for_run(
        run_id, of_type={dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE}
    ).records
    steps, run_message = {}, None
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            data = event.step_failure_data
            description = data.user_failure_data.description if data.user_failure_data else None
            steps[event.step_key] = description or (data.error.message.strip() if data.error else event.message)
        else:
            run_message = event.message
    return failure_summary(steps, run_message)


def failure_summary(step_messages: dict[str, str], run_message: str | None) -> str | None:
    """One line from a run's failed steps (the last failure of each step wins: retries), else its run failure."""
    if step_messages:
        return "; ".join(f"{step}: {_text_first_line(message)}" for step, message in step_messages.items())
    return _text_first_line(run_message) if run_message else None


def _text_first_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else ""


def utc_from_timestamp(timestamp: float | None) -> dt.datetime | None:
    return None if timestamp is None else dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).replace(tzinfo=None)


def run_start_of_latest_materialization(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str
) -> dt.datetime | None:
    """When the run that last wrote this partition started (naive UTC): a lower bound of its extraction."""
    record = latest_materialization(instance, key, partition)
    if record is None:
        return None
    run = instance.get_run_record_by_id(record.run_id)
    return utc_from_timestamp(run.start_time if run and run.start_time else record.timestamp)


@dataclass(frozen=True)
class DayLoad:
    """Whether a day of game_events was loaded, as the UI shows it: the latest materialization and
    whether the latest attempt failed."""

    day: str
    state: str  # LOADED, NEVER_LOADED or LAST_LOAD_FAILED
    run_id: str | None = None  # of the latest successful materialization
    materialized_at: dt.datetime | None = None  # naive UTC

    @property
    def loaded(self) -> bool:
        return self.state == LOADED


LOADED, NEVER_LOADED, LAST_LOAD_FAILED = "loaded", "never_loaded", "last_load_failed"


def day_load(instance: dg.DagsterInstance, day: str, dates: dg.PartitionsDefinition) -> DayLoad:
    """The load state of one game_events day. An attempt still running does not hide the last success."""
    record = latest_materialization(instance, GAME_EVENTS, day)
    status = game_events_status(instance, dates, day)
    run_id = record.run_id if record else None
    at = utc_from_timestamp(record.timestamp) if record else None
    if status == _FAILED_NAME:
        return DayLoad(day, LAST_LOAD_FAILED, run_id, at)
    if record is None:
        return DayLoad(day, NEVER_LOADED)
    return DayLoad(day, LOADED, run_id, at)


# The embedded demo's whole week without a backfill: every missing partition whose inputs are loaded,
# once (a failed attempt is not retried forever; re-run it by hand). AutomationCondition.on_missing()
# only looks at the latest time window, i.e. today.
DEMO_FILL_MISSING = (
    dg.AutomationCondition.missing()
    & ~dg.AutomationCondition.in_progress()
    & ~dg.AutomationCondition.newly_requested()
    & ~dg.AutomationCondition.execution_failed()
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
)


# --- retries -------------------------------------------------------------------------------------
UNREACHABLE, BUSY, RESOURCES = "unreachable", "busy", "resources"
_UNREACHABLE_STATES = {"57P01", "57P02", "57P03", "53300"}  # admin/crash shutdown, starting up, too many connections
_BUSY_STATES = {"55P03", "40P01", "40001", "57014"}  # lock timeout, deadlock, serialization, statement timeout
_SQLITE_BUSY = ("database is locked", "database table is locked")
_SQLITE_UNREACHABLE = ("unable to open database file", "disk i/o error")


def db_retry_policy(settings: Settings) -> dg.RetryPolicy:
    return dg.RetryPolicy(
        max_retries=settings.db_retry_max_retries,
        delay=settings.db_retry_delay_seconds,
        backoff=dg.Backoff.EXPONENTIAL,
    )


def classify_database_error(exc: BaseException) -> str | None:
    """``unreachable``, ``busy`` or ``resources`` for errors a retry can cure; None for the rest."""
    if isinstance(exc, DatabaseBusy):
        return BUSY
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return UNREACHABLE
    if isinstance(exc, (sa.exc.DisconnectionError, sa.exc.TimeoutError)):
        return UNREACHABLE
    if not isinstance(exc, sa.exc.DBAPIError):
        return None
    orig = getattr(exc, "orig", None)
    if type(orig).__module__.startswith("sqlite3"):
        text = str(orig).lower()
        if any(part in text for part in _SQLITE_BUSY):
            return BUSY
        if any(part in text for part in _SQLITE_UNREACHABLE):
            return UNREACHABLE
        return None
    state = sqlstate(exc)
    if state is None:
        # No answer from a server: psycopg raises OperationalError / InterfaceError when it cannot
        # connect or the connection broke before a reply.
        return UNREACHABLE if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)) else None
    if state.startswith("08") or state in _UNREACHABLE_STATES:
        return UNREACHABLE
    if state in _BUSY_STATES:
        return BUSY
    if state.startswith("53"):
        return RESOURCES
    return None


def is_transient_db_error(exc: BaseException) -> bool:
    return classify_database_error(exc) is not None


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_RETRY_NOTE = (
    "Nothing half-written was kept (each partition is written in one transaction); the step is retried "
    "with exponential backoff (DB_RETRY_MAX_RETRIES, DB_RETRY_DELAY_SECONDS)."
)


def describe_database_error(exc: BaseException, databases: list[str], kind: str | None = None) -> str:
    kind = kind or classify_database_error(exc) or UNREACHABLE
    where = ", ".join(dict.fromkeys(databases)) or "(unknown database)"
    state = sqlstate(exc)
    error = f"{type(exc).__name__}{f' [SQLSTATE {state}]' if state else ''}: {_first_line(exc)}"
    if kind == BUSY:
        return (
            f"Database busy ({where}): {error}. Another transaction held a lock we needed, or a statement "
            f"timed out. {_RETRY_NOTE} If it keeps happening, look for long transactions on these tables."
        )
    if kind == RESOURCES:
        return f"Database out of resources ({where}): {error}. {_RETRY_NOTE} Check the server's disk and memory."
    return (
        f"Database unreachable or connection lost ({where}): {error}. {_RETRY_NOTE} Check that the server is up "
        "and the URL (DATABASE_URL / WAREHOUSE_DATABASE_URL) is right."
    )


def reports_database_errors(fn):
    """Decorate an asset or check function (under ``@dg.asset``): see the module docstring."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except dg.Failure:
            raise
        except Exception as exc:
            databases = [getattr(v, "display_url") for v in kwargs.values() if hasattr(v, "display_url")]
            kind = classify_database_error(exc)
            if kind is not None:
                raise dg.Failure(description=describe_database_error(exc, databases, kind), allow_retries=True) from exc
            raise dg.Failure(description=f"{type(exc).__name__}: {exc}", allow_retries=False) from exc

    return wrapper

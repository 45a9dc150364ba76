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

import dagster as dg
import sqlalchemy as sa

from heatmap_pipeline.settings import Settings
from heatmap_pipeline.warehouse.db import sqlstate
from heatmap_pipeline.warehouse.locks import DatabaseBusy

# --- jobs, assets, tags ------------------------------------------------------------------------
ETL_JOB = "etl_job"
HEATMAP_JOB = "heatmap_job"
GAME_EVENTS = dg.AssetKey("game_events")

PARTITION_TAG = "dagster/partition"
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"
TRIGGER_TAG = "heatmap_pipeline/trigger"  # who launched the run: a schedule, a sensor, admin_api, cli_backfill
REQUEST_TAG = "heatmap_pipeline/admin_request"  # the admin_trigger_requests id
REQUESTER_TAG = "heatmap_pipeline/requester"  # client address of the admin request
LATE_ROWS_TAG = "heatmap_pipeline/late_rows"
SOURCE_RUN_TAG = "heatmap_pipeline/after_run"
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

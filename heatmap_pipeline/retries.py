"""Transient database errors: retried with exponential backoff, reported naming the database.

Every asset and check carries :func:`db_retry_policy` (DB_RETRY_MAX_RETRIES retries, the first
after DB_RETRY_DELAY_SECONDS, doubling) and is wrapped by :func:`reports_database_errors`,
which turns what escapes the step into a :class:`dagster.Failure`:

* a transient database error (connection refused, dropped, server restarting, SQLite busy):
  a message naming the database (URL without password), retries allowed;
* anything else (the source table missing a column, a reconciliation failure, a bug):
  the same message it had, retries *not* allowed: retrying a deterministic error only delays it.

Each partition write is one transaction, so a retried step starts from the partition's previous
contents, never from a half-written one.
"""

import functools

import dagster as dg
import sqlalchemy as sa

from heatmap_pipeline.settings import Settings

_SQLITE_TRANSIENT = ("database is locked", "unable to open database file", "disk i/o error")


def db_retry_policy(settings: Settings) -> dg.RetryPolicy:
    return dg.RetryPolicy(
        max_retries=settings.db_retry_max_retries,
        delay=settings.db_retry_delay_seconds,
        backoff=dg.Backoff.EXPONENTIAL,
    )


def is_transient_db_error(exc: BaseException) -> bool:
    """True for errors a retry can cure: the server unreachable, restarting, or the connection lost."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (sa.exc.DisconnectionError, sa.exc.TimeoutError)):
        return True
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        orig = getattr(exc, "orig", None)
        if type(orig).__module__.startswith("sqlite3"):
            return any(text in str(orig).lower() for text in _SQLITE_TRANSIENT)
        return True  # psycopg / psycopg2 OperationalError: connection-level by definition
    return False


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe_database_error(exc: BaseException, databases: list[str]) -> str:
    where = ", ".join(dict.fromkeys(databases)) or "(unknown database)"
    return (
        f"Database unreachable or connection lost ({where}): {type(exc).__name__}: {_first_line(exc)}. "
        "Nothing half-written was kept (each partition is written in one transaction); the step is retried "
        "with exponential backoff (DB_RETRY_MAX_RETRIES, DB_RETRY_DELAY_SECONDS). Check that the server is up "
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
            if is_transient_db_error(exc):
                raise dg.Failure(description=describe_database_error(exc, databases), allow_retries=True) from exc
            raise dg.Failure(description=f"{type(exc).__name__}: {exc}", allow_retries=False) from exc

    return wrapper

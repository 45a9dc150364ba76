"""Database URLs and engines: the only place that knows how to connect."""

from __future__ import annotations

import functools
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

# SQLite's own default page cache (2 MiB; negative PRAGMA values are KiB). Every connection
# starts with it, and a day's load, which raises it for its transaction (etl/writing.py:
# load_page_cache), sets it back, so a query gets this cache on whichever pooled connection it
# runs: SQLite's sorter (GROUP BY) was slower with the load's big cache.
SQLITE_CACHE_KIB = 2000


def normalize_database_url(raw: str) -> str:
    """Accept the old system's URL forms and pick a synchronous driver we install.

    ``postgresql+asyncpg://`` (the old FastAPI app's async URL) and ``postgres://`` become
    ``postgresql+psycopg://``; ``postgresql://`` and ``postgresql+psycopg2://`` are kept
    (SQLAlchemy 2.1 maps the plain form to psycopg 3, which we install, as we do psycopg2).
    """
    try:
        url = make_url(raw)
    except Exception:  # sqlalchemy raises ArgumentError with a message that echoes the URL
        raise ValueError("is not a database URL; expected e.g. postgresql://user@host:5432/db or sqlite:///path.db") from None
    backend = url.get_backend_name()
    driver = url.get_driver_name() if "+" in url.drivername else ""
    if backend in ("postgres", "postgresql"):
        if driver == "asyncpg" or backend == "postgres":
            url = url.set(drivername="postgresql+psycopg" if driver in ("", "asyncpg") else f"postgresql+{driver}")
        if driver not in ("", "asyncpg", "psycopg", "psycopg2"):
            raise ValueError(f"driver {driver!r} is not supported; use postgresql://, postgresql+psycopg2:// or postgresql+asyncpg://")
    elif backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise ValueError(f"driver {driver!r} is not supported; use sqlite:///path.db")
    else:
        raise ValueError(f"database {backend!r} is not supported; use PostgreSQL or SQLite")
    return url.render_as_string(hide_password=False)


def redact(url: str) -> str:
    """The URL without its password, for logs and metadata."""
    return make_url(url).render_as_string(hide_password=True)


@functools.lru_cache(maxsize=16)
def get_engine(url: str) -> sa.Engine:
    """One pooled engine per URL per process. PostgreSQL sessions run in UTC."""
    url = normalize_database_url(url)
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # WAL lets the UI read while a run writes
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.execute(f"PRAGMA cache_size={-SQLITE_CACHE_KIB}")
            cursor.execute("PRAGMA temp_store=MEMORY")
            cursor.close()

        return engine
    engine = sa.create_engine(
        url,
        pool_pre_ping=True,
        connect_args={"options": "-c timezone=UTC", "connect_timeout": 10},
    )

    # insert=True: before SQLAlchemy's own first query, which already fails on such a database
    @sa.event.listens_for(engine, "connect", insert=True)
    def _refuse_sql_ascii(dbapi_connection, _record):
        status = getattr(getattr(dbapi_connection, "info", None), "parameter_status", None)  # psycopg 3
        encoding = status("server_encoding") if status else dbapi_connection.get_parameter_status("server_encoding")
        if encoding == "SQL_ASCII":
            raise UnsupportedDatabase(
                f"the PostgreSQL database {redact(url)} has server_encoding SQL_ASCII: it stores text as bytes "
                "without saying which encoding they are in, so its text (payloads, ids) cannot be read reliably. "
                "Nothing was read or written. Move the data into a UTF8 database (createdb -E UTF8 -T template0, "
                "then pg_dump | psql; convert the dump with iconv if the text is not UTF-8) and point "
                "DATABASE_URL / WAREHOUSE_DATABASE_URL at it."
            )

    return engine


class UnsupportedDatabase(RuntimeError):
    """A database we refuse to read or write (a PostgreSQL one with SQL_ASCII encoding); not retried."""


# Dialects that render Core for ``sa.text``: binds as ``:name``, no driver details baked in
# (psycopg's doubled ``%``, its ``:name::TYPE`` bind casts, which ``sa.text`` cannot parse).
_TEXT_DIALECTS = {
    "sqlite": lambda: sqlite.dialect(paramstyle="named"),
    "postgresql": lambda: postgresql.psycopg2.dialect(paramstyle="named"),
}


def text_sql(clause: sa.ClauseElement, dialect: str, *, literal_binds: bool = False) -> str:
    """A Core clause as SQL text to put inside ``sa.text`` statements, for ``dialect`` (an
    engine's ``dialect.name``). With ``literal_binds`` its values are inline, their colons escaped
    so ``sa.text`` does not read them as parameters; otherwise its bind parameters stay ``:name``."""
    compiled = str(clause.compile(dialect=_TEXT_DIALECTS[dialect](), compile_kwargs={"literal_binds": literal_binds}))
    return compiled.replace(":", "\\:") if literal_binds else compiled


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (psycopg 3 or psycopg2), or None (SQLite, or no server answer)."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)

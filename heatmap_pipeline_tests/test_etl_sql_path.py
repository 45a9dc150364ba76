"""The SQL fast path (same database) and the COPY path (two databases) give exactly the Python path's tables.

One source day holds every kind of good and bad row the cleaner knows. It is loaded once by
the Python streaming path and once by the SQL path into the same warehouse, and the stored
``game_events`` rows and ``quarantined_events`` rows (reason, detail and raw row per source
id) must be identical - on SQLite and on PostgreSQL, with the payload column as text, JSON
and JSONB, with and without a unique id.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import uuid

import pytest
import sqlalchemy as sa

from heatmap_pipeline.core.cleaning import REASONS, CleaningRules
from heatmap_pipeline.warehouse.db import SQLITE_CACHE_KIB, get_engine
from heatmap_pipeline.warehouse.migrations import ensure_warehouse_schema
from heatmap_pipeline.warehouse.tables import game_events, quarantined_events
from heatmap_pipeline.warehouse.etl import incremental, pg_partitions, sql_path, writing
from heatmap_pipeline.warehouse.etl import load_partition
from heatmap_pipeline.warehouse.etl.python_path import load_partition_python
from heatmap_pipeline.warehouse.etl.sql_path import load_partition_sql
from heatmap_pipeline.warehouse.heatmaps import compute_heatmap
from heatmap_pipeline.warehouse.source import OLD_SYSTEM_PAYLOAD_TYPES, old_system_source_ddl
from heatmap_pipeline_tests.support import event, write_source_events

DAY = dt.date(2025, 11, 16)
NOW = dt.datetime(2025, 11, 16, 20, 0)
RULES = CleaningRules(
    levels=frozenset({"1", "2", "3"}),
    default_level="1",
    position_event_types=frozenset({"move", "position"}),
    max_payload_bytes=5000,
    future_cutoff=NOW + dt.timedelta(minutes=10),
    partition_start=dt.date(2025, 1, 1),
)


def at(hour: int, minute: int = 0, micro: int = 0) -> dt.datetime:
    return dt.datetime(2025, 11, 16, hour, minute, 0, micro)


def source_day(*, with_duplicates: bool, sqlite: bool) -> list[dict]:
    """Every kind of good and bad row; ids from 1000 up, so reasons can be compared per id."""
    rows: list[dict] = []
    ids = iter(range(1000, 10_000))

    def add(payload, ts="auto", **kw):
        kw.setdefault("id", next(ids))
        null_id = kw["id"] is None
        created = kw.pop("created_at", "default")
        row = event(at(10, len(rows) % 60, len(rows)) if isinstance(ts, str) and ts == "auto" else ts, payload, **kw)
        if null_id:
            row["id"] = None
        if created != "default":
            row["created_at"] = created
        rows.append(row)

    # --- clean rows, including every accepted form -------------------------------------
    add({"x": 1.5, "y": 2.25, "level": 1})
    add({"x": 3, "y": 4, "level": 2.0})
    add({"x": -7.125, "y": 0, "level": "3"})
    add({"x": 1, "y": 2, "level": " 2 "})  # stripped to "2"
    add({"x": 5, "y": 6})  # default level
    add({"x": 5, "y": 6, "level": None})  # explicit null level: default level
    add({"x": "12.5", "y": "-3", "level": 3})  # numeric strings
    add({"x": " 7 ", "y": "1e3", "level": 1})  # strings float() accepts, SQL leaves to Python
    add({"x": 0.1 + 0.2, "y": 1e-5, "level": 1})  # 17 significant digits
    add({"x": 12345678901234567890, "y": -0.0, "level": 1})  # big integer, negative zero
    add({"x": 1.5e300, "y": 2e-310, "level": 1})  # huge and subnormal, left to Python
    add({"score": 80, "final_score": "120"}, event_type="game_over")
    add({"level": 3, "score": 1.25}, event_type="level_start")  # non-position keeps its level
    add({}, event_type="click")
    add({"x": 1, "y": 2, "meta": {"a": [1, 2, {"b": None}]}, "level": 2})  # nested: Python
    add({"x": 1, "y": 2, "name": "é ü 中", "esc": "a\"b\\c\n"})  # non-ASCII and escapes
    add('{"x": 1, "y": 2, "who": "\\u00e9\\u0000"}')  # \u escapes (NUL is fine in JSON text)
    add(' \n\t{ "x" : 1 ,\r\n "y" : 2 } \n')  # JSON whitespace everywhere
    add({"x": 1, "y": 2, "level": True})  # unknown level "true"
    add('{"x": 1, "x": 9, "y": 2, "level": 1, "level": 2}')  # duplicate keys: the last wins
    add({"x": 1, "y": 2, "pad": "p" * 4200})  # over the SQL path's 4000-byte limit, under MAX
    add({"x": 1.0, "y": 2.0}, event_type=None, session_id=None, user_id=None)
    add({"x": 1, "y": 2}, created_at=None)
    add({"x": 2, "y": 3, "level": 1}, ts=at(23, 59, 999999))
    add({"x": 2, "y": 3, "level": 1}, ts=at(0, 0, 0))
    add({"x": 2, "y": 3, "level": 1}, ts=NOW + dt.timedelta(minutes=10))  # exactly at the cutoff
    add({"x": 4, "y": 4, "level": 2}, event_type="position")
    add({"x": 1, "y": 2, "score": 10, "final_score": None, "level": 1e0})

    # --- bad rows, one or more per reason -------------------------------------------------
    add({"x": 1, "y": 2, "level": 9})  # unknown_level
    add({"x": 1, "y": 2, "level": "9"})
    add({"x": 1, "y": 2, "level": 1.5})
    add({"x": 1, "y": 2, "level": 1e20})
    add({"x": 1, "y": 2, "level": [1]})
    add({"x": 1})  # missing_coordinate
    add({"x": None, "y": 2})
    add({"level": 1}, event_type="position")  # position type without coordinates
    add({"x": "abc", "y": 2})  # non_numeric_coordinate
    add({"x": True, "y": 2})
    add({"x": [1], "y": 2})
    add({"x": {"v": 1}, "y": 2})
    add({"x": 1, "y": "1_000x"})
    add('{"x": 1' + "0" * 400 + ', "y": 2}')  # non_finite_coordinate: integer beyond float
    add('{"x": 1e400, "y": 2}')
    add('{"x": NaN, "y": 2}')  # Python's json reads NaN; PostgreSQL json does not store it
    add('{"x": 1, "y": -Infinity}')
    add({"x": "nan", "y": 2})
    add({"x": "inf", "y": 2})
    add({"score": "abc"}, event_type="game_over")  # invalid_score
    add({"score": 1, "final_score": True}, event_type="game_over")
    add('{"score": NaN}', event_type="game_over")
    add(None)  # null_payload
    add("{not json")  # unparseable_payload
    add('{"x": 1, "y": 2')
    add("{" * 0 + '{"a": ' + "[" * 1500 + "]" * 1500 + "}")  # deeper than Python's json recursion
    add("[1, 2]")  # payload_not_object
    add("42")
    add('"text"')
    add("null")
    add({"x": 1, "y": 2, "pad": "p" * 6000})  # payload_too_large
    add({"x": 1, "y": 2, "pad": "é" * 2600})  # too large in bytes, not in characters
    add({"x": 1, "y": 2}, ts=None, created_at=at(9))  # null_timestamp (found by created_at)
    add({"x": 1, "y": 2}, ts=at(22))  # future_timestamp
    add({"x": 1, "y": 2}, ts=NOW + dt.timedelta(minutes=10, microseconds=1))
    if sqlite:  # text timestamps: forms only a text column can hold
        add({"x": 1, "y": 2, "level": 1}, ts="2025-11-16T08:30:00.125")  # 'T', 3-digit fraction: clean
        add({"x": 1, "y": 2, "level": 1}, ts="2025-11-16 10:00:00+02:00")  # offset: clean, 08:00 UTC
        add({"x": 1, "y": 2, "level": 1}, ts="2025-11-16T10:00:00Z")
        # timestamp_outside_partition: 04:30 UTC on the 17th, as it arrived (not from the future)
        add({"x": 1, "y": 2}, ts="2025-11-16T23:30:00-05:00", created_at="2025-11-17 04:30:00")
        add({"x": 1, "y": 2}, ts="2025-11-16 junk")  # unparseable_timestamp
        add({"x": 1, "y": 2}, ts="2025-11-16 25:00:00")
        add({"x": 1, "y": 2, "level": 1}, ts="2025-11-16 11:00:00", created_at="yesterday-ish")
    if with_duplicates:
        # duplicate_id: of the valid rows with one id, the first by created_at is kept
        add({"x": 1, "y": 1, "level": 1}, id=500, created_at=at(10, 1))
        add({"x": 2, "y": 2, "level": 1}, id=500, created_at=at(10, 2))
        add(None, id=501, created_at=at(10, 1))  # invalid first: the valid second is kept
        add({"x": 3, "y": 3, "level": 2}, id=501, created_at=at(10, 2))
        for minute in (3, 1, 2):
            add({"x": minute, "y": 1, "level": 3}, id=502, created_at=at(10, minute))
        add({"x": 1, "y": 1}, id=None)  # null_id
        add({"x": 1, "y": 1}, id=None)
    # other days and rows the day filter must not pick up
    add({"x": 1, "y": 2}, ts=dt.datetime(2025, 11, 15, 23, 59, 59))
    add({"x": 1, "y": 2}, ts=dt.datetime(2025, 11, 17, 0, 0))
    # judged against arrival (added last: the automatic timestamps above depend on the row count)
    add({"x": 1, "y": 2}, ts=dt.datetime(2099, 1, 1), created_at=at(3))  # far future: filed under its arrival day
    add({"x": 1, "y": 2}, ts=at(5), created_at=at(4))  # an hour ahead of its arrival: future_timestamp
    # times Python cannot hold (PostgreSQL holds them; SQLite text): timestamp_out_of_range
    add({"x": 1, "y": 2}, ts="infinity", created_at=at(6))  # filed under its arrival day
    add({"x": 1, "y": 2}, ts="-infinity", created_at=at(6))
    add({"x": 1, "y": 2}, ts="10000-01-01 00:00:00", created_at=at(6))
    add({"x": 1, "y": 2, "level": 1}, ts=at(7), created_at="infinity")  # filed under its timestamp's day
    add({"x": 1, "y": 2, "level": 1}, ts=at(7, 1), created_at="10000-01-01 00:00:00")
    # before PARTITION_START_DATE, arrived on the day: timestamp_before_start
    add({"x": 1, "y": 2}, ts=dt.datetime(1970, 1, 1), created_at=at(8))
    add({"x": 1, "y": 2}, ts=dt.datetime(2024, 6, 1, 12), created_at=at(8, 1))
    add({"x": 1, "y": 2, "level": 1}, ts=at(8, 2), created_at=dt.datetime(1970, 1, 1))  # future_timestamp
    # numbers read as pd.to_numeric reads them
    add({"x": "1_000", "y": 2})  # non_numeric_coordinate (float() would say 1000)
    add({"x": "\u0661\u0662", "y": 2})  # Arabic-Indic digits: non_numeric_coordinate
    add({"x": 1, "y": "\uff11"})  # a fullwidth digit
    add({"score": "1_0"}, event_type="game_over")  # invalid_score
    add('{"x": 1, "y": 2, "speed": NaN}')  # NaN outside x/y/score: not JSON, unparseable_payload
    add('{"x": 1, "y": 2, "meta": {"v": [Infinity]}}')
    add({"x": 1, "y": 2, "note": "NaN Infinity"})  # the words in a string: clean
    add({"x": "-0.0", "y": -0.0, "score": "-0", "level": 2}, event_type="move")  # negative zero: stored 0.0
    add('{"x": -0.0, "y": -0, "final_score": -0.0}')
    add({"x": 1, "y": 2, "level": "1.0"})  # the string "1.0" is level 1, like the number 1.0
    add({"x": 1, "y": 2, "level": " 03 "})
    add({"x": 1, "y": 2, "level": "2.50"})  # 2.5: unknown_level
    add({"x": "+.5", "y": "5.", "level": 1})  # forms pd.to_numeric accepts
    add({"x": " 1e3 ", "y": "-2E-2", "level": 1})
    # the stored payload keeps what is not a typed column, in one canonical form in both paths
    add('{"x": 1, "y": 2, "level": 1, "k": 1.50, "e": 1e3, "z": -0.0, "n": null, "b": true, "s": "\u00e9", '
        '"arr": [1, 2.0, {"b": 1, "a": 2}], "bb": {}, "big": 12345678901234567890123, "tiny": 1e-7, "é": "ü中"}', ts=at(12, 1))
    add('{"z": 1.5E-3, "a": {"yy": [], "x": 0.10}, "score": 5, "q": "a\\"b\\\\c\\nd/"}', event_type="game_over", ts=at(12, 2))
    add({"session_id": "abc", "mode": "hard"}, event_type="session_start", ts=at(12, 3))
    add('{"x": 1, "y": 2, "dup": 1, "dup": 2.50}', ts=at(12, 4))
    add("[1, 2]", event_type="click", ts=at(12, 5))  # payload_not_object, though no position
    if sqlite:  # a created_at that is no date (SQLite's date() alone keeps Feb 30): informational, ignored
        add({"x": 1, "y": 2, "level": 1}, ts=at(11, 1), created_at="2025-02-30 10:00:00")
    return rows


def create_source(url: str, payload_type: str, unique_id: bool) -> None:
    engine = get_engine(url)
    pg = engine.dialect.name == "postgresql"
    id_type = "bigint" if pg else "INTEGER"
    ts_type = "timestamptz" if pg else "TEXT"
    key = " PRIMARY KEY" if unique_id else ""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"CREATE TABLE events (id {id_type}{key}, user_id varchar(128), session_id varchar(128), "
                f"event_type varchar(64), event_name varchar(128), event_category varchar(64), payload {payload_type}, "
                f'"timestamp" {ts_type}, created_at {ts_type})'
            )
        )
        conn.execute(sa.text('CREATE INDEX ix_events_timestamp ON events ("timestamp")'))


def insert_storable(url: str, rows: list[dict]) -> list[dict]:
    """Insert row by row; a typed (JSON/JSONB) column refuses some payloads, which are skipped."""
    stored = []
    for row in rows:
        try:
            write_source_events(url, [row])
            stored.append(row)
        except sa.exc.DBAPIError:
            pass
    assert len(stored) > 50
    return stored


def snapshot(url: str) -> tuple[list[tuple], list[tuple]]:
    with get_engine(url).connect() as conn:
        clean = [tuple(r) for r in conn.execute(sa.select(game_events).order_by(game_events.c.event_id)).all()]
        quarantine = sorted(
            (
                (r.source_event_id or "", r.reason, r.detail, r.raw_row, r.partition_date, r.quarantined_at)
                for r in conn.execute(sa.select(quarantined_events)).all()
            ),
            key=repr,
        )
    return clean, quarantine


VARIANTS = {
    # name: (PostgreSQL payload type, SQLite payload type, unique id)
    "text": ("text", "TEXT", False),
    "json": ("json", "JSON", False),
    "jsonb-unique-id": ("jsonb", "TEXT", True),
}


def load_both_ways(url: str):
    """The Python path, then the SQL path, on the same day of one database: (sql result, python
    result, their tables), after asserting the tables are identical."""
    engine = get_engine(url)
    ensure_warehouse_schema(engine)
    python = load_partition_python(engine, engine, DAY, RULES, NOW, chunk_size=7)
    python_tables = snapshot(url)
    sql = load_partition_sql(engine, DAY, RULES, NOW, chunk_size=7)
    sql_tables = snapshot(url)

    assert sql.method.startswith("sql") and python.method.startswith("python")
    assert sql_tables[0] == python_tables[0]  # game_events, every column
    assert repr(sql_tables[0]) == repr(python_tables[0])  # also the sign of zero (-0.0 == 0.0)
    assert sql_tables[1] == python_tables[1]  # quarantine: id, reason, detail, raw row
    assert (sql.extracted, sql.clean, sql.quarantined, sql.reasons) == (
        python.extracted, python.clean, python.quarantined, python.reasons,
    )
    assert sql.extracted - sql.residue >= 15  # most clean rows never left the database
    zeros = [v for r in sql_tables[0] for v in r[9:13] if v == 0]
    assert zeros and all(math.copysign(1.0, v) == 1.0 for v in zeros)  # no -0.0 stored
    return sql, python, sql_tables


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_sql_path_equals_python_path(db_url, variant):
    pg_type, sqlite_type, unique_id = VARIANTS[variant]
    engine = get_engine(db_url)
    sqlite = engine.dialect.name == "sqlite"
    create_source(db_url, sqlite_type if sqlite else pg_type, unique_id)
    rows = insert_storable(db_url, source_day(with_duplicates=not unique_id, sqlite=sqlite))
    sql, _python, sql_tables = load_both_ways(db_url)

    assert sql.extracted == sql.clean + sql.quarantined == len(rows) - 2  # two rows on other days
    # the day really exercised the rules: every reason the source type can hold, and SQL did most
    expected = set(REASONS) - {"timestamp_outside_partition", "unparseable_timestamp"} - (
        set() if not unique_id else {"duplicate_id", "null_id"}
    )
    if pg_type != "text" and not sqlite:
        expected -= {"unparseable_payload"}  # a typed column holds only JSON PostgreSQL parsed
    if sqlite:
        expected |= {"timestamp_outside_partition", "unparseable_timestamp"}
    assert expected <= set(sql.reasons), expected - set(sql.reasons)
    # levels are normalized the same way in both paths
    by_id = {r[1]: r for r in sql_tables[0]}
    assert by_id["1001"][8] == "2" and by_id["1003"][8] == "2" and by_id["1004"][8] == "1"


def as_real_schema(rows: list[dict]) -> tuple[list[dict], set[uuid.UUID], set[uuid.UUID]]:
    """The rows with uuid ids, users and sessions, as the old system stores them; and the user and
    session ids its foreign keys need. Integer ids keep their order as uuids."""
    converted, users, sessions = [], set(), set()
    for row in rows:
        row = dict(row)
        if row["id"] is not None:
            row["id"] = uuid.UUID(int=row["id"])
        for key, seen in (("user_id", users), ("session_id", sessions)):
            if row[key] is not None:
                row[key] = uuid.uuid5(uuid.NAMESPACE_URL, f"{key}/{row[key]}")
                seen.add(row[key])
        converted.append(row)
    return converted, users, sessions


@pytest.mark.postgres
@pytest.mark.parametrize("payload_type", OLD_SYSTEM_PAYLOAD_TYPES)
def test_sql_path_equals_python_path_on_the_old_systems_real_schema(postgres_url, payload_type):
    """uuid id/user_id/session_id, timestamptz, a json (or jsonb, text) payload, NOT NULLs and
    foreign keys: the SQL path takes it (no fallback) and stores exactly the Python path's rows."""
    engine = get_engine(postgres_url)
    rows, users, sessions = as_real_schema(source_day(with_duplicates=False, sqlite=False))
    with engine.begin() as conn:
        for statement in old_system_source_ddl(payload_type):
            conn.execute(sa.text(statement))
        conn.execute(sa.text("INSERT INTO users (id) VALUES (:id)"), [{"id": u} for u in users])
        conn.execute(sa.text("INSERT INTO sessions (id) VALUES (:id)"), [{"id": s} for s in sessions])
    stored = insert_storable(postgres_url, rows)
    sql, _python, sql_tables = load_both_ways(postgres_url)

    assert sql.extracted == sql.clean + sql.quarantined == len(stored) - 2  # two rows on other days
    by_id = {r[1]: r for r in sql_tables[0]}
    first = str(uuid.UUID(int=1001))
    assert by_id[first][8] == "2" and by_id[first][2] == str(uuid.uuid5(uuid.NAMESPACE_URL, "user_id/u1"))
    # the dispatcher keeps the fast path too (it used to fall back to Python for uuid columns)
    assert load_partition(engine, engine, DAY, RULES, NOW).method.startswith("sql")


def test_rerunning_the_sql_path_gives_identical_tables(db_url):
    engine = get_engine(db_url)
    write_source_events(db_url, [r for r in source_day(with_duplicates=False, sqlite=False) if r["payload"] is not None][:20])
    ensure_warehouse_schema(engine)
    first = load_partition(engine, engine, DAY, RULES, NOW)
    tables = snapshot(db_url)
    second = load_partition(engine, engine, DAY, RULES, NOW)
    assert first.method.startswith("sql") and second.method.startswith("sql")
    assert snapshot(db_url) == tables and first.clean > 10


def test_failed_sql_run_leaves_the_partition_as_it_was(db_url, monkeypatch):
    engine = get_engine(db_url)
    write_source_events(db_url, source_day(with_duplicates=False, sqlite=False)[:40])
    ensure_warehouse_schema(engine)
    load_partition(engine, engine, DAY, RULES, NOW)
    before = snapshot(db_url)
    assert before[0] and before[1]

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sql_path, "write_cleaned_chunks", boom)  # fails after the INSERT ... SELECT
    with pytest.raises(RuntimeError, match="disk full"):
        load_partition_sql(engine, DAY, RULES, NOW)
    assert snapshot(db_url) == before


@pytest.mark.postgres
@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_cross_database_copy_load_equals_same_database_result(postgres_url, sqlite_url, driver):
    """SQLite source -> PostgreSQL warehouse streams and COPYs; the result equals a SQLite warehouse's."""
    rows = source_day(with_duplicates=False, sqlite=False)
    source = write_source_events(sqlite_url, rows)
    warehouse_url = sa.engine.make_url(postgres_url).set(drivername=f"postgresql+{driver}").render_as_string(False)
    warehouse = get_engine(warehouse_url)
    ensure_warehouse_schema(warehouse)
    ensure_warehouse_schema(source)

    copied = load_partition(source, warehouse, DAY, RULES, NOW, chunk_size=9)
    local = load_partition_python(source, source, DAY, RULES, NOW, chunk_size=9)

    assert copied.method == "python (copy)" and local.method == "python (executemany)"
    assert (copied.clean, copied.quarantined, copied.reasons) == (local.clean, local.quarantined, local.reasons)
    pg_clean, pg_quarantine = snapshot(warehouse_url)
    lite_clean, lite_quarantine = snapshot(sqlite_url)
    assert pg_clean == lite_clean
    assert [q[:4] for q in pg_quarantine] == [q[:4] for q in lite_quarantine]
    assert any("\\" in (r[13] or "") for r in pg_clean)  # backslashes survived COPY's text format


def test_dispatcher_uses_sql_for_one_database_and_python_for_two(sqlite_url, tmp_path):
    rows = [event(at(9), {"x": 1, "y": 2, "level": 1}), event(at(9), None)]
    source = write_source_events(sqlite_url, rows)
    ensure_warehouse_schema(source)
    assert load_partition(source, source, DAY, RULES, NOW).method.startswith("sql")
    other = get_engine(f"sqlite:///{tmp_path / 'warehouse.sqlite'}")
    ensure_warehouse_schema(other)
    result = load_partition(source, other, DAY, RULES, NOW)
    assert result.method == "python (executemany)" and (result.clean, result.quarantined) == (1, 1)


@pytest.mark.parametrize("path", ["sql", "python"])
def test_a_load_has_the_big_sqlite_page_cache_and_a_heatmap_after_it_the_default(sqlite_url, tmp_path, path):
    """The load raises SQLite's page cache for its own transaction and sets it back before the
    connection returns to the pool, so a heatmap query on that pooled connection gets the default."""
    rows = [event(at(9, m), {"x": m, "y": 2, "level": 1}) for m in range(5)]
    if path == "sql":
        source = warehouse = write_source_events(sqlite_url, rows)
    else:
        source = write_source_events(f"sqlite:///{tmp_path / 'source.sqlite'}", rows)
        warehouse = get_engine(sqlite_url)
    ensure_warehouse_schema(warehouse)
    warehouse.dispose()  # from here the pool holds only the connection the load opens
    during_load: list[int] = []

    def cache_at_insert(conn, cursor, statement, parameters, context, executemany):
        if re.search(r'INSERT INTO "?game_events"? ', statement):  # both paths' inserts of clean rows
            during_load.append(cursor.connection.execute("PRAGMA cache_size").fetchone()[0])

    sa.event.listen(warehouse, "before_cursor_execute", cache_at_insert)
    try:
        result = load_partition(source, warehouse, DAY, RULES, NOW)
    finally:
        sa.event.remove(warehouse, "before_cursor_execute", cache_at_insert)
    assert result.method.startswith(path) and result.clean == 5
    assert during_load and set(during_load) == {-writing.SQLITE_LOAD_CACHE_KIB}

    assert warehouse.pool.checkedin() == 1  # the load's connection, the one the heatmap gets
    at_heatmap: list[int] = []

    def cache_at_checkout(dbapi_connection, record, proxy):
        at_heatmap.append(dbapi_connection.execute("PRAGMA cache_size").fetchone()[0])

    sa.event.listen(warehouse.pool, "checkout", cache_at_checkout)
    try:
        heatmap = compute_heatmap(warehouse, DAY, "1", 10)
    finally:
        sa.event.remove(warehouse.pool, "checkout", cache_at_checkout)
    assert heatmap.points == 5
    assert at_heatmap == [-SQLITE_CACHE_KIB] == [-2000]  # SQLite's own default, 2 MiB
    with warehouse.connect() as reused, warehouse.connect() as fresh:  # and a new connection has it too
        assert [c.exec_driver_sql("PRAGMA cache_size").scalar() for c in (reused, fresh)] == [-2000, -2000]


@pytest.mark.postgres
def test_the_sql_path_reads_the_watermark_figures_a_full_load_reads_before_it(postgres_url):
    """PostgreSQL's SQL path counts the day's newest arrival and its rows without one in its own
    statement (two fill connections, one snapshot); they equal incremental.before_full_load's reads."""
    rules = dataclasses.replace(RULES, partition_start=dt.date(2025, 11, 1))
    rows = [event(dt.datetime(2025, 11, 16, 9, i), {"x": i, "y": 1, "level": 1}) for i in range(30)]
    rows[3]["created_at"] = None  # no arrival time
    rows[4]["created_at"] = dt.datetime(2025, 10, 20)  # before PARTITION_START_DATE: none either
    rows[5]["created_at"] = NOW + dt.timedelta(minutes=1)  # after the run's clock: not in the watermark
    rows[6]["created_at"] = NOW  # the newest arrival
    rows[7]["payload"] = '{"x": "far", "y": 1, "level": 1}'  # the residue's rows count too
    rows[7]["created_at"] = NOW - dt.timedelta(seconds=1)
    engine = write_source_events(postgres_url, rows)
    ensure_warehouse_schema(engine)
    expected = incremental.before_full_load(engine, engine, DAY, rules, NOW)
    result = load_partition_sql(engine, DAY, rules, NOW)
    assert (result.newest_arrival, result.rows_without_arrival) == (expected.newest_arrival, expected.rows_without_arrival)
    assert (result.newest_arrival, result.rows_without_arrival) == (NOW, 2)
    assert result.residue >= 1 and result.extracted == 30


@pytest.mark.postgres
def test_a_failed_load_drops_its_tables_and_the_next_load_drops_a_killed_one_s(postgres_url, monkeypatch):
    """The SQL path fills and indexes the day's table outside the load's transaction (committed, so
    several connections can): a failure drops it and its residue table; tables of a load that was
    killed before it could are dropped by the next load of the day."""
    engine = write_source_events(postgres_url, source_day(with_duplicates=False, sqlite=False)[:40])
    ensure_warehouse_schema(engine)

    def day_tables() -> list[str]:
        with engine.connect() as conn:
            return conn.execute(
                sa.text(
                    "SELECT relname FROM pg_class WHERE relkind = 'r' "
                    "AND (relname LIKE 'game_events_20251116%' OR relname LIKE 'etl_residue_20251116%') ORDER BY relname"
                )
            ).scalars().all()

    load_partition(engine, engine, DAY, RULES, NOW)
    [partition] = day_tables()
    before = snapshot(postgres_url)
    with monkeypatch.context() as patch:
        patch.setattr(sql_path, "write_cleaned_chunks", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full")))
        with pytest.raises(RuntimeError, match="disk full"):
            load_partition_sql(engine, DAY, RULES, NOW)
    assert day_tables() == [partition] and snapshot(postgres_url) == before

    killed = pg_partitions.create_stage_committed(engine, DAY)  # as a killed load leaves them
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE UNLOGGED TABLE "{pg_partitions.residue_name(killed.name)}" (id integer)'))
    assert len(day_tables()) == 3
    load_partition(engine, engine, DAY, RULES, NOW)
    [new_partition] = day_tables()
    assert new_partition not in (partition, killed.name) and snapshot(postgres_url) == before


@pytest.mark.parametrize("table_kind", ["rowid", "without rowid"])
def test_sqlite_reads_the_residue_back_by_rowid_or_by_key_and_stores_what_python_does(sqlite_url, table_kind):
    """SQLite notes the rowid of each row its insert leaves out and reads those back; a WITHOUT
    ROWID source has none, and its residue is found by key instead. Both equal the Python path."""
    engine = get_engine(sqlite_url)
    suffix = " WITHOUT ROWID" if table_kind == "without rowid" else ""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE events (id INTEGER PRIMARY KEY NOT NULL, user_id varchar(128), session_id varchar(128), "
                "event_type varchar(64), event_name varchar(128), event_category varchar(64), payload TEXT, "
                f'"timestamp" TEXT, created_at TEXT){suffix}'
            )
        )
    insert_storable(sqlite_url, [r for r in source_day(with_duplicates=False, sqlite=True) if r["id"] is not None])
    with engine.connect() as conn:
        assert sql_path._sqlite_has_rowid(conn) == (table_kind == "rowid")
    sql, _python, _tables = load_both_ways(sqlite_url)
    assert 0 < sql.residue < sql.extracted and sql.quarantined > 0

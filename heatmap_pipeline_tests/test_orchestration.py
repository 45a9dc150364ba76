"""Retry classification on real database errors: what a retry can cure is retried, with the message that fits it.

Every error here is raised by a real server (PostgreSQL, SQLite) or a real refused connection.
"""

from __future__ import annotations

import sqlite3
import threading

import dagster as dg
import pytest
import sqlalchemy as sa

from heatmap_pipeline.orchestration import (
    BUSY,
    IN_FLIGHT,
    IN_FLIGHT_NAMES,
    UNREACHABLE,
    classify_database_error,
    etl_needed_because,
    reports_database_errors,
)
from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.etl.pg_partitions import SwapLockTimeout


def raised_by(fn) -> BaseException:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the error is what we test
        return exc
    raise AssertionError("expected the database to raise")


class FakeResource:
    """Stands in for a resource only by its display_url, which the wrapper names in messages."""

    display_url = "postgresql://pipeline:***@db/telemetry"


def failure_of(exc: BaseException) -> dg.Failure:
    @reports_database_errors
    def step(resource=None):
        raise exc

    with pytest.raises(dg.Failure) as info:
        step(resource=FakeResource())
    return info.value


@pytest.mark.postgres
def test_lock_timeout_is_busy_not_unreachable_and_retried(postgres_url):
    engine = get_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE held (x int)"))
    holder = engine.connect()
    holder.begin()
    holder.execute(sa.text("LOCK TABLE held IN ACCESS EXCLUSIVE MODE"))
    try:

        def wait_for_lock():
            with engine.begin() as conn:
                conn.execute(sa.text("SET LOCAL lock_timeout = '50ms'"))
                conn.execute(sa.text("SELECT * FROM held"))

        exc = raised_by(wait_for_lock)
    finally:
        holder.rollback()
        holder.close()
    assert isinstance(exc, sa.exc.OperationalError)  # psycopg puts 55P03 under OperationalError
    assert classify_database_error(exc) == BUSY
    failure = failure_of(exc)
    assert failure.allow_retries
    assert failure.description.startswith("Database busy (postgresql://pipeline:***@db/telemetry)")
    assert "SQLSTATE 55P03" in failure.description and "unreachable" not in failure.description


@pytest.mark.postgres
def test_statement_timeout_is_busy(postgres_url):
    def slow():
        with get_engine(postgres_url).begin() as conn:
            conn.execute(sa.text("SET LOCAL statement_timeout = '20ms'"))
            conn.execute(sa.text("SELECT pg_sleep(2)"))

    exc = raised_by(slow)
    assert classify_database_error(exc) == BUSY
    assert "SQLSTATE 57014" in failure_of(exc).description


@pytest.mark.postgres
def test_deadlock_is_busy(postgres_url):
    engine = get_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE pair (id int primary key, v int)"))
        conn.execute(sa.text("INSERT INTO pair VALUES (1, 0), (2, 0)"))
    first_locked, errors = threading.Barrier(2), []

    def update(first: int, second: int):
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE pair SET v = v + 1 WHERE id = :i"), {"i": first})
                first_locked.wait(timeout=10)
                conn.execute(sa.text("UPDATE pair SET v = v + 1 WHERE id = :i"), {"i": second})
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=update, args=(1, 2)), threading.Thread(target=update, args=(2, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(errors) == 1  # PostgreSQL picks one victim
    assert classify_database_error(errors[0]) == BUSY
    assert "SQLSTATE 40P01" in failure_of(errors[0]).description


def test_refused_connection_is_unreachable_and_names_the_database():
    exc = raised_by(lambda: get_engine("postgresql://pipeline:s3cret@127.0.0.1:1/telemetry").connect())
    assert classify_database_error(exc) == UNREACHABLE
    failure = failure_of(exc)
    assert failure.allow_retries and failure.description.startswith("Database unreachable or connection lost")
    assert "s3cret" not in failure.description


@pytest.mark.postgres
@pytest.mark.parametrize("statement", ["SELECT * FROM no_such_table", "SELEC 1", "SELECT 1/0"])
def test_deterministic_errors_are_not_retried(postgres_url, statement):
    def run():
        with get_engine(postgres_url).connect() as conn:
            conn.execute(sa.text(statement))

    exc = raised_by(run)
    assert classify_database_error(exc) is None
    failure = failure_of(exc)
    assert not failure.allow_retries and not failure.description.startswith("Database")


def test_sqlite_locked_database_is_busy(tmp_path):
    path = tmp_path / "locked.sqlite"
    holder = sqlite3.connect(path)
    holder.execute("CREATE TABLE t (x int)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.05})

        def write():
            with engine.begin() as conn:
                conn.execute(sa.text("INSERT INTO t VALUES (1)"))

        exc = raised_by(write)
    finally:
        holder.rollback()
        holder.close()
    assert classify_database_error(exc) == BUSY
    assert failure_of(exc).allow_retries


def test_a_swap_that_gave_up_waiting_is_retried_as_busy():
    """The README promises Dagster's retry policy tries the swap again; a plain RuntimeError was not retried."""
    failure = failure_of(SwapLockTimeout("could not swap in the new partition: ... the old partition is unchanged"))
    assert failure.allow_retries
    assert failure.description.startswith("Database busy") and "old partition is unchanged" in failure.description


def test_a_bug_is_not_retried():
    failure = failure_of(KeyError("level"))
    assert not failure.allow_retries and failure.description == "KeyError: 'level'"


def test_one_in_flight_status_list_for_the_instance_and_graphql():
    assert dg.DagsterRunStatus.MANAGED in IN_FLIGHT  # the list the schedules used had lost MANAGED
    assert IN_FLIGHT_NAMES == tuple(status.value for status in IN_FLIGHT)


def test_a_day_is_loaded_only_when_its_latest_game_events_attempt_succeeded():
    # The instance says IN_PROGRESS where GraphQL says MATERIALIZING: both mean "wait for that ETL".
    assert etl_needed_because("2025-11-16", "MATERIALIZED") is None
    assert etl_needed_because("2025-11-16", None) == "game_events 2025-11-16 was never materialized; a heatmap would read no rows"
    assert etl_needed_because("2025-11-16", "FAILED").startswith("the latest materialization of game_events 2025-11-16 failed")
    assert etl_needed_because("2025-11-16", "IN_PROGRESS") == etl_needed_because("2025-11-16", "MATERIALIZING")
    assert "being materialized" in etl_needed_because("2025-11-16", "IN_PROGRESS")

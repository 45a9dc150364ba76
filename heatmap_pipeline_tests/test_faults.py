"""Faults on real databases: a day of every kind of bad event, a connection dropped mid-write,
a run process killed mid-write. Each ends with the partition either as before or as a clean run.

The mid-write faults need the writer stopped at a known point inside its transaction, without
a hook in the code: the test writes, in its own open transaction, a game_events row of the day.
The run loads the new day into a fresh table, then waits to swap it in for the old partition
(it cannot lock game_events while the test's transaction holds it). Then the fault is injected.
"""

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time

import dagster as dg
import pytest
import sqlalchemy as sa

from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.tables import events, game_events, quarantined_events
from heatmap_pipeline_tests.support import (
    warehouse_snapshot,
    build_defs,
    event,
    materialize_etl,
    old_readme_sample,
    settings_env,
    write_source_events,
)


USE_MEMORY_INSTANCE = True  # the conftest `instance` fixture is then in-memory: faster runs


# --- a generated day containing every kind of bad event -------------------------------------------

raw_events = sa.Table(  # the backend's table as some deployments have it: no primary key, payload as text
    "events",
    sa.MetaData(),
    *(sa.Column(c.name, sa.Text if c.name == "payload" else c.type) for c in events.columns),
)


def _bad_day(day: dt.date, now: dt.datetime, sqlite: bool) -> tuple[list[dict], dict]:
    """Rows of ``day`` and the expected fate of each: 'clean' or a quarantine reason, by row position."""
    t = lambda minute: dt.datetime.combine(day, dt.time(0, 0, 1)) + dt.timedelta(minutes=minute)  # noqa: E731
    cases = [  # (fate, row)
        ("clean", event(t(1), {"x": 10, "y": 20}, id=1001)),
        ("clean", event(t(2), {"x": 500, "y": 500}, id=1002)),  # out of level 1's bounds: kept, counted out of bounds
        ("clean", event(t(3), {"foo": 1}, id=1003, event_type="strange_new_type")),  # unknown type: kept
        ("clean", event(t(4), {"x": "3.5", "y": "4"}, id=1004)),  # numeric strings are numbers
        ("null_id", {**event(t(5), {"x": 1, "y": 1}), "id": None}),
        ("null_payload", event(t(6), None, id=1006)),
        ("unparseable_payload", event(t(7), '{"x": 1,', id=1007)),
        ("payload_not_object", event(t(8), "[1, 2]", id=1008)),
        ("payload_too_large", event(t(9), {"pad": "x" * 200}, id=1009)),
        ("missing_coordinate", event(t(10), {"x": 1}, id=1010)),
        ("non_numeric_coordinate", event(t(11), {"x": "left", "y": 1}, id=1011)),
        ("non_finite_coordinate", event(t(12), '{"x": NaN, "y": 1}', id=1012)),
        ("non_finite_coordinate", event(t(13), '{"x": 1, "y": Infinity}', id=1013)),
        ("unknown_level", event(t(14), {"x": 1, "y": 1, "level": "99"}, id=1014)),
        ("invalid_score", event(t(15), {"score": "lots"}, id=1015, event_type="level_end")),
        ("null_timestamp", event(None, {"x": 1, "y": 1}, id=1016, created_at=t(16))),
        ("future_timestamp", event(now + dt.timedelta(minutes=5), {"x": 1, "y": 1}, id=1017, created_at=t(17))),
        ("clean", event(t(18), {"x": 2, "y": 2}, id=1018)),
        ("duplicate_id", event(t(19), {"x": 3, "y": 3}, id=1018)),  # same id, valid: the first copy is kept
        ("unknown_level", event(t(20), {"x": 1, "y": 1, "level": "7"}, id=1020)),  # an invalid first copy ...
        ("clean", event(t(21), {"x": 4, "y": 4}, id=1020)),  # ... does not shadow the valid one
    ]
    if sqlite:  # text timestamps: only possible where the column does not enforce a type
        cases += [
            (
                "unparseable_timestamp",
                event(f"{day.isoformat()} 25:99:00", {"x": 1, "y": 1}, id=1030, created_at=t(30)),
            ),
            (
                "timestamp_outside_partition",
                # 04:30 UTC the next day, and it arrived then: not from the future, just another day
                event(f"{day.isoformat()}T23:30:00-05:00", {"x": 1, "y": 1}, id=1031,
                      created_at=dt.datetime.combine(day + dt.timedelta(days=1), dt.time(4, 30))),
            ),
        ]
    rows = [row for _, row in cases]
    return rows, [fate for fate, _ in cases]


def _write_raw(url: str, rows: list[dict]) -> None:
    engine = get_engine(url)
    raw_events.metadata.create_all(engine)
    table = sa.table("events", *(sa.column(c.name) for c in raw_events.columns))
    values = []
    for row in rows:
        row = dict(row)
        if engine.dialect.name == "sqlite":
            row = {k: (v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v) for k, v in row.items()}
        values.append(row)
    with engine.begin() as conn:
        conn.execute(table.insert(), values)


def test_every_kind_of_bad_event_is_quarantined_with_its_reason(db_url, monkeypatch, instance):
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    if (now + dt.timedelta(minutes=10)).date() != now.date():
        pytest.skip("too close to midnight UTC for a same-day future timestamp")
    day = now.date()
    rows, fates = _bad_day(day, now, db_url.startswith("sqlite"))
    _write_raw(db_url, rows)
    defs = build_defs(
        monkeypatch,
        db_url,
        MAX_PAYLOAD_BYTES="128",
        FUTURE_TOLERANCE_MINUTES="1",
        HEATMAP_BOUNDS=json.dumps({"1": [0, 100, 0, 100]}),
        PARTITION_START_DATE="2025-01-01",
    )
    result = materialize_etl(defs, day.isoformat(), instance)
    assert result.success

    engine = get_engine(db_url)
    with engine.connect() as conn:
        quarantined = conn.execute(
            sa.select(
                quarantined_events.c.source_event_id, quarantined_events.c.reason, quarantined_events.c.raw_row
            ).where(quarantined_events.c.partition_date == day)
        ).all()
        clean_ids = (
            conn.execute(sa.select(game_events.c.event_id).where(game_events.c.event_date == day)).scalars().all()
        )
    expected_quarantine = sorted((str(row["id"]), fate) for row, fate in zip(rows, fates) if fate != "clean")
    assert sorted((str(q.source_event_id), q.reason) for q in quarantined) == expected_quarantine
    assert sorted(clean_ids) == sorted(str(row["id"]) for row, fate in zip(rows, fates) if fate == "clean")
    for q in quarantined:  # the raw row is kept, payload included
        raw = json.loads(q.raw_row)
        original = next(
            r
            for r, f in zip(rows, fates)
            if f == q.reason and (None if r["id"] is None else str(r["id"])) == q.source_event_id
        )
        assert raw["payload"] == original["payload"] or json.loads(raw["payload"]) == json.loads(original["payload"])
    # every source row is accounted for, and the metadata counts them
    materialization = result.asset_materializations_for_node("game_events")[0].metadata
    assert materialization["rows_extracted"].value == len(rows)
    assert materialization["dagster/row_count"].value + materialization["rows_quarantined"].value == len(rows)
    expected_reasons = {}
    for fate in fates:
        if fate != "clean":
            expected_reasons[fate] = expected_reasons.get(fate, 0) + 1
    assert materialization["quarantine_reasons"].value == expected_reasons
    assert all(e.passed for e in result.get_asset_check_evaluations())

    key = dg.MultiPartitionKey({"date": day.isoformat(), "level": "1"})
    heat = defs.get_job_def("heatmap_job").execute_in_process(partition_key=key, instance=instance)
    meta = heat.asset_materializations_for_node("level_heatmaps")[0].metadata
    # positions of level 1: 1001, 1002 (out of bounds), 1004, 1018, 1020
    assert (meta["position_events"].value, meta["out_of_bounds"].value, meta["sum"].value) == (5, 1, 4.0)
    assert heat.get_asset_check_evaluations()[0].passed


# --- faults in the middle of a write (PostgreSQL) ------------------------------------------------

DAY = "2025-11-16"


class WriterBlocker:
    """Holds, in an open transaction, a game_events row of the day: the run's swap waits for it."""

    def __init__(self, url: str, event_id: str):
        self.engine = sa.create_engine(url)
        self.conn = self.engine.connect()
        self.tx = self.conn.begin()
        self.conn.execute(
            game_events.insert().values(
                event_date=dt.date(2025, 11, 16), event_id=event_id, ts=dt.datetime(2025, 11, 16)
            )
        )
        self.my_pid = self.conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()

    def blocked_writer_pid(self, timeout: float = 30) -> int:
        """The backend of the run, once it waits on our transaction (it has loaded the day and is swapping)."""
        watcher = sa.create_engine(self.engine.url)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                with watcher.connect() as conn:
                    pid = conn.execute(
                        sa.text(
                            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                            "AND wait_event_type = 'Lock' AND pid <> :me "
                            "AND pg_blocking_pids(pid) @> ARRAY[CAST(:me AS integer)]"
                        ),
                        {"me": self.my_pid},
                    ).scalar()
                if pid:
                    return pid
                time.sleep(0.05)
        finally:
            watcher.dispose()
        raise AssertionError("the run never blocked on the held row")

    def release(self):
        self.tx.rollback()
        self.conn.close()
        self.engine.dispose()


def _terminate(url: str, pid: int) -> None:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
    engine.dispose()


def _wait_gone(url: str, pid: int, timeout: float = 30) -> None:
    engine = sa.create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if not conn.execute(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
                ).scalar_one():
                    return
            time.sleep(0.05)
    finally:
        engine.dispose()
    raise AssertionError(f"backend {pid} is still there")


@pytest.fixture
def day_v1_loaded(postgres_url, monkeypatch, instance):
    """Version 1 of the day loaded; version 2 (10 more events, the last one held by the blocker) in the source."""
    write_source_events(postgres_url, old_readme_sample(dt.date(2025, 11, 16), 30))
    defs = build_defs(monkeypatch, postgres_url, DB_RETRY_DELAY_SECONDS="0.2")
    assert materialize_etl(defs, DAY, instance).success
    before = warehouse_snapshot(postgres_url)
    assert len(before["game_events"]) == 30
    extra = [event(dt.datetime(2025, 11, 16, 12, i), {"x": i, "y": i}, session_id="s2") for i in range(10)]
    write_source_events(postgres_url, extra)
    return postgres_url, before, str(extra[-1]["id"])


@pytest.mark.postgres
@pytest.mark.parametrize("retries", [1, 0])
def test_connection_dropped_mid_write_is_retried_or_fails_clearly_never_half_written(
    day_v1_loaded, monkeypatch, instance, retries
):
    url, before, held_id = day_v1_loaded
    defs = build_defs(monkeypatch, url, DB_RETRY_DELAY_SECONDS="0.2", DB_RETRY_MAX_RETRIES=str(retries))
    blocker = WriterBlocker(url, held_id)
    seen: dict = {}

    def drop_connection():
        try:
            pid = blocker.blocked_writer_pid()
            seen["mid_write"] = warehouse_snapshot(url)  # other sessions still see the old partition
            _terminate(url, pid)  # the database drops the run's connection mid-transaction
        finally:
            blocker.release()

    fault = threading.Thread(target=drop_connection)
    fault.start()
    result = defs.get_job_def("etl_job").execute_in_process(partition_key=DAY, instance=instance, raise_on_error=False)
    fault.join()
    assert seen["mid_write"]["game_events"] == before["game_events"]
    retried = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    if retries:
        assert result.success and len(retried) == 1
        assert "Database unreachable or connection lost (postgresql+psycopg://postgres@127.0.0.1:5432/" in _messages(
            retried[0]
        )
        after = warehouse_snapshot(url)
        assert len(after["game_events"]) == 40
        assert materialize_etl(defs, DAY, instance).success  # a clean rerun changes nothing: converged
        assert warehouse_snapshot(url) == after
    else:
        assert not result.success and not retried
        [failure] = result.get_step_failure_events()
        assert "Database unreachable or connection lost" in _messages(failure)
        assert "terminating connection due to administrator command" in _messages(failure)
        assert warehouse_snapshot(url) == before  # nothing half-written: the previous partition is intact


def _messages(event) -> str:
    data = event.event_specific_data
    error = getattr(data, "error", None)
    parts = []
    while error is not None:
        parts.append(error.message)
        error = error.cause
    return "\n".join(parts)


KILLABLE_RUN = """
import dagster as dg
from heatmap_pipeline.definitions import build_definitions
from heatmap_pipeline.settings import load_settings

defs = build_definitions(load_settings())
defs.get_job_def("etl_job").execute_in_process(partition_key="2025-11-16", instance=dg.DagsterInstance.ephemeral())
"""


@pytest.mark.slow
@pytest.mark.postgres
def test_run_process_killed_mid_write_leaves_the_partition_intact_and_a_rerun_converges(
    day_v1_loaded, monkeypatch, instance, tmp_path
):
    url, before, held_id = day_v1_loaded
    blocker = WriterBlocker(url, held_id)
    env = {**os.environ, **settings_env(url), "HEATMAP_PIPELINE_HOME": str(tmp_path)}
    env.pop("WAREHOUSE_DATABASE_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-c", KILLABLE_RUN], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        writer = blocker.blocked_writer_pid(timeout=60)  # the run has loaded the new day and waits to swap
        assert warehouse_snapshot(url) == before  # uncommitted: nobody else sees the new day
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        blocker.release()
    _wait_gone(url, writer)  # the server notices the dead client and rolls its transaction back
    assert warehouse_snapshot(url) == before
    defs = build_defs(monkeypatch, url)
    assert materialize_etl(defs, DAY, instance).success
    after = warehouse_snapshot(url)
    assert len(after["game_events"]) == 40 and {r[1] for r in after["session_stats"]} == {"s1", "s2"}
    assert materialize_etl(defs, DAY, instance).success and warehouse_snapshot(url) == after  # converged: reruns change nothing

"""Two materializations of the same partition at once on PostgreSQL: no duplicates, no mix.

To be sure the two runs really overlap, the test first takes the partition's write lock itself,
starts both runs, waits until both are queued on that lock inside their transactions, and only
then lets them go. The tables must then equal what one clean run writes.
"""

import datetime as dt
import threading
import time

import dagster as dg
import pytest
import sqlalchemy as sa

from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.tables import game_events, quarantined_events, session_stats
from heatmap_pipeline.warehouse.locks import lock_partition
from heatmap_pipeline_tests.support import build_defs, event, old_readme_sample, warehouse_snapshot, write_source_events

DAY = dt.date(2025, 11, 16)


def _waiting_on_advisory_locks(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                    "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()"
                )
            ).scalar_one()
    finally:
        engine.dispose()


def _run_concurrently(url: str, table: str, key: tuple, runs: list) -> list:
    """Hold the partition lock, start every run in a thread, release once all of them wait on it."""
    holder = sa.create_engine(url)
    conn = holder.connect()
    tx = conn.begin()
    lock_partition(conn, table, *key)
    results: list = [None] * len(runs)

    def start(i):
        results[i] = runs[i]()

    threads = [threading.Thread(target=start, args=(i,)) for i in range(len(runs))]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while _waiting_on_advisory_locks(url) < len(runs):
            assert time.monotonic() < deadline, "the runs never met on the partition lock"
            time.sleep(0.05)
    finally:
        tx.rollback()
        conn.close()
        holder.dispose()
    for thread in threads:
        thread.join(timeout=60)
    return results


@pytest.mark.postgres
def test_two_etl_runs_of_one_partition_at_once_equal_one_clean_run(postgres_url, monkeypatch):
    rows = old_readme_sample(DAY, 30) + [
        event(dt.datetime(2025, 11, 16, 11), "[1]"),
        event(dt.datetime(2025, 11, 16, 12), {"x": 1, "y": 2}, session_id="s2"),
    ]
    write_source_events(postgres_url, rows)
    defs = build_defs(monkeypatch, postgres_url)
    job = defs.get_job_def("etl_job")
    get_engine(postgres_url)  # the tables exist before the race (creating them is serialized separately)
    job.execute_in_process(partition_key=DAY.isoformat(), instance=dg.DagsterInstance.ephemeral())
    with get_engine(postgres_url).begin() as conn:  # start from an empty partition, as a first run would
        conn.execute(game_events.delete())
        conn.execute(quarantined_events.delete())
        conn.execute(session_stats.delete())

    def run():
        with dg.DagsterInstance.ephemeral() as instance:  # disposed in the thread that created it
            return job.execute_in_process(partition_key=DAY.isoformat(), instance=instance, raise_on_error=False)

    first, second = _run_concurrently(postgres_url, "game_events", (DAY,), [run, run])
    assert first.success and second.success
    raced = warehouse_snapshot(postgres_url)
    assert len(raced["game_events"]) == 31 and len(raced["quarantined"]) == 1
    assert len({r[1] for r in raced["game_events"]}) == 31  # no event id twice
    assert sum(r[6] for r in raced["session_stats"]) == 31
    assert run().success  # one clean run afterwards writes exactly the same tables
    assert warehouse_snapshot(postgres_url) == raced


@pytest.mark.postgres
def test_two_heatmap_runs_of_one_partition_at_once_leave_one_row(postgres_url, monkeypatch):
    write_source_events(postgres_url, old_readme_sample(DAY, 30))
    defs = build_defs(monkeypatch, postgres_url)
    assert (
        defs.get_job_def("etl_job")
        .execute_in_process(partition_key=DAY.isoformat(), instance=dg.DagsterInstance.ephemeral())
        .success
    )
    key = dg.MultiPartitionKey({"date": DAY.isoformat(), "level": "1"})
    job = defs.get_job_def("heatmap_job")

    def run():
        with dg.DagsterInstance.ephemeral() as instance:  # disposed in the thread that created it
            # The ETL above loaded the day; this instance learns it, as the one that ran it would know
            # (level_heatmaps refuses a day its instance never saw loaded).
            instance.report_runless_asset_event(dg.AssetMaterialization("game_events", partition=DAY.isoformat()))
            return job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)

    results = _run_concurrently(postgres_url, "heatmaps", ("1", DAY), [run, run])
    assert all(r.success for r in results)
    raced = warehouse_snapshot(postgres_url)["heatmaps"]
    assert len(raced) == 1 and raced[0][3] == 30
    assert run().success and warehouse_snapshot(postgres_url)["heatmaps"] == raced

"""run_claims on SQLite and PostgreSQL: one holder per job and partition, shared while its run is
in flight, free again once it ended or was never launched (warehouse/run_claims.py)."""

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa

from heatmap_pipeline.warehouse import run_claims
from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.migrations import ensure_warehouse_schema
from heatmap_pipeline.warehouse.tables import run_claims as table

JOB, PARTITION = "heatmap_job", "2025-11-16|1"
T0 = dt.datetime(2025, 11, 16, 12, 0)


class Runs:
    """What Dagster would answer: the runs launched under each claim, and whether they are in flight."""

    def __init__(self):
        self.by_claim: dict[str, tuple[str, bool]] = {}

    def __call__(self, claim, run_id):
        if run_id:
            return next((run for run in self.by_claim.values() if run[0] == run_id), None)
        return self.by_claim.get(claim)


def _engine(db_url):
    engine = get_engine(db_url)
    ensure_warehouse_schema(engine)
    return engine


def test_a_claim_is_shared_while_its_run_is_in_flight_and_free_once_it_ended(db_url):
    engine, runs = _engine(db_url), Runs()
    first = run_claims.claim_run(engine, JOB, PARTITION, "a", "admin_api", runs, now=T0)
    assert first == run_claims.Claim(run_claims.WON, "a")
    # Taken, no run yet: the holder is launching it.
    assert run_claims.claim_run(engine, JOB, PARTITION, "b", "etl_schedule", runs, now=T0).outcome == run_claims.LAUNCHING
    runs.by_claim["a"] = ("run-1", True)
    assert run_claims.claim_run(engine, JOB, PARTITION, "b", "etl_schedule", runs, now=T0) == run_claims.Claim(
        run_claims.SHARED, "a", "run-1")
    assert run_claims.claim_run(engine, JOB, PARTITION, "a", "admin_api", runs, now=T0) == run_claims.Claim(
        run_claims.WON, "a", "run-1")  # its holder again (a retry): its own run
    runs.by_claim["a"] = ("run-1", False)  # ended
    assert run_claims.claim_run(engine, JOB, PARTITION, "b", "etl_schedule", runs, now=T0).outcome == run_claims.WON
    with engine.connect() as conn:
        assert conn.execute(sa.select(table.c.claim, table.c.claimed_by)).all() == [("b", "etl_schedule")]


def test_a_claim_never_launched_is_taken_over_after_the_grace(db_url):
    engine, runs = _engine(db_url), Runs()
    run_claims.claim_run(engine, JOB, PARTITION, "died", "admin_api", runs, now=T0)
    almost = T0 + run_claims.LAUNCH_GRACE - dt.timedelta(seconds=1)
    assert run_claims.claim_run(engine, JOB, PARTITION, "b", "admin_trigger_sensor", runs, now=almost).outcome == run_claims.LAUNCHING
    later = T0 + run_claims.LAUNCH_GRACE
    assert run_claims.claim_run(engine, JOB, PARTITION, "b", "admin_trigger_sensor", runs, now=later).outcome == run_claims.WON


def test_a_recorded_run_is_looked_up_by_id_and_a_failed_launch_gives_the_claim_back(db_url):
    engine, runs = _engine(db_url), Runs()
    run_claims.claim_run(engine, JOB, PARTITION, "a", "admin_api", runs, now=T0)
    run_claims.record_run(engine, JOB, PARTITION, "a", "unclaimed-run")  # e.g. a UI launch it shares
    runs.by_claim["someone"] = ("unclaimed-run", True)
    assert run_claims.claim_run(engine, JOB, PARTITION, "b", "etl_schedule", runs, now=T0).run_id == "unclaimed-run"
    run_claims.claim_run(engine, JOB, "2025-11-17|1", "c", "admin_api", runs, now=T0)
    run_claims.release(engine, JOB, "2025-11-17|1", "c")
    assert run_claims.claim_run(engine, JOB, "2025-11-17|1", "d", "etl_schedule", runs, now=T0).outcome == run_claims.WON


def test_of_many_launchers_at_once_exactly_one_wins(db_url):
    engine, runs = _engine(db_url), Runs()
    start = threading.Barrier(16)

    def claim(index):
        start.wait()
        return run_claims.claim_run(engine, JOB, PARTITION, f"launcher-{index}", "admin_api", runs, now=T0).outcome

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(claim, range(16)))
    assert sorted(outcomes) == [run_claims.LAUNCHING] * 15 + [run_claims.WON]
    # ... and once its run has ended, again exactly one.
    [winner] = [f"launcher-{i}" for i, outcome in enumerate(outcomes) if outcome == run_claims.WON]
    runs.by_claim[winner] = ("run-1", False)
    start.reset()
    with ThreadPoolExecutor(max_workers=16) as pool:
        again = list(pool.map(lambda i: claim(i + 100), range(16)))
    assert sorted(again) == [run_claims.LAUNCHING] * 15 + [run_claims.WON]

"""admin_trigger_requests on SQLite and PostgreSQL: a stage is claimed by exactly one launcher."""

import dataclasses
import datetime as dt
import threading

import sqlalchemy as sa

from heatmap_pipeline.trigger import store
from heatmap_pipeline.trigger.validation import TriggerSpec
from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.migrations import ensure_warehouse_schema

SPEC = TriggerSpec(tasks=("etl", "heatmap"), levels=("1", "2"), date=dt.date(2025, 11, 16))


def engine_for(url):
    engine = get_engine(url)
    ensure_warehouse_schema(engine)
    return engine


def test_concurrent_claims_have_exactly_one_winner(db_url):
    engine = engine_for(db_url)
    request = store.create_request(engine, SPEC, "10.0.0.7")
    barrier, wins = threading.Barrier(8), []

    def contender(name):
        barrier.wait()
        if store.claim(engine, request.id, "etl", name):
            wins.append(name)

    threads = [threading.Thread(target=contender, args=(f"launcher-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1
    row = store.get_request(engine, request.id)
    assert row.state == "launching" and row.launched_by == wins[0]
    assert not store.claim(engine, request.id, "etl", "late")


def test_lifecycle_release_keeps_launched_runs_then_advances_to_heatmaps_and_finishes(db_url):
    engine = engine_for(db_url)
    request = store.create_request(engine, SPEC, None)
    assert store.claim(engine, request.id, "etl", "endpoint")
    # Dagster went away mid-launch: the claim is handed back, the run already launched is kept.
    assert store.release(engine, store.get_request(engine, request.id), {"etl": "run-1"})
    row = store.get_request(engine, request.id)
    assert (row.state, row.launched_by, row.run_ids) == ("pending", None, {"etl": "run-1"})
    assert store.claim(engine, request.id, "etl", "sensor")
    assert store.mark_launched(engine, store.get_request(engine, request.id), {})
    launched = store.get_request(engine, request.id)
    assert not store.claim(engine, request.id, "etl", "endpoint")  # launched is never launched again
    assert store.advance(engine, launched, "heatmap") and not store.advance(engine, launched, "heatmap")
    assert store.claim(engine, request.id, "heatmap", "endpoint")
    assert store.mark_launched(engine, store.get_request(engine, request.id), {"heatmap:1": "run-2", "heatmap:2": "run-3"})
    final = store.get_request(engine, request.id)
    assert store.finish(engine, final) and not store.finish(engine, final)
    done = store.get_request(engine, request.id)
    assert done.state == "done" and done.finished_at is not None
    assert done.run_ids == {"etl": "run-1", "heatmap:1": "run-2", "heatmap:2": "run-3"}
    assert store.active_requests(engine) == []


def test_stale_claim_is_taken_over_only_if_unchanged(db_url):
    engine = engine_for(db_url)
    request = store.create_request(engine, SPEC, None)
    store.claim(engine, request.id, "etl", "admin_api")
    seen = store.get_request(engine, request.id)
    assert store.take_over(engine, seen, "admin_trigger_sensor")
    assert not store.take_over(engine, seen, "someone_else")  # updated_at moved on
    assert store.get_request(engine, request.id).launched_by == "admin_trigger_sensor"


def test_the_etl_is_added_only_by_the_launcher_holding_the_heatmap_claim_and_is_remembered(db_url):
    engine = engine_for(db_url)
    spec = TriggerSpec(tasks=("heatmap",), levels=("1",), date=dt.date(2025, 11, 16))
    request = store.create_request(engine, spec, None)
    assert request.stages == ["heatmap"] and request.next_stage() is None
    assert not store.add_etl(engine, request, "unclaimed")  # pending: nobody holds the claim
    assert store.claim(engine, request.id, "heatmap", "admin_api")
    claimed = store.get_request(engine, request.id)
    assert not store.add_etl(engine, dataclasses.replace(claimed, launched_by="admin_trigger_sensor"), "not the claimer")
    assert store.add_etl(engine, claimed, "game_events 2025-11-16 was never materialized")
    row = store.get_request(engine, request.id)
    assert (row.state, row.stage, row.launched_by) == ("launching", "etl", "admin_api")
    assert row.tasks == ["heatmap"] and row.stages == ["etl", "heatmap"] and row.next_stage() == "heatmap"
    assert row.etl_reason == "game_events 2025-11-16 was never materialized"
    assert not store.add_etl(engine, row, "again")  # the stage is etl now: decided once


def test_an_earlier_versions_request_table_gets_the_etl_reason_column(db_url):
    engine = get_engine(db_url)
    with engine.begin() as conn:  # admin_trigger_requests as the previous release created it
        conn.execute(sa.text(
            "CREATE TABLE admin_trigger_requests (id VARCHAR(36) PRIMARY KEY, tasks JSON NOT NULL, levels JSON NOT NULL, "
            "date DATE NOT NULL, state VARCHAR(16) NOT NULL, stage VARCHAR(16) NOT NULL, run_ids JSON NOT NULL, "
            "run_statuses JSON, launched_by VARCHAR(32), requester VARCHAR(128), error TEXT, "
            "created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL, finished_at TIMESTAMP)"))
    ensure_warehouse_schema(engine)
    request = store.create_request(engine, SPEC, None)
    assert store.get_request(engine, request.id).etl_reason is None

"""The answer's shape for each state of a request: the old fields, plus ids, statuses and errors."""

import datetime as dt

import sqlalchemy as sa

from heatmap_pipeline.trigger.results import request_answer
from heatmap_pipeline.trigger.store import TriggerRequest
from heatmap_pipeline.warehouse.migrations import ensure_warehouse_schema
from heatmap_pipeline.warehouse.tables import heatmaps

DAY = dt.date(2025, 11, 16)


def request_body(engine, request: TriggerRequest) -> dict:
    """The answer as the admin API sends it (response_model_exclude_unset=True)."""
    return request_answer(engine, request).model_dump(mode="json", exclude_unset=True)


def warehouse(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.sqlite'}")
    ensure_warehouse_schema(engine)
    with engine.begin() as conn:
        conn.execute(heatmaps.insert(), [
            {"level": "1", "date": DAY, "grid_size": "50", "matrix": [[30]], "total": 30.0},
            {"level": "2", "date": DAY, "grid_size": "50", "matrix": [[0]], "total": 0.0},
        ])
    return engine


def request(**changes) -> TriggerRequest:
    values = dict(id="r1", tasks=["etl", "heatmap"], levels=["1", "2"], date=DAY, state="done", stage="heatmap",
                  run_ids={"etl": "e", "heatmap:1": "h1", "heatmap:2": "h2"},
                  run_statuses={"etl": "SUCCESS", "heatmap:1": "SUCCESS", "heatmap:2": "SUCCESS"})
    values.update(changes)
    return TriggerRequest(**values)


def test_done_request_has_the_old_shape_with_sums(tmp_path):
    body = request_body(warehouse(tmp_path), request())
    assert body["status"] == "ok" and "error" not in body
    etl, heatmap = body["results"]
    assert {k: etl[k] for k in ("status", "job", "run_id")} == {"status": "ok", "job": "etl", "run_id": "e"}
    assert heatmap["status"] == "ok" and heatmap["job"] == "heatmap"
    assert [{k: r[k] for k in ("level", "date", "sum", "run_id")} for r in heatmap["results"]] == [
        {"level": "1", "date": "2025-11-16", "sum": 30.0, "run_id": "h1"},
        {"level": "2", "date": "2025-11-16", "sum": 0.0, "run_id": "h2"},
    ]


def test_failed_heatmap_level_marks_its_job_and_the_request_as_error(tmp_path):
    failed = request(state="error", error="heatmap_job run h2 (partition 2025-11-16|2) ended FAILURE",
                     run_statuses={"etl": "SUCCESS", "heatmap:1": "SUCCESS", "heatmap:2": "FAILURE"})
    body = request_body(warehouse(tmp_path), failed)
    assert body["status"] == "error" and "ended FAILURE" in body["error"]
    etl, heatmap = body["results"]
    assert etl["status"] == "ok" and "error" not in etl
    assert heatmap["status"] == "error" and "h2" in heatmap["error"]
    assert [(r["level"], r["status"], r["sum"]) for r in heatmap["results"]] == [("1", "ok", 30.0), ("2", "error", None)]


def test_running_request_reports_what_is_known(tmp_path):
    running = request(state="launched", stage="etl", run_ids={"etl": "e"}, run_statuses={"etl": "STARTED"})
    body = request_body(warehouse(tmp_path), running)
    assert body["status"] == "running" and body["state"] == "launched"
    assert body["results"][0]["status"] == "running" and body["results"][1]["status"] == "pending"
    assert all(r["sum"] is None for r in body["results"][1]["results"])


def test_etl_only_request_lists_no_heatmap_levels(tmp_path):
    # The request row keeps the default levels; the answer names only what ran.
    body = request_body(warehouse(tmp_path), request(tasks=["etl"], stage="etl", run_ids={"etl": "e"},
                                                     run_statuses={"etl": "SUCCESS"}))
    assert body["status"] == "ok" and body["tasks"] == ["etl"] and body["levels"] == []
    assert [item["job"] for item in body["results"]] == ["etl"]


def test_heatmap_only_request_with_an_added_etl_answers_both_in_order_with_the_reason(tmp_path):
    added = request(tasks=["heatmap"], levels=["1"], etl_reason="game_events 2025-11-16 was never materialized",
                    run_ids={"etl": "e", "heatmap:1": "h1"}, run_statuses={"etl": "SUCCESS", "heatmap:1": "SUCCESS"})
    engine = warehouse(tmp_path)
    body = request_body(engine, added)
    assert body["status"] == "ok" and body["tasks"] == ["heatmap"] and body["levels"] == ["1"]
    etl, heatmap = body["results"]
    assert {k: etl[k] for k in ("status", "job", "run_id")} == {"status": "ok", "job": "etl", "run_id": "e"}
    assert etl["reason"] == "added before the heatmap: game_events 2025-11-16 was never materialized"
    assert heatmap["job"] == "heatmap" and [(r["level"], r["sum"]) for r in heatmap["results"]] == [("1", 30.0)]
    # An ETL the request asked for carries no reason.
    assert "reason" not in request_body(engine, request())["results"][0]

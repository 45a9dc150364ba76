"""One in-flight run per job and partition, whichever process launches it (issue 11, point 7).

The real authenticated Dagster webserver (`heatmap-pipeline webserver`, a subprocess) with a
temporary DAGSTER_HOME; no daemon, so every launched run stays QUEUED (in flight) for the whole
test. The admin API runs on uvicorn in this process and launches through the webserver's GraphQL
API. ``admin_trigger_sensor`` and ``etl_schedule`` tick at the same time in another thread, and
their run requests become runs that never start, as the daemon would submit them (a run key only once).

Before run_claims the endpoint checked for an in-flight run and launched under a lock of its own
process: the sensor, another process, launched a second run of the same partition 0.14 s later.
"""

import datetime as dt
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import httpx
import pytest

from heatmap_pipeline.defs.resources import WarehouseDatabase
from heatmap_pipeline.orchestration import CLAIM_TAG, PARTITION_TAG
from heatmap_pipeline.trigger import store
from heatmap_pipeline.settings import load_settings
from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.web.app import create_app
from heatmap_pipeline_tests.admin_servers import free_port, serve_in_thread, stop, wait_until_answering
from heatmap_pipeline_tests.support import build_defs
from heatmap_pipeline_tests.test_admin_api import rows

KEY = "one-run-key"
TODAY = dt.datetime.now(dt.timezone.utc).date()
LOADED_DAY = (TODAY - dt.timedelta(days=1)).isoformat()
IDENTICAL = '{"tasks":["heatmap"],"levels":["1"]}'  # today, never loaded: its ETL first
MIXED = [  # all name heatmap_job LOADED_DAY|1; half of them LOADED_DAY|2 too
    f'{{"tasks":["heatmap"],"levels":["1"],"date":"{LOADED_DAY}"}}',
    f'{{"tasks":["heatmap"],"date":"{LOADED_DAY}"}}',
    f'{{"tasks":["heatmap"],"levels":["2","1"],"date":"{LOADED_DAY}"}}',
    f'{{"tasks":["heatmap","heatmap"],"levels":["1","1"],"date":"{LOADED_DAY}"}}',
    f'{{"tasks":["heatmap"],"levels":["1"],"date":"{LOADED_DAY}","levels":["1","2"]}}',
]


class DaemonStandIn:
    """Ticks admin_trigger_sensor and etl_schedule and submits their run requests as runs,
    each run key once, until stopped: what the daemon does, minus running the runs."""

    def __init__(self, defs, instance, warehouse_url):
        self.defs, self.instance, self.url = defs, instance, warehouse_url
        self.keys: set[str] = set()
        self.ticks = 0
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def submit(self, run_request: dg.RunRequest, job_name: str) -> None:
        if run_request.run_key in self.keys:
            return
        self.keys.add(run_request.run_key)
        tags = {**run_request.tags, PARTITION_TAG: str(run_request.partition_key), "dagster/run_key": run_request.run_key}
        # NOT_STARTED: submitted, not yet dequeued (QUEUED would need a code location origin).
        self.instance.create_run_for_job(job_def=self.defs.resolve_job_def(job_name), tags=tags,
                                         status=dg.DagsterRunStatus.NOT_STARTED)

    def tick(self) -> None:
        sensor = self.defs.resolve_sensor_def("admin_trigger_sensor")
        context = dg.build_sensor_context(instance=self.instance, definitions=self.defs,
                                          resources={"warehouse": WarehouseDatabase(url=self.url)})
        for run_request in sensor.evaluate_tick(context).run_requests or []:
            self.submit(run_request, run_request.job_name)
        schedule = self.defs.resolve_schedule_def("etl_schedule")
        context = dg.build_schedule_context(instance=self.instance, repository_def=self.defs.get_repository_def(),
                                            scheduled_execution_time=dt.datetime.now(dt.timezone.utc))
        for run_request in schedule.evaluate_tick(context).run_requests or []:
            self.submit(run_request, "etl_job")
        self.ticks += 1

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.tick()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def _runs_by_partition(instance) -> Counter:
    return Counter((r.job_name, r.tags.get(PARTITION_TAG)) for r in instance.get_runs())


def _post_all(url: str, bodies: list[str]) -> list[int]:
    with httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=60)) as client:
        def post(body):
            return client.post("/admin/run-jobs?wait=false", content=body,
                               headers={"x-api-key": KEY, "content-type": "application/json"}).status_code

        with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
            return list(pool.map(post, bodies))


@pytest.mark.slow
def test_concurrent_requests_sensor_and_schedule_launch_one_run_per_job_and_partition(db_url, tmp_path, monkeypatch):
    port = free_port()
    env = {"DATABASE_URL": db_url, "HEATMAP_PIPELINE_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dh"),
           "ADMIN_API_KEY": KEY, "HEATMAP_LEVELS": "1,2", "PARTITION_START_DATE": (TODAY - dt.timedelta(days=5)).isoformat(),
           "ETL_INTERVAL_MINUTES": "1", "DAGSTER_GRAPHQL_URL": f"http://127.0.0.1:{port}/graphql"}
    webserver = subprocess.Popen([sys.executable, "-m", "heatmap_pipeline.runtime.cli", "webserver", "--port", str(port)],
                                 env={"PATH": os.environ["PATH"], **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/server_info", webserver)
        defs = build_defs(monkeypatch, db_url, **{k: v for k, v in env.items() if k != "DATABASE_URL"})
        admin = create_app(load_settings({**env, "ADMIN_WAIT_TIMEOUT_SECONDS": "1"}))
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance, serve_in_thread(admin) as url:
            # A day already loaded (a runless materialization), so heatmap-only requests go straight to heatmaps.
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="game_events", partition=LOADED_DAY))
            daemon = DaemonStandIn(defs, instance, db_url)  # the warehouse is the source database here
            ticking = threading.Thread(target=daemon.run, daemon=True)
            ticking.start()
            try:
                statuses = _post_all(url, [IDENTICAL] * 50) + _post_all(url, [MIXED[i % len(MIXED)] for i in range(50)])
                assert statuses == [202] * 100, Counter(statuses)
                engine = get_engine(db_url)
                deadline = time.monotonic() + 90
                while any(r["state"] != "launched" for r in rows(admin.state.settings)) and time.monotonic() < deadline:
                    time.sleep(0.5)
            finally:
                daemon.stopping.set()
                ticking.join(timeout=60)
            assert daemon.error is None, daemon.error
            runs = _runs_by_partition(instance)
            requests = [store.get_request(engine, r["id"]) for r in rows(admin.state.settings)]
            all_runs = instance.get_runs()
            claimed_by = Counter(r.tags.get(CLAIM_TAG, "").split(":")[0] for r in all_runs)
            print(f"runs per (job, partition): {dict(runs)}; launched by: {dict(claimed_by)}; daemon ticks: {daemon.ticks}")
    finally:
        stop(webserver)
    assert runs == Counter({("etl_job", TODAY.isoformat()): 1, ("heatmap_job", f"{LOADED_DAY}|1"): 1,
                            ("heatmap_job", f"{LOADED_DAY}|2"): 1}), runs
    assert {r.status for r in all_runs} <= {dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED}  # in flight throughout
    assert [r.state for r in requests] == ["launched"] * 100, Counter(r.state for r in requests)
    # Every request names the one run of each of its slots.
    run_of = {(r.job_name, r.tags[PARTITION_TAG]): r.run_id for r in all_runs}
    for request in requests:
        for slot, run_id in request.run_ids.items():
            key = ("etl_job", request.date.isoformat()) if slot == "etl" else ("heatmap_job", f"{request.date}|{slot.split(':')[1]}")
            assert run_id == run_of[key], (request.id, slot)

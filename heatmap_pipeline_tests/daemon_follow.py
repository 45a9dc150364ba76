"""Run `heatmap-pipeline dev` with the real daemon and judge, from the Dagster instance, whether today's
heatmaps followed the ETL. Used by the slow test and, for a longer run, from the command line:

    python -m heatmap_pipeline_tests.daemon_follow --seconds 300

(both intervals 1 minute, a fresh data directory, the embedded demo).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import httpx

from heatmap_pipeline.orchestration import TRIGGER_TAG
from heatmap_pipeline_tests.admin_servers import free_port

GAME_EVENTS, LEVEL_HEATMAPS = dg.AssetKey("game_events"), dg.AssetKey("level_heatmaps")


@dataclass
class Verdict:
    today: str
    etl_loads: int = 0
    heatmaps: int = 0
    heatmaps_of_a_scheduled_load: int = 0  # computed from a load that an etl_schedule tick ran (not the demo's first fill)
    heatmaps_before_first_etl: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.etl_loads > 0 and self.heatmaps > 0 and not self.heatmaps_before_first_etl and not self.mismatches


def _materializations(instance: dg.DagsterInstance, key: dg.AssetKey) -> list:
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=10_000).records
    return sorted(records, key=lambda r: r.timestamp)


def judge(instance: dg.DagsterInstance, today: str) -> Verdict:
    verdict = Verdict(today)
    loads = [r for r in _materializations(instance, GAME_EVENTS) if r.partition_key == today]
    verdict.etl_loads = len(loads)
    first_load = loads[0].timestamp if loads else None
    by_run = {r.run_id: r for r in loads}
    heatmap_runs = [
        run for run in instance.get_run_records()
        if run.dagster_run.tags.get("dagster/partition/date") == today
        and "level_heatmaps" in {k.to_user_string() for k in (run.dagster_run.asset_selection or [])}
    ]
    for run in heatmap_runs:
        if run.start_time is not None and (first_load is None or run.start_time < first_load):
            verdict.heatmaps_before_first_etl.append(run.dagster_run.run_id)
    for record in _materializations(instance, LEVEL_HEATMAPS):
        if not record.partition_key.startswith(today + "|"):
            continue
        verdict.heatmaps += 1
        level = record.partition_key.split("|", 1)[1]
        meta = record.asset_materialization.metadata
        upstream = by_run.get(meta["game_events_run_id"].value)
        run = instance.get_run_record_by_id(record.run_id)
        newest_before_start = [r for r in loads if run.start_time and r.timestamp <= run.start_time]
        if upstream is None:
            verdict.mismatches.append(f"{record.partition_key}: names a load that is not today's")
            continue
        if newest_before_start and newest_before_start[-1].timestamp > upstream.timestamp:
            verdict.mismatches.append(f"{record.partition_key}: read an older load than the one before it started")
        upstream_run = instance.get_run_by_id(upstream.run_id)
        if upstream_run is not None and upstream_run.tags.get(TRIGGER_TAG) == "etl_schedule":
            verdict.heatmaps_of_a_scheduled_load += 1
        loaded = upstream.asset_materialization.metadata["position_events_by_level"].value.get(level, 0)
        if meta["position_events"].value != loaded:
            verdict.mismatches.append(
                f"{record.partition_key} run {record.run_id}: {meta['position_events'].value} positions, "
                f"its ETL run {upstream.run_id} loaded {loaded}"
            )
    return verdict


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
        return True
    except httpx.HTTPError:
        return False


def heatmaps_followed(dagster_home: Path, today: str) -> bool:
    """Whether the judge has its evidence already: today's heatmaps computed from a load that a schedule tick
    ran (a tick's heatmaps after that tick's ETL), and no heatmap run of today still queued or running (so
    no tick's heatmaps are cut off when dev stops)."""
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        verdict = judge(instance, today)
        unfinished = [
            run for run in instance.get_runs(dg.RunsFilter(tags={"dagster/partition/date": today}))
            if not run.is_finished
        ]
    return verdict.heatmaps_of_a_scheduled_load > 0 and not unfinished


def run_dev(data_dir: Path, seconds: float, log_path: Path, extra_env: dict[str, str] | None = None,
            until: Callable[[], bool] | None = None) -> None:
    """`heatmap-pipeline dev` for ``seconds``, or until ``until()`` is true: asked every 2 seconds once the admin
    API answers, as dev creates the instance's storage before it starts the admin API (opening an instance
    while dev creates its storage would stamp the storage's schema version twice)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "WAREHOUSE_DATABASE_URL"))},
        "ETL_INTERVAL_MINUTES": "1",
        "HEATMAP_INTERVAL_MINUTES": "1",
        "ADMIN_API_KEY": "daemon-follow-key",
        **(extra_env or {}),
    }
    admin_port = free_port()
    command = [sys.executable, "-m", "heatmap_pipeline.runtime.cli", "dev", "--data-dir", str(data_dir),
               "--port", str(free_port()), "--admin-port", str(admin_port)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline, admin_up = time.monotonic() + seconds, False
            while time.monotonic() < deadline and process.poll() is None:
                admin_up = admin_up or _answers(f"http://127.0.0.1:{admin_port}/healthz")
                if admin_up and until is not None and until():
                    break
                time.sleep(max(0.0, min(2.0, deadline - time.monotonic())))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def follow(seconds: float, data_dir: Path | None = None, extra_env: dict[str, str] | None = None,
           stop_once_followed: bool = False) -> Verdict:
    """Run dev ``seconds`` (at most, with ``stop_once_followed``: until :func:`heatmaps_followed`) and judge."""
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="daemon_follow_"))
    data_dir.mkdir(parents=True, exist_ok=True)
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    until = (lambda: heatmaps_followed(data_dir / "dagster_home", today)) if stop_once_followed else None
    run_dev(data_dir, seconds, data_dir / "dev.log", extra_env, until)
    with dg.DagsterInstance.from_config(str(data_dir / "dagster_home")) as instance:
        return judge(instance, today)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args()
    verdict = follow(args.seconds, args.data_dir)
    print(json.dumps({**verdict.__dict__, "ok": verdict.ok}, indent=2))
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""`heatmap-pipeline backfill` materializes a date range; its runs land in the instance the UI reads."""

import os
import subprocess
import sys

import dagster as dg
from dagster._core.instance.ref import InstanceRef

from heatmap_pipeline_tests.support import old_readme_sample, table_rows, write_source_events
from heatmap_pipeline.warehouse.tables import heatmaps


def test_backfill_command_runs_etl_then_heatmaps_per_level(tmp_path, sqlite_url):
    write_source_events(sqlite_url, old_readme_sample())
    env = {
        "PATH": os.environ["PATH"],
        "DATABASE_URL": sqlite_url,
        "HEATMAP_PIPELINE_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "HEATMAP_LEVELS": "1,2",
    }
    command = [sys.executable, "-m", "heatmap_pipeline.runtime.cli", "backfill", "--start", "2025-11-15", "--end", "2025-11-16"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("etl_job") == 2 and result.stdout.count("heatmap_job") == 4
    assert "FAILED" not in result.stdout
    rows = {(r["level"], r["date"].isoformat()): r["total"] for r in table_rows(sqlite_url, heatmaps)}
    assert rows == {("1", "2025-11-15"): 0.0, ("2", "2025-11-15"): 0.0, ("1", "2025-11-16"): 30.0, ("2", "2025-11-16"): 0.0}
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path / "dagster_home"))) as instance:
        runs = instance.get_run_records()
    assert len(runs) == 6
    assert all(r.dagster_run.tags.get("heatmap_pipeline/trigger") == "cli_backfill" for r in runs)


def test_backfill_refuses_unknown_level(tmp_path, sqlite_url):
    env = {"PATH": os.environ["PATH"], "DATABASE_URL": sqlite_url, "HEATMAP_PIPELINE_HOME": str(tmp_path),
           "DAGSTER_HOME": str(tmp_path / "dh")}
    command = [sys.executable, "-m", "heatmap_pipeline.runtime.cli", "backfill", "--start", "2025-11-16", "--end", "2025-11-16",
               "--levels", "9"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--levels 9 not in HEATMAP_LEVELS (1,2,3)" in result.stderr

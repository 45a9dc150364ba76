"""`heatmap-pipeline backfill` materializes a date range; its runs land in the instance the UI reads."""

import datetime as dt
import os
import subprocess
import sys

import dagster as dg
import sqlalchemy as sa
from dagster._core.instance.ref import InstanceRef

from heatmap_pipeline_tests.support import old_readme_sample, table_rows, write_source_events
from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.migrations import ensure_warehouse_schema
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


REFUSED_DAY = "2025-11-15"


def refuse_one_day(url: str) -> None:
    """The warehouse refuses one day's write (a trigger on position_stats, which every ETL day
    writes): that day's ETL fails deterministically, the other days load."""
    engine = get_engine(url)
    ensure_warehouse_schema(engine)
    message = f"test: the warehouse refuses {REFUSED_DAY}"
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(sa.text(f"CREATE TRIGGER refuse_day BEFORE INSERT ON position_stats "
                                 f"WHEN NEW.event_date = '{REFUSED_DAY}' BEGIN SELECT RAISE(ABORT, '{message}'); END"))
        else:
            conn.execute(sa.text(f"CREATE FUNCTION refuse_day() RETURNS trigger AS $$ BEGIN "
                                 f"IF NEW.event_date = DATE '{REFUSED_DAY}' THEN RAISE EXCEPTION '{message}'; END IF; "
                                 "RETURN NEW; END $$ LANGUAGE plpgsql"))
            conn.execute(sa.text("CREATE TRIGGER refuse_day BEFORE INSERT ON position_stats "
                                 "FOR EACH ROW EXECUTE FUNCTION refuse_day()"))


def backfill(env: dict, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "heatmap_pipeline.runtime.cli", "backfill", *options]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_a_day_whose_etl_fails_gets_no_heatmap_runs_they_are_skipped_and_the_command_exits_1(tmp_path, db_url):
    write_source_events(db_url, old_readme_sample(dt.date(2025, 11, 15), n=10) + old_readme_sample())
    refuse_one_day(db_url)
    env = {"PATH": os.environ["PATH"], "DATABASE_URL": db_url, "HEATMAP_PIPELINE_HOME": str(tmp_path / "home"),
           "DAGSTER_HOME": str(tmp_path / "dagster_home"), "HEATMAP_LEVELS": "1,2", "DB_RETRY_MAX_RETRIES": "0"}

    result = backfill(env, "--start", "2025-11-15", "--end", "2025-11-16")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    failed_etl = next(line for line in lines if line.startswith("etl_job 2025-11-15: FAILED run "))
    run_id = failed_etl.split(" run ")[1].split(":")[0]
    assert f"test: the warehouse refuses {REFUSED_DAY}" in failed_etl  # why, from the failed step
    assert f"heatmap_job 2025-11-15|1: SKIPPED (etl_job 2025-11-15 failed: run {run_id})" in lines
    assert f"heatmap_job 2025-11-15|2: SKIPPED (etl_job 2025-11-15 failed: run {run_id})" in lines
    assert not [line for line in lines if line.startswith("heatmap_job 2025-11-15") and "SKIPPED" not in line]
    assert [line.split(" run ")[0] for line in lines if line.startswith(("etl_job 2025-11-16", "heatmap_job 2025-11-16"))] == [
        "etl_job 2025-11-16: ok", "heatmap_job 2025-11-16|1: ok", "heatmap_job 2025-11-16|2: ok"]
    assert "3 ok, 1 failed, 2 skipped" in result.stderr
    rows = {(r["level"], r["date"].isoformat()): r["total"] for r in table_rows(db_url, heatmaps)}
    assert rows == {("1", "2025-11-16"): 30.0, ("2", "2025-11-16"): 0.0}  # nothing, not a zero, for the failed day
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path / "dagster_home"))) as instance:
        heatmap_runs = instance.get_run_records(filters=dg.RunsFilter(job_name="heatmap_job"))
    assert sorted(r.dagster_run.tags["dagster/partition"] for r in heatmap_runs) == ["2025-11-16|1", "2025-11-16|2"]

    # --job heatmap: a day never loaded, or whose latest load failed, is skipped with what to do; a loaded day runs.
    result = backfill(env, "--job", "heatmap", "--levels", "1", "--start", "2025-11-14", "--end", "2025-11-16")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == ("heatmap_job 2025-11-14|1: SKIPPED (game_events 2025-11-14 was never materialized; a heatmap would "
                        "read no rows; load it first: heatmap-pipeline backfill --job etl --start 2025-11-14 --end 2025-11-14)")
    assert lines[1].startswith("heatmap_job 2025-11-15|1: SKIPPED (the latest materialization of game_events 2025-11-15 failed")
    assert lines[2].startswith("heatmap_job 2025-11-16|1: ok run ") and len(lines) == 3

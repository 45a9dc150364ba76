"""The definitions as a newcomer sees them in the UI: names, groups, partitions, jobs, schedules."""

import subprocess
import sys
from pathlib import Path

import dagster as dg

from heatmap_pipeline_tests.support import build_defs

ROOT = Path(__file__).parents[1]


def test_definitions_snapshot(sqlite_url, monkeypatch):
    defs = build_defs(monkeypatch, sqlite_url)
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {"game_events", "session_stats", "level_heatmaps"} <= keys
    for name in ("game_events", "session_stats", "level_heatmaps"):
        assert graph.get(dg.AssetKey(name)).group_name == "game_analytics"
    heatmap_parts = graph.get(dg.AssetKey("level_heatmaps")).partitions_def
    assert isinstance(heatmap_parts, dg.MultiPartitionsDefinition)
    assert [d.name for d in heatmap_parts.partitions_defs] == ["date", "level"]
    events_parts = graph.get(dg.AssetKey("game_events")).partitions_def
    assert events_parts.start.date().isoformat() == "2025-01-01" and events_parts.end_offset == 1
    assert graph.get(dg.AssetKey("level_heatmaps")).parent_keys == {dg.AssetKey("game_events")}
    assert {job.name for job in [defs.resolve_job_def("etl_job"), defs.resolve_job_def("heatmap_job")]} == {"etl_job", "heatmap_job"}
    assert {"etl_schedule", "heatmap_schedule"} <= {s.name for s in defs.get_repository_def().schedule_defs}


def test_custom_levels_become_level_partitions(sqlite_url, monkeypatch):
    defs = build_defs(monkeypatch, sqlite_url, HEATMAP_LEVELS="forest,cave,boss", PARTITION_START_DATE="2024-06-01")
    graph = defs.resolve_asset_graph()
    parts = graph.get(dg.AssetKey("level_heatmaps")).partitions_def
    level_dim = {d.name: d.partitions_def for d in parts.partitions_defs}["level"]
    assert level_dim.get_partition_keys() == ["forest", "cave", "boss"]
    assert graph.get(dg.AssetKey("game_events")).partitions_def.start.date().isoformat() == "2024-06-01"


def test_dagster_definitions_validate_loads_the_workspace(tmp_path):
    env = {"PATH": str(Path(sys.executable).parent), "HEATMAP_PIPELINE_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr


def test_bad_setting_fails_validation_naming_the_variable(tmp_path):
    env = {"PATH": str(Path(sys.executable).parent), "HEATMAP_PIPELINE_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path),
           "ETL_INTERVAL_MINUTES": "zero"}
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "ETL_INTERVAL_MINUTES='zero'" in result.stdout + result.stderr

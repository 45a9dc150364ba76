"""The definitions as a newcomer sees them in the UI: names, groups, partitions, jobs, schedules."""

import subprocess
import sys
from pathlib import Path

import dagster as dg

from heatmap_pipeline_tests.support import build_defs

ROOT = Path(__file__).parents[1]


def definitions_snapshot(defs: dg.Definitions) -> dict:
    """What a newcomer sees in the UI, as plain data: assets, checks, jobs and what they run, schedules, sensors."""
    graph = defs.resolve_asset_graph()
    repository = defs.get_repository_def()
    assets = {}
    for key in sorted(graph.get_all_asset_keys()):
        node = graph.get(key)
        parts = node.partitions_def
        dims = [d.name for d in parts.partitions_defs] if isinstance(parts, dg.MultiPartitionsDefinition) else ["date"]
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "partitions": dims,
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
        }
    return {
        "assets": assets,
        "checks": sorted(
            (spec.asset_key.to_user_string(), spec.name, spec.blocking) for c in defs.asset_checks for spec in c.check_specs
        ),
        "jobs": {
            name: sorted(defs.resolve_job_def(name).graph.node_names())
            for name in ("etl_job", "heatmap_job", "freshness_job")
        },
        "schedules": {s.name: (s.cron_schedule, s.job_name, s.default_status.value) for s in repository.schedule_defs},
        "sensors": {s.name: (sorted(t.job_name for t in s.targets), s.default_status.value) for s in repository.sensor_defs},
    }


def test_definitions_snapshot(sqlite_url, monkeypatch):
    defs = build_defs(monkeypatch, sqlite_url)
    assert definitions_snapshot(defs) == {
        "assets": {
            "game_events": {"group": "game_analytics", "partitions": ["date"], "deps": []},
            "level_heatmaps": {"group": "game_analytics", "partitions": ["date", "level"], "deps": ["game_events"]},
            "session_stats": {"group": "game_analytics", "partitions": ["date"], "deps": ["game_events"]},
        },
        "checks": [
            ("game_events", "rows_reconciled", True),
            ("game_events", "today_is_fresh", False),
            ("game_events", "unique_event_ids", True),
            ("level_heatmaps", "matrix_consistent", True),
            ("level_heatmaps", "today_is_fresh", False),
            ("session_stats", "event_counts_reconciled", True),
        ],
        "jobs": {
            "etl_job": sorted(["game_events", "game_events_rows_reconciled", "game_events_unique_event_ids",
                               "session_stats", "session_stats_event_counts_reconciled"]),
            "heatmap_job": ["level_heatmaps", "level_heatmaps_matrix_consistent"],
            "freshness_job": ["game_events_today_is_fresh", "level_heatmaps_today_is_fresh"],
        },
        "schedules": {
            "etl_schedule": ("*/15 * * * *", "etl_job", "RUNNING"),
            "freshness_schedule": ("*/15 * * * *", "freshness_job", "RUNNING"),
        },
        "sensors": {
            "admin_trigger_sensor": (["etl_job", "heatmap_job"], "RUNNING"),
            "heatmap_automation_sensor": ([], "RUNNING"),
            "heatmap_refresh_sensor": (["heatmap_job"], "RUNNING"),
            "late_events_sensor": (["etl_job"], "RUNNING"),
            "run_failure_sensor": ([], "RUNNING"),
        },
    }
    graph = defs.resolve_asset_graph()
    events_parts = graph.get(dg.AssetKey("game_events")).partitions_def
    assert events_parts.start.date().isoformat() == "2025-01-01" and events_parts.end_offset == 1


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

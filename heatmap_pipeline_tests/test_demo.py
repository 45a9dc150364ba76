"""The embedded default: deterministic demo telemetry, a trickle over time, never in a configured DB."""

import datetime as dt

import sqlalchemy as sa

from heatmap_pipeline.runtime import demo
from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.tables import game_events, heatmaps, quarantined_events
from heatmap_pipeline_tests.support import build_defs, materialize_etl, materialize_heatmap, table_rows, write_source_events

NOW = dt.datetime(2025, 11, 16, 15, 0)


def count_events(url: str) -> int:
    with get_engine(url).connect() as conn:
        return conn.execute(sa.text("SELECT COUNT(*) FROM events")).scalar_one()


def test_demo_history_is_deterministic_and_covers_seven_days(tmp_path):
    urls = [f"sqlite:///{tmp_path / name}" for name in ("a.sqlite", "b.sqlite")]
    for url in urls:
        demo.top_up(get_engine(url), NOW)
    queries = "SELECT id, payload, timestamp FROM events ORDER BY id"
    with get_engine(urls[0]).connect() as a, get_engine(urls[1]).connect() as b:
        assert a.execute(sa.text(queries)).all() == b.execute(sa.text(queries)).all()
        days = [r[0] for r in a.execute(sa.text("SELECT DISTINCT substr(timestamp, 1, 10) FROM events WHERE timestamp IS NOT NULL ORDER BY 1"))]
        levels = {r[0] for r in a.execute(sa.text("SELECT DISTINCT json_extract(payload, '$.level') FROM events WHERE json_valid(payload)"))}
    assert days == [(NOW.date() - dt.timedelta(days=d)).isoformat() for d in range(6, -1, -1)]
    assert {1, 2, 3} <= levels
    assert count_events(urls[0]) > 20_000


def test_demo_trickles_new_events_as_time_passes(tmp_path):
    engine = get_engine(f"sqlite:///{tmp_path / 'demo.sqlite'}")
    first = demo.top_up(engine, NOW)
    assert demo.top_up(engine, NOW) == 0
    later = demo.top_up(engine, NOW + dt.timedelta(minutes=30))
    assert 0 < later < first
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*), COUNT(DISTINCT id) FROM events")).one() == (first + later, first + later)
        newest = conn.execute(sa.text("SELECT MAX(timestamp) FROM events")).scalar_one()
    assert NOW.isoformat(sep=" ") < newest < (NOW + dt.timedelta(minutes=30)).isoformat(sep=" ")


def test_demo_mode_materializes_and_quarantines_each_malformed_kind(tmp_path, monkeypatch):
    monkeypatch.setenv("HEATMAP_PIPELINE_HOME", str(tmp_path))
    defs = build_defs(monkeypatch, None)
    today = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)  # a full day of demo history
    result = materialize_etl(defs, today.isoformat())
    assert result.success
    url = f"sqlite:///{tmp_path / 'heatmap_pipeline.sqlite'}"
    metadata = result.asset_materializations_for_node("game_events")[0].metadata
    assert metadata["demo_data"].value is True
    reasons = {q["reason"] for q in table_rows(url, quarantined_events)}
    assert set(demo.MALFORMED_KINDS) == reasons
    assert len(table_rows(url, game_events)) + len(table_rows(url, quarantined_events)) == metadata["rows_extracted"].value
    for level in ("1", "2", "3"):
        assert materialize_heatmap(defs, today.isoformat(), level).success
    totals = {r["level"]: r["total"] for r in table_rows(url, heatmaps)}
    assert all(totals[level] > 100 for level in ("1", "2", "3"))


def test_demo_data_is_never_written_into_a_configured_database(tmp_path, monkeypatch, sqlite_url):
    write_source_events(sqlite_url, [])
    monkeypatch.setenv("HEATMAP_PIPELINE_HOME", str(tmp_path / "home"))
    defs = build_defs(monkeypatch, sqlite_url)
    assert materialize_etl(defs, "2025-11-16").success
    assert count_events(sqlite_url) == 0
    assert not (tmp_path / "home" / "heatmap_pipeline.sqlite").exists()


def test_a_restart_on_a_loaded_week_says_so_and_names_days_binned_before_the_levels_bounds(tmp_path, capsys):
    """The README's designer path: the demo ran with automatic bounds, then restarts with fixed ones
    (examples/levels.toml). The console must not claim to be loading, and must name the stale days
    and the command that re-bins them (ranges over them answer 409 on the heatmap page)."""
    import dagster as dg
    import numpy as np

    from heatmap_pipeline.runtime.cli import DemoWeekProgress
    from heatmap_pipeline.settings import load_settings
    from heatmap_pipeline_tests.read_api_data import put_kind

    today = dt.datetime.now(dt.timezone.utc).date()
    settings = load_settings({"HEATMAP_PIPELINE_HOME": str(tmp_path), "PARTITION_START_DATE": today.isoformat(),
                              "HEATMAP_LEVELS": "1,2", "HEATMAP_GRID_SIZE": "3", "HEATMAP_BOUNDS": '{"1": [0, 100, 0, 100]}'})
    assert settings.demo_mode
    url = settings.warehouse_url
    yesterday, before = today - dt.timedelta(days=1), today - dt.timedelta(days=2)
    put_kind(url, "1", before, "positions", np.ones((3, 3)), bounds=(4.25, 99.27, 2.5, 95.57))  # automatic bounds
    put_kind(url, "1", yesterday, "positions", np.ones((3, 3)), bounds=(1.0, 98.0, 0.0, 97.0))  # automatic bounds
    put_kind(url, "1", today, "positions", np.ones((3, 3)))  # binned with the fixed bounds
    put_kind(url, "2", today, "positions", np.ones((3, 3)), bounds=(1.0, 2.0, 3.0, 4.0))  # level 2: automatic, fine
    settings.dagster_home.mkdir(parents=True)
    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization("game_events", partition=today.isoformat()))
        for level in ("1", "2"):
            instance.report_runless_asset_event(dg.AssetMaterialization("level_heatmaps", partition=f"{today}|{level}"))

    assert DemoWeekProgress(settings).report(0.0) is True
    console = capsys.readouterr().out
    assert "loading the demo's" not in console
    assert "DEMO: 1/1 days loaded, 2/2 heatmaps after 0s - the demo week is ready" in console
    assert (f"heatmap-pipeline: level 1: 2 stored day(s), {before} to {yesterday}, were binned before its grid 3x3, "
            "bounds [0, 100, 0, 100]") in console
    assert f"heatmap-pipeline backfill --job heatmap --levels 1 --start {before} --end {yesterday}\n" in console
    assert "level 2" not in console

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

"""Asset checks: every invariant passes on tables a real run wrote, and fails on deliberately corrupted ones.

The invariant functions (warehouse/invariants.py) are tested on SQLite and PostgreSQL; the Dagster
wiring is tested through real runs: the checks run inside etl_job / heatmap_job, per partition, and
a failed blocking check fails the run and keeps session_stats from running.
"""

import datetime as dt
import json

import dagster as dg
import pytest
import sqlalchemy as sa

from heatmap_pipeline.core.binning import GridBounds
from heatmap_pipeline.warehouse.db import get_engine
from heatmap_pipeline.warehouse.tables import game_events, heatmaps, quarantined_events, session_stats
from heatmap_pipeline.defs.assets.events import cleaning_rules
from heatmap_pipeline.warehouse.migrations import ensure_warehouse_schema
from heatmap_pipeline.settings import load_settings
from heatmap_pipeline.warehouse import invariants
from heatmap_pipeline.warehouse.etl import load_partition
from heatmap_pipeline.warehouse.heatmaps import compute_heatmap, upsert_heatmap
from heatmap_pipeline.warehouse.sessions import replace_session_partition
from heatmap_pipeline_tests.support import (
    build_defs,
    event,
    materialize_etl,
    materialize_heatmap,
    old_readme_sample,
    settings_env,
    write_source_events,
)


USE_MEMORY_INSTANCE = True  # the conftest `instance` fixture is then in-memory: faster runs


DAY = dt.date(2025, 11, 16)
BOUNDS = GridBounds(0.0, 10.0, 0.0, 10.0)


def _source_rows() -> list[dict]:
    rows = old_readme_sample(DAY, 30)  # 30 positions of level 1 (default level), all inside [0,10]x[0,10]
    rows.append(event(dt.datetime(2025, 11, 16, 10), {"x": 50, "y": 50}))  # out of bounds: kept, not in the matrix
    rows.append(event(dt.datetime(2025, 11, 16, 10, 1), "[1, 2]"))  # quarantined: payload_not_object
    rows.append(event(dt.datetime(2025, 11, 16, 10, 2), {"score": 7}, event_type="level_end", session_id="s2"))
    return rows


@pytest.fixture
def good(db_url):
    """A day written by the same warehouse functions the assets call (fast: no Dagster run)."""
    write_source_events(db_url, _source_rows())
    engine, now = get_engine(db_url), dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    ensure_warehouse_schema(engine)
    settings = load_settings(settings_env(db_url, HEATMAP_GRID_SIZE="10"))
    assert load_partition(engine, engine, DAY, cleaning_rules(settings, now), now).reconciled
    replace_session_partition(engine, DAY, now)
    upsert_heatmap(engine, compute_heatmap(engine, DAY, "1", 10, BOUNDS), now)
    return db_url


@pytest.fixture
def loaded(db_url, monkeypatch, instance):
    """A day loaded by real etl_job and heatmap_job runs, with fixed bounds for level 1."""
    write_source_events(db_url, _source_rows())
    defs = build_defs(monkeypatch, db_url, HEATMAP_BOUNDS=json.dumps({"1": BOUNDS.as_list()}), HEATMAP_GRID_SIZE="10")
    etl = materialize_etl(defs, DAY.isoformat(), instance)
    heat = materialize_heatmap(defs, DAY.isoformat(), "1", instance)
    assert etl.success and heat.success
    return db_url, defs, etl, heat


def _engine(url):
    return get_engine(url)


def _execute(url, *statements):
    with _engine(url).begin() as conn:
        for statement in statements:
            conn.execute(statement)


def _an_event_id(url) -> str:
    with _engine(url).connect() as conn:
        return conn.execute(
            sa.select(sa.func.min(game_events.c.event_id)).where(game_events.c.event_date == DAY)
        ).scalar_one()


def _heatmap(url) -> invariants.Invariant:
    return invariants.heatmap_consistent(_engine(url), DAY, "1", 10, BOUNDS)


def test_checks_run_in_the_jobs_per_partition_and_pass_on_good_tables(loaded):
    _, _, etl, heat = loaded
    evaluations = {(e.asset_key.to_user_string(), e.check_name): e for e in etl.get_asset_check_evaluations()}
    evaluations.update({(e.asset_key.to_user_string(), e.check_name): e for e in heat.get_asset_check_evaluations()})
    assert set(evaluations) == {
        ("game_events", "rows_reconciled"),
        ("game_events", "unique_event_ids"),
        ("session_stats", "event_counts_reconciled"),
        ("level_heatmaps", "matrix_consistent"),
    }
    assert all(e.passed for e in evaluations.values()), [e.description for e in evaluations.values()]
    assert evaluations[("game_events", "rows_reconciled")].partition == DAY.isoformat()
    assert evaluations[("level_heatmaps", "matrix_consistent")].partition == f"{DAY.isoformat()}|1"
    reconciled = evaluations[("game_events", "rows_reconciled")].metadata
    assert reconciled["clean"].value == 32 and reconciled["quarantined"].value == 1
    assert reconciled["source_rows_now"].value == 33
    heat_meta = evaluations[("level_heatmaps", "matrix_consistent")].metadata
    assert heat_meta["matrix_sum"].value == 30 and heat_meta["position_events"].value == 31


def test_checks_are_blocking_and_partitioned_in_the_definitions(monkeypatch, sqlite_url):
    defs = build_defs(monkeypatch, sqlite_url)
    all_specs = [spec for checks in defs.asset_checks for spec in checks.check_specs]
    specs = {spec.key.name: spec for spec in all_specs if spec.key.name != "today_is_fresh"}
    assert set(specs) == {"rows_reconciled", "unique_event_ids", "event_counts_reconciled", "matrix_consistent"}
    assert all(spec.blocking for spec in specs.values())
    assert all(spec.partitions_def is not None for spec in specs.values())
    # the freshness checks look at today whatever the run's partition: unpartitioned, WARN, never blocking
    freshness = [spec for spec in all_specs if spec.key.name == "today_is_fresh"]
    assert {spec.asset_key.to_user_string() for spec in freshness} == {"game_events", "level_heatmaps"}
    assert not any(spec.blocking or spec.partitions_def for spec in freshness)


# --- game_events: rows extracted = clean + quarantined -----------------------------------------


def test_reconciliation_fails_when_a_clean_row_is_lost(good):
    url = good
    assert invariants.game_events_reconciled(_engine(url), _engine(url), DAY, None).passed
    _execute(url, game_events.delete().where(game_events.c.event_id == _an_event_id(url)))
    result = invariants.game_events_reconciled(_engine(url), _engine(url), DAY, None)
    assert not result.passed and result.severity == "ERROR"
    assert "1 source row(s) of the day are neither clean nor quarantined" in result.description


def test_reconciliation_fails_when_more_rows_are_stored_than_the_source_has(good):
    url = good
    _execute(
        url,
        quarantined_events.insert().values(
            partition_date=DAY,
            source_event_id="999",
            reason="null_payload",
            raw_row="{}",
            quarantined_at=dt.datetime(2025, 11, 16),
        ),
    )
    result = invariants.game_events_reconciled(_engine(url), _engine(url), DAY, None)
    assert not result.passed and "1 more row(s) stored than the source holds" in result.description


def test_reconciliation_tolerates_rows_that_arrived_after_the_run_started_but_not_older_ones(good):
    url = good
    run_start = dt.datetime(2025, 11, 16, 12, 0)
    # created after the run started: waits for the next run, the check passes and says so
    write_source_events(
        url, [event(dt.datetime(2025, 11, 16, 11), {"x": 1, "y": 1}, created_at=dt.datetime(2025, 11, 17, 8))]
    )
    ok = invariants.game_events_reconciled(_engine(url), _engine(url), DAY, run_start)
    assert ok.passed and ok.metadata["arrived_during_or_after_run"] == 1
    assert "1 newer row(s) wait for the next run" in ok.description
    # created before the run started but not stored: lost
    write_source_events(
        url, [event(dt.datetime(2025, 11, 16, 11), {"x": 1, "y": 1}, created_at=dt.datetime(2025, 11, 16, 11))]
    )
    lost = invariants.game_events_reconciled(_engine(url), _engine(url), DAY, run_start)
    assert not lost.passed and lost.severity == "ERROR"


# --- game_events: no duplicate ids ---------------------------------------------------------------


def test_unique_ids_warns_when_an_id_is_also_stored_on_another_day(good):
    url = good
    assert invariants.game_events_unique_ids(_engine(url), DAY).passed
    event_id = _an_event_id(url)
    _execute(
        url,
        game_events.insert().values(
            event_date=DAY - dt.timedelta(days=1), event_id=event_id, ts=dt.datetime(2025, 11, 15)
        ),
    )
    result = invariants.game_events_unique_ids(_engine(url), DAY)
    assert not result.passed and result.severity == "WARN"
    assert result.metadata["ids_also_on_other_days_sample"] == [event_id]


@pytest.mark.postgres
def test_unique_ids_fails_on_a_duplicate_within_the_day(postgres_url, monkeypatch, instance):
    write_source_events(postgres_url, _source_rows())
    defs = build_defs(monkeypatch, postgres_url)
    assert materialize_etl(defs, DAY.isoformat(), instance).success
    # a table that lost its primary key (e.g. restored by hand) can hold an id twice
    event_id = _an_event_id(postgres_url)
    _execute(
        postgres_url,
        sa.text("ALTER TABLE game_events DROP CONSTRAINT game_events_pkey"),
        sa.text("INSERT INTO game_events SELECT * FROM game_events WHERE event_id = :id").bindparams(id=event_id),
    )
    result = invariants.game_events_unique_ids(_engine(postgres_url), DAY)
    assert not result.passed and result.severity == "ERROR"
    assert result.metadata["duplicated_ids_sample"] == [event_id]


# --- session_stats ------------------------------------------------------------------------------


def test_session_reconciliation_fails_when_counts_do_not_add_up(good):
    url = good
    good = invariants.session_stats_reconciled(_engine(url), DAY)
    assert good.passed and good.metadata == {"events_summed": 32, "clean_events": 32, "sessions": 2, "form": "full: the day's game_events recounted"}
    _execute(url, session_stats.update().where(session_stats.c.session_id == "s2").values(event_count=5))
    bad = invariants.session_stats_reconciled(_engine(url), DAY)
    assert not bad.passed and "sum to 36, game_events holds 32" in bad.description


# --- level_heatmaps -----------------------------------------------------------------------------


def _stored_matrix(url):
    with _engine(url).connect() as conn:
        value = conn.execute(sa.select(heatmaps.c.matrix).where(heatmaps.c.level == "1")).scalar_one()
    return json.loads(value) if isinstance(value, str) else value


def test_heatmap_fails_on_a_negative_cell_even_when_the_sum_is_right(good):
    url = good
    assert _heatmap(url).passed
    matrix = _stored_matrix(url)
    assert matrix[9][9] == 0  # y = 9 is empty
    matrix[9][9] -= 1
    matrix[0][0] += 1  # the sum still matches the in-bounds count
    assert sum(map(sum, matrix)) == 30 and matrix[9][9] == -1
    _execute(url, heatmaps.update().where(heatmaps.c.level == "1").values(matrix=matrix))
    result = _heatmap(url)
    assert not result.passed and result.severity == "ERROR" and "negative or non-finite cell" in result.description


def test_heatmap_fails_when_the_matrix_disagrees_with_the_etls_position_count(good):
    """matrix sum + out of bounds must equal the position events the ETL recorded for the day
    (position_stats, written with the partition): no rescan of the day, still an honest count."""
    url = good
    assert "sum 30 + 1 out of bounds = 31 position events the ETL recorded" in _heatmap(url).description
    matrix = _stored_matrix(url)
    matrix[0][0] += 1  # a point the rows do not have
    _execute(url, heatmaps.update().where(heatmaps.c.level == "1").values(matrix=matrix))
    result = _heatmap(url)
    assert not result.passed and "matrix sum 31 + 1 out of bounds != 31 position events" in result.description
    matrix[0][0] -= 1
    _execute(url, heatmaps.update().where(heatmaps.c.level == "1").values(matrix=matrix, out_of_bounds=0))
    assert "matrix sum 30 + 0 out of bounds != 31" in _heatmap(url).description  # a lost point


def test_heatmap_fails_when_the_etl_reloaded_more_positions(good):
    url = good
    write_source_events(url, [event(dt.datetime(2025, 11, 16, 13), {"x": 5.0, "y": 5.0})])
    engine, now = _engine(url), dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    settings = load_settings(settings_env(url, HEATMAP_GRID_SIZE="10"))
    assert load_partition(engine, engine, DAY, cleaning_rules(settings, now), now).positions == {"1": 32}
    result = _heatmap(url)
    assert not result.passed and "matrix sum 30 + 1 out of bounds != 32 position events" in result.description
    # ... unless game_events was rewritten after the heatmap: then it is stale (WARN, not blocking)
    stale = invariants.heatmap_consistent(
        _engine(url), DAY, "1", 10, BOUNDS, upstream_written_at=dt.datetime(2999, 1, 1)
    )
    assert not stale.passed and stale.severity == "WARN" and "stale" in stale.description


def test_heatmap_with_automatic_bounds_has_no_point_out_of_bounds(good):
    url = good
    engine = _engine(url)
    upsert_heatmap(engine, compute_heatmap(engine, DAY, "1", 10, None), dt.datetime(2025, 11, 17))
    assert invariants.heatmap_consistent(engine, DAY, "1", 10, None).passed
    _execute(url, heatmaps.update().where(heatmaps.c.level == "1").values(out_of_bounds=1))
    result = invariants.heatmap_consistent(engine, DAY, "1", 10, None)
    assert not result.passed and "1 point(s) out of bounds, but automatic bounds" in result.description


def test_heatmap_fails_when_bounds_or_grid_differ_from_the_configuration(good):
    url = good
    other_grid = invariants.heatmap_consistent(_engine(url), DAY, "1", 20, BOUNDS)
    assert not other_grid.passed and "matrix is not 20x20" in other_grid.description
    other_bounds = invariants.heatmap_consistent(_engine(url), DAY, "1", 10, GridBounds(0, 20, 0, 10))
    assert not other_bounds.passed and "bounds [0.0, 10.0, 0.0, 10.0] (fixed) differ" in other_bounds.description
    auto = invariants.heatmap_consistent(_engine(url), DAY, "1", 10, None)
    assert not auto.passed and "(auto)" in auto.description  # stored fixed bounds, configuration now auto
    _execute(url, heatmaps.update().values(grid_size="11"))
    assert "grid_size column is '11'" in _heatmap(url).description


def test_heatmap_fails_when_the_row_is_missing(good):
    url = good
    _execute(url, heatmaps.delete())
    result = _heatmap(url)
    assert not result.passed and "no row in heatmaps (31 position events)" in result.description


# --- the Dagster side: checks run alone on a partition, and blocking inside a run -------------------


@pytest.mark.postgres
def test_wrong_session_counts_fail_the_etl_run(postgres_url, monkeypatch, instance):
    write_source_events(postgres_url, _source_rows())
    defs = build_defs(monkeypatch, postgres_url)
    assert materialize_etl(defs, DAY.isoformat(), instance).success
    _execute(
        postgres_url,
        sa.text("""
        CREATE FUNCTION count_twice() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.event_count := NEW.event_count * 2; RETURN NEW; END $$"""),
        sa.text(
            "CREATE TRIGGER count_twice BEFORE INSERT ON session_stats FOR EACH ROW EXECUTE FUNCTION count_twice()"
        ),
    )
    result = materialize_etl_unchecked(defs, DAY.isoformat(), instance)
    assert not result.success
    by_name = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert by_name["rows_reconciled"].passed and by_name["unique_event_ids"].passed
    assert not by_name["event_counts_reconciled"].passed
    assert "session event counts sum to 64, game_events holds 32" in by_name["event_counts_reconciled"].description
    assert by_name["event_counts_reconciled"].partition == DAY.isoformat()


@pytest.mark.postgres
def test_a_failed_blocking_check_fails_the_etl_run_and_session_stats_does_not_run(postgres_url, monkeypatch, instance):
    write_source_events(postgres_url, _source_rows())
    defs = build_defs(monkeypatch, postgres_url)
    assert materialize_etl(defs, DAY.isoformat(), instance).success  # creates the tables
    # a buggy writer: each write to the quarantine stores one row twice, so more rows are stored than extracted
    _execute(
        postgres_url,
        sa.text("""
        CREATE FUNCTION also_quarantine() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF pg_trigger_depth() = 1 THEN
                INSERT INTO quarantined_events (partition_date, source_event_id, reason, raw_row, quarantined_at)
                SELECT partition_date, source_event_id, reason, raw_row, quarantined_at FROM quarantined_events LIMIT 1;
              END IF; RETURN NULL; END $$"""),
        sa.text(
            "CREATE TRIGGER also_quarantine AFTER INSERT ON quarantined_events "
            "FOR EACH STATEMENT EXECUTE FUNCTION also_quarantine()"
        ),
    )
    _execute(postgres_url, session_stats.delete())
    result = materialize_etl_unchecked(defs, DAY.isoformat(), instance)
    assert not result.success
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert [e.check_name for e in failed] == ["rows_reconciled"]
    assert "more row(s) stored than the source holds" in failed[0].description
    step_events = {e.step_key: e.event_type_value for e in result.all_events if e.step_key}
    assert "session_stats" not in step_events  # never started: it waits for the blocking checks
    assert any(e.step_key == "game_events_rows_reconciled" for e in result.get_step_failure_events())
    with _engine(postgres_url).connect() as conn:  # session_stats was never written
        assert conn.execute(sa.select(sa.func.count()).select_from(session_stats)).scalar_one() == 0


@pytest.mark.postgres
def test_a_wrong_heatmap_fails_its_run(postgres_url, monkeypatch, instance):
    write_source_events(postgres_url, _source_rows())
    defs = build_defs(
        monkeypatch, postgres_url, HEATMAP_BOUNDS=json.dumps({"1": BOUNDS.as_list()}), HEATMAP_GRID_SIZE="10"
    )
    assert materialize_etl(defs, DAY.isoformat(), instance).success
    assert materialize_heatmap(defs, DAY.isoformat(), "1", instance).success
    # a buggy writer that stores other bounds than it binned with
    _execute(
        postgres_url,
        sa.text("""
        CREATE FUNCTION shift_bounds() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.x_max := NEW.x_max + 1; RETURN NEW; END $$"""),
        sa.text("CREATE TRIGGER shift_bounds BEFORE INSERT ON heatmaps FOR EACH ROW EXECUTE FUNCTION shift_bounds()"),
    )
    key = dg.MultiPartitionKey({"date": DAY.isoformat(), "level": "1"})
    result = defs.get_job_def("heatmap_job").execute_in_process(
        partition_key=key, instance=instance, raise_on_error=False
    )
    assert not result.success
    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed and "bounds [0.0, 11.0, 0.0, 10.0] (fixed) differ" in evaluation.description
    assert evaluation.partition == f"{DAY.isoformat()}|1"


def materialize_etl_unchecked(defs, day, instance):
    return defs.get_job_def("etl_job").execute_in_process(partition_key=day, instance=instance, raise_on_error=False)

"""A team running the old system switches to ours, on PostgreSQL, as it meets it.

Its database as the old app made it (users, sessions, events with their FKs and six indexes,
the old ``heatmaps`` table in each of its shapes, ``leaderboard_aggregates`` with pandas' duplicate
rows, the old job's heatmaps of earlier days), telemetry as the browser game sends it, the old
``.env`` kept as it is; then the real CLI: ``heatmap-pipeline migrate``, ``backfill``, ``reconcile``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from heatmap_pipeline.core.binning import GridBounds
from heatmap_pipeline.warehouse.source import old_system_source_ddl
from heatmap_pipeline.web.app import create_app
from heatmap_pipeline_tests.admin_servers import serve_in_thread
from heatmap_pipeline_tests.conftest import postgres_database
from heatmap_pipeline_tests.read_api_data import KEY, read_api_settings
from heatmap_pipeline_tests.support import histogram2d_reference

DAY = dt.date(2025, 11, 16)
PAST = dt.date(2025, 11, 15)
LEVELS = ("1", "2")
UTC = dt.timezone.utc

# pandas.to_sql(..., if_exists="append") created it from a DataFrame
OLD_LEADERBOARD = "CREATE TABLE leaderboard_aggregates (session_id text, event_count bigint, score_max double precision)"

HEATMAPS_SHAPES = {
    # the old system's migration 003, its id a plain bigint (no default) or a bigserial
    "migration_003_bigint": "CREATE TABLE heatmaps (id bigint PRIMARY KEY, level varchar(100), date date, matrix jsonb, "
                            "created_at timestamptz, CONSTRAINT uq_heatmaps_level_date UNIQUE (level, date))",
    "migration_003_bigserial": "CREATE TABLE heatmaps (id bigserial PRIMARY KEY, level varchar(100), date date, matrix jsonb, "
                               "created_at timestamptz, CONSTRAINT uq_heatmaps_level_date UNIQUE (level, date))",
    # the old heatmap job, when the table was missing
    "old_job": "CREATE TABLE heatmaps (level text, date date, grid_size text, matrix json)",
}

# the old job's rows: an earlier day of each level, and today's level 1 as of its last run
OLD_HEATMAP_ROWS = [("1", PAST, [[0, 1.0], [2, 0.0]]), ("2", PAST, [[5, 0], [0, 0]]), ("1", DAY, [[1, 1], [1, 1]])]


def old_heatmap_inserts(shape: str) -> list[tuple[str, dict]]:
    statements = []
    for number, (level, day, matrix) in enumerate(OLD_HEATMAP_ROWS, start=1):
        params = {"id": number, "level": level, "date": day, "m": json.dumps(matrix)}
        if shape == "old_job":
            sql = "INSERT INTO heatmaps (level, date, grid_size, matrix) VALUES (:level, :date, '2', CAST(:m AS json))"
        elif shape == "migration_003_bigint":  # the old app chose ids itself
            sql = "INSERT INTO heatmaps (id, level, date, matrix, created_at) VALUES (:id, :level, :date, CAST(:m AS jsonb), now())"
        else:
            sql = "INSERT INTO heatmaps (level, date, matrix, created_at) VALUES (:level, :date, CAST(:m AS jsonb), now())"
        statements.append((sql, params))
    return statements


def game_telemetry() -> tuple[list[dict], list[tuple[str, str]], list[tuple[str, str]]]:
    """Events as the browser game batches them to POST /api/v1/events, each marked clean or not; users; sessions."""
    rng = np.random.default_rng(7)
    users = [(str(uuid.uuid4()), f"player{i}") for i in range(3)]
    sessions = [(str(uuid.uuid4()), user_id) for user_id, _ in users]
    rows = []

    def add(session, name, event_type, payload, at, clean=True, client_at=None):  # clean: True or the reason
        rows.append({
            "id": str(uuid.uuid4()), "user_id": session[1], "session_id": session[0], "event_type": event_type,
            "event_name": name, "event_category": "gameplay", "payload": json.dumps(payload),
            "timestamp": client_at or at, "created_at": at, "clean": clean,
        })

    for number, session in enumerate(sessions):
        at = dt.datetime(2025, 11, 16, 9 + 3 * number, tzinfo=UTC)
        add(session, "session_start", "session", {"session_id": session[0]}, at)
        for i in range(40):
            level = LEVELS[i % 2]
            payload = {"x": float(rng.uniform(0, 800)), "y": float(rng.uniform(0, 600))}
            if i % 10 != 0:  # the game names the level as a number; some events name none (default level 1)
                payload["level"] = int(level)
            elif level != "1":
                payload["level"] = level
            # a client clock 40 minutes slow, and one a few minutes fast: both normal
            client_at = at + dt.timedelta(minutes=-40 if number == 1 else 3)
            add(session, "player_move", "move", payload, at + dt.timedelta(seconds=i), client_at=client_at + dt.timedelta(seconds=i))
        add(session, "jump", "jump", {"x": 100.0 + number, "y": 50.0, "level": 1}, at + dt.timedelta(minutes=1))
        add(session, "score_update", "score", {"score": 120 * (number + 1)}, at + dt.timedelta(minutes=2))
        add(session, "collision", "death", {"x": 400.0, "y": 300.0 + number, "level": 2}, at + dt.timedelta(minutes=3))
        add(session, "game_over", "game", {"final_score": 150 * (number + 1)}, at + dt.timedelta(minutes=4))
        add(session, "session_end", "session", {"session_id": session[0]}, at + dt.timedelta(minutes=5))
    first = sessions[0]
    noon = dt.datetime(2025, 11, 16, 12, tzinfo=UTC)
    # a client clock two hours fast, a position without y, text coordinates, an unknown level, a bad score
    add(first, "player_move", "move", {"x": 10.0, "y": 10.0, "level": 1}, noon, clean="future_timestamp",
        client_at=noon + dt.timedelta(hours=2))
    add(first, "player_move", "move", {"x": 12.0}, noon, clean="missing_coordinate")
    add(first, "player_move", "move", {"x": "left", "y": 3, "level": 1}, noon, clean="non_numeric_coordinate")
    add(first, "player_move", "move", {"x": 1.0, "y": 2.0, "level": 9}, noon, clean="unknown_level")
    add(first, "game_over", "game", {"final_score": "lots"}, noon, clean="invalid_score")
    return rows, users, sessions


def expected_matrix(rows: list[dict], level: str) -> np.ndarray:
    points = []
    for row in rows:
        payload = json.loads(row["payload"])
        if row["clean"] is True and "x" in payload and str(payload.get("level", "1")) == level:
            points.append((payload["x"], payload["y"]))
    xs, ys = zip(*points)
    return histogram2d_reference(list(xs), list(ys), GridBounds(min(xs), max(xs), min(ys), max(ys)), 50)


def build_old_database(url: str, shape: str) -> list[dict]:
    rows, users, sessions = game_telemetry()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in [*old_system_source_ddl("json"), OLD_LEADERBOARD]:
            conn.execute(sa.text(statement))
        conn.execute(sa.text(HEATMAPS_SHAPES[shape]))
        for sql, params in old_heatmap_inserts(shape):
            conn.execute(sa.text(sql), params)
        conn.execute(sa.text("INSERT INTO users (id) VALUES (CAST(:id AS uuid))"), [{"id": i} for i, _ in users])
        conn.execute(sa.text("INSERT INTO sessions (id) VALUES (CAST(:id AS uuid))"), [{"id": s} for s, _ in sessions])
        conn.execute(
            sa.text('INSERT INTO events (id, user_id, session_id, event_type, event_name, event_category, payload, "timestamp", created_at) '
                    "VALUES (CAST(:id AS uuid), CAST(:user_id AS uuid), CAST(:session_id AS uuid), :event_type, :event_name, "
                    ":event_category, CAST(:payload AS json), :timestamp, :created_at)"),
            [{k: v for k, v in row.items() if k != "clean"} for row in rows],
        )
        # the old ETL appended each run's aggregates: every session twice, one stale
        for session_id, _ in sessions:
            for count in (10, 47):
                conn.execute(sa.text("INSERT INTO leaderboard_aggregates VALUES (:s, :c, 100.0)"), {"s": session_id, "c": count})
        conn.execute(sa.text("INSERT INTO leaderboard_aggregates VALUES ('an-older-session', 5, 1.0), ('an-older-session', 5, 1.0)"))
    engine.dispose()
    return rows


def column_types(conn: sa.Connection, table: str) -> dict[str, str]:
    return dict(conn.execute(sa.text(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = :t"), {"t": table}).all())


def source_indexes(conn: sa.Connection) -> set[tuple]:
    return set(conn.execute(sa.text(
        "SELECT tablename, indexdef FROM pg_indexes WHERE tablename IN ('events', 'users', 'sessions')")).all())


def foreign_keys(conn: sa.Connection) -> set[tuple]:
    return set(conn.execute(sa.text(
        "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint WHERE contype = 'f'")).all())


def old_env(url: str) -> str:
    """The old deployment's .env, unchanged: its asyncpg URL and the job runner's variables, the app's own too."""
    asyncpg_url = sa.engine.make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    return "\n".join([
        f"DATABASE_URL={asyncpg_url}",
        "SECRET_KEY=change-me-in-production",
        "ALGORITHM=HS256",
        "ACCESS_TOKEN_EXPIRE_MINUTES=30",
        "ETL_INTERVAL_MINUTES=15",
        "HEATMAP_INTERVAL_MINUTES=30",
        "HEATMAP_LEVELS=1,2",
        f"ADMIN_API_KEY={KEY}",
        "",
    ])


def cli(directory, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``heatmap-pipeline`` started in the old deployment's directory, with nothing but its .env."""
    env = {"PATH": os.environ["PATH"], "HOME": str(directory)}
    return subprocess.run([sys.executable, "-m", "heatmap_pipeline.runtime.cli", *args], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("shape", sorted(HEATMAPS_SHAPES))
def test_a_team_running_the_old_system_switches_over(tmp_path, shape):
    with postgres_database() as url:
        rows = build_old_database(url, shape)
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            fks_before, indexes_before = foreign_keys(conn), source_indexes(conn)
            types_before = {t: column_types(conn, t) for t in ("events", "users", "sessions", "heatmaps", "leaderboard_aggregates")}
        assert sum(table == "events" for table, _ in indexes_before) == 7  # its primary key and six ix_events_*
        (tmp_path / ".env").write_text(old_env(url))

        for _ in range(2):  # a second migrate finds nothing to do
            migrated = cli(tmp_path, "migrate")
            assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        backfill = cli(tmp_path, "backfill", "--start", DAY.isoformat(), "--end", DAY.isoformat())
        assert backfill.returncode == 0 and "FAILED" not in backfill.stdout, backfill.stdout + backfill.stderr
        reconciled = cli(tmp_path, "reconcile")
        assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
        clean = sum(row["clean"] is True for row in rows)
        assert f"OK: {len(rows)} source row(s); on the 1 loaded day(s) {len(rows)} = clean {clean} + quarantined {len(rows) - clean};" in reconciled.stdout

        with engine.connect() as conn:
            # the old reader's query: exactly one row per level, rows = y bins
            for level in LEVELS:
                found = conn.execute(sa.text("SELECT matrix FROM heatmaps WHERE level = :level AND date = :date"),
                                     {"level": level, "date": DAY}).scalars().all()
                assert len(found) == 1, level
                assert np.array_equal(np.asarray(found[0]), expected_matrix(rows, level)), level
            # the old job's earlier days are untouched
            for level, day, matrix in OLD_HEATMAP_ROWS:
                if day == PAST:
                    assert conn.execute(sa.text("SELECT matrix FROM heatmaps WHERE level = :l AND date = :d"),
                                        {"l": level, "d": day}).scalar_one() == matrix
            types_after = {t: column_types(conn, t) for t in types_before}
            assert foreign_keys(conn) == fks_before and source_indexes(conn) == indexes_before
            reasons = dict(conn.execute(sa.text("SELECT CAST(source_event_id AS text), reason FROM quarantined_events")).all())
            # the leaderboard: the sessions this day touched have one row each, the stale duplicate gone
            leaderboard = conn.execute(sa.text(
                "SELECT session_id, count(*), max(event_count) FROM leaderboard_aggregates GROUP BY session_id")).all()
            ids = conn.execute(sa.text("SELECT id FROM heatmaps ORDER BY id")).scalars().all()
            if shape != "old_job":  # migration 003's created_at says when our rows were written too
                assert conn.execute(sa.text("SELECT count(*) FROM heatmaps WHERE created_at IS NULL")).scalar_one() == 0
        engine.dispose()
        assert reasons == {row["id"]: row["clean"] for row in rows if row["clean"] is not True}
        for table, before in types_before.items():  # old columns keep their types (jsonb stays jsonb, ...)
            assert {c: types_after[table][c] for c in before} == before, table
        per_session = {r["session_id"]: sum(1 for o in rows if o["clean"] is True and o["session_id"] == r["session_id"]) for r in rows}
        assert {s: (n, m) for s, n, m in leaderboard if s in per_session} == {s: (1, n) for s, n in per_session.items()}
        # a session no loaded day touched keeps the old job's duplicate rows (README: Migrating)
        assert ("an-older-session", 2, 5) in leaderboard
        assert len(ids) == len(OLD_HEATMAP_ROWS) + 1 == len(set(ids)) and None not in ids  # 2 old days, today's 2 levels

        with serve_in_thread(create_app(read_api_settings(url, tmp_path / "api"))) as base:
            for level in LEVELS:
                response = httpx.get(base + "/api/v1/heatmap", params={"level": level, "date": DAY.isoformat()},
                                     headers={"x-api-key": KEY}, timeout=30)
                assert response.status_code == 200, response.text
                assert np.array_equal(np.asarray(response.json()["matrix"]), expected_matrix(rows, level))


@pytest.mark.postgres
def test_migrate_refuses_an_old_job_table_with_two_rows_for_one_level_and_day_and_changes_nothing(tmp_path):
    """The old job's own table has no unique (level, date); which duplicate to keep is the team's call."""
    with postgres_database() as url:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(HEATMAPS_SHAPES["old_job"]))
            conn.execute(sa.text("INSERT INTO heatmaps VALUES ('1', '2025-11-16', '2', '[[1]]'), ('1', '2025-11-16', '2', '[[2]]'), "
                                 "('2', '2025-11-16', '2', '[[3]]')"))
        (tmp_path / ".env").write_text(old_env(url))
        refused = cli(tmp_path, "migrate")
        dev = cli(tmp_path, "dev", timeout=120)  # dev migrates before starting anything: refused alike
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            columns = set(column_types(conn, "heatmaps"))
        engine.dispose()
    assert refused.returncode == 2
    assert "more than one row for 1 (level, date) pair(s): level '1' on 2025-11-16 (2 rows)" in refused.stderr
    assert "nothing was changed" in refused.stderr and "Traceback" not in refused.stderr
    assert dev.returncode == 2 and "level '1' on 2025-11-16 (2 rows)" in dev.stderr and "Traceback" not in dev.stderr
    assert tables == {"heatmaps"} and columns == {"level", "date", "grid_size", "matrix"}

"""Benchmark: what one scheduled ETL tick costs on a day that already holds many events.

For each day size it builds the old system's ``events`` table in a fresh PostgreSQL database, as its
first migration creates it (uuid ``id``/``user_id``/``session_id``, ``timestamptz``, ``json``
payload, its six btree indexes) plus ``ix_events_created_at`` (``--no-created-at-index`` leaves it
out, as the old schema does), fills one day, loads it in full (``game_events`` and
``session_stats``, in-process with ``dagster.materialize``), and then, ``--ticks`` times: inserts
``--tick-events`` new events (continuing the day's latest sessions, ~1% malformed) and
materializes the tick as ``etl_schedule`` launches it (run tag ``heatmap_pipeline/load_mode=incremental``).

Reported per tick: the wall time of ``dagster.materialize`` for ``game_events`` alone and for
``session_stats`` after it, the step's own time (Dagster's STEP_SUCCESS duration), and the
materialization's ``load_mode``/``rows_extracted_this_load``, this process's and PostgreSQL's CPU and the
load average; once, the time of each blocking check ``etl_job`` runs after the assets, in the form
a tick of today runs (what the tick touched) and in full (the day's last tick, full loads). The tables after the ticks are checked
against the source: every source row of the day is clean or quarantined (exit 1 otherwise).

    python benchmarks/tick.py --sizes 1M,10M            # the issue's targets: 10k-event ticks
    python benchmarks/tick.py --sizes 100k --ticks 2    # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time

import sqlalchemy as sa

import bench  # benchmarks/ is on sys.path when this script runs

DAY = dt.date(2025, 6, 1)
LEVELS = ("1", "2", "3")
ADMIN_PG_URL_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
EVENTS_PER_SESSION = 200

# The old system's first migration (reference/old-system.md), without the users/sessions foreign keys.
_SCHEMA = """
CREATE TABLE events (
    id uuid NOT NULL, user_id uuid NOT NULL, session_id uuid,
    event_type varchar(100) NOT NULL, event_name varchar(255) NOT NULL, event_category varchar(100),
    payload json NOT NULL, "timestamp" timestamptz NOT NULL DEFAULT now(), created_at timestamptz NOT NULL DEFAULT now()
);
--
ALTER TABLE events ADD PRIMARY KEY (id);
CREATE INDEX ix_events_id ON events (id);
CREATE INDEX ix_events_user_id ON events (user_id);
CREATE INDEX ix_events_session_id ON events (session_id);
CREATE INDEX ix_events_event_type ON events (event_type);
CREATE INDEX ix_events_event_category ON events (event_category);
CREATE INDEX ix_events_timestamp ON events ("timestamp");
"""

# Events first..last of the day: the i-th at :start + i * :step seconds, created 0.5 s later.
# Moves (x, y, level 1-3) and score events; every 100th a move without y, every 250th an unknown level.
_INSERT = """
INSERT INTO events (id, user_id, session_id, event_type, event_name, event_category, payload, "timestamp", created_at)
SELECT md5('event-' || i)::uuid, md5('user-' || (i / :per_session) % 997)::uuid, md5('session-' || i / :per_session)::uuid,
       CASE WHEN i % 10 = 9 THEN 'score' ELSE 'move' END, CASE WHEN i % 10 = 9 THEN 'score_update' ELSE 'move' END,
       'gameplay',
       CAST(CASE
         WHEN i % 10 = 9 THEN '{"score": ' || (i % 5000) || ', "level": ' || (1 + i % 3) || '}'
         WHEN i % 100 = 7 THEN '{"x": ' || (i % 1000) / 10.0 || ', "level": ' || (1 + i % 3) || '}'
         WHEN i % 250 = 11 THEN '{"x": 1.5, "y": 2.5, "level": 9}'
         ELSE '{"x": ' || ((i * 48271) % 100000) / 1000.0 || ', "y": ' || ((i * 69621) % 80000) / 1000.0
              || ', "level": ' || (1 + i % 3) || ', "speed": ' || (i % 17) || '}'
       END AS json),
       ts, ts + INTERVAL '0.5 second'
FROM (
    SELECT i, CAST(:start AS timestamptz) + (i - :first) * CAST(:step AS float8) * INTERVAL '1 second' AS ts
    FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS i
) g
"""


def parse_size(text: str) -> int:
    text = text.strip().lower()
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * factor)


def insert_events(engine: sa.Engine, first: int, last: int, start: dt.datetime, step: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(_INSERT),
            {"first": first, "last": last, "start": start.isoformat(), "step": step, "per_session": EVENTS_PER_SESSION},
        )


def build(url: str):
    from heatmap_pipeline.defs.assets.events import build_game_events_asset
    from heatmap_pipeline.defs.assets.sessions import build_session_stats_asset
    from heatmap_pipeline.defs.partitions import date_partitions
    from heatmap_pipeline.defs.resources import SourceDatabase, WarehouseDatabase
    from heatmap_pipeline.settings import load_settings

    settings = load_settings({"DATABASE_URL": url, "HEATMAP_LEVELS": ",".join(LEVELS), "PARTITION_START_DATE": "2025-01-01"})
    dates = date_partitions(settings)
    resources = {"source": SourceDatabase(url=url), "warehouse": WarehouseDatabase(url=url)}
    return build_game_events_asset(settings, dates), build_session_stats_asset(dates), resources


def materialize(asset, resources, instance, tags: dict, url: str | None = None) -> dict:
    """One in-process materialization: wall time, the step's own time, this process's CPU and
    (with ``url``) the PostgreSQL backends' CPU, the metadata."""
    import dagster as dg

    with bench.measure(asset.key.path[-1], url) as phase:
        result = dg.materialize([asset], resources=resources, partition_key=DAY.isoformat(), instance=instance, tags=tags)
    assert result.success
    step = next(e for e in result.all_events if e.event_type_value == "STEP_SUCCESS")
    metadata = result.asset_materializations_for_node(asset.key.path[-1])[0].metadata
    return {
        "wall_s": round(phase.seconds, 3),
        "step_s": round(step.event_specific_data.duration_ms / 1000, 3),
        "cpu_s": round(phase.cpu_seconds, 3),
        "db_cpu_s": None if phase.db_cpu_seconds is None else round(phase.db_cpu_seconds, 3),
        "metadata": {key: getattr(value, "value", value) for key, value in metadata.items()},
    }


def source_rows_reconciled(url: str) -> tuple[int, int]:
    """(source rows of the day, clean + quarantined rows stored for it)."""
    from heatmap_pipeline.warehouse.db import get_engine
    from heatmap_pipeline.warehouse.etl.writing import partition_counts
    from heatmap_pipeline.warehouse.invariants import count_source_rows

    engine = get_engine(url)
    stored = partition_counts(engine, DAY)
    return count_source_rows(engine, DAY, start=dt.date(2025, 1, 1)), stored["clean"] + stored["quarantined"]


def time_checks(url: str, today: dt.date) -> dict:
    """Seconds of each blocking check etl_job runs after the last tick (not part of the asset
    steps), as a tick of ``today`` runs them: ``DAY`` itself, the tick-aware forms (what the tick
    touched); a later day, the full forms (the day's last tick, full loads), which recount the day."""
    from heatmap_pipeline.warehouse import invariants
    from heatmap_pipeline.warehouse.db import get_engine

    engine = get_engine(url)
    start = dt.date(2025, 1, 1)
    checks = {
        "rows_reconciled": lambda: invariants.game_events_reconciled_after_last_load(engine, engine, DAY, None, start, today),
        "unique_event_ids": lambda: invariants.game_events_unique_ids_after_last_load(engine, DAY, today),
        "event_counts_reconciled": lambda: invariants.session_stats_reconciled_after_last_load(engine, DAY, today),
    }
    seconds = {}
    for name, check in checks.items():
        started = time.perf_counter()
        result = check()
        assert result.passed, (name, result.description)
        seconds[name] = round(time.perf_counter() - started, 3)
        seconds[f"{name}_form"] = result.metadata["form"].split(":")[0]
    return seconds


def run_size(n: int, args) -> dict:
    import dagster as dg

    from heatmap_pipeline.orchestration import INCREMENTAL, LOAD_MODE_TAG
    from heatmap_pipeline.warehouse.db import get_engine

    record: dict = {"events_in_day": n, "tick_events": args.tick_events, "created_at_index": not args.no_created_at_index}
    with bench.fresh_database("postgresql", args.admin_url) as url:
        engine = get_engine(url)
        started = time.perf_counter()
        table, indexes = _SCHEMA.split("--")
        with engine.begin() as conn:
            conn.execute(sa.text(table))
        day_start = dt.datetime.combine(DAY, dt.time.min, dt.timezone.utc)
        # the day so far: 00:00 to 20:00; each tick then adds --tick-events in the next minutes
        insert_events(engine, 1, n, day_start, 20 * 3600 / n)
        with engine.begin() as conn:  # built after the bulk insert (faster); the ticks' rows meet them all
            for statement in filter(str.strip, indexes.split(";")):
                conn.execute(sa.text(statement))
            if not args.no_created_at_index:
                conn.execute(sa.text("CREATE INDEX ix_events_created_at ON events (created_at)"))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE events"))
        record["generate_s"] = round(time.perf_counter() - started, 1)
        events_asset, sessions_asset, resources = build(url)
        tick_tags = {LOAD_MODE_TAG: INCREMENTAL}
        with dg.instance_for_test() as instance:
            full = materialize(events_asset, resources, instance, tick_tags)  # no watermark yet: a full load
            assert full["metadata"]["load_mode"] == "full", full["metadata"]
            record["full_load"] = {"wall_s": full["wall_s"], "step_s": full["step_s"],
                                   "sessions_wall_s": materialize(sessions_asset, resources, instance, {})["wall_s"]}
            print(f"{n:>10} events: full load {full['wall_s']} s (generated in {record['generate_s']} s)", flush=True)
            ticks = []
            last = n
            for tick in range(args.ticks):
                tick_start = day_start + dt.timedelta(hours=20, minutes=tick * 15)
                insert_events(engine, last + 1, last + args.tick_events, tick_start, 15 * 60 / args.tick_events)
                last += args.tick_events
                load = bench.load_average()
                events = materialize(events_asset, resources, instance, tick_tags, url)
                sessions = materialize(sessions_asset, resources, instance, tick_tags, url)
                meta = events["metadata"]
                ticks.append(
                    {
                        "load_average": load,
                        "game_events_wall_s": events["wall_s"],
                        "game_events_step_s": events["step_s"],
                        "game_events_cpu_s": events["cpu_s"],
                        "game_events_db_cpu_s": events["db_cpu_s"],
                        "session_stats_wall_s": sessions["wall_s"],
                        "session_stats_step_s": sessions["step_s"],
                        "session_stats_cpu_s": sessions["cpu_s"],
                        "session_stats_db_cpu_s": sessions["db_cpu_s"],
                        "load_mode": meta["load_mode"],
                        "load_method": meta["load_method"],
                        "rows_extracted_this_load": meta["rows_extracted_this_load"],
                        "rows_extracted_day": meta["rows_extracted"],
                    }
                )
                print(f"{'':>10}  tick {tick + 1}: {json.dumps(ticks[-1])}", flush=True)
        record["ticks"] = ticks
        for key in ("game_events_wall_s", "game_events_step_s", "game_events_cpu_s", "game_events_db_cpu_s",
                "session_stats_wall_s", "session_stats_step_s", "session_stats_cpu_s", "session_stats_db_cpu_s"):
            record[f"median_{key}"] = round(statistics.median(t[key] for t in ticks), 3)
        record["checks_s"] = time_checks(url, today=DAY)  # after a tick of a day not over yet
        record["full_checks_s"] = time_checks(url, today=DAY + dt.timedelta(days=1))  # the day's last tick
        source_rows, stored = source_rows_reconciled(url)
        record["reconciled"] = source_rows == stored
        record["source_rows"], record["stored_rows"] = source_rows, stored
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M", help="events already in the day, comma-separated, e.g. 1M,10M")
    parser.add_argument("--tick-events", type=parse_size, default=10_000, help="events arriving before each tick")
    parser.add_argument("--ticks", type=int, default=3)
    parser.add_argument("--no-created-at-index", action="store_true", help="the old schema as it is: no index on created_at")
    parser.add_argument("--admin-url", default=os.environ.get("HEATMAP_TEST_POSTGRES_URL", ADMIN_PG_URL_DEFAULT))
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    records = [run_size(parse_size(size), args) for size in args.sizes.split(",")]
    for record in records:
        print(
            f"{record['events_in_day']:>10} events + {record['tick_events']} per tick: game_events "
            f"{record['median_game_events_wall_s']} s wall ({record['median_game_events_step_s']} s step, CPU "
            f"{record['median_game_events_cpu_s']} s ours + {record['median_game_events_db_cpu_s']} s PostgreSQL), "
            f"session_stats {record['median_session_stats_wall_s']} s wall ({record['median_session_stats_step_s']} s step), "
            f"median of {len(record['ticks'])}; checks after a tick {record['checks_s']}, in full {record['full_checks_s']}; "
            f"reconciled={record['reconciled']}"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(records, out, indent=2, default=str)
    return 0 if all(r["reconciled"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())

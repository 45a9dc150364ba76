"""``heatmap-pipeline``: run the pipeline on its embedded default, and friends."""

from __future__ import annotations

import argparse
import os
import datetime as dt
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from heatmap_pipeline.settings import Settings, SettingsError, child_environment, export_environment, load_settings


def _fail(message: str) -> None:
    print(f"heatmap-pipeline: {message}", file=sys.stderr)
    raise SystemExit(2)


def prepare_environment(data_dir: str | None, demo_data: bool = True) -> Settings:
    """Validate settings, create the data directory and DAGSTER_HOME, top up the demo data.

    The settings returned are read from the child environment (``child_environment``), so this
    process sees what its children will see, with the data directory and DAGSTER_HOME absolute.
    """
    overrides = {"HEATMAP_PIPELINE_HOME": data_dir} if data_dir else None
    try:
        settings = load_settings(child_environment(load_settings(overrides=overrides)))
    except SettingsError as exc:
        _fail(str(exc))
    from heatmap_pipeline.runtime.instance import prepare_dagster_home

    settings.home.mkdir(parents=True, exist_ok=True)
    prepare_dagster_home(settings.dagster_home)
    if settings.demo_mode and demo_data:
        from heatmap_pipeline.runtime import demo
        from heatmap_pipeline.warehouse.db import get_engine

        inserted = demo.top_up(get_engine(settings.source_url))
        print(
            f"heatmap-pipeline: DEMO DATA - DATABASE_URL is unset, using synthetic telemetry in "
            f"{settings.demo_database_path} ({inserted} new events). Set DATABASE_URL to use a real game database.",
            flush=True,
        )
    if settings.demo_mode and settings.configured_partition_start_date is None:
        # The demo's partitions start at its first day, so the UI reads "7 of 7", not 7 of 700.
        from heatmap_pipeline.runtime import demo
        from heatmap_pipeline.warehouse.db import get_engine

        first = demo.first_day(get_engine(settings.source_url))
        if first is not None:
            settings = load_settings(child_environment(settings, PARTITION_START_DATE=first.isoformat()))
    return settings


WORKSPACE_YAML = """\
# Written by `heatmap-pipeline`: the code location the webserver and the daemon both load.
load_from:
  - python_module:
      module_name: heatmap_pipeline.definitions
      attribute: defs
      location_name: heatmap_pipeline
"""


def write_workspace(home: Path) -> Path:
    """The workspace file the webserver and the daemon share (same code location name, so the UI
    shows the daemon's schedule and sensor ticks)."""
    path = home / "workspace.yaml"
    if not path.exists() or path.read_text() != WORKSPACE_YAML:
        path.write_text(WORKSPACE_YAML)
    return path


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _stop(processes: dict[str, subprocess.Popen], timeout: float = 20.0) -> None:
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for name, process in processes.items():
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"heatmap-pipeline: {name} did not stop in {timeout:.0f}s; killing it", file=sys.stderr, flush=True)
            process.kill()
            process.wait()


def create_instance_storage(dagster_home: str) -> None:
    """Create the instance's SQLite storages once, here: the daemon and the webserver starting
    together on a fresh DAGSTER_HOME would both create them and one would fail ("table exists")."""
    import dagster as dg

    with dg.DagsterInstance.from_config(dagster_home) as instance:
        instance.run_storage, instance.event_log_storage, instance.schedule_storage  # noqa: B018 - created on access


def demo_api_key(path: Path) -> str:
    """The demo's admin key: read from ``path``, or generated there (owner-only) on first use."""
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    key = secrets.token_urlsafe(24)
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(key + "\n")
    return key


def stale_binning_advice(settings: Settings) -> list[str]:
    """Per level with fixed bounds, the stored days binned otherwise (computed before a levels file or
    HEATMAP_BOUNDS gave it those bounds): ranges over them and newer days answer 409 until re-binned."""
    from heatmap_pipeline.core.combine import binned_otherwise, configured_binning
    from heatmap_pipeline.core.levels import POSITIONS
    from heatmap_pipeline.warehouse.db import get_engine
    from heatmap_pipeline.warehouse.heatmap_reads import read_heatmaps

    engine, advice = get_engine(settings.warehouse_url), []
    for level in settings.heatmap_levels:
        configured = configured_binning(settings.level_config(level))
        if configured is None:
            continue
        stored = read_heatmaps(engine, level=level, kind=POSITIONS, with_matrix=False)
        groups: dict = {}
        for day in stored:
            groups.setdefault(day.binning, []).append(day.date)
        stale = binned_otherwise(groups, configured)
        if stale:
            advice.append(f"level {level}: {len(stale)} stored day(s), {stale[0]} to {stale[-1]}, were binned before its "
                          f"{configured.describe()} (HEATMAP_LEVELS_FILE or HEATMAP_BOUNDS) and cannot be summed with "
                          f"newer days; re-bin them: heatmap-pipeline backfill --job heatmap --levels {level} "
                          f"--start {stale[0]} --end {stale[-1]}")
    return advice


class DemoWeekProgress:
    """Tells the console how far the demo's first load has come, until its whole week is in the UI."""

    EVERY_SECONDS = 15.0

    def __init__(self, settings: Settings):
        self.settings, self.last_report, self.announced = settings, -self.EVERY_SECONDS, False

    def report(self, elapsed: float) -> bool:
        """Print progress now and then; True once every demo day has its ETL and every heatmap."""
        if elapsed - self.last_report < self.EVERY_SECONDS:
            return False
        self.last_report = elapsed
        import dagster as dg

        from heatmap_pipeline.orchestration import GAME_EVENTS, LEVEL_HEATMAPS, materialized_partitions

        first, today = self.settings.partition_start_date, dt.datetime.now(dt.timezone.utc).date()
        days = [(first + dt.timedelta(days=i)).isoformat() for i in range((today - first).days + 1)]
        with dg.DagsterInstance.from_config(str(self.settings.dagster_home)) as instance:
            loaded = materialized_partitions(instance, GAME_EVENTS) & set(days)
            maps = materialized_partitions(instance, LEVEL_HEATMAPS)
        wanted = {f"{day}|{level}" for day in days for level in self.settings.heatmap_levels}
        done = len(loaded) == len(days) and wanted <= maps
        if not self.announced:
            if not done:  # a restart on a loaded week has nothing to load
                print(f"heatmap-pipeline: DEMO: loading the demo's {len(days)} days ({days[0]} to {days[-1]}) and their "
                      f"{len(wanted)} heatmaps in the background (demo_week_sensor, heatmap_automation_sensor); "
                      "this takes a few minutes. Watch them in the UI: Runs, or Catalog > game_analytics.", flush=True)
            for line in stale_binning_advice(self.settings):
                print(f"heatmap-pipeline: {line}", flush=True)
            self.announced = True
        print(f"heatmap-pipeline: DEMO: {len(loaded)}/{len(days)} days loaded, {len(wanted & maps)}/{len(wanted)} "
              f"heatmaps after {elapsed:.0f}s{' - the demo week is ready' if done else ''}", flush=True)
        return done


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def migrate_warehouse(settings: Settings) -> None:
    """Create or migrate the warehouse tables; an old table they cannot take stops us, named, without a traceback."""
    from heatmap_pipeline.warehouse.db import get_engine
    from heatmap_pipeline.warehouse.migrations import OldTableConflict, ensure_warehouse_schema

    try:
        ensure_warehouse_schema(get_engine(settings.warehouse_url))
    except OldTableConflict as exc:
        _fail(str(exc))


def cmd_dev(args: argparse.Namespace) -> int:
    """The daemon (schedules, sensors, run queue), the authenticated webserver and the admin API."""
    settings = prepare_environment(args.data_dir)
    migrate_warehouse(settings)  # once, before the three processes start
    ui_port = args.port or settings.dagster_ui_port
    admin_port = args.admin_port or settings.admin_port
    overrides = {}  # for the children
    if settings.configured_graphql_url is None:
        overrides["DAGSTER_GRAPHQL_URL"] = f"http://{_loopback(args.host)}:{ui_port}/graphql"
    workspace = write_workspace(settings.home)
    create_instance_storage(str(settings.dagster_home))
    if not settings.admin_api_keys and settings.demo_mode:
        # The embedded default must open in a browser, but there is no built-in key: generate one
        # per data directory, unguessable, and say where it is.
        key_file = settings.home / "admin_api_key"
        overrides["ADMIN_API_KEY"] = demo_api_key(key_file)
        print(f"heatmap-pipeline: ADMIN_API_KEY is not set; the embedded demo uses a generated key stored in {key_file}.\n"
              f"  Log in to the UI with any user name and that key as password, and send it as x-api-key to the admin API:\n"
              f"  export ADMIN_API_KEY=$(cat {key_file})", flush=True)
    elif not settings.admin_api_keys:
        print("heatmap-pipeline: ADMIN_API_KEY is not set: the Dagster UI and POST /admin/run-jobs refuse every request "
              "until you set it (one key, or a comma-separated list).", file=sys.stderr, flush=True)
    me = [sys.executable, "-m", "heatmap_pipeline.runtime.cli"]
    commands = {
        "dagster-daemon": [sys.executable, "-m", "dagster._daemon", "run", "-w", str(workspace)],
        "webserver": [*me, "webserver", "--host", args.host, "--port", str(ui_port), "--data-dir", str(settings.home)],
        "admin API": [*me, "admin", "--host", args.admin_host or settings.admin_host, "--port", str(admin_port),
                      "--data-dir", str(settings.home)],
    }
    print(f"heatmap-pipeline: DAGSTER_HOME={settings.dagster_home}; Dagster UI http://{args.host}:{ui_port}; "
          f"admin API http://{args.admin_host or settings.admin_host}:{admin_port}/admin/run-jobs (docs at /docs)", flush=True)
    # Stop the three children on Ctrl-C and on SIGTERM (a service manager), even if started in the background.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    env = child_environment(settings, **overrides)
    processes = {name: subprocess.Popen(command, env=env) for name, command in commands.items()}
    started, demo_progress = time.monotonic(), DemoWeekProgress(settings) if settings.demo_mode else None
    try:
        while True:
            for name, process in processes.items():
                if process.poll() is not None:
                    print(f"heatmap-pipeline: {name} exited with code {process.returncode}; stopping the others",
                          file=sys.stderr, flush=True)
                    return process.returncode or 1
            if demo_progress is not None and demo_progress.report(time.monotonic() - started):
                demo_progress = None
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(processes)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Create or migrate the warehouse tables and the Dagster instance's storage (idempotent).

    ``dev`` does this at start. In a deployment run it once before the webserver, the daemon and
    the workers start, so they do not race each other creating the same tables."""
    settings = prepare_environment(args.data_dir, demo_data=False)
    export_environment(child_environment(settings))  # the instance's dagster.yaml reads DAGSTER_PG_* from it
    from heatmap_pipeline.warehouse.db import redact

    migrate_warehouse(settings)
    print(f"heatmap-pipeline: warehouse tables are up to date in {redact(settings.warehouse_url)}", flush=True)
    create_instance_storage(str(settings.dagster_home))
    print(f"heatmap-pipeline: Dagster instance storage is up to date (DAGSTER_HOME={settings.dagster_home})", flush=True)
    return 0


def cmd_daemon(args: argparse.Namespace) -> int:
    """The Dagster daemon alone (schedules, sensors, run queue, run monitoring and retries)."""
    settings = prepare_environment(args.data_dir, demo_data=False)
    workspace = write_workspace(settings.home)
    print(f"heatmap-pipeline: Dagster daemon on DAGSTER_HOME={settings.dagster_home}, workspace {workspace}", flush=True)
    # Replace this process: the daemon then gets the service manager's signals itself.
    os.execve(sys.executable, [sys.executable, "-m", "dagster._daemon", "run", "-w", str(workspace)],
              child_environment(settings))
    return 0  # not reached


def cmd_webserver(args: argparse.Namespace) -> int:
    """The Dagster webserver alone, behind the API-key check."""
    settings = prepare_environment(args.data_dir, demo_data=False)
    export_environment(child_environment(settings))  # Dagster's instance and code location read it
    from heatmap_pipeline.web.webserver import serve_webserver

    try:
        serve_webserver(
            write_workspace(settings.home), args.host, args.port or settings.dagster_ui_port,
            settings.admin_api_keys, settings.dagster_ui_anonymous_read_only,
        )
    except KeyboardInterrupt:
        pass
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    """The admin API alone (POST /admin/run-jobs); it launches runs through DAGSTER_GRAPHQL_URL."""
    settings = prepare_environment(args.data_dir, demo_data=False)
    import logging

    import uvicorn

    from heatmap_pipeline.web.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not settings.admin_api_keys:
        print("heatmap-pipeline: ADMIN_API_KEY is not set: POST /admin/run-jobs answers 503 until you set it.",
              file=sys.stderr, flush=True)
    host, port = args.host or settings.admin_host, args.port or settings.admin_port
    print(f"heatmap-pipeline: admin API on http://{host}:{port}/admin/run-jobs, launching through "
          f"{settings.dagster_graphql_url}", flush=True)
    app = create_app(settings)

    class AdminServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            app.state.shutting_down.set()  # before uvicorn waits for open requests: waiting ones answer now
            super().handle_exit(sig, frame)

    # No uvicorn access log (app.py logs paths without query strings, which could hold a key).
    AdminServer(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)).run()
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    """Materialize a date range in this process, recorded in the instance so the UI shows the runs.

    A heatmap is computed only from a loaded day: when a day's ETL fails here, or (``--job heatmap``)
    Dagster does not report its game_events partition as materialized by its latest attempt, that
    day's heatmaps are not run but reported SKIPPED with the reason. Any failure or skip exits 1."""
    settings = prepare_environment(args.data_dir)
    # The runs execute here: Dagster reads DAGSTER_HOME, and the resources EnvVar("DATABASE_URL"), from os.environ.
    export_environment(child_environment(settings))
    import dagster as dg

    from heatmap_pipeline.definitions import build_definitions
    from heatmap_pipeline.defs.partitions import date_partitions
    from heatmap_pipeline.orchestration import (
        ETL_JOB, HEATMAP_JOB, TRIGGER_TAG, etl_needed_because, game_events_status, run_failure_reason,
    )

    defs = build_definitions(settings)
    start, end = dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end)
    if end < start:
        _fail(f"--end {end} is before --start {start}")
    levels = args.levels.split(",") if args.levels else list(settings.heatmap_levels)
    unknown = [level for level in levels if level not in settings.heatmap_levels]
    if unknown:
        _fail(f"--levels {','.join(unknown)} not in HEATMAP_LEVELS ({','.join(settings.heatmap_levels)})")
    tags = {TRIGGER_TAG: "cli_backfill"}
    counts = {"ok": 0, "FAILED": 0, "SKIPPED": 0}

    def report(name: str, result: dg.ExecuteInProcessResult) -> None:
        outcome = "ok" if result.success else "FAILED"
        counts[outcome] += 1
        reason = None if result.success else run_failure_reason(instance, result.run_id)
        print(f"{name}: {outcome} run {result.run_id}{f': {reason}' if reason else ''}", flush=True)

    with dg.DagsterInstance.get() as instance:
        dates = date_partitions(settings)
        day = start
        while day <= end:
            key = day.isoformat()
            blocked = None  # why this day's heatmaps must not run
            if args.job in ("etl", "all"):
                result = defs.resolve_job_def(ETL_JOB).execute_in_process(
                    partition_key=key, instance=instance, raise_on_error=False, tags=tags
                )
                report(f"{ETL_JOB} {key}", result)
                if not result.success:
                    blocked = f"{ETL_JOB} {key} failed: run {result.run_id}"
            elif (why := etl_needed_because(key, game_events_status(instance, dates, key))) is not None:
                blocked = f"{why}; load it first: heatmap-pipeline backfill --job etl --start {key} --end {key}"
            if args.job in ("heatmap", "all"):
                for level in levels:
                    name = f"{HEATMAP_JOB} {key}|{level}"
                    if blocked:
                        counts["SKIPPED"] += 1
                        print(f"{name}: SKIPPED ({blocked})", flush=True)
                        continue
                    result = defs.resolve_job_def(HEATMAP_JOB).execute_in_process(
                        partition_key=dg.MultiPartitionKey({"date": key, "level": level}),
                        instance=instance,
                        raise_on_error=False,
                        tags=tags,
                    )
                    report(name, result)
            day += dt.timedelta(days=1)
    print(f"heatmap-pipeline backfill: {counts['ok']} ok, {counts['FAILED']} failed, {counts['SKIPPED']} skipped",
          file=sys.stderr if counts["FAILED"] or counts["SKIPPED"] else sys.stdout, flush=True)
    return 1 if counts["FAILED"] or counts["SKIPPED"] else 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Every source row against game_events + quarantined_events, over all loaded days.

    Each source row belongs to exactly one day (the extraction's filing rule); on every day Dagster
    loaded (or the warehouse holds rows of), source rows must equal clean + quarantined rows. Rows
    in neither, and stored rows without a source row, are named: exit 1. Rows that arrived after
    their day's last load started are reported as waiting; rows of days never loaded, per day."""
    settings = prepare_environment(args.data_dir, demo_data=False)
    import json

    import dagster as dg

    from heatmap_pipeline.orchestration import GAME_EVENTS, materialized_partitions, run_start_of_latest_materialization
    from heatmap_pipeline.warehouse.db import UnsupportedDatabase, get_engine, redact
    from heatmap_pipeline.warehouse.reconcile import describe, reconcile
    from heatmap_pipeline.warehouse.source import SourceSchemaError, check_source_table

    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        loads = {
            dt.date.fromisoformat(key): run_start_of_latest_materialization(instance, GAME_EVENTS, key)
            for key in sorted(materialized_partitions(instance, GAME_EVENTS))
        }
    source, warehouse = get_engine(settings.source_url), get_engine(settings.warehouse_url)
    try:
        check_source_table(source)
        result = reconcile(source, warehouse, loads, settings.partition_start_date, compare_ids=args.ids)
    except (SourceSchemaError, UnsupportedDatabase) as exc:
        _fail(str(exc))
    if args.json:
        days = [
            {"day": d.day.isoformat(), "source": d.source, "clean": d.clean, "quarantined": d.quarantined,
             "loaded": d.loaded, "missing": d.missing, "waiting": d.waiting, "extra": d.extra}
            for d in result.days
        ]
        print(json.dumps({**result.summary(), "days": days}, indent=2), flush=True)
    else:
        print(f"heatmap-pipeline reconcile: source {redact(settings.source_url)}, warehouse "
              f"{redact(settings.warehouse_url)}, {len(loads)} day(s) loaded per Dagster", flush=True)
        for line in describe(result):
            print(line, flush=True)
    return 0 if result.passed else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heatmap-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="run the Dagster daemon (schedules, sensors), the authenticated UI and the admin API")
    dev.add_argument("--host", default="127.0.0.1", help="interface of the UI (and of the admin API unless --admin-host)")
    dev.add_argument("--port", type=int, help="Dagster UI port (default $DAGSTER_UI_PORT or 3000)")
    dev.add_argument("--admin-host", help="interface of the admin API (default: --host)")
    dev.add_argument("--admin-port", type=int, help="admin API port (default $ADMIN_PORT or 8000)")
    dev.add_argument("--data-dir", help="data directory (default $HEATMAP_PIPELINE_HOME or ./.heatmap_pipeline)")
    dev.set_defaults(func=cmd_dev)
    webserver = sub.add_parser("webserver", help="run only the Dagster webserver, requiring ADMIN_API_KEY")
    webserver.add_argument("--host", default="127.0.0.1")
    webserver.add_argument("--port", type=int, help="default $DAGSTER_UI_PORT or 3000")
    webserver.add_argument("--data-dir")
    webserver.set_defaults(func=cmd_webserver)
    admin = sub.add_parser("admin", help="run only the admin API (POST /admin/run-jobs)")
    admin.add_argument("--host", help="default $ADMIN_HOST or 127.0.0.1")
    admin.add_argument("--port", type=int, help="default $ADMIN_PORT or 8000")
    admin.add_argument("--data-dir")
    admin.set_defaults(func=cmd_admin)
    migrate = sub.add_parser("migrate", help="create or migrate the warehouse tables and the Dagster instance storage")
    migrate.add_argument("--data-dir")
    migrate.set_defaults(func=cmd_migrate)
    daemon = sub.add_parser("daemon", help="run only the Dagster daemon (schedules, sensors, run queue)")
    daemon.add_argument("--data-dir")
    daemon.set_defaults(func=cmd_daemon)
    backfill = sub.add_parser("backfill", help="materialize a date range now, one run per day (and per level)")
    backfill.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    backfill.add_argument("--end", required=True, help="last day, YYYY-MM-DD (inclusive)")
    backfill.add_argument("--job", choices=["etl", "heatmap", "all"], default="all")
    backfill.add_argument("--levels", help="comma-separated levels (default: HEATMAP_LEVELS)")
    backfill.add_argument("--data-dir")
    backfill.set_defaults(func=cmd_backfill)
    reconcile = sub.add_parser(
        "reconcile", help="prove every source row is in game_events or quarantined_events; name any that is in neither"
    )
    reconcile.add_argument("--ids", action="store_true", help="match ids on every loaded day, not only where counts differ")
    reconcile.add_argument("--json", action="store_true", help="print the result as JSON")
    reconcile.add_argument("--data-dir")
    reconcile.set_defaults(func=cmd_reconcile)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())

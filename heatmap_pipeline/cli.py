"""``heatmap-pipeline``: run the pipeline on its embedded default, and friends."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import subprocess
import sys
from pathlib import Path

from heatmap_pipeline.settings import SettingsError, load_settings


def _fail(message: str) -> None:
    print(f"heatmap-pipeline: {message}", file=sys.stderr)
    raise SystemExit(2)


def prepare_environment(data_dir: str | None) -> dict[str, str]:
    """Validate settings, create the data directory and DAGSTER_HOME; return the child environment."""
    env = dict(os.environ)
    if data_dir:
        env["HEATMAP_PIPELINE_HOME"] = data_dir
    env.setdefault("HEATMAP_PIPELINE_HOME", str(Path(".heatmap_pipeline").resolve()))
    env["HEATMAP_PIPELINE_HOME"] = str(Path(env["HEATMAP_PIPELINE_HOME"]).resolve())
    try:
        settings = load_settings(env)
    except SettingsError as exc:
        _fail(str(exc))
    from heatmap_pipeline.instance import prepare_dagster_home

    home = Path(env["HEATMAP_PIPELINE_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    env.setdefault("DAGSTER_HOME", str(home / "dagster_home"))
    prepare_dagster_home(Path(env["DAGSTER_HOME"]))
    if settings.demo_mode:
        from heatmap_pipeline import demo
        from heatmap_pipeline.db import get_engine

        inserted = demo.top_up(get_engine(settings.source_url))
        print(
            f"heatmap-pipeline: DEMO DATA - DATABASE_URL is unset, using synthetic telemetry in "
            f"{settings.demo_database_path} ({inserted} new events). Set DATABASE_URL to use a real game database.",
            flush=True,
        )
    return env


def cmd_dev(args: argparse.Namespace) -> int:
    env = prepare_environment(args.data_dir)
    command = [
        sys.executable, "-m", "dagster", "dev",
        "-m", "heatmap_pipeline.definitions",
        "-h", args.host, "-p", str(args.port),
    ]
    print(f"heatmap-pipeline: Dagster UI on http://{args.host}:{args.port} (DAGSTER_HOME={env['DAGSTER_HOME']})", flush=True)
    process = subprocess.Popen(command, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        return process.wait()


def cmd_backfill(args: argparse.Namespace) -> int:
    """Materialize a date range in this process, recorded in the instance so the UI shows the runs."""
    env = prepare_environment(args.data_dir)
    os.environ.update(env)
    import dagster as dg

    from heatmap_pipeline.definitions import build_definitions

    settings = load_settings()
    defs = build_definitions(settings)
    start, end = dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end)
    if end < start:
        _fail(f"--end {end} is before --start {start}")
    levels = args.levels.split(",") if args.levels else list(settings.heatmap_levels)
    unknown = [level for level in levels if level not in settings.heatmap_levels]
    if unknown:
        _fail(f"--levels {','.join(unknown)} not in HEATMAP_LEVELS ({','.join(settings.heatmap_levels)})")
    failures = 0
    with dg.DagsterInstance.get() as instance:
        day = start
        while day <= end:
            key = day.isoformat()
            if args.job in ("etl", "all"):
                result = defs.get_job_def("etl_job").execute_in_process(
                    partition_key=key, instance=instance, raise_on_error=False, tags={"heatmap_pipeline/trigger": "cli_backfill"}
                )
                failures += not result.success
                print(f"etl_job {key}: {'ok' if result.success else 'FAILED'} run {result.run_id}", flush=True)
            if args.job in ("heatmap", "all"):
                for level in levels:
                    result = defs.get_job_def("heatmap_job").execute_in_process(
                        partition_key=dg.MultiPartitionKey({"date": key, "level": level}),
                        instance=instance,
                        raise_on_error=False,
                        tags={"heatmap_pipeline/trigger": "cli_backfill"},
                    )
                    failures += not result.success
                    print(f"heatmap_job {key}|{level}: {'ok' if result.success else 'FAILED'} run {result.run_id}", flush=True)
            day += dt.timedelta(days=1)
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heatmap-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="run the Dagster UI, daemon (schedules, sensors) and admin API")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000, help="Dagster UI port (default 3000)")
    dev.add_argument("--data-dir", help="data directory (default $HEATMAP_PIPELINE_HOME or ./.heatmap_pipeline)")
    dev.set_defaults(func=cmd_dev)
    backfill = sub.add_parser("backfill", help="materialize a date range now, one run per day (and per level)")
    backfill.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    backfill.add_argument("--end", required=True, help="last day, YYYY-MM-DD (inclusive)")
    backfill.add_argument("--job", choices=["etl", "heatmap", "all"], default="all")
    backfill.add_argument("--levels", help="comma-separated levels (default: HEATMAP_LEVELS)")
    backfill.add_argument("--data-dir")
    backfill.set_defaults(func=cmd_backfill)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())

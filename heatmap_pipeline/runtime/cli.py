"""``heatmap-pipeline``: run the pipeline on its embedded default, and friends."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from heatmap_pipeline.settings import SettingsError, load_settings


def _fail(message: str) -> None:
    print(f"heatmap-pipeline: {message}", file=sys.stderr)
    raise SystemExit(2)


def prepare_environment(data_dir: str | None, demo_data: bool = True) -> dict[str, str]:
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
    from heatmap_pipeline.runtime.instance import prepare_dagster_home

    home = Path(env["HEATMAP_PIPELINE_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    env.setdefault("DAGSTER_HOME", str(home / "dagster_home"))
    prepare_dagster_home(Path(env["DAGSTER_HOME"]))
    if settings.demo_mode and demo_data:
        from heatmap_pipeline.runtime import demo
        from heatmap_pipeline.warehouse.db import get_engine

        inserted = demo.top_up(get_engine(settings.source_url))
        print(
            f"heatmap-pipeline: DEMO DATA - DATABASE_URL is unset, using synthetic telemetry in "
            f"{settings.demo_database_path} ({inserted} new events). Set DATABASE_URL to use a real game database.",
            flush=True,
        )
    return env


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


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def cmd_dev(args: argparse.Namespace) -> int:
    """The daemon (schedules, sensors, run queue), the authenticated webserver and the admin API."""
    env = prepare_environment(args.data_dir)
    settings = load_settings(env)
    from heatmap_pipeline.warehouse.db import get_engine
    from heatmap_pipeline.warehouse.migrations import ensure_warehouse_schema

    ensure_warehouse_schema(get_engine(settings.warehouse_url))  # once, before the three processes start
    ui_port = args.port or settings.dagster_ui_port
    admin_port = args.admin_port or settings.admin_port
    if not env.get("DAGSTER_GRAPHQL_URL", "").strip():
        env["DAGSTER_GRAPHQL_URL"] = f"http://{_loopback(args.host)}:{ui_port}/graphql"
    workspace = write_workspace(Path(env["HEATMAP_PIPELINE_HOME"]))
    create_instance_storage(env["DAGSTER_HOME"])
    if not settings.admin_api_keys and settings.demo_mode:
        # The embedded default must open in a browser, but there is no built-in key: generate one
        # per data directory, unguessable, and say where it is.
        key_file = Path(env["HEATMAP_PIPELINE_HOME"]) / "admin_api_key"
        env["ADMIN_API_KEY"] = demo_api_key(key_file)
        print(f"heatmap-pipeline: ADMIN_API_KEY is not set; the embedded demo uses a generated key stored in {key_file}.\n"
              f"  Log in to the UI with any user name and that key as password, and send it as x-api-key to the admin API:\n"
              f"  export ADMIN_API_KEY=$(cat {key_file})", flush=True)
    elif not settings.admin_api_keys:
        print("heatmap-pipeline: ADMIN_API_KEY is not set: the Dagster UI and POST /admin/run-jobs refuse every request "
              "until you set it (one key, or a comma-separated list).", file=sys.stderr, flush=True)
    me = [sys.executable, "-m", "heatmap_pipeline.runtime.cli"]
    commands = {
        "dagster-daemon": [sys.executable, "-m", "dagster._daemon", "run", "-w", str(workspace)],
        "webserver": [*me, "webserver", "--host", args.host, "--port", str(ui_port), "--data-dir", env["HEATMAP_PIPELINE_HOME"]],
        "admin API": [*me, "admin", "--host", args.admin_host or settings.admin_host, "--port", str(admin_port),
                      "--data-dir", env["HEATMAP_PIPELINE_HOME"]],
    }
    print(f"heatmap-pipeline: DAGSTER_HOME={env['DAGSTER_HOME']}; Dagster UI http://{args.host}:{ui_port}; "
          f"admin API http://{args.admin_host or settings.admin_host}:{admin_port}/admin/run-jobs (docs at /docs)", flush=True)
    # Stop the three children on Ctrl-C and on SIGTERM (a service manager), even if started in the background.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    processes = {name: subprocess.Popen(command, env=env) for name, command in commands.items()}
    try:
        while True:
            for name, process in processes.items():
                if process.poll() is not None:
                    print(f"heatmap-pipeline: {name} exited with code {process.returncode}; stopping the others",
                          file=sys.stderr, flush=True)
                    return process.returncode or 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(processes)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Create or migrate the warehouse tables and the Dagster instance's storage (idempotent).

    ``dev`` does this at start. In a deployment run it once before the webserver, the daemon and
    the workers start, so they do not race each other creating the same tables."""
    env = prepare_environment(args.data_dir, demo_data=False)
    settings = load_settings(env)
    from heatmap_pipeline.warehouse.db import get_engine, redact
    from heatmap_pipeline.warehouse.migrations import ensure_warehouse_schema

    ensure_warehouse_schema(get_engine(settings.warehouse_url))
    print(f"heatmap-pipeline: warehouse tables are up to date in {redact(settings.warehouse_url)}", flush=True)
    create_instance_storage(env["DAGSTER_HOME"])  # its dagster.yaml reads DAGSTER_PG_* from our environment
    print(f"heatmap-pipeline: Dagster instance storage is up to date (DAGSTER_HOME={env['DAGSTER_HOME']})", flush=True)
    return 0


def cmd_daemon(args: argparse.Namespace) -> int:
    """The Dagster daemon alone (schedules, sensors, run queue, run monitoring and retries)."""
    env = prepare_environment(args.data_dir, demo_data=False)
    workspace = write_workspace(Path(env["HEATMAP_PIPELINE_HOME"]))
    print(f"heatmap-pipeline: Dagster daemon on DAGSTER_HOME={env['DAGSTER_HOME']}, workspace {workspace}", flush=True)
    # Replace this process: the daemon then gets the service manager's signals itself.
    os.execve(sys.executable, [sys.executable, "-m", "dagster._daemon", "run", "-w", str(workspace)], env)
    return 0  # not reached


def cmd_webserver(args: argparse.Namespace) -> int:
    """The Dagster webserver alone, behind the API-key check."""
    env = prepare_environment(args.data_dir, demo_data=False)
    os.environ.update(env)
    settings = load_settings()
    from heatmap_pipeline.web.webserver import serve_webserver

    try:
        serve_webserver(
            write_workspace(Path(env["HEATMAP_PIPELINE_HOME"])), args.host, args.port or settings.dagster_ui_port,
            settings.admin_api_keys, settings.dagster_ui_anonymous_read_only,
        )
    except KeyboardInterrupt:
        pass
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    """The admin API alone (POST /admin/run-jobs); it launches runs through DAGSTER_GRAPHQL_URL."""
    env = prepare_environment(args.data_dir, demo_data=False)
    os.environ.update(env)
    settings = load_settings()
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
                result = defs.resolve_job_def("etl_job").execute_in_process(
                    partition_key=key, instance=instance, raise_on_error=False, tags={"heatmap_pipeline/trigger": "cli_backfill"}
                )
                failures += not result.success
                print(f"etl_job {key}: {'ok' if result.success else 'FAILED'} run {result.run_id}", flush=True)
            if args.job in ("heatmap", "all"):
                for level in levels:
                    result = defs.resolve_job_def("heatmap_job").execute_in_process(
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())

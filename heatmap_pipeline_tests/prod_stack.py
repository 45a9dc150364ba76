"""The production stack for the slow tests: deploy/dagster.yaml on fresh PostgreSQL databases,
and real processes on free ports: ``heatmap-pipeline migrate``, ``webserver``, ``daemon`` and
``admin``, and a ``dagster-celery worker`` on the local RabbitMQ.

Two fresh databases: one for the Dagster instance (runs, event logs, schedules), one for the game
source and the warehouse (the same one, as with a single DATABASE_URL).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from heatmap_pipeline_tests.admin_servers import free_port, stop, wait_until_answering

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
KEY = "prod-test-key"
BROKER_URL = os.environ.get("HEATMAP_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
LEVELS = "1,2"


def broker_unavailable_reason() -> str | None:
    from urllib.parse import urlsplit

    parts = urlsplit(BROKER_URL)
    try:
        with socket.create_connection((parts.hostname, parts.port or 5672), timeout=3):
            return None
    except OSError as exc:
        return f"Celery broker not reachable at {parts.hostname}:{parts.port or 5672}: {exc}"


def require_broker() -> None:
    from heatmap_pipeline_tests.conftest import REQUIRE_POSTGRES

    reason = broker_unavailable_reason()
    if reason:
        if REQUIRE_POSTGRES:  # CI: the real services are required, not optional
            pytest.fail(f"{reason} (required under CI)")
        pytest.skip(reason)


@contextlib.contextmanager
def own_broker_vhost():
    """BROKER_URL on a RabbitMQ virtual host of its own, deleted afterwards.

    A Celery worker takes every task on its virtual host's queue: two stacks on one vhost (two test runs
    on this machine) would each run some of the other's runs, with its own DATABASE_URL. Made with
    rabbitmqctl when the broker is this machine's and the URL names the default vhost; otherwise (another
    broker, a vhost chosen in HEATMAP_TEST_BROKER_URL, no rabbitmqctl or no right to use it) BROKER_URL as it is."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(BROKER_URL)
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None or parts.hostname not in ("127.0.0.1", "localhost") or parts.path not in ("", "/", "//"):
        yield BROKER_URL
        return

    def ctl(*args: str) -> None:
        subprocess.run([rabbitmqctl, "-q", *args], check=True, capture_output=True, timeout=60)

    vhost = f"hp_test_{uuid.uuid4().hex[:12]}"
    try:
        ctl("add_vhost", vhost)
    except (OSError, subprocess.SubprocessError):
        yield BROKER_URL
        return
    try:
        ctl("set_permissions", "-p", vhost, parts.username or "guest", ".*", ".*", ".*")
        yield urlunsplit(parts._replace(path=f"/{vhost}"))
    finally:
        ctl("delete_vhost", vhost)


def instance_env(instance_db_url: str, broker_url: str = BROKER_URL) -> dict[str, str]:
    """The DAGSTER_PG_* variables deploy/dagster.yaml reads, for a database URL, and its broker's."""
    url = sa.engine.make_url(instance_db_url)
    return {
        "DAGSTER_PG_HOST": url.host or "127.0.0.1",
        "DAGSTER_PG_PORT": str(url.port or 5432),
        "DAGSTER_PG_USERNAME": url.username or "postgres",
        "DAGSTER_PG_PASSWORD": url.password or "",
        "DAGSTER_PG_DB": url.database,
        "DAGSTER_CELERY_BROKER_URL": broker_url,
    }


@dataclass
class Stack:
    root: Path
    env: dict[str, str]
    instance_db_url: str
    warehouse_url: str
    ui_port: int
    admin_port: int
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    scheduled_run_ids: list[str] = field(default_factory=list)

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = httpx.post(f"{self.ui_url}/graphql", headers={"x-api-key": KEY},
                              json={"query": query, "variables": variables or {}}, timeout=60)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body
        return body["data"]

    def dagster_runs(self) -> list[dict]:
        """The Dagster ``runs`` table, read straight from PostgreSQL."""
        engine = sa.create_engine(self.instance_db_url)
        try:
            with engine.connect() as conn:
                return [dict(r) for r in conn.execute(sa.text("SELECT run_id, pipeline_name, status FROM runs")).mappings()]
        finally:
            engine.dispose()

    def wait_for_runs(self, run_ids, timeout: float = 60.0) -> dict[str, str]:
        """Wait until every run ended; their statuses, read from the PostgreSQL runs table."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = {r["run_id"]: r["status"] for r in self.dagster_runs() if r["run_id"] in set(run_ids)}
            if len(statuses) == len(set(run_ids)) and all(s in ("SUCCESS", "FAILURE", "CANCELED") for s in statuses.values()):
                return statuses
            if time.monotonic() > deadline:
                raise TimeoutError(f"runs did not finish in {timeout}s: {statuses}; see {self.root / 'logs'}")
            self.check_alive()
            time.sleep(0.5)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; see {self.root / 'logs' / name}.log")

    def process_tree(self, name: str) -> set[int]:
        """The pid of a started process and of all its descendants (from /proc)."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        found, todo = set(), [self.processes[name].pid]
        while todo:
            pid = todo.pop()
            found.add(pid)
            todo.extend(children.get(pid, []))
        return found


def _schedule_ticks_before_the_daemon(env: dict[str, str]) -> list[str]:
    """The real scheduler iteration (as the daemon runs it) at 00:00:30 UTC today, after one at
    23:59:30 yesterday: both schedules tick at midnight and queue their runs in the instance. Done
    before the daemon starts, so the daemon's own clock sees these ticks as the latest; its run
    queue then launches the runs. (A real tick would mean waiting for the next interval.)"""
    import logging

    import dagster as dg
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import freeze_time
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster._scheduler.scheduler import launch_scheduled_runs

    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name="heatmap_pipeline.definitions"),
        location_name="heatmap_pipeline",
    )
    midnight = dt.datetime.combine(dt.datetime.now(dt.timezone.utc).date(), dt.time(0), dt.timezone.utc)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        with (
            dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance,
            WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as context,
        ):
            for when in (midnight - dt.timedelta(seconds=30), midnight + dt.timedelta(seconds=30)):
                with freeze_time(when):
                    list(launch_scheduled_runs(context, logging.getLogger("test"), end_datetime_utc=when,
                                               iteration_times={}, max_catchup_runs=1))
            return [run.run_id for run in instance.get_runs()]


@contextlib.contextmanager
def production_stack(root: Path, source_rows: list[dict], extra_env: dict[str, str] | None = None, celery: bool = True):
    """Start the stack; yield a :class:`Stack`. Everything it started is stopped at the end."""
    from heatmap_pipeline_tests.conftest import postgres_database
    from heatmap_pipeline_tests.support import write_source_events

    if celery:
        require_broker()
    with (
        postgres_database() as instance_db_url,
        postgres_database() as warehouse_url,
        own_broker_vhost() if celery else contextlib.nullcontext(BROKER_URL) as broker_url,
    ):
        write_source_events(warehouse_url, source_rows)
        home, dagster_home, logs = root / "home", root / "dagster_home", root / "logs"
        for path in (home, dagster_home, logs):
            path.mkdir(parents=True, exist_ok=True)
        shutil.copy(DEPLOY / "dagster.yaml", dagster_home / "dagster.yaml")
        ui_port, admin_port = free_port(), free_port()
        env = {
            # dagster-celery starts `celery` from PATH: the interpreter's own bin directory first.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
            "DATABASE_URL": warehouse_url,
            "HEATMAP_PIPELINE_HOME": str(home),
            "DAGSTER_HOME": str(dagster_home),
            "HEATMAP_LEVELS": LEVELS,
            "ADMIN_API_KEY": KEY,
            "DAGSTER_UI_PORT": str(ui_port),
            "DAGSTER_GRAPHQL_URL": f"http://127.0.0.1:{ui_port}/graphql",
            "ETL_INTERVAL_MINUTES": "1440",  # the only ticks are the ones queued before the daemon starts
            "HEATMAP_INTERVAL_MINUTES": "1440",
            # Two days' ETL runs at once (yesterday's and today's at midnight) can deadlock on the
            # partition swap (40P01); that is a retried error, as in production, with a short delay.
            "DB_RETRY_MAX_RETRIES": "3",
            "DB_RETRY_DELAY_SECONDS": "1",
            "ADMIN_SENSOR_INTERVAL_SECONDS": "2",
            **instance_env(instance_db_url, broker_url),
            **(extra_env or {}),
        }
        stack = Stack(root, env, instance_db_url, warehouse_url, ui_port, admin_port)
        cli = [sys.executable, "-m", "heatmap_pipeline.runtime.cli"]
        subprocess.run([*cli, "migrate"], env=env, check=True, capture_output=True, timeout=120)
        stack.scheduled_run_ids = _schedule_ticks_before_the_daemon(env)
        commands = {
            "webserver": [*cli, "webserver", "--port", str(ui_port)],
            "daemon": [*cli, "daemon"],
            "admin": [*cli, "admin", "--port", str(admin_port)],
        }
        if celery:
            worker = Path(sys.executable).parent / "dagster-celery"
            commands["worker"] = [str(worker), "worker", "start", "-A", "dagster_celery.app", "-y",
                                  str(DEPLOY / "celery.yaml"), "-n", f"heatmap-test-{os.getpid()}", "--",
                                  "--concurrency=2"]
        try:
            for name, command in commands.items():
                with open(logs / f"{name}.log", "w") as log:
                    stack.processes[name] = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                             cwd=REPO, start_new_session=True)
            wait_until_answering(f"{stack.ui_url}/server_info", stack.processes["webserver"])
            wait_until_answering(f"{stack.admin_url}/healthz", stack.processes["admin"])
            yield stack
        finally:
            for process in stack.processes.values():
                stop(process)
                with contextlib.suppress(ProcessLookupError):  # a worker's pool children, a daemon's code server
                    os.killpg(process.pid, 9)

"""Every environment variable the project reads, parsed and validated in one place.

Only this module reads ``os.environ``. The variable names of the old APScheduler runner
(``ETL_INTERVAL_MINUTES``, ``HEATMAP_INTERVAL_MINUTES``, ``HEATMAP_LEVELS``,
``ADMIN_API_KEY``, ``DATABASE_URL``) keep their meaning, so an existing ``.env`` works.
A bad value raises :class:`SettingsError` naming the variable, the value and what is allowed.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

# (name, default, description) - the README's table of variables is generated from this list
# by hand; keep them in step (a test checks that every name here appears in the README).
VARIABLES: list[tuple[str, str, str]] = [
    ("DATABASE_URL", "(unset: embedded SQLite demo in the data directory)", "Source game database holding the `events` table."),
    ("WAREHOUSE_DATABASE_URL", "same as DATABASE_URL", "Where the pipeline's own tables are written."),
    ("ETL_INTERVAL_MINUTES", "15", "Minutes between ETL schedule ticks (1-1440)."),
    ("HEATMAP_INTERVAL_MINUTES", "30", "Minutes between heatmap schedule ticks (1-1440)."),
    ("HEATMAP_LEVELS", "1,2,3", "Comma-separated level names; the static `level` partitions."),
    ("HEATMAP_DEFAULT_LEVEL", "first of HEATMAP_LEVELS", "Level given to position events whose payload names none."),
    ("HEATMAP_GRID_SIZE", "50", "Cells per axis of every heatmap (2-1000)."),
    ("HEATMAP_BOUNDS", "(none: each day's own min/max)", 'Fixed world bounds per level, JSON: {"1": [xmin, xmax, ymin, ymax]}.'),
    ("PARTITION_START_DATE", "2025-01-01", "First daily partition (YYYY-MM-DD, UTC)."),
    ("POSITION_EVENT_TYPES", "move,position", "event_type values that must carry x and y."),
    ("FUTURE_TOLERANCE_MINUTES", "10", "Events stamped more than this after their created_at (or the run's clock) are quarantined."),
    ("MAX_PAYLOAD_BYTES", "65536", "Payloads larger than this are quarantined."),
    ("ETL_CHUNK_SIZE", "50000", "Rows per chunk when streaming events between databases."),
    ("DB_RETRY_MAX_RETRIES", "3", "Retries of an asset step after a transient database error (0-10)."),
    ("DB_RETRY_DELAY_SECONDS", "10", "First retry delay in seconds, doubled at each retry (0-3600)."),
    ("ADMIN_API_KEY", "(none: admin endpoint answers 503)", "One key or a comma-separated list (rotation) for the admin API and the UI."),
    ("ADMIN_HOST", "127.0.0.1", "Interface the admin API (POST /admin/run-jobs) listens on."),
    ("ADMIN_PORT", "8000", "Port of the admin API (1-65535)."),
    ("DAGSTER_UI_PORT", "3000", "Port of the authenticated Dagster webserver started by `heatmap-pipeline dev` (1-65535)."),
    ("DAGSTER_GRAPHQL_URL", "http://127.0.0.1:$DAGSTER_UI_PORT/graphql", "Dagster GraphQL endpoint the admin API launches runs through."),
    ("ADMIN_WAIT_TIMEOUT_SECONDS", "600", "How long POST /admin/run-jobs waits for its runs before answering 202 (1-86400)."),
    ("ADMIN_SENSOR_INTERVAL_SECONDS", "10", "Minimum seconds between admin_trigger_sensor ticks (1-3600)."),
    ("DAGSTER_UI_ANONYMOUS_READ_ONLY", "false", "true: the Dagster UI is readable without a key (launches still need one)."),
    ("HEATMAP_PIPELINE_HOME", "./.heatmap_pipeline", "Data directory of the embedded default (SQLite file, DAGSTER_HOME)."),
    # --- production: alerts and readiness ---
    ("RUN_FAILURE_WEBHOOK_URL", "(none: failures are only logged)", "http(s) URL that run_failure_sensor POSTs a JSON message to when a run fails."),
    ("READYZ_MAX_HEARTBEAT_AGE_SECONDS", "120", "GET /readyz fails when a Dagster daemon's last heartbeat is older than this (10-3600)."),
]


class SettingsError(ValueError):
    """A setting has a value we cannot run with. The message names the variable."""


@dataclass(frozen=True)
class Bounds:
    x_min: float
    x_max: float
    y_min: float
    y_max: float

    def as_list(self) -> list[float]:
        return [self.x_min, self.x_max, self.y_min, self.y_max]


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    warehouse_database_url: str | None = None
    etl_interval_minutes: int = 15
    heatmap_interval_minutes: int = 30
    heatmap_levels: tuple[str, ...] = ("1", "2", "3")
    heatmap_default_level: str = "1"
    heatmap_grid_size: int = 50
    heatmap_bounds: Mapping[str, Bounds] = field(default_factory=dict)
    partition_start_date: dt.date = dt.date(2025, 1, 1)
    position_event_types: frozenset[str] = frozenset({"move", "position"})
    future_tolerance_minutes: float = 10.0
    max_payload_bytes: int = 65536
    etl_chunk_size: int = 50000
    db_retry_max_retries: int = 3
    db_retry_delay_seconds: float = 10.0
    admin_api_keys: tuple[str, ...] = field(default=(), repr=False)  # keys never reach logs
    admin_host: str = "127.0.0.1"
    admin_port: int = 8000
    dagster_ui_port: int = 3000
    dagster_graphql_url: str = "http://127.0.0.1:3000/graphql"
    admin_wait_timeout_seconds: float = 600.0
    admin_sensor_interval_seconds: int = 10
    dagster_ui_anonymous_read_only: bool = False
    home: Path = Path(".heatmap_pipeline")
    # --- production: alerts and readiness ---
    run_failure_webhook_url: str | None = field(default=None, repr=False)  # may hold a token: never logged
    readyz_max_heartbeat_age_seconds: float = 120.0

    @property
    def demo_mode(self) -> bool:
        """True when no DATABASE_URL is configured: the embedded SQLite demo source is used."""
        return self.database_url is None

    @property
    def demo_database_path(self) -> Path:
        return self.home / "heatmap_pipeline.sqlite"

    @property
    def source_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.demo_database_path.resolve()}"

    @property
    def warehouse_url(self) -> str:
        return self.warehouse_database_url or self.source_url


def _interval(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number of minutes; use 1 to 1440 (default {default}).") from None
    if not 1 <= value <= 1440:
        raise SettingsError(f"{name}={raw!r} is out of range; use 1 to 1440 minutes (default {default}).")
    return value


def _number(env: Mapping[str, str], name: str, default, lo, hi, cast=int):
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number; use {lo} to {hi} (default {default}).") from None
    if not (lo <= value <= hi) or (isinstance(value, float) and not math.isfinite(value)):
        raise SettingsError(f"{name}={raw!r} is out of range; use {lo} to {hi} (default {default}).")
    return value


_LEVEL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def parse_levels(raw: str, name: str = "HEATMAP_LEVELS") -> tuple[str, ...]:
    levels = [part.strip() for part in raw.split(",")]
    if not raw.strip() or any(not level for level in levels):
        raise SettingsError(f"{name}={raw!r} must be a comma-separated list of level names, e.g. 1,2,3.")
    bad = [level for level in levels if not _LEVEL_RE.match(level)]
    if bad:
        raise SettingsError(f"{name}={raw!r}: level names may only use letters, digits, '_', '.', '-' (bad: {', '.join(bad)}).")
    if len(set(levels)) != len(levels):
        raise SettingsError(f"{name}={raw!r} lists a level twice.")
    return tuple(levels)


def parse_bounds(raw: str, levels: tuple[str, ...]) -> dict[str, Bounds]:
    name = "HEATMAP_BOUNDS"
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(f'{name} is not valid JSON ({exc.msg}); expected {{"1": [xmin, xmax, ymin, ymax], ...}}.') from None
    if not isinstance(data, dict):
        raise SettingsError(f'{name} must be a JSON object like {{"1": [xmin, xmax, ymin, ymax]}}.')
    result: dict[str, Bounds] = {}
    for level, values in data.items():
        level = str(level)
        if level not in levels:
            raise SettingsError(f"{name} names level {level!r}, which is not in HEATMAP_LEVELS ({','.join(levels)}).")
        ok = (
            isinstance(values, list)
            and len(values) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        )
        if not ok:
            raise SettingsError(f"{name} for level {level!r} must be four finite numbers [xmin, xmax, ymin, ymax], got {values!r}.")
        x_min, x_max, y_min, y_max = (float(v) for v in values)
        if not (x_min < x_max and y_min < y_max):
            raise SettingsError(f"{name} for level {level!r} needs xmin < xmax and ymin < ymax, got {values!r}.")
        result[level] = Bounds(x_min, x_max, y_min, y_max)
    return result


def _database_url(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    from heatmap_pipeline.warehouse.db import normalize_database_url  # local import keeps settings import-light

    try:
        return normalize_database_url(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean; use true or false (default {str(default).lower()}).")


def _graphql_url(env: Mapping[str, str], ui_port: int) -> str:
    name = "DAGSTER_GRAPHQL_URL"
    raw = env.get(name, "").strip()
    if not raw:
        return f"http://127.0.0.1:{ui_port}/graphql"
    from urllib.parse import urlsplit

    parts = urlsplit(raw)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise SettingsError(f"{name}={raw!r} has an invalid port; expected e.g. http://127.0.0.1:3000/graphql.") from None
    if parts.username or parts.password:  # do not echo a password back
        raise SettingsError(f"{name} must not hold credentials; the admin API authenticates with ADMIN_API_KEY.")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise SettingsError(f"{name}={raw!r} is not an http(s) URL; expected e.g. http://127.0.0.1:3000/graphql.")
    return raw


def _webhook_url(env: Mapping[str, str]) -> str | None:
    name = "RUN_FAILURE_WEBHOOK_URL"
    raw = env.get(name, "").strip()
    if not raw:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(raw)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise SettingsError(f"{name} has an invalid port; expected e.g. https://hooks.example.com/alerts.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:  # the value is not echoed: it may hold a token
        raise SettingsError(f"{name} is not an http(s) URL; expected e.g. https://hooks.example.com/alerts.")
    return raw


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise SettingsError naming the first bad variable."""
    env = os.environ if env is None else env
    levels = parse_levels(env.get("HEATMAP_LEVELS", "1,2,3") or "1,2,3")
    default_level = env.get("HEATMAP_DEFAULT_LEVEL", "").strip() or levels[0]
    if default_level not in levels:
        raise SettingsError(f"HEATMAP_DEFAULT_LEVEL={default_level!r} is not one of HEATMAP_LEVELS ({','.join(levels)}).")
    raw_start = env.get("PARTITION_START_DATE", "").strip() or "2025-01-01"
    try:
        start = dt.date.fromisoformat(raw_start)
    except ValueError:
        raise SettingsError(f"PARTITION_START_DATE={raw_start!r} is not a date; use YYYY-MM-DD (default 2025-01-01).") from None
    position_types = frozenset(
        part.strip() for part in (env.get("POSITION_EVENT_TYPES") or "move,position").split(",") if part.strip()
    )
    keys = tuple(k.strip() for k in env.get("ADMIN_API_KEY", "").split(",") if k.strip())
    ui_port = _number(env, "DAGSTER_UI_PORT", 3000, 1, 65535)
    return Settings(
        database_url=_database_url(env, "DATABASE_URL"),
        warehouse_database_url=_database_url(env, "WAREHOUSE_DATABASE_URL"),
        etl_interval_minutes=_interval(env, "ETL_INTERVAL_MINUTES", 15),
        heatmap_interval_minutes=_interval(env, "HEATMAP_INTERVAL_MINUTES", 30),
        heatmap_levels=levels,
        heatmap_default_level=default_level,
        heatmap_grid_size=_number(env, "HEATMAP_GRID_SIZE", 50, 2, 1000),
        heatmap_bounds=parse_bounds(env.get("HEATMAP_BOUNDS", ""), levels),
        partition_start_date=start,
        position_event_types=position_types,
        future_tolerance_minutes=_number(env, "FUTURE_TOLERANCE_MINUTES", 10.0, 0.0, 525600.0, float),
        max_payload_bytes=_number(env, "MAX_PAYLOAD_BYTES", 65536, 64, 64 * 1024 * 1024),
        etl_chunk_size=_number(env, "ETL_CHUNK_SIZE", 50000, 100, 1_000_000),
        db_retry_max_retries=_number(env, "DB_RETRY_MAX_RETRIES", 3, 0, 10),
        db_retry_delay_seconds=_number(env, "DB_RETRY_DELAY_SECONDS", 10.0, 0.0, 3600.0, float),
        admin_api_keys=keys,
        admin_host=env.get("ADMIN_HOST", "").strip() or "127.0.0.1",
        admin_port=_number(env, "ADMIN_PORT", 8000, 1, 65535),
        dagster_ui_port=ui_port,
        dagster_graphql_url=_graphql_url(env, ui_port),
        admin_wait_timeout_seconds=_number(env, "ADMIN_WAIT_TIMEOUT_SECONDS", 600.0, 1.0, 86400.0, float),
        admin_sensor_interval_seconds=_number(env, "ADMIN_SENSOR_INTERVAL_SECONDS", 10, 1, 3600),
        dagster_ui_anonymous_read_only=_flag(env, "DAGSTER_UI_ANONYMOUS_READ_ONLY", False),
        home=Path(env.get("HEATMAP_PIPELINE_HOME", "").strip() or ".heatmap_pipeline"),
        # --- production: alerts and readiness ---
        run_failure_webhook_url=_webhook_url(env),
        readyz_max_heartbeat_age_seconds=_number(env, "READYZ_MAX_HEARTBEAT_AGE_SECONDS", 120.0, 10.0, 3600.0, float),
    )

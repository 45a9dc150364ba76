"""Every environment variable the project reads, parsed and validated in one place.

Only this module reads (and, for Dagster's sake, writes) ``os.environ``. The variables are the
fields of :class:`Settings`, a pydantic-settings model: each field's alias is the variable's name,
its default and its description are written once, there. Values come from the environment and
from a ``.env`` file in the working directory (the old APScheduler runner was configured by one;
its names ``ETL_INTERVAL_MINUTES``, ``HEATMAP_INTERVAL_MINUTES``, ``HEATMAP_LEVELS``,
``ADMIN_API_KEY`` and ``DATABASE_URL`` keep their meaning); the environment wins over the file.
An empty value counts as unset. A bad value raises :class:`SettingsError` naming the variable,
the value and what is allowed.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Mapping
from urllib.parse import urlsplit

import annotated_types
from dotenv import dotenv_values
from pydantic import Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUseDefault
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from heatmap_pipeline.core.binning import GridBounds
from heatmap_pipeline.core.levels import (
    DEFAULT_KINDS,
    KindConfig,
    LevelConfig,
    LevelsFile,
    LevelsFileError,
    load_levels_file,
    resolve_level,
)


DEFAULT_PARTITION_START_DATE = dt.date(2025, 1, 1)


class SettingsError(ValueError):
    """A setting has a value we cannot run with. The message names the variable."""


def _derived(text: str) -> dict[str, str]:
    """Field metadata for a default that is computed, not a value: ``text`` documents it (README)."""
    return {"default_text": text}


# NoDecode: pydantic-settings would read these types as JSON; ours are comma-separated (or, for
# HEATMAP_BOUNDS, JSON read by its own validator to name what is wrong).
Names = Annotated[tuple[str, ...], NoDecode]
NameSet = Annotated[frozenset[str], NoDecode]
LevelBounds = Annotated[dict[str, GridBounds], NoDecode]

_LEVEL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=True,
        extra="ignore",  # the environment and an old .env hold many other variables
        frozen=True,
        validate_default=True,  # defaults are written as a user would write the variable
    )

    database_url: str | None = Field(
        None, alias="DATABASE_URL", description="Source game database holding the `events` table.",
        json_schema_extra=_derived("(unset: embedded SQLite demo in the data directory)"),
    )
    warehouse_database_url: str | None = Field(
        None, alias="WAREHOUSE_DATABASE_URL", description="Where the pipeline's own tables are written.",
        json_schema_extra=_derived("same as DATABASE_URL"),
    )
    etl_interval_minutes: int = Field(
        15, alias="ETL_INTERVAL_MINUTES", ge=1, le=1440, description="Minutes between ETL schedule ticks."
    )
    heatmap_interval_minutes: int = Field(
        30, alias="HEATMAP_INTERVAL_MINUTES", ge=1, le=1440, description="Minutes between heatmap schedule ticks."
    )
    heatmap_levels: Names = Field(
        "1,2,3", alias="HEATMAP_LEVELS", description="Comma-separated level names; the static `level` partitions."
    )
    configured_default_level: str | None = Field(
        None, alias="HEATMAP_DEFAULT_LEVEL", description="Level given to position events whose payload names none.",
        json_schema_extra=_derived("first of HEATMAP_LEVELS"),
    )
    heatmap_grid_size: int = Field(
        50, alias="HEATMAP_GRID_SIZE", ge=2, le=1000, description="Cells per axis of every heatmap."
    )
    heatmap_bounds: LevelBounds = Field(
        default_factory=dict, alias="HEATMAP_BOUNDS",
        description='Fixed world bounds per level, JSON: {"1": [xmin, xmax, ymin, ymax]}.',
        json_schema_extra=_derived("(none: each day's own min/max)"),
    )
    heatmap_levels_file: Path | None = Field(
        None, alias="HEATMAP_LEVELS_FILE",
        description="TOML or YAML file describing levels (name, bounds, grid, background, kinds) and heatmap kinds; "
        "it wins over HEATMAP_GRID_SIZE and HEATMAP_BOUNDS, and its levels are added to HEATMAP_LEVELS.",
        json_schema_extra=_derived("(none: every level from the variables above)"),
    )
    configured_partition_start_date: dt.date | None = Field(
        None, alias="PARTITION_START_DATE", description="First daily partition (YYYY-MM-DD, UTC).",
        json_schema_extra=_derived("2025-01-01; embedded demo: the demo's first day"),
    )
    position_event_types: NameSet = Field(
        "move,position", alias="POSITION_EVENT_TYPES", description="event_type values that must carry x and y."
    )
    future_tolerance_minutes: float = Field(
        10, alias="FUTURE_TOLERANCE_MINUTES", ge=0, le=525600, allow_inf_nan=False,
        description="Minutes an event may be stamped after its created_at (or the run's clock) before it is quarantined.",
    )
    max_payload_bytes: int = Field(
        65536, alias="MAX_PAYLOAD_BYTES", ge=64, le=64 * 1024 * 1024,
        description="Payloads larger than this are quarantined.",
    )
    etl_chunk_size: int = Field(
        50000, alias="ETL_CHUNK_SIZE", ge=100, le=1_000_000,
        description="Rows per chunk when streaming events between databases.",
    )
    etl_incremental_overlap_seconds: int = Field(
        300, alias="ETL_INCREMENTAL_OVERLAP_SECONDS", ge=0, le=86400,
        description="A scheduled ETL tick re-reads source rows this many seconds older than the day's watermark (rows committed after their created_at).",
    )
    db_retry_max_retries: int = Field(
        3, alias="DB_RETRY_MAX_RETRIES", ge=0, le=10,
        description="Retries of an asset step after a transient database error.",
    )
    db_retry_delay_seconds: float = Field(
        10, alias="DB_RETRY_DELAY_SECONDS", ge=0, le=3600, allow_inf_nan=False,
        description="First retry delay in seconds, doubled at each retry.",
    )
    admin_api_keys: Names = Field(
        (), alias="ADMIN_API_KEY", repr=False,  # keys never reach logs
        description="One key or a comma-separated list (rotation) for the admin API and the UI.",
        json_schema_extra=_derived("(none: admin endpoint answers 503)"),
    )
    admin_host: str = Field(
        "127.0.0.1", alias="ADMIN_HOST", description="Interface the admin API (POST /admin/run-jobs) listens on."
    )
    admin_port: int = Field(8000, alias="ADMIN_PORT", ge=1, le=65535, description="Port of the admin API.")
    dagster_ui_port: int = Field(
        3000, alias="DAGSTER_UI_PORT", ge=1, le=65535,
        description="Port of the authenticated Dagster webserver started by `heatmap-pipeline dev`.",
    )
    configured_graphql_url: str | None = Field(
        None, alias="DAGSTER_GRAPHQL_URL", description="Dagster GraphQL endpoint the admin API launches runs through.",
        json_schema_extra=_derived("http://127.0.0.1:$DAGSTER_UI_PORT/graphql"),
    )
    admin_wait_timeout_seconds: float = Field(
        600, alias="ADMIN_WAIT_TIMEOUT_SECONDS", ge=1, le=86400, allow_inf_nan=False,
        description="How long POST /admin/run-jobs waits for its runs before answering 202.",
    )
    admin_sensor_interval_seconds: int = Field(
        10, alias="ADMIN_SENSOR_INTERVAL_SECONDS", ge=1, le=3600,
        description="Minimum seconds between admin_trigger_sensor ticks.",
    )
    dagster_ui_anonymous_read_only: bool = Field(
        False, alias="DAGSTER_UI_ANONYMOUS_READ_ONLY",
        description="true: the Dagster UI is readable without a key (launches still need one).",
    )
    home: Path = Field(
        "./.heatmap_pipeline", alias="HEATMAP_PIPELINE_HOME",
        description="Data directory of the embedded default (SQLite file, DAGSTER_HOME).",
    )
    configured_dagster_home: Path | None = Field(
        None, alias="DAGSTER_HOME",
        description="Dagster's instance directory (runs, schedule and sensor ticks, logs; its dagster.yaml).",
        json_schema_extra=_derived("$HEATMAP_PIPELINE_HOME/dagster_home"),
    )

    # --- parsing: our validators raise SettingsError with the whole message (see _message) ---

    @field_validator("admin_api_keys", "position_event_types", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("heatmap_levels", mode="before")
    @classmethod
    def _levels(cls, raw: Any, info: ValidationInfo) -> Any:
        if not isinstance(raw, str):
            return raw
        name = _alias(info)
        levels = [part.strip() for part in raw.split(",")]
        if any(not level for level in levels):
            raise SettingsError(f"{name}={raw!r} must be a comma-separated list of level names, e.g. 1,2,3.")
        bad = [level for level in levels if not _LEVEL_RE.match(level)]
        if bad:
            raise SettingsError(
                f"{name}={raw!r}: level names may only use letters, digits, '_', '.', '-' (bad: {', '.join(bad)})."
            )
        if len(set(levels)) != len(levels):
            raise SettingsError(f"{name}={raw!r} lists a level twice.")
        return tuple(levels)

    @field_validator("heatmap_bounds", mode="before")
    @classmethod
    def _bounds(cls, raw: Any, info: ValidationInfo) -> Any:
        if not isinstance(raw, str):
            return raw
        name = _alias(info)
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SettingsError(f'{name} is not valid JSON ({exc.msg}); expected {{"1": [xmin, xmax, ymin, ymax], ...}}.') from None
        if not isinstance(data, dict):
            raise SettingsError(f'{name} must be a JSON object like {{"1": [xmin, xmax, ymin, ymax]}}.')
        result: dict[str, GridBounds] = {}
        for level, values in data.items():
            ok = (
                isinstance(values, list)
                and len(values) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
            )
            if not ok:
                raise SettingsError(f"{name} for level {level!r} must be four finite numbers [xmin, xmax, ymin, ymax], got {values!r}.")
            bounds = GridBounds(*(float(v) for v in values))
            if not (bounds.x_min < bounds.x_max and bounds.y_min < bounds.y_max):
                raise SettingsError(f"{name} for level {level!r} needs xmin < xmax and ymin < ymax, got {values!r}.")
            result[str(level)] = bounds
        return result

    @field_validator("database_url", "warehouse_database_url", mode="before")
    @classmethod
    def _database_url(cls, raw: Any, info: ValidationInfo) -> Any:
        from heatmap_pipeline.warehouse.db import normalize_database_url  # local import keeps settings import-light

        if not isinstance(raw, str):
            return raw
        try:
            return normalize_database_url(raw)
        except ValueError as exc:  # the message never echoes the URL, which may hold a password
            raise SettingsError(f"{_alias(info)}: {exc}") from None

    @field_validator("configured_graphql_url", mode="before")
    @classmethod
    def _graphql_url(cls, raw: Any, info: ValidationInfo) -> Any:
        if not isinstance(raw, str):
            return raw
        name, parts = _alias(info), urlsplit(raw)
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise SettingsError(f"{name}={raw!r} has an invalid port; expected e.g. http://127.0.0.1:3000/graphql.") from None
        if parts.username or parts.password:  # do not echo a password back
            raise SettingsError(f"{name} must not hold credentials; the admin API authenticates with ADMIN_API_KEY.")
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise SettingsError(f"{name}={raw!r} is not an http(s) URL; expected e.g. http://127.0.0.1:3000/graphql.")
        return raw

    # Defined last on purpose: pydantic runs "before" validators from the last defined to the first,
    # so every field validator above receives the value stripped, and never an empty one.
    # --- production: alerts and readiness ---
    run_failure_webhook_url: str | None = Field(
        None, alias="RUN_FAILURE_WEBHOOK_URL", repr=False,  # may hold a token: never logged
        description="http(s) URL that run_failure_sensor POSTs a JSON message to when a run fails.",
        json_schema_extra=_derived("(none: failures are only logged)"),
    )
    readyz_max_heartbeat_age_seconds: float = Field(
        120, alias="READYZ_MAX_HEARTBEAT_AGE_SECONDS", ge=10, le=3600, allow_inf_nan=False,
        description="GET /readyz fails when a Dagster daemon's last heartbeat is older than this.",
    )

    # --- the read API and the /heatmaps page (web/routers/heatmaps.py) ---
    heatmap_reads_public: bool = Field(
        False, alias="HEATMAP_READS_PUBLIC",
        description="true: the heatmap reads (GET /api/v1/heatmap, /api/v1/heatmaps..., /heatmaps) need no key; any Authorization header is ignored.",
    )
    cors_allowed_origins: Names = Field(
        (), alias="CORS_ALLOWED_ORIGINS",
        description="Comma-separated origins (scheme://host[:port], or `*` for any) whose browser pages may call the admin server's GET endpoints.",
        json_schema_extra=_derived("(none: same origin only)"),
    )
    heatmap_max_range_days: int = Field(
        92, alias="HEATMAP_MAX_RANGE_DAYS", ge=1, le=3660,
        description="Longest from/to range, in days, the read API sums.",
    )

    @field_validator("cors_allowed_origins", mode="before")
    @classmethod
    def _origins(cls, raw: Any, info: ValidationInfo) -> Any:
        if not isinstance(raw, str):
            return raw
        name, origins = _alias(info), tuple(part.strip().rstrip("/") for part in raw.split(",") if part.strip())
        for origin in origins:
            parts = urlsplit(origin)
            try:
                parts.port  # noqa: B018 - raises ValueError on a bad port
                valid = origin == "*" or (parts.scheme in ("http", "https") and bool(parts.hostname)
                                          and not parts.path and not parts.query and not parts.fragment
                                          and not parts.username and not parts.password)
            except ValueError:
                valid = False
            if not valid:
                raise SettingsError(f"{name}: {origin!r} is not an origin; use scheme://host[:port] without a path, "
                                    "e.g. http://localhost:5173, or * for any origin.")
        return origins

    @field_validator("run_failure_webhook_url", mode="before")
    @classmethod
    def _webhook_url(cls, raw: Any, info: ValidationInfo) -> Any:
        if raw is None or not str(raw).strip():
            return None
        name, raw = _alias(info), str(raw).strip()
        parts = urlsplit(raw)
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise SettingsError(f"{name} has an invalid port; expected e.g. https://hooks.example.com/alerts.") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:  # the value is not echoed: it may hold a token
            raise SettingsError(f"{name} is not an http(s) URL; expected e.g. https://hooks.example.com/alerts.")
        return raw

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            if not value:
                raise PydanticUseDefault()
        return value

    _levels_file: LevelsFile | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _levels_agree(self) -> Settings:
        if self.heatmap_levels_file is not None:
            try:
                self._levels_file = load_levels_file(self.heatmap_levels_file)
            except LevelsFileError as exc:
                raise SettingsError(str(exc)) from None
            # The file's levels are partitions too: HEATMAP_LEVELS first, then the file's others.
            merged = tuple(dict.fromkeys((*self.heatmap_levels, *self._levels_file.levels)))
            object.__setattr__(self, "heatmap_levels", merged)  # frozen model; this is its own validation
        levels = ",".join(self.heatmap_levels)
        if self.heatmap_default_level not in self.heatmap_levels:
            raise SettingsError(f"HEATMAP_DEFAULT_LEVEL={self.heatmap_default_level!r} is not one of HEATMAP_LEVELS ({levels}).")
        for level in self.heatmap_bounds:
            if level not in self.heatmap_levels:
                raise SettingsError(f"HEATMAP_BOUNDS names level {level!r}, which is not in HEATMAP_LEVELS ({levels}).")
        return self

    # --- values derived from others: what applies when the variable is unset ---

    @property
    def heatmap_kinds(self) -> dict[str, KindConfig]:
        """Every known heatmap kind: positions, deaths, jumps, then the levels file's own."""
        return dict(self._levels_file.kinds) if self._levels_file else dict(DEFAULT_KINDS)

    def level_config(self, level_id: str) -> LevelConfig:
        """The level's configuration: its levels-file entry where it says something, else
        HEATMAP_GRID_SIZE, HEATMAP_BOUNDS, every kind and no background. Any level id answers."""
        entry = self._levels_file.levels.get(level_id) if self._levels_file else None
        return resolve_level(
            level_id,
            entry,
            grid_size=self.heatmap_grid_size,
            bounds=self.heatmap_bounds.get(level_id),
            kinds=self.heatmap_kinds,
        )

    @property
    def heatmap_default_level(self) -> str:
        return self.configured_default_level or self.heatmap_levels[0]

    @property
    def dagster_graphql_url(self) -> str:
        return self.configured_graphql_url or f"http://127.0.0.1:{self.dagster_ui_port}/graphql"

    @property
    def partition_start_date(self) -> dt.date:
        """PARTITION_START_DATE, else 2025-01-01 (``heatmap-pipeline`` sets it to the demo's first day in demo mode)."""
        return self.configured_partition_start_date or DEFAULT_PARTITION_START_DATE

    @property
    def dagster_home(self) -> Path:
        return self.configured_dagster_home or self.home / "dagster_home"

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


class _GivenSettings(Settings):
    """Settings from the values passed to the constructor alone: no environment, no .env file."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_other_sources):
        return (init_settings,)

    def __repr_name__(self) -> str:
        return "Settings"


def _alias(info: ValidationInfo) -> str:
    return Settings.model_fields[info.field_name].alias


def _field(name: str) -> FieldInfo | None:
    return next((f for f in Settings.model_fields.values() if f.alias == name), None)


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _range(field: FieldInfo) -> tuple[str, str] | None:
    """The field's allowed range (ge, le), as the user would write it, if it has one."""
    lo = next((m.ge for m in field.metadata if isinstance(m, annotated_types.Ge)), None)
    hi = next((m.le for m in field.metadata if isinstance(m, annotated_types.Le)), None)
    return None if lo is None or hi is None else (_plain(lo), _plain(hi))


def _message(error: dict) -> str:
    """One pydantic error as a sentence naming the variable, the value and what is allowed."""
    if isinstance(cause := (error.get("ctx") or {}).get("error"), SettingsError):
        return str(cause)  # our own validators wrote the whole message
    name = str(error["loc"][0]) if error["loc"] else "settings"
    field, raw, kind = _field(name), error["input"], error["type"]
    default = _plain(field.default) if field is not None else "?"
    bounds = _range(field) if field is not None else None
    allowed = f"{bounds[0]} to {bounds[1]}" if bounds else "any value"
    if kind.startswith("int_"):
        return f"{name}={raw!r} is not a number; use a whole number, {allowed} (default {default})."
    if kind.startswith("float_"):
        return f"{name}={raw!r} is not a number; use {allowed} (default {default})."
    if kind in ("greater_than_equal", "less_than_equal", "finite_number"):
        return f"{name}={raw!r} is out of range; use {allowed} (default {default})."
    if kind.startswith("bool_"):
        return f"{name}={raw!r} is not a boolean; use true or false (default {default})."
    if kind.startswith("date_"):
        return f"{name}={raw!r} is not a date; use YYYY-MM-DD (default {default})."
    return f"{name}={raw!r}: {error['msg']}."


def load_settings(env: Mapping[str, str] | None = None, overrides: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise SettingsError naming each bad variable.

    Without ``env``: the environment, then the ``.env`` file in the working directory. With
    ``env``: that mapping alone (tests, or an environment being prepared for a child process).
    ``overrides`` (variable name -> value, e.g. a command-line ``--data-dir``) win over both.
    """
    values = {**(env or {}), **(overrides or {})}
    try:
        return Settings(**(overrides or {})) if env is None else _GivenSettings(**values)
    except ValidationError as exc:
        raise SettingsError("\n".join(_message(error) for error in exc.errors())) from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """This process's settings, read once (the code location, the admin API)."""
    return load_settings()


def child_environment(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment for our child processes (and for Dagster in this one, see export_environment).

    The ``.env`` file's variables, then this process's environment over them, the data directory
    and DAGSTER_HOME of ``settings`` made absolute (a child may resolve paths elsewhere), then
    ``overrides`` (variable name -> value).
    """
    env_file = Settings.model_config["env_file"]
    from_file = {k: v for k, v in dotenv_values(env_file).items() if v is not None} if Path(env_file).is_file() else {}
    return {
        **from_file,
        **os.environ,
        "HEATMAP_PIPELINE_HOME": str(settings.home.resolve()),
        "DAGSTER_HOME": str(settings.dagster_home.resolve()),
        # the embedded demo's own first day, when prepare_environment chose it (children must agree)
        **({"PARTITION_START_DATE": settings.configured_partition_start_date.isoformat()}
           if settings.configured_partition_start_date else {}),
        **overrides,
    }


def export_environment(env: Mapping[str, str]) -> None:
    """Make ``env`` (from child_environment) this process's environment as well.

    Dagster reads DAGSTER_HOME, and the resources' EnvVar("DATABASE_URL"), from ``os.environ`` of
    the process that runs the code, so a variable set only in ``.env`` must be put there.
    """
    os.environ.update(env)
    get_settings.cache_clear()  # the environment it was read from has changed

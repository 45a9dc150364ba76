"""settings.py: defaults, the old variables and .env, bad values named, the README's table of variables."""

import datetime as dt
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import annotated_types
import pytest

from heatmap_pipeline.core.binning import GridBounds
from heatmap_pipeline.warehouse.db import normalize_database_url
from heatmap_pipeline.settings import (
    Settings,
    SettingsError,
    child_environment,
    export_environment,
    get_settings,
    load_settings,
)

ROOT = Path(__file__).parents[1]


def test_defaults_match_the_old_system():
    settings = load_settings({})
    assert settings.etl_interval_minutes == 15
    assert settings.heatmap_interval_minutes == 30
    assert settings.heatmap_levels == ("1", "2", "3")
    assert settings.heatmap_default_level == "1"
    assert settings.heatmap_grid_size == 50
    assert settings.partition_start_date == dt.date(2025, 1, 1)
    assert settings.admin_api_keys == ()
    assert settings.demo_mode and settings.source_url.startswith("sqlite:///")
    assert settings.warehouse_url == settings.source_url


def test_admin_defaults():
    settings = load_settings({})
    assert settings.admin_api_keys == ()  # no built-in key
    assert (settings.admin_host, settings.admin_port, settings.dagster_ui_port) == ("127.0.0.1", 8000, 3000)
    assert settings.dagster_graphql_url == "http://127.0.0.1:3000/graphql"
    assert settings.admin_wait_timeout_seconds == 600 and settings.admin_sensor_interval_seconds == 10
    assert settings.dagster_ui_anonymous_read_only is False


def test_graphql_url_follows_the_ui_port_and_keys_split_on_commas():
    settings = load_settings({"DAGSTER_UI_PORT": "3100", "ADMIN_API_KEY": " new , old ,"})
    assert settings.dagster_graphql_url == "http://127.0.0.1:3100/graphql"
    assert settings.admin_api_keys == ("new", "old")
    assert "new" not in repr(settings) and "old" not in repr(settings)


def test_old_variables_are_read():
    settings = load_settings(
        {
            "ETL_INTERVAL_MINUTES": "5",
            "HEATMAP_INTERVAL_MINUTES": "45",
            "HEATMAP_LEVELS": "1, 2,boss",
            "ADMIN_API_KEY": "old-key, new-key",
            "DATABASE_URL": "postgresql+asyncpg://game:pw@db:5432/game",
        }
    )
    assert settings.etl_interval_minutes == 5
    assert settings.heatmap_interval_minutes == 45
    assert settings.heatmap_levels == ("1", "2", "boss")
    assert settings.admin_api_keys == ("old-key", "new-key")
    assert settings.database_url == "postgresql+psycopg://game:pw@db:5432/game"
    assert not settings.demo_mode


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("ETL_INTERVAL_MINUTES", "0", "1 to 1440"),
        ("ETL_INTERVAL_MINUTES", "-5", "1 to 1440"),
        ("ETL_INTERVAL_MINUTES", "ten", "whole number"),
        ("HEATMAP_INTERVAL_MINUTES", "1441", "1 to 1440"),
        ("HEATMAP_INTERVAL_MINUTES", "2.5", "whole number"),
        ("HEATMAP_LEVELS", "1,,2", "comma-separated"),
        ("HEATMAP_LEVELS", "1,1", "twice"),
        ("HEATMAP_LEVELS", "a b", "letters, digits"),
        ("HEATMAP_DEFAULT_LEVEL", "9", "not one of HEATMAP_LEVELS"),
        ("HEATMAP_GRID_SIZE", "1", "2 to 1000"),
        ("HEATMAP_GRID_SIZE", "big", "not a number"),
        ("HEATMAP_BOUNDS", "{bad", "not valid JSON"),
        ("HEATMAP_BOUNDS", '{"7": [0, 1, 0, 1]}', "not in HEATMAP_LEVELS"),
        ("HEATMAP_BOUNDS", '{"1": [0, 1, 0]}', "four finite numbers"),
        ("HEATMAP_BOUNDS", '{"1": [5, 1, 0, 1]}', "xmin < xmax"),
        ("PARTITION_START_DATE", "2025-02-30", "YYYY-MM-DD"),
        ("DATABASE_URL", "mysql://u@h/db", "not supported"),
        ("DATABASE_URL", "not a url", "not a database URL"),
        ("WAREHOUSE_DATABASE_URL", "postgresql+pg8000://u@h/db", "not supported"),
        ("FUTURE_TOLERANCE_MINUTES", "-1", "out of range"),
        ("MAX_PAYLOAD_BYTES", "12", "out of range"),
        # the admin API's variables
        ("ADMIN_PORT", "80000", "ADMIN_PORT='80000' is out of range; use 1 to 65535"),
        ("DAGSTER_UI_PORT", "ui", "DAGSTER_UI_PORT='ui' is not a number"),
        ("ADMIN_WAIT_TIMEOUT_SECONDS", "0", "ADMIN_WAIT_TIMEOUT_SECONDS='0' is out of range"),
        ("ADMIN_SENSOR_INTERVAL_SECONDS", "0.5", "ADMIN_SENSOR_INTERVAL_SECONDS='0.5' is not a number"),
        ("DAGSTER_UI_ANONYMOUS_READ_ONLY", "maybe", "DAGSTER_UI_ANONYMOUS_READ_ONLY='maybe' is not a boolean"),
        ("DAGSTER_GRAPHQL_URL", "localhost:3000/graphql", "DAGSTER_GRAPHQL_URL='localhost:3000/graphql' is not an http(s) URL"),
        ("DAGSTER_GRAPHQL_URL", "http://user:pw@host/graphql", "DAGSTER_GRAPHQL_URL must not hold credentials"),
    ],
)
def test_bad_value_names_the_variable(name, value, expected):
    with pytest.raises(SettingsError) as error:
        load_settings({name: value})
    assert name in str(error.value)
    assert expected in str(error.value)


def test_bounds_are_parsed_per_level():
    settings = load_settings({"HEATMAP_BOUNDS": '{"1": [0, 100, -5, 5.5], "3": [1, 2, 3, 4]}'})
    assert settings.heatmap_bounds == {"1": GridBounds(0, 100, -5, 5.5), "3": GridBounds(1, 2, 3, 4)}


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("postgresql://u:p@h:5432/db", "postgresql://u:p@h:5432/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///./game.db", "sqlite:///./game.db"),
    ],
)
def test_old_url_forms_get_a_sync_driver(raw, expected):
    assert normalize_database_url(raw) == expected


def test_home_directory_holds_the_demo_database(tmp_path):
    settings = load_settings({"HEATMAP_PIPELINE_HOME": str(tmp_path)})
    assert settings.demo_database_path == Path(tmp_path) / "heatmap_pipeline.sqlite"
    assert settings.dagster_home == Path(tmp_path) / "dagster_home"
    assert load_settings({"HEATMAP_PIPELINE_HOME": str(tmp_path), "DAGSTER_HOME": "/srv/dh"}).dagster_home == Path("/srv/dh")


def test_empty_values_count_as_unset():
    settings = load_settings({"ETL_INTERVAL_MINUTES": "", "HEATMAP_LEVELS": "  ", "ADMIN_HOST": " ", "DATABASE_URL": ""})
    assert (settings.etl_interval_minutes, settings.heatmap_levels, settings.admin_host) == (15, ("1", "2", "3"), "127.0.0.1")
    assert settings.demo_mode


def test_every_bad_variable_is_named_at_once():
    with pytest.raises(SettingsError) as error:
        load_settings({"ETL_INTERVAL_MINUTES": "0", "ADMIN_PORT": "x"})
    assert str(error.value).splitlines() == [
        "ETL_INTERVAL_MINUTES='0' is out of range; use 1 to 1440 (default 15).",
        "ADMIN_PORT='x' is not a number; use a whole number, 1 to 65535 (default 8000).",
    ]


# --- the environment and the .env file -------------------------------------------------------


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory, and none of the variables used below in the environment."""
    monkeypatch.chdir(tmp_path)
    for name in ("ETL_INTERVAL_MINUTES", "HEATMAP_LEVELS", "DATABASE_URL", "HEATMAP_PIPELINE_HOME", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_a_dot_env_file_in_the_working_directory_is_read(workdir):
    (workdir / ".env").write_text("# the old system's file\nETL_INTERVAL_MINUTES=5\nHEATMAP_LEVELS=a,b\nREDIS_URL=redis://x\n")
    settings = load_settings()
    assert (settings.etl_interval_minutes, settings.heatmap_levels) == (5, ("a", "b"))


def test_the_environment_wins_over_the_dot_env_file(workdir, monkeypatch):
    (workdir / ".env").write_text("ETL_INTERVAL_MINUTES=5\nHEATMAP_LEVELS=a,b\n")
    monkeypatch.setenv("HEATMAP_LEVELS", "c")
    settings = load_settings()
    assert (settings.etl_interval_minutes, settings.heatmap_levels) == (5, ("c",))


def test_overrides_win_over_both(workdir, monkeypatch):
    (workdir / ".env").write_text("HEATMAP_PIPELINE_HOME=from-file\n")
    assert load_settings(overrides={"HEATMAP_PIPELINE_HOME": "from-flag"}).home == Path("from-flag")
    monkeypatch.setenv("HEATMAP_PIPELINE_HOME", "from-env")
    assert load_settings(overrides={"HEATMAP_PIPELINE_HOME": "from-flag"}).home == Path("from-flag")
    assert load_settings({"HEATMAP_LEVELS": "a"}, overrides={"HEATMAP_LEVELS": "b"}).heatmap_levels == ("b",)


def test_a_given_mapping_is_read_alone(workdir, monkeypatch):
    (workdir / ".env").write_text("ETL_INTERVAL_MINUTES=5\n")
    monkeypatch.setenv("HEATMAP_LEVELS", "c")
    settings = load_settings({"HEATMAP_INTERVAL_MINUTES": "45"})
    assert (settings.etl_interval_minutes, settings.heatmap_levels, settings.heatmap_interval_minutes) == (15, ("1", "2", "3"), 45)


def test_a_bad_value_in_the_dot_env_file_is_named(workdir):
    (workdir / ".env").write_text("ETL_INTERVAL_MINUTES=0\n")
    with pytest.raises(SettingsError, match=re.escape("ETL_INTERVAL_MINUTES='0' is out of range; use 1 to 1440")):
        load_settings()


def test_child_environment_carries_the_dot_env_file_and_absolute_directories(workdir, monkeypatch):
    """Children, and Dagster's EnvVar resources, read os.environ: a variable set in .env must reach it."""
    (workdir / ".env").write_text("DATABASE_URL=sqlite:///game.db\nETL_INTERVAL_MINUTES=5\nOLD_SETTING=kept\n")
    monkeypatch.setenv("ETL_INTERVAL_MINUTES", "7")
    settings = load_settings(overrides={"HEATMAP_PIPELINE_HOME": "data"})
    env = child_environment(settings, ADMIN_API_KEY="k")
    assert env["DATABASE_URL"] == "sqlite:///game.db" and env["OLD_SETTING"] == "kept"
    assert env["ETL_INTERVAL_MINUTES"] == "7"  # the environment wins, as in load_settings
    assert env["HEATMAP_PIPELINE_HOME"] == str(workdir / "data")
    assert env["DAGSTER_HOME"] == str(workdir / "data" / "dagster_home")
    assert env["ADMIN_API_KEY"] == "k" and env["PATH"] == os.environ["PATH"]
    assert load_settings(env).etl_interval_minutes == 7


def test_export_environment_reaches_os_environ_and_refreshes_get_settings(workdir, monkeypatch):
    monkeypatch.setattr(os, "environ", os.environ.copy())  # restored after the test
    get_settings.cache_clear()
    assert get_settings() is get_settings() and get_settings().etl_interval_minutes == 15
    export_environment({"ETL_INTERVAL_MINUTES": "9"})
    assert os.environ["ETL_INTERVAL_MINUTES"] == "9"
    assert get_settings().etl_interval_minutes == 9


def test_importing_the_definitions_builds_nothing(monkeypatch, sqlite_url):
    """Dagster calls ``defs`` when it loads the code location; the CLI builds its own, once."""
    import heatmap_pipeline.definitions as definitions

    monkeypatch.setenv("ETL_INTERVAL_MINUTES", "0")
    importlib.reload(definitions)  # a build at import would raise here
    with pytest.raises(SettingsError, match="ETL_INTERVAL_MINUTES='0'"):
        definitions.defs()
    monkeypatch.setenv("ETL_INTERVAL_MINUTES", "20")
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    schedules = {s.name: s.cron_schedule for s in definitions.defs().get_repository_def().schedule_defs}
    assert schedules["etl_schedule"] == "*/20 * * * *"


def run_cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    # PYTHONPATH: the package of this checkout, whatever is installed
    base = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "heatmap_pipeline.runtime.cli", *args], cwd=cwd, env={**base, **env},
                          capture_output=True, text=True, timeout=120)


def test_the_command_stops_on_a_bad_value_naming_it(tmp_path):
    result = run_cli(tmp_path, "migrate", ETL_INTERVAL_MINUTES="0")
    assert result.returncode == 2
    assert "ETL_INTERVAL_MINUTES='0' is out of range; use 1 to 1440 (default 15)." in result.stderr


def test_the_command_reads_the_dot_env_file_of_its_working_directory(tmp_path):
    (tmp_path / ".env").write_text("HEATMAP_LEVELS=a,,b\n")
    result = run_cli(tmp_path, "migrate")
    assert result.returncode == 2 and "HEATMAP_LEVELS='a,,b' must be a comma-separated list" in result.stderr
    result = run_cli(tmp_path, "migrate", HEATMAP_LEVELS="a,b")
    assert result.returncode == 0, result.stderr
    assert "warehouse tables are up to date" in result.stdout
    assert (tmp_path / ".heatmap_pipeline" / "heatmap_pipeline.sqlite").exists()


# --- the README's table of variables ----------------------------------------------------------

ROW = re.compile(r"^\| `(?P<name>[A-Z_]+)` \| (?P<default>.*?) \| (?P<meaning>.*) \|$")


def readme_table(readme: str) -> dict[str, tuple[str, str]]:
    """Variable -> (default, meaning), from the table in the README's Configuration section."""
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [ROW.match(line) for line in section.splitlines() if line.startswith("| `")]
    assert all(rows), "a row of the table does not parse"
    return {row["name"]: (row["default"], row["meaning"]) for row in rows}


def plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def documented(name: str, field) -> tuple[str, str]:
    """What the README must say of a field: its default (or the text that explains a computed
    one) and its description, with its allowed range before the final period."""
    extra = field.json_schema_extra or {}
    if "default_text" in extra:
        default = extra["default_text"]
    else:
        assert field.default_factory is None, f"{name}: a computed default needs a default_text"
        default = str(field.default).lower() if isinstance(field.default, bool) else str(field.default)
    meaning = field.description
    lo = [m.ge for m in field.metadata if isinstance(m, annotated_types.Ge)]
    hi = [m.le for m in field.metadata if isinstance(m, annotated_types.Le)]
    if lo and hi:
        meaning = f"{meaning.removesuffix('.')} ({plain(lo[0])}-{plain(hi[0])})."
    return default, meaning


def readme_mismatches(readme: str) -> list[str]:
    table = readme_table(readme)
    fields = {field.alias: field for field in Settings.model_fields.values()}
    problems = [f"{name}: in the README, not a setting" for name in sorted(table.keys() - fields.keys())]
    problems += [f"{name}: a setting missing from the README" for name in sorted(fields.keys() - table.keys())]
    for name in sorted(table.keys() & fields.keys()):
        if table[name] != (expected := documented(name, fields[name])):
            problems.append(f"{name}: README says {table[name]}, the code {expected}")
    return problems


def test_the_readme_table_of_variables_matches_the_settings():
    readme = (ROOT / "README.md").read_text()
    assert len(readme_table(readme)) == len(Settings.model_fields) > 20
    assert readme_mismatches(readme) == []


def test_the_readme_comparison_sees_a_changed_default_a_missing_row_and_an_extra_one():
    readme = (ROOT / "README.md").read_text()
    changed = readme.replace("| `ETL_INTERVAL_MINUTES` | 15 |", "| `ETL_INTERVAL_MINUTES` | 20 |")
    assert [p.split(":")[0] for p in readme_mismatches(changed)] == ["ETL_INTERVAL_MINUTES"]
    missing = "\n".join(line for line in readme.splitlines() if not line.startswith("| `ADMIN_PORT`"))
    assert readme_mismatches(missing) == ["ADMIN_PORT: a setting missing from the README"]
    extra = readme.replace("| `ADMIN_PORT` |", "| `OLD_PORT` | 1 | Gone. |\n| `ADMIN_PORT` |")
    assert readme_mismatches(extra) == ["OLD_PORT: in the README, not a setting"]

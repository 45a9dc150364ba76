import datetime as dt
from pathlib import Path

import pytest

from heatmap_pipeline.warehouse.db import normalize_database_url
from heatmap_pipeline.settings import VARIABLES, Bounds, SettingsError, load_settings


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


def test_old_env_file_is_read():
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
    assert settings.heatmap_bounds == {"1": Bounds(0, 100, -5, 5.5), "3": Bounds(1, 2, 3, 4)}


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


def test_readme_lists_every_variable():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    missing = [name for name, _, _ in VARIABLES if f"`{name}`" not in readme]
    assert not missing, f"README does not document: {missing}"

"""The admin API's variables in settings.py: defaults, validation naming the variable, keys kept out of reprs."""

import pytest

from heatmap_pipeline.settings import SettingsError, load_settings


def test_defaults():
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


@pytest.mark.parametrize(
    "name, value, fragment",
    [
        ("ADMIN_PORT", "80000", "ADMIN_PORT='80000' is out of range; use 1 to 65535"),
        ("DAGSTER_UI_PORT", "ui", "DAGSTER_UI_PORT='ui' is not a number"),
        ("ADMIN_WAIT_TIMEOUT_SECONDS", "0", "ADMIN_WAIT_TIMEOUT_SECONDS='0' is out of range"),
        ("ADMIN_SENSOR_INTERVAL_SECONDS", "0.5", "ADMIN_SENSOR_INTERVAL_SECONDS='0.5' is not a number"),
        ("DAGSTER_UI_ANONYMOUS_READ_ONLY", "maybe", "DAGSTER_UI_ANONYMOUS_READ_ONLY='maybe' is not a boolean"),
        ("DAGSTER_GRAPHQL_URL", "localhost:3000/graphql", "DAGSTER_GRAPHQL_URL='localhost:3000/graphql' is not an http(s) URL"),
        ("DAGSTER_GRAPHQL_URL", "http://user:pw@host/graphql", "DAGSTER_GRAPHQL_URL must not hold credentials"),
    ],
)
def test_bad_values_name_the_variable(name, value, fragment):
    with pytest.raises(SettingsError) as info:
        load_settings({name: value})
    assert fragment in str(info.value)

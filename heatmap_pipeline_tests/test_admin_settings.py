"""The admin API's variables in settings.py: defaults and keys kept out of reprs (bad values: test_settings.py)."""

from heatmap_pipeline.settings import load_settings


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

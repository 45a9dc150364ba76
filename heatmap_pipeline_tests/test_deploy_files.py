"""The deployment files, checked with what runs here: Docker cannot build or run on this machine,
so each file is parsed and held against the code it starts. (The slow tests in test_production.py
start the same commands as real processes on deploy/dagster.yaml.)"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from heatmap_pipeline.runtime.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
DOCKERFILE = (REPO / "Dockerfile").read_text()
APP_SERVICES = ["migrate", "webserver", "daemon", "admin", "worker"]


def test_compose_runs_every_process_of_a_deployment():
    assert set(COMPOSE["services"]) == {"postgres", "rabbitmq", *APP_SERVICES}
    assert COMPOSE["services"]["postgres"]["image"].startswith("postgres:")
    assert COMPOSE["services"]["rabbitmq"]["image"].startswith("rabbitmq:")
    for name in ("webserver", "daemon", "admin", "worker"):
        depends = COMPOSE["services"][name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name


@pytest.mark.parametrize("service", ["migrate", "webserver", "daemon", "admin"])
def test_compose_commands_are_commands_of_heatmap_pipeline(service):
    spec = COMPOSE["services"][service]
    assert "entrypoint" not in spec  # the image's: heatmap-pipeline
    args = build_parser().parse_args(spec["command"])  # an unknown command or option exits here
    assert args.command == service


def test_compose_worker_is_a_dagster_celery_worker_on_the_image_config():
    from dagster_celery.cli import worker_start_command

    spec = COMPOSE["services"]["worker"]
    assert spec["entrypoint"] == ["dagster-celery"]
    group, start, *options = spec["command"]
    assert (group, start) == ("worker", "start")
    image_path = options[options.index("-y") + 1]
    assert f"COPY deploy/celery.yaml {image_path}" in DOCKERFILE
    local = [str(REPO / "deploy" / "celery.yaml") if o == image_path else o for o in options]
    params = worker_start_command.make_context("start", local).params  # click parses it as the CLI would
    assert params["app"] == "dagster_celery.app" and params["additional_args"] == ("--concurrency=2",)


def test_every_variable_the_instance_reads_is_set_in_compose():
    needed = set()
    for name in ("dagster.yaml", "celery.yaml"):
        needed |= set(re.findall(r"\{env: (\w+)\}", (REPO / "deploy" / name).read_text()))
    assert {"DAGSTER_PG_HOST", "DAGSTER_PG_PASSWORD", "DAGSTER_CELERY_BROKER_URL"} <= needed
    for service in APP_SERVICES:
        assert needed <= set(COMPOSE["services"][service]["environment"]), service
        assert {"DATABASE_URL", "ADMIN_API_KEY", "DAGSTER_GRAPHQL_URL"} <= set(COMPOSE["services"][service]["environment"])


def test_dockerfile_installs_the_project_and_bakes_in_the_instance():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert 'ENTRYPOINT ["heatmap-pipeline"]' in DOCKERFILE and "heatmap-pipeline" in scripts
    home = re.search(r"DAGSTER_HOME=(\S+)", DOCKERFILE).group(1)
    assert f"COPY deploy/dagster.yaml {home}/dagster.yaml" in DOCKERFILE
    for source in re.findall(r"^COPY (\S+(?: \S+)*) \S+$", DOCKERFILE, flags=re.M):
        for path in source.split():
            assert (REPO / path).exists(), path
    assert "pip install --no-cache-dir ." in DOCKERFILE


def test_grafana_dashboard_queries_only_metrics_the_admin_api_serves():
    dashboard = json.loads((REPO / "deploy" / "grafana-dashboard.json").read_text())
    source = (REPO / "heatmap_pipeline" / "web" / "routers" / "metrics.py").read_text()
    served = set(re.findall(r'GaugeMetricFamily\(\s*"(\w+)"', source))
    served |= {f"{name}_total" for name in re.findall(r'CounterMetricFamily\(\s*"(\w+)"', source)}
    assert {"dagster_runs", "events_received_total", "sessions_created_total"} <= served
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            queried |= set(re.findall(r"\b([a-z_]+)(?=[{\[ )]|$)", target["expr"])) - {"sum", "by", "delta", "time", "status"}
    assert queried and queried <= served, queried - served
    assert served <= queried, f"not on the dashboard: {served - queried}"

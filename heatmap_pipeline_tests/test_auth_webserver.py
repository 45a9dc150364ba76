"""The real Dagster webserver as `heatmap-pipeline webserver` serves it, with
DAGSTER_UI_ANONYMOUS_READ_ONLY=true: anyone may read, only a key may launch; and a browser logged
in with Basic auth launches nothing from another site's page (issue 11, point 9)."""

import base64
import json
import os
import subprocess
import sys

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from heatmap_pipeline_tests.admin_servers import (
    CHROMIUM, CHROMIUM_ARGS, browser_or_skip, free_port, serve_in_thread, stop, wait_until_answering,
)

KEY = "the-key"
LAUNCH = """
mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
  __typename ... on Error { message } ... on LaunchRunSuccess { run { runId } } } }"""
PARAMS = {"selector": {"repositoryLocationName": "heatmap_pipeline", "repositoryName": "__repository__", "jobName": "etl_job"},
          "runConfigData": {}, "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "2025-11-16"}]}}
BODY = json.dumps({"query": LAUNCH, "variables": {"p": PARAMS}})


def _serve(tmp_path, anonymous_read_only: bool):
    port = free_port()
    env = {"PATH": os.environ["PATH"], "HEATMAP_PIPELINE_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path / "dh"),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'game.sqlite'}", "ADMIN_API_KEY": KEY,
           "DAGSTER_UI_ANONYMOUS_READ_ONLY": str(anonymous_read_only).lower()}
    server = subprocess.Popen([sys.executable, "-m", "heatmap_pipeline.runtime.cli", "webserver", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/server_info", server)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)


@pytest.fixture
def read_only_webserver(tmp_path):
    yield from _serve(tmp_path, anonymous_read_only=True)


@pytest.fixture
def closed_webserver(tmp_path):
    """The default: nothing without a key, so a browser is asked for Basic auth and then holds the cookie."""
    yield from _serve(tmp_path, anonymous_read_only=False)


def _run_count(graphql: str) -> int:
    answer = httpx.post(graphql, json={"query": "{ runsOrError { ... on Runs { count } } }"}, headers={"x-api-key": KEY},
                        timeout=30).json()
    return answer["data"]["runsOrError"]["count"]


@pytest.mark.slow
def test_anonymous_read_only_ui_reads_but_cannot_launch(read_only_webserver):
    webserver = read_only_webserver
    graphql = f"{webserver}/graphql"
    assert httpx.post(graphql, json={"query": "{ version }"}, timeout=30).json()["data"]["version"].startswith("1.13")
    anonymous = httpx.post(graphql, json={"query": LAUNCH, "variables": {"p": PARAMS}}, timeout=60).json()
    assert anonymous["data"]["launchRun"]["__typename"] == "UnauthorizedError"
    keyed = httpx.post(graphql, json={"query": LAUNCH, "variables": {"p": PARAMS}}, headers={"x-api-key": KEY},
                       timeout=60).json()
    assert keyed["data"]["launchRun"]["__typename"] == "LaunchRunSuccess", keyed
    report = httpx.post(f"{webserver}/report_asset_materialization/game_events", timeout=30)
    assert report.status_code == 401
    # JSON Python cannot read: 400 naming it (Dagster's own answer was a 500).
    huge = b'{"query": "{ version }", "variables": {"x": ' + b"7" * 5000 + b"}}"
    refused = httpx.post(graphql, content=huge, headers={"x-api-key": KEY, "content-type": "application/json"}, timeout=30)
    assert refused.status_code == 400 and "more than 4300 digits" in refused.json()["detail"], refused.text
    too_big = httpx.post(graphql, json={"query": "{ version }"}, headers={"x-api-key": "k" * 20_000}, timeout=30)
    assert too_big.status_code == 431  # before the key is compared
    # Cross-site: a browser's Basic credentials launch nothing by GET, nor from another site's page.
    browser = {"authorization": "Basic " + base64.b64encode(f"operator:{KEY}".encode()).decode()}
    runs_before = _run_count(graphql)
    over_get = httpx.get(graphql, params={"query": LAUNCH, "variables": json.dumps({"p": PARAMS})}, headers=browser, timeout=30)
    assert over_get.status_code == 405, over_get.text  # it launched a run before
    cross_site = httpx.post(graphql, content=BODY, headers={**browser, "origin": "http://evil.example"}, timeout=30)
    assert cross_site.status_code == 403
    assert _run_count(graphql) == runs_before
    own_page = httpx.post(graphql, content=BODY, headers={**browser, "origin": webserver, "content-type": "application/json"},
                          timeout=60).json()
    assert own_page["data"]["launchRun"]["__typename"] == "LaunchRunSuccess", own_page
    assert _run_count(graphql) == runs_before + 1


def _attacker_page(ui: str) -> Starlette:
    """Another site's page, as a logged-in operator might visit it: it tries a GET launch (an
    image), a simple cross-site fetch with credentials, and a websocket to the UI."""
    script = f"""
    <img src="{ui}/graphql?query={LAUNCH.replace('"', '&quot;').replace(chr(10), ' ')}">
    <script>
      window.outcome = {{}};
      fetch("{ui}/graphql", {{method: "POST", mode: "no-cors", credentials: "include",
                              headers: {{"content-type": "text/plain"}}, body: {json.dumps(BODY)}}})
        .then(() => window.outcome.fetch = "sent", () => window.outcome.fetch = "failed");
      const ws = new WebSocket("{ui.replace('http://', 'ws://')}/graphql", "graphql-ws");
      ws.onopen = () => window.outcome.ws = "open";
      ws.onerror = () => window.outcome.ws = "refused";
    </script>"""
    return Starlette(routes=[Route("/", lambda _request: HTMLResponse(script))])


@pytest.mark.slow
def test_a_logged_in_browser_launches_from_the_ui_and_nothing_from_another_site(closed_webserver):
    webserver = closed_webserver
    sync_playwright = browser_or_skip()
    graphql = f"{webserver}/graphql"
    with serve_in_thread(_attacker_page(webserver)) as attacker, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(http_credentials={"username": "operator", "password": KEY})
            ui = context.new_page()
            ui.set_default_timeout(30000)
            assert ui.goto(f"{webserver}/runs").status == 200
            sockets = []
            ui.on("websocket", lambda socket: sockets.append(socket))
            ui.reload()
            ui.wait_for_timeout(1000)
            # The UI's own pages: a launch by POST from its origin (with the login cookie) succeeds.
            runs_before = _run_count(graphql)
            launched = ui.evaluate("body => fetch('/graphql', {method: 'POST', headers: {'content-type': 'application/json'},"
                                   " body}).then(r => r.json())", BODY)
            assert launched["data"]["launchRun"]["__typename"] == "LaunchRunSuccess", launched
            assert sockets and not any(socket.is_closed() for socket in sockets)  # the UI's GraphQL websocket
            # Another site's page in the same logged-in browser: nothing is launched.
            other = context.new_page()
            other.goto(attacker)
            other.wait_for_function("window.outcome.fetch && window.outcome.ws")
            assert other.evaluate("window.outcome") == {"fetch": "sent", "ws": "refused"}
            other.wait_for_timeout(1000)  # the image request too
            assert _run_count(graphql) == runs_before + 1
        finally:
            browser.close()

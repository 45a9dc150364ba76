"""API keys: constant-time matching of one or several keys, Basic auth, the UI cookie, and the
middleware that puts the Dagster webserver behind them (served here by a real uvicorn)."""

import base64

import httpx
import pytest
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute

from heatmap_pipeline.web.auth import (
    UI_COOKIE,
    authenticated_key,
    basic_auth_password,
    key_matches,
    matching_key,
    session_token,
)
from heatmap_pipeline.web.webserver import (
    AUTHENTICATED,
    ApiKeyMiddleware,
    anonymous_may,
    GraphQLJsonCheck,
    graphql_get_mutates,
    json_problem,
    same_site_request,
)
from heatmap_pipeline_tests.admin_servers import serve_in_thread

KEYS = ("new-key", "old-key")


def basic(password: str, user: str = "admin") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_every_rotated_key_matches_and_nothing_else():
    assert matching_key("new-key", KEYS) == "new-key"
    assert matching_key("old-key", KEYS) == "old-key"
    for wrong in ("", None, "new-ke", "new-key ", "NEW-KEY", "new-key,old-key"):
        assert not key_matches(wrong, KEYS), wrong
    assert not key_matches("anything", ())


def test_basic_auth_password_is_the_key_whatever_the_user_name():
    assert basic_auth_password(basic("new-key")) == "new-key"
    assert basic_auth_password(basic("pa:ss", user="")) == "pa:ss"
    assert basic_auth_password("Bearer new-key") is None
    assert basic_auth_password("Basic !!!notbase64") is None
    assert basic_auth_password("Basic " + base64.b64encode(b"no-colon").decode()) is None


def test_ui_cookie_is_derived_from_the_key_and_dies_with_it():
    token = session_token("old-key")
    assert "old-key" not in token and len(token) == 64
    assert authenticated_key({}, KEYS, {UI_COOKIE: token}) == "old-key"
    assert authenticated_key({}, ("new-key",), {UI_COOKIE: token}) is None  # rotated out
    assert authenticated_key({"x-api-key": "new-key"}, KEYS) == "new-key"
    assert authenticated_key({"authorization": basic("old-key")}, KEYS) == "old-key"
    assert authenticated_key({"x-api-key": "nope", "authorization": basic("nope")}, KEYS) is None


def test_anonymous_read_only_may_read_and_query_but_not_post_elsewhere():
    assert anonymous_may({"type": "http", "method": "GET", "path": "/runs"})
    assert anonymous_may({"type": "http", "method": "POST", "path": "/graphql"})
    assert anonymous_may({"type": "websocket", "path": "/graphql"})
    assert not anonymous_may({"type": "http", "method": "POST", "path": "/report_asset_materialization/game_events"})


def _probe_app():
    async def whoami(request):
        return PlainTextResponse("authenticated" if request.scope[AUTHENTICATED] else "anonymous")

    async def ws(websocket):
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    return Starlette(routes=[Route("/graphql", whoami, methods=["GET", "POST"]), Route("/report", whoami, methods=["POST"]),
                             WebSocketRoute("/graphql", ws)])


@pytest.fixture(scope="module")
def closed_server():
    with serve_in_thread(ApiKeyMiddleware(_probe_app(), KEYS)) as url:
        yield url


def test_middleware_refuses_without_a_valid_key_and_asks_the_browser_for_basic_auth(closed_server):
    for headers in ({}, {"x-api-key": ""}, {"x-api-key": "wrong"}, {"authorization": basic("wrong")}):
        response = httpx.post(f"{closed_server}/graphql", headers=headers)
        assert response.status_code == 401, headers
        assert response.json() == {"detail": "Unauthorized: invalid API key"}
        assert response.headers["www-authenticate"].startswith("Basic realm=")
        assert "new-key" not in response.text and "old-key" not in response.text
    assert httpx.post(f"{closed_server}/graphql?x-api-key=new-key").status_code == 401  # header only


def test_middleware_accepts_header_basic_auth_and_then_the_cookie(closed_server):
    assert httpx.post(f"{closed_server}/graphql", headers={"x-api-key": "old-key"}).text == "authenticated"
    browser = httpx.Client()
    first = browser.get(f"{closed_server}/graphql", headers={"authorization": basic("new-key")})
    assert first.text == "authenticated"
    cookie = first.headers["set-cookie"]
    assert cookie.startswith(f"{UI_COOKIE}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie and "new-key" not in cookie
    same_site = {"origin": closed_server}
    assert browser.post(f"{closed_server}/report", headers=same_site).text == "authenticated"  # cookie alone
    browser.close()


def test_middleware_without_configured_keys_answers_503_saying_how_to_enable():
    with serve_in_thread(ApiKeyMiddleware(_probe_app(), ())) as url:
        response = httpx.post(f"{url}/graphql", headers={"x-api-key": "anything"})
    assert response.status_code == 503 and "ADMIN_API_KEY" in response.json()["detail"]


def test_read_only_mode_lets_anonymous_readers_in_as_anonymous():
    with serve_in_thread(ApiKeyMiddleware(_probe_app(), KEYS, anonymous_read_only=True)) as url:
        assert httpx.post(f"{url}/graphql").text == "anonymous"  # Dagster then refuses its mutations
        assert httpx.post(f"{url}/graphql", headers={"x-api-key": "new-key"}).text == "authenticated"
        assert httpx.post(f"{url}/report").status_code == 401


def test_websocket_needs_the_key_or_the_cookie(closed_server):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    ws_url = closed_server.replace("http://", "ws://") + "/graphql"
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url, open_timeout=5)
    assert refused.value.response.status_code == 403
    with connect(ws_url, additional_headers={"Cookie": f"{UI_COOKIE}={session_token('new-key')}"}, open_timeout=5) as ws:
        assert ws.recv(timeout=5) == "hello"


# --- Cross-site requests (issue 11, point 9) ---------------------------------------------------
LAUNCH = "mutation { launchRun(executionParams: {}) { __typename } }"


def test_a_graphql_get_mutates_when_any_operation_is_a_mutation_or_subscription():
    from urllib.parse import urlencode

    assert graphql_get_mutates(urlencode({"query": LAUNCH}).encode())
    assert graphql_get_mutates(urlencode({"query": "query A { version } mutation B { x }", "operationName": "A"}).encode())
    assert graphql_get_mutates(urlencode({"query": "subscription { logs }"}).encode())
    assert not graphql_get_mutates(urlencode({"query": "{ version }"}).encode())
    assert not graphql_get_mutates(urlencode({"query": "mutation {"}).encode())  # Dagster answers the syntax error
    assert not graphql_get_mutates(b"")


def test_same_site_means_origin_or_referer_naming_this_host_or_json_without_either():
    def check(**headers):
        return same_site_request(Headers({"host": "ui.example:3000", **{k.replace("_", "-"): v for k, v in headers.items()}}))

    assert check(origin="http://ui.example:3000") and check(origin="https://UI.example:3000")
    assert not check(origin="http://evil.example") and not check(origin="null")
    assert not check(origin="http://ui.example:3001") and not check(origin="http://evil.example", referer="http://ui.example:3000/x")
    assert check(referer="http://ui.example:3000/runs") and not check(referer="http://evil.example/ui.example:3000")
    assert check(content_type="application/json; charset=utf-8")  # no Origin, no Referer: not a browser form
    assert not check(content_type="application/x-www-form-urlencoded") and not check(content_type="text/plain") and not check()
    assert check(origin="https://ui.example", x_forwarded_host="ui.example")  # behind a proxy that rewrites Host
    assert same_site_request(Headers({"host": "ui.example", "origin": "https://ui.example:443"}))


def test_graphql_mutations_over_get_are_refused_with_405_whoever_sends_them(closed_server):
    for headers in ({"authorization": basic("new-key")}, {"x-api-key": "new-key"}, {}):
        response = httpx.get(f"{closed_server}/graphql", params={"query": LAUNCH}, headers=headers)
        assert response.status_code == 405 and "refused over GET" in response.json()["detail"], headers
        assert response.headers["allow"] == "POST"
    query = httpx.get(f"{closed_server}/graphql", params={"query": "{ version }"}, headers={"authorization": basic("new-key")})
    assert query.text == "authenticated"


def test_state_changing_requests_with_browser_credentials_must_be_same_site(closed_server):
    cookie = {"cookie": f"{UI_COOKIE}={session_token('new-key')}"}
    for credentials in ({"authorization": basic("new-key")}, cookie):
        form = {**credentials, "content-type": "application/x-www-form-urlencoded"}
        for refused in ({**form, "origin": "http://evil.example"}, {**form, "referer": "http://evil.example/page"}, form,
                        {**credentials, "content-type": "application/json", "origin": "http://evil.example"}):
            response = httpx.post(f"{closed_server}/graphql", headers=refused)
            assert response.status_code == 403 and "Cross-site request refused" in response.json()["detail"], refused
        for allowed in ({**form, "origin": closed_server}, {**form, "referer": f"{closed_server}/runs"},
                        {**credentials, "content-type": "application/json"}):
            assert httpx.post(f"{closed_server}/graphql", headers=allowed).text == "authenticated", allowed
        assert httpx.get(f"{closed_server}/graphql", headers={**credentials, "origin": "http://evil.example"}).text == "authenticated"
    # API clients are not affected, whatever they send.
    api_client = {"x-api-key": "old-key", "origin": "http://evil.example", "content-type": "text/plain"}
    assert httpx.post(f"{closed_server}/report", headers=api_client).text == "authenticated"


def test_websocket_with_the_cookie_from_another_origin_is_refused(closed_server):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    ws_url = closed_server.replace("http://", "ws://") + "/graphql"
    cookie = {"Cookie": f"{UI_COOKIE}={session_token('new-key')}"}
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url, additional_headers={**cookie, "Origin": "http://evil.example"}, open_timeout=5)
    assert refused.value.response.status_code == 403
    for origin in ({"Origin": closed_server}, {}):  # its own page, or no browser at all
        with connect(ws_url, additional_headers={**cookie, **origin}, open_timeout=5) as ws:
            assert ws.recv(timeout=5) == "hello"
    with connect(ws_url, additional_headers={"x-api-key": "new-key", "Origin": "http://evil.example"}, open_timeout=5) as ws:
        assert ws.recv(timeout=5) == "hello"


# --- GraphQL JSON that Python cannot read: 400, not Dagster's 500 -------------------------------
def test_json_problem_names_what_python_cannot_read_in_valid_json():
    assert "more than 4300 digits" in json_problem(b'{"x": ' + b"7" * 5000 + b"}")
    assert json_problem("[" * 100_000 + "]" * 100_000) == "is nested too deeply"
    assert json_problem(b'{"x": ' + b"7" * 4000 + b"}") is None and json_problem(b'{"x": 1e999}') is None
    assert json_problem(b"not json") is None  # Dagster's own 400


def test_graphql_json_python_cannot_read_is_a_400_and_the_rest_reaches_the_app_intact():
    from starlette.requests import Request

    async def echo(request: Request):
        return PlainTextResponse(f"{request.method} {len(await request.body())}")

    app = Starlette(routes=[Route("/graphql", echo, methods=["GET", "POST"])])
    with serve_in_thread(ApiKeyMiddleware(GraphQLJsonCheck(app), KEYS)) as url:
        key = {"x-api-key": "new-key"}
        huge = b'{"query": "{ version }", "variables": {"x": ' + b"7" * 5000 + b"}}"
        refused = httpx.post(f"{url}/graphql", content=huge, headers={**key, "content-type": "application/json"})
        assert refused.status_code == 400 and "more than 4300 digits" in refused.json()["detail"]
        deep = httpx.post(f"{url}/graphql", content=b"[" * 50_000 + b"]" * 50_000, headers={**key, "content-type": "application/json"})
        assert deep.status_code == 400 and "nested too deeply" in deep.json()["detail"]
        over_get = httpx.get(f"{url}/graphql", params={"query": "{ version }", "variables": '{"x": ' + "7" * 5000 + "}"}, headers=key)
        assert over_get.status_code == 400 and over_get.json()["detail"].startswith("GraphQL variables:")
        body = b'{"query": "{ version }", "variables": {"x": "' + b"y" * 200_000 + b'"}}'
        chunked = httpx.post(f"{url}/graphql", content=iter([body[:1000], body[1000:]]), headers={**key, "content-type": "application/json"})
        assert chunked.text == f"POST {len(body)}"  # buffered, checked and handed on whole
        assert httpx.post(f"{url}/graphql", content=huge, headers={"content-type": "application/json"}).status_code == 401  # key first

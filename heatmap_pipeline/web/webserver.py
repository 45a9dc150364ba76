"""The Dagster webserver behind an API-key check, as ``heatmap-pipeline dev`` serves it.

Dagster's own webserver has no authentication; ``dagster_webserver.app.create_app_from_workspace_process_context``
(private API, hence Dagster pinned to 1.13.* in pyproject.toml) gives us its Starlette app, which we
wrap in :class:`ApiKeyMiddleware` and serve with uvicorn.

Accepted credentials, any key of ADMIN_API_KEY: the ``x-api-key`` header (API clients such as
``DagsterGraphQLClient(..., headers={"x-api-key": KEY})``), HTTP Basic auth with the key as password
(browsers: any user name), or the cookie set after a successful Basic login (covers websockets).
With DAGSTER_UI_ANONYMOUS_READ_ONLY=true, requests without a key get Dagster's read-only mode:
they can look, and every mutation answers UnauthorizedError.

Cross-site requests: a browser sends Basic credentials and the cookie with requests that other
sites' pages make, so those credentials alone must not change state.
- GraphQL mutations (and subscriptions) over GET are refused for everyone (405): a link or an
  ``<img>`` could send them. Dagster's UI sends them by POST.
- A state-changing request (any method but GET, HEAD, OPTIONS) authenticated by Basic auth or
  the cookie must come from this server's own pages (:func:`same_site_request`): its ``Origin``
  (or, without one, its ``Referer``) names this host, or it has neither and is
  ``application/json``, which no cross-site form can send without a CORS preflight (never granted
  here). Otherwise 403.
- A websocket handshake authenticated by Basic auth or the cookie with an ``Origin`` of another
  host is refused (browsers always send ``Origin`` on websockets).
- Clients sending ``x-api-key`` are not affected: no browser adds that header by itself.

Requests Python cannot read (headers over 16 KB: :class:`~heatmap_pipeline.web.limits.HeaderSizeLimit`;
a GraphQL JSON with a 5,000-digit integer or nested too deeply: :class:`GraphQLJsonCheck`) are
answered 431 and 400 instead of the 500 Dagster's webserver gives.
"""

from __future__ import annotations

import json
import logging
import sys
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from heatmap_pipeline.orchestration import API_KEY_HEADER
from heatmap_pipeline.web.auth import (
    UI_COOKIE,
    UI_NO_KEY_CONFIGURED,
    UNAUTHORIZED,
    authenticated_key,
    basic_auth_password,
    key_for_session_token,
    matching_key,
    session_token,
)
from heatmap_pipeline.web.limits import HeaderSizeLimit

log = logging.getLogger("heatmap_pipeline.webserver")
AUTHENTICATED = "heatmap_pipeline.authenticated"  # set in the ASGI scope for the read-only decision
REALM = 'Basic realm="heatmap_pipeline Dagster UI (password: an ADMIN_API_KEY key)", charset="UTF-8"'


def _cookies(headers: Headers) -> dict[str, str]:
    jar = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except Exception:  # noqa: BLE001 - a malformed cookie header just means no cookie
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
MUTATION_OVER_GET = ("GraphQL mutations and subscriptions are refused over GET (a link or an image on any page could "
                     "send them with your browser's credentials): send them by POST.")
CROSS_SITE = ("Cross-site request refused: a request that changes state with Basic auth or the UI cookie must come from "
              "this server's own pages (Origin or Referer naming this host). API clients: send the x-api-key header.")


def _host(value: str) -> str:
    """``host[:port]`` of a URL or Host header, lower case, without the default ports."""
    netloc = urlsplit(value).netloc if "://" in value else value
    netloc = netloc.rpartition("@")[2].strip().lower()
    for default in (":80", ":443"):
        if netloc.endswith(default):
            return netloc[: -len(default)]
    return netloc


def same_site_request(headers: Headers) -> bool:
    """Whether a browser could only have sent this request from this server's own pages (see the module docstring).

    The host a page was served from is the ``Host`` header, or ``X-Forwarded-Host`` behind a
    proxy that rewrites ``Host`` (neither can be set by a cross-site form)."""
    ours = {_host(value) for value in (headers.get("host", ""), headers.get("x-forwarded-host", "")) if value}
    source = headers.get("origin") or headers.get("referer")
    if source:
        return _host(source) in ours and source.strip().lower() != "null"
    return headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


def graphql_get_mutates(query_string: bytes) -> bool:
    """Whether a GraphQL GET request's ``query`` holds a mutation or a subscription. An unparsable
    query mutates nothing: Dagster answers it with its syntax error."""
    from graphql import GraphQLError, OperationDefinitionNode, OperationType, parse

    queries = parse_qs(query_string.decode("latin-1")).get("query", [])
    for query in queries:
        try:
            document = parse(query)
        except (GraphQLError, RecursionError):
            continue
        if any(isinstance(node, OperationDefinitionNode) and node.operation != OperationType.QUERY
               for node in document.definitions):
            return True
    return False


def json_problem(text: str | bytes) -> str | None:
    """What makes a JSON text unreadable to Python although it is valid JSON (Dagster's webserver
    answers such a GraphQL request with a 500); None when Python reads it or it is not JSON at all
    (Dagster answers that 400 itself)."""
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return None
    except RecursionError:
        return "is nested too deeply"
    except ValueError:  # int() refuses strings of more than 4300 digits (sys.get_int_max_str_digits)
        return f"holds an integer of more than {sys.get_int_max_str_digits()} digits"
    return None


class GraphQLJsonCheck:
    """Pure ASGI middleware in front of Dagster's GraphQL endpoint: a JSON body, or a ``variables``
    or ``extensions`` query parameter, that Python cannot read (a 5,000-digit integer, nesting too
    deep) is answered 400 naming the problem, instead of the 500 Dagster's ``request.json()`` gives."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope.get("path", "").rstrip("/").endswith("/graphql"):
            return await self.app(scope, receive, send)
        if scope.get("method") in ("GET", "HEAD"):
            params = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            for name in ("variables", "extensions"):
                for value in params.get(name, []):
                    if problem := json_problem(value):
                        return await _answer(scope, receive, send, 400, f"GraphQL {name}: the JSON {problem}")
            return await self.app(scope, receive, send)
        if "application/json" not in Headers(scope=scope).get("content-type", ""):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)  # disconnected: nothing to check
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if problem := json_problem(body):
            return await _answer(scope, receive, send, 400, f"GraphQL request body: the JSON {problem}")
        return await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)


def _replay(messages: list[dict], then=None):
    """A ``receive`` that hands out ``messages`` first, then waits on ``then`` (e.g. for a disconnect)."""
    async def receive():
        if messages:
            return messages.pop(0)
        return await then() if then else {"type": "http.disconnect"}

    return receive


async def _answer(scope, receive, send, status: int, detail: str, headers: dict | None = None) -> None:
    await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, receive, send)


def anonymous_may(scope: dict) -> bool:
    """What an unauthenticated client may do in read-only mode: read pages and assets, and use
    GraphQL (Dagster's read-only mode refuses its mutations)."""
    path = scope.get("path", "")
    if scope["type"] == "websocket":
        return path.rstrip("/").endswith("/graphql")
    return scope.get("method") in ("GET", "HEAD") or (scope.get("method") == "POST" and path.rstrip("/").endswith("/graphql"))


class ApiKeyMiddleware:
    """ASGI middleware: lets a request through only with a valid key (or, if allowed, read-only)."""

    def __init__(self, app, keys: tuple[str, ...], anonymous_read_only: bool = False):
        self.app = app
        self.keys = keys
        self.anonymous_read_only = anonymous_read_only

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD") \
                and scope.get("path", "").rstrip("/").endswith("/graphql") and graphql_get_mutates(scope.get("query_string", b"")):
            return await self._refuse(scope, receive, send, 405, MUTATION_OVER_GET, "mutation over GET",
                                      {"Allow": "POST"})
        cookies = _cookies(headers)
        key = authenticated_key(headers, self.keys, cookies) if self.keys else None
        scope[AUTHENTICATED] = key is not None
        by_browser_credentials = key is not None and matching_key(headers.get(API_KEY_HEADER), self.keys) is None
        if by_browser_credentials and (scope["type"] == "websocket" or scope.get("method") not in SAFE_METHODS):
            cross_site = (headers.get("origin") is not None and not same_site_request(headers)) \
                if scope["type"] == "websocket" else not same_site_request(headers)
            if cross_site:
                return await self._refuse(scope, receive, send, 403, CROSS_SITE,
                                          f"cross-site (from host {_host(headers.get('origin') or headers.get('referer') or '')!r})")
        if key is not None:
            if scope["type"] == "http" and key_for_session_token(cookies.get(UI_COOKIE), self.keys) is None \
                    and basic_auth_password(headers.get("authorization")):
                send = self._setting_cookie(send, session_token(key))
            return await self.app(scope, receive, send)
        if self.anonymous_read_only and anonymous_may(scope):
            return await self.app(scope, receive, send)
        if not self.keys:
            return await self._refuse(scope, receive, send, 503, UI_NO_KEY_CONFIGURED, "no valid API key")
        return await self._refuse(scope, receive, send, 401, UNAUTHORIZED, "no valid API key", {"WWW-Authenticate": REALM})

    @staticmethod
    async def _refuse(scope, receive, send, status: int, detail: str, why: str, headers: dict | None = None) -> None:
        client = (scope.get("client") or ("unknown",))[0]
        log.warning(f"Dagster webserver: refused {scope.get('method', 'WEBSOCKET')} {scope.get('path')} from {client}: {why}")
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return
        await _answer(scope, receive, send, status, detail, headers)

    @staticmethod
    def _setting_cookie(send, token: str):
        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                cookie = f"{UI_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1")
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)

        return send_with_cookie


def _read_only_per_request_context_class():
    """A WorkspaceProcessContext whose request contexts are read-only for unauthenticated connections."""
    from dagster._core.workspace.context import WorkspaceProcessContext, WorkspaceRequestContext

    class PerRequestReadOnlyContext(WorkspaceProcessContext):
        def create_request_context(self, source=None) -> WorkspaceRequestContext:
            scope = getattr(source, "scope", None)
            anonymous = isinstance(scope, dict) and not scope.get(AUTHENTICATED, False)
            return WorkspaceRequestContext(
                instance=self.instance,
                current_workspace=self.get_current_workspace(),
                process_context=self,
                version=self.version,
                source=source,
                read_only=self.read_only or anonymous,
            )

    return PerRequestReadOnlyContext


def serve_webserver(
    workspace_file: Path, host: str, port: int, keys: tuple[str, ...], anonymous_read_only: bool, log_level: str = "warning"
) -> None:
    """Run the authenticated Dagster webserver until interrupted (instance from DAGSTER_HOME)."""
    import uvicorn
    from dagster import DagsterInstance
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster_webserver.app import create_app_from_workspace_process_context
    from dagster_webserver.cli import _lifespan
    from dagster_webserver.version import __version__

    import signal

    def _interrupt(_signum, _frame):
        raise KeyboardInterrupt

    # uvicorn re-raises SIGTERM after its graceful shutdown; as KeyboardInterrupt it unwinds the
    # `with` below, which stops the code server this process started (else it lingers, orphaned).
    signal.signal(signal.SIGTERM, _interrupt)
    context_class = _read_only_per_request_context_class()
    with DagsterInstance.get() as instance, context_class(
        instance, WorkspaceFileTarget(paths=[str(workspace_file)]), version=__version__, read_only=False,
    ) as process_context:
        app = create_app_from_workspace_process_context(process_context, lifespan=_lifespan)
        mode = "read-only without a key" if anonymous_read_only else "closed without a key"
        print(f"heatmap-pipeline: Dagster UI on http://{host}:{port} (API key or Basic auth required; {mode})", flush=True)
        app = HeaderSizeLimit(ApiKeyMiddleware(GraphQLJsonCheck(app), keys, anonymous_read_only))
        # No uvicorn access log: a key sent by mistake in a query string must not reach the logs.
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)

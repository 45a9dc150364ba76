"""The Dagster webserver behind an API-key check, as ``heatmap-pipeline dev`` serves it.

Dagster's own webserver has no authentication; ``dagster_webserver.app.create_app_from_workspace_process_context``
(private API, hence Dagster pinned to 1.13.* in pyproject.toml) gives us its Starlette app, which we
wrap in :class:`ApiKeyMiddleware` and serve with uvicorn.

Accepted credentials, any key of ADMIN_API_KEY: the ``x-api-key`` header (API clients such as
``DagsterGraphQLClient(..., headers={"x-api-key": KEY})``), HTTP Basic auth with the key as password
(browsers: any user name), or the cookie set after a successful Basic login (covers websockets).
With DAGSTER_UI_ANONYMOUS_READ_ONLY=true, requests without a key get Dagster's read-only mode:
they can look, and every mutation answers UnauthorizedError.
"""

from __future__ import annotations

import logging
from http.cookies import SimpleCookie
from pathlib import Path

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from heatmap_pipeline.web.auth import (
    UI_COOKIE,
    UI_NO_KEY_CONFIGURED,
    UNAUTHORIZED,
    authenticated_key,
    basic_auth_password,
    key_for_session_token,
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
        cookies = _cookies(headers)
        key = authenticated_key(headers, self.keys, cookies) if self.keys else None
        scope[AUTHENTICATED] = key is not None
        if key is not None:
            if scope["type"] == "http" and key_for_session_token(cookies.get(UI_COOKIE), self.keys) is None \
                    and basic_auth_password(headers.get("authorization")):
                send = self._setting_cookie(send, session_token(key))
            return await self.app(scope, receive, send)
        if self.anonymous_read_only and anonymous_may(scope):
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("unknown",))[0]
        log.warning(f"Dagster webserver: refused {scope.get('method', 'WEBSOCKET')} {scope.get('path')} from {client}: no valid API key")
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return
        if not self.keys:
            response = JSONResponse({"detail": UI_NO_KEY_CONFIGURED}, status_code=503)
        else:
            response = JSONResponse({"detail": UNAUTHORIZED}, status_code=401, headers={"WWW-Authenticate": REALM})
        await response(scope, receive, send)

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
        # No uvicorn access log: a key sent by mistake in a query string must not reach the logs.
        uvicorn.run(HeaderSizeLimit(ApiKeyMiddleware(app, keys, anonymous_read_only)), host=host, port=port, log_level=log_level, access_log=False)

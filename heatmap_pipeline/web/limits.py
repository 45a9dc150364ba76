"""Request-header size limit, as pure ASGI middleware in front of the admin API and the Dagster webserver.

uvicorn's httptools parser accepts headers of any size, so a 1 MB ``x-api-key`` would be read and
compared like any other. :class:`HeaderSizeLimit` answers 431 (Request Header Fields Too Large)
before authentication or anything else looks at a request whose headers are over the limit.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger("heatmap_pipeline.web")
MAX_HEADER_BYTES = 16 * 1024  # names and values of every header together; browsers send 1-8 KB


def header_bytes(scope: dict) -> int:
    return sum(len(name) + len(value) for name, value in scope.get("headers", []))


class HeaderSizeLimit:
    def __init__(self, app, max_bytes: int = MAX_HEADER_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        size = header_bytes(scope)
        if size <= self.max_bytes:
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("unknown",))[0]
        log.warning(f"refused {scope.get('method', 'WEBSOCKET')} {scope.get('path')} from {client}: {size} bytes of headers")
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1009})  # message too big
            return
        detail = f"Request headers are {size} bytes; at most {self.max_bytes} bytes (16 KB) are accepted. Send a shorter x-api-key or fewer cookies."
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": 431,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

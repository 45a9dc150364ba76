"""The admin API's dependencies: what the app holds (settings, warehouse engine, Dagster client,
request drivers), the API-key check, and the two inputs of POST /admin/run-jobs.

The app's objects live on ``app.state``: ``create_app`` sets the settings and the engine, and the
lifespan the Dagster client and the drivers (see app.py).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, HTTPException, Query, Request, Security
from fastapi.security import APIKeyHeader

from heatmap_pipeline.orchestration import API_KEY_HEADER
from heatmap_pipeline.settings import Settings
from heatmap_pipeline.trigger.graphql import DagsterGraphQL
from heatmap_pipeline.trigger.launcher import RequestDrivers
from heatmap_pipeline.trigger.validation import MAX_BODY_BYTES, InvalidTrigger, TriggerSpec, parse_trigger_body
from heatmap_pipeline.web.auth import NO_KEY_CONFIGURED, UNAUTHORIZED, matching_key

log = logging.getLogger("heatmap_pipeline.admin")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_warehouse(request: Request) -> sa.Engine:
    return request.app.state.engine


def get_dagster(request: Request) -> DagsterGraphQL:
    return request.app.state.dagster


def get_drivers(request: Request) -> RequestDrivers:
    return request.app.state.drivers


SettingsDep = Annotated[Settings, Depends(get_settings)]
WarehouseDep = Annotated[sa.Engine, Depends(get_warehouse)]
DagsterDep = Annotated[DagsterGraphQL, Depends(get_dagster)]
DriversDep = Annotated[RequestDrivers, Depends(get_drivers)]


def client_host(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# Only this header: a key in the query string would end up in proxies' and browsers' logs.
api_key_header = APIKeyHeader(
    name=API_KEY_HEADER, scheme_name="ApiKey", auto_error=False,
    description="One of the keys of ADMIN_API_KEY (a comma-separated list, for rotation).",
)


def require_api_key(request: Request, settings: SettingsDep, key: Annotated[str | None, Security(api_key_header)]) -> None:
    """503 while no key is configured, 401 for a missing or wrong key: before any other input is read."""
    if not settings.admin_api_keys:
        raise HTTPException(503, NO_KEY_CONFIGURED)
    if matching_key(key, settings.admin_api_keys) is None:
        log.warning(f"admin API: refused {request.method} {request.url.path} from {client_host(request)}: invalid or missing API key")
        raise HTTPException(401, UNAUTHORIZED)


def _http_error(exc: InvalidTrigger) -> HTTPException:
    return HTTPException(exc.status, str(exc))


def _query_names(dependant) -> set[str]:
    """The query parameters a route takes, its dependencies' included."""
    names = {param.alias for param in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= _query_names(dependency)
    return names


def known_query_only(request: Request) -> None:
    """422 naming a query parameter the route does not take (a typo such as ?wiat=false would
    otherwise be ignored silently)."""
    known = _query_names(request.scope["route"].dependant)
    for name in request.query_params:
        if name not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise _http_error(InvalidTrigger(422, name[:40] or "query", f"is not a known query parameter; allowed: {allowed}"))


# The values of ?wait=, case-insensitive; the OpenAPI pattern below says exactly the same.
WAIT_VALUES = {"": True, "1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
WAIT_PATTERN = "^(" + "|".join("".join(f"[{c}{c.upper()}]" if c.isalpha() else c for c in value) for value in WAIT_VALUES) + ")$"


def wait_for_runs(
    wait: Annotated[str, Query(
        description="true (default): answer once the runs ended or ADMIN_WAIT_TIMEOUT_SECONDS passed (then 202); "
                    "false: answer 202 at once and poll status_url. Also 1/0, yes/no, on/off, in any case.",
        examples=["false"], json_schema_extra={"pattern": WAIT_PATTERN},
    )] = "",
) -> bool:
    if wait.isascii() and wait.lower() in WAIT_VALUES:
        return WAIT_VALUES[wait.lower()]
    raise _http_error(InvalidTrigger(422, "wait", f"{wait[:20]!r} is not a boolean; use wait=true (default) or wait=false"))


async def _read_body(request: Request) -> bytes:
    """The body, refused as soon as it is over MAX_BODY_BYTES: by its Content-Length, or while reading it."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and (len(declared) > 9 or int(declared) > MAX_BODY_BYTES):
        raise InvalidTrigger(413, "body", f"is {declared} bytes; at most {MAX_BODY_BYTES} bytes (64 KB) are accepted")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise InvalidTrigger(413, "body", f"is over {MAX_BODY_BYTES} bytes (64 KB); send a smaller JSON object")
        chunks.append(chunk)
    return b"".join(chunks)


async def trigger_spec(request: Request, settings: SettingsDep) -> TriggerSpec:
    """The POST body, validated by RunJobsBody (validation.py) against this deployment's levels and dates.

    Read here rather than declared as a body parameter: FastAPI reads declared bodies before any
    dependency runs, so the key check could not come first, nor the 64 KB limit while reading."""
    try:
        body = await _read_body(request)
        return parse_trigger_body(body, levels=settings.heatmap_levels, first_date=settings.partition_start_date,
                                  today=dt.datetime.now(dt.timezone.utc).date())
    except InvalidTrigger as exc:
        raise _http_error(exc) from None

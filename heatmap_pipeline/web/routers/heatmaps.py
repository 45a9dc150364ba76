"""The heatmap read API and the designer page, on the admin server.

* ``GET /api/v1/heatmap?level=&date=``: the old reader's contract, unchanged (``level``, ``date``,
  ``matrix`` first, the same 400 and 404 bodies), with extra fields after them; ``from``/``to``
  instead of ``date`` sums a range of days; read-time options (normalisation, smoothing, the
  difference with a second range ``compare_from``/``compare_to``).
* ``GET /api/v1/heatmaps/{level}/{span}.png``: the same, drawn (``span`` is a day ``2025-11-16`` or a
  range ``2025-11-10..2025-11-16``).
* ``GET /api/v1/heatmaps``: what exists (no matrices).
* ``GET /heatmaps``: the designer page (plain HTML and a little JavaScript, web/static/heatmaps.html).

Every route needs a key (x-api-key, Basic auth or the UI cookie), unless HEATMAP_READS_PUBLIC=true.
Sums are over the stored daily matrices (warehouse/heatmap_reads.py), never the events.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Path as PathParam, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, Field

from heatmap_pipeline.core.combine import (
    MAX_SMOOTH_SIGMA,
    Binning,
    BinningMismatch,
    binned_otherwise,
    common_binning,
    configured_binning,
    normalise,
    smooth,
    sum_matrices,
)
from heatmap_pipeline.core.binning import GridBounds
from heatmap_pipeline.core.render import render_heatmap_png
from heatmap_pipeline.settings import Settings
from heatmap_pipeline.warehouse.heatmap_reads import (
    POSITIONS, CorruptHeatmap, StoredHeatmap, read_heatmaps, stored_matrices,
)
from heatmap_pipeline.web.auth import UNAUTHORIZED, authenticated_key
from heatmap_pipeline.web.deps import SettingsDep, WarehouseDep, client_host, known_query_only

log = logging.getLogger("heatmap_pipeline.admin")

# The old reader's messages, byte for byte.
INVALID_DATE = "Invalid date format. Use YYYY-MM-DD"
NOT_FOUND = "Heatmap not found for specified level/date"
READS_LOCKED = (
    "Heatmap reads are locked: no API key is configured. Set ADMIN_API_KEY (log in with any user name and a key "
    "as password, or send it as x-api-key), or HEATMAP_READS_PUBLIC=true to make the reads public."
)
READ_REALM = 'Basic realm="heatmap_pipeline heatmaps (password: an ADMIN_API_KEY key)", charset="UTF-8"'
PAGE = Path(__file__).resolve().parent.parent / "static" / "heatmaps.html"
MAX_LEVEL_CHARS = 64  # heatmap_kinds.level
# Printable text: PostgreSQL text cannot hold NUL, and no level name has control characters.
LEVEL_PATTERN = r"^[^\x00-\x1f\x7f]+$"
MAX_LIST_ROWS = 10000
UNITS = {"none": "events", "share": "share of events", "per_session": "events per session"}


class ErrorDetail(BaseModel):
    detail: str


class BadParameter(BaseModel):
    """422: our own checks say it in a sentence; FastAPI's type checks list each parameter (loc, msg)."""

    detail: str | list[dict[str, Any]]


def require_read_access(request: Request, settings: SettingsDep) -> None:
    """Public reads: nobody is asked anything, whatever Authorization header comes along (the old
    dashboard sends its own JWT). Otherwise a configured key, as x-api-key, Basic password or UI cookie."""
    if settings.heatmap_reads_public:
        return
    if not settings.admin_api_keys:
        raise HTTPException(503, READS_LOCKED)
    if authenticated_key(request.headers, settings.admin_api_keys, request.cookies) is None:
        log.warning(f"read API: refused {request.method} {request.url.path} from {client_host(request)}: no valid key")
        raise HTTPException(401, UNAUTHORIZED, headers={"WWW-Authenticate": READ_REALM})


router = APIRouter(
    tags=["heatmaps"],
    dependencies=[Depends(require_read_access)],
    responses={
        401: {"model": ErrorDetail, "description": "No valid key (x-api-key, Basic password or UI cookie); "
                                                     "not asked when HEATMAP_READS_PUBLIC=true"},
        503: {"model": ErrorDetail, "description": "Reads need a key and no ADMIN_API_KEY is configured, "
                                                     "or the warehouse database is down"},
    },
)


# --- parameters ------------------------------------------------------------------------------------

def parse_day(text: str, name: str) -> dt.date:
    """A YYYY-MM-DD day (``strptime``, so 2025-1-5 is taken too); 400 otherwise, in the old reader's words for
    ``date`` and naming the parameter for the others."""
    try:
        return dt.datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise HTTPException(400, INVALID_DATE if name == "date" else f"{INVALID_DATE} (parameter '{name}': {text[:40]!r})") from None


@dataclass(frozen=True)
class DayRange:
    first: dt.date
    last: dt.date

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    def __str__(self) -> str:
        return self.first.isoformat() if self.first == self.last else f"{self.first}..{self.last}"


def day_range(first_text: str, last_text: str, first_name: str, last_name: str, max_days: int) -> DayRange:
    first, last = parse_day(first_text, first_name), parse_day(last_text, last_name)
    if first > last:
        raise HTTPException(422, f"{first_name} ({first}) is after {last_name} ({last}); give {first_name} <= {last_name}")
    span = DayRange(first, last)
    if span.days > max_days:
        raise HTTPException(422, f"{first_name}..{last_name} spans {span.days} days; at most {max_days} "
                                 "(HEATMAP_MAX_RANGE_DAYS)")
    return span


def level_param(description: str):
    return Query(min_length=1, max_length=MAX_LEVEL_CHARS, pattern=LEVEL_PATTERN, description=description, examples=["1"])


KindQuery = Annotated[str, Query(description="Heatmap kind: positions (default, the old matrix), deaths, jumps, or a kind "
                                             "of the levels file (HEATMAP_LEVELS_FILE).", examples=["deaths"])]
NormaliseQuery = Annotated[Literal["none", "share", "per_session"], Query(
    description="none: counts; share: each cell's share of the range's total (sums to 1); per_session: counts "
                "divided by the sessions of the range (each day's distinct sessions, summed over its days).")]
SmoothQuery = Annotated[float, Query(
    ge=0, le=MAX_SMOOTH_SIGMA, allow_inf_nan=False,
    description="Gaussian smoothing, sigma in cells (0: none); edges reflect, so the sum is kept.")]
CompareFromQuery = Annotated[str | None, Query(
    description="First day (YYYY-MM-DD) of a second range to subtract: the result is range minus compare range, "
                "each normalised and smoothed first. Needs compare_to.", examples=["2025-11-03"])]
CompareToQuery = Annotated[str | None, Query(description="Last day (YYYY-MM-DD) of the compare range, inclusive.",
                                             examples=["2025-11-09"])]


@dataclass(frozen=True)
class ReadOptions:
    kind: str
    normalize: str
    smooth: float
    compare: DayRange | None


def read_options(settings: SettingsDep, kind: KindQuery = POSITIONS, normalize: NormaliseQuery = "none",
                 smooth: SmoothQuery = 0.0, compare_from: CompareFromQuery = None,
                 compare_to: CompareToQuery = None) -> ReadOptions:
    kinds = settings.heatmap_kinds
    if kind not in kinds:
        raise HTTPException(422, f"kind: {kind[:40]!r} is not a heatmap kind; allowed: {', '.join(kinds)}")
    compare = None
    if (compare_from is None) != (compare_to is None):
        raise HTTPException(422, "compare_from and compare_to go together: give both (a range to subtract) or neither")
    if compare_from is not None:
        compare = day_range(compare_from, compare_to, "compare_from", "compare_to", settings.heatmap_max_range_days)
    return ReadOptions(kind, normalize, smooth, compare)


OptionsDep = Annotated[ReadOptions, Depends(read_options)]


def document_kinds(openapi: dict, settings: Settings) -> None:
    """This deployment's kinds as the ``kind`` parameters' enum: they come from the settings (the
    levels file), so FastAPI cannot know them when the routes are declared."""
    for methods in openapi["paths"].values():
        for parameter in methods.get("get", {}).get("parameters", []):
            if parameter["name"] == "kind" and parameter["in"] == "query":
                schema = parameter["schema"]
                target = next((option for option in schema.get("anyOf", []) if option.get("type") == "string"), schema)
                target["enum"] = list(settings.heatmap_kinds)


# --- reading and combining -------------------------------------------------------------------------

@dataclass
class RangeRead:
    """A range's stored days, summed, normalised and smoothed."""

    span: DayRange
    days: list[StoredHeatmap]
    matrix: np.ndarray
    binning: Binning
    missing: list[dt.date] = field(default_factory=list)
    stored_matrix: list | None = None  # the one day's matrix as stored, for a single day

    @property
    def total(self) -> float:
        return float(sum(day.total for day in self.days))

    @property
    def sessions(self) -> int | None:
        return None if any(day.sessions is None for day in self.days) else sum(day.sessions for day in self.days)

    def summary(self) -> dict:
        events = [day.events for day in self.days]
        return {
            "from": self.span.first.isoformat(), "to": self.span.last.isoformat(),
            "days": [day.date.isoformat() for day in self.days], "missing_days": [d.isoformat() for d in self.missing],
            "total": self.total, "out_of_bounds": sum(day.out_of_bounds for day in self.days),
            "events": None if None in events else sum(events), "sessions": self.sessions,
        }


def _conflict(exc: BinningMismatch, what: str, level: str, configured: Binning | None) -> HTTPException:
    stale = binned_otherwise(exc.groups, configured) if configured is not None else []
    if not stale:
        return HTTPException(409, f"{what}: {exc}. Give the level fixed bounds and grid (HEATMAP_LEVELS_FILE or "
                                  "HEATMAP_BOUNDS) and re-materialize level_heatmaps for these days, or pick days binned alike.")
    # The level has fixed bounds now (e.g. a levels file added after these days were computed with automatic
    # bounds): say which days are stale and the one command that re-bins them.
    first, last = str(stale[0]).split("..")[0], str(stale[-1]).split("..")[-1]
    return HTTPException(409, f"{what}: {exc}. Level {level} is binned with {configured.describe()} now "
                              f"(HEATMAP_LEVELS_FILE or HEATMAP_BOUNDS); {', '.join(str(d) for d in stale)} were binned "
                              f"before that: re-materialize level_heatmaps for them, e.g. `heatmap-pipeline backfill "
                              f"--job heatmap --levels {level} --start {first} --end {last}`, or pick days binned alike.")


def read_range(engine, level: str, span: DayRange, options: ReadOptions, what: str,
               configured: Binning | None = None) -> RangeRead:
    try:
        days = read_heatmaps(engine, level=level, kind=options.kind, first=span.first, last=span.last, with_matrix=False)
    except CorruptHeatmap as exc:
        raise HTTPException(409, f"{what} {span}: {exc}; re-materialize level_heatmaps for that day") from None
    if not days:
        raise HTTPException(404, NOT_FOUND if span.days == 1 and what == "date"
                            else f"No {options.kind} heatmap of level {level!r} in {what} {span}")
    try:
        binning = common_binning([(day.date, day.binning) for day in days])
    except BinningMismatch as exc:
        raise _conflict(exc, f"{what} {span}", level, configured) from None
    shape = (binning.grid_y, binning.grid_x)
    as_stored: list = []  # one day's matrix as the database returned it (the old reader's bytes)
    matrices = stored_matrices(engine, days)
    if len(days) == 1:
        matrices = as_stored = list(matrices)
    try:
        matrix = sum_matrices(matrices, shape)
    except (TypeError, ValueError) as exc:  # a stored matrix not a grid of numbers of its recorded shape: corrupt
        raise HTTPException(409, f"{what} {span}: a stored matrix does not match its grid ({exc}); "
                                 "re-materialize level_heatmaps for these days") from None
    found = {day.date for day in days}
    missing = [span.first + dt.timedelta(n) for n in range(span.days) if span.first + dt.timedelta(n) not in found]
    result = RangeRead(span, days, matrix, binning, missing, as_stored[0] if as_stored else None)
    if options.normalize == "per_session" and result.sessions is None:
        old = [day.date.isoformat() for day in days if day.sessions is None]
        raise HTTPException(409, f"normalize=per_session: days {', '.join(old)} of {what} {span} have no sessions count "
                                 "(read from the old heatmaps table); re-materialize level_heatmaps for them")
    result.matrix = smooth(normalise(matrix, options.normalize, total=result.total, sessions=result.sessions),
                           options.smooth)
    return result


@dataclass
class HeatmapRead:
    level: str
    base: RangeRead
    compare: RangeRead | None
    options: ReadOptions

    @property
    def matrix(self) -> np.ndarray:
        if self.compare is None:
            return self.base.matrix
        return self.base.matrix - self.compare.matrix

    @property
    def units(self) -> str:
        units = UNITS[self.options.normalize]
        return f"difference in {units}" if self.compare else units


def read_heatmap(engine, level: str, span: DayRange, options: ReadOptions, what: str = "date",
                 configured: Binning | None = None) -> HeatmapRead:
    base = read_range(engine, level, span, options, what, configured)
    compare = None
    if options.compare is not None:
        compare = read_range(engine, level, options.compare, options, "compare range", configured)
        if compare.binning != base.binning:
            raise _conflict(BinningMismatch({base.binning: [str(span)], compare.binning: [str(options.compare)]}),
                            "the range and the compare range", level, configured)
    return HeatmapRead(level, base, compare, options)


def _bounds_json(bounds: tuple[float, float, float, float] | None) -> dict | None:
    return None if bounds is None else dict(zip(("x_min", "x_max", "y_min", "y_max"), bounds))


def _answer(read: HeatmapRead, date_text: str | None, as_stored: bool) -> dict:
    """The old three fields first, in the old order, then ours. ``as_stored``: the matrix exactly as
    the database returned it (one day, no option), so an old client gets the very bytes it got before."""
    base, matrix = read.base, read.matrix
    days = base.days
    answer = {
        "level": read.level,
        "date": date_text,
        "matrix": base.stored_matrix if as_stored else matrix.tolist(),
        "kind": read.options.kind,
        "grid_x": base.binning.grid_x,
        "grid_y": base.binning.grid_y,
        "bounds": _bounds_json(base.binning.bounds),
        "bounds_source": days[0].bounds_source if len({d.bounds_source for d in days}) == 1 else "mixed",
        **base.summary(),
        "normalize": read.options.normalize,
        "smooth": read.options.smooth,
        "units": read.units,
        "value_min": float(matrix.min()) if matrix.size else 0.0,
        "value_max": float(matrix.max()) if matrix.size else 0.0,
        "compare": read.compare.summary() if read.compare else None,
    }
    return answer


class HeatmapAnswer(BaseModel):
    """What GET /api/v1/heatmap answers (documentation: the route writes its JSON itself, to keep the old bytes)."""

    level: str
    date: str | None
    matrix: list[list[float]]
    kind: str
    grid_x: int
    grid_y: int
    bounds: dict[str, float] | None
    bounds_source: str | None
    from_: str = Field(alias="from", description="first day read (the date itself for one day)")
    to: str = Field(description="last day read")
    days: list[str] = Field(description="the days found and summed")
    missing_days: list[str] = Field(description="days of the range with no stored heatmap (not counted)")
    total: float = Field(description="events of the kind in bounds over the days (before normalisation)")
    out_of_bounds: int
    events: int | None
    sessions: int | None = Field(description="distinct sessions per day, summed; null for days read from the old table")
    normalize: str
    smooth: float
    units: str
    value_min: float
    value_max: float
    compare: dict | None

    model_config = {"json_schema_extra": {"description": "level, date and matrix are the old reader's fields, first "
                                                          "and unchanged; for a range, date is null and from/to are set."}}


# --- routes ----------------------------------------------------------------------------------------

# What a read of matrices (JSON or PNG) may answer besides 200.
MATRIX_ERRORS = {
    400: {"model": ErrorDetail, "description": f"A date that does not parse: {INVALID_DATE} (other than date: named)"},
    404: {"model": ErrorDetail, "description": f"No stored heatmap for the level, kind and days: {NOT_FOUND}"},
    409: {"model": ErrorDetail, "description": "Days binned with different bounds or grids (named), "
                                               "or per_session over days without a sessions count"},
    422: {"model": BadParameter, "description": "A bad parameter, named"},
}

@router.get(
    "/api/v1/heatmap",
    response_model=HeatmapAnswer,
    responses=MATRIX_ERRORS,
    summary="A level's heatmap matrix for a day or a range of days (the old reader's contract)",
)
def get_heatmap(
    engine: WarehouseDep,
    settings: SettingsDep,
    options: OptionsDep,
    level: Annotated[str, level_param("Level name, as in HEATMAP_LEVELS / the levels file.")],
    date: Annotated[str | None, Query(description="Day, YYYY-MM-DD (UTC). Or from and to for a range.",
                                      examples=["2025-11-16"])] = None,
    from_: Annotated[str | None, Query(alias="from", description="First day of a range (YYYY-MM-DD), with to; "
                                       "the days' stored matrices are summed.", examples=["2025-11-10"])] = None,
    to: Annotated[str | None, Query(description="Last day of the range, inclusive (at most HEATMAP_MAX_RANGE_DAYS).",
                                    examples=["2025-11-16"])] = None,
) -> JSONResponse:
    if date is not None and (from_ is not None or to is not None):
        raise HTTPException(422, "give either date, or from and to (a range), not both")
    if date is not None:
        day = parse_day(date, "date")
        span, date_text = DayRange(day, day), day.isoformat()
    elif from_ is not None and to is not None:
        span, date_text = day_range(from_, to, "from", "to", settings.heatmap_max_range_days), None
    elif from_ is not None or to is not None:
        raise HTTPException(422, "from and to go together: give both for a range, or date for one day")
    else:
        raise HTTPException(422, "date is required (YYYY-MM-DD), or from and to for a range")
    read = read_heatmap(engine, level, span, options, "date" if date is not None else "range",
                        configured_binning(settings.level_config(level)))
    as_stored = date is not None and options.compare is None and options.normalize == "none" and options.smooth == 0
    return JSONResponse(_answer(read, date_text, as_stored))


# The new routes refuse a query parameter they do not take (a typo would be ignored silently); the old
# reader's route ignores them, as the old reader did.
@router.get(
    "/api/v1/heatmaps",
    dependencies=[Depends(known_query_only)],
    summary="List the stored heatmaps (no matrices)",
    responses={400: {"model": ErrorDetail, "description": "A date that does not parse, named"},
               422: {"model": BadParameter, "description": "A bad parameter, named"}},
)
def list_heatmaps(
    engine: WarehouseDep,
    settings: SettingsDep,
    level: Annotated[str | None, Query(min_length=1, max_length=MAX_LEVEL_CHARS, pattern=LEVEL_PATTERN,
                                       description="Only this level.")] = None,
    kind: Annotated[str | None, Query(description="Only this kind.")] = None,
    from_: Annotated[str | None, Query(alias="from", description="Only days on or after (YYYY-MM-DD).")] = None,
    to: Annotated[str | None, Query(description="Only days on or before (YYYY-MM-DD).")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_ROWS, description="At most this many, the newest days kept.")] = 1000,
) -> dict:
    first = parse_day(from_, "from") if from_ is not None else None
    last = parse_day(to, "to") if to is not None else None
    if first and last and first > last:
        raise HTTPException(422, f"from ({first}) is after to ({last}); give from <= to")
    if kind is not None and kind not in settings.heatmap_kinds:
        raise HTTPException(422, f"kind: {kind[:40]!r} is not a heatmap kind; allowed: {', '.join(settings.heatmap_kinds)}")
    found = read_heatmaps(engine, level=level, kind=kind, first=first, last=last, with_matrix=False, limit=limit + 1)
    truncated = len(found) > limit
    found = found[-limit:]
    return {
        "heatmaps": [
            {"level": h.level, "date": h.date.isoformat(), "kind": h.kind, "grid_x": h.grid_x, "grid_y": h.grid_y,
             "bounds": _bounds_json(h.bounds), "bounds_source": h.bounds_source, "total": h.total,
             "max_count": h.max_count, "nonempty_cells": h.nonempty_cells, "out_of_bounds": h.out_of_bounds,
             "events": h.events, "sessions": h.sessions,
             "updated_at": h.updated_at.isoformat() if h.updated_at else None,
             "png": f"/api/v1/heatmaps/{h.level}/{h.date}.png?kind={h.kind}"}
            for h in found
        ],
        "count": len(found),
        "truncated": truncated,
    }


@router.get(
    "/api/v1/heatmaps/{level}/{span}.png",
    dependencies=[Depends(known_query_only)],
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "The heatmap drawn in world coordinates"},
               **MATRIX_ERRORS},
    summary="A level's heatmap for a day or range, as a PNG over the level art",
)
def get_heatmap_png(
    engine: WarehouseDep,
    settings: SettingsDep,
    options: OptionsDep,
    level: Annotated[str, PathParam(min_length=1, max_length=MAX_LEVEL_CHARS, pattern=LEVEL_PATTERN,
                                    description="Level name.")],
    span: Annotated[str, PathParam(description="A day, 2025-11-16, or an inclusive range, 2025-11-10..2025-11-16 "
                                               "(at most HEATMAP_MAX_RANGE_DAYS days).", examples=["2025-11-10..2025-11-16"])],
    scale: Annotated[Literal["linear", "sqrt", "log"], Query(description="Colour scale.")] = "sqrt",
    background: Annotated[bool, Query(description="Draw the level's background image (levels file) under the heatmap.")] = True,
    width: Annotated[int, Query(ge=200, le=2000, description="Width of the picture in pixels.")] = 640,
) -> Response:
    first_text, sep, last_text = span.partition("..")
    if sep:
        days = day_range(first_text, last_text, "span's first day", "span's last day", settings.heatmap_max_range_days)
    else:
        day = parse_day(span, "span")
        days = DayRange(day, day)
    read = read_heatmap(engine, level, days, options, "date" if not sep else "range", configured_binning(settings.level_config(level)))
    config = settings.level_config(level)
    bounds = read.base.binning.bounds
    if read.matrix.size == 0:  # an old row of [] (the old job's empty day): nothing to draw
        raise HTTPException(409, f"the stored heatmap of level {level!r} for {days} has no cells; re-materialize it")
    title = f"{config.name} · {options.kind} · {days}"
    if read.compare is not None:
        title += f" minus {read.compare.span}"
    # The art is placed in world coordinates: a day stored without bounds (an old row) has none.
    art = config.background if background and bounds is not None else None
    draw = functools.partial(
        render_heatmap_png, read.matrix, bounds=GridBounds(*bounds) if bounds is not None else None, title=title,
        scale=scale, diverging=read.compare is not None, colorbar_label=read.units, width_px=width,
    )
    headers = {"Cache-Control": "no-cache"}
    try:
        png = draw(background=art)
    except (OSError, Image.DecompressionBombError) as exc:  # the art file went missing or unreadable since start-up
        log.warning(f"read API: level {level!r} background {art.path} unreadable ({type(exc).__name__}); drawn without it")
        png, headers["X-Heatmap-Background"] = draw(background=None), "unreadable"
    return Response(png, media_type="image/png", headers=headers)


@router.get("/heatmaps", response_class=HTMLResponse, summary="The heatmap page for level designers")
def heatmap_page(settings: SettingsDep) -> HTMLResponse:
    config = {
        "levels": [{"id": level, "name": settings.level_config(level).name} for level in settings.heatmap_levels],
        "kinds": list(settings.heatmap_kinds),
        "maxRangeDays": settings.heatmap_max_range_days,
    }
    # The JSON goes inside a <script>: "<" escaped so no value can close the element.
    page = PAGE.read_text(encoding="utf-8").replace("/*CONFIG*/null", json.dumps(config).replace("<", "\\u003c"))
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

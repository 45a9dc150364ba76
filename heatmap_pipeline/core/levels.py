"""The levels file (HEATMAP_LEVELS_FILE): per level a name, world bounds, grid, background image
and the heatmap kinds to build; and the kinds themselves. Pure parsing, no Dagster, no environment.

A file is TOML (``.toml``, read with the standard library's ``tomllib``) or YAML (``.yaml`` /
``.yml``, PyYAML's safe loader). Every problem raises :class:`LevelsFileError`, whose message
names the file, the line and the field (``levels.3.bounds``), so start-up stops with a sentence
a user can act on. Example (TOML)::

    [kinds.deaths_build_42]          # a kind: event types and an optional payload filter
    event_types = ["death"]
    payload = { build = "42" }

    [levels.3]
    name = "Caves"
    bounds = [0, 200, 0, 120]        # x_min, x_max, y_min, y_max (world units)
    grid = [100, 60]                 # one number (square) or [x cells, y cells]
    kinds = ["positions", "deaths"]  # positions is always built (the old heatmaps row)
    background = { image = "art/caves.png", x_min = 0, x_max = 200, y_min = 0, y_max = 120 }
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from heatmap_pipeline.core.binning import GridBounds

POSITIONS = "positions"

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # level ids and kind names (they are partition keys, columns)
_MAX_GRID = 1000


class LevelsFileError(ValueError):
    """The levels file cannot be used; the message names the file, the line and the field."""


@dataclass(frozen=True)
class Background:
    """A level's art: the image and the world coordinates of its corners."""

    path: Path
    x_min: float
    x_max: float
    y_min: float
    y_max: float


@dataclass(frozen=True)
class KindConfig:
    """A heatmap kind: events with x and y whose event_type OR event_name is in ``event_types``
    (empty: every event with x and y, the positions kind), and whose payload has each
    ``payload_filter`` field equal (as text) to the value given."""

    name: str
    event_types: frozenset[str] = frozenset()
    payload_filter: Mapping[str, str] = field(default_factory=dict)


DEFAULT_KINDS: dict[str, KindConfig] = {
    POSITIONS: KindConfig(POSITIONS),
    # "player_death" as well: the session stats count both names as deaths (warehouse/sessions.py)
    "deaths": KindConfig("deaths", frozenset({"death", "player_death"})),
    "jumps": KindConfig("jumps", frozenset({"jump"})),
}


@dataclass(frozen=True)
class LevelConfig:
    """Everything a heatmap of one level needs; ``bounds`` None = each day's own positions range."""

    id: str
    name: str
    bounds: GridBounds | None
    grid_x: int
    grid_y: int
    background: Background | None
    kinds: tuple[str, ...]


@dataclass(frozen=True)
class LevelEntry:
    """One level as the file writes it; None = not in the file, the environment's default applies."""

    id: str
    name: str | None = None
    bounds: GridBounds | None = None
    grid_x: int | None = None
    grid_y: int | None = None
    background: Background | None = None
    kinds: tuple[str, ...] | None = None


@dataclass(frozen=True)
class LevelsFile:
    path: Path
    levels: dict[str, LevelEntry]
    kinds: dict[str, KindConfig]  # the defaults, then the file's own (a file's kind replaces a default's)


def resolve_level(
    level_id: str,
    entry: LevelEntry | None,
    *,
    grid_size: int,
    bounds: GridBounds | None,
    kinds: Mapping[str, KindConfig],
) -> LevelConfig:
    """The level's configuration: the file's entry where it says something, else the defaults
    (HEATMAP_GRID_SIZE, HEATMAP_BOUNDS, every known kind, no background)."""
    entry = entry or LevelEntry(level_id)
    chosen = entry.kinds if entry.kinds is not None else tuple(kinds)
    chosen = (POSITIONS, *(k for k in chosen if k != POSITIONS))  # the old heatmaps row is always built
    return LevelConfig(
        id=level_id,
        name=entry.name or f"level {level_id}",
        bounds=entry.bounds if entry.bounds is not None else bounds,
        grid_x=entry.grid_x or grid_size,
        grid_y=entry.grid_y or grid_size,
        background=entry.background,
        kinds=chosen,
    )


# --- parsing -----------------------------------------------------------------------------------


def load_levels_file(path: Path | str) -> LevelsFile:
    """Read and check the file; raise LevelsFileError naming the file, the line and the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LevelsFileError(f"HEATMAP_LEVELS_FILE {path}: no such file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LevelsFileError(f"HEATMAP_LEVELS_FILE {path}: cannot be read ({exc}).") from None
    return parse_levels_text(text, path)


def parse_levels_text(text: str, path: Path) -> LevelsFile:
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:  # its message ends with "(at line L, column C)"
            message = str(exc).replace("(at end of document)", f"(at end of document, line {len(text.splitlines())})")
            raise LevelsFileError(f"{path}: not valid TOML: {message}.") from None
        locate = _toml_locator(text)
    elif suffix in (".yaml", ".yml"):
        data, locate = _load_yaml(text, path)
    else:
        raise LevelsFileError(f"HEATMAP_LEVELS_FILE {path}: use a .toml, .yaml or .yml file.")
    return _Checker(path, locate).levels_file(data)


def _load_yaml(text: str, path: Path):
    import yaml  # only when a YAML file is configured

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise LevelsFileError(f"{path}: not valid YAML{where}: {problem}.") from None

    def locate(keys: tuple[str, ...]) -> int | None:
        current, line = node, None
        for key in keys:
            if current is None or not hasattr(current, "value") or not isinstance(current.value, list):
                break
            found = None
            for item in current.value:
                if isinstance(item, tuple) and str(item[0].value) == key:
                    found, line = item[1], item[0].start_mark.line + 1
                    break
            if found is None:
                break
            current = found
        return line

    return (data if data is not None else {}), locate


_HEADER_RE = re.compile(r"^\s*\[\[?\s*(.+?)\s*\]\]?\s*(#.*)?$")
_KEY_RE = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.-]+)\s*=""")


def _split_dotted(key: str) -> tuple[str, ...]:
    """``levels."1".bounds`` -> ("levels", "1", "bounds")."""
    parts = re.findall(r"""\s*("[^"]*"|'[^']*'|[^.]+)\s*(?:\.|$)""", key)
    return tuple(p.strip().strip("\"'") for p in parts if p.strip())


def _toml_locator(text: str):
    """Line of a key path in a TOML text: tomllib keeps no positions, so the lines are scanned for
    the table headers and ``key =`` assignments (dotted keys included). Falls back to the
    innermost enclosing table or key that is found."""
    where: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        if header := _HEADER_RE.match(line):
            table = _split_dotted(header.group(1))
            where.setdefault(table, number)
        elif key := _KEY_RE.match(line):
            where.setdefault(table + _split_dotted(key.group(1)), number)

    def locate(keys: tuple[str, ...]) -> int | None:
        for end in range(len(keys), 0, -1):
            if keys[:end] in where:
                return where[keys[:end]]
        return None

    return locate


class _Checker:
    """Turns the loaded document into a LevelsFile, or raises naming file, line and field."""

    def __init__(self, path: Path, locate):
        self.path, self.locate = path, locate

    def fail(self, keys: tuple[str, ...], problem: str):
        line = self.locate(keys)
        where = f", line {line}" if line else ""
        raise LevelsFileError(f"{self.path}{where}, field {'.'.join(keys) or '(top)'}: {problem}")

    def levels_file(self, data: Any) -> LevelsFile:
        if not isinstance(data, dict):
            self.fail((), "the file must be a table/mapping with 'levels' and optionally 'kinds'.")
        unknown = sorted(set(data) - {"levels", "kinds"})
        if unknown:
            self.fail((unknown[0],), "unknown key; the file has 'levels' and 'kinds'.")
        kinds = dict(DEFAULT_KINDS)
        for name, spec in self.table(data.get("kinds", {}), ("kinds",)).items():
            kinds[name] = self.kind(name, spec)
        levels: dict[str, LevelEntry] = {}
        for level_id, spec in self.table(data.get("levels", {}), ("levels",)).items():
            levels[level_id] = self.level(level_id, spec, kinds)
        return LevelsFile(self.path, levels, kinds)

    def table(self, value: Any, keys: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(keys, f"must be a table/mapping keyed by name, got {_kind_of(value)}.")
        result = {}
        for name, spec in value.items():
            name = str(name)
            if not _NAME_RE.match(name):
                self.fail((*keys, name), "names may only use letters, digits, '_', '.', '-' (1-64 characters).")
            if not isinstance(spec, dict):
                self.fail((*keys, name), f"must be a table/mapping, got {_kind_of(spec)}.")
            result[name] = spec
        return result

    def kind(self, name: str, spec: dict) -> KindConfig:
        keys = ("kinds", name)
        if name == POSITIONS:
            self.fail(keys, "positions is built in (every event with x and y: the old heatmaps row); "
                            "name your kind differently.")
        self.only(spec, keys, {"event_types", "payload"})
        types = spec.get("event_types")
        if not (isinstance(types, list) and types and all(isinstance(t, str) and t.strip() for t in types)):
            self.fail((*keys, "event_types"), "must be a non-empty list of event types or names, "
                                              'e.g. ["death", "player_death"].')
        payload = spec.get("payload", {})
        if not isinstance(payload, dict):
            self.fail((*keys, "payload"), 'must be a table of payload field = value, e.g. { build = "42" }.')
        filters = {}
        for field_name, value in payload.items():
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                self.fail((*keys, "payload", str(field_name)), f"must be a string or number, got {_kind_of(value)}.")
            filters[str(field_name)] = str(value)
        return KindConfig(name, frozenset(t.strip() for t in types), filters)

    def level(self, level_id: str, spec: dict, kinds: Mapping[str, KindConfig]) -> LevelEntry:
        keys = ("levels", level_id)
        self.only(spec, keys, {"name", "bounds", "grid", "background", "kinds"})
        name = spec.get("name")
        if name is not None and not (isinstance(name, str) and name.strip()):
            self.fail((*keys, "name"), "must be a non-empty string.")
        bounds = None
        if "bounds" in spec:
            values = self.numbers(spec["bounds"], (*keys, "bounds"), 4, "[x_min, x_max, y_min, y_max]")
            bounds = self.box(values, (*keys, "bounds"))
        grid_x = grid_y = None
        if "grid" in spec:
            grid = spec["grid"]
            if isinstance(grid, list):
                if len(grid) != 2:
                    self.fail((*keys, "grid"), f"must be one number or [x cells, y cells], got {grid!r}.")
                grid_x, grid_y = (self.cells(g, (*keys, "grid")) for g in grid)
            else:
                grid_x = grid_y = self.cells(grid, (*keys, "grid"))
        background = None
        if "background" in spec:
            background = self.background(spec["background"], (*keys, "background"))
        chosen = None
        if "kinds" in spec:
            chosen = spec["kinds"]
            if not (isinstance(chosen, list) and all(isinstance(k, str) for k in chosen)):
                self.fail((*keys, "kinds"), 'must be a list of kind names, e.g. ["positions", "deaths"].')
            missing = [k for k in chosen if k not in kinds]
            if missing:
                self.fail((*keys, "kinds"), f"unknown kind {missing[0]!r}; known: {', '.join(kinds)}.")
            chosen = tuple(dict.fromkeys(chosen))
        return LevelEntry(level_id, name.strip() if name else None, bounds, grid_x, grid_y, background, chosen)

    def background(self, spec: Any, keys: tuple[str, ...]) -> Background:
        if not isinstance(spec, dict):
            self.fail(keys, "must be a table with image, x_min, x_max, y_min, y_max.")
        self.only(spec, keys, {"image", "x_min", "x_max", "y_min", "y_max"})
        image = spec.get("image")
        if not (isinstance(image, str) and image.strip()):
            self.fail((*keys, "image"), "must be the path of a PNG or JPEG image (relative to this file).")
        image_path = Path(image)
        if not image_path.is_absolute():  # relative to the file; absolute, so no process's cwd matters
            image_path = (self.path.parent / image_path).resolve()
        if not image_path.is_file():
            self.fail((*keys, "image"), f"no such file: {image_path}.")
        corners = []
        for corner in ("x_min", "x_max", "y_min", "y_max"):
            if corner not in spec:
                self.fail((*keys, corner), "missing: the world coordinate of the image's edge.")
            corners.append(self.number(spec[corner], (*keys, corner)))
        box = self.box(corners, keys)
        return Background(image_path, box.x_min, box.x_max, box.y_min, box.y_max)

    def only(self, spec: dict, keys: tuple[str, ...], allowed: set[str]) -> None:
        unknown = sorted(str(k) for k in set(spec) - allowed)
        if unknown:
            self.fail((*keys, unknown[0]), f"unknown key; allowed: {', '.join(sorted(allowed))}.")

    def number(self, value: Any, keys: tuple[str, ...]) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(keys, f"must be a finite number, got {value!r}.")
        return float(value)

    def numbers(self, value: Any, keys: tuple[str, ...], count: int, shape: str) -> list[float]:
        if not isinstance(value, list) or len(value) != count:
            self.fail(keys, f"must be {count} numbers {shape}, got {value!r}.")
        return [self.number(v, keys) for v in value]

    def box(self, values: list[float], keys: tuple[str, ...]) -> GridBounds:
        box = GridBounds(*values)
        if not (box.x_min < box.x_max and box.y_min < box.y_max):
            self.fail(keys, f"needs x_min < x_max and y_min < y_max, got {box.as_list()}.")
        return box

    def cells(self, value: Any, keys: tuple[str, ...]) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= _MAX_GRID:
            self.fail(keys, f"cells must be a whole number from 2 to {_MAX_GRID}, got {value!r}.")
        return value


def _kind_of(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string"}.get(type(value), repr(value))

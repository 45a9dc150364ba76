"""HEATMAP_LEVELS_FILE: the levels file (TOML or YAML), its errors (file, line, field) and how it
combines with HEATMAP_LEVELS, HEATMAP_GRID_SIZE and HEATMAP_BOUNDS."""

import re
from pathlib import Path

import pytest
from PIL import Image

from heatmap_pipeline.core.binning import GridBounds
from heatmap_pipeline.core.levels import Background, KindConfig, LevelsFileError, load_levels_file
from heatmap_pipeline.settings import SettingsError, load_settings

TOML = """\
# levels of the demo game
[kinds.deaths_build_42]
event_types = ["death"]
payload = { build = "42" }

[levels.3]
name = "Caves"
bounds = [0, 200, 1, 115]
grid = [80, 40]
kinds = ["deaths", "deaths_build_42"]
background = { image = "art/caves.png", x_min = -10, x_max = 210, y_min = 0, y_max = 120 }

[levels.boss]
grid = 30
"""

YAML = """\
kinds:
  deaths_build_42:
    event_types: [death]
    payload: {build: 42}
levels:
  "3":
    name: Caves
    bounds: [0, 200, 1, 115]
    grid: [80, 40]
    kinds: [deaths, deaths_build_42]
    background: {image: art/caves.png, x_min: -10, x_max: 210, y_min: 0, y_max: 120}
  boss:
    grid: 30
"""


@pytest.fixture
def art(tmp_path: Path) -> Path:
    (tmp_path / "art").mkdir()
    Image.new("RGB", (22, 12), "green").save(tmp_path / "art" / "caves.png")
    return tmp_path


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name, text", [("levels.toml", TOML), ("levels.yaml", YAML)])
def test_a_file_configures_levels_and_kinds_and_wins_over_the_variables(art, name, text):
    path = write(art, name, text)
    settings = load_settings(
        {"HEATMAP_LEVELS_FILE": str(path), "HEATMAP_GRID_SIZE": "20", "HEATMAP_BOUNDS": '{"3": [5, 6, 7, 8]}'}
    )
    caves = settings.level_config("3")
    assert caves.name == "Caves"
    assert caves.bounds == GridBounds(0, 200, 1, 115)  # the file wins over HEATMAP_BOUNDS
    assert (caves.grid_x, caves.grid_y) == (80, 40)  # and over HEATMAP_GRID_SIZE
    assert caves.background == Background((art / "art" / "caves.png").resolve(), -10, 210, 0, 120)
    assert caves.kinds == ("positions", "deaths", "deaths_build_42")  # positions always first
    assert settings.heatmap_kinds["deaths_build_42"] == KindConfig("deaths_build_42", frozenset({"death"}), {"build": "42"})
    assert set(settings.heatmap_kinds) == {"positions", "deaths", "jumps", "deaths_build_42"}
    boss = settings.level_config("boss")
    assert (boss.grid_x, boss.grid_y, boss.bounds, boss.name) == (30, 30, None, "level boss")
    # the file's levels are partitions too, after HEATMAP_LEVELS'
    assert settings.heatmap_levels == ("1", "2", "3", "boss")


def test_a_level_without_an_entry_falls_back_to_the_variables(art):
    path = write(art, "levels.toml", TOML)
    settings = load_settings({"HEATMAP_LEVELS_FILE": str(path), "HEATMAP_GRID_SIZE": "20", "HEATMAP_BOUNDS": '{"1": [0, 10, 0, 5]}'})
    one = settings.level_config("1")
    assert (one.grid_x, one.grid_y, one.bounds, one.background) == (20, 20, GridBounds(0, 10, 0, 5), None)
    assert one.kinds == ("positions", "deaths", "jumps", "deaths_build_42")  # every known kind


def test_without_a_file_the_variables_alone_configure_levels():
    settings = load_settings({"HEATMAP_GRID_SIZE": "12", "HEATMAP_BOUNDS": '{"2": [0, 10, 0, 5]}'})
    two = settings.level_config("2")
    assert (two.id, two.grid_x, two.grid_y, two.bounds, two.background) == ("2", 12, 12, GridBounds(0, 10, 0, 5), None)
    assert two.kinds == ("positions", "deaths", "jumps")
    assert settings.heatmap_kinds["positions"].event_types == frozenset()  # every event with x and y
    assert settings.heatmap_kinds["deaths"].event_types == frozenset({"death", "player_death"})
    assert settings.level_config("unknown").grid_x == 12  # any level id answers


BAD_TOML = [
    # (file text, line, field, words of the problem)
    ('[levels.1]\nname = "a"\nbounds = [0, 1, 2]\n', 3, "levels.1.bounds", "4 numbers"),
    ("[levels.1]\nbounds = [0, 1, 5, 2]\n", 2, "levels.1.bounds", "y_min < y_max"),
    ("[levels.1]\n\ngrid = 1\n", 3, "levels.1.grid", "from 2 to 1000"),
    ("[levels.1]\ngrid = [10, 10, 10]\n", 2, "levels.1.grid", "[x cells, y cells]"),
    ('[levels.1]\nkinds = ["positions", "falls"]\n', 2, "levels.1.kinds", "unknown kind 'falls'"),
    ("[levels.1]\ncolour = 3\n", 2, "levels.1.colour", "unknown key"),
    ('[levels.1]\nbackground = { image = "missing.png", x_min = 0, x_max = 1, y_min = 0, y_max = 1 }\n', 2,
     "levels.1.background.image", "no such file"),
    ('[kinds.falls]\nevent_types = []\n', 2, "kinds.falls.event_types", "non-empty list"),
    ('[kinds.positions]\nevent_types = ["move"]\n', 1, "kinds.positions", "built in"),
    ('[kinds.falls]\nevent_types = ["fall"]\npayload = { build = [1] }\n', 3, "kinds.falls.payload.build", "string or number"),
    ('[levels."bad level"]\ngrid = 3\n', 1, "levels.bad level", "names may only use"),
]


@pytest.mark.parametrize("text, line, field, problem", BAD_TOML)
def test_a_schema_error_names_the_file_the_line_and_the_field(tmp_path, text, line, field, problem):
    path = write(tmp_path, "levels.toml", text)
    with pytest.raises(LevelsFileError) as caught:
        load_levels_file(path)
    message = str(caught.value)
    assert f"{path}, line {line}, field {field}:" in message
    assert problem in message


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("levels.toml", "[levels.1]\nname = a\ngrid = 3\n", ": not valid TOML: .*at line 2"),
        ("levels.toml", '[levels.1]\nname = "a"\nbounds = [0, 1,\n', ": not valid TOML: .*end of document, line 3"),
        ("levels.yml", "levels:\n  '1': {grid: [10, 20}\n", ": not valid YAML at line 2"),
        ("levels.yml", "levels:\n  '1':\n    grid: [10, 20]\n    bounds: [0, 1]\n",
         ", line 4, field levels.1.bounds: must be 4 numbers"),
    ],
    ids=["toml-value", "toml-unclosed", "yaml-syntax", "yaml-schema"],
)
def test_a_syntax_or_yaml_error_names_the_file_and_the_line(tmp_path, name, text, expected):
    path = write(tmp_path, name, text)
    with pytest.raises(LevelsFileError, match=re.escape(str(path)) + expected):
        load_levels_file(path)


def test_a_bad_file_stops_start_up_naming_the_variable_file_line_and_field(tmp_path):
    path = write(tmp_path, "levels.toml", "[levels.1]\ngrid = 0\n")
    with pytest.raises(SettingsError, match=rf"{path}, line 2, field levels.1.grid"):
        load_settings({"HEATMAP_LEVELS_FILE": str(path)})
    with pytest.raises(SettingsError, match="HEATMAP_LEVELS_FILE .*no such file"):
        load_settings({"HEATMAP_LEVELS_FILE": str(tmp_path / "absent.toml")})
    with pytest.raises(SettingsError, match="HEATMAP_LEVELS_FILE .*use a .toml, .yaml or .yml file"):
        load_settings({"HEATMAP_LEVELS_FILE": str(write(tmp_path, "levels.json", "{}"))})


def test_the_example_levels_file_describes_the_demo_levels(monkeypatch, tmp_path):
    from heatmap_pipeline.runtime.demo import LEVEL_WORLDS

    example = Path(__file__).parents[1] / "examples" / "levels.toml"
    monkeypatch.chdir(tmp_path)  # the art is found relative to the file, wherever the process runs
    settings = load_settings({"HEATMAP_LEVELS_FILE": str(example)})
    assert settings.heatmap_levels == ("1", "2", "3")
    for level, ((x0, x1, y0, y1), _hotspots) in LEVEL_WORLDS.items():
        config = settings.level_config(level)
        assert config.bounds == GridBounds(x0, x1, y0, y1)
        background = config.background
        assert background.path.is_absolute() and background.path.is_file()
        assert (background.x_min, background.x_max, background.y_min, background.y_max) == (x0, x1, y0, y1)
        with Image.open(background.path) as image:  # the art has the world's aspect ratio
            assert image.width / image.height == pytest.approx((x1 - x0) / (y1 - y0))


def test_a_file_kind_named_like_a_built_in_one_replaces_it(tmp_path):
    path = write(tmp_path, "levels.toml", '[kinds.deaths]\nevent_types = ["killed"]\n')
    settings = load_settings({"HEATMAP_LEVELS_FILE": str(path)})
    assert settings.heatmap_kinds["deaths"].event_types == frozenset({"killed"})
    assert list(settings.heatmap_kinds) == ["positions", "deaths", "jumps"]

"""settings.py: every setting spelled once; flags, environment, file and Config all from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hecated.cli import _daemon_parser
from hecated.core.config import Config, resolve
from hecated.core.settings import SETTINGS, ConfigError, default, markdown, section_defaults

README = Path(__file__).resolve().parent.parent / "README.md"
NUMBERS = [
    s for s in SETTINGS if s.key not in ("data_dir", "socket_path", "gitops_dir", "log_level")
]


def test_the_readme_table_is_the_settings_table() -> None:
    text = README.read_text()
    block = re.search(r"<!-- settings:[^\n]*-->\n(.*?)<!-- /settings -->", text, re.S)
    assert block is not None, "README.md lost its settings block"
    assert block.group(1) == markdown()


def test_config_has_one_field_per_setting() -> None:
    fields = set(Config.__dataclass_fields__)
    assert {s.key for s in SETTINGS} <= fields
    config = Config()
    assert all(getattr(config, s.key) == s.default for s in SETTINGS)


def test_every_flag_reaches_config(tmp_path: Path) -> None:
    parser = _daemon_parser()
    for s in NUMBERS:
        value = "7"
        flags = vars(parser.parse_args([s.option, value]))
        config = resolve(flags, {"XDG_CONFIG_HOME": str(tmp_path)})
        assert getattr(config, s.key) == 7, s.key


@pytest.mark.parametrize("s", [s for s in NUMBERS if s.env], ids=lambda s: s.key)
def test_every_variable_and_key_reaches_config_and_is_checked(tmp_path: Path, s) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path), s.env: "5"}
    assert getattr(resolve({}, env), s.key) == 5
    (tmp_path / "hecate").mkdir()
    (tmp_path / "hecate" / "hecated.toml").write_text(f"{s.key} = 3\n")
    assert getattr(resolve({}, {"XDG_CONFIG_HOME": str(tmp_path)}), s.key) == 3
    with pytest.raises(ConfigError, match=s.env):
        resolve({}, {**env, s.env: "-1"})
    with pytest.raises(ConfigError, match=s.env):
        resolve({}, {**env, s.env: "nan"})


def test_whole_numbers_stay_whole(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="whole number"):
        resolve({"workers": "1.5"}, {"XDG_CONFIG_HOME": str(tmp_path)})
    with pytest.raises(ConfigError, match="expected a number"):
        resolve({"forward_streams": True}, {"XDG_CONFIG_HOME": str(tmp_path)})


def test_a_section_is_a_components_settings(tmp_path: Path) -> None:
    config = resolve({"forward_streams": "3"}, {"XDG_CONFIG_HOME": str(tmp_path)})
    forward = config.section("forward")
    assert forward["max_streams"] == 3
    assert set(forward) == set(section_defaults("forward"))
    assert config.section("probe") == {"interval": default("probe_interval")}

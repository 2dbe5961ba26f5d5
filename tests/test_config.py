"""config.py: flag, then environment, then config file, then default."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hecated.core.config import ConfigError, resolve, watchdog_timeout

NO_FLAGS: dict = {}


def test_defaults_follow_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(home))
    config = resolve(NO_FLAGS, {"HOME": str(home)})
    assert config.data_dir == home / ".hecate" / "hecate-daemon"
    assert config.layout.api_socket == home / ".hecate/hecate-daemon/sockets/api.sock"
    assert config.idle_timeout is None
    assert config.log_level == "info"


def test_hecate_home_moves_the_root(home: Path) -> None:
    config = resolve(NO_FLAGS, {"HECATE_HOME": str(home / "r"), "XDG_CONFIG_HOME": str(home)})
    assert config.layout.root == home / "r"


def test_precedence_flag_env_file(home: Path) -> None:
    cfg = home / "hecated.toml"
    cfg.write_text(f'data_dir = "{home}/file/hecate-daemon"\nlog_level = "warning"\n')
    env = {"HECATE_CONFIG": str(cfg)}
    assert resolve(NO_FLAGS, env).data_dir == home / "file/hecate-daemon"
    assert resolve(NO_FLAGS, env).log_level == "warning"
    env["HECATE_DATA_DIR"] = f"{home}/env/hecate-daemon"
    assert resolve(NO_FLAGS, env).data_dir == home / "env/hecate-daemon"
    flags = {"data_dir": f"{home}/flag/hecate-daemon", "log_level": "debug"}
    config = resolve(flags, env)
    assert (config.data_dir, config.log_level) == (home / "flag/hecate-daemon", "debug")


def test_config_file_in_xdg_config_home_with_section(home: Path) -> None:
    (home / "hecate").mkdir()
    (home / "hecate" / "hecated.toml").write_text("[hecated]\nidle_timeout = 300\n")
    assert resolve(NO_FLAGS, {"XDG_CONFIG_HOME": str(home)}).idle_timeout == 300


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("nonsense = 1\n", "unknown key"),
        ("log_level = 'loud'\n", "log level"),
        ("idle_timeout = 'soon'\n", "expected a number"),
        ("workers = 0\n", "at least 1"),
        ("data_dir = [\n", "hecated.toml"),
    ],
)
def test_bad_config_is_a_clear_error(home: Path, text: str, fragment: str) -> None:
    cfg = home / "hecated.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        resolve(NO_FLAGS, {"HECATE_CONFIG": str(cfg)})


def test_named_config_file_must_exist(home: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve({"config": str(home / "missing.toml")}, {})


def test_flags_before_and_after_serve_both_count() -> None:
    from hecated.cli import _daemon_parser

    parser = _daemon_parser()
    before = vars(parser.parse_args(["--log-level", "debug", "--data-dir", "/x", "serve"]))
    after = vars(parser.parse_args(["serve", "--log-level", "debug"]))
    assert (before["log_level"], before["data_dir"]) == ("debug", "/x")
    assert after["log_level"] == "debug"


def test_watchdog_timeout_is_for_this_process_only() -> None:
    assert watchdog_timeout({"WATCHDOG_USEC": "3000000"}) == 3.0
    assert watchdog_timeout({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}) == 3.0
    assert watchdog_timeout({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_timeout({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_timeout({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_timeout({}) is None


def test_what_the_service_manager_says_is_resolved_once(home: Path) -> None:
    """NOTIFY_SOCKET, WATCHDOG_* and JOURNAL_STREAM are read here, not deep in the daemon."""
    env = {
        "XDG_CONFIG_HOME": str(home),
        "NOTIFY_SOCKET": "/run/user/1000/systemd/notify",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": str(os.getpid()),
        "JOURNAL_STREAM": "8:12345",
    }
    config = resolve(NO_FLAGS, env)
    assert (config.notify, config.watchdog, config.journal_stream) == (True, 30.0, "8:12345")
    bare = resolve(NO_FLAGS, {"XDG_CONFIG_HOME": str(home)})
    assert (bare.notify, bare.watchdog, bare.journal_stream) == (False, None, "")


def test_long_polls_get_at_most_half_the_workers(home: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(home)}
    assert resolve({"workers": 16}, env).max_waiters == 8
    assert resolve({"workers": 1}, env).max_waiters == 1

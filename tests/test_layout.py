"""layout.py: the spec's shared_paths, names, and creating the tree."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from hecated.core.errors import (
    InvalidNameError,
    NameTooLongError,
    ReservedNameError,
    UnsafePathError,
)
from hecated.core.layout import NAME_MAX, SUBDIRS, Layout


def test_primary_paths_follow_the_spec(home: Path) -> None:
    layout = Layout.at(home / ".hecate")
    base = home / ".hecate" / "hecate-daemon"
    assert layout.base_dir == base
    assert layout.sqlite_path("x") == base / "sqlite" / "x"
    assert layout.reckon_path("x") == base / "reckon-db" / "x"
    assert layout.socket_path("x") == base / "sockets" / "x"
    assert layout.run_path("x") == base / "run" / "x"
    assert layout.connectors_dir() == base / "connectors"
    assert layout.api_socket == base / "sockets" / "api.sock"
    assert layout.pid_file == base / "run" / "daemon.pid"
    assert layout.state_file == base / "run" / "daemon.state"


def test_socket_override(home: Path) -> None:
    layout = Layout.at(home / ".hecate", socket_override=home / "k3s.sock")
    assert layout.api_socket == home / "k3s.sock"


def test_paths_use_reckon_db_json_key(home: Path) -> None:
    paths = Layout.at(home).paths("hecate-traderd")
    assert paths == {
        "sqlite": f"{home}/hecate-traderd/sqlite",
        "reckon_db": f"{home}/hecate-traderd/reckon-db",
        "sockets": f"{home}/hecate-traderd/sockets",
        "run": f"{home}/hecate-traderd/run",
        "connectors": f"{home}/hecate-traderd/connectors",
    }


@pytest.mark.parametrize("name", ["hecate-traderd", "a", "x1", "third-party-daemon", "a1-b2-c3"])
def test_valid_names(home: Path, name: str) -> None:
    assert Layout.at(home).check_plugin_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Hecate",
        "1abc",
        "-a",
        "a-",
        "a--b",
        "a_b",
        "a.b",
        "../etc",
        "a/b",
        ".",
        "..",
        "a b",
        "é",
        "a\x00b",
        "evil\n",
        42,
        None,
    ],
)
def test_invalid_names(home: Path, name: object) -> None:
    with pytest.raises(InvalidNameError):
        Layout.at(home).check_plugin_name(name)


def test_primary_name_is_reserved(home: Path) -> None:
    with pytest.raises(ReservedNameError):
        Layout.at(home).check_plugin_name("hecate-daemon")


def test_name_length_limit(home: Path) -> None:
    with pytest.raises(NameTooLongError):
        Layout.at(home).check_name("a" * (NAME_MAX + 1))


def test_name_refused_when_socket_path_would_not_fit(home: Path) -> None:
    deep = home / ("d" * 60)
    layout = Layout.at(deep)
    name = "a" * 40  # valid on its own, but deep/a.../sockets/api.sock > 107 bytes
    with pytest.raises(NameTooLongError, match="108"):
        layout.check_name(name)
    assert Layout.at(home).check_name(name) == name


def test_ensure_layout_creates_private_dirs(home: Path) -> None:
    layout = Layout.at(home / ".hecate")
    layout.ensure_layout()
    for d in [layout.root, layout.data_dir, *(layout.data_dir / s for s in SUBDIRS)]:
        assert d.is_dir()
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert sorted(p.name for p in layout.data_dir.iterdir()) == sorted(SUBDIRS)


def test_ensure_namespace_tightens_an_open_namespace(home: Path) -> None:
    layout = Layout.at(home / ".hecate")
    (layout.root / "open-ns").mkdir(parents=True, mode=0o755)
    (layout.root / "open-ns").chmod(0o755)
    layout.ensure_namespace("open-ns")
    assert stat.S_IMODE((layout.root / "open-ns").stat().st_mode) == 0o700


def test_symlinked_namespace_is_refused(home: Path) -> None:
    layout = Layout.at(home / ".hecate")
    layout.ensure_layout()
    elsewhere = home / "elsewhere"
    elsewhere.mkdir()
    (layout.root / "evil").symlink_to(elsewhere)
    with pytest.raises(UnsafePathError):
        layout.ensure_namespace("evil")
    assert list(elsewhere.iterdir()) == []


def test_symlinked_subdir_is_refused(home: Path) -> None:
    layout = Layout.at(home / ".hecate")
    ns = layout.root / "half"
    ns.mkdir(parents=True)
    elsewhere = home / "elsewhere"
    elsewhere.mkdir()
    (ns / "sqlite").symlink_to(elsewhere)
    with pytest.raises(UnsafePathError):
        layout.ensure_namespace("half")

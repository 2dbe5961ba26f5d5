"""The unit files and ``hecated install-units``: rendering, idempotence, refusal, packaging."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import HECATED

from hecated.tools import units

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "units"


def install_units(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(HECATED), "install-units", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_distro_units_hold_the_contract() -> None:
    socket_unit = (UNITS / "hecate.socket").read_text()
    service = (UNITS / "hecate.service").read_text()
    for line in (
        "ListenStream=%h/.hecate/hecate-daemon/sockets/api.sock",
        "SocketMode=0600",
        "DirectoryMode=0700",
        "WantedBy=sockets.target",
    ):
        assert line in directives(socket_unit)
    for line in (
        "ExecStart=/usr/bin/hecated serve --idle-timeout 300",
        "Type=notify",
        "NotifyAccess=main",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX",
        "UMask=0077",
    ):
        assert line in directives(service)
    assert any(line.startswith("WatchdogSec=") for line in directives(service))
    assert "[Install]" not in service, "the service must not be enabled on its own"


def test_packaged_units_are_the_files_in_units() -> None:
    for name in units.UNIT_NAMES:
        assert units.distro_unit(name) == (UNITS / name).read_text()


def test_render_points_execstart_at_this_installation() -> None:
    text = units.render("hecate.service", Path("/opt/my venv/bin/hecated"))
    assert text.startswith(units.MARKER + "\n")
    assert 'ExecStart="/opt/my venv/bin/hecated" serve --idle-timeout 300' in text.splitlines()
    assert "/usr/bin/hecated" not in text
    rendered = directives(text)
    distro = directives(units.distro_unit("hecate.service"))
    assert [x for x in rendered if not x.startswith("ExecStart=")] == [
        x for x in distro if not x.startswith("ExecStart=")
    ]


def test_systemd_quote_escapes_specifiers_and_variables() -> None:
    assert units.systemd_quote(Path("/a/b")) == "/a/b"
    assert units.systemd_quote(Path("/a/50%/$x")) == "/a/50%%/$$x"
    assert units.systemd_quote(Path('/a b/"q"')) == '"/a b/\\"q\\""'


def test_install_writes_both_units_and_says_what_to_run(home: Path) -> None:
    result = install_units(env={"HOME": str(home), "XDG_CONFIG_HOME": "", "XDG_DATA_HOME": ""})
    assert result.returncode == 0, result.stderr
    target = home / ".config" / "systemd" / "user"
    service = (target / "hecate.service").read_text()
    assert f"ExecStart={HECATED} serve --idle-timeout 300" in service.splitlines()
    assert (target / "hecate.socket").read_text() == units.render("hecate.socket", HECATED)
    assert "systemctl --user daemon-reload" in result.stdout
    assert "systemctl --user enable --now hecate.socket" in result.stdout


def test_install_honours_xdg_config_home_and_dir(home: Path) -> None:
    # (XDG_DATA_HOME too: the default install also links the alias there, units.py)
    env = {"XDG_CONFIG_HOME": str(home / "cfg"), "XDG_DATA_HOME": str(home / "data")}
    assert install_units(env=env).returncode == 0
    assert (home / "cfg" / "systemd" / "user" / "hecate.service").is_file()
    assert (home / "data" / "systemd" / "user" / "hecate-daemon.service").is_file()
    assert install_units("--dir", str(home / "elsewhere")).returncode == 0
    assert (home / "elsewhere" / "hecate.socket").is_file()


def test_install_is_idempotent(home: Path) -> None:
    first = units.install(home, HECATED)
    assert [o.action for o in first] == ["written", "written", "written"]
    before = {p.name: p.lstat().st_mtime_ns for p in home.iterdir()}
    again = units.install(home, HECATED)
    assert [o.action for o in again] == ["unchanged", "unchanged", "unchanged"]
    assert {p.name: p.lstat().st_mtime_ns for p in home.iterdir()} == before
    moved = units.install(home, Path("/elsewhere/bin/hecated"))
    assert [o.action for o in moved] == ["unchanged", "updated", "unchanged"]


def test_install_refuses_a_unit_it_did_not_write(home: Path) -> None:
    mine = "[Service]\nExecStart=/bin/true\n"
    (home / "hecate.service").write_text(mine)
    result = install_units("--dir", str(home))
    assert result.returncode == 1
    assert "--force" in result.stderr and "Traceback" not in result.stderr
    assert (home / "hecate.service").read_text() == mine
    assert not (home / "hecate.socket").exists(), "nothing is written when one unit is refused"
    forced = install_units("--dir", str(home), "--force")
    assert forced.returncode == 0
    assert "replaced:" in forced.stdout
    assert (home / "hecate.service").read_text().startswith(units.MARKER)


def test_install_into_a_path_that_is_a_file_fails_cleanly(home: Path) -> None:
    (home / "file").write_text("x")
    result = install_units("--dir", str(home / "file"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_wheel_carries_the_units(tmp_path: Path) -> None:
    """A pip-installed wheel has no units/ beside it: the units must be package data."""
    src = tmp_path / "src"  # a copy, so the build leaves no build/ in the checkout
    junk = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "docs")
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*junk))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(src)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("hecated-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        for name in units.UNIT_NAMES:
            assert zf.read(f"hecated/_units/{name}").decode() == (UNITS / name).read_text()


def test_install_warns_when_the_executable_is_hidden_by_private_tmp() -> None:
    assert units.hidden_from_service(Path("/tmp/venv/bin/hecated")) == "/tmp"
    assert units.hidden_from_service(Path("/var/tmp/x/hecated")) == "/var/tmp"
    assert units.hidden_from_service(Path("/usr/bin/hecated")) is None


def test_install_makes_hecate_daemon_an_alias_of_hecate_service(home: Path) -> None:
    result = install_units("--dir", str(home))
    assert result.returncode == 0, result.stderr
    alias = home / "hecate-daemon.service"
    assert f"written: {alias}" in result.stdout.splitlines()
    # a relative symlink in the same directory: systemd's way of giving a unit a second name
    assert alias.is_symlink() and os.readlink(alias) == "hecate.service"
    assert alias.read_text() == (home / "hecate.service").read_text()
    assert sorted(p.name for p in home.iterdir()) == [
        "hecate-daemon.service",
        "hecate.service",
        "hecate.socket",
    ], "no temp link is left behind"


def test_install_refuses_a_foreign_hecate_daemon_unit(home: Path) -> None:
    theirs = "[Service]\nExecStart=/usr/bin/some-other-daemon\n"
    (home / "hecate-daemon.service").write_text(theirs)
    result = install_units("--dir", str(home))
    assert result.returncode == 1
    assert "hecate-daemon.service" in result.stderr and "Traceback" not in result.stderr
    assert (home / "hecate-daemon.service").read_text() == theirs
    assert not (home / "hecate.service").exists(), "nothing is written when one is refused"
    # a symlink elsewhere is not ours either
    (home / "hecate-daemon.service").unlink()
    (home / "hecate-daemon.service").symlink_to("/usr/lib/systemd/user/other.service")
    assert install_units("--dir", str(home)).returncode == 1
    forced = install_units("--dir", str(home), "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"replaced: {home / 'hecate-daemon.service'}" in forced.stdout.splitlines()
    assert os.readlink(home / "hecate-daemon.service") == "hecate.service"


def test_install_with_a_directory_in_the_alias_place_fails_cleanly(home: Path) -> None:
    (home / "hecate-daemon.service").mkdir()
    result = install_units("--dir", str(home), "--force")
    assert result.returncode == 1
    assert "hecate-daemon.service is a directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (home / "hecate.service").exists(), "checked before anything is written"


def test_default_install_puts_the_alias_in_the_user_data_unit_dir(home: Path) -> None:
    """Not beside the unit in ~/.config (a config dir), where systemctl would call the
    static service ``indirect``: in ~/.local/share/systemd/user, also on the search path."""
    result = install_units(env={"HOME": str(home), "XDG_CONFIG_HOME": "", "XDG_DATA_HOME": ""})
    assert result.returncode == 0, result.stderr
    config = home / ".config" / "systemd" / "user"
    alias = home / ".local" / "share" / "systemd" / "user" / "hecate-daemon.service"
    assert f"written: {alias}" in result.stdout.splitlines()
    assert not (config / "hecate-daemon.service").exists()
    assert os.readlink(alias) == "../../../../.config/systemd/user/hecate.service"
    assert alias.resolve() == (config / "hecate.service").resolve()
    again = install_units(env={"HOME": str(home), "XDG_CONFIG_HOME": "", "XDG_DATA_HOME": ""})
    assert f"unchanged: {alias}" in again.stdout.splitlines()
    # $XDG_DATA_HOME is honoured like $XDG_CONFIG_HOME
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / "c"), "XDG_DATA_HOME": str(home / "d")}
    assert install_units(env=env).returncode == 0
    moved = home / "d" / "systemd" / "user" / "hecate-daemon.service"
    assert moved.resolve() == (home / "c" / "systemd" / "user" / "hecate.service").resolve()

"""``hecate-daemon.service`` under a private ``systemd --user``: the ecosystem's name for hecated.

The Hecate ecosystem's plugin units say ``Requires=hecate-daemon.service`` and
``After=hecate-daemon.service``, and its CLI runs ``systemctl --user ... hecate-daemon``
(docs/ecosystem.md). ``hecated install-units`` makes that name a symlink to
``hecate.service``
(in the user's data unit directory); here a plugin unit written the ecosystem's way (running
examples/hecate-exampled.py) is started by a real user manager, with nothing
else started first.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HECATED, http_request, wait_for
from ctl_support import EXAMPLED
from systemd_support import UserManager, needs_user_manager

from hecated.adapters.systemd import alias_fields, own_unit

pytestmark = [pytest.mark.slow, needs_user_manager]

PLUGIN = "hecate-exampled.service"
ALIAS = "hecate-daemon.service"
# Where a user manager also finds units (a distro package puts the alias there too).
SHARED_UNIT_DIRS = (
    Path("/etc/systemd/user"),
    Path("/usr/local/lib/systemd/user"),
    Path("/usr/lib/systemd/user"),
)

# A plugin unit as the ecosystem writes them (hecate-gitops' quadlet/apps/*.container).
PLUGIN_UNIT = """[Unit]
Description=Hecate example plugin daemon
Requires=hecate-daemon.service
After=hecate-daemon.service

[Service]
ExecStart={python} {script}
StandardOutput=append:%h/plugin.log
StandardError=append:%h/plugin.log
"""


@pytest.fixture(scope="module")
def manager() -> Iterator[UserManager]:
    um = UserManager().start()
    yield um
    um.stop()


@pytest.fixture
def um(manager: UserManager) -> Iterator[UserManager]:
    shutil.rmtree(data_unit_dir(manager), ignore_errors=True)
    manager.reset()
    yield manager
    manager.systemctl("stop", PLUGIN, check=False)
    shutil.rmtree(data_unit_dir(manager), ignore_errors=True)
    manager.reset()


def install_plugin_unit(um: UserManager) -> None:
    text = PLUGIN_UNIT.format(python=sys.executable, script=EXAMPLED)
    (um.unit_dir / PLUGIN).write_text(text)
    um.systemctl("daemon-reload")


def data_unit_dir(um: UserManager) -> Path:
    """~/.local/share/systemd/user: where install-units puts the alias (units.py says why)."""
    return um.home / ".local" / "share" / "systemd" / "user"


def monotonic(um: UserManager, unit: str, prop: str) -> int:
    return int(um.prop(unit, prop))


def plugin_log(um: UserManager) -> str:
    path = um.home / "plugin.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_plugin_unit_requiring_hecate_daemon_starts_after_hecated_is_ready(
    um: UserManager,
) -> None:
    um.install()
    alias = data_unit_dir(um) / ALIAS
    assert alias.is_symlink() and alias.resolve() == (um.unit_dir / "hecate.service").resolve()
    # still static: an alias in the data dir does not count as enabling it
    assert um.systemctl("is-enabled", "hecate.service", check=False).stdout.strip() == "static"
    assert um.systemctl("is-enabled", ALIAS, check=False).stdout.strip() == "alias"
    install_plugin_unit(um)
    assert um.prop("hecate.service", "ActiveState") == "inactive"

    # one unit, two names: status works under the ecosystem's name
    assert um.prop(ALIAS, "Id") == "hecate.service"
    assert ALIAS in um.prop("hecate.service", "Names").split()

    um.systemctl("start", PLUGIN)  # only the plugin: Requires= pulls hecated in
    assert um.prop(PLUGIN, "ActiveState") == "active", plugin_log(um)
    assert um.prop("hecate.service", "ActiveState") == "active", um.service_log()
    assert PLUGIN in um.prop("hecate.service", "RequiredBy").split()
    # After= on a Type=notify unit: the plugin's process started only once hecated
    # had said READY=1 (the manager's own record of both transitions)
    ready = monotonic(um, "hecate.service", "ActiveEnterTimestampMonotonic")
    started = monotonic(um, PLUGIN, "ExecMainStartTimestampMonotonic")
    assert 0 < ready <= started, (ready, started)

    # the plugin registered through hecated and serves on its namespace socket
    sock = um.home / ".hecate" / "hecate-exampled" / "sockets" / "api.sock"
    wait_for(sock.is_socket, timeout=60)
    status, _, health = http_request(sock, "GET", "/health")
    assert status == 200 and health["ok"] is True, plugin_log(um)
    status, _, entry = um.request("GET", "/api/plugins/hecate-exampled")
    assert status == 200 and entry["name"] == "hecate-exampled", entry

    # journalctl -u does not resolve aliases: hecated's own journal records name the alias
    # in USER_UNIT=, decided from what the manager gave its process (no journald here to
    # read them back; tests/test_systemd.py checks the records' fields)
    main_pid = um.prop("hecate.service", "MainPID")
    environ = Path(f"/proc/{main_pid}/environ").read_bytes().split(b"\0")
    cgroup = Path(f"/proc/{main_pid}/cgroup").read_text()
    assert own_unit(cgroup) == "hecate.service", cgroup
    user_manager = any(v.startswith(b"MANAGERPID=") for v in environ)
    assert alias_fields(user_manager, own_unit(cgroup)) == {"USER_UNIT": ALIAS}

    status = um.systemctl("status", "hecate-daemon", "--no-pager", check=False)
    assert status.returncode == 0, status.stdout + status.stderr  # 0: active
    assert "hecate.service" in status.stdout

    # stopping it by the ecosystem's name stops hecated, and Requires= takes the plugin down
    um.systemctl("stop", "hecate-daemon")
    assert um.prop("hecate.service", "ActiveState") in ("inactive", "failed")
    assert um.prop(PLUGIN, "ActiveState") in ("inactive", "failed")


def test_without_the_alias_such_a_plugin_unit_cannot_start(um: UserManager) -> None:
    """The control: what every ecosystem plugin unit met before the alias existed."""
    for shared in SHARED_UNIT_DIRS:
        if (shared / ALIAS).exists():  # e.g. the .deb, installed by test_packaging meanwhile
            pytest.skip(f"{shared / ALIAS} is installed system-wide: no manager lacks the name")
    um.install()
    (data_unit_dir(um) / ALIAS).unlink()
    install_plugin_unit(um)
    result = um.systemctl("start", PLUGIN, check=False)
    assert result.returncode != 0
    assert "hecate-daemon.service" in result.stderr + result.stdout
    assert um.prop("hecate.service", "ActiveState") == "inactive"
    # install-units puts it back, idempotently, and the same unit now starts
    out = um.run(str(HECATED), "install-units")
    assert f"written: {data_unit_dir(um) / ALIAS}" in out.stdout.splitlines()
    um.systemctl("daemon-reload")
    um.systemctl("start", PLUGIN)
    assert um.prop("hecate.service", "ActiveState") == "active", um.service_log()

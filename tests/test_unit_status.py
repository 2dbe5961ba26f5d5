"""Plugin statuses from the user manager, live: a real hecated beside a real ``systemd --user``.

A private user manager with its session bus (systemd_support.UserManager); the
example plugin (examples/hecate-exampled.py) and a failing command as real
``.service`` units; a real hecated started with ``XDG_RUNTIME_DIR`` pointing at
that manager's runtime dir, so its unit watcher finds the manager's bus there.
Units are driven with ``systemctl --user`` as a person would; what hecated
lists is waited on with the change feed's long poll (``GET
/api/plugins?since=SEQ&wait=S``): every wait is on an event, none on a sleep.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HECATED, Daemon
from ctl_support import ctl
from gitops_support import listed
from systemd_support import (
    UserManager,
    add_unit,
    hecated_on,
    manager_fixtures,
    needs_journald,
    needs_user_manager,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hecate-exampled.py"
PYTHON = HECATED.parent / "python"
TIMEOUT = 30.0

pytestmark = [needs_user_manager, needs_journald, pytest.mark.slow]


manager, um = manager_fixtures()


@pytest.fixture
def hecated(um: UserManager) -> Iterator[Daemon]:
    """hecated beside the manager (its HOME, runtime dir and bus); the plugins' files
    removed after, so the next test starts clean."""
    with hecated_on(um) as d:
        yield d
    for name in list(um.home.joinpath(".hecate").iterdir()):  # the next test starts clean
        if name.name != "hecate-daemon":
            (name / "plugin.toml").unlink(missing_ok=True)


def example_unit(um: UserManager, extra: str = "") -> str:
    """The example plugin as a real .service: it registers itself, writes its pid file
    and answers on its socket, as every plugin daemon does."""
    return add_unit(um, "hecate-exampled.service", f"ExecStart={PYTHON} {EXAMPLE}\n{extra}")


def unit_is(active: str, status: str) -> Callable[[dict[str, Any]], bool]:
    def test(row: dict[str, Any]) -> bool:
        unit = row["unit"]
        return unit is not None and unit["active_state"] == active and row["status"] == status

    return test


def test_a_unit_started_with_systemctl_is_listed_running_with_its_unit(um, hecated) -> None:
    unit = example_unit(um)
    assert hecated.register("hecate-exampled")[0] == 201
    row = listed(hecated, unit_is("inactive", "stopped"), "hecate-exampled")
    assert row["unit"]["name"] == unit and row["unit"]["load_state"] == "loaded"

    um.systemctl("start", unit)
    row = listed(hecated, unit_is("active", "running"), "hecate-exampled")
    assert row["unit"]["main_pid"] == int(um.prop(unit, "MainPID"))
    assert row["unit"]["sub_state"] == "running"
    assert row["display_name"] == "Example"  # its socket answered: running is the socket's
    detail = hecated.request("GET", "/api/plugins/hecate-exampled")[2]
    assert detail["unit"] == row["unit"]
    shown = ctl(um.home, "show", "hecate-exampled")
    assert "unit:" in shown.out and f"{unit} (loaded, active/running)" in shown.out
    assert ctl(um.home, "list").out.splitlines()[1].split()[3] == unit

    um.systemctl("stop", unit)
    listed(hecated, unit_is("inactive", "stopped"), "hecate-exampled")


def test_a_unit_exiting_1_is_failed_with_restarts_and_its_story(um, hecated) -> None:
    unit = add_unit(
        um,
        "hecate-faild.service",
        "ExecStart=/bin/sh -c 'echo failing; exit 1'\nRestart=on-failure\nRestartSec=50ms\n",
    )
    assert hecated.register("hecate-faild")[0] == 201
    listed(hecated, unit_is("inactive", "stopped"), "hecate-faild")
    um.systemctl("start", unit)
    story = "exited with status 1; restarted 5 times; start limit hit"
    row = listed(
        hecated, lambda r: r["status"] == "failed" and r["unit"]["reason"] == story, "hecate-faild"
    )
    assert row["unit"]["restarts"] == 5 and row["unit"]["active_state"] == "failed"
    assert row["unit"]["result"] == "exit-code"
    detail = hecated.request("GET", "/api/plugins/hecate-faild")[2]
    assert (detail["status"], detail["reason"]) == ("failed", story)
    health = hecated.request("GET", "/health")[2]
    assert health["plugins"]["hecate-faild"] == f"failed: {story}"
    out = ctl(um.home, "list").out
    assert f"hecate-faild: failed: {story}" in out.splitlines()


def test_kill_9_of_the_main_pid_restarts_and_counts(um, hecated) -> None:
    unit = example_unit(um, "Restart=on-failure\nRestartSec=50ms\n")
    assert hecated.register("hecate-exampled")[0] == 201
    um.systemctl("start", unit)
    first = listed(hecated, unit_is("active", "running"), "hecate-exampled")["unit"]
    os.kill(first["main_pid"], signal.SIGKILL)

    def restarted(row: dict[str, Any]) -> bool:
        return unit_is("active", "running")(row) and row["unit"]["main_pid"] != first["main_pid"]

    again = listed(hecated, restarted, "hecate-exampled")["unit"]
    assert again["restarts"] == first["restarts"] + 1
    assert again["reason"] == "restarted once"  # the new process has no exit to tell yet


def test_the_unit_follows_plugin_toml_and_a_bad_one_is_invalid(um, hecated) -> None:
    target = add_unit(um, "alias-target.service", "ExecStart=/bin/sleep infinity\n")
    um.systemctl("start", target)
    reg = ctl(um.home, "register", "hecate-aliasd", "--unit", target)
    assert reg.code == 0, reg
    path = um.home / ".hecate" / "hecate-aliasd" / "plugin.toml"
    assert f'unit = "{target}"' in path.read_text()
    # The unit runs; the plugin's socket does not answer: starting, and why.
    row = listed(hecated, unit_is("active", "starting"), "hecate-aliasd")
    assert row["unit"]["name"] == target
    detail = hecated.request("GET", "/api/plugins/hecate-aliasd")[2]
    assert detail["reason"] == "the unit is active; sockets/api.sock does not answer yet"

    # A hand edit names another unit (none by that name): the watch set follows the feed.
    path.write_text(path.read_text().replace(target, "hecate-aliasd.service"))
    row = listed(
        hecated, lambda r: (r["unit"] or {}).get("name") == "hecate-aliasd.service", "hecate-aliasd"
    )
    assert (row["unit"]["load_state"], row["status"]) == ("not-found", "stopped")

    path.write_text(path.read_text().replace('"hecate-aliasd.service"', '"../x.service"'))
    # Invalid, and no unit any more (no word of one we could trust; a second change).
    listed(hecated, lambda r: r["status"] == "invalid" and r["unit"] is None, "hecate-aliasd")
    error = hecated.request("GET", "/api/plugins/hecate-aliasd")[2]["error"]
    assert "'unit' is not a valid unit: a unit name, not a path" in error["message"]


def test_a_manager_crash_falls_back_to_the_probes_and_back(um, hecated) -> None:
    """Last in the module: the crashed manager's processes run on, orphaned, until the
    module's manager stops (it kills them by pid)."""
    unit = example_unit(um)
    assert hecated.register("hecate-exampled")[0] == 201
    um.systemctl("start", unit)
    listed(hecated, unit_is("active", "running"), "hecate-exampled")
    um.crash()
    # No word from the manager: the probes alone; the orphaned plugin still answers.
    row = listed(hecated, lambda r: r["unit"] is None, "hecate-exampled")
    assert row["status"] == "running"
    assert hecated.request("GET", "/health")[0] == 200
    um.kill_orphan("dbus-daemon")
    um.respawn()
    # The new manager never started the plugin: its unit is inactive, the plugin answers
    # anyway (as if started by hand), so it is running, with the unit block back.
    row = listed(hecated, lambda r: r["unit"] is not None, "hecate-exampled")
    assert (row["unit"]["active_state"], row["status"]) == ("inactive", "running")
    assert hecated.proc is not None and hecated.proc.poll() is None

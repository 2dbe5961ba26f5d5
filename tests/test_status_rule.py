"""The status rule with the unit input (core.status.combine), and the index publishing it.

Pure parts first (the rule, the unit adapter's finding), then a real Index on a
real tree: ``set_unit`` makes a change only when the status or the unit block it
makes differs, and the views carry the block and the health words.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hecated.adapters.units import UnitState
from hecated.adapters.unitstatus import unit_finding, watched_unit
from hecated.core.index import Index
from hecated.core.layout import Layout
from hecated.core.runstate import RunState
from hecated.core.status import SocketFinding, SocketKind, UnitFinding, combine
from hecated.core.store import Entry
from hecated.http.views import Views
from hecated.protocol import PluginStatus

ANSWERS = SocketFinding(SocketKind.ANSWERING, socket_file=True)
ABSENT = SocketFinding(SocketKind.ABSENT)
DEAD = RunState()
LIVE = RunState(pid=4242)


def unit(active: str, sub: str, status: str | None, reason: str | None = None) -> UnitFinding:
    return UnitFinding("p.service", "loaded", active, sub, status=status, reason=reason)


FAILED = unit("failed", "failed", "failed", "exited with status 1; restarted 5 times")


def test_no_word_from_the_manager_leaves_the_probes_answer() -> None:
    assert combine(DEAD, ANSWERS, None) == combine(DEAD, ANSWERS)
    assert combine(LIVE, ABSENT, None).status == PluginStatus.STARTING
    assert combine(DEAD, ABSENT, None).status == PluginStatus.STOPPED


def test_a_failed_unit_wins_with_its_reason() -> None:
    live = combine(DEAD, ABSENT, FAILED)
    assert (live.status, live.detail, live.unit) == (
        PluginStatus.FAILED,
        "exited with status 1; restarted 5 times",
        FAILED,
    )


@pytest.mark.parametrize(
    ("active", "sub", "status", "expected"),
    [
        ("activating", "start", "starting", PluginStatus.STARTING),
        ("activating", "auto-restart", "starting", PluginStatus.STARTING),
        ("deactivating", "stop-sigterm", "stopping", PluginStatus.STOPPING),
        ("inactive", "dead", "stopped", PluginStatus.STOPPED),
    ],
)
def test_the_unit_decides_over_a_silent_socket(active, sub, status, expected) -> None:
    assert combine(DEAD, ABSENT, unit(active, sub, status, "why")).status == expected


def test_running_still_needs_the_socket() -> None:
    running = unit("active", "running", None)
    assert combine(DEAD, ANSWERS, running).status == PluginStatus.RUNNING
    waiting = combine(DEAD, ABSENT, running)  # the unit runs; the socket is not up yet
    assert waiting.status == PluginStatus.STARTING
    assert waiting.detail == "the unit is active; sockets/api.sock does not answer yet"
    assert combine(DEAD, None, running).status == PluginStatus.STARTING  # not probed yet


def test_a_stopped_unit_whose_plugin_runs_anyway_is_what_the_probes_say() -> None:
    stopped = unit("inactive", "dead", "stopped", "the unit is inactive (dead)")
    by_hand = combine(DEAD, ANSWERS, stopped)
    assert (by_hand.status, by_hand.unit) == (PluginStatus.RUNNING, stopped)
    assert combine(LIVE, ABSENT, stopped).status == PluginStatus.STARTING


def test_a_unit_without_a_file_decides_nothing() -> None:
    missing = UnitFinding("p.service", "not-found", "inactive", "dead")
    assert combine(DEAD, ABSENT, missing).status == PluginStatus.STOPPED
    assert combine(DEAD, ABSENT, missing).unit == missing


def test_the_finding_of_a_unit_state_carries_its_status_and_story() -> None:
    state = UnitState(
        "p.service", "loaded", "failed", "failed", result="exit-code", n_restarts=5,
        since=1000.1, exit_time=1000.0, restart_delay=0.1, restart="on-failure",
        exit_code=1, exit_status=1,
    )  # fmt: skip
    found = unit_finding(state)
    assert found is not None
    assert (found.status, found.reason, found.restarts, found.main_pid) == (
        "failed",
        "exited with status 1; restarted 5 times; start limit hit",
        5,
        None,
    )
    killed = UnitState(
        "p.service", "loaded", "active", "running", result="success", n_restarts=1,
        main_pid=77, exit_code=2, exit_status=9, restart="on-failure",
    )  # fmt: skip
    again = unit_finding(killed)
    assert (again.status, again.reason, again.main_pid) == (
        None,
        "killed by SIGKILL; restarted once",
        77,
    )
    assert unit_finding(None) is None


def test_which_unit_a_plugin_has(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path / ".hecate")
    layout.ensure_layout()
    registry = Index(layout)
    registry.register("hecate-traderd", "1", "")
    registry.register("hecate-otherd", "1", "", unit="other@x.service")
    plain, other = registry.get("hecate-traderd"), registry.get("hecate-otherd")
    assert watched_unit("hecate-traderd", plain.entry, listed=True) == "hecate-traderd.service"
    assert watched_unit("hecate-otherd", other.entry, listed=True) == "other@x.service"
    assert watched_unit("hecate-discovered", None, listed=True) == "hecate-discovered.service"
    assert watched_unit("hecate-traderd", plain.entry, listed=False) is None  # removed
    assert watched_unit("bad", Entry("bad"), listed=True) is None  # an invalid plugin.toml


def test_set_unit_changes_status_block_and_health_once(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path / ".hecate")
    layout.ensure_layout()
    registry = Index(layout)
    views = Views(registry)
    registry.register("hecate-faild", "1", "")
    assert views.summary(registry.get("hecate-faild"))["unit"] is None
    seq = registry.seq
    assert registry.set_unit("hecate-faild", FAILED) is not None
    assert registry.seq == seq + 1
    assert registry.set_unit("hecate-faild", FAILED) is None  # the same: no change
    plugin = registry.get("hecate-faild")
    assert plugin.status == PluginStatus.FAILED
    row = views.summary(plugin)
    assert row["status"] == "failed"
    assert row["unit"] == {
        "name": "p.service",
        "load_state": "loaded",
        "active_state": "failed",
        "sub_state": "failed",
        "result": "success",
        "restarts": 0,
        "since": None,
        "main_pid": None,
        "reason": "exited with status 1; restarted 5 times",
    }
    assert views.detail(plugin)["reason"] == "exited with status 1; restarted 5 times"
    assert views.health()["plugins"]["hecate-faild"] == (
        "failed: exited with status 1; restarted 5 times"
    )
    registry.set_unit("hecate-faild", unit("deactivating", "stop-sigterm", "stopping", "x"))
    assert views.health()["plugins"]["hecate-faild"] == "stopping"
    registry.set_unit("hecate-faild", None)  # the manager went away: the probes alone
    assert registry.get("hecate-faild").status == PluginStatus.STOPPED
    assert registry.set_unit("hecate-nobody", FAILED) is None  # a unit never lists a plugin
    assert registry.get("hecate-nobody") is None


def test_a_deregistered_plugin_forgets_its_unit(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path / ".hecate")
    layout.ensure_layout()
    registry = Index(layout)
    registry.register("hecate-faild", "1", "")
    registry.set_unit("hecate-faild", FAILED)
    registry.deregister("hecate-faild")
    registry.register("hecate-faild", "1", "")
    assert registry.get("hecate-faild").status == PluginStatus.STOPPED
    assert registry.unit("hecate-faild") is None

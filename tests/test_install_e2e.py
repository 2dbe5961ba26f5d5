"""Installed through the API and hecatectl -> linked, started, listed; uninstalled -> stopped.

The whole of issue 21's install half with the reconciler doing its part: a private
user manager with the stand-in Quadlet (gitops_support, the reconciler's own test
support), a real hecated beside it. Skipped where the reconciler is not part of
the tree. Every wait is on an end state (a row listed so), never a sleep.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import gitops_support
import pytest
from ctl_support import clean_env, ctl
from systemd_support import UserManager, needs_user_manager

pytestmark = [needs_user_manager, pytest.mark.slow]

NAME = "hecate-exampled"
UNIT = f"{NAME}.service"


@pytest.fixture(scope="module")
def manager() -> Iterator[UserManager]:
    with gitops_support.manager_with_quadlet() as um:
        yield um


@pytest.fixture
def world(manager: UserManager) -> Iterator[gitops_support.World]:
    w = gitops_support.World(manager)
    yield w
    w.close()


def test_installed_through_the_api_it_runs_uninstalled_it_stops(world) -> None:
    d = world.hecated()
    text = gitops_support.service_text(NAME, "installed through the API")
    body = {"unit": text, "kind": "service", "name": NAME}
    status, _, answer = d.request("POST", "/api/plugins/install", body)
    assert status == 201, answer
    row = gitops_support.listed(d, lambda r: r["installed"] and r["status"] == "running", NAME)
    assert row["desired"]["path"] == answer["path"] and row["desired"]["linked"] is True
    assert os.readlink(world.um.unit_dir / UNIT) == answer["path"]
    data = d.root / NAME / "sqlite" / "mine.db"
    data.write_text("data")

    status, _, answer = d.request("POST", f"/api/plugins/{NAME}/uninstall")
    assert status == 200, answer
    assert answer["stopped"] is True and answer["state"]["active_state"] == "inactive"
    row = gitops_support.listed(d, lambda r: not r["installed"], NAME)
    assert row["status"] == "stopped" and row["desired"] is None
    assert not os.path.lexists(world.um.unit_dir / UNIT)
    assert world.prop(UNIT, "ActiveState") == "inactive"
    assert data.read_text() == "data"


def test_hecatectl_installs_a_container_and_uninstalls_it(world, tmp_path: Path) -> None:
    d = world.hecated()
    source = tmp_path / "hecate-boxd.container"
    source.write_text(gitops_support.container_text())
    env = clean_env(world.um.home, HECATE_SOCKET_PATH=str(d.socket))
    result = ctl(world.um.home, "install", str(source), env=env)
    assert result.code == 0, result
    up = lambda r: r["installed"] and gitops_support.active(r)  # noqa: E731
    row = gitops_support.listed(d, up, "hecate-boxd")
    assert row["desired"]["kind"] == "container"
    assert os.path.lexists(world.quadlet_dir / "hecate-boxd.container")
    result = ctl(world.um.home, "uninstall", "hecate-boxd", env=env)
    assert result.code == 0 and "stopped hecate-boxd.service" in result.out, result
    # Neither registered nor answering: once uninstalled it is not listed at all.
    gitops_support.listed(d, lambda rows: all(r["name"] != "hecate-boxd" for r in rows))
    assert not os.path.lexists(world.quadlet_dir / "hecate-boxd.container")
    assert world.prop("hecate-boxd.service", "ActiveState") == "inactive"

"""Install and remove as files: hecated reconciles ~/.hecate/gitops into a real user manager.

A real hecated beside a private ``systemd --user`` with its session bus
(gitops_support: the stand-in Quadlet, which also counts the manager's reloads and
shows what each one saw). Files are dropped into, edited in and removed from the
gitops tree as ``hecate install``, a person or ``git pull`` do; every wait is on an
end state (a row listed so, a unit active), never a sleep.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from conftest import wait_for
from gitops_support import (
    World,
    listed,
    manager_with_quadlet,
    service_text,
)
from systemd_support import UserManager, needs_user_manager

pytestmark = [needs_user_manager, pytest.mark.slow]

NAME = "hecate-exampled"
UNIT = f"{NAME}.service"


@pytest.fixture(scope="module")
def manager() -> Iterator[UserManager]:
    with manager_with_quadlet() as um:
        yield um


@pytest.fixture
def world(manager: UserManager) -> Iterator[World]:
    w = World(manager)
    yield w
    w.close()


def test_a_service_file_is_linked_started_listed_reloaded_when_edited_stopped_when_removed(
    world: World,
) -> None:
    d = world.hecated()
    before = len(world.runs())
    src = world.write(f"{NAME}.service", service_text(NAME, "first words"))
    row = listed(d, lambda r: r["installed"] and r["status"] == "running", NAME)
    link = world.um.unit_dir / UNIT
    assert os.readlink(link) == str(src)
    assert row["desired"] == {
        "path": str(src),
        "kind": "service",
        "unit": UNIT,
        "linked": True,
        "problem": None,
    }
    assert row["registered"] is True  # the example registered itself once started
    assert len(world.runs()) == before + 1  # one reload: the link, then the start
    namespace = d.root / NAME
    assert all((namespace / sub).is_dir() for sub in ("sqlite", "reckon-db", "run"))
    (namespace / "sqlite" / "mine.db").write_text("data")
    pid = world.prop(UNIT, "MainPID")

    # Edited: reloaded (the manager has the new text), not restarted (as the script).
    src.write_text(service_text(NAME, "second words"))
    wait_for(lambda: world.prop(UNIT, "Description") == "second words", 60, interval=0.2)
    assert len(world.runs()) == before + 2
    assert world.prop(UNIT, "NeedDaemonReload") == "no"
    assert world.prop(UNIT, "MainPID") == pid

    # Removed: the unit stopped, then its link removed; the data stays.
    src.unlink()
    row = listed(d, lambda r: not r["installed"] and r["status"] == "stopped", NAME)
    assert row["desired"] is None
    assert not os.path.lexists(link)
    assert world.prop(UNIT, "ActiveState") == "inactive"
    assert (namespace / "sqlite" / "mine.db").read_text() == "data"
    wait_for(lambda: len(world.runs()) == before + 3, 60)  # and one reload, without the link
    assert UNIT not in world.runs()[-1]

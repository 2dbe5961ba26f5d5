"""Uninstall stops the plugin's unit, through a real user manager (issue 21).

A private ``systemd --user`` on its session bus (systemd_support.manager_on_bus) and
a real hecated in its HOME and runtime dir. The unit file is installed through the
API into ``gitops/apps/``, linked into the manager's unit directory the way the
reconciler links it (a symlink into the gitops tree), and started; uninstall must
remove its file, then stop it before answering, and leave the plugin's data. Every wait is on an end
state, bounded; never a sleep.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, wait_for
from systemd_support import (
    UserManager,
    hecated_on,
    manager_fixtures,
    needs_user_manager,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hecate-exampled.py"
ANALYZE = shutil.which("systemd-analyze")

pytestmark = [needs_user_manager, pytest.mark.slow]


manager, um = manager_fixtures(journald=False)


@pytest.fixture
def hecated(um: UserManager) -> Iterator[Daemon]:
    with hecated_on(um) as d:
        yield d


def test_uninstall_stops_the_unit_removes_its_file_and_keeps_the_data(
    um: UserManager, hecated: Daemon
) -> None:
    name = "hecate-exampled"
    unit = f"{name}.service"
    text = (
        f"[Unit]\nDescription=example plugin\n\n[Service]\nExecStart={sys.executable} {EXAMPLE}\n"
    )
    status, _, body = hecated.request(
        "POST", "/api/plugins/install", {"unit": text, "kind": "service", "name": name}
    )
    assert status == 201, body
    desired = Path(body["path"])
    assert desired == um.home / ".hecate" / "gitops" / "apps" / unit
    # Linked as the reconciler links it (it may already have: the same link either way).
    link = um.unit_dir / unit
    um.unit_dir.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(desired)
    um.made.append(unit)  # type: ignore[attr-defined]
    um.systemctl("daemon-reload")
    um.systemctl("start", unit)
    assert um.prop(unit, "ActiveState") == "active"
    data = um.home / ".hecate" / name / "sqlite" / "keep.db"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_bytes(b"keep me")

    status, _, body = hecated.request("POST", f"/api/plugins/{name}/uninstall")
    assert status == 200, body
    assert body["stopped"] is True and body["unit"] == unit
    assert body["state"]["active_state"] == "inactive"
    assert um.prop(unit, "ActiveState") == "inactive"  # stopped before the answer
    assert body["removed"] == [str(desired)]
    assert not desired.exists()
    assert data.read_bytes() == b"keep me"


def test_uninstall_of_a_unit_the_manager_does_not_know_still_removes_the_file(
    um: UserManager, hecated: Daemon
) -> None:
    """Installed but never linked (no reconciler yet, or Quadlet missing): nothing to
    stop, and the file still goes."""
    text = "[Unit]\nDescription=x\n\n[Service]\nExecStart=/nonexistent/hecate-never\n"
    body = {"unit": text, "kind": "service", "name": "hecate-never"}
    assert hecated.request("POST", "/api/plugins/install", body)[0] == 201
    status, _, answer = hecated.request("POST", "/api/plugins/hecate-never/uninstall")
    assert status == 200, answer
    assert answer["removed"] and not Path(answer["removed"][0]).exists()


def test_a_stop_that_does_not_end_in_time_is_a_502_saying_the_file_is_gone(
    um: UserManager,
) -> None:
    """The file goes first, then the stop (so the reconciler never starts the unit again
    meanwhile): a stop that fails is the 502 it is, and says the file is removed all the
    same; the reconciler's own stop is made once the job can end."""
    name = "hecate-slowstopd"
    unit = f"{name}.service"
    gate, held, text = _held_stop(um, "uninstall", "a slow stop")
    um.made.append(unit)  # type: ignore[attr-defined]
    with hecated_on(um, {"HECATE_UNIT_JOB_TIMEOUT": "1"}) as d:
        body = {"unit": text, "kind": "service", "name": name}
        status, _, answer = d.request("POST", "/api/plugins/install", body)
        assert status == 201, answer
        path = Path(answer["path"])
        wait_for(lambda: um.prop(unit, "ActiveState") == "active", 60, interval=0.1)
        try:
            status, _, answer = d.request("POST", f"/api/plugins/{name}/uninstall")
        finally:
            wait_for(held.exists, 60)
            with open(gate, "w") as release:
                release.write("go\n")
        assert status == 502 and answer["code"] == "unit_failed", answer
        assert "its file is removed" in answer["error"], answer
        assert not path.exists()
        wait_for(lambda: not os.path.lexists(um.unit_dir / unit), 60)  # the reconciler's
        assert um.prop(unit, "ActiveState") == "inactive"


def test_a_unit_reinstalled_while_its_stop_still_runs_is_started_again(um: UserManager) -> None:
    """Uninstalled, its stop held by its ExecStop (uninstall's 502, the reconciler's stop
    timed out and owed, its link kept), then installed again at once: the file is back,
    so when the stop ends the unit must run again. The reconciler drops the owed stop and
    starts the unit; that start meets the stop still running (mode fail refuses to cancel
    it) and is asked again until the stop has ended."""
    name = "hecate-reinstalld"
    unit = f"{name}.service"
    gate, held, text = _held_stop(um, "reinstall", "reinstalled while stopping")
    body = {"unit": text, "kind": "service", "name": name}
    um.made.append(unit)  # type: ignore[attr-defined]
    with hecated_on(um, {"HECATE_UNIT_JOB_TIMEOUT": "1"}) as d:
        status, _, answer = d.request("POST", "/api/plugins/install", body)
        assert status == 201, answer
        wait_for(lambda: um.prop(unit, "ActiveState") == "active", 60, interval=0.1)
        try:
            status, _, answer = d.request("POST", f"/api/plugins/{name}/uninstall")
            assert status == 502 and "its file is removed" in answer["error"], answer
            wait_for(lambda: f"stopping {unit} failed" in d.log(), 60)  # owed, link kept
            reloads = d.log().count("reloaded the user manager")
            status, _, answer = d.request("POST", "/api/plugins/install", body)
            assert status == 201, answer
            # The pass that finds the file back (an edit to the manager: one reload).
            wait_for(lambda: d.log().count("reloaded the user manager") > reloads, 60)
            assert um.prop(unit, "ActiveState") == "deactivating"  # the stop still held
        finally:
            wait_for(held.exists, 60)
            with open(gate, "w") as release:
                release.write("go\n")
        wait_for(lambda: um.prop(unit, "ActiveState") == "active", 60, interval=0.1)
        assert os.readlink(um.unit_dir / unit) == answer["path"]


def test_install_through_the_shipped_unit_in_its_sandbox(um: UserManager) -> None:
    """hecated as installed (hecate.socket, the hardened hecate.service): the write lands
    in ~/.hecate/gitops/apps/ (ReadWritePaths), and systemd-analyze still verifies under
    its seccomp filter and private /tmp."""
    um.install()
    try:
        text = "[Unit]\nDescription=x\n\n[Service]\nExecStart=/nonexistent/hecate-sandboxed\n"
        body = {"unit": text, "kind": "service", "name": "hecate-sandboxed"}
        status, _, answer = um.request("POST", "/api/plugins/install", body)
        assert status == 201, (answer, um.service_log()[-2000:])
        path = um.home / ".hecate" / "gitops" / "apps" / "hecate-sandboxed.service"
        assert answer["path"] == str(path) and path.read_text() == text
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        said = [line for line in um.service_log().splitlines() if "verif" in line]
        # Strict, in a checkout under /tmp too (CI's clones): the service's private /tmp
        # is writable there (systemd_support binds the checkout in, PrivateTmp stays on).
        verified = "systemd-analyze" if ANALYZE else None
        assert answer["verified"] == verified, (answer, said[-5:])
        body = {"unit": text + "ExecStrat=/typo\n", "kind": "service", "name": "hecate-typo"}
        status, _, answer = um.request("POST", "/api/plugins/install", body)
        if ANALYZE:
            assert status == 400 and answer["line"] == 6, answer
        status, _, answer = um.request("POST", "/api/plugins/hecate-sandboxed/uninstall")
        assert status == 200 and not path.exists(), answer
    finally:
        um.reset()


def _held_stop(um: UserManager, tag: str, description: str) -> tuple[Path, Path, str]:
    """A unit whose first stop is held until the test writes to ``gate`` (``held``
    appears once it is held): a stop job still running, without a sleep. Held once
    only, so the test's own stop at the end ends at once."""
    gate, held = um.base / f"{tag}.gate", um.base / f"{tag}.held"
    os.mkfifo(gate)
    text = (
        f"[Unit]\nDescription={description}\n\n[Service]\nExecStart=/bin/sleep infinity\n"
        f"ExecStop=/bin/sh -c '[ -e {held} ] || {{ touch {held}; read x < {gate}; }}'\n"
    )
    return gate, held, text

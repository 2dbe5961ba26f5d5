"""Install and remove as files: hecated reconciles ~/.hecate/gitops into a real user manager.

A real hecated beside a private ``systemd --user`` with its session bus
(gitops_support: the stand-in Quadlet, which also counts the manager's reloads and
shows what each one saw). Files are dropped into, edited in and removed from the
gitops tree as ``hecate install``, a person or ``git pull`` do; every wait is on an
end state (a row listed so, a unit active), never a sleep.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, wait_for
from ctl_support import clean_env, ctl
from gitops_support import (
    World,
    active,
    container_text,
    fake_podman,
    listed,
    manager_with_quadlet,
    reconciler_script,
    service_text,
    sleeper_text,
)
from systemd_support import UserManager, descendants, needs_user_manager

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


def installed_then_stopped(world: World, unit: str, text: str) -> Path:
    """``unit``'s file dropped into apps/ and its unit running under a hecated, which is
    then stopped (what a later hecated finds); the file's path."""
    d = world.hecated()
    src = world.write(unit, text)
    listed(d, lambda r: r["installed"] and active(r), unit.removesuffix(".service"))
    d.stop()
    return src


def removed_with_no_manager(world: World, unit: str, text: str) -> Daemon:
    """``unit`` installed and running, then a hecated (``--idle-timeout 2``) that reaches
    no manager (an empty runtime dir) sees its file removed: its stop is owed."""
    src = installed_then_stopped(world, unit, text)
    away = world.um.base / f"away-{unit.removesuffix('.service')}"
    away.mkdir(mode=0o700, exist_ok=True)
    d = world.hecated(env={"XDG_RUNTIME_DIR": str(away)}, args=("--idle-timeout", "2"))
    listed(d, lambda r: r["installed"], unit.removesuffix(".service"))
    src.unlink()
    return d


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


def test_ten_files_written_at_once_make_one_reload(world: World) -> None:
    # A checkout of ten files, then a rescan: with a settle window far longer than any
    # stall of the box, the burst is still gathering when the ten are in place, and the
    # rescan ends it at once. Reconciled as they come (no coalescing), the first files
    # would be reloaded before the last were written. Nothing here depends on timing
    # short of a 10-minute stall.
    world.write("hecate-first.service", sleeper_text("the first, alone"))
    d = world.hecated(env={"HECATE_GITOPS_SETTLE": "600"})
    listed(d, lambda r: r["installed"] and active(r), "hecate-first")  # the start pass's
    names = [f"hecate-ten{i}" for i in range(10)]
    before = len(world.runs())
    for name in names:  # one write after the other, as git checks files out
        world.write(f"{name}.service", sleeper_text(name))
    assert d.request("POST", "/api/rescan")[0] == 200

    def all_ten(rows: list) -> bool:
        up = {r["name"] for r in rows if r["installed"] and active(r)}
        return set(names) <= up

    listed(d, all_ten)
    world.write("hecate-eleven.service", sleeper_text("the eleventh, alone"))
    assert d.request("POST", "/api/rescan")[0] == 200
    listed(d, lambda r: r["installed"] and active(r), "hecate-eleven")
    # The manager reloaded once for the ten and once for the eleventh: nothing between.
    assert len(world.runs()) == before + 2, world.runs()[before:]


def test_a_file_in_the_way_is_left_alone_and_reported(world: World) -> None:
    unit_dir = world.um.unit_dir
    unit_dir.mkdir(parents=True, exist_ok=True)
    mine = unit_dir / "hecate-mined.service"
    mine.write_text(sleeper_text("the user's own file"))
    elsewhere = unit_dir / "hecate-linkd.service"
    os.symlink(world.um.home / "somewhere-else.service", elsewhere)
    world.made += [mine, elsewhere]
    d = world.hecated()
    for name in ("hecate-mined", "hecate-linkd"):
        world.write(f"{name}.service", sleeper_text("wanted"))
    for name, dest in (("hecate-mined", mine), ("hecate-linkd", elsewhere)):
        row = listed(d, lambda r: r["installed"] and r["desired"]["problem"], name)
        assert row["desired"]["linked"] is False
        assert row["desired"]["problem"] == (
            f"a file that is not hecated's link is in the way: ~/.config/systemd/user/{dest.name}"
        )
    assert mine.read_text() == sleeper_text("the user's own file") and not mine.is_symlink()
    assert os.readlink(elsewhere) == str(world.um.home / "somewhere-else.service")


def test_at_start_a_dangling_link_goes_before_the_one_reload_and_a_container_runs(
    world: World,
) -> None:
    # Left from before: the own link of a file removed while hecated was not running
    # (Quadlet's generator aborts on a dangling link: the stand-in does too).
    world.quadlet_dir.mkdir(parents=True, exist_ok=True)
    gone = world.quadlet_dir / "hecate-gone.container"
    os.symlink(world.apps / "hecate-gone.container", gone)
    src = world.write("hecate-boxd.container", container_text())
    before = len(world.runs())
    d = world.hecated()
    row = listed(d, lambda r: r["installed"] and active(r), "hecate-boxd")
    assert row["desired"] == {
        "path": str(src),
        "kind": "container",
        "unit": "hecate-boxd.service",
        "linked": True,
        "problem": None,
    }
    assert os.readlink(world.quadlet_dir / "hecate-boxd.container") == str(src)
    assert not os.path.lexists(gone)
    runs = world.runs()[before:]
    assert len(runs) == 1, runs  # one reload, which saw the new link and not the dangling one
    assert "hecate-boxd.container" in runs[0] and "hecate-gone" not in runs[0]


def test_without_quadlet_a_container_is_linked_and_says_why_and_doctor_says_so(
    world: World,
) -> None:
    bin_dir = fake_podman(world.um.base / "old-podman", "4.3.1")
    path = f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    d = world.hecated(env={"PATH": path}, quadlet=False)
    world.write("hecate-boxd.container", container_text())
    row = listed(d, lambda r: r["installed"] and r["desired"]["problem"], "hecate-boxd")
    why = "needs podman 4.4 or later for Quadlet; this machine has 4.3.1"
    assert row["desired"]["problem"] == why
    assert row["desired"]["linked"] is True  # as the script would: ready for a newer podman
    doctor = ctl(world.um.home, "doctor", env=clean_env(world.um.home, PATH=path))
    assert why in doctor.out and "hecate-boxd.container" in doctor.out, doctor
    if shutil.which("podman") is None:
        doctor = ctl(world.um.home, "doctor")
        assert "needs podman 4.4 or later for Quadlet; podman is not installed" in doctor.out


def test_without_a_user_manager_links_are_made_and_the_rest_waits_for_one(world: World) -> None:
    away = world.um.base / "away"  # a runtime dir with no bus in it (yet)
    away.mkdir(mode=0o700, exist_ok=True)
    d = world.hecated(env={"XDG_RUNTIME_DIR": str(away)})
    src = world.write("hecate-laterd.service", sleeper_text("later"))
    row = listed(d, lambda r: r["installed"] and r["desired"]["problem"], "hecate-laterd")
    assert row["desired"]["linked"] is True
    assert row["desired"]["problem"].startswith("linked, but no systemd user manager has loaded")
    assert os.readlink(world.um.unit_dir / "hecate-laterd.service") == str(src)
    assert world.prop("hecate-laterd.service", "ActiveState") == "inactive"
    owed = world.um.home / ".hecate" / "hecate-daemon" / "run" / "gitops-owed-starts"
    assert owed.read_text() == "hecate-laterd.service\n"  # for a hecated after this one
    # The manager's bus appears where hecated looks: the owed reload and start are done.
    os.symlink(world.um.runtime / "bus", away / "bus")
    try:
        listed(d, lambda r: r["desired"]["problem"] is None, "hecate-laterd")
        wait_for(lambda: world.prop("hecate-laterd.service", "ActiveState") == "active", 60)
        wait_for(lambda: not owed.exists(), 60)  # removed once the starts are made
    finally:
        (away / "bus").unlink()


def test_a_start_owed_when_hecated_ended_is_made_by_the_next_one(world: World) -> None:
    # The first hecated links the file but finds no manager, and ends owing the start;
    # the next one finds the link in place and the unit never loaded: it starts it.
    away = world.um.base / "away"
    away.mkdir(mode=0o700, exist_ok=True)
    d = world.hecated(env={"XDG_RUNTIME_DIR": str(away)})
    src = world.write("hecate-owedd.service", sleeper_text("owed"))
    listed(d, lambda r: r["installed"] and r["desired"]["problem"], "hecate-owedd")
    d.stop()
    assert os.readlink(world.um.unit_dir / "hecate-owedd.service") == str(src)
    world.hecated()
    wait_for(lambda: world.prop("hecate-owedd.service", "ActiveState") == "active", 60)


def test_a_stop_the_manager_did_not_make_keeps_the_link_until_it_does(world: World) -> None:
    unit = "hecate-stopd.service"
    src = installed_then_stopped(world, unit, sleeper_text("to stop"))
    away = world.um.base / "away"
    away.mkdir(mode=0o700, exist_ok=True)
    d = world.hecated(env={"XDG_RUNTIME_DIR": str(away)})
    listed(d, lambda r: r["installed"], "hecate-stopd")
    src.unlink()
    listed(d, lambda rows: "hecate-stopd" not in {r["name"] for r in rows if r["installed"]})
    # Not stopped: the link stays (removed, the unit would run on with no file, forever).
    assert os.path.lexists(world.um.unit_dir / unit)
    assert world.prop(unit, "ActiveState") == "active"
    os.symlink(world.um.runtime / "bus", away / "bus")
    try:
        wait_for(lambda: not os.path.lexists(world.um.unit_dir / unit), 60)
        assert world.prop(unit, "ActiveState") == "inactive"
    finally:
        (away / "bus").unlink()


def test_a_stop_owed_with_no_manager_lets_hecated_exit_idle_and_the_next_one_makes_it(
    world: World,
) -> None:
    # No manager at all (an empty runtime dir): the stop is owed, kept on disk, and
    # hecated exits idle. The link is then removed by hand, so only what was kept on disk
    # says the unit must stop: the next hecated, with the manager there, stops it.
    unit = "hecate-owedstopd.service"
    d = removed_with_no_manager(world, unit, sleeper_text("owed a stop"))
    listed(d, lambda rows: "hecate-owedstopd" not in {r["name"] for r in rows if r["installed"]})
    assert d.proc is not None and d.proc.wait(60) == 0
    assert f"stopping {unit} failed" in d.log() and "idle for 2 s: exiting" in d.log()
    assert world.prop(unit, "ActiveState") == "active"  # nobody could stop it
    (world.um.unit_dir / unit).unlink()
    world.hecated()
    wait_for(lambda: world.prop(unit, "ActiveState") == "inactive", 60, interval=0.2)


def test_a_stop_the_manager_refuses_keeps_the_link_but_not_hecated_from_exiting_idle(
    world: World,
) -> None:
    # RefuseManualStop=yes: the stop is refused for good, asking every minute would be
    # forever; hecated keeps the link (the unit runs on), says why, and exits idle.
    unit = "hecate-refused.service"
    text = sleeper_text("refuses a stop").replace("[Unit]\n", "[Unit]\nRefuseManualStop=yes\n")
    src = installed_then_stopped(world, unit, text)
    src.unlink()
    try:
        d = world.hecated(args=("--idle-timeout", "1"))
        assert d.proc is not None and d.proc.wait(60) == 0
        assert os.path.lexists(world.um.unit_dir / unit)
        assert world.prop(unit, "ActiveState") == "active"
        assert f"stopping {unit} failed" in d.log() and "idle for 1 s: exiting" in d.log()
    finally:
        world.um.systemctl("kill", unit, check=False)  # a stop is refused: the test's own


def test_a_stop_owed_on_disk_spares_a_unit_the_user_wrote_in_its_place(world: World) -> None:
    # As above, but the dangling link is replaced by a unit file of the user's own, of
    # the same name, that runs: the stop the first hecated kept on disk was for
    # hecated's unit, not this one. The next hecated drops it, says so, and its owed
    # stops file goes (the end state waited for).
    unit = "hecate-handd.service"
    d = removed_with_no_manager(world, unit, sleeper_text("hecated's"))
    assert d.proc is not None and d.proc.wait(60) == 0
    owed = d.data_dir / "run" / "gitops-owed-stops"
    assert owed.read_text() == f"{unit}\n"
    link = world.um.unit_dir / unit
    link.unlink()
    link.write_text(sleeper_text("the user's own"))
    world.made.append(link)
    world.um.systemctl("daemon-reload")
    world.um.systemctl("restart", unit)
    pid = world.prop(unit, "MainPID")
    d = world.hecated()
    wait_for(lambda: not owed.exists(), 60)
    assert world.prop(unit, "ActiveState") == "active" and world.prop(unit, "MainPID") == pid
    assert f"not stopping {unit}" in d.log()


def test_a_stop_a_start_canceled_is_asked_again_soon(world: World) -> None:
    # The file removed, the reconciler's stop runs (its ExecStop held at a FIFO); a start
    # in mode replace (a person's, the wing's on-demand one) cancels it. The file is
    # gone, so the stop is asked again with the backoff (seconds), not at the next full
    # look (300 s): the unit ends stopped and its link removed.
    unit = "hecate-canceld.service"
    gate, held = world.um.base / "cancel.gate", world.um.base / "cancel.held"
    os.mkfifo(gate)
    text = sleeper_text("its stop canceled") + (
        f"ExecStop=/bin/sh -c '[ -e {held} ] || {{ touch {held}; read x < {gate}; }}'\n"
    )  # held once: the stops after it end at once
    d = world.hecated()
    src = world.write(unit, text)
    listed(d, lambda r: r["installed"] and active(r), "hecate-canceld")
    src.unlink()
    wait_for(held.exists, 60)  # the reconciler's stop job runs
    try:
        world.um.systemctl("start", "--no-block", unit)  # replaces it
        wait_for(lambda: f"{unit}: job canceled" in d.log(), 60)
    finally:
        with open(gate, "w") as release:
            release.write("go\n")
    wait_for(lambda: not os.path.lexists(world.um.unit_dir / unit), 60)
    assert world.prop(unit, "ActiveState") == "inactive"


def test_a_file_back_during_its_units_stop_is_started_again(world: World) -> None:
    # The unit's own ExecStop puts its file back: the removal that follows the stop is
    # declined (the file is there), so the unit must run again.
    unit = "hecate-backd.service"
    backup = world.um.base / "hecate-backd.backup"
    text = sleeper_text("comes back") + f"ExecStop=/bin/cp {backup} {world.apps / unit}\n"
    backup.write_text(text)
    d = world.hecated()
    src = world.write(unit, text)
    listed(d, lambda r: r["installed"] and active(r), "hecate-backd")
    pid = world.prop(unit, "MainPID")
    src.unlink()
    wait_for(lambda: world.prop(unit, "MainPID") not in (pid, "0"), 60)
    assert world.prop(unit, "ActiveState") == "active"
    assert os.readlink(world.um.unit_dir / unit) == str(src)


def test_a_file_uninstalled_while_its_pass_starts_others_is_never_started(world: World) -> None:
    # One pass links two new files and starts their units one after the other; the first
    # start is held at a FIFO the test opens. Meanwhile the second plugin is uninstalled
    # through the API (its file removed, its unit stopped). When the pass comes to it,
    # its file is gone: it is not started (a start then would undo the uninstall's stop,
    # or be the start that replaces it), and the next pass unlinks it.
    base = world.um.base
    gate, held, starts = base / "pass.gate", base / "pass.held", base / "target.starts"
    os.mkfifo(gate)
    world.write(
        "hecate-agated.service",
        sleeper_text("holds the pass")
        + f"ExecStartPre=/bin/sh -c 'touch {held}; read x < {gate}'\n",
    )
    world.write(
        "hecate-btargetd.service",
        sleeper_text("uninstalled before its start")
        + f"ExecStartPre=/bin/sh -c 'echo >> {starts}'\n",
    )
    d = world.hecated()
    wait_for(held.exists, 60)  # the pass waits for the first start; the second is to come
    status, _, body = d.request("POST", "/api/plugins/hecate-btargetd/uninstall")
    with open(gate, "w") as release:
        release.write("go\n")
    assert status == 200, body
    assert body["removed"] == [str(world.apps / "hecate-btargetd.service")]
    wait_for(lambda: world.prop("hecate-agated.service", "ActiveState") == "active", 60)
    wait_for(lambda: not os.path.lexists(world.um.unit_dir / "hecate-btargetd.service"), 60)
    assert not starts.exists(), d.log()[-3000:]
    assert world.prop("hecate-btargetd.service", "ActiveState") == "inactive"
    assert "not starting hecate-btargetd.service: its file left" in d.log()


class Script:
    """hecate-reconciler.sh --watch beside hecated, in the manager's environment (its
    systemctl --user reaches the private manager), with a podman for its preflight."""

    def __init__(self, world: World, text: str) -> None:
        self.world = world
        self.path = world.um.base / "hecate-reconciler.sh"
        self.path.write_text(text)
        self.path.chmod(0o755)
        podman = fake_podman(world.um.base / "podman-bin", "4.9.3")
        self.env = {**world.um.env, "PATH": f"{podman}:{world.um.env['PATH']}"}
        self.log_path = world.um.base / "reconciler.log"
        self.proc: subprocess.Popen | None = None

    def once(self) -> str:
        done = subprocess.run(
            [str(self.path), "--once"], env=self.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done
        return done.stdout + done.stderr

    def watch(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self.path), "--watch"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its inotifywait is stopped with it, by group
            )

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def passes(self) -> int:
        """Its reconciliations so far (each ends with one of these two lines)."""
        log = self.log()
        return log.count("No changes detected") + log.count("Reconciliation complete")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def listening(self) -> bool:
        """Its inotifywait has its watches (the kernel's fdinfo lists them): a change made
        before that is never seen by the script (it has no catch-up of its own)."""
        assert self.proc is not None
        for pid in descendants(self.proc.pid):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() != "inotifywait":
                    continue
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                        info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
                        return info.count("inotify wd:") >= 2  # system/ and apps/
        return False

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)


@pytest.fixture
def script(world: World) -> Iterator[Script]:
    text = reconciler_script()
    if text is None:
        pytest.skip(
            "hecate-reconciler.sh not at hand: set HECATE_RECONCILER_SH, or HECATE_GITOPS_REPO "
            "to a clone of github.com/hecate-social/hecate-gitops"
        )
    s = Script(world, text)
    yield s
    s.stop()


def test_the_ecosystems_reconciler_beside_hecated_makes_the_same_links_and_undoes_none(
    world: World, script: Script
) -> None:
    # The script's link, made while hecated was not running: hecated keeps it as is.
    boxd = world.write("hecate-boxd.container", container_text())
    assert "ADD hecate-boxd.container" in script.once()
    boxd_link = world.quadlet_dir / "hecate-boxd.container"
    made = os.lstat(boxd_link).st_ino
    d = world.hecated()
    listed(d, lambda r: r["installed"] and r["desired"]["linked"] and active(r), "hecate-boxd")
    assert os.readlink(boxd_link) == str(boxd) and os.lstat(boxd_link).st_ino == made

    # Both running: the script agrees with what hecated made, and the other way round.
    script.watch()
    wait_for(lambda: script.passes() >= 1, 60)  # its first pass: nothing to do
    assert "No changes detected" in script.log()
    wait_for(script.listening, 60)
    twod = world.write("hecate-twod.container", container_text())
    listed(d, lambda r: r["installed"] and active(r), "hecate-twod")
    twod_link = world.quadlet_dir / "hecate-twod.container"
    linked = os.lstat(twod_link).st_ino
    wait_for(lambda: script.passes() >= 2, 60)  # the script's look at the new file
    wait_for(script.listening, 60)
    twod.unlink()
    listed(d, lambda rows: "hecate-twod" not in {r["name"] for r in rows})  # not installed
    wait_for(lambda: script.passes() >= 3, 60)  # and at the removal
    wait_for(lambda: world.prop("hecate-twod.service", "ActiveState") == "inactive", 60)
    assert not os.path.lexists(twod_link)
    assert os.lstat(boxd_link).st_ino == made and linked != made
    log = script.log()
    assert script.alive(), log
    assert "UPDATE" not in log and "ERROR" not in log and "WARN" not in log, log
    assert d.log().count("linked ") == 1  # hecated's one link: hecate-twod's


def test_the_shipped_service_reconciles_from_its_sandbox(world: World) -> None:
    """hecate.service as install-units writes it (ProtectHome=read-only): its writable
    paths hold the unit directories, so a socket-activated hecated links and starts."""
    um = world.um
    um.install()
    try:
        src = world.write("hecate-shippedd.service", sleeper_text("from the service"))
        assert um.request("GET", "/health")[0] == 200  # the socket starts hecated
        unit = "hecate-shippedd.service"
        wait_for(lambda: world.prop(unit, "ActiveState") == "active", 60, interval=0.2)
        assert os.readlink(um.unit_dir / unit) == str(src)
        body = um.request("GET", "/api/plugins/hecate-shippedd")[2]
        assert body["installed"] is True and body["desired"]["problem"] is None, body
    finally:
        um.systemctl("stop", "hecate-shippedd.service", check=False)
        um.reset()


def test_an_edit_made_while_hecated_was_not_running_is_reloaded_at_its_start(
    world: World,
) -> None:
    unit = "hecate-editd.service"
    src = installed_then_stopped(world, unit, sleeper_text("before"))
    src.write_text(sleeper_text("after"))
    assert world.prop(unit, "NeedDaemonReload") == "yes"
    before = len(world.runs())
    world.hecated()  # as socket activation starts it, later
    wait_for(lambda: world.prop(unit, "Description") == "after", 60, interval=0.2)
    assert len(world.runs()) == before + 1
    assert world.prop(unit, "ActiveState") == "active"  # reloaded, not restarted or stopped


def test_hecated_does_not_exit_idle_while_a_change_waits_for_its_pass(world: World) -> None:
    # Idle for 1 s exits; a change is reconciled after 4 s of quiet. The second file is
    # written as soon as the first is running: hecated stays until its pass is done, then
    # exits by itself.
    world.write("hecate-firstd.service", sleeper_text("there at the start"))
    d = world.hecated(env={"HECATE_GITOPS_SETTLE": "4"}, args=("--idle-timeout", "1"))
    listed(d, lambda r: r["installed"] and active(r), "hecate-firstd")  # the first pass's
    src = world.write("hecate-idled.service", sleeper_text("written before the idle exit"))
    assert d.proc is not None and d.proc.wait(60) == 0
    assert os.readlink(world.um.unit_dir / "hecate-idled.service") == str(src)
    assert world.prop("hecate-idled.service", "ActiveState") == "active"
    assert "idle for 1 s: exiting" in d.log()


def test_a_tree_removed_and_made_again_is_watched_again(world: World) -> None:
    """``rm -rf ~/.hecate/gitops`` and a fresh clone: no event can come from a directory
    nobody watches; hecated looks for the new one and watches it."""
    d = world.hecated()
    src = world.write("hecate-againd.service", sleeper_text("first"))
    listed(d, lambda r: r["installed"] and active(r), "hecate-againd")
    shutil.rmtree(world.gitops)
    listed(d, lambda rows: "hecate-againd" not in {r["name"] for r in rows})  # heard: gone
    assert world.prop("hecate-againd.service", "ActiveState") == "inactive"
    world.write(src.name, sleeper_text("again"))  # the fresh clone
    listed(d, lambda r: r["installed"] and active(r), "hecate-againd")
    assert os.readlink(world.um.unit_dir / src.name) == str(src)

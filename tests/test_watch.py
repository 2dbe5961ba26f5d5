"""The watcher keeps the index in step with real files edited on disk (real inotify)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import Daemon, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from watch_support import (
    BROKEN,
    dead_pid,
    fresh_scan,
    index_of,
    manifest_text,
    watcher_log,
    watching,
    write_in_place,
    write_rename_over,
    write_vim_style,
)

from hecated.adapters import catchup
from hecated.adapters.inotifytree import IN, Cue, file_cue
from hecated.adapters.liveness import Prober
from hecated.adapters.watch import Watcher
from hecated.core.index import Index
from hecated.core.layout import Layout

# -- in-process: a registry and its watcher over a real tree ---------------------------


def make_plugin(root: Path, name: str, version: str = "1.0") -> Path:
    ns = root / name
    (ns / "run").mkdir(parents=True, exist_ok=True)
    (ns / "plugin.toml").write_text(manifest_text(name, version))
    return ns


def version_of(reg, name: str) -> str | None:
    plugin = reg.get(name)
    return (
        None if plugin is None or plugin.entry.manifest is None else plugin.entry.manifest.version
    )


@pytest.mark.parametrize("write", [write_in_place, write_rename_over, write_vim_style])
def test_each_kind_of_edit_is_seen(home: Path, write) -> None:
    root = home / ".hecate"
    with watching(root) as (reg, watcher):
        ns = make_plugin(root, "alpha")
        assert watcher.settle()
        assert version_of(reg, "alpha") == "1.0"
        write(ns / "plugin.toml", manifest_text("alpha", "2.0"))
        assert watcher.settle()
        assert version_of(reg, "alpha") == "2.0"
        assert index_of(reg) == fresh_scan(reg.layout)


def test_vim_dance_never_drops_the_entry(home: Path) -> None:
    root = home / ".hecate"
    with watching(root) as (reg, watcher):
        ns = make_plugin(root, "alpha")
        assert watcher.settle()
        # A refresh may have met plugin.toml half written (make_plugin writes in place):
        # the index reads it again later, and that read must not fall into vim's gap.
        wait_for(lambda: not reg.pending_rereads)
        seen: list = []
        reg.subscribe(seen.append)
        # The file stays missing longer than the debounce, shorter than the grace.
        write_vim_style(ns / "plugin.toml", manifest_text("alpha", "2.0"), gap=0.02)
        assert watcher.settle()
        assert [c.entry is None for c in seen] == [False]  # one change, never a removal
        assert version_of(reg, "alpha") == "2.0"


def test_one_save_is_one_refresh(home: Path) -> None:
    root = home / ".hecate"
    with watching(root) as (reg, watcher), watcher_log(root) as seen:
        ns = make_plugin(root, "alpha")
        assert watcher.settle()
        before = seen.refreshes
        with open(ns / "plugin.toml", "w") as fh:  # several writes, one close
            for line in manifest_text("alpha", "3.0").splitlines(keepends=True):
                fh.write(line)
                fh.flush()
        assert watcher.settle()
        assert seen.refreshes - before == 1
        assert version_of(reg, "alpha") == "3.0"


def test_broken_toml_is_invalid_with_its_line_then_valid_again(home: Path, caplog) -> None:
    root = home / ".hecate"
    caplog.set_level(logging.INFO, "hecated.core.index")
    with watching(root) as (reg, watcher):
        ns = make_plugin(root, "alpha")
        assert watcher.settle()
        # Saved whole (renamed in): no refresh can catch a writer half way, so every
        # record about this file is about this breakage.
        write_rename_over(ns / "plugin.toml", BROKEN)
        assert watcher.settle()
        write_rename_over(ns / "plugin.toml", BROKEN)  # the same breakage saved again
        assert watcher.settle()
        plugin = reg.get("alpha")
        assert plugin is not None and plugin.status == "invalid"
        assert plugin.entry.error.line == 2
        assert plugin.entry.error.path == str(ns / "plugin.toml")
        # Only this tree's records: a watcher of an earlier test may still be winding down.
        mine = str(ns / "plugin.toml")
        invalid_logs = [r for r in caplog.records if mine in r.getMessage()]
        assert len(invalid_logs) == 1, [r.getMessage() for r in invalid_logs]
        assert ":2: invalid TOML" in invalid_logs[0].getMessage()  # logged once, with its line
        # Fixed in place (truncate, write, close): settle() returns after the close's refresh.
        write_in_place(ns / "plugin.toml", manifest_text("alpha", "4.0"))
        assert watcher.settle()
        assert reg.get("alpha").status == "stopped"
        assert version_of(reg, "alpha") == "4.0"


def test_name_mismatch_and_missing_fields_are_invalid(home: Path) -> None:
    root = home / ".hecate"
    with watching(root) as (reg, watcher):
        ns = make_plugin(root, "alpha")
        write_in_place(ns / "plugin.toml", manifest_text("beta"))
        assert watcher.settle()
        assert "namespace 'alpha'" in reg.get("alpha").entry.error.message
        write_in_place(ns / "plugin.toml", 'name = "alpha"\n')
        assert watcher.settle()
        assert "version" in reg.get("alpha").entry.error.message


def test_namespace_created_renamed_deleted(home: Path) -> None:
    root = home / ".hecate"
    with watching(root) as (reg, watcher):
        make_plugin(root, "alpha")
        assert watcher.settle()
        assert set(index_of(reg)) == {"alpha"}
        os.rename(root / "alpha", root / "beta")
        write_in_place(root / "beta" / "plugin.toml", manifest_text("beta", "5.0"))
        assert watcher.settle()
        assert set(index_of(reg)) == {"beta"}
        assert version_of(reg, "beta") == "5.0"
        # The renamed directory's run/ is watched under its new name.
        (root / "beta" / "run" / "daemon.pid").write_text(str(os.getpid()))
        assert watcher.settle()
        assert reg.get("beta").live.pid == os.getpid()
        assert reg.get("beta").status == "starting"  # a live pid, no socket answering yet
        shutil.rmtree(root / "beta")
        assert watcher.settle()
        assert index_of(reg) == {}


def test_namespace_moved_out_and_back(home: Path) -> None:
    root = home / ".hecate"
    with watching(root) as (reg, watcher):
        make_plugin(root, "alpha")
        assert watcher.settle()
        os.rename(root / "alpha", home / "parked")
        assert watcher.settle()
        assert index_of(reg) == {}
        # Edits in the parked copy are no business of the registry's...
        write_in_place(home / "parked" / "plugin.toml", manifest_text("alpha", "9.9"))
        assert watcher.settle()
        assert index_of(reg) == {}
        os.rename(home / "parked", root / "alpha")
        assert watcher.settle()
        assert version_of(reg, "alpha") == "9.9"


def test_root_created_after_start_and_recreated(home: Path) -> None:
    root = home / ".hecate"
    with watching(root, create=False) as (reg, watcher):
        assert not root.exists()
        make_plugin(root, "alpha")
        assert watcher.settle()
        assert set(index_of(reg)) == {"alpha"}
        shutil.rmtree(root)
        assert watcher.settle()
        assert index_of(reg) == {}
        make_plugin(root, "beta")
        assert watcher.settle()
        assert set(index_of(reg)) == {"beta"}
        write_rename_over(root / "beta" / "plugin.toml", manifest_text("beta", "2.0"))
        assert watcher.settle()
        assert version_of(reg, "beta") == "2.0"


def test_sqlite_and_reckon_trees_are_not_watched(home: Path) -> None:
    root = home / ".hecate"
    with watching(root) as (_reg, watcher), watcher_log(root) as seen:
        ns = make_plugin(root, "alpha")
        for sub in ("sqlite", "reckon-db", "sockets", "connectors"):
            (ns / sub / "deep" / "er").mkdir(parents=True)
        assert watcher.settle()
        # The parent, the root, alpha, alpha/run and alpha/sockets (for api.sock being
        # bound or removed): nothing below sqlite/ & co, nor below sockets/.
        assert watcher.watch_count == 5
        before = seen.refreshes
        (ns / "sqlite" / "deep" / "db.sqlite").write_bytes(b"x" * 100)
        assert watcher.settle()
        assert seen.refreshes == before


def test_pid_file_makes_starting_and_exit_makes_stopped(home: Path) -> None:
    # A live pid with no socket answering is "starting" (only the socket says running,
    # tests/test_liveness.py); what is tested here is that the watch and the pidfd see it.
    root = home / ".hecate"
    with watching(root) as (reg, watcher):
        ns = make_plugin(root, "alpha")
        assert watcher.settle()
        assert reg.get("alpha").status == "stopped"
        proc = subprocess.Popen(
            [
                "sh",
                "-c",
                f"echo $$ > {ns}/run/daemon.pid; echo serving > {ns}/run/daemon.state; "
                "exec sleep 60",
            ]
        )
        try:
            wait_for(lambda: reg.get("alpha").live.pid == proc.pid)
            assert reg.get("alpha").status == "starting"
            wait_for(lambda: reg.get("alpha").live.state == "serving")
            seq = reg.seq
            proc.kill()
            proc.wait()
            # No file changes: only the process's exit tells.
            wait_for(lambda: reg.get("alpha").status == "stopped")
            assert reg.seq > seq
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_stale_pid_file_reads_stopped(home: Path) -> None:
    root = home / ".hecate"
    ns = make_plugin(root, "alpha")
    (ns / "run" / "daemon.pid").write_text(f"{dead_pid()}\n")
    with watching(root) as (reg, watcher):
        assert watcher.settle()
        assert reg.get("alpha").status == "stopped"


def test_overflow_rebuilds_and_rescans(home: Path) -> None:
    """Events lost by the kernel are made up for by a rescan: simulated with a queue overflow."""
    root = home / ".hecate"
    with watching(root) as (reg, watcher), watcher_log(root) as seen:
        make_plugin(root, "alpha")
        assert watcher.settle()
        rescans = seen.rescans
        # Bypass inotify: change the tree while the watch on alpha is gone, then overflow.
        emitter = watcher.emitter
        with emitter._lock:
            emitter._unwatch_namespace("alpha")
        write_in_place(root / "alpha" / "plugin.toml", manifest_text("alpha", "7.0"))
        assert watcher.settle()
        assert version_of(reg, "alpha") == "1.0"  # missed, as designed for this test
        import struct

        emitter._handle(struct.pack("iIII", -1, IN.IN_Q_OVERFLOW, 0, 0))
        assert watcher.settle()
        assert seen.rescans == rescans + 1
        assert version_of(reg, "alpha") == "7.0"
        assert watcher.watch_count == 4


def test_settle_is_a_barrier_not_a_pause(home: Path) -> None:
    """settle() returns only once the events made before it are read and refreshed.

    The emitter is held (its lock taken) so it cannot handle what the kernel
    queued: a settle() that merely waited for a quiet moment would return with
    the old version; the barrier cannot return until the edit is in the index.
    """
    root = home / ".hecate"
    with watching(root) as (reg, watcher):
        ns = make_plugin(root, "alpha")
        assert watcher.settle()
        emitter = watcher.emitter
        outcome: list = []
        with emitter._lock:
            write_rename_over(ns / "plugin.toml", manifest_text("alpha", "2.0"))
            waiter = threading.Thread(
                target=lambda: outcome.append((watcher.settle(), version_of(reg, "alpha")))
            )
            waiter.start()
            # Long enough for a sleep-based settle() to have returned; the barrier is held.
            waiter.join(0.3)
            assert outcome == []
        waiter.join(30)
        assert outcome == [(True, "2.0")]


def test_settle_after_stop_says_no(home: Path) -> None:
    root = home / ".hecate"
    with watching(root) as (_reg, watcher):
        assert watcher.settle()
    assert watcher.settle(timeout=1) is False


def test_edits_between_the_read_and_the_watches_are_read_and_only_they(home: Path) -> None:
    """The watches come after the index read the tree (the daemon's start scan, then the
    first answer): what changed in between is read once they are in place, and nothing
    else is read again."""
    root = home / ".hecate"
    layout = Layout.at(root)
    layout.ensure_layout()
    names = ("alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta")
    for name in names:
        make_plugin(root, name)
    # Older than the read by more than the catch-up's margin for the coarse file clock:
    # waiting on the clock here ages the tree, it synchronises with nothing.
    made = time.clock_gettime(time.CLOCK_BOOTTIME)
    wait_for(lambda: time.clock_gettime(time.CLOCK_BOOTTIME) > made + 2 * catchup.MARGIN)
    reg = Index(layout)
    Prober(reg).hold()
    read_after = time.clock_gettime(time.CLOCK_BOOTTIME)
    reg.scan()
    # Between the read and the watches: every kind of change a name can have.
    write_in_place(root / "alpha" / "plugin.toml", manifest_text("alpha", "2.0"))
    write_rename_over(root / "beta" / "plugin.toml", manifest_text("beta", "2.0"))
    (root / "gamma" / "plugin.toml").unlink()
    shutil.rmtree(root / "delta")
    (root / "eps" / "run" / "daemon.pid").write_text(f"{os.getpid()}\n")
    make_plugin(root, "iota")
    os.rename(root / "zeta", root / "kappa")
    watcher = Watcher(reg, read_after=read_after)
    try:
        with watcher_log(root) as seen:
            watcher.start()
            assert watcher.settle()
        assert index_of(reg) == fresh_scan(layout)
        assert version_of(reg, "alpha") == version_of(reg, "beta") == "2.0"
        assert seen.rescans == 0  # not the whole tree read again...
        changed = {"alpha", "beta", "gamma", "delta", "eps", "iota", "kappa", "zeta"}
        assert set(seen.refreshed) == changed  # ...only these: not eta, nor theta
    finally:
        watcher.stop()
        reg.close()


@pytest.mark.parametrize(
    ("mask", "cue"),
    [
        (IN.IN_CREATE, Cue.WRITING),
        (IN.IN_MODIFY, Cue.WRITING),
        (IN.IN_ATTRIB, Cue.WRITING),
        (IN.IN_CLOSE_WRITE, Cue.COMPLETE),
        (IN.IN_MOVED_TO, Cue.COMPLETE),
        (IN.IN_DELETE, Cue.GONE),
        (IN.IN_MOVED_FROM, Cue.GONE),
    ],
)
def test_each_file_event_has_one_meaning(mask: int, cue) -> None:
    assert file_cue(mask) is cue


# -- the invariant: after any sequence of file operations, index == fresh scan ---------

NAMES = ("alpha", "beta")
OPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "mkdir",
                "in_place",
                "rename_over",
                "vim",
                "broken",
                "rm_manifest",
                "rename_ns",
                "rm_ns",
                "pid_live",
                "pid_dead",
                "rm_run",
                "state",
                "settle",
                "settle",
            ]
        ),
        st.sampled_from(NAMES),
        st.sampled_from(NAMES),
        st.integers(0, 9),
    ),
    max_size=30,
)


def apply(root: Path, op: str, name: str, other: str, n: int) -> None:
    ns, path = root / name, root / name / "plugin.toml"
    try:
        if op in ("in_place", "rename_over", "broken"):
            ns.mkdir(exist_ok=True)
        elif op in ("pid_live", "pid_dead", "state"):
            (ns / "run").mkdir(parents=True, exist_ok=True)
        if op == "mkdir":
            (ns / "run").mkdir(parents=True, exist_ok=True)
        elif op == "in_place":
            write_in_place(path, manifest_text(name, f"{n}.0"))
        elif op == "rename_over":
            write_rename_over(path, manifest_text(name, f"{n}.1"))
        elif op == "vim":
            write_vim_style(path, manifest_text(name, f"{n}.2"))
        elif op == "broken":
            write_in_place(path, BROKEN)
        elif op == "rm_manifest":
            path.unlink()
        elif op == "rename_ns":
            if not (root / other).exists():
                os.rename(ns, root / other)
        elif op == "rm_ns":
            shutil.rmtree(ns)
        elif op == "pid_live":
            write_rename_over(ns / "run" / "daemon.pid", f"{os.getpid()}\n")
        elif op == "pid_dead":
            write_in_place(ns / "run" / "daemon.pid", f"{dead_pid()}\n")
        elif op == "rm_run":
            shutil.rmtree(ns / "run")
        elif op == "state":
            write_in_place(ns / "run" / "daemon.state", f"state-{n}\n")
    except (FileNotFoundError, NotADirectoryError):
        pass  # the operation made no sense in this state; so be it, as for a person


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=OPS)
def test_index_equals_fresh_scan_after_any_operations(home: Path, ops) -> None:
    root = home / f".hecate-{os.urandom(4).hex()}"
    try:
        with watching(root) as (reg, watcher):
            for op in ops:
                if op[0] == "settle":  # let the watcher catch up, so later edits are
                    assert watcher.settle()  # seen on their own, not folded into one read
                else:
                    apply(root, *op)
            assert watcher.settle()
            assert index_of(reg) == fresh_scan(reg.layout)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- through the daemon: hand edits visible over the real socket -----------------------


def plugins(daemon: Daemon) -> dict:
    status, _headers, body = daemon.request("GET", "/api/plugins")
    assert status == 200
    return {p["name"]: p for p in body}


@pytest.mark.slow
def test_hand_edits_visible_through_the_api(home: Path) -> None:
    daemon = Daemon(home).start()
    try:
        root = daemon.root
        wait_for(lambda: "watching" in daemon.log())
        ns = make_plugin(root, "alpha")
        wait_for(lambda: plugins(daemon).get("alpha", {}).get("version") == "1.0")
        write_rename_over(ns / "plugin.toml", manifest_text("alpha", "2.0"))
        wait_for(lambda: plugins(daemon)["alpha"]["version"] == "2.0")
        write_vim_style(ns / "plugin.toml", manifest_text("alpha", "3.0"))
        wait_for(lambda: plugins(daemon)["alpha"]["version"] == "3.0")
        write_in_place(ns / "plugin.toml", BROKEN)
        wait_for(lambda: plugins(daemon)["alpha"]["status"] == "invalid")
        status, _, detail = daemon.request("GET", "/api/plugins/alpha")
        assert status == 200
        assert detail["error"]["line"] == 2
        assert detail["error"]["file"] == str(ns / "plugin.toml")
        write_in_place(ns / "plugin.toml", manifest_text("alpha", "4.0"))
        wait_for(lambda: plugins(daemon)["alpha"]["status"] == "stopped")
        # A plugin process: pid file written -> starting (no socket); killed -> stopped.
        proc = subprocess.Popen(["sh", "-c", f"echo $$ > {ns}/run/daemon.pid; exec sleep 60"])
        try:
            wait_for(lambda: plugins(daemon)["alpha"]["status"] == "starting")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            wait_for(lambda: plugins(daemon)["alpha"]["status"] == "stopped")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        os.rename(ns, root / "beta")
        write_in_place(root / "beta" / "plugin.toml", manifest_text("beta"))
        wait_for(lambda: set(plugins(daemon)) == {"beta"})
        shutil.rmtree(root / "beta")
        wait_for(lambda: plugins(daemon) == {})
        # The API's writes take the same path: register, then the file says so.
        assert daemon.register("gamma", "1.0")[0] == 201
        assert "gamma" in plugins(daemon)
        assert Layout.at(root).manifest_path("gamma").exists()
    finally:
        daemon.stop()


@pytest.mark.slow
def test_root_removed_and_recreated_under_a_running_daemon(home: Path) -> None:
    sock = home / "api.sock"
    daemon = Daemon(home, env={"HECATE_SOCKET_PATH": str(sock)}).start()
    try:
        wait_for(lambda: "watching" in daemon.log())
        make_plugin(daemon.root, "alpha")
        wait_for(lambda: "alpha" in plugins(daemon))
        shutil.rmtree(daemon.root)
        wait_for(lambda: plugins(daemon) == {})
        make_plugin(daemon.root, "beta")
        wait_for(lambda: set(plugins(daemon)) == {"beta"})
    finally:
        daemon.stop()


def test_watcher_on_missing_parent_waits(home: Path) -> None:
    """A root whose parent does not exist yet: the watcher retries instead of failing."""
    root = home / "later" / ".hecate"
    layout = Layout.at(root)
    reg = Index(layout)
    watcher = Watcher(reg, timeout=0.1).start()
    try:
        make_plugin(root, "alpha")
        wait_for(lambda: reg.get("alpha") is not None)
    finally:
        watcher.stop()
        reg.close()


@pytest.mark.slow
def test_ten_thousand_plugins(memory_home: Path) -> None:
    """At 10,000 plugins: two watches each, edits seen, a burst of them settles to the truth.
    (On tmpfs when there is room: the watches and the index are the subject, not the disk.)"""
    root = memory_home / ".hecate"
    count = 10_000
    for i in range(count):
        ns = root / f"p{i}"
        (ns / "run").mkdir(parents=True)
        (ns / "sqlite" / "data").mkdir(parents=True)
        (ns / "plugin.toml").write_text(manifest_text(f"p{i}", "1"))
    with watching(root) as (reg, watcher):
        assert watcher.settle(timeout=120)
        assert len(reg) == count
        assert watcher.watch_count == 2 * count + 2
        write_rename_over(
            root / f"p{count - 1}" / "plugin.toml", manifest_text(f"p{count - 1}", "2")
        )
        assert watcher.settle(timeout=60)
        assert version_of(reg, f"p{count - 1}") == "2"
        for i in range(0, count, 2):  # a burst: half the tree rewritten at once
            write_in_place(root / f"p{i}" / "plugin.toml", manifest_text(f"p{i}", "3"))
        assert watcher.settle(timeout=120)
        assert index_of(reg) == fresh_scan(reg.layout)


def test_a_writer_that_never_closes_cannot_hold_off_the_refresh(home: Path) -> None:
    """A plugin appending to run/daemon.state without ever closing it: each write is an
    IN_MODIFY with no IN_CLOSE_WRITE after it. The refresh may wait for a close, but
    not for ever: the state shows while the writer is still writing."""
    root = home / ".hecate"
    with watching(root) as (reg, watcher):
        ns = make_plugin(root, "alpha")
        assert watcher.settle()
        stop = threading.Event()

        def writer() -> None:
            with open(ns / "run" / "daemon.state", "w") as fh:
                n = 0
                while not stop.wait(0.05):
                    n += 1
                    fh.seek(0)
                    fh.write(f"busy-{n:06d}\n")
                    fh.flush()

        t = threading.Thread(target=writer)
        t.start()
        try:
            wait_for(lambda: (reg.get("alpha").live.state or "").startswith("busy-"))
            assert t.is_alive()  # seen while the writer still writes, not after its close
        finally:
            stop.set()
            t.join()

"""core/index.py over core/store.py: files are the truth, the index follows them through
refresh(name); liveness published into it by adapters/liveness."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for

from hecated.adapters.liveness import Prober
from hecated.core import files
from hecated.core.errors import (
    InvalidFieldError,
    InvalidNameError,
    NotFoundError,
    PluginRunningError,
    StillRegisteredError,
    UnsafePathError,
)
from hecated.core.index import Index
from hecated.core.layout import SUBDIRS, Layout
from hecated.core.runstate import pid_alive
from hecated.protocol import PluginStatus


@pytest.fixture
def registry(home: Path) -> Iterator[Index]:
    layout = Layout.at(home / ".hecate")
    layout.ensure_layout()
    reg = Index(layout)
    prober = Prober(reg)  # as the daemon composes them
    yield reg
    prober.close()  # its process watcher thread, if a plugin was seen running
    reg.close()


def test_register_creates_namespace_and_manifest(registry: Index) -> None:
    entry, created = registry.register("hecate-traderd", "0.1.0", "Trading daemon")
    assert created
    ns = registry.layout.namespace("hecate-traderd")
    assert sorted(p.name for p in ns.iterdir()) == sorted([*SUBDIRS, "plugin.toml"])
    assert entry.manifest is not None and entry.manifest.version == "0.1.0"
    assert registry.get("hecate-traderd").status == PluginStatus.STOPPED


def test_reregister_updates_and_keeps_registered_at(registry: Index) -> None:
    first, _ = registry.register("p", "1", "one")
    second, created = registry.register("p", "2", "two")
    assert not created
    assert second.manifest.version == "2" and second.manifest.description == "two"
    assert second.manifest.registered_at == first.manifest.registered_at


def test_reregister_keeps_keys_a_person_added(registry: Index) -> None:
    registry.register("p", "1", "")
    path = registry.layout.manifest_path("p")
    path.write_text(path.read_text() + 'owner = "ops team"\n')
    registry.register("p", "2", "")
    assert 'owner = "ops team"' in path.read_text()


def test_deregister_keeps_data(registry: Index) -> None:
    registry.register("p", "1", "")
    data = registry.layout.namespace("p") / "sqlite" / "db.sqlite"
    data.write_text("precious")
    registry.deregister("p")
    assert registry.get("p") is None
    assert data.read_text() == "precious"
    assert not registry.layout.manifest_path("p").exists()


def test_deregister_unknown_is_not_found(registry: Index) -> None:
    with pytest.raises(NotFoundError):
        registry.deregister("ghost")


def test_purge_refuses_registered_then_removes(registry: Index) -> None:
    registry.register("p", "1", "")
    with pytest.raises(StillRegisteredError):
        registry.purge("p")
    registry.deregister("p")
    registry.purge("p")
    assert not registry.layout.namespace("p").exists()
    with pytest.raises(NotFoundError):
        registry.purge("p")


def test_purge_does_not_follow_symlinks_inside(registry: Index, home: Path) -> None:
    outside = home / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    registry.register("p", "1", "")
    (registry.layout.namespace("p") / "sqlite" / "link").symlink_to(outside)
    registry.deregister("p")
    registry.purge("p")
    assert (outside / "keep.txt").read_text() == "keep"


def test_purge_refuses_symlinked_namespace(registry: Index, home: Path) -> None:
    outside = home / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (registry.layout.root / "evil").symlink_to(outside)
    with pytest.raises(UnsafePathError):
        registry.purge("evil")
    assert (outside / "keep.txt").exists()


def test_purge_refuses_running_plugin(registry: Index) -> None:
    registry.register("p", "1", "")
    (registry.layout.namespace("p") / "run" / "daemon.pid").write_text(f"{os.getpid()}\n")
    registry.deregister("p")
    with pytest.raises(PluginRunningError):
        registry.purge("p")


def test_bad_input_creates_nothing(registry: Index) -> None:
    before = sorted(os.listdir(registry.layout.root))
    for name in ["../escape", "UPPER", "hecate-daemon", ""]:
        with pytest.raises(InvalidNameError):
            registry.register(name, "1", "")
    with pytest.raises(InvalidFieldError):
        registry.register("p", 1, "")
    with pytest.raises(InvalidFieldError):
        registry.register("p", "1", "x" * 5000)
    assert sorted(os.listdir(registry.layout.root)) == before


def test_scan_finds_hand_made_entries_and_reports_invalid(registry: Index) -> None:
    root = registry.layout.root
    (root / "good").mkdir()
    (root / "good" / "plugin.toml").write_text('name = "good"\nversion = "1"\n')
    (root / "broken").mkdir()
    (root / "broken" / "plugin.toml").write_text('name = "broken"\nversion = \n')
    (root / "no-manifest").mkdir()
    (root / "Not_A_Name").mkdir()
    assert registry.scan() == 2
    assert registry.get("good").status == PluginStatus.STOPPED
    broken = registry.get("broken")
    assert broken.status == PluginStatus.INVALID
    assert broken.entry.error.line == 2
    assert registry.get("no-manifest") is None


def test_refresh_follows_the_disk(registry: Index) -> None:
    registry.register("p", "1", "")
    path = registry.layout.manifest_path("p")
    path.write_text(path.read_text().replace('version = "1"', 'version = "9"'))
    assert registry.get("p").entry.manifest.version == "1"
    change = registry.refresh("p")
    assert change is not None and change.seq == registry.seq
    assert registry.get("p").entry.manifest.version == "9"
    assert registry.refresh("p") is None  # nothing changed: no new sequence number
    path.unlink()
    registry.refresh("p")
    assert registry.get("p") is None


def test_scan_cleans_temp_files_of_a_crashed_writer(registry: Index) -> None:
    registry.register("p", "1", "")
    ns = registry.layout.namespace("p")
    (ns / ".plugin.toml.999999.abcd.tmp").write_text("half")
    # A crashed predecessor with our pid (PID 1 in a container) is still a crash.
    (ns / f".plugin.toml.{os.getpid()}.abcd.tmp").write_text("same pid, earlier run")
    (ns / f".plugin.toml.{files.OWNER}.abcd.tmp").write_text("ours, in flight")
    registry.scan(clean_temps=True)
    assert not (ns / ".plugin.toml.999999.abcd.tmp").exists()
    assert not (ns / f".plugin.toml.{os.getpid()}.abcd.tmp").exists()
    assert (ns / f".plugin.toml.{files.OWNER}.abcd.tmp").exists()


def test_a_live_pid_is_starting_until_its_socket_answers_and_a_stale_pid_is_stopped(
    registry: Index,
) -> None:
    # Only the plugin's socket says running (tests/test_liveness.py); its pid alone,
    # with no socket looked at yet, is a process on its way up.
    registry.register("p", "1", "")
    run = registry.layout.namespace("p") / "run"
    proc = subprocess.Popen(["sleep", "30"])
    try:
        (run / "daemon.pid").write_text(f"{proc.pid}\n")
        (run / "daemon.state").write_text("syncing\n")
        registry.refresh("p")  # what the watcher does on run/ events
        plugin = registry.get("p")
        assert (plugin.status, plugin.live.pid, plugin.live.state) == (
            PluginStatus.STARTING,
            proc.pid,
            "syncing",
        )
    finally:
        proc.kill()
        proc.wait()
    # No file changed: the registry learns of the exit from the process itself (a pidfd).
    wait_for(lambda: registry.get("p").status == PluginStatus.STOPPED)


def test_zombie_is_not_alive() -> None:
    proc = subprocess.Popen(["true"])
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    assert not pid_alive(proc.pid)
    proc.wait()
    assert not pid_alive(proc.pid)
    assert pid_alive(os.getpid())


def test_concurrent_registrations_of_one_name_create_once(registry: Index) -> None:
    results: list[bool] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        _, created = registry.register("same", str(i), "")
        with lock:
            results.append(created)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert len(registry) == 1


def test_another_tools_temp_file_is_never_taken_for_a_crashed_writer(tmp_path: Path) -> None:
    """NamedTemporaryFile(prefix='.plugin.toml.', suffix='.tmp') in the namespace: not ours."""
    layout = Layout.at(tmp_path / ".hecate")
    layout.ensure_layout()
    registry = Index(layout)
    registry.register("hecate-traderd", "1.0", "")
    ns = layout.namespace("hecate-traderd")
    theirs = ns / ".plugin.toml.k3j_h5ab.tmp"
    theirs.write_text("another tool's atomic write, about to be renamed")
    crashed = ns / ".plugin.toml.999999.abcd.tmp"
    crashed.write_text("half")
    registry.scan(clean_temps=True)
    assert theirs.exists()
    assert not crashed.exists()


def test_purge_asks_the_socket_itself_and_refuses_a_listener(tmp_path: Path) -> None:
    """A plugin with no pid file whose socket accepts is running, whatever the last probe
    said; once nothing accepts (a stale socket file), the data can go."""
    import socket

    layout = Layout.at(tmp_path / ".hecate")
    layout.ensure_layout()
    registry = Index(layout)  # no prober: only the purge-time check can tell
    registry.register("hecate-traderd", "1.0", "")
    registry.deregister("hecate-traderd")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(layout.namespace("hecate-traderd") / "sockets" / "api.sock"))
    listener.listen()
    try:
        with pytest.raises(PluginRunningError):
            registry.purge("hecate-traderd")
        assert (layout.namespace("hecate-traderd") / "sqlite").is_dir()
    finally:
        listener.close()
    registry.purge("hecate-traderd")  # the socket file is stale now: refused, so not running
    assert not layout.namespace("hecate-traderd").exists()


def test_rewriting_the_state_file_or_rescanning_asks_for_no_probe(home: Path) -> None:
    """A socket is looked at again when the entry changes or a process comes or goes;
    not for a state line rewritten in a loop, nor for each name of a rescan."""
    asked: list[str] = []

    class Counting(Prober):
        def request(self, name: str, manifest: bool = False) -> None:
            asked.append(name)
            super().request(name, manifest)

    layout = Layout.at(home / ".hecate")
    layout.ensure_layout()
    reg = Index(layout)
    # Held: the asks are counted and queued, no probe runs (a probe running when a name
    # is asked again re-asks once itself, which is not what is counted here).
    prober = Counting(reg)
    prober.hold()
    try:
        reg.register("p", "1", "")
        assert asked == ["p"]  # a new entry
        run = layout.namespace("p") / "run"
        proc = subprocess.Popen(["sleep", "30"])
        try:
            (run / "daemon.pid").write_text(f"{proc.pid}\n")
            reg.refresh("p")
            assert asked == ["p", "p"]  # a process came
            for i in range(50):
                (run / "daemon.state").write_text(f"busy-{i}\n")
                reg.refresh("p")
            reg.scan()
            assert asked == ["p", "p"]
            assert reg.get("p").live.state == "busy-49"
        finally:
            proc.kill()
            proc.wait()
        wait_for(lambda: reg.get("p").status == PluginStatus.STOPPED)  # the pidfd: it went
        assert asked[2:] == ["p"]  # and that is a reason to look again
    finally:
        prober.close()
        reg.close()


def test_a_purge_is_bounded_and_a_second_purge_goes_on(
    registry: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A purge removes at most MAX_ENTRIES entries and MAX_DEPTH levels; past them it
    stops with a storage error that says so, the name's lock is free, and purging again
    goes on where it stopped."""
    from hecated.core import purge
    from hecated.core.errors import StorageError

    registry.register("big", "1", "")
    registry.deregister("big")
    data = registry.layout.namespace("big") / "sqlite"
    for i in range(30):
        (data / f"f{i}").write_bytes(b"x")
    deep = data.joinpath(*["d"] * (purge.MAX_DEPTH + 5))
    deep.mkdir(parents=True)
    monkeypatch.setattr(purge, "MAX_ENTRIES", 10)
    with pytest.raises(StorageError, match="purge again"):
        registry.purge("big")
    assert registry.layout.namespace("big").exists()
    registry.register("other", "1", "")  # nothing is held
    monkeypatch.setattr(purge, "MAX_ENTRIES", 1_000_000)
    with pytest.raises(StorageError, match="nested more than"):
        registry.purge("big")
    os.rename(data / "d", registry.layout.root / ".deep-tree")  # moved out of the way
    registry.purge("big")
    assert not registry.layout.namespace("big").exists()

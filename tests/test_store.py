"""core/store.py under the index: the root handle, publishing what a registration wrote,
and the half-written rule (issue 13): a file being written is never condemned."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for

from hecated.core.errors import PluginRunningError
from hecated.core.index import Index
from hecated.core.layout import Layout
from hecated.core.status import SocketFinding, SocketKind
from hecated.core.store import Root, Store
from hecated.protocol import PluginStatus

GOOD = 'name = "p"\nversion = "2.0"\n'


def _index(home: Path, settle_ns: int | None = None) -> Index:
    layout = Layout.at(home / ".hecate")
    layout.ensure_layout()
    store = Store(layout) if settle_ns is None else Store(layout, settle_ns=settle_ns)
    return Index(layout, store=store)


@pytest.fixture
def index(home: Path) -> Iterator[Index]:
    # A window far longer than any pause of a loaded machine: "within the window" is certain.
    idx = _index(home, settle_ns=3600 * 10**9)
    yield idx
    idx.close()


# -- the half-written rule ---------------------------------------------------------------


def test_a_truncated_file_held_open_is_not_condemned(index: Index) -> None:
    index.register("p", "1.0", "")
    path = index.layout.manifest_path("p")
    seq = index.seq
    with open(path, "w") as writer:  # an in-place writer, between its truncate and its write
        assert path.stat().st_size == 0
        assert index.refresh("p") is None
        assert index.scan() == 1  # scans, SIGHUP and rescans take the same read
        plugin = index.get("p")
        assert plugin is not None and plugin.status != PluginStatus.INVALID
        assert plugin.entry.manifest.version == "1.0"
        assert index.seq == seq
        assert index.pending_rereads == {"p"}
        writer.write(GOOD)
    # The writer closed: the complete file is read and published at once.
    change = index.refresh("p")
    assert change is not None and change.seq == seq + 1
    assert index.get("p").entry.manifest.version == "2.0"


def test_a_half_written_new_file_is_not_published(index: Index) -> None:
    ns = index.layout.namespace("p")
    (ns / "run").mkdir(parents=True)
    with open(ns / "plugin.toml", "w") as writer:
        writer.write('name = "p"\nvers')
        writer.flush()
        assert index.refresh("p") is None
        assert index.get("p") is None and index.seq == 0
        writer.write('ion = "1"\n')
    assert index.refresh("p") is not None
    assert index.get("p").status == PluginStatus.STOPPED


def test_a_closed_broken_file_is_invalid_at_once(index: Index, caplog) -> None:
    index.register("p", "1.0", "")
    path = index.layout.manifest_path("p")
    path.write_text('name = "p"\nversion = \n')  # written and closed: this is the file
    change = index.refresh("p")
    assert change is not None and index.get("p").status == PluginStatus.INVALID
    assert index.get("p").entry.error.line == 2
    assert index.pending_rereads == set()


def test_a_file_broken_past_the_window_is_published_by_the_reread(home: Path) -> None:
    index = _index(home, settle_ns=300_000_000)
    try:
        index.register("p", "1.0", "")
        path = index.layout.manifest_path("p")
        with open(path, "w") as writer:  # held open, never completed
            writer.write('name = "p"\nversion = \n')
            writer.flush()
            assert index.refresh("p") is None
            assert index.get("p").status == PluginStatus.STOPPED
            # Nobody refreshes again: the index's own re-read publishes it once the
            # window is over, writer or no writer.
            wait_for(lambda: index.get("p").status == PluginStatus.INVALID)
            assert index.get("p").entry.error.line == 2
    finally:
        index.close()


# -- a registration publishes what it wrote ----------------------------------------------


def test_a_registration_is_published_without_reading_it_back(index: Index) -> None:
    seen: list = []
    index.subscribe(seen.append)
    entry, created = index.register("p", "1.0", "first")
    assert created and index.store.parses == 0  # no file before; nothing read back
    assert [c.entry for c in seen] == [entry]
    # The watcher's echo of that write: same identity, same bytes, no parse, no change.
    assert index.refresh("p") is None
    assert index.store.parses == 0
    entry, created = index.register("p", "1.1", "again")  # the merge base is our own write
    assert not created and index.store.parses == 0
    assert index.refresh("p") is None and index.store.parses == 0
    assert index.get("p").entry == entry
    assert index.get("p").entry.manifest.registered_at is not None


def test_an_edit_after_a_registration_is_parsed(index: Index) -> None:
    index.register("p", "1", "")
    path = index.layout.manifest_path("p")
    # The same size, in place, at once: the identity may not tell (coarse timestamps),
    # the bytes do.
    path.write_text(path.read_text().replace('version = "1"', 'version = "9"'))
    assert index.refresh("p") is not None
    assert index.get("p").entry.manifest.version == "9"
    assert index.store.parses == 1
    entry, _ = index.register("p", "3", "")  # the merge base is the edit, parsed again
    assert entry.manifest.version == "3" and index.store.parses == 2


# -- the root handle ---------------------------------------------------------------------


def test_a_missing_root_reads_as_empty(home: Path) -> None:
    layout = Layout.at(home / "nowhere" / ".hecate")
    store = Store(layout)
    with store.root() as root:
        assert not root.present and root.names() == []
        assert store.read("p", root).entry is None
    index = Index(layout, store=store)
    assert index.scan(clean_temps=True) == 0
    assert index.refresh("p") is None


def test_a_root_is_opened_once_and_closed(home: Path) -> None:
    layout = Layout.at(home / ".hecate")
    layout.ensure_layout()
    with Root(layout) as root:
        fd = root.fd
        assert fd is not None and root.names() == []
    assert root.fd is None
    with pytest.raises(OSError):
        os.fstat(fd)


# -- liveness published into the index -----------------------------------------------------


def test_set_finding_changes_seq_only_on_a_real_change(index: Index) -> None:
    index.register("p", "1", "")
    seq = index.seq
    absent, answering = SocketFinding(SocketKind.ABSENT), SocketFinding(SocketKind.ANSWERING)
    assert index.set_finding("p", absent) is None  # stopped before, stopped now
    # Not answering, not in the index: not listed, and the finding is not kept.
    assert index.set_finding("ghost", SocketFinding(SocketKind.REFUSING, "x")) is not None
    assert index.set_finding("ghost", absent) is not None and index.get("ghost") is None
    seq = index.seq
    change = index.set_finding("p", answering)
    assert (
        change is not None and change.seq == seq + 1 and change.live.status == PluginStatus.RUNNING
    )
    assert index.get("p").status == PluginStatus.RUNNING and index.get("p").live.pid is None
    assert index.set_finding("p", answering) is None
    assert index.seq == seq + 1


def test_the_status_of_a_run_dir_needs_no_adapter(index: Index) -> None:
    """The core reads the run dir on every refresh: no prober is needed for a live pid
    to show as starting (its socket not looked at), nor for a dead one as stopped."""
    ns = index.layout.namespace("p")
    (ns / "run").mkdir(parents=True)
    (ns / "run" / "daemon.pid").write_text(f"{os.getpid()}\n")
    (ns / "plugin.toml").write_text('name = "p"\nversion = "1"\n')
    seen: list = []
    index.subscribe(seen.append)
    index.refresh("p")
    # Its live pid, with its socket not (yet) answering, is "starting" from the first
    # change on: never "stopped" first.
    assert [(c.name, c.live.status, c.live.pid) for c in seen] == [
        ("p", PluginStatus.STARTING, os.getpid())
    ]
    (ns / "run" / "daemon.pid").write_text("999999999\n")
    index.refresh("p")
    assert (seen[-1].live.status, seen[-1].live.pid) == (PluginStatus.STOPPED, None)


def test_purge_refuses_a_running_plugin_without_any_adapter(index: Index) -> None:
    index.register("p", "1", "")
    proc = subprocess.Popen(["sleep", "30"])
    try:
        (index.layout.namespace("p") / "run" / "daemon.pid").write_text(f"{proc.pid}\n")
        index.deregister("p")
        with pytest.raises(PluginRunningError):
            index.purge("p")
        assert index.layout.namespace("p").exists()
    finally:
        proc.kill()
        proc.wait()
    index.purge("p")
    assert not index.layout.namespace("p").exists()


def test_the_watchers_echo_of_a_registration_costs_no_parse(home: Path) -> None:
    from watch_support import watcher_log, watching

    with watching(home / ".hecate") as (reg, watcher), watcher_log(home / ".hecate") as seen:
        assert watcher.settle()
        seq, refreshes = reg.seq, seen.refreshes
        reg.register("p", "1.0", "")
        reg.register("p", "1.1", "")
        assert watcher.settle()
        assert seen.refreshes > refreshes  # the echo did come
        assert reg.store.parses == 0  # ...and found our own bytes: 3 parses before the split
        assert reg.seq == seq + 2  # one change per registration, none for the echo
        assert reg.get("p").entry.manifest.version == "1.1"

"""Learning of process exits: pidfds, and the polling fallback for kernels without them."""

from __future__ import annotations

import subprocess
import threading

import pytest
from conftest import wait_for
from watch_support import dead_pid

from hecated.adapters.procwatch import ProcessWatcher
from hecated.core.runstate import pid_alive


@pytest.fixture
def exits():
    seen: list[str] = []
    lock = threading.Lock()

    def on_exit(key: str) -> None:
        with lock:
            seen.append(key)

    watcher = ProcessWatcher(on_exit, pid_alive, fallback_interval=0.05)
    yield watcher, seen
    watcher.close()


@pytest.mark.parametrize("pidfds", [True, False])
def test_exit_is_reported_once(pidfds: bool) -> None:
    seen: list[str] = []
    watcher = ProcessWatcher(seen.append, pid_alive, fallback_interval=0.05, pidfds=pidfds)
    proc = subprocess.Popen(["sleep", "60"])
    try:
        watcher.track("alpha", proc.pid)
        assert watcher.tracked() == {"alpha": proc.pid}
        assert seen == []
        proc.kill()
        proc.wait()
        wait_for(lambda: seen == ["alpha"])
        assert watcher.tracked() == {}
    finally:
        watcher.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_already_dead_pid_is_reported_from_the_thread() -> None:
    caller = threading.current_thread()
    callers: list = []
    seen: list[str] = []

    def on_exit(key: str) -> None:
        callers.append(threading.current_thread())
        seen.append(key)

    watcher = ProcessWatcher(on_exit, pid_alive, fallback_interval=0.05)
    try:
        watcher.track("alpha", dead_pid())
        wait_for(lambda: seen == ["alpha"])
        assert callers[0] is not caller  # never re-entrantly from track()
    finally:
        watcher.close()


def test_untrack_and_close(exits) -> None:
    watcher, seen = exits
    proc = subprocess.Popen(["sleep", "60"])
    try:
        watcher.track("alpha", proc.pid)
        watcher.untrack("alpha")
        watcher.close()
        assert watcher.tracked() == {}
    finally:
        proc.kill()
        proc.wait()
    assert seen == []

"""The watcher's one test seam: a barrier that proves every earlier event was handled.

Tests and benchmarks need to know "every file event made before now has been
read, dispatched, and its refresh done" (``Watcher.settle()``), without a sleep
and without a "quiet for 50 ms" guess. ``settle()`` creates a marker file in a
private directory watched on the emitter's own inotify fd: the marker's event
travels the same kernel queue as the tree's, so reading marker N proves that
everything before it was read. The emitter's loop only hands the events of this
watch to ``read()`` and queues ``event(n)`` behind the events of that read;
the handler passes it back to ``reached()``; ``settle()`` then waits until the
refresher has nothing due. A queue overflow loses markers with everything else:
``lost()`` releases every marker made so far, behind the rescan it causes.

The daemon never calls ``settle()``; until a caller does, no directory is made
and no watch is added.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent
from watchdog.observers.inotify_c import InotifyConstants as IN
from watchdog.observers.inotify_c import inotify_add_watch

_MARKER_MASK = IN.IN_CREATE | IN.IN_ONLYDIR | IN.IN_DONT_FOLLOW | IN.IN_EXCL_UNLINK


class Reached(FileSystemEvent):
    """Every inotify event read before marker ``seq`` has been queued ahead of this one."""

    is_directory = True

    def __init__(self, barrier: Barrier, seq: int) -> None:
        super().__init__("")
        self.barrier = barrier
        self.seq = seq
        self.event_type = f"hecate-reached-{seq}"


class Barrier:
    """Markers written into the emitter's inotify queue, and the wait for them."""

    def __init__(self, wait_idle: Callable[[float], bool]) -> None:
        self._wait_idle = wait_idle  # the refresher's: nothing due, no refresh running
        self._cond = threading.Condition()
        self._fd = -1
        self._dir: Path | None = None
        self._wd = -1
        self._made = 0
        self._reached = 0

    # -- the emitter's side -------------------------------------------------------------

    def attach(self, fd: int) -> None:
        with self._cond:
            self._fd = fd

    def detach(self) -> None:
        """The inotify fd is about to close: no marker can be made or read any more."""
        with self._cond:
            self._fd, self._wd = -1, -1
            folder, self._dir = self._dir, None
            self._cond.notify_all()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def owns(self, wd: int) -> bool:
        return wd != -1 and wd == self._wd

    def read(self, mask: int, name: str) -> int:
        """One event of the marker watch: the marker's number, or 0."""
        if mask & IN.IN_IGNORED:
            with self._cond:
                self._wd = -1
            return 0
        return int(name) if name.isdigit() else 0

    def lost(self) -> int:
        """The queue overflowed: every marker made so far may be lost."""
        with self._cond:
            return self._made

    def event(self, seq: int) -> Reached:
        return Reached(self, seq)

    # -- the handler's side -------------------------------------------------------------

    def reached(self, seq: int) -> None:
        """Every event before marker ``seq`` has been dispatched (called in event order)."""
        with self._cond:
            self._reached = max(self._reached, seq)
            self._cond.notify_all()

    # -- the caller's side --------------------------------------------------------------

    def settle(self, timeout: float) -> bool:
        """True once every event made before the call is dispatched and no refresh is due;
        False when the emitter is not running, or on timeout."""
        deadline = time.monotonic() + timeout
        seq = self._mark()
        if seq is None:
            return False
        with self._cond:
            if not self._cond.wait_for(lambda: self._reached >= seq or self._fd == -1, timeout):
                return False
            if self._reached < seq:
                return False  # stopped meanwhile
        return self._wait_idle(max(0.0, deadline - time.monotonic()))

    def _mark(self) -> int | None:
        with self._cond:
            if self._fd == -1:
                return None
            if self._wd == -1:
                if self._dir is None:
                    self._dir = Path(tempfile.mkdtemp(prefix="hecated-marker-"))
                wd = inotify_add_watch(self._fd, os.fsencode(self._dir), _MARKER_MASK)
                if wd == -1:
                    return None
                self._wd = wd
            self._made += 1
            path = self._dir / str(self._made)
            try:
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
                os.unlink(path)
            except OSError:
                return None
            return self._made

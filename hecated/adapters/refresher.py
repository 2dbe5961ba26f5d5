"""Bursts of file events per name -> one ``index.refresh(name)`` each, on one thread.

The emitter says what an event means (a ``Cue``); this module decides when to
read. A COMPLETE file is refreshed ``DEBOUNCE`` after its last event; a WRITING
one waits for the writer's close (``CLOSE_WAIT`` after its last event, never
more than ``MAX_DEFER`` after the first, so a writer that never closes cannot
hold it off), so one save is one refresh; a GONE ``plugin.toml`` is dropped
only if it is still missing ``DELETE_GRACE`` later (vim moves the file away and
writes a new one). A RESCAN drops whatever is due and reads the whole tree; a
CATCH_UP (the first watches, over a tree the index has read) reads only the
names changed since that read (``adapters/catchup.py``).
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from dataclasses import dataclass, field

from hecated.adapters.catchup import changed_since, fs_threshold_ns, process_start
from hecated.adapters.inotifytree import Cue
from hecated.core.index import Index

log = logging.getLogger("hecated.adapters.watch")

DEBOUNCE = 0.002  # a save's events arrive within microseconds of each other
CLOSE_WAIT = 0.5  # after IN_MODIFY, wait this long for the writer's close
MAX_DEFER = 2 * CLOSE_WAIT  # a name's refresh is never put off longer than this
DELETE_GRACE = 0.1  # vim: plugin.toml moved away, a new one written at once


@dataclass(order=True)
class _Due:
    at: float
    name: str = field(compare=False)


class Refresher:
    """Turns bursts of events per name into one ``index.refresh(name)`` each."""

    def __init__(
        self, index: Index, debounce: float = DEBOUNCE, read_after: float | None = None
    ) -> None:
        self.index = index
        self.debounce = debounce
        # When the index's last full read began (CLOCK_BOOTTIME): the process's start
        # unless told, which is right for the daemon, whose start scan comes first.
        self.read_after = process_start() if read_after is None else read_after
        self._cond = threading.Condition()
        self._due: dict[str, float] = {}
        self._first: dict[str, float] = {}  # when the pending events of a name began
        self._heap: list[_Due] = []
        self._deleted_at: dict[str, float] = {}
        self._rescan = False
        self._catch_up = False
        self._stop = False
        self._idle = True  # nothing due and no refresh running
        self._thread = threading.Thread(target=self._run, name="hecated-refresher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def touch(self, name: str, cue: Cue) -> None:
        """Schedule the refresh of ``name`` as ``cue`` asks (RESCAN, CATCH_UP: a read of
        the tree, whole or what changed)."""
        if cue is Cue.RESCAN or cue is Cue.CATCH_UP:
            self.request_rescan(whole=cue is Cue.RESCAN)
            return
        now = time.monotonic()
        with self._cond:
            if cue is Cue.GONE:
                self._deleted_at.setdefault(name, now)
            writing = cue is Cue.WRITING
            at = now + (CLOSE_WAIT if writing else self.debounce)
            current = self._due.get(name)
            first = self._first.setdefault(name, now)
            if writing and current is not None:
                # Wait on for the writer's close, but a writer that never closes (a log
                # kept open) must not hold the name's refresh off for ever.
                at = min(max(at, current), first + MAX_DEFER)
            self._schedule(name, at)

    def request_rescan(self, whole: bool = True) -> None:
        """Read the whole tree (``whole``), or the names changed since the last full read."""
        with self._cond:
            if whole:
                self._rescan = True
            else:
                self._catch_up = True
            self._idle = False
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is due and no refresh runs (``Watcher.settle()``'s second half)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._idle, timeout)

    def _schedule(self, name: str, at: float) -> None:
        self._due[name] = at
        heapq.heappush(self._heap, _Due(at, name))
        self._idle = False
        self._cond.notify_all()

    def _next(self) -> str | Cue | None:
        """The next name due, waiting for it; ``Cue.RESCAN`` for a rescan, ``Cue.CATCH_UP``
        for a catch-up; None to stop."""
        with self._cond:
            while True:
                if self._stop:
                    return None
                if self._catch_up and not self._rescan:
                    self._catch_up = False
                    return Cue.CATCH_UP
                if self._rescan:
                    self._rescan = self._catch_up = False
                    self._due.clear()
                    self._first.clear()
                    self._heap.clear()
                    self._deleted_at.clear()
                    return Cue.RESCAN
                now = time.monotonic()
                while self._heap and self._due.get(self._heap[0].name) != self._heap[0].at:
                    heapq.heappop(self._heap)  # superseded
                if not self._heap:
                    self._idle = True
                    self._cond.notify_all()
                    self._cond.wait()
                    continue
                head = self._heap[0]
                if head.at > now:
                    self._cond.wait(head.at - now)
                    continue
                heapq.heappop(self._heap)
                del self._due[head.name]
                self._first.pop(head.name, None)
                if not self._held_for_grace(head.name, now):
                    return head.name

    def _held_for_grace(self, name: str, now: float) -> bool:
        """A deleted ``plugin.toml`` still missing: put its refresh off until the grace ends,
        to give vim's new file a moment to appear. True when put off."""
        deleted = self._deleted_at.pop(name, None)
        if deleted is None or self._manifest_exists(name):
            return False
        grace = deleted + DELETE_GRACE
        if grace <= now:
            return False
        self._deleted_at[name] = deleted
        self._due[name] = grace
        heapq.heappush(self._heap, _Due(grace, name))
        return True

    def _manifest_exists(self, name: str) -> bool:
        try:
            os.lstat(self.index.layout.manifest_path(name))
        except OSError:
            return False
        return True

    def _run(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            try:
                if job is Cue.RESCAN:
                    self._read_all()
                elif job is Cue.CATCH_UP:
                    self._read_changed()
                else:
                    self._refresh(job)
            except Exception:
                log.exception("refreshing %r failed; rescanning", job)
                if job is not Cue.RESCAN:
                    self.request_rescan()

    def _refresh(self, name: str) -> None:
        self.index.refresh(name)
        log.debug("watcher: refreshed %s/%s", self.index.layout.root, name)

    def _read_all(self) -> None:
        count = self.index.scan()
        # Not "rescanned the tree", which is what SIGHUP and POST /api/rescan
        # log: a reader of the log can tell a reload from the watcher's work.
        log.info(
            "watcher: watches (re)built, tree read: %d plugin(s) in %s",
            count,
            self.index.layout.root,
        )

    def _read_changed(self) -> None:
        """The watches are in place over a tree the index read: read what changed since."""
        layout = self.index.layout
        root = os.fspath(layout.root)
        in_index = [plugin.name for plugin in self.index.list()]
        threshold = fs_threshold_ns(root, self.read_after) if in_index else None
        if threshold is None:  # never read, or no clock to ask: read it all
            self._read_all()
            return
        try:
            on_disk = [name for name in os.listdir(root) if layout.is_plugin_name(name)]
        except FileNotFoundError:
            on_disk = []
        stale = changed_since(root, on_disk, in_index, threshold)
        for name in stale:
            self._refresh(name)
        log.info(
            "watcher: watches built, %d of %d plugin(s) changed since they were read: "
            "read again in %s",
            len(stale),
            len(on_disk),
            root,
        )

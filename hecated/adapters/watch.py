"""Keeps the index in step with hand edits: inotify events -> ``index.refresh(name)``.

The composition of three parts, each in its own module:

- ``adapters/inotifytree.py``: the emitter, one inotify fd and exactly the
  watches that matter (the root's parent, the root, and per plugin its
  namespace, ``run/`` and ``sockets/``), turning each raw mask into a ``Cue``;
- ``adapters/refresher.py``: bursts of cues per name -> one refresh each,
  debounced, with a grace for a deleted ``plugin.toml``; once the first watches
  are in place, only the names changed since the index read the tree are read
  again (``adapters/catchup.py``);
- ``adapters/barrier.py``: ``settle()``, the seam tests and benchmarks use to
  know every event made before now has been handled.

They meet in a watchdog ``BaseObserver``: the emitter queues events on its
queue, the observer's thread hands them to ``IndexHandler``, in order. On a
queue overflow or an unexpected error the watches are rebuilt and the whole
tree rescanned.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from functools import partial

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver

from hecated.adapters.barrier import Barrier, Reached
from hecated.adapters.inotifytree import Cue, TreeEmitter, TreeEvent
from hecated.adapters.refresher import DEBOUNCE, Refresher
from hecated.core.index import Index

__all__ = ["IndexHandler", "Watcher"]


class IndexHandler(FileSystemEventHandler):
    """Hands the emitter's events on: cues to the refresher, socket cues to the prober,
    markers to the barrier."""

    def __init__(
        self, refresher: Refresher, on_socket: Callable[[str], None] | None = None
    ) -> None:
        self.refresher = refresher
        self.on_socket = on_socket

    def dispatch(self, event: FileSystemEvent) -> None:
        if isinstance(event, TreeEvent) and event.cue is Cue.SOCKET:
            if self.on_socket is not None:  # the prober: it queues, never blocks
                self.on_socket(event.name)
        elif isinstance(event, TreeEvent):
            self.refresher.touch(event.name, event.cue)
        elif isinstance(event, Reached):
            event.barrier.reached(event.seq)


class Watcher:
    """The composition: observer + tree emitter + refresher, started and stopped together."""

    def __init__(
        self,
        index: Index,
        debounce: float = DEBOUNCE,
        timeout: float = 1.0,
        on_socket: Callable[[str], None] | None = None,
        read_after: float | None = None,
    ):
        """``read_after``: when the index's last full read began (``CLOCK_BOOTTIME``
        seconds; default: the process's start, as the daemon's start scan follows it).
        Once the watches are in place, only what changed since is read again."""
        self.index = index
        self.refresher = Refresher(index, debounce, read_after)
        self.barrier = Barrier(self.refresher.wait_idle)
        emitter_class = partial(
            TreeEmitter, is_plugin_name=index.layout.is_plugin_name, barrier=self.barrier
        )
        self.observer = BaseObserver(emitter_class, timeout=timeout)
        self.observer.schedule(
            IndexHandler(self.refresher, on_socket), os.fspath(index.layout.root)
        )

    def start(self) -> Watcher:
        self.refresher.start()
        self.observer.start()
        return self

    def stop(self) -> None:
        self.observer.stop()
        with contextlib.suppress(RuntimeError):
            self.observer.join(timeout=5)
        self.refresher.stop()

    def rescan(self) -> int:
        """Rebuild the watches and rescan now (SIGHUP, ``POST /api/rescan``)."""
        emitter = self.emitter
        if emitter is not None:
            emitter.establish(None)  # the scan below reads what changed meanwhile
        return self.index.scan()

    @property
    def emitter(self) -> TreeEmitter | None:
        return next(iter(self.observer.emitters), None)  # type: ignore[return-value]

    @property
    def watch_count(self) -> int:
        emitter = self.emitter
        return 0 if emitter is None else emitter.watch_count

    def settle(self, timeout: float = 30.0) -> bool:
        """True once every event made before this call has been read and dispatched, and
        every refresh it scheduled (and any other then due) is done: ``adapters/barrier.py``.
        False when the watcher is not running, or on timeout."""
        return self.barrier.settle(timeout)

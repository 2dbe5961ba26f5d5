"""The index's recent changes as events: a bounded ring that streams read by ``seq``.

``GET /api/events`` (http/events.py) tells every change of the index as it
happens, numbered with the index's own ``seq`` so that a client that lost its
connection says the last number it saw and gets exactly what came after. So
the record must be in ``seq`` order without a gap: it follows the index under
the index's own lock (``Index.follow``), where changes are numbered, and only
appends there (a deque append, and a notify when a reader waits: it never
blocks a writer); each change is made an event only when a reader asks for it.

Each change becomes one event, named by comparing the entry before and after
(``kind_of``): nobody who changes the index has to say what kind of change it
made, so a new source of changes (a unit, an installed file) is told for free.

Memory is bounded twice over: the ring keeps the last ``size`` events, and a
reader holds no queue of its own, only the ``seq`` it has sent. A reader that
falls further behind than the ring (a slow client, a burst of thousands of
registrations, a ``Last-Event-ID`` from long ago or from another run of the
daemon) is told so (``after`` answers None) and starts again from a snapshot.

The index's ``seq`` starts again at each run of the daemon (socket activation and
the idle stop make runs short), so a number alone cannot say which run it is of:
run 2's number 3 is not run 1's. Each run has a token of its own (``run``, its
start in nanoseconds, base 36) that the stream puts in its ids; a cursor known to
be of no run of ours is ``STALE``, which ``after`` answers None (a resync).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass

from hecated.core.index import Change, Index, Plugin

# The kinds of events, as the stream names them (``event:``).
REGISTERED = "registered"  # a plugin.toml appeared (a name new, or discovered before)
DEREGISTERED = "deregistered"  # its plugin.toml went (the name may stay listed)
INSTALLED = "installed"  # a desired-state file in the gitops tree now names it
REMOVED = "removed"  # no desired-state file names it any more
DISCOVERED = "discovered"  # a socket answers under a name with no plugin.toml
GONE = "gone"  # a discovered name whose socket stopped answering
STATUS = "status"  # its status changed (running, stopped, failed, ...)
UNIT = "unit"  # what the user manager says of its unit changed, its status not
UPDATED = "updated"  # anything else in its entry (a new version, its live manifest)
RESYNC = "resync"  # not a change: the client must start again from a snapshot

KINDS = (REGISTERED, DEREGISTERED, INSTALLED, REMOVED, DISCOVERED, GONE, STATUS, UNIT, UPDATED)

RING = 4096  # events kept for resuming (the setting events_backlog)
STALE = -1  # a cursor of another run (or of an id that names none): resync
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def run_token(now_ns: int | None = None) -> str:
    """This run's name in event ids: its start in nanoseconds, base 36 (12 characters
    until the year 2119): two runs of one daemon never start in the same nanosecond."""
    n = time.time_ns() if now_ns is None else now_ns
    out = ""
    while True:
        n, digit = divmod(n, 36)
        out = _DIGITS[digit] + out
        if n == 0:
            return out


@dataclass(frozen=True)
class Event:
    """One change of the index: its ``seq``, its kind, and the entry it left.

    ``plugin`` is the entry after the change, or, for a name the change took out of
    the list (``listed`` False), the last one before it: a client always gets the
    whole entry, and a mirror of the list knows when to drop the name."""

    seq: int
    kind: str
    plugin: Plugin
    listed: bool = True

    @property
    def name(self) -> str:
        return self.plugin.name


def _registered(plugin: Plugin | None) -> bool:
    return plugin is not None and plugin.registered


def _installed(plugin: Plugin | None) -> bool:
    return plugin is not None and plugin.installed is not None


def kind_of(old: Plugin | None, new: Plugin | None) -> str:
    """What a change was, from the entry before and after: the weightiest difference.

    Registration first (what most clients follow), then installation, then a name
    coming or going by its socket alone, then status, unit, and anything else."""
    if _registered(old) != _registered(new):
        return REGISTERED if _registered(new) else DEREGISTERED
    if _installed(old) != _installed(new):
        return INSTALLED if _installed(new) else REMOVED
    if old is None or new is None:
        return DISCOVERED if old is None else GONE
    if old.status != new.status:
        return STATUS
    if old.live.unit != new.live.unit:
        return UNIT
    return UPDATED


def event_of(change: Change) -> Event | None:
    """The event a change makes (None: a change that carries no entry at all)."""
    plugin = change.plugin if change.plugin is not None else change.old
    if plugin is None:
        return None
    return Event(change.seq, kind_of(change.old, change.plugin), plugin, change.plugin is not None)


def _event(change: Change) -> Event:
    """A recorded change's event (``record`` keeps only changes that make one)."""
    event = event_of(change)
    assert event is not None
    return event


class Events:
    """The last ``size`` events of one index, in ``seq`` order; readers wait for the next.

    Thread-safe; ``after`` and ``wait`` are for the streams, ``record`` is called by
    the index (under its lock) for every change."""

    def __init__(self, index: Index, size: int = RING, run: str | None = None) -> None:
        self.size = max(1, size)
        self.run = run_token() if run is None else run  # this run's name in event ids
        # The changes themselves: each made an event only when a reader asks (``after``),
        # so the 10,000 changes of a start scan cost the index an append each.
        self._ring: deque[Change] = deque(maxlen=self.size)
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0  # readers in ``wait``: a notify with none costs µs per change
        self._latest = -1  # seq of the last change seen (-1: none yet)
        self._first = 0  # seq the ring starts at (when not empty)
        self._wakes = 0
        start = index.follow(self.record)
        with self._cond:  # a change recorded meanwhile (another thread) has set both
            if self._latest < 0:
                self._latest, self._first = start, start + 1

    @property
    def latest(self) -> int:
        with self._cond:
            return self._latest

    def record(self, change: Change) -> None:
        """The index's follower: append and wake the readers (never blocks)."""
        with self._cond:
            self._latest = change.seq
            if change.plugin is None and change.old is None:  # not reached (no entry): no gap
                self._ring.clear()
                self._first = change.seq + 1
            else:
                self._ring.append(change)
                self._first = self._ring[0].seq
            if self._readers:
                self._cond.notify_all()

    def after(self, seq: int, limit: int) -> list[Event] | None:
        """The events after ``seq`` (at most ``limit``, oldest first), or None when the
        ring no longer holds them all (or ``seq`` is ahead, or ``STALE``: another run's)."""
        with self._cond:
            if seq < 0 or seq > self._latest or seq + 1 < self._first:
                return None
            start = seq + 1 - self._first
            return [_event(c) for c in itertools.islice(self._ring, start, start + limit)]

    def wait(self, seq: int, timeout: float, stop: threading.Event) -> bool:
        """Wait until an event after ``seq`` is recorded, ``stop`` is set (and ``wake``
        called), or ``timeout``; True when there is something after ``seq``."""
        with self._cond:
            wakes = self._wakes
            self._readers += 1
            try:
                self._cond.wait_for(
                    lambda: self._latest != seq or stop.is_set() or self._wakes != wakes, timeout
                )
            finally:
                self._readers -= 1
            return self._latest != seq

    def wake(self) -> None:
        """Wake every waiting reader: one of them has been told to stop."""
        with self._cond:
            self._wakes += 1
            self._cond.notify_all()

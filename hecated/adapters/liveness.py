"""Liveness: the probes of each plugin's socket, and a pidfd on each live process.

The status rule and the run-dir read are the core's (``core/status.combine``,
``core/runstate.read_run``): every refresh of the index computes a plugin's
status itself. This adapter adds what needs threads and network I/O, and
publishes it into the index:

- a pidfd on every process the index shows alive (``adapters/procwatch.py``),
  so an exit (a ``kill -9`` leaves no file event) is a change at once
  (``index.refresh_status``);
- the plugin's own socket, ``sockets/api.sock`` (issue 12): ``GET /health``,
  and when it becomes reachable ``GET /manifest`` and ``GET /ui/component.js``
  (``adapters/probe.py`` makes one such look), published with
  ``index.set_finding``. That is network I/O with a plugin that may never
  answer, so it never runs under a lock or on a request's thread: a small pool
  of probe threads takes names from a queue (at most one probe in flight per
  name), asked by the index's change feed (a new or changed entry, a process
  come or gone), socket events (the watcher), pidfd exits, and a timer every
  ``probe_interval`` seconds.

It learns of changes by subscribing to the index's change feed; the daemon
creates it, starts it, and closes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque

from hecated.adapters.probe import PROBE_TIMEOUT, probe_socket
from hecated.adapters.procwatch import ProcessWatcher
from hecated.core.files import opened
from hecated.core.index import Change, Entry, Index
from hecated.core.layout import SOCKET_NAME, SOCKETS_DIR
from hecated.core.runstate import connect_plugin, pid_alive
from hecated.core.settings import default
from hecated.core.status import Liveness, SocketFinding, SocketKind
from hecated.protocol import PluginStatus

__all__ = ["Prober"]

PROBE_WORKERS = 4  # probe threads: a plugin that never answers ties up one of them, briefly
RETRIES = 5  # looks again at a socket refused just after it was bound (see _maybe_retry)

log = logging.getLogger("hecated.adapters.liveness")


class Prober:
    """Probes each plugin's socket and watches each live process; publishes into the index.

    It follows the index's change feed (``changed``, told under the name's lock:
    it only queues): a new or changed entry, or a process come or gone (the pid
    changed), asks for a socket probe. Socket probes run on ``workers`` threads
    fed from a queue, at most one per name at a time; a name asked for while its
    probe runs is probed once more afterwards. Each finding is published with
    ``index.set_finding`` under the name's lock.
    """

    def __init__(
        self,
        index: Index,
        fallback_interval: float = 2.0,
        interval: float = default("probe_interval"),
        timeout: float = PROBE_TIMEOUT,
        workers: int = PROBE_WORKERS,
    ) -> None:
        self.index = index
        self.layout = index.layout
        self.interval = interval
        self.timeout = timeout
        self.procs = ProcessWatcher(self.reprobe, pid_alive, fallback_interval)
        self._cond = threading.Condition()
        self._queue: deque[tuple[str, bool]] = deque()
        self._queued: dict[str, bool] = {}  # name -> re-read the manifest
        self._busy: set[str] = set()
        self._again: dict[str, bool] = {}
        self._found: dict[str, SocketFinding] = {}
        self._seen: dict[str, tuple[Entry | None, int | None]] = {}  # name -> (entry, pid)
        self._retries: dict[str, int] = {}
        self._tracking: set[str] = set()  # names given to ``procs`` (each under its name's lock)
        self._workers_wanted = max(1, workers)
        self._threads: list[threading.Thread] = []
        self._ticker: threading.Thread | None = None
        self._closed = False
        self._held = False  # hold(): probes queue, none runs until release()
        self.probes = 0  # probes made (the tests count them)
        index.subscribe(self.changed)

    # -- the change feed's side (under the name's lock: no socket I/O) ---------------------

    def changed(self, change: Change) -> None:
        """The index changed ``change.name``: look at its socket when there is reason to.

        A new or changed entry is a reason (the manifest included), and so is a
        process come or gone (the pid changed: a plugin starting or stopping), and
        a deregistration (a namespace without plugin.toml may still answer). A
        change of anything else (a state line rewritten, a finding published) asks
        nothing: a plugin rewriting its files in a loop is no probe storm. That
        look is queued, never made here.
        """
        name, entry, live = change.name, change.entry, change.live
        with self._cond:
            seen = self._seen.pop(name, None) if live is None else self._seen.get(name)
            if live is not None:
                self._seen[name] = (entry, live.pid)
        if entry is not None and (seen is None or seen[0] != entry):
            self.request(name, manifest=True)
        elif seen is not None and (
            (entry is None and seen[0] is not None)  # deregistered
            or (live is not None and seen[1] != live.pid)  # a process come or gone
        ):
            self.request(name)
        self._track(name, live)

    def reprobe(self, name: str) -> None:
        """A tracked process exited: its status again now (the pid gone from it is a
        change, and that change asks for a look at its socket)."""
        try:
            self.index.refresh_status(name)
        except Exception:
            log.exception("publishing the exit of %s failed", name)

    # -- asking for probes ------------------------------------------------------------------

    def request(self, name: str, manifest: bool = False) -> None:
        """Queue a probe of ``name``'s socket (never blocks; deduplicated per name)."""
        with self._cond:
            if self._closed:
                return
            if name in self._busy:
                self._again[name] = self._again.get(name, False) or manifest
                return
            if name in self._queued:
                self._queued[name] = self._queued[name] or manifest
                return
            self._queued[name] = manifest
            if self._held:  # noted (10,000 at start): ``release`` makes one round of them
                return
            self._queue.append((name, manifest))
            self._start_workers()
            # All: the timer waits on this condition too, and a notify() it took would
            # leave the queued probe with no worker woken for it.
            self._cond.notify_all()

    def socket_changed(self, name: str) -> None:
        """The watcher saw ``sockets/api.sock`` come or go: probe, manifest included."""
        self.request(name, manifest=True)

    def hold(self) -> None:
        """Queue socket probes without running any until ``release``: the daemon's start
        scan asks for one per name, and 10,000 probes racing that scan for the GIL cost
        more than the scan itself. What a refresh reads (the run dir) is not held."""
        with self._cond:
            self._held = True

    def release(self) -> None:
        """Run the probes asked for since ``hold``, and any asked for later.

        The held asks (one per name of the start scan) are not run as they are: a
        look at a name with no socket file finds what "not looked at yet" already
        says (``status.combine``: the same status and the same words), and at
        10,000 plugins that serve none those probes were seconds of CPU after the
        first answer. So they become one round (``round``): a probe for each name
        whose socket file is there (a plugin that never registered included), on a
        thread of its own, so the serving loop that calls this never waits for a
        ``lstat`` per namespace.
        """
        with self._cond:
            held, self._held = self._held, False
            asked, self._queued = (self._queued, {}) if held else ({}, self._queued)
            if self._queue and not self._closed:
                self._start_workers()
            self._cond.notify_all()
        if held:
            thread = threading.Thread(
                target=self._round_after_hold,
                args=(asked,),
                name="hecated-probe-round",
                daemon=True,
            )
            thread.start()

    def _round_after_hold(self, asked: dict[str, bool]) -> None:
        """The held asks, as one round: a probe of each name ``due`` names (with the
        manifest where one was asked); the others' sockets are not there to look at."""
        try:
            for name in self.due():
                self.request(name, manifest=asked.get(name, False))
        except Exception:
            log.exception("the first round of probes failed")

    def start(self) -> None:
        """Start the periodic probes (every ``interval`` seconds); the daemon calls it."""
        with self._cond:
            if self._closed or self._ticker is not None or self.interval <= 0:
                return
            self._ticker = threading.Thread(
                target=self._tick, name="hecated-probe-timer", daemon=True
            )
            self._ticker.start()

    def due(self) -> list[str]:
        """The names a periodic round probes: those whose last probe found a socket
        file, and every name (registered or not) whose socket file exists now.

        One ``lstat`` per namespace, relative to the root, and no connect where there
        is no socket: at 10,000 registered plugins that serve none, a round stays a
        few milliseconds. A socket bound between rounds is seen at once anyway
        (inotify on ``sockets/``).
        """
        with self._cond:
            seen = {
                name
                for name, f in self._found.items()
                if f.kind != SocketKind.ABSENT or f.socket_file
            }
        names = {p.name for p in self.index.list()} | seen
        try:
            root_fd = os.open(self.layout.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return sorted(seen)
        with opened(root_fd):
            with contextlib.suppress(OSError):
                names.update(e for e in os.listdir(root_fd) if self.layout.is_plugin_name(e))
            return [n for n in sorted(names) if n in seen or _socket_file(root_fd, n)]

    def round(self) -> None:
        """Ask for a probe of every name ``due`` names."""
        due = self.due()
        log.debug("a round of probes: %d due", len(due))
        for name in due:
            self.request(name)

    def _tick(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed, self.interval)
                if self._closed:
                    return
            try:
                self.round()
            except Exception:
                log.exception("a periodic round of probes failed")

    # -- the probe threads ------------------------------------------------------------------

    def _start_workers(self) -> None:
        """Made on the first request (an index nobody probes holds no threads)."""
        while len(self._threads) < self._workers_wanted:
            thread = threading.Thread(
                target=self._work, name=f"hecated-probe-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or (self._queue and not self._held))
                if self._closed:
                    return
                name, manifest = self._queue.popleft()
                manifest = self._queued.pop(name, manifest)
                self._busy.add(name)
                before = self._found.get(name)
            try:
                self._probe_one(name, manifest, before)
            except Exception:
                log.exception("probing the socket of %s failed", name)
            with self._cond:
                self._busy.discard(name)
                again = self._again.pop(name, None)
            if again is not None:
                self.request(name, again)

    def _probe_one(self, name: str, manifest: bool, before: SocketFinding | None) -> None:
        # The manifest is read when the plugin becomes reachable, or when asked (a new
        # entry, a socket made again); the periodic probes ask /health only.
        reread = manifest or before is None or before.kind != SocketKind.ANSWERING
        found = probe_socket(
            lambda: connect_plugin(self.layout, name, self.timeout),
            name,
            self.timeout,
            reread,
        )
        if found.kind == SocketKind.ANSWERING and found.manifest is None and before is not None:
            found = SocketFinding(SocketKind.ANSWERING, None, before.manifest, True)
        self.probes += 1
        log.debug("probed %s: %s %s", name, found.kind, found.detail or "")
        self._maybe_retry(name, manifest, found)
        with self.index.name_lock(name):
            with self._cond:
                if self._closed:
                    return
                self._found[name] = found
            self.index.set_finding(name, found)
            if self.index.get(name) is None:
                with self._cond:
                    self._found.pop(name, None)

    def _maybe_retry(self, name: str, asked: bool, found: SocketFinding) -> None:
        """A socket file nothing accepts on, just after an event: look again soon.

        A plugin binds its socket (the inotify event) a moment before it listens,
        so the probe that event asks for can meet a refusal; with no further event
        (and periodic probes perhaps off), it would stay unseen. A few retries,
        0.05 s doubling to 0.8 s, cover that moment and nothing more.
        """
        with self._cond:
            if found.kind != SocketKind.ABSENT or not found.socket_file:
                self._retries.pop(name, None)
                return
            attempt = self._retries.get(name, 0)
            if self._closed or not (asked or attempt) or attempt >= RETRIES:
                self._retries.pop(name, None)
                return
            self._retries[name] = attempt + 1
        timer = threading.Timer(0.05 * 2**attempt, self.request, (name, True))
        timer.daemon = True
        timer.start()

    def _track(self, name: str, live: Liveness | None) -> None:
        """Hold a pidfd on a live plugin's process, so its exit is a change too."""
        try:
            if live is not None and live.pid and live.status != PluginStatus.STOPPED:
                self.procs.track(name, live.pid)
                self._tracking.add(name)
            elif name in self._tracking:  # (no lock taken for the 10,000 never tracked)
                self._tracking.discard(name)
                self.procs.untrack(name)
        except OSError as exc:  # e.g. out of fds: the next refresh of this name tries again
            log.warning("cannot watch the process of plugin %s: %s", name, exc)

    def close(self) -> None:
        """Stop probing and watching (the daemon calls it, beside the watcher's stop)."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._queued.clear()
            self._cond.notify_all()
        self.procs.close()


def _socket_file(root_fd: int, name: str) -> bool:
    """Is there anything at ``name/sockets/api.sock`` (the probe decides what it is)?"""
    try:
        os.stat(f"{name}/{SOCKETS_DIR}/{SOCKET_NAME}", dir_fd=root_fd, follow_symlinks=False)
    except (OSError, ValueError):
        return False
    return True

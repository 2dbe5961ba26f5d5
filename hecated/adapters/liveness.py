"""Liveness: what the index shows as a plugin's ``status``, ``pid``, ``state`` and manifest.

The core holds ``Liveness`` values; this adapter finds them and publishes them
into the index (``index.attach`` / ``index.set_liveness``). Two sources:

- the plugin's ``run/daemon.pid`` and ``run/daemon.state`` (cheap file reads,
  done under the name's lock on every refresh), with a pidfd on every process
  seen alive, so an exit (a ``kill -9`` leaves no file event) is learnt at once;
- the plugin's own socket, ``sockets/api.sock`` (issue 12): ``GET /health``,
  and when it becomes reachable ``GET /manifest`` and ``GET /ui/component.js``
  (``adapters/probe.py`` makes one such look).
  That is network I/O with a plugin that may never answer, so it never runs
  under a lock or on a request's thread: a small pool of probe threads takes
  names from a queue (at most one probe in flight per name), asked by socket
  events (the watcher), pidfd exits, refreshes, and a timer every
  ``probe_interval`` seconds.

How the two combine (``combine``): a 2xx ``/health`` is ``running``; a socket
that accepts and answers anything else, garbage, or nothing in time is
``unhealthy`` (the reason in ``detail``); no socket file, or one nothing
accepts on (a crash's leftover), is ``stopped`` -- or ``starting`` when
``run/daemon.pid`` names a live process: only the socket's own answer says
``running``, so a plugin that keeps a pid file and has no socket yet (or the
spec's older, socketless model) is ``starting`` while its pid lives.

The pidfds are ``adapters/procwatch.py``'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque

from hecated.adapters.probe import (
    ABSENT,
    ANSWERING,
    PROBE_TIMEOUT,
    REFUSING,
    Finding,
    open_plugin_socket,
    probe_socket,
)
from hecated.adapters.procwatch import ProcessWatcher
from hecated.core.errors import UnsafePathError
from hecated.core.files import open_dir, opened, read_regular
from hecated.core.index import (
    RUNNING,
    STARTING,
    STOPPED,
    UNHEALTHY,
    Entry,
    Index,
    Liveness,
)
from hecated.core.layout import SOCKET_NAME, SOCKETS_DIR, STATE_FILE
from hecated.core.store import RUN_DIR, pid_alive, pid_in

__all__ = ["STATE_MAX", "Prober", "combine", "probe_run_dir"]

STATE_MAX = 4096
PROBE_INTERVAL = 10.0  # seconds between two probes of a plugin's socket (config: probe_interval)
PROBE_WORKERS = 4  # probe threads: a plugin that never answers ties up one of them, briefly
RETRIES = 5  # looks again at a socket refused just after it was bound (see _maybe_retry)

log = logging.getLogger("hecated.adapters.liveness")


def probe_run_dir(ns_fd: int) -> Liveness:
    """What a namespace's ``run/`` says: a live pid makes it running; its state line.
    ``run/`` is opened once for both (the start scan reads 10,000 of them)."""
    try:
        run_fd = open_dir(ns_fd, RUN_DIR)
    except (OSError, UnsafePathError):
        return Liveness(STOPPED)
    with opened(run_fd):
        pid = pid_in(run_fd)
        try:
            raw = read_regular(run_fd, STATE_FILE, STATE_MAX)
        except (OSError, UnsafePathError):
            raw = None
    state = raw.decode("utf-8", "replace").strip() if raw else None
    alive = pid is not None and pid_alive(pid)
    return Liveness(RUNNING if alive else STOPPED, pid if alive else None, state)


def combine(run: Liveness, found: Finding | None) -> Liveness:
    """The status from the run dir's finding and the socket's (None: not probed yet).

    Only the socket's own answer makes a plugin ``running``: a live pid whose socket
    is missing, refuses, or has not been looked at yet is ``starting`` (issue 12).
    """
    alive = run.status == RUNNING
    pid = run.pid if alive else None
    if found is not None and found.kind == ANSWERING:
        return Liveness(RUNNING, pid, run.state, None, found.manifest, answering=True)
    if found is not None and found.kind == REFUSING:
        return Liveness(UNHEALTHY, pid, run.state, found.detail, answering=True)
    if alive:
        return Liveness(STARTING, pid, run.state, _not_answering(found))
    return Liveness(STOPPED, None, run.state, found.detail if found else None)


def _not_answering(found: Finding | None) -> str:
    """Why a live process counts as ``starting``. Not probed yet and no socket file
    read alike, so a fresh scan and a watched index agree on the words."""
    if found is not None and found.detail:
        return found.detail
    return "its process runs; sockets/api.sock does not answer yet"


class Prober:
    """Finds each plugin's liveness and publishes it into the index.

    Attached to the index, it is asked on every refresh (``refreshed``), under
    the name's lock: it answers from the run dir and the last socket finding
    (no socket I/O there) and asks for a socket probe. Socket probes run on
    ``workers`` threads fed from a queue, at most one per name at a time; a
    name asked for while its probe runs is probed once more afterwards. Each
    finding is published with ``set_liveness`` under the name's lock.
    """

    def __init__(
        self,
        index: Index,
        fallback_interval: float = 2.0,
        interval: float = PROBE_INTERVAL,
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
        self._found: dict[str, Finding] = {}
        self._retries: dict[str, int] = {}
        self._workers_wanted = max(1, workers)
        self._threads: list[threading.Thread] = []
        self._ticker: threading.Thread | None = None
        self._closed = False
        self._held = False  # hold(): probes queue, none runs until release()
        self.probes = 0
        index.attach(self)

    # -- the index's side (under the name's lock: no socket I/O) ---------------------------

    def probe(self, name: str) -> Liveness:
        """What is known of ``name`` now: its run dir read, combined with the last socket
        finding (cheap: two small file reads and a kill(pid, 0))."""
        try:
            with opened(self.layout.open_namespace(name)) as ns_fd:
                run = probe_run_dir(ns_fd)
        except (OSError, UnsafePathError):
            run = Liveness(STOPPED)
        with self._cond:
            found = self._found.get(name)
        return combine(run, found)

    def refreshed(self, name: str, entry: Entry | None) -> Liveness | None:
        """The index refreshed ``name`` (it holds the name's lock): its liveness now.

        A new or changed entry is a reason to look at the socket again (the manifest
        included), and so is a process come or gone (the run dir's pid changed: a
        plugin starting or stopping). A refresh that changes neither (a state line
        rewritten, a rescan) asks nothing: a plugin rewriting its files in a loop,
        or a rescan of 10,000 names, is no probe storm. That look is queued, never
        made here.
        """
        old = self.index.get(name)
        live = self.probe(name)
        if entry is not None and (old is None or old.entry != entry):
            self.request(name, manifest=True)
        elif entry is None and (old is None or old.registered):
            self.request(name)  # a namespace without plugin.toml may still answer
        elif old is None or old.live.pid != live.pid:
            self.request(name)
        self._track(name, live)
        return live

    def reprobe(self, name: str) -> None:
        """Publish ``name``'s liveness again (a process exit) and look at its socket."""
        with self.index.name_lock(name):
            self._publish(name)
        self.request(name)

    def _publish(self, name: str) -> None:
        """Under the name's lock: the liveness now, into the index (which keeps a
        discovered name only while it answers)."""
        plugin = self.index.get(name)
        live = self.probe(name)
        if plugin is None and not live.answering:
            self._track(name, None)
            return
        self._track(name, live)
        self.index.set_liveness(name, live)

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
            self._queue.append((name, manifest))
            if not self._held:
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
        """Run the probes queued since ``hold``, and any asked for later."""
        with self._cond:
            self._held = False
            if self._queue and not self._closed:
                self._start_workers()
            self._cond.notify_all()

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

        One ``lstat`` per namespace and no connect where there is no socket: at
        10,000 registered plugins that serve none, a round stays a few milliseconds.
        A socket bound between rounds is seen at once anyway (inotify on ``sockets/``).
        """
        with self._cond:
            seen = {name for name, f in self._found.items() if f.kind != ABSENT or f.socket_file}
        names = {p.name for p in self.index.list()} | seen
        root = self.layout.root
        with contextlib.suppress(OSError):
            names.update(e for e in os.listdir(root) if self.layout.is_plugin_name(e))
        due = []
        for name in sorted(names):
            if name in seen:
                due.append(name)
                continue
            with contextlib.suppress(OSError):
                os.lstat(os.path.join(root, name, SOCKETS_DIR, SOCKET_NAME))
                due.append(name)
        return due

    def _tick(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed, self.interval)
                if self._closed:
                    return
            try:
                due = self.due()
                log.debug("a round of probes: %d due", len(due))
                for name in due:
                    self.request(name)
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

    def _probe_one(self, name: str, manifest: bool, before: Finding | None) -> None:
        # The manifest is read when the plugin becomes reachable, or when asked (a new
        # entry, a socket made again); the periodic probes ask /health only.
        reread = manifest or before is None or before.kind != ANSWERING
        found = probe_socket(
            lambda: open_plugin_socket(self.layout.open_namespace, name),
            name,
            self.timeout,
            reread,
        )
        if found.kind == ANSWERING and found.manifest is None and before is not None:
            found = Finding(ANSWERING, None, before.manifest, True)
        self.probes += 1
        log.debug("probed %s: %s %s", name, found.kind, found.detail or "")
        self._maybe_retry(name, manifest, found)
        with self.index.name_lock(name):
            with self._cond:
                if self._closed:
                    return
                self._found[name] = found
            self._publish(name)
            if self.index.get(name) is None:
                with self._cond:
                    self._found.pop(name, None)

    def _maybe_retry(self, name: str, asked: bool, found: Finding) -> None:
        """A socket file nothing accepts on, just after an event: look again soon.

        A plugin binds its socket (the inotify event) a moment before it listens,
        so the probe that event asks for can meet a refusal; with no further event
        (and periodic probes perhaps off), it would stay unseen. A few retries,
        0.05 s doubling to 0.8 s, cover that moment and nothing more.
        """
        with self._cond:
            if found.kind != ABSENT or not found.socket_file:
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
            if live is not None and live.pid and live.status != STOPPED:
                self.procs.track(name, live.pid)
            else:
                self.procs.untrack(name)
        except OSError as exc:  # e.g. out of fds: the next refresh of this name tries again
            log.warning("cannot watch the process of plugin %s: %s", name, exc)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._queued.clear()
            self._cond.notify_all()
        self.procs.close()

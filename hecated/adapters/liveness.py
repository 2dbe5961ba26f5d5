"""Liveness: what the index shows as a plugin's ``status``, ``pid``, ``state`` and manifest.

The core holds ``Liveness`` values; this adapter finds them and publishes them
into the index (``index.attach`` / ``index.set_liveness``). Two sources:

- the plugin's ``run/daemon.pid`` and ``run/daemon.state`` (cheap file reads,
  done under the name's lock on every refresh), with a pidfd on every process
  seen alive, so an exit (a ``kill -9`` leaves no file event) is learnt at once;
- the plugin's own socket, ``sockets/api.sock`` (issue 12): ``GET /health``,
  and when it becomes reachable ``GET /manifest`` and ``GET /ui/component.js``.
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

On a kernel without pidfds (before 5.3) the process watcher falls back to
re-checking the tracked pids every ``fallback_interval`` seconds.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from hecated.core.errors import UnsafePathError
from hecated.core.files import connect_unix_at, open_dir, opened, read_regular
from hecated.core.index import (
    RUNNING,
    STARTING,
    STOPPED,
    UNHEALTHY,
    Entry,
    Index,
    LiveManifest,
    Liveness,
)
from hecated.core.layout import SOCKET_NAME, SOCKETS_DIR, STATE_FILE
from hecated.core.store import RUN_DIR, pid_alive, read_pid

__all__ = [
    "STATE_MAX",
    "Finding",
    "Prober",
    "ProcessWatcher",
    "combine",
    "pid_alive",
    "probe_run_dir",
    "probe_socket",
]

STATE_MAX = 4096
PROBE_INTERVAL = 10.0  # seconds between two probes of a plugin's socket (config: probe_interval)
PROBE_TIMEOUT = 2.0  # one request to a plugin, connect to last byte (hecate-web's timeout too)
PROBE_WORKERS = 4  # probe threads: a plugin that never answers ties up one of them, briefly
BODY_MAX = 64 * 1024  # the most of an answer (a manifest) read from a plugin
TEXT_MAX = 256  # the most of one manifest string kept
MANIFEST_FIELDS = ("name", "version", "icon", "description", "tag")
RETRIES = 5  # looks again at a socket refused just after it was bound (see _maybe_retry)

log = logging.getLogger("hecated.adapters.liveness")


class ProcessWatcher:
    """Calls ``on_exit(key)`` once when the process tracked under ``key`` exits."""

    def __init__(
        self,
        on_exit: Callable[[str], None],
        alive: Callable[[int], bool],
        fallback_interval: float = 2.0,
    ) -> None:
        self._on_exit = on_exit
        self._alive = alive
        self._fallback_interval = fallback_interval
        self._lock = threading.Lock()
        self._by_key: dict[str, tuple[int, int | None]] = {}  # key -> (pid, pidfd)
        self._by_fd: dict[int, str] = {}
        self._exited: list[str] = []
        self._poll = select.poll()
        self._wake_r = self._wake_w = -1  # made with the thread: an idle registry holds no fds
        self._thread: threading.Thread | None = None
        self._closed = False
        self._pidfds = hasattr(os, "pidfd_open")

    def track(self, key: str, pid: int) -> None:
        """Watch ``pid`` for ``key``; replaces whatever ``key`` tracked before."""
        with self._lock:
            if self._closed:
                return
            current = self._by_key.get(key)
            if current is not None and current[0] == pid:
                return
            self._drop(key)
            fd = self._open(pid)
            if fd == -1:
                # It died between the liveness check and now. Told from the thread,
                # never from here: the caller may hold the lock on_exit needs.
                self._exited.append(key)
            else:
                self._by_key[key] = (pid, fd)
                if fd is not None:
                    self._by_fd[fd] = key
                    self._poll.register(fd, select.POLLIN)
            self._start()
        self._wake()

    def untrack(self, key: str) -> None:
        with self._lock:
            self._drop(key)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for key in list(self._by_key):
                self._drop(key)
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._wake_r != -1:
            with contextlib.suppress(OSError):
                os.close(self._wake_r)
                os.close(self._wake_w)

    def tracked(self) -> dict[str, int]:
        with self._lock:
            return {key: pid for key, (pid, _fd) in self._by_key.items()}

    # -- inside ------------------------------------------------------------------------

    def _open(self, pid: int) -> int | None:
        """A pidfd for ``pid``; -1 when it is already gone; None when pidfds are unavailable."""
        if not self._pidfds:
            return None
        try:
            return os.pidfd_open(pid)
        except ProcessLookupError:
            return -1
        except OSError as exc:
            if exc.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
                self._pidfds = False
                log.info(
                    "pidfd_open unavailable (%s); re-checking pids every %.0f s",
                    exc,
                    self._fallback_interval,
                )
                return None
            raise

    def _drop(self, key: str) -> None:
        found = self._by_key.pop(key, None)
        if found is None or found[1] is None:
            return
        fd = found[1]
        self._by_fd.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self._poll.unregister(fd)
        os.close(fd)

    def _start(self) -> None:
        if self._thread is None:
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._poll.register(self._wake_r, select.POLLIN)
            self._thread = threading.Thread(target=self._run, name="hecated-procwatch", daemon=True)
            self._thread.start()

    def _wake(self) -> None:
        if self._wake_w == -1:
            return
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                fallback = any(fd is None for _pid, fd in self._by_key.values())
                pending = bool(self._exited)
            timeout = int(self._fallback_interval * 1000) if fallback else None
            if pending:
                timeout = 0
            ready = self._poll.poll(timeout)
            with self._lock:
                if self._closed:
                    return
                exited, self._exited = self._exited, []
                for fd, _mask in ready:
                    if fd == self._wake_r:
                        with contextlib.suppress(OSError):
                            while os.read(self._wake_r, 512):
                                pass
                        continue
                    key = self._by_fd.get(fd)
                    if key is not None:
                        exited.append(key)
                        self._drop(key)
                if fallback:
                    for key, (pid, fd) in list(self._by_key.items()):
                        if fd is None and not self._alive(pid):
                            exited.append(key)
                            self._drop(key)
            for key in exited:
                try:
                    self._on_exit(key)
                except Exception:
                    log.exception("refreshing %s after its process exited failed", key)


def probe_run_dir(ns_fd: int) -> Liveness:
    """What a namespace's ``run/`` says: a live pid makes it running; its state line."""
    pid = read_pid(ns_fd)
    try:
        with opened(open_dir(ns_fd, RUN_DIR)) as run_fd:
            raw = read_regular(run_fd, STATE_FILE, STATE_MAX)
    except (OSError, UnsafePathError):
        raw = None
    state = raw.decode("utf-8", "replace").strip() if raw else None
    alive = pid is not None and pid_alive(pid)
    return Liveness(RUNNING if alive else STOPPED, pid if alive else None, state)


# -- the plugin's socket ------------------------------------------------------------------

ANSWERING = "answering"  # GET /health answered 2xx
REFUSING = "refusing"  # something accepts, but the answer is not a 2xx (or none came)
ABSENT = "absent"  # no socket file, or nothing accepts on it


@dataclass(frozen=True)
class Finding:
    """What one probe of a plugin's socket found; ``socket_file`` tells a stale socket
    (a crash's leftover) from none at all."""

    kind: str
    detail: str | None = None
    manifest: LiveManifest | None = None
    socket_file: bool = False


class ProbeError(Exception):
    """A request to a plugin did not get an HTTP answer; the message says why."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


def open_plugin_socket(layout_open_namespace: Callable[[str], int], name: str) -> socket.socket:
    """Connect to ``name``'s ``sockets/api.sock`` without following a link out of the tree.

    The namespace and ``sockets/`` are opened through directory fds that refuse
    symlinks, and ``files.connect_unix_at`` pins the socket's inode before it
    connects, so nothing swapped in after the check is reached. Raises ``FileNotFoundError``
    (no socket file), ``UnsafePathError`` (a link or a non-socket), or the
    connect's ``OSError`` (``ECONNREFUSED``: nothing accepts on it).
    """
    with opened(layout_open_namespace(name)) as ns_fd, opened(open_dir(ns_fd, SOCKETS_DIR)) as fd:
        return connect_unix_at(fd, SOCKET_NAME, PROBE_TIMEOUT)


def exchange(sock: socket.socket, path: str, timeout: float, limit: int = BODY_MAX) -> Answer:
    """One ``GET path`` on a connected socket, read to the end within ``timeout`` seconds.

    Our own few lines of HTTP/1.1 (``Connection: close``) rather than a client
    library, so the whole exchange, however slowly a plugin dribbles, is held
    to one deadline and one size limit.
    """
    deadline = time.monotonic() + timeout
    request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    try:
        sock.settimeout(timeout)
        sock.sendall(request.encode())
        raw = bytearray()
        while len(raw) <= limit + 8192:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
            if _complete(raw):
                break
    except TimeoutError:
        raise ProbeError(f"GET {path}: no answer within {timeout:g} s") from None
    except OSError as exc:
        raise ProbeError(f"GET {path}: {exc.strerror or exc}") from None
    return _parse(path, bytes(raw), limit)


def _complete(raw: bytearray) -> bool:
    """The answer is whole by its Content-Length (a plugin that keeps the connection open)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return False
    for line in bytes(raw[:end]).split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            try:
                return len(raw) - end - 4 >= int(value)
            except ValueError:
                return False
    return False


class _Bytes:
    """Just enough of a socket for ``http.client.HTTPResponse`` to parse bytes we read."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, *_args: object, **_kw: object) -> io.BytesIO:
        return io.BytesIO(self._data)


def _parse(path: str, raw: bytes, limit: int) -> Answer:
    # Imported here, on a probe thread: http.client brings email and ssl, which the
    # first answer (start-up imports this module) must not wait for.
    import http.client

    if not raw:
        raise ProbeError(f"GET {path}: the connection closed without an answer")
    response = http.client.HTTPResponse(_Bytes(raw))  # type: ignore[arg-type]
    try:
        response.begin()
        body = response.read(limit + 1)
    except (http.client.HTTPException, ValueError) as exc:
        raise ProbeError(f"GET {path}: not an HTTP answer ({type(exc).__name__})") from None
    if len(body) > limit:
        raise ProbeError(f"GET {path}: the answer is over {limit} bytes")
    return Answer(response.status, body)


def _ask(connect: Callable[[], socket.socket], path: str, timeout: float) -> Answer:
    with connect() as sock:
        return exchange(sock, path, timeout)


def probe_socket(
    connect: Callable[[], socket.socket], namespace: str, timeout: float, manifest: bool
) -> Finding:
    """One look at a plugin's socket: ``/health``, and with ``manifest`` its manifest and UI."""
    try:
        sock = connect()
    except FileNotFoundError:
        return Finding(ABSENT)  # the plain case, no reason needed: it is not there
    except UnsafePathError as exc:
        return Finding(ABSENT, str(exc))
    except TimeoutError:
        return Finding(REFUSING, "connecting to sockets/api.sock timed out", socket_file=True)
    except OSError as exc:
        why = exc.strerror or str(exc)
        return Finding(ABSENT, f"nothing accepts on sockets/api.sock ({why})", socket_file=True)
    try:
        with sock:
            health = exchange(sock, "/health", timeout)
    except ProbeError as exc:
        return Finding(REFUSING, str(exc), socket_file=True)
    if not 200 <= health.status < 300:
        return Finding(REFUSING, f"GET /health answered {health.status}", socket_file=True)
    found = read_manifest(connect, namespace, timeout) if manifest else None
    return Finding(ANSWERING, None, found, socket_file=True)


def read_manifest(
    connect: Callable[[], socket.socket], namespace: str, timeout: float
) -> LiveManifest:
    """``GET /manifest`` checked against the ecosystem's shape, and the UI module's presence."""
    problems: list[str] = []
    doc: dict = {}
    try:
        answer = _ask(connect, "/manifest", timeout)
        if not 200 <= answer.status < 300:
            problems.append(f"GET /manifest answered {answer.status}")
        else:
            doc = _json_object(answer.body, problems)
    except (ProbeError, OSError, UnsafePathError) as exc:
        problems.append(f"GET /manifest failed: {exc}")
    fields = {key: _text(doc, key, problems) for key in (*MANIFEST_FIELDS, "display_name")}
    if doc:
        problems.extend(
            f"the manifest has no {key!r}" for key in MANIFEST_FIELDS if not fields[key]
        )
    name = fields["name"]
    if name and not name_fits(namespace, name):
        problems.append(
            f"the manifest's name {name!r} fits none of the conventions of the namespace "
            f"{namespace!r} (hecate-app-{name}d, hecate-{name}d, or {namespace!r} itself)"
        )
    ui = False
    try:
        component = _ask(connect, "/ui/component.js", timeout)
        ui = 200 <= component.status < 300
        if not ui:
            problems.append(
                f"the UI will drop this plugin: GET /ui/component.js answered {component.status}"
            )
    except (ProbeError, OSError, UnsafePathError) as exc:
        problems.append(f"the UI will drop this plugin: {exc}")
    return LiveManifest(
        name=name,
        version=fields["version"],
        description=fields["description"],
        display_name=fields["display_name"] or name,
        icon=fields["icon"],
        tag=fields["tag"],
        ui=ui,
        problems=tuple(problems),
    )


def name_fits(namespace: str, name: str) -> bool:
    """Real manifests use the short name: ``trader`` in ``hecate-traderd`` or
    ``hecate-app-traderd``; the namespace's own name fits too."""
    return namespace in (name, f"hecate-{name}d", f"hecate-app-{name}d")


def _json_object(body: bytes, problems: list[str]) -> dict:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        problems.append("GET /manifest did not answer JSON")
        return {}
    if not isinstance(doc, dict):
        problems.append("GET /manifest did not answer a JSON object")
        return {}
    return doc


def _text(doc: dict, key: str, problems: list[str]) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(f"the manifest's {key!r} is not a string")
        return None
    return value[:TEXT_MAX] or None


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

        Every refresh is a reason to look at the socket again (a pid file written or
        removed is a plugin coming or going); a new or changed entry re-reads the
        manifest too. That look is queued, never made here.
        """
        old = self.index.get(name)
        changed = entry is not None and (old is None or old.entry != entry)
        self.request(name, manifest=changed)
        live = self.probe(name)
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
            self._start_workers()
            # All: the timer waits on this condition too, and a notify() it took would
            # leave the queued probe with no worker woken for it.
            self._cond.notify_all()

    def socket_changed(self, name: str) -> None:
        """The watcher saw ``sockets/api.sock`` come or go: probe, manifest included."""
        self.request(name, manifest=True)

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
                self._cond.wait_for(lambda: self._closed or self._queue)
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

"""Serving the WSGI app on a Unix socket that is handed in, never created deep inside.

The listening socket comes from outside: from systemd (socket activation) or
from ``bind_unix`` (standalone). It is served by waitress, not Werkzeug's
development server (docs/benchmarks.md, table 0): it reads requests in its
event loop, so a slow or silent client holds a connection slot, never a worker
thread. We drive its loop ourselves, one turn at a time, so that every
turn stamps ``heartbeat`` (the systemd watchdog's proof that the loop turns) and
runs the daemon's ``tick``; ``waitress.serve``/``create_server`` are never used,
because given anything but a socket object they quietly listen on TCP 0.0.0.0:8080.

What happens on one connection (paths, refusals, lingering close, sending a
detoured answer) is ``connection.py``'s; this module keeps the socket, the loop,
which connections live (a flood of idle ones cannot lock clients out), request
deadlines, and shutdown. Requests a ``Detour`` claims (``hooks.py``: the
forwarding wing's) run on the detour's threads, their connections out of the loop.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import heapq
import logging
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import ClientDisconnected
from waitress.server import UnixWSGIServer
from waitress.task import ThreadedTaskDispatcher

from hecated.http.connection import (
    LINGER_BYTES,
    LINGER_SECONDS,
    Channel,
    ConnectionLimits,
    DetourRefused,
)
from hecated.http.hooks import Detour, send_timeout_of
from hecated.protocol import accepts

log = logging.getLogger("hecated.http.server")
# waitress warns on every queued task ("Task queue depth is N"): noise, not news.
logging.getLogger("waitress.queue").setLevel(logging.ERROR)

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024  # the app refuses anything over 64 KB with a JSON 413
STALLED_AFTER = 2.0  # on shutdown, a half-sent request silent this long is dropped
# A connection costs a slot in waitress's event loop, not a thread, so many may be open;
# what must stay bounded is the time one request may take to arrive (slowloris).
MAX_CONNECTIONS = 1000
# Room kept for new clients: once open connections reach MAX_CONNECTIONS - RESERVE,
# the idle ones silent longest are closed, so a flood of idle connections never
# fills every place (waitress would stop accepting, and the backlog then refuse).
RESERVE = 50
# Connections one process may hold (past it, its idle one silent longest is closed, or
# the new one): above the stream cap (256), as a proxy (hecate-web) holds both kinds.
MAX_PER_PEER = 512
REQUEST_DEADLINE = 10.0  # seconds from a request's first byte to its last
# How often the loop looks for requests past their deadline or lingering too long.
OVERDUE_CHECK = 0.1


class AlreadyRunningError(RuntimeError):
    """Another daemon already answers on the socket path."""


class SocketPathError(RuntimeError):
    """The socket path is occupied by something that is not a socket."""


def bind_unix(path: Path, backlog: int = 128) -> socket.socket:
    """Bind and listen on ``path`` with mode 0600, clearing a stale socket file.

    A socket file that still answers belongs to a running daemon: refuse. One
    that refuses connections is a leftover of a crash: remove it. Anything that
    is not a socket is never removed.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketPathError(f"{path} exists and is not a socket; not removing it")
        if accepts(path):
            raise AlreadyRunningError(f"another daemon is already answering on {path}")
        log.info("removing stale socket %s", path)
        path.unlink()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # never a moment where the socket is reachable by others
    try:
        sock.bind(os.fspath(path))
        os.chmod(path, 0o600)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock


@dataclass(frozen=True)
class Admission:
    """Which connections live: room kept for new clients, a bound for each process."""

    reserve: int = RESERVE
    per_peer: int = MAX_PER_PEER


# Set on a detour's thread while it serves (see ``_Listener.pull_trigger``).
_detour_thread = threading.local()


class _Detached:
    """A claimed request whose connection is out of the loop: the ``Job`` a detour runs."""

    def __init__(self, listener: _Listener, channel: Channel) -> None:
        self.listener = listener
        self.channel = channel
        self.fileno: int = channel._fileno  # kept: a closed channel forgets its own
        self.path: str = channel.requests[0].path if channel.requests else ""
        self.queued = False  # a request next_request read waits to be served or dispatched
        channel.send_timeout = send_timeout_of(listener.detour, self.path)

    def hung_up(self) -> None:
        self.channel.hung_up()

    def serve(self) -> None:
        channel = self.channel
        self.queued = False  # the request next_request read is being served: by us
        _detour_thread.quiet = True
        try:
            if channel.total_outbufs_len:  # an earlier pipelined answer goes out first
                channel.drain()
            channel.service()
        except ClientDisconnected:
            channel.will_close = True
        except BaseException:
            log.exception("a detoured request failed")
        finally:
            _detour_thread.quiet = False

    def next_request(self, wait: float) -> str | None:
        """The path of the connection's next request when it arrives whole within ``wait``
        s, claimed: this thread may serve it (``serve``) without handing the connection
        back to the loop and another thread taking it again. None: the loop takes the
        connection back (a request read here and not served is dispatched by ``done``)."""
        channel = self.channel
        if not _may_follow(self.listener, channel) or not _readable(channel, wait):
            return None
        try:
            data = channel.socket.recv(channel.adj.recv_bytes)
        except OSError:  # nothing after all, or a reset: the loop sees it alike
            return None
        if not data:  # the client closed: the loop reads its EOF again and closes
            return None
        channel.last_activity = time.time()
        _detour_thread.holding = channel
        try:
            channel.received(data)
        except Exception:  # never raises, as serve: the connection is closed instead
            log.exception("reading a followed request failed")
            channel.will_close = True
            return None
        finally:
            _detour_thread.holding = None
        if not channel.requests:  # only part of a request: the loop reads the rest
            return None
        self.queued = True
        request = channel.requests[0]
        if not request.claimed or request.error:
            return None
        self.path = request.path
        channel.send_timeout = send_timeout_of(self.listener.detour, self.path)
        return self.path

    def done(self) -> None:
        if self.queued:  # read by next_request and not served here: the usual way
            self.queued = False
            self.listener.add_task(self.channel)
        self.listener.returned(self.channel)


def _may_follow(listener: _Listener, channel: Channel) -> bool:
    """Nothing of the connection is pending and it stays open: its next request may be
    read by the thread that served the last one."""
    return not (
        listener.closed
        or not listener.accepting
        or not channel.connected
        or channel.will_close
        or channel.close_when_flushed
        or channel.client_gone
        or channel.requests
        or channel.request is not None
        or channel.total_outbufs_len
        or channel.streaming != 1
    )


def _readable(channel: Channel, wait: float) -> bool:
    """Bytes to read on the connection within ``wait`` s (not a hang-up: the loop's)."""
    poller = select.poll()
    poller.register(channel.socket.fileno(), select.POLLIN)
    events = poller.poll(int(wait * 1000))
    return bool(events) and events[0][1] == select.POLLIN


class _Listener(UnixWSGIServer):
    """Waitress's Unix server on a socket it is given and never binds itself.

    It decides which connections live (``admitted``), and hands each request its
    detour claimed to that detour, out of the loop: the detour's thread sends the
    answer, and the loop takes the connection back after (``reattach``). A claimed
    request the detour refuses is answered ``503 busy`` by an API worker, unrouted.
    """

    channel_class = Channel

    def __init__(
        self, app: Callable, detour: Detour | None, limits: ConnectionLimits, **kw: Any
    ) -> None:
        self.detour = detour
        self.claims = detour.claims if detour is not None else None
        self.limits = limits
        self.admission: Admission = kw.pop("admission")
        self.last_activity = time.monotonic()
        self.closed = False  # set by UnixServer.close before the trigger's fd is closed
        self.streams_lock = threading.Lock()
        self.returning: list[Channel] = []
        self.peers: dict[int, dict[Channel, None]] = {}  # pid -> its connections, oldest first
        self.peers_lock = threading.Lock()
        self.tasks_given = 0  # requests handed to the worker pool so far
        super().__init__(app, **kw)

    # -- which connections live -------------------------------------------------------

    def admitted(self, channel: Channel) -> None:
        """A connection was just accepted (the loop's thread): make room, bound its peer."""
        pid = channel.peer.pid if channel.peer is not None else None
        if pid is not None:
            with self.peers_lock:
                mine = self.peers.setdefault(pid, {})
                mine[channel] = None
                over = len(mine) - self.admission.per_peer
                others = list(mine)
            if over > 0 and not self._close_idle(others, over, channel):
                log.info("pid %d holds %d connections; refusing another", pid, len(others))
                channel.handle_close()
                return
        limit = self.adj.connection_limit
        over = len(self._map) - (limit - min(self.admission.reserve, limit // 4))
        if over > 0:
            self._close_idle(list(self.active_channels.values()), over, channel)

    def _close_idle(self, channels: Iterable[Channel], count: int, spare: Channel) -> int:
        """Close up to ``count`` idle connections, the ones silent longest first."""
        idle = [c for c in channels if c is not spare and c.idle()]
        oldest = heapq.nsmallest(count, idle, key=lambda c: c.last_activity)
        for channel in oldest:
            channel.handle_close()
        return len(oldest)

    def closed_channel(self, channel: Channel) -> None:  # from its del_channel
        self.last_activity = time.monotonic()
        if channel.peer is None:
            return
        with self.peers_lock:
            mine = self.peers.get(channel.peer.pid)
            if mine is not None and mine.pop(channel, False) is None and not mine:
                del self.peers[channel.peer.pid]

    # -- detoured requests ------------------------------------------------------------

    def add_task(self, channel: Any) -> None:
        if getattr(_detour_thread, "holding", None) is channel:
            return  # read by a detour's thread following its connection: it decides
        request = channel.requests[0] if channel.requests else None
        detour = self.detour
        if detour is not None and request is not None and request.claimed and not request.error:
            job = self._detach(channel)
            refusal = detour.run(job)
            if refusal is None:
                return
            self.returned(channel)  # back to the loop; a worker answers the refusal
            request.error = DetourRefused(refusal)
        if self.tasks_given:  # the first request may have the one thread started so far
            self.grow_pool()
        self.tasks_given += 1
        super().add_task(channel)

    def grow_pool(self) -> None:
        """All ``adj.threads`` workers running (any thread; once they run, a no-op)."""
        dispatcher = self.task_dispatcher
        if len(dispatcher.threads) - dispatcher.stop_count < self.adj.threads:
            dispatcher.set_thread_count(self.adj.threads)

    def _detach(self, channel: Channel) -> _Detached:
        """Out of the loop's map (it is walked every turn) while its request runs."""
        with self.streams_lock:
            channel.streaming += 1
            if channel.streaming == 1:
                self._map.pop(channel._fileno, None)
        return _Detached(self, channel)

    def pull_trigger(self) -> None:
        """Wake the loop; not from a detour's thread while it serves: the loop has nothing
        of a detached connection to do until ``returned`` wakes it, once."""
        if not getattr(_detour_thread, "quiet", False):
            super().pull_trigger()

    def returned(self, channel: Channel) -> None:
        """A detoured request is done and its thread idle (any thread): back to the loop."""
        with self.streams_lock:
            channel.streaming -= 1
            if channel.streaming:
                return  # a pipelined claimed request runs next, still out of the loop
            if self.closed:  # the loop and its trigger are gone (the fd may be reused)
                return
            self.returning.append(channel)
        self.pull_trigger()

    def reattach(self) -> None:
        """Give connections whose requests ended back to the loop (the loop's thread only)."""
        if not self.returning:
            return
        with self.streams_lock:
            back, self.returning = self.returning, []
        for channel in back:
            if channel.streaming == 0 and channel._fileno is not None:
                channel.last_activity = time.time()
                if channel.request is not None:  # a pipelined request half read before
                    channel.request_started = time.monotonic()  # the stream: its clock anew
                self._map[channel._fileno] = channel

    def detached(self) -> list[Channel]:
        """Connections out of the loop now: their detoured requests are running."""
        return [c for c in self.active_channels.values() if c.streaming]


class _AlsoListening(wasyncore.dispatcher):
    """Another listening socket of the same server (hecate.socket's second path,
    ``~/.hecate/daemon.sock``, where hecate-tui looks): what it accepts becomes the
    listener's connection, as if accepted on the first socket, so one set of bounds,
    workers and detours covers both."""

    def __init__(self, listener: _Listener, sock: socket.socket, map: dict[int, Any]) -> None:
        super().__init__(sock, map)
        self.listener = listener
        self.accepting = True

    def readable(self) -> bool:
        listener = self.listener
        return listener.accepting and len(listener._map) < listener.adj.connection_limit

    def writable(self) -> bool:
        return False

    def handle_accept(self) -> None:
        try:
            got = self.accept()
        except OSError:
            log.warning("accept() on %s failed", self.socket, exc_info=True)
            return
        if got is not None:
            listener = self.listener
            listener.channel_class(
                listener, got[0], ("localhost", None), listener.adj, listener._map
            )

    def handle_error(self) -> None:
        log.exception("a second listening socket failed; it is closed, the first serves on")
        self.close()


def _adjustments(workers: int, max_connections: int, channel_timeout: int) -> Adjustments:
    return Adjustments(
        threads=workers,
        connection_limit=max_connections,
        channel_timeout=channel_timeout,
        cleanup_interval=max(1, min(channel_timeout, 10)),
        max_request_header_size=MAX_HEADER_BYTES,
        max_request_body_size=MAX_BODY_BYTES,
        backlog=128,
        ident="hecated",
        clear_untrusted_proxy_headers=False,
        asyncore_use_poll=True,
        expose_tracebacks=False,
    )


def _limits(adj: Adjustments, detour: Detour | None, seconds: float, size: int) -> ConnectionLimits:
    """The connections' bounds; a claimed request's body may be as large as the detour's."""
    if detour is None:
        return ConnectionLimits(linger_seconds=seconds, linger_bytes=size)
    claimed = copy.copy(adj)
    # waitress refuses a body of max_request_body_size bytes or more: one byte more.
    claimed.max_request_body_size = max(MAX_BODY_BYTES, detour.body_limit + 1)
    return ConnectionLimits(seconds, size, detour.send_timeout, claimed)


def _pool(threads: int) -> ThreadedTaskDispatcher:
    """Waitress's worker pool with ``threads`` started (``_Listener.grow_pool`` adds the rest)."""
    pool = ThreadedTaskDispatcher()
    pool.set_thread_count(threads)
    return pool


class UnixServer:
    """Accepts on a handed-in Unix socket; a bounded pool of threads runs the app."""

    def __init__(
        self,
        sock: socket.socket,
        app: Callable,
        *,
        owned_path: Path | None = None,
        workers: int = 16,
        start_workers: int | None = None,
        max_connections: int = MAX_CONNECTIONS,
        admission: Admission | None = None,
        request_deadline: float = REQUEST_DEADLINE,
        linger_seconds: float = LINGER_SECONDS,
        linger_bytes: int = LINGER_BYTES,
        poll_interval: float = 0.5,
        channel_timeout: int = 30,
        grace: float = 30.0,
        detour: Detour | None = None,
        also: Iterable[tuple[socket.socket, Path | None]] = (),
    ) -> None:
        """``workers`` threads run the app (``start_workers`` of them started here, the
        rest by ``grow_workers`` or for the second request); at most ``max_connections``
        connections are open, idle ones closed to keep ``admission.reserve`` places free, and at
        most ``admission.per_peer`` of them one process's; a request must arrive
        whole within ``request_deadline`` s of its first byte; connections idle for
        ``channel_timeout`` s are closed; a refused client still sending is read (and
        ignored) for at most ``linger_seconds`` s and ``linger_bytes`` bytes; ``close``
        waits at most ``grace`` s for requests in flight. Requests ``detour`` claims
        run on its threads, their connections out of the loop (and of the
        ``max_connections`` count) while they run. ``also``: more listening sockets
        served alike, each with the path we bound (None: not ours to unlink)."""
        if sock.family != socket.AF_UNIX:
            raise ValueError("hecated serves on Unix sockets only")
        adj = _adjustments(workers, max_connections, channel_timeout)
        sock.setblocking(False)
        self._map: dict[int, Any] = {}
        self._server = _Listener(
            app,
            detour,
            _limits(adj, detour, linger_seconds, linger_bytes),
            admission=admission or Admission(),
            map=self._map,
            _sock=sock,
            adj=adj,
            sockinfo=(socket.AF_UNIX, socket.SOCK_STREAM, None, None),
            bind_socket=False,
            dispatcher=_pool(workers if start_workers is None else min(start_workers, workers)),
        )
        self.owned_path = owned_path
        self._owned_ino = owned_path.stat().st_ino if owned_path else None
        self._also: list[_AlsoListening] = []
        self._also_owned: list[tuple[Path, int]] = []
        for extra, path in also:
            self._listen_also(extra, path)
        self.poll_interval = poll_interval
        self.request_deadline = request_deadline
        self.grace = grace
        self.heartbeat = time.monotonic()
        self._stop = False
        self._closed = False
        self._closing = threading.Lock()  # a pool grown from another thread, or closed

    def _listen_also(self, sock: socket.socket, path: Path | None) -> None:
        """Serve ``sock`` too, as the first socket is served; unlink ``path`` at close."""
        if sock.family != socket.AF_UNIX:
            raise ValueError("hecated serves on Unix sockets only")
        sock.setblocking(False)
        self._also.append(_AlsoListening(self._server, sock, self._map))
        if path is not None:
            self._also_owned.append((path, path.stat().st_ino))

    def grow_workers(self) -> None:
        """Start the workers ``start_workers`` left out (each start waits for its thread
        to run: under load, milliseconds each, which a cold start's first answer need not
        pay). Safe from any thread; the second request to the pool does it too."""
        with self._closing:
            if not self._closed:
                self._server.grow_pool()

    # -- the serving loop -----------------------------------------------------------------

    def serve(self, tick: Callable[[], None] | None = None) -> None:
        """Serve until ``shutdown``; ``tick`` runs on every turn of the loop.

        ``heartbeat`` is stamped on every turn, so a watchdog can tell a loop
        that turns from one that is stuck.
        """
        next_check = 0.0
        while not self._stop:
            wasyncore.loop(timeout=self.poll_interval, map=self._map, use_poll=True, count=1)
            self._server.reattach()
            self.heartbeat = now = time.monotonic()
            if now >= next_check:  # a walk over every connection: not on every turn
                self._drop_overdue(now)
                next_check = now + OVERDUE_CHECK
            if tick is not None and not self._stop:
                tick()

    def _drop_overdue(self, now: float) -> None:
        for channel in list(self._server.active_channels.values()):
            if channel.will_close or channel.streaming:
                continue
            if channel.overdue(now, self.request_deadline):
                log.info("closing a connection whose request did not arrive in time")
                channel.will_close = True
            elif channel.lingered_out(now):
                log.info("closing a refused connection whose client kept sending")
                channel.will_close = True

    def shutdown(self) -> None:
        """Stop serving; safe from a signal handler and from any thread (one write to a pipe)."""
        self._stop = True
        if self._closed:  # the trigger's fd is closed and its number may be reused
            return
        with contextlib.suppress(OSError, ValueError, AttributeError):
            self._server.pull_trigger()

    def close(self) -> None:
        """Stop accepting, let the requests in flight finish, remove our socket file.

        Idle keep-alive connections are closed at once; a request being received,
        run or answered is finished (for at most ``grace`` seconds), unless its
        client has sent nothing for ``STALLED_AFTER`` seconds.
        """
        with self._closing:  # no worker starts after this: the pool's shutdown stops all
            if self._closed:
                return
            self._closed = True
        server = self._server
        server.accepting = False
        wasyncore.dispatcher.close(server)  # the listener only; the channels go on
        for extra in self._also:
            extra.close()
        deadline = time.monotonic() + self.grace
        # A detoured request (a forwarded stream) may never end by itself: it is cut at
        # once (its source and its client hung up on), its connection closed when back.
        for channel in server.detached():
            channel.will_close = True
            channel.hung_up()
            with contextlib.suppress(OSError):
                channel.socket.shutdown(socket.SHUT_RDWR)
        while server.active_channels and time.monotonic() < deadline:
            now = time.time()  # waitress stamps channels with time.time()
            for channel in list(server.active_channels.values()):
                if not channel.streaming and not channel.busy(now, STALLED_AFTER):
                    channel.will_close = True
            wasyncore.loop(timeout=0.05, map=self._map, use_poll=True, count=1)
            server.reattach()
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
        if server.detour is not None:
            server.detour.close()
        with server.streams_lock:  # a stream still running past the grace never wakes
            server.closed = True  # the loop again: its trigger's fd is closed next
        wasyncore.close_all(self._map)
        if self.owned_path is not None:
            _unlink_if_ours(self.owned_path, self._owned_ino)
        for path, ino in self._also_owned:
            _unlink_if_ours(path, ino)

    @property
    def active_connections(self) -> int:
        return len(self._server.active_channels)

    def idle_for(self) -> float:
        """Seconds with no open connection; 0 while any is open."""
        if self._server.active_channels:
            return 0.0
        return time.monotonic() - self._server.last_activity


def _unlink_if_ours(path: Path, ino: int | None) -> None:
    """Remove the socket file we bound, not one a successor bound in its place."""
    try:
        if path.lstat().st_ino == ino:
            path.unlink()
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("could not remove %s: %s", path, exc)

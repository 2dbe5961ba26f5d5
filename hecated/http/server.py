"""Serving the WSGI app on a Unix socket that is handed in, never created deep inside.

The listening socket comes from outside: from systemd (socket activation) or
from ``bind_unix`` (standalone). It is served by waitress, not Werkzeug's
development server: measured side by side with a raw-socket client
(docs/benchmarks.md, table 0, ``make bench``), waitress's p50 is 1.2 to 2.3x
lower than Werkzeug's threaded server for one client and 2.2 to 4.6x lower for
eight, with up to 3.5x the requests per second; Werkzeug's server has no
keep-alive and gives every connection a thread for its whole life.
Waitress also reads requests in its event loop, so a slow
or silent client holds a connection slot, never a worker thread; it keeps
connections alive, caps the threads, the connections, the header and body
sizes, and closes connections idle past ``channel_timeout``.

We drive waitress's event loop ourselves, one turn at a time, so that every
turn stamps ``heartbeat`` (the systemd watchdog's proof that the loop turns)
and runs the daemon's ``tick``. The server is built from waitress's Unix
server class with the socket handed in; ``waitress.serve``/``create_server``
are never used, because given anything but a socket object they quietly
listen on TCP 0.0.0.0:8080.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import UnixWSGIServer
from waitress.task import ErrorTask, WSGITask

from hecated.http.app import PEER_KEY, Peer

log = logging.getLogger("hecated.http.server")
# waitress warns on every queued task ("Task queue depth is N"): noise, not news.
logging.getLogger("waitress.queue").setLevel(logging.ERROR)

_PEERCRED = struct.Struct("3i")
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024  # api.py refuses anything over 64 KB with a JSON 413
STALLED_AFTER = 2.0  # on shutdown, a half-sent request silent this long is dropped
# A connection costs a slot in waitress's event loop, not a thread, so many may be open;
# what must stay bounded is the time one request may take to arrive (slowloris).
MAX_CONNECTIONS = 1000
REQUEST_DEADLINE = 10.0  # seconds from a request's first byte to its last
# What waitress itself refuses, before the app sees it, in the API's error shape.
PROTOCOL_ERRORS = {
    400: "bad_request",
    413: "body_too_large",
    431: "headers_too_large",
    500: "internal_error",
}


class AlreadyRunningError(RuntimeError):
    """Another daemon already answers on the socket path."""


class SocketPathError(RuntimeError):
    """The socket path is occupied by something that is not a socket."""


def peer_credentials(conn: socket.socket) -> Peer | None:
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None
    return Peer(*_PEERCRED.unpack(raw))


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


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
        if _answers(path):
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


class _Task(WSGITask):
    """Waitress's WSGI task, plus the peer's credentials and sane values for a Unix socket."""

    def get_environment(self) -> dict[str, Any]:
        environ = super().get_environment()
        environ[PEER_KEY] = self.channel.peer
        # Nothing may build URLs from the socket's path.
        environ["SERVER_NAME"] = "localhost"
        environ["SERVER_PORT"] = "0"
        return environ


class _ErrorTask(ErrorTask):
    """Waitress's refusals (malformed request, header or body too large) as our JSON errors."""

    def execute(self) -> None:
        error = self.request.error
        code = PROTOCOL_ERRORS.get(error.code, "bad_request")
        message = f"{error.reason}: {error.body}"
        body = json.dumps({"error": {"code": code, "message": message}}).encode() + b"\n"
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        if hasattr(self, "set_close_on_finish"):  # waitress >= 3
            self.set_close_on_finish()
        else:
            self.response_headers.append(("Connection", "close"))
            self.close_on_finish = True
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):
    """One connection: its peer is read once, when it is accepted, from the kernel."""

    task_class = _Task
    error_task_class = _ErrorTask

    def __init__(self, server: Any, sock: socket.socket, addr: Any, adj: Any, map=None) -> None:
        self.peer = peer_credentials(sock)
        self.request_started = 0.0
        super().__init__(server, sock, addr, adj, map)

    def received(self, data: bytes) -> bool:
        receiving = self.request is not None
        result = super().received(data)
        if not receiving and self.request is not None:
            self.request_started = time.monotonic()
        return result

    def overdue(self, now: float, deadline: float) -> bool:
        """A request still arriving ``deadline`` seconds after its first byte: a slowloris."""
        return self.request is not None and now - self.request_started > deadline

    def del_channel(self, map=None) -> None:
        super().del_channel(map)
        self.server.last_activity = time.monotonic()

    def busy(self, now: float, stall: float) -> bool:
        """A request being received, run or answered, and not stalled for ``stall`` seconds.

        A request whose bytes are still arriving counts as in flight (a client that
        was mid-send when we were told to stop gets its answer), unless nothing has
        arrived for ``stall`` seconds: a slow client cannot hold up a shutdown.
        """
        if self.requests or self.total_outbufs_len:
            return True
        return self.request is not None and now - self.last_activity < stall


class _Listener(UnixWSGIServer):
    """Waitress's Unix server on a socket it is given and never binds itself."""

    channel_class = _Channel
    last_activity = 0.0


class UnixServer:
    """Accepts on a handed-in Unix socket; a bounded pool of threads runs the app."""

    def __init__(
        self,
        sock: socket.socket,
        app: Callable,
        *,
        owned_path: Path | None = None,
        workers: int = 16,
        max_connections: int = MAX_CONNECTIONS,
        request_deadline: float = REQUEST_DEADLINE,
        poll_interval: float = 0.5,
        channel_timeout: int = 30,
        grace: float = 30.0,
    ) -> None:
        """``workers`` threads run the app; at most ``max_connections`` connections
        are open (beyond that waitress stops accepting and the kernel's backlog holds
        them); a request must arrive whole within ``request_deadline`` s of its first
        byte; connections idle for ``channel_timeout`` s are closed; ``close`` waits
        at most ``grace`` s for requests in flight."""
        if sock.family != socket.AF_UNIX:
            raise ValueError("hecated serves on Unix sockets only")
        adj = Adjustments(
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
        sock.setblocking(False)
        self._map: dict[int, Any] = {}
        self._server = _Listener(
            app,
            map=self._map,
            _sock=sock,
            adj=adj,
            sockinfo=(socket.AF_UNIX, socket.SOCK_STREAM, None, None),
            bind_socket=False,
        )
        self._server.last_activity = time.monotonic()
        self.owned_path = owned_path
        self._owned_ino = owned_path.stat().st_ino if owned_path else None
        self.poll_interval = poll_interval
        self.request_deadline = request_deadline
        self.grace = grace
        self.heartbeat = time.monotonic()
        self._stop = False
        self._closed = False

    # -- the serving loop -----------------------------------------------------------------

    def serve(self, tick: Callable[[], None] | None = None) -> None:
        """Serve until ``shutdown``; ``tick`` runs on every turn of the loop.

        ``heartbeat`` is stamped on every turn, so a watchdog can tell a loop
        that turns from one that is stuck.
        """
        while not self._stop:
            wasyncore.loop(timeout=self.poll_interval, map=self._map, use_poll=True, count=1)
            self.heartbeat = time.monotonic()
            self._drop_overdue(self.heartbeat)
            if tick is not None and not self._stop:
                tick()

    def _drop_overdue(self, now: float) -> None:
        for channel in list(self._server.active_channels.values()):
            if channel.overdue(now, self.request_deadline) and not channel.will_close:
                log.info("closing a connection whose request did not arrive in time")
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
        if self._closed:
            return
        self._closed = True
        server = self._server
        server.accepting = False
        wasyncore.dispatcher.close(server)  # the listener only; the channels go on
        deadline = time.monotonic() + self.grace
        while server.active_channels and time.monotonic() < deadline:
            now = time.time()  # waitress stamps channels with time.time()
            for channel in list(server.active_channels.values()):
                if not channel.busy(now, STALLED_AFTER):
                    channel.will_close = True
            wasyncore.loop(timeout=0.05, map=self._map, use_poll=True, count=1)
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
        wasyncore.close_all(self._map)
        if self.owned_path is not None:
            _unlink_if_ours(self.owned_path, self._owned_ino)

    # -- state for the daemon -----------------------------------------------------------

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

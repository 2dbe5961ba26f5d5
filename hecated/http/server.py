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
import copy
import errno
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import UnixWSGIServer
from waitress.task import ErrorTask, WSGITask

from hecated.http.forward import ABORT_KEY, BUSY_KEY, ON_CLOSE_KEY, PREFIX, ForwardSettings
from hecated.protocol import (
    PEER_ENVIRON_KEY,
    Peer,
    accepts,
    code_of_status,
    encode,
    error_body,
    error_headers,
)

log = logging.getLogger("hecated.http.server")
# waitress warns on every queued task ("Task queue depth is N"): noise, not news.
logging.getLogger("waitress.queue").setLevel(logging.ERROR)

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024  # api.py refuses anything over 64 KB with a JSON 413
STALLED_AFTER = 2.0  # on shutdown, a half-sent request silent this long is dropped
# A connection costs a slot in waitress's event loop, not a thread, so many may be open;
# what must stay bounded is the time one request may take to arrive (slowloris).
MAX_CONNECTIONS = 1000
REQUEST_DEADLINE = 10.0  # seconds from a request's first byte to its last
# Lingering close (nginx's lingering_close): after refusing a request whose bytes are
# still arriving, keep reading and discarding them, so the client finishes sending and
# reads the answer instead of a broken pipe; for at most this long and this much.
LINGER_SECONDS = 10.0
LINGER_BYTES = 64 * 1024 * 1024


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


def _is_stream(request: Any) -> bool:
    return getattr(request, "hecate_stream", False)


class _Parser(HTTPRequestParser):
    """Waitress's parser; a forwarded request (``/plugin/...``) may carry a larger body.

    The limit is chosen once the request line is read, before the body's size is
    checked: the registry API keeps its own limit, forwarded requests get theirs.
    Waitress spools a large body to a temp file, so it is never held whole.
    """

    stream_adj: Adjustments | None = None

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        if self.stream_adj is not None and self.path.startswith(PREFIX):
            self.adj = self.stream_adj


class _Task(WSGITask):
    """Waitress's WSGI task, plus the peer's credentials and sane values for a Unix socket.

    A forwarded request's task flushes every write at once (waitress otherwise
    holds small writes until 18 KB gather: an SSE event would wait), and may be
    aborted: a plugin that dies mid-answer ends the client's stream without the
    chunked terminator, so the client sees a cut answer, never a complete one.
    """

    aborted = False

    def get_environment(self) -> dict[str, Any]:
        environ = super().get_environment()
        environ[PEER_ENVIRON_KEY] = self.channel.peer
        # Nothing may build URLs from the socket's path.
        environ["SERVER_NAME"] = "localhost"
        environ["SERVER_PORT"] = "0"
        if _is_stream(self.request) or getattr(self.request, "hecate_busy", False):
            environ[BUSY_KEY] = getattr(self.request, "hecate_busy", False)
            environ[ABORT_KEY] = self.abort
            environ[ON_CLOSE_KEY] = self.channel.on_close.append
        return environ

    def abort(self) -> None:
        """End the answer abruptly: close the connection after what was written."""
        self.aborted = True

    def write(self, data: bytes) -> None:
        super().write(data)
        if _is_stream(self.request):
            channel = self.channel
            with channel.outbuf_lock:
                channel._flush_exception(channel._flush_some, do_close=False)
            if channel.total_outbufs_len:
                channel.server.pull_trigger()

    def finish(self) -> None:
        if self.aborted and self.wrote_header:
            self.close_on_finish = True  # no "0\r\n\r\n": the client must see the cut
            return
        super().finish()


class _ErrorTask(ErrorTask):
    """Waitress's refusals (malformed request, header or body too large) in the API's
    envelope, built by the same function as the app's errors."""

    def execute(self) -> None:
        error = self.request.error
        self.channel.linger_on_close = True  # the refused request may still be arriving
        code = code_of_status(error.code)
        body = encode(error_body(code, f"{error.reason}: {error.body}"))
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.response_headers.extend(error_headers(code))
        if hasattr(self, "set_close_on_finish"):  # waitress >= 3
            self.set_close_on_finish()
        else:
            self.response_headers.append(("Connection", "close"))
            self.close_on_finish = True
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):
    """One connection: its peer is read once, when it is accepted, from the kernel.

    A connection closed after one of the serving layer's own refusals (body or
    headers too large, a malformed request) closes the lingering way: the answer
    is flushed, our half is shut (the client reads EOF after the answer), and
    what the client still sends is read and thrown away until it closes its
    half, or ``linger_bytes``/``linger_seconds`` run out. Closing at once would
    make the kernel reset a client still sending its body, which then never
    reads the 413. Other closes (``Connection: close`` after a request read
    whole) stay as waitress makes them.
    """

    task_class = _Task
    error_task_class = _ErrorTask
    linger_seconds = LINGER_SECONDS
    linger_bytes = LINGER_BYTES

    def __init__(self, server: Any, sock: socket.socket, addr: Any, adj: Any, map=None) -> None:
        self.peer = Peer.of(sock)
        self.request_started = 0.0
        self.linger_on_close = False
        self.lingering_since: float | None = None
        self.linger_left = 0
        # What to run when the connection closes: a forwarded stream hangs up on its plugin.
        self.on_close: list[Callable[[], None]] = []
        super().__init__(server, sock, addr, adj, map)

    def handle_close(self) -> None:
        hooks, self.on_close = self.on_close, []
        for hook in hooks:
            hook()
        super().handle_close()

    # -- lingering close ----------------------------------------------------------------

    def handle_write(self) -> None:
        if self.requests and self.total_outbufs_len and _is_stream(self.requests[0]):
            # What a forwarded stream's flush left behind goes now, not at 18 KB.
            self._flush_exception(self._flush_some_if_lockable)
        if self.lingering_since is not None:  # nothing left to send: only a forced close
            if self.will_close:
                self.handle_close()
            return
        if self.linger_on_close and self.close_when_flushed and not self.will_close:
            # As waitress does (no task runs once close_when_flushed is set), then linger.
            _, failed = self._flush_exception(self._flush_some)
            if failed:
                self.handle_close()
            elif not self.total_outbufs_len:
                self.close_when_flushed = False
                self._linger()
            return
        super().handle_write()

    def _linger(self) -> None:
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError:
            self.will_close = True
            self.handle_close()
            return
        self.lingering_since = time.monotonic()
        self.linger_left = self.linger_bytes
        if self.request is not None:  # whatever the parser made of the unread body
            self.request.close()
            self.request = None

    def readable(self) -> bool:
        if self.lingering_since is not None:
            return not self.will_close
        if (
            len(self.requests) == 1
            and _is_stream(self.requests[0])
            and not (self.will_close or self.close_when_flushed)
        ):
            # Waitress stops polling a connection while its request runs; a forwarded
            # stream's client that hangs up must be seen, so its plugin is hung up on.
            return True
        return super().readable()

    def handle_read(self) -> None:
        if self.lingering_since is None:
            super().handle_read()
            return
        try:
            data = self.recv(self.adj.recv_bytes)  # b"" at EOF: wasyncore closed us already
        except OSError:
            self.handle_close()
            return
        self.last_activity = time.time()
        self.linger_left -= len(data)
        if data and (self.linger_left <= 0 or self.lingered_out(time.monotonic())):
            self.handle_close()

    def lingered_out(self, now: float) -> bool:
        """Lingering for longer than ``linger_seconds``: close whatever the client does."""
        return self.lingering_since is not None and now - self.lingering_since > self.linger_seconds

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


class _StreamJob:
    """One forwarded request on a thread of its own; frees its place in the cap when done.

    A thread per forwarded request, started when it arrives and ended with it:
    the cap (``forward_streams``) bounds how many run at once, and a daemon with
    no stream open holds no thread for them (a pool started up front would hold
    256 idle threads for ever).
    """

    def __init__(self, listener: _Listener, channel: _Channel) -> None:
        self.listener = listener
        self.channel = channel

    def start(self) -> None:
        thread = threading.Thread(target=self.service, name="hecated-forward", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: run on an API worker, as a refusal
            self.listener.stream_done()
            self.channel.requests[0].hecate_stream = False
            self.channel.requests[0].hecate_busy = True
            self.listener.task_dispatcher.add_task(self.channel)

    def service(self) -> None:
        try:
            self.channel.service()
        except BaseException:
            log.exception("a forwarded request failed")
        finally:
            self.channel.on_close = []
            self.listener.stream_done()


class _Listener(UnixWSGIServer):
    """Waitress's Unix server on a socket it is given and never binds itself.

    Forwarded requests (``/plugin/...``) run on threads of their own, up to the
    stream cap, so a plugin's long-lived stream never holds one of the registry
    API's workers; past the cap, the request runs on an API worker, which
    answers ``503 busy`` at once.
    """

    channel_class = _Channel
    last_activity = 0.0
    streams = False  # forwarding is served
    max_streams = 0
    streams_open = 0
    streams_lock = threading.Lock()

    def add_task(self, channel: Any) -> None:
        request = channel.requests[0] if channel.requests else None
        if (
            self.streams
            and request is not None
            and not request.error
            and getattr(request, "path", "").startswith(PREFIX)
        ):
            with self.streams_lock:
                room = self.streams_open < self.max_streams
                if room:
                    self.streams_open += 1
            if room:
                request.hecate_stream = True
                _StreamJob(self, channel).start()
                return
            request.hecate_busy = True
        super().add_task(channel)

    def stream_done(self) -> None:
        with self.streams_lock:
            self.streams_open -= 1


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
        linger_seconds: float = LINGER_SECONDS,
        linger_bytes: int = LINGER_BYTES,
        poll_interval: float = 0.5,
        channel_timeout: int = 30,
        grace: float = 30.0,
        forward: ForwardSettings | None = None,
    ) -> None:
        """``workers`` threads run the app; at most ``max_connections`` connections
        are open (beyond that waitress stops accepting and the kernel's backlog holds
        them); a request must arrive whole within ``request_deadline`` s of its first
        byte; connections idle for ``channel_timeout`` s are closed; a refused client
        still sending is read (and ignored) for at most ``linger_seconds`` s and
        ``linger_bytes`` bytes; ``close`` waits at most ``grace`` s for requests in
        flight. With ``forward``, ``/plugin/...`` requests run on a thread each, at most
        ``forward.max_streams`` at once, and may carry ``forward.body_limit`` bytes."""
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
        # This server's lingering bounds, on a subclass of its own (tests shrink them).
        bounds: dict[str, Any] = {"linger_seconds": linger_seconds, "linger_bytes": linger_bytes}
        if forward is not None:
            stream_adj = copy.copy(adj)
            stream_adj.max_request_body_size = max(MAX_BODY_BYTES, forward.body_limit + 1)
            bounds["parser_class"] = type("_Parser", (_Parser,), {"stream_adj": stream_adj})
            self._server.streams = True
            self._server.max_streams = forward.max_streams
            self._server.streams_lock = threading.Lock()
        self._server.channel_class = type("_Channel", (_Channel,), bounds)
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
            if channel.will_close:
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
                # A forwarded stream may never end by itself: it is cut at once.
                streaming = channel.requests and _is_stream(channel.requests[0])
                if streaming or not channel.busy(now, STALLED_AFTER):
                    channel.will_close = True
            wasyncore.loop(timeout=0.05, map=self._map, use_poll=True, count=1)
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
        wasyncore.close_all(self._map)
        if self.owned_path is not None:
            _unlink_if_ours(self.owned_path, self._owned_ino)

    # -- state for the daemon -----------------------------------------------------------

    @property
    def open_streams(self) -> int:
        """Forwarded requests being served now (at most ``forward.max_streams``)."""
        return self._server.streams_open

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

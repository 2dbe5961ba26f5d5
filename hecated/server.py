"""Serving the WSGI app on a Unix socket that is handed in, never created deep inside.

The listening socket comes from outside: from systemd (socket activation) or
from ``bind_unix`` (standalone). The server only accepts on it, hands each
connection to a bounded pool of worker threads, and on shutdown lets the
requests in flight finish. It never listens on TCP.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler

from .api import PEER_KEY, Peer

log = logging.getLogger("hecated.server")

_PEERCRED = struct.Struct("3i")
BUSY_BODY = b'{"error":{"code":"busy","message":"too many connections; retry shortly"}}\n'
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(BUSY_BODY)).encode() + b"\r\nConnection: close\r\n"
    b"Retry-After: 1\r\n\r\n" + BUSY_BODY
)


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


class RequestHandler(WSGIRequestHandler):
    """Werkzeug's handler, plus the peer's credentials and sane values for a Unix socket."""

    protocol_version = "HTTP/1.1"
    timeout = 30  # a slow or silent client cannot hold a worker for ever

    def make_environ(self) -> dict[str, Any]:
        environ = super().make_environ()
        environ[PEER_KEY] = peer_credentials(self.connection)
        # Werkzeug fills these from the path of the socket; nothing may build URLs from them.
        environ["SERVER_NAME"] = "localhost"
        environ["SERVER_PORT"] = "0"
        return environ

    def address_string(self) -> str:
        return "unix"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug('"%s" %s %s', self.requestline, code, size)

    def log(self, type: str, message: str, *args: Any) -> None:
        getattr(log, type if type in ("debug", "info", "warning", "error") else "info")(
            message, *args
        )


class UnixServer(BaseWSGIServer):
    """Accepts on a handed-in Unix socket; a bounded pool of threads serves connections."""

    multithread = True

    def __init__(
        self,
        sock: socket.socket,
        app: Callable,
        *,
        owned_path: Path | None = None,
        workers: int = 16,
        queue: int = 64,
        poll_interval: float = 0.5,
    ) -> None:
        name = sock.getsockname()
        name = name.decode(errors="replace") if isinstance(name, bytes) else name
        super().__init__(f"unix://{name}", 0, app, handler=RequestHandler, fd=sock.fileno())
        sock.close()  # Werkzeug serves a dup of it
        self.socket.setblocking(False)
        self.owned_path = owned_path
        self._owned_ino = owned_path.stat().st_ino if owned_path else None
        self.poll_interval = poll_interval
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hecated-worker")
        self._slots = threading.BoundedSemaphore(workers + queue)
        self._active = 0
        self._active_lock = threading.Lock()
        self.last_activity = time.monotonic()
        self.heartbeat = time.monotonic()
        self._stop = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- the serving loop -----------------------------------------------------------------

    def serve(self, tick: Callable[[], None] | None = None) -> None:
        """Accept until ``shutdown``; ``tick`` runs on every turn of the loop.

        ``heartbeat`` is stamped on every turn, so a watchdog can tell a loop
        that turns from one that is stuck.
        """
        with selectors.DefaultSelector() as sel:
            sel.register(self.socket, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stop:
                for key, _ in sel.select(self.poll_interval):
                    if key.fileobj is self.socket:
                        self._handle_request_noblock()
                    else:
                        _drain(self._wake_r)
                self.heartbeat = time.monotonic()
                if tick is not None and not self._stop:
                    tick()

    def shutdown(self) -> None:
        """Stop accepting; safe from a signal handler and from any thread."""
        self._stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Close the listener, let the requests in flight finish, remove our socket file."""
        self.server_close()
        self._pool.shutdown(wait=True)
        if self.owned_path is not None:
            _unlink_if_ours(self.owned_path, self._owned_ino)
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- connections --------------------------------------------------------------------

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = self.socket.accept()
        conn.setblocking(True)
        return conn, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _refuse_busy(request)
            self.shutdown_request(request)
            return
        with self._active_lock:
            self._active += 1
        try:
            self._pool.submit(self._serve_connection, request, client_address)
        except RuntimeError:  # the pool is shutting down
            self._done(request)

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            log.exception("error while serving a connection")
        finally:
            self._done(request)

    def _done(self, request: Any) -> None:
        self.shutdown_request(request)
        with self._active_lock:
            self._active -= 1
            self.last_activity = time.monotonic()
        self._slots.release()

    @property
    def active_connections(self) -> int:
        with self._active_lock:
            return self._active

    def idle_for(self) -> float:
        """Seconds with no open connection; 0 while any is open."""
        with self._active_lock:
            return 0.0 if self._active else time.monotonic() - self.last_activity


def _refuse_busy(conn: socket.socket) -> None:
    try:
        conn.settimeout(1.0)
        conn.sendall(BUSY_RESPONSE)
    except OSError:
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _unlink_if_ours(path: Path, ino: int | None) -> None:
    """Remove the socket file we bound, not one a successor bound in its place."""
    try:
        if path.lstat().st_ino == ino:
            path.unlink()
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("could not remove %s: %s", path, exc)

"""Connections to plugins: the one connect, and the pool of kept-alive ones.

``connect_plugin`` is the only place the wing opens a connection to a plugin's
socket, and it is the run-state room's (``core.runstate.connect_plugin``): only
``ROOT/NAME/sockets/api.sock`` is ever reached, through directory fds that refuse
symlinks and other users' files, connected to through ``/proc/self/fd`` so no
symlink swapped in above it can redirect the connect, and only when the process
that accepts runs as this user (``SO_PEERCRED``). Here its failures become the
wing's errors, each with the status a client should see.
"""

from __future__ import annotations

import select
import socket
import threading
import time

from hecated.core import runstate
from hecated.core.errors import BusyError, UnsafePathError
from hecated.core.layout import Layout
from hecated.http.forwarding.errors import (
    PluginNotListeningError,
    PluginTimeoutError,
    PluginUnreachableError,
)
from hecated.http.forwarding.wire import Reply, request_head

# Anything at all to read, or the far end gone: not a connection to send a request on.
_NOT_QUIET = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR | select.POLLNVAL
_NOT_QUIET |= getattr(select, "POLLRDHUP", 0)


def connect_plugin(layout: Layout, namespace: str, timeout: float) -> socket.socket:
    """A connected socket to ``ROOT/namespace/sockets/api.sock``, never anything else."""
    try:
        return runstate.connect_plugin(layout, namespace, timeout)
    except UnsafePathError as exc:
        raise PluginUnreachableError(f"plugin {namespace!r} refused: {exc.message}") from None
    except FileNotFoundError:
        raise PluginNotListeningError(f"plugin {namespace!r} has no socket") from None
    except TimeoutError:
        raise PluginTimeoutError(f"plugin {namespace!r} did not accept in time") from None
    except ConnectionRefusedError:  # a socket file nothing listens on: a stopped plugin's
        raise PluginNotListeningError(
            f"plugin {namespace!r} is not answering: nothing listens on its socket"
        ) from None
    except BlockingIOError:  # EAGAIN: it listens, but its queue of connections is full
        raise BusyError(
            f"plugin {namespace!r} is not accepting more connections now; retry shortly"
        ) from None
    except OSError as exc:
        raise PluginUnreachableError(
            f"plugin {namespace!r} is not answering: {exc.strerror or exc}"
        ) from None


def quiet(sock: socket.socket) -> bool:
    """Nothing to read on ``sock`` and its far end still open, now (never waits)."""
    poller = select.poll()
    try:
        poller.register(sock, _NOT_QUIET)
    except (OSError, ValueError):  # closed already
        return False
    return not poller.poll(0)


class Connection:
    """One connection to a plugin: a request's head sent in one piece (``wire``), its
    answer read off the same socket. ``raw`` is the socket (timeouts, hanging up)."""

    def __init__(self, sock: socket.socket) -> None:
        self.raw = sock

    def send_head(self, method: str, target: str, headers: list[tuple[str, str]]) -> None:
        """The request line and headers; ``ValueError`` for what cannot be sent as is."""
        self.raw.sendall(request_head(method, target, headers))

    def send(self, data: bytes) -> None:
        self.raw.sendall(data)

    def getresponse(self, method: str) -> Reply:
        """The answer, its head read (``TimeoutError``, ``OSError``, ``BadReplyError``)."""
        reply = Reply(self.raw, method)
        reply.begin()
        return reply

    def discard(self) -> None:
        self.raw.close()


class Pool:
    """Kept-alive connections to plugins, for bodiless GET/HEAD/OPTIONS.

    A new connection per request costs a connect and, in many plugins, a thread:
    more than the request itself. A connection goes back here only after an answer
    read to its end that did not say it closes. One idle for ``max_idle`` seconds
    is closed by a reaper thread, whether or not another request comes (a plugin
    must not hold a connection, and often a thread, for a client long gone); the
    reaper runs only while the pool holds a connection.
    """

    def __init__(self, per_plugin: int = 8, max_idle: float = 30.0) -> None:
        self.per_plugin = per_plugin
        self.max_idle = max_idle
        self._idle: dict[str, list[tuple[float, Connection]]] = {}
        self._cond = threading.Condition()
        self._reaping = False

    def take(self, namespace: str) -> Connection | None:
        """A kept-alive connection to ``namespace`` fit to carry a request, or None.

        One the plugin has written to since its last answer (an unrequested answer,
        or its close) is never used: the next request would read those bytes as its
        own answer, and every later answer on it would be shifted by one.
        """
        now = time.monotonic()
        stale: list[Connection] = []
        found = None
        with self._cond:
            idle = self._idle.get(namespace, [])
            while idle:
                since, conn = idle.pop()
                if now - since < self.max_idle and quiet(conn.raw):
                    found = conn
                    break
                stale.append(conn)
        for conn in stale:
            conn.discard()
        return found

    def give(self, namespace: str, conn: Connection) -> None:
        with self._cond:
            idle = self._idle.setdefault(namespace, [])
            if len(idle) < self.per_plugin:
                idle.append((time.monotonic(), conn))
                if not self._reaping:
                    self._reaping = self._start_reaper()
                return
        conn.discard()

    def _start_reaper(self) -> bool:
        thread = threading.Thread(target=self._reap, name="hecated-pool-reaper", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: ``take`` still drops stale ones
            return False
        return True

    def _reap(self) -> None:
        """Close connections idle past ``max_idle``; end once none is left."""
        while True:
            with self._cond:
                now = time.monotonic()
                stale = [
                    c for idle in self._idle.values() for t, c in idle if now - t >= self.max_idle
                ]
                for name in list(self._idle):
                    kept = [(t, c) for t, c in self._idle[name] if now - t < self.max_idle]
                    if kept:
                        self._idle[name] = kept
                    else:
                        del self._idle[name]
                oldest = min((t for idle in self._idle.values() for t, _ in idle), default=None)
                if oldest is None and not stale:
                    self._reaping = False
                    return
            for conn in stale:
                conn.discard()
            if oldest is not None:
                with self._cond:
                    self._cond.wait(max(0.0, oldest + self.max_idle - time.monotonic()))

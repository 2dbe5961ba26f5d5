"""Forwarding ``/plugin/{name}/{rest}`` to a plugin's own socket, streamed both ways.

Clients of the Hecate ecosystem (hecate-web, containers given only the
primary's socket directory) reach every plugin through the primary's one
socket. The serving layer (``server.py``) runs these requests on a bounded
pool of their own, so a long-lived stream never holds one of the registry
API's workers; this module turns one such request into one request on the
plugin's ``sockets/api.sock`` and streams the answer back as it arrives.

Only ``ROOT/NAME/sockets/api.sock`` is ever reached: the name passes the name
rules before it touches a path, and the socket is reached through directory
fds opened without following symlinks, then connected to through
``/proc/self/fd`` so no symlink swapped in above it can redirect the connect.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from hecated.core.errors import HecateError, NotFoundError, UnsafePathError
from hecated.core.files import connect_unix_at, open_dir, open_root, opened
from hecated.core.layout import SOCKET_NAME, SOCKETS_DIR, Layout
from hecated.http.streams import ABORT_KEY, BUSY_KEY, ON_CLOSE_KEY, PREFIX, ForwardSettings
from hecated.protocol import Code, Peer

log = logging.getLogger("hecated.http.forward")

PEER_PID_HEADER = "X-Hecate-Peer-Pid"
PEER_UID_HEADER = "X-Hecate-Peer-Uid"
# Requests that may go over a kept-alive connection (and be sent again on a new one
# when the plugin had closed it): no body, nothing a second sending could repeat.
REUSABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CHUNK = 64 * 1024  # bytes read or sent at a time: nothing is held whole


# RFC 9110 7.6.1: meaningful for one connection only, never forwarded. Host is ours
# to set, the peer headers are ours to vouch for (a client must not forge them).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
NOT_FORWARDED = HOP_BY_HOP | {
    "host",
    "content-length",
    "expect",
    PEER_PID_HEADER.lower(),
    PEER_UID_HEADER.lower(),
}


class PluginUnreachableError(HecateError):
    """No socket, nothing accepting on it, or the connection reset before an answer."""

    code = Code.PLUGIN_UNREACHABLE


class PluginTimeoutError(HecateError):
    """The plugin accepted but sent no first byte in time."""

    code = Code.PLUGIN_TIMEOUT


class BusyError(HecateError):
    code = Code.BUSY


class BodyTooLargeError(HecateError):
    code = Code.BODY_TOO_LARGE


class _BadRequest(HecateError):
    code = Code.BAD_REQUEST


class _Index(Protocol):
    """What forwarding needs of the registry: its public read methods only."""

    layout: Layout

    def get(self, name: str) -> Any: ...


def candidates(name: str) -> list[str]:
    """The registry name itself, then the two conventions clients use, in order."""
    return [name, f"hecate-app-{name}d", f"hecate-{name}d"]


def request_headers(environ: dict[str, Any], peer: Peer) -> list[tuple[str, str]]:
    """End-to-end headers of the client's request, plus Host and the peer's credentials."""
    listed = {t.strip().lower() for t in environ.get("HTTP_CONNECTION", "").split(",")}
    out = [("Host", "localhost")]
    if environ.get("CONTENT_TYPE"):
        out.append(("Content-Type", environ["CONTENT_TYPE"]))
    for key, value in environ.items():
        if not key.startswith("HTTP_"):
            continue
        name = key[5:].replace("_", "-").title()
        if name.lower() in NOT_FORWARDED or name.lower() in listed:
            continue
        out.append((name, value))
    out.append((PEER_PID_HEADER, str(peer.pid)))
    out.append((PEER_UID_HEADER, str(peer.uid)))
    return out


def response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The plugin's answer's headers without the hop-by-hop ones (WSGI forbids them)."""
    pairs = list(headers)
    listed = {
        t.strip().lower() for k, v in pairs if k.lower() == "connection" for t in v.split(",")
    }
    return [(k, v) for k, v in pairs if k.lower() not in HOP_BY_HOP and k.lower() not in listed]


def target(environ: dict[str, Any], rest: str) -> str:
    """``/{rest}`` with the query string, taken raw when the server kept the raw URI.

    The raw request target keeps percent-escapes (``%2F``) the plugin may rely on;
    without it (a test client) the decoded path is quoted again.
    """
    raw = environ.get("REQUEST_URI")
    if raw:
        path = urlsplit(raw).path if not raw.startswith("/") else raw.split("?", 1)[0]
        if path.startswith(PREFIX):
            _, sep, tail = path[len(PREFIX) :].partition("/")
            if sep:
                query = raw.partition("?")[2]
                return "/" + tail + (f"?{query}" if query else "")
    query = environ.get("QUERY_STRING", "")
    return "/" + quote(rest, safe="/:@!$&'()*+,;=-._~") + (f"?{query}" if query else "")


class Forwarder:
    """Resolves a name to a plugin socket and relays one request over it."""

    def __init__(self, index: _Index, settings: ForwardSettings | None = None) -> None:
        self.index = index
        self.layout = index.layout
        self.settings = settings or ForwardSettings()
        self.pool = _Pool(max_idle=self.settings.pool_idle)

    # -- where ---------------------------------------------------------------------------

    def resolve(self, name: str) -> str:
        """The namespace ``name`` stands for: registered, or a real directory under the root.

        The name is checked by the name rules first (a bad one is a 400); each
        convention that breaks them (too long for a socket path) is skipped.
        """
        self.layout.check_plugin_name(name)
        for candidate in candidates(name):
            if not self.layout.is_plugin_name(candidate):
                continue
            if self.index.get(candidate) is not None or self._is_namespace(candidate):
                return candidate
        raise NotFoundError(f"no plugin named {name!r}")

    def _is_namespace(self, name: str) -> bool:
        try:
            st = os.lstat(self.layout.namespace_str(name))
        except OSError:
            return False
        # A symlink in a namespace's place is that name's (and refused when reached):
        # whether the index has caught up with it must not change the answer.
        return stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)

    def connect(self, namespace: str) -> socket.socket:
        """A connected socket to ``ROOT/namespace/sockets/api.sock``, never anything else."""
        try:
            with (
                opened(open_root(self.layout.root, create=False)) as root_fd,
                opened(open_dir(root_fd, namespace)) as ns_fd,
                opened(open_dir(ns_fd, SOCKETS_DIR)) as sockets_fd,
            ):
                return connect_unix_at(sockets_fd, SOCKET_NAME, self.settings.first_byte_timeout)
        except UnsafePathError as exc:
            raise PluginUnreachableError(f"plugin {namespace!r} refused: {exc.message}") from None
        except FileNotFoundError:
            raise PluginUnreachableError(f"plugin {namespace!r} has no socket") from None
        except TimeoutError:
            raise PluginTimeoutError(f"plugin {namespace!r} did not accept in time") from None
        except OSError as exc:
            raise PluginUnreachableError(
                f"plugin {namespace!r} is not answering: {exc.strerror or exc}"
            ) from None

    # -- the request -----------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], peer: Peer, name: str, rest: str) -> Callable:
        """Relay the request; return the WSGI app that streams the plugin's answer.

        Everything that can fail before the plugin's first byte raises a
        ``HecateError`` (the app answers it in the envelope); after that, a
        failure only ends the client's stream.
        """
        if environ.get(BUSY_KEY):
            raise BusyError(
                f"{self.settings.max_streams} forwarded streams are open; retry shortly"
            )
        namespace = self.resolve(name)
        length = _content_length(environ)
        if length > self.settings.body_limit:
            raise BodyTooLargeError(
                f"request body is {length} bytes; at most {self.settings.body_limit} forwarded"
            )
        method = environ.get("REQUEST_METHOD", "GET")
        reusable = length == 0 and method in REUSABLE_METHODS
        conn = self.pool.take(namespace) if reusable else None
        if conn is not None:  # a kept-alive connection the plugin may have closed since
            conn.raw.settimeout(self.settings.first_byte_timeout)
            try:
                response = self._send(conn, environ, peer, rest, length, namespace)
            except PluginUnreachableError:
                conn.discard()
                conn = None  # once more, on a new connection
            except BaseException:
                conn.discard()
                raise
        if conn is None:
            conn = _Connection(self.connect(namespace))
            try:
                response = self._send(conn, environ, peer, rest, length, namespace)
            except BaseException:
                conn.discard()
                raise
        give_back = self.pool.give if reusable else None
        return _Relay(conn, response, namespace, self.settings.idle_timeout, give_back)

    def _send(
        self,
        conn: _Connection,
        environ: dict[str, Any],
        peer: Peer,
        rest: str,
        length: int,
        namespace: str,
    ) -> http.client.HTTPResponse:
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            conn.putrequest(
                method, target(environ, rest), skip_host=True, skip_accept_encoding=True
            )
            for key, value in request_headers(environ, peer):
                conn.putheader(key, value)
            if length or method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(length))
        except (ValueError, http.client.InvalidURL) as exc:
            raise _BadRequest(f"cannot forward: {exc}") from None
        try:
            conn.endheaders()
            _send_body(conn, environ.get("wsgi.input"), length)
        except TimeoutError:
            raise PluginTimeoutError(f"plugin {namespace!r} did not read the request") from None
        except OSError:
            pass  # it may have answered without reading the body: see what it says
        try:
            return conn.getresponse()
        except TimeoutError:
            raise PluginTimeoutError(
                f"plugin {namespace!r} sent nothing within {self.settings.first_byte_timeout:g} s"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise PluginUnreachableError(
                f"plugin {namespace!r} closed the connection before answering ({exc!r})"
            ) from None


class _Connection(http.client.HTTPConnection):
    """One request on a socket that is already connected (``connect`` is never needed)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__("localhost")
        self.sock = sock
        # http.client forgets ``sock`` once an answer that ends with the connection
        # starts; the relay still needs it (timeouts, hanging up), so it is kept here.
        self.raw = sock

    def connect(self) -> None:  # the socket was closed: there is no reconnecting
        raise ConnectionResetError("the plugin's connection is closed")

    def discard(self) -> None:
        self.close()
        self.raw.close()


class _Pool:
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
        self._idle: dict[str, list[tuple[float, _Connection]]] = {}
        self._cond = threading.Condition()
        self._reaping = False

    def take(self, namespace: str) -> _Connection | None:
        now = time.monotonic()
        stale: list[_Connection] = []
        found = None
        with self._cond:
            idle = self._idle.get(namespace, [])
            while idle:
                since, conn = idle.pop()
                if now - since < self.max_idle:
                    found = conn
                    break
                stale.append(conn)
        for conn in stale:
            conn.discard()
        return found

    def give(self, namespace: str, conn: _Connection) -> None:
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


class _Relay:
    """The plugin's answer as a WSGI app: status and headers at once, then each piece
    of the body as it arrives (an SSE event reaches the client when the plugin sends it).
    """

    def __init__(
        self,
        conn: _Connection,
        response: http.client.HTTPResponse,
        namespace: str,
        idle_timeout: float,
        give_back: Callable[[str, _Connection], None] | None = None,
    ) -> None:
        self.give_back = give_back
        self.conn: _Connection | None = conn
        self.response = response
        self.namespace = namespace
        self.idle_timeout = idle_timeout
        self.cut = False  # hang_up ran: whatever the plugin read ends in, the answer is cut

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterator[bytes]:
        response = self.response
        status = f"{response.status} {response.reason or 'Unknown'}"
        try:
            write = start_response(status, response_headers(response.getheaders()))
            if response.length is None:  # chunked or to EOF: a stream, maybe a slow one
                write(b"")  # the headers now, not with its first piece
        except BaseException:
            self.close()
            raise
        on_close = environ.get(ON_CLOSE_KEY)
        if on_close is not None:
            on_close(self.hang_up)
        return self._body(environ.get(ABORT_KEY))

    def hang_up(self) -> None:
        """The client went away (or hecated stops): wake the read on the plugin's socket
        (any thread). The EOF that read then meets is ours, not the plugin's end of a
        close-delimited answer: the answer is cut, never completed."""
        self.cut = True
        conn = self.conn
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.raw.shutdown(socket.SHUT_RDWR)

    def _body(self, abort: Callable[[], None] | None) -> Iterator[bytes]:
        response = self.response
        try:
            conn = self.conn
            if conn is not None:
                conn.raw.settimeout(self.idle_timeout or None)
            while True:
                try:
                    data = response.read1(CHUNK)
                except TimeoutError:
                    log.info("%s: stream idle for %g s; ended", self.namespace, self.idle_timeout)
                    _call(abort)
                    return
                except (OSError, http.client.HTTPException):
                    log.info("%s: the plugin ended its answer abruptly", self.namespace)
                    _call(abort)
                    return
                if not data:
                    if response.length or self.cut:  # fewer bytes than it said, or we cut
                        _call(abort)
                    elif self.give_back is not None and not response.will_close and conn:
                        response.close()  # read to its end: the connection may serve again
                        self.give_back(self.namespace, conn)
                        self.give_back = None
                        self.conn = None  # the pool's now
                    return
                yield data
        finally:
            self.close()

    def close(self) -> None:
        self.response.close()
        if self.conn is not None:
            self.conn.discard()


def _call(abort: Callable[[], None] | None) -> None:
    if abort is not None:
        abort()


def _content_length(environ: dict[str, Any]) -> int:
    try:
        return max(0, int(environ.get("CONTENT_LENGTH") or 0))
    except ValueError:
        raise _BadRequest("Content-Length is not a number") from None


def _send_body(conn: _Connection, stream: Any, length: int) -> None:
    """The body in pieces, as the server spooled it (never read whole)."""
    left = length
    while left > 0 and stream is not None:
        data = stream.read(min(CHUNK, left))
        if not data:
            break
        conn.send(data)
        left -= len(data)

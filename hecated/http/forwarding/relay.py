"""Relaying one forwarded request to a plugin's own socket, streamed both ways.

Clients of the Hecate ecosystem (hecate-web, containers given only the
primary's socket directory) reach every plugin through the primary's one
socket. The wing's edge (``edge.py``) runs these requests on threads of their
own, so a long-lived stream never holds one of the registry API's workers; this
module turns one such request into one request on the plugin's
``sockets/api.sock`` (``pool.connect_plugin``) and streams the answer back as it
arrives; an answer whose whole body came with its head (most short ones) is handed
on at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from collections.abc import Callable, Iterator
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

from hecated.core.errors import NotFoundError
from hecated.core.layout import Layout
from hecated.http.forwarding.errors import (
    BadForwardError,
    BodyTooLargeError,
    PluginNotListeningError,
    PluginTimeoutError,
    PluginUnreachableError,
)
from hecated.http.forwarding.headers import answer_problem, request_headers, response_headers
from hecated.http.forwarding.ondemand import OnDemand
from hecated.http.forwarding.pool import Connection, Pool, connect_plugin
from hecated.http.forwarding.settings import PREFIX, ForwardSettings
from hecated.http.forwarding.wire import BadReplyError, Reply
from hecated.http.hooks import ABORT_KEY, ON_CLOSE_KEY
from hecated.protocol import Peer

log = logging.getLogger("hecated.http.forwarding")

# Requests that may go over a kept-alive connection (and be sent again on a new one
# when the plugin had closed it): no body, nothing a second sending could repeat.
REUSABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CHUNK = 64 * 1024  # bytes read or sent at a time: nothing is held whole
NAMES_KEPT = 1024  # names whose candidates are remembered (clients choose the names)


class _Index(Protocol):
    """What forwarding needs of the registry: its public read methods only."""

    layout: Layout

    def get(self, name: str) -> Any: ...


def candidates(name: str) -> list[str]:
    """The registry name itself, then the two conventions clients use, in order."""
    return [name, f"hecate-app-{name}d", f"hecate-{name}d"]


def target(environ: dict[str, Any], name: str, rest: str) -> str:
    """``/{rest}`` with the query string, taken raw when the server kept the raw URI.

    The raw request target keeps percent-escapes (``%2F``) the plugin may rely on;
    without it (a test client) the decoded path is quoted again. The raw name
    segment must decode to the name the router matched: an escaped slash in it
    (``a%2Fb``) would make the router and the raw target cut the path apart at
    different places, and the plugin receive another path than the one routed.
    """
    raw = environ.get("REQUEST_URI")
    if raw:
        path = urlsplit(raw).path if not raw.startswith("/") else raw.split("?", 1)[0]
        path = "/" + path.lstrip("/")  # as the server's PATH_INFO: leading slashes as one
        if path.startswith(PREFIX):
            raw_name, sep, tail = path[len(PREFIX) :].partition("/")
            if unquote(raw_name) != name:
                raise BadForwardError(
                    f"the plugin name {raw_name!r} holds an escaped '/': send the name as is"
                )
            if sep:
                query = raw.partition("?")[2]
                return "/" + tail + (f"?{query}" if query else "")
    query = environ.get("QUERY_STRING", "")
    return "/" + quote(rest, safe="/:@!$&'()*+,;=-._~") + (f"?{query}" if query else "")


def judged(response: Reply) -> tuple[str | None, list[tuple[str, str]]]:
    """Why the answer cannot be passed on (``answer_problem``), and the headers that
    pass (``response_headers``): judged once per distinct head (``wire.Head``), as they
    follow from its bytes alone. The list is shared: copied before it is handed on."""
    derived = response.head.derived
    verdict = derived.get("relay")
    if verdict is None:
        headers = response_headers(response.getheaders(), response.chunked)
        verdict = derived["relay"] = (answer_problem(response), headers)
    return verdict


class Forwarder:
    """Resolves a name to a plugin socket and relays one request over it."""

    def __init__(
        self,
        index: _Index,
        settings: ForwardSettings | None = None,
        on_demand: OnDemand | None = None,
    ) -> None:
        self.index = index
        self.layout = index.layout
        self.settings = settings or ForwardSettings()
        self.pool = Pool(max_idle=self.settings.pool_idle)
        self._names: dict[str, tuple[str, ...]] = {}  # name -> its candidates (_candidates)
        # Starts a plugin that is not running, and stops it when unused (None: neither).
        self.on_demand = on_demand

    # -- where ---------------------------------------------------------------------------

    def resolve(self, name: str) -> str:
        """The namespace ``name`` stands for: registered, or a real directory under the root.

        The name is checked by the name rules first (a bad one is a 400); each
        convention that breaks them (too long for a socket path) is skipped.
        """
        for candidate in self._candidates(name):
            if self.index.get(candidate) is not None or self._is_namespace(candidate):
                return candidate
        raise NotFoundError(f"no plugin named {name!r}")

    def _candidates(self, name: str) -> tuple[str, ...]:
        """``candidates(name)`` that pass the name rules, ``name`` checked first (a 400);
        remembered per name (the rules are fixed; a few hundred names at most are asked)."""
        known = self._names.get(name)
        if known is None:
            self.layout.check_plugin_name(name)
            known = tuple(c for c in candidates(name) if self.layout.is_plugin_name(c))
            if len(self._names) < NAMES_KEPT:
                self._names[name] = known
        return known

    def _is_namespace(self, name: str) -> bool:
        try:
            st = os.lstat(self.layout.namespace_str(name))
        except OSError:
            return False
        # A symlink in a namespace's place is that name's (and refused when reached):
        # whether the index has caught up with it must not change the answer.
        return stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)

    def connect(self, namespace: str) -> socket.socket:
        """A connected socket to the plugin's ``sockets/api.sock`` (the one connect)."""
        return connect_plugin(self.layout, namespace, self.settings.first_byte_timeout)

    def connect_or_start(self, namespace: str) -> socket.socket:
        """``connect``; a plugin nothing listens for is started first when it may be
        (a unit, no opt-out), the request held until its socket answers."""
        try:
            return self.connect(namespace)
        except PluginNotListeningError:
            plan = self.on_demand.plan(namespace) if self.on_demand is not None else None
            if plan is None or plan.unit is None or not plan.start:
                raise
        assert self.on_demand is not None
        return self.on_demand.connect(
            namespace, plan.unit, lambda: self.connect(namespace), self.settings.first_byte_timeout
        )

    def _in_use(self, namespace: str) -> Callable[[], None]:
        """The request counts as open for the idle stop, and waits out one under way
        (``OnDemand.in_use``); what to call when it ends."""
        if self.on_demand is None:
            return _nothing
        return self.on_demand.in_use(namespace, self.settings.first_byte_timeout)

    # -- the request -----------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], peer: Peer, name: str, rest: str) -> Callable:
        """Relay the request; return the WSGI app that streams the plugin's answer.

        Everything that can fail before the plugin's first byte raises a
        ``HecateError`` (the app answers it in the envelope); after that, a
        failure only ends the client's stream.
        """
        namespace = self.resolve(name)
        path = target(environ, name, rest)
        length = _content_length(environ)
        if length > self.settings.body_limit:
            raise BodyTooLargeError(
                f"request body is {length} bytes; at most {self.settings.body_limit} forwarded"
            )
        reusable = length == 0 and environ.get("REQUEST_METHOD", "GET") in REUSABLE_METHODS
        ended = self._in_use(namespace)
        try:
            conn, response = self._exchange(environ, peer, path, length, namespace, reusable)
            problem, _ = judged(response)
            if problem is not None:  # nothing of it reaches the client; the connection goes
                response.close()
                conn.discard()
                raise PluginUnreachableError(f"plugin {namespace!r} {problem}")
        except BaseException:
            ended()
            raise
        give_back = self.pool.give if reusable else None
        return _Relay(conn, response, namespace, self.settings.idle_timeout, give_back, ended)

    def _exchange(
        self,
        environ: dict[str, Any],
        peer: Peer,
        path: str,
        length: int,
        namespace: str,
        reusable: bool,
    ) -> tuple[Connection, Reply]:
        """The request sent and the answer's head read, on a kept-alive connection when
        one is fit (sent again on a new one if the plugin had closed it), else a new one."""
        conn = self.pool.take(namespace) if reusable else None
        if conn is not None:
            conn.raw.settimeout(self.settings.first_byte_timeout)
            try:
                return conn, self._send(conn, environ, peer, path, length, namespace)
            except PluginUnreachableError:
                conn.discard()  # once more, on a new connection
            except BaseException:
                conn.discard()
                raise
        conn = Connection(self.connect_or_start(namespace))
        try:
            return conn, self._send(conn, environ, peer, path, length, namespace)
        except BaseException:
            conn.discard()
            raise

    def _send(
        self,
        conn: Connection,
        environ: dict[str, Any],
        peer: Peer,
        path: str,
        length: int,
        namespace: str,
    ) -> Reply:
        method = environ.get("REQUEST_METHOD", "GET")
        headers = request_headers(environ, peer)
        if length or method in ("POST", "PUT", "PATCH"):
            headers.append(("Content-Length", str(length)))
        try:
            conn.send_head(method, path, headers)
            _send_body(conn, environ.get("wsgi.input"), length)
        except TimeoutError:
            raise PluginTimeoutError(f"plugin {namespace!r} did not read the request") from None
        except OSError:
            pass  # it may have answered without reading the body: see what it says
        except ValueError as exc:  # nothing was sent: the head is refused whole
            raise BadForwardError(f"cannot forward: {exc}") from None
        try:
            return conn.getresponse(method)
        except TimeoutError:
            raise PluginTimeoutError(
                f"plugin {namespace!r} sent nothing within {self.settings.first_byte_timeout:g} s"
            ) from None
        except OSError as exc:
            raise PluginUnreachableError(
                f"plugin {namespace!r} closed the connection before answering ({exc!r})"
            ) from None
        except BadReplyError as exc:
            raise PluginUnreachableError(f"plugin {namespace!r} {exc}") from None


class _Relay:
    """The plugin's answer as a WSGI app: status and headers at once, then each piece
    of the body as it arrives (an SSE event reaches the client when the plugin sends it).
    """

    def __init__(
        self,
        conn: Connection,
        response: Reply,
        namespace: str,
        idle_timeout: float,
        give_back: Callable[[str, Connection], None] | None = None,
        ended: Callable[[], None] | None = None,
    ) -> None:
        self.give_back = give_back
        self.ended = ended  # the idle stop's count of open streams: called once, at close
        self.conn: Connection | None = conn
        self.response = response
        self.namespace = namespace
        self.idle_timeout = idle_timeout
        self.cut = False  # hang_up ran: whatever the plugin read ends in, the answer is cut

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterator[bytes]:
        response = self.response
        status = f"{response.status} {response.reason or 'Unknown'}"
        try:
            write = start_response(status, list(judged(response)[1]))
            if response.length is None:  # chunked or to EOF: a stream, maybe a slow one
                write(b"")  # the headers now, not with its first piece
        except BaseException:
            self.close()
            raise
        whole = self._whole()
        if whole is not None:
            return whole
        on_close = environ.get(ON_CLOSE_KEY)
        if on_close is not None:
            on_close(self.hang_up)
        return _Body(self._body(environ.get(ABORT_KEY)), self.close)

    def _whole(self) -> list[bytes] | None:
        """The body, when all of it (a declared length) came with the head: nothing is
        left to wait for, so no hang-up to watch and no piece-by-piece relay (most
        short answers, e.g. a manifest). None: it is relayed as it comes (``_body``).
        The connection goes back to the pool once the answer has left (``close``)."""
        response = self.response
        length = response.length
        if length is None or length != response.buffered:
            return None
        try:
            body = response.read1(length) if length else b""
            end = response.read1(CHUNK)  # b"": whatever came past it is judged now
        except BaseException:
            self.close()
            raise
        return _Whole([body] if body else [], lambda: self._finish(end))

    def _finish(self, end: bytes) -> None:
        try:
            self._at_end(end)
        finally:
            self.close()

    def _at_end(self, data: bytes) -> None:
        """The answer read to its end: a kept-alive connection goes back to the pool."""
        response, conn = self.response, self.conn
        if data or response.length or self.give_back is None or response.will_close or not conn:
            return
        response.close()
        self.give_back(self.namespace, conn)
        self.give_back = None
        self.conn = None  # the pool's now

    def hang_up(self) -> None:
        """The client went away (or hecated stops): wake the read on the plugin's socket
        (any thread). The EOF that read then meets is ours, not the plugin's end of a
        close-delimited answer: the answer is cut, never completed.

        An answer whose declared length has all arrived has nothing left to wake nor to
        cut: a client that closes as soon as it has read it (curl does) must not cost
        the plugin's kept-alive connection, which goes back to the pool as usual."""
        self.cut = True
        if self.response.length == 0:
            return
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
                except (OSError, BadReplyError):
                    log.info("%s: the plugin ended its answer abruptly", self.namespace)
                    _call(abort)
                    return
                if not data:
                    if response.length or (self.cut and response.length is None):
                        # fewer bytes than it said, or we cut an answer of no set length
                        _call(abort)
                    else:
                        self._at_end(data)
                    return
                yield data
        finally:
            self.close()

    def close(self) -> None:
        self.response.close()
        if self.conn is not None:
            self.conn.discard()
        ended, self.ended = self.ended, None
        if ended is not None:
            ended()


class _Body:
    """The answer's body with a ``close`` that ends the relay even when no piece was
    read (closing a generator that never ran does not run its ``finally``)."""

    def __init__(self, pieces: Iterator[bytes], close: Callable[[], None]) -> None:
        self._pieces = pieces
        self._close = close

    def __iter__(self) -> Iterator[bytes]:
        return self._pieces

    def close(self) -> None:
        self._pieces.close()  # type: ignore[attr-defined]
        self._close()


class _Whole(list):
    """A body handed on whole, as one piece; the relay ends when the server closes it,
    after the answer has left (giving the connection back is not on the client's wait)."""

    def __init__(self, pieces: list[bytes], close: Callable[[], None]) -> None:
        super().__init__(pieces)
        self._close = close

    def close(self) -> None:
        self._close()


def _nothing() -> None:
    pass


def _call(abort: Callable[[], None] | None) -> None:
    if abort is not None:
        abort()


def _content_length(environ: dict[str, Any]) -> int:
    try:
        return max(0, int(environ.get("CONTENT_LENGTH") or 0))
    except ValueError:
        raise BadForwardError("Content-Length is not a number") from None


def _send_body(conn: Connection, stream: Any, length: int) -> None:
    """The body in pieces, as the server spooled it (never read whole)."""
    left = length
    while left > 0 and stream is not None:
        data = stream.read(min(CHUNK, left))
        if not data:
            break
        conn.send(data)
        left -= len(data)

"""One client connection under waitress: its requests' paths, its refusals, lingering close,
and the sending of a detoured request's answer from that request's own thread.

``server.py`` owns the listening socket, the loop and which connections live;
this module owns what happens on one of them. Waitress builds these objects
itself (``channel_class``, ``parser_class``, ``task_class``), so the bounds they
need come from the listener they belong to (``ConnectionLimits``), never from
classes built at run time.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from waitress.adjustments import Adjustments
from waitress.channel import ClientDisconnected, HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.task import ErrorTask, WSGITask
from waitress.utilities import Error

from hecated.http.hooks import ABORT_KEY, HEADERS_KEY, ON_CLOSE_KEY
from hecated.protocol import (
    PEER_ENVIRON_KEY,
    Code,
    Peer,
    code_of_status,
    encode,
    error_body,
    error_headers,
)

# Lingering close (nginx's lingering_close): after refusing a request whose bytes are
# still arriving, keep reading and discarding them, so the client finishes sending and
# reads the answer instead of a broken pipe; for at most this long and this much.
LINGER_SECONDS = 10.0
LINGER_BYTES = 64 * 1024 * 1024
# How long a detoured answer's send may wait for a client that reads nothing.
DRAIN_TIMEOUT = 300.0


# Claimed requests' answer heads as waitress built them (``Task.build_response_header``),
# by what they were built from; bounded (plugins choose their headers).
_HEADS: dict[tuple, tuple[bytes, tuple[tuple[str, str], ...], bool, bool]] = {}
HEADS_KEPT = 256


@dataclass(frozen=True)
class ConnectionLimits:
    """What one listener's connections are allowed: set once, read by each connection."""

    linger_seconds: float = LINGER_SECONDS
    linger_bytes: int = LINGER_BYTES
    drain_timeout: float | None = DRAIN_TIMEOUT
    claimed_adj: Adjustments | None = None  # a claimed request's (larger body) bounds


class DetourRefused(Error):
    """A detour refused a request it claimed (its cap reached): 503, the connection kept."""

    code = 503
    reason = "Service Unavailable"


def path_info(path: str) -> str:
    """The path the app will see: leading slashes collapsed to one, as waitress's
    environ does, so the detour's decision and the router read the same string."""
    return "/" + path.lstrip("/") if path.startswith("/") else path


def has_dot_segment(path: str) -> bool:
    """``.`` or ``..`` as a segment (after percent-decoding): each reader would resolve
    it its own way (the router, a plugin, a browser), so no reader is given one."""
    return any(seg in (".", "..") for seg in path.split("/"))


class Parser(HTTPRequestParser):
    """Waitress's parser, plus the one decision made when a request's head is read:
    does a detour claim it? A claimed request may carry the detour's larger body
    (waitress spools a large body to a temp file, so it is never held whole)."""

    claimed = False

    def __init__(
        self,
        adj: Adjustments,
        claims: Callable[[str], bool] | None = None,
        claimed_adj: Adjustments | None = None,
    ) -> None:
        super().__init__(adj)
        self._claims = claims
        self._claimed_adj = claimed_adj

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        self.path = path_info(self.path)
        if has_dot_segment(self.path):
            raise ParsingError("the path has a '.' or '..' segment; send it resolved")
        if self._claims is not None and self._claims(self.path):
            self.claimed = True
            if self._claimed_adj is not None:
                self.adj = self._claimed_adj


class Task(WSGITask):
    """Waitress's WSGI task, plus the peer's credentials and sane values for a Unix socket.

    A claimed request's task sends every write at once, from its own thread
    (waitress otherwise holds small writes until 18 KB gather: an SSE event would
    wait; and the connection is out of waitress's loop while it runs), and may be
    aborted: a source that dies mid-answer ends the client's answer without the
    chunked terminator, so the client sees a cut answer, never a complete one.
    """

    aborted = False

    def get_environment(self) -> dict[str, Any]:
        environ = super().get_environment()
        environ[PEER_ENVIRON_KEY] = self.channel.peer
        # Nothing may build URLs from the socket's path.
        environ["SERVER_NAME"] = "localhost"
        environ["SERVER_PORT"] = "0"
        if self.request.claimed:
            environ[ABORT_KEY] = self.abort
            environ[ON_CLOSE_KEY] = self.add_on_close
            environ[HEADERS_KEY] = self.request.headers
        return environ

    def add_on_close(self, hook: Callable[[], None]) -> None:
        """The channel's hang-up hook, remembered as this task's: it goes with the task,
        and a pipelined next task's own hooks stay."""
        self.hooks.append(hook)
        self.channel.add_on_close(hook)

    def service(self) -> None:
        self.hooks: list[Callable[[], None]] = []
        try:
            super().service()
        finally:
            self.channel.drop_on_close(self.hooks)

    def abort(self) -> None:
        """End the answer abruptly: close the connection after what was written."""
        self.aborted = True

    def write(self, data: bytes) -> None:
        """Waitress's framing; a claimed request's pieces (the head with the first) leave
        in one ``send`` from this thread (``Channel.send_now``)."""
        if not self.request.claimed:
            super().write(data)
            return
        channel = self.channel
        channel.gathered = []
        try:
            super().write(data)
        finally:
            gathered, channel.gathered = channel.gathered, None
        channel.send_now(gathered[0] if len(gathered) == 1 else b"".join(gathered))

    def build_response_header(self) -> bytes:
        """Waitress's head, remembered for a claimed request's answer: a forwarded
        answer's head comes from its plugin's, the same for a burst of answers (its
        Date included, so nothing in it changes while it is remembered)."""
        if not self.request.claimed:
            return super().build_response_header()
        key = (
            self.version,
            self.request.headers.get("CONNECTION", ""),
            self.status,
            self.content_length,
            self.close_on_finish,
            tuple(self.response_headers),
        )
        known = _HEADS.get(key)
        if known is None:
            head = super().build_response_header()
            known = (
                head,
                tuple(self.response_headers),
                self.chunked_response,
                self.close_on_finish,
            )
            if any(k.lower() == "date" for k, _ in key[-1]):  # else waitress dated it: now's
                if len(_HEADS) >= HEADS_KEPT:
                    _HEADS.clear()
                _HEADS[key] = known
            return head
        head, headers, self.chunked_response, self.close_on_finish = known
        self.response_headers = list(headers)
        return head

    def finish(self) -> None:
        if self.aborted and self.wrote_header:
            self.close_on_finish = True  # no "0\r\n\r\n": the client must see the cut
            return
        super().finish()


class RefusalTask(ErrorTask):
    """The serving layer's refusals (malformed request, header or body too large, a
    detour's busy) in the API's envelope, built by the same function as the app's."""

    def execute(self) -> None:
        error = self.request.error
        busy = isinstance(error, DetourRefused)
        code = Code.BUSY if busy else code_of_status(error.code)
        message = error.body if busy else f"{error.reason}: {error.body}"
        body = encode(error_body(code, message))
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.response_headers.extend(error_headers(code))
        if not busy:  # the refused request may still be arriving: close, lingering
            self.channel.linger_on_close = True
            if hasattr(self, "set_close_on_finish"):  # waitress >= 3
                self.set_close_on_finish()
            else:
                self.response_headers.append(("Connection", "close"))
                self.close_on_finish = True
        self.content_length = len(body)
        # A HEAD's answer says the length and carries no body: on a kept-alive connection
        # the client would read that body as the start of its next answer. (A request
        # refused before its first line was read has no ``command`` at all.)
        head = getattr(self.request, "command", None) == "HEAD"
        self.write(b"" if head else body)


class Channel(HTTPChannel):
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

    task_class = Task
    error_task_class = RefusalTask

    def __init__(self, server: Any, sock: socket.socket, addr: Any, adj: Any, map=None) -> None:
        self.peer = Peer.of(sock)
        self.limits: ConnectionLimits = server.limits
        # How long a claimed request's send may wait for a client reading nothing; its
        # detour's (set when the request is handed over), the limits' until then.
        self.send_timeout: float | None = self.limits.drain_timeout
        # Claimed requests of this connection being run (pipelining may queue a second
        # one before the first's thread has let go): out of waitress's loop while > 0.
        self.streaming = 0
        self.request_started = 0.0
        self.linger_on_close = False
        self.lingering_since: float | None = None
        self.linger_left = 0
        # What to run when the connection closes: a forwarded stream hangs up on its plugin.
        self.on_close: list[Callable[[], None]] = []
        self.client_gone = False
        self.hooks_lock = threading.Lock()
        self.gathered: list[bytes] | None = None  # see write_soon
        super().__init__(server, sock, addr, adj, map)
        server.admitted(self)  # may close this very connection: its peer holds too many

    def parser_class(self, adj: Adjustments) -> Parser:  # waitress: self.parser_class(adj)
        """Each request's parser, asking this listener's detour (if any) about its path."""
        return Parser(adj, self.server.claims, self.limits.claimed_adj)

    def handle_close(self) -> None:
        self.hung_up()
        super().handle_close()

    def add_on_close(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` when the client goes away; at once if it has gone already."""
        with self.hooks_lock:
            if not self.client_gone:
                self.on_close.append(hook)
                return
        hook()

    def drop_on_close(self, hooks: list[Callable[[], None]]) -> None:
        """Forget ``hooks`` (a finished task's): the source they hang up on is done."""
        if hooks:
            with self.hooks_lock:
                self.on_close = [h for h in self.on_close if h not in hooks]

    def hung_up(self) -> None:
        """The client closed its connection while a stream ran: hang up on its source."""
        with self.hooks_lock:
            self.client_gone = True
            hooks, self.on_close = self.on_close, []
        for hook in hooks:
            hook()

    def send_now(self, data: bytes) -> None:
        """A claimed request's bytes straight to the socket when none wait before them
        (the common case: one ``send``, no buffer); what the client has no room for yet
        is buffered and drained (``drain``)."""
        with self.outbuf_lock:
            if not self.connected:
                raise ClientDisconnected
            if data and not self.total_outbufs_len:
                try:
                    sent = self.socket.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self.will_close = True
                    raise ClientDisconnected from None
                data = data[sent:]
        if data:
            super().write_soon(data)
        self.drain()

    def write_soon(self, data: bytes) -> int:
        """Waitress's, unless a claimed request's task gathers its head and first piece
        (``Task.write``): one append to the buffer, one ``send``, for a short answer."""
        gathered = self.gathered
        if gathered is None or not data:
            return super().write_soon(data)
        gathered.append(data)
        return len(data)

    def send_continue(self) -> None:
        """Waitress's, without closing on a failed send: it may run on a stream thread that
        follows this connection (``received``), and only the loop closes a channel (its
        close changes the loop's map and the hang-up watch's fds). To a client gone, the
        answer stays buffered; the loop's next write finds it gone and closes."""
        self.request.expect_continue = False
        payload = b"HTTP/1.1 100 Continue\r\n\r\n"
        with self.outbuf_lock:
            self.outbufs[-1].append(payload)
            self.current_outbuf_count += len(payload)
            self.total_outbufs_len += len(payload)
            self.sent_continue = True
            self._flush_exception(self._flush_some, do_close=False)
        self.request.completed = False

    def drain(self) -> None:
        """Send what the task wrote, now, from the task's thread (a claimed request).

        The connection is out of waitress's loop while its request runs, so nothing
        else sends it: wait for room in the socket when the client reads slowly, for
        at most ``drain_timeout`` s; a client gone or that long silent ends the task.
        """
        fd = self.socket.fileno()
        timeout = self.send_timeout
        while True:
            with self.outbuf_lock:
                _, failed = self._flush_exception(self._flush_some, do_close=False)
                left = self.total_outbufs_len
            if failed:
                raise ClientDisconnected
            if not left:
                return
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            events = poller.poll(-1 if timeout is None else int(timeout * 1000))
            if not events or events[0][1] & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                self.will_close = True
                raise ClientDisconnected

    # -- lingering close ----------------------------------------------------------------

    def handle_write(self) -> None:
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
        self.linger_left = self.limits.linger_bytes
        if self.request is not None:  # whatever the parser made of the unread body
            self.request.close()
            self.request = None

    def readable(self) -> bool:
        if self.lingering_since is not None:
            return not self.will_close
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
        since = self.lingering_since
        return since is not None and now - since > self.limits.linger_seconds

    # -- deadlines, idleness, shutdown ----------------------------------------------------

    def received(self, data: bytes) -> bool:
        receiving = self.request is not None
        result = super().received(data)
        if not receiving and self.request is not None:
            self.request_started = time.monotonic()
        return result

    def overdue(self, now: float, deadline: float) -> bool:
        """A request still arriving ``deadline`` seconds after its first byte: a slowloris."""
        return self.request is not None and now - self.request_started > deadline

    def idle(self) -> bool:
        """Open with nothing to do: no request arriving, queued, run or being answered."""
        return not (
            self.requests
            or self.request is not None
            or self.total_outbufs_len
            or self.streaming
            or self.will_close
            or self.close_when_flushed
            or self.lingering_since is not None
        )

    def del_channel(self, map=None) -> None:
        super().del_channel(map)
        self.server.closed_channel(self)

    def busy(self, now: float, stall: float) -> bool:
        """A request being received, run or answered, and not stalled for ``stall`` seconds.

        A request whose bytes are still arriving counts as in flight (a client that
        was mid-send when we were told to stop gets its answer), unless nothing has
        arrived for ``stall`` seconds: a slow client cannot hold up a shutdown.
        """
        if self.requests or self.total_outbufs_len:
            return True
        return self.request is not None and now - self.last_activity < stall

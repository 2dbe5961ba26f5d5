"""HTTP/1.1 on a plugin's socket: a request's head sent in one piece, the answer read off
the raw socket (its head parsed by hand, its body in pieces).

``http.client`` parsed each answer's headers with the ``email`` package (a
feed parser, a policy object and a ``Message`` per answer): about a fifth of
what a forwarded ``GET /manifest`` cost hecated (issue 22's profile). The wing
needs far less: the status line, the header pairs in order (``headers.py``
judges them) and the body's framing. This reader keeps ``http.client``'s
bounds (a line at most 65,536 bytes, at most 100 headers) and its way of
reading a body (``read1``: what has come, never more than asked; chunked
answers de-chunked; an answer of no set length read to the plugin's close),
and says what is wrong in words (``BadReplyError``).
Interim answers (any 1xx but 101, at most 10) are skipped, where
``http.client`` skipped only a ``100`` and a 103 Early Hints became a 502.

A malformed head is refused, never half-read: a header line that is not
``name: value`` (``email`` silently took it and every later header as body),
a bare CR, a header folded over lines. ``headers.answer_problem`` then
judges the framing as before.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from typing import Any

MAX_LINE = 65536  # as http.client's _MAXLINE: a status line, a header or a chunk-size line
MAX_HEADERS = 100  # as http.client's _MAXHEADERS
MAX_INTERIM = 10  # 1xx answers skipped before the final one; more is a plugin gone wrong
_READ = 64 * 1024  # bytes asked of the socket at a time
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# What http.client refused in a request it sent, refused here alike (a ValueError).
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")
_NAME = re.compile(r"[^:\s][^:\r\n]*")  # fullmatch: a header name http.client sent
_BAD_VALUE = re.compile(r"\n(?![ \t])|\r(?![ \t\n])")
_HEAD_END = re.compile(rb"\r?\n\r?\n")


# Request heads by what they were made of: a client's burst repeats its requests (the
# same target, headers and peer). Bounded: the clients choose what is in them.
_REQUESTS: dict[tuple[str, str, tuple[tuple[str, str], ...]], bytes] = {}
REQUESTS_KEPT = 256
REQUEST_KEPT_BYTES = 4096


def request_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    """The request line and headers as bytes, refused (``ValueError``, with the reason)
    where ``http.client`` refused them: a method or target with control characters or
    spaces, a target that is not ASCII, a header name or value that would break lines.
    Remembered when short: the same parts make the same bytes (or the same refusal)."""
    key = (method, target, tuple(headers))
    head = _REQUESTS.get(key)
    if head is None:
        head = _request_head(method, target, headers)
        if len(head) <= REQUEST_KEPT_BYTES:
            if len(_REQUESTS) >= REQUESTS_KEPT:
                _REQUESTS.clear()
            _REQUESTS[key] = head
    return head


def _request_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    if not _TOKEN.fullmatch(method):
        raise ValueError(f"method can't contain control characters. {method!r}")
    if not target.isascii() or _BAD_TARGET.search(target):
        raise ValueError(f"URL can't contain control characters or non-ASCII. {target!r}")
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    for name, value in headers:
        if not _NAME.fullmatch(name):
            raise ValueError(f"Invalid header name {name!r}")
        if _BAD_VALUE.search(value):
            raise ValueError(f"Invalid header value {value!r}")
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


MAX_LENGTH_DIGITS = 19  # 10**19 bytes: more than any body, and within int()'s limit


class BadReplyError(Exception):
    """The plugin's bytes are not an HTTP/1.x answer hecated can read (a sentence)."""


@dataclass(frozen=True)
class Head:
    """One answer's head, parsed: the same for every answer of the same bytes (a plugin
    sends the same head for the same route, all through the second its Date names).
    ``length`` is the body's declared length (None: chunked or to the close);
    ``derived`` holds what the relay judges of it, judged once per distinct head."""

    status: int
    reason: str
    version: int
    headers: tuple[tuple[str, str], ...]
    chunked: bool
    length: int | None
    will_close: bool
    derived: dict[str, Any] = field(default_factory=dict, compare=False)


# Heads parsed, by (a HEAD request's?, the head's bytes): parsing one is a pure function of
# these, and a plugin answering a burst sends the same few again and again. Bounded: the
# plugins choose their heads (a new Date each second); a short one only is kept.
_HEADS: dict[tuple[bool, bytes], Head] = {}
HEADS_KEPT = 256
HEAD_KEPT_BYTES = 4096


def parse_head(head: bytes, method: str) -> Head:
    """The head's status line and headers (``BadReplyError``: not one hecated reads),
    from the cache when these very bytes were parsed before."""
    key = (method == "HEAD", head)
    known = _HEADS.get(key)
    if known is not None:
        return known
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    if len(lines) > MAX_HEADERS + 1:
        raise BadReplyError(f"sent more than {MAX_HEADERS} headers")
    if len(head) > MAX_LINE and any(len(line) > MAX_LINE for line in lines):
        raise BadReplyError(f"sent a line over {MAX_LINE} bytes in its answer's head")
    version, status, reason = _status_line(lines[0])
    if 100 <= status < 200 and status != 101:  # interim: its headers are not read
        return Head(status, reason, version, (), False, 0, False)
    headers, chunked, length, will_close = _framing(lines, status, version, method)
    parsed = Head(status, reason, version, tuple(headers), chunked, length, will_close)
    if len(head) <= HEAD_KEPT_BYTES:
        if len(_HEADS) >= HEADS_KEPT:
            _HEADS.clear()
        _HEADS[key] = parsed
    return parsed


def _status_line(line: str) -> tuple[int, int, str]:
    """The version (10 or 11), the status and the reason phrase."""
    version, _, rest = line.partition(" ")
    code, _, reason = rest.lstrip(" ").partition(" ")
    if not version.startswith("HTTP/1."):
        raise BadReplyError(f"sent no HTTP/1.x status line ({line[:80]!r})")
    if not (len(code) == 3 and code.isascii() and code.isdigit()) or code < "100":
        raise BadReplyError(f"sent a status line with no status code ({line[:80]!r})")
    return (10 if version == "HTTP/1.0" else 11), int(code), reason.strip()


def _framing(
    lines: list[str], status: int, version: int, method: str
) -> tuple[list[tuple[str, str]], bool, int | None, bool]:
    """The header pairs in order, and the framing as ``http.client`` decides it:
    chunked, a declared length, or to the close; and whether the plugin closes after.
    One pass: this runs per distinct head."""
    headers = []
    te: list[str] = []
    length = None
    connection = ""
    keep_alive = False
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise _malformed(line)
        value = value.strip(" \t")
        headers.append((name, value))
        low = name.lower()
        if low == "content-length":
            length = value if length is None else length
        elif low == "transfer-encoding":
            te += [t.strip().lower() for t in value.split(",")]
        elif low == "connection":
            connection += "," + value.lower()
        elif low == "keep-alive":
            keep_alive = True
    chunked = te == ["chunked"]
    if version == 11:
        will_close = "close" in connection
    else:  # HTTP/1.0 keeps the connection only when it says so
        will_close = not (keep_alive or "keep-alive" in connection)
    declared = None
    if length is not None and not chunked and length.isascii() and length.isdigit():
        if len(length) > MAX_LENGTH_DIGITS:  # int() of 4,300 digits raises; none is real
            raise BadReplyError(f"sent a Content-Length of {len(length)} digits")
        declared = int(length)
    if status in (204, 304) or status < 200 or method == "HEAD":
        # No body whatever the headers say (RFC 9110 6.4.1): a chunked one read
        # here would wait on a chunk size the plugin never sends.
        chunked, declared = False, 0
    if not will_close and not chunked and declared is None:
        will_close = True
    return headers, chunked, declared, will_close


class Reply:
    """One answer on ``sock``, as much of ``http.client.HTTPResponse`` as the relay uses:
    ``status``, ``reason``, ``getheaders()``, ``chunked``, ``length`` (bytes of the
    body still to come when declared, else None), ``will_close``, ``read1``, ``close``;
    ``head``: the parsed head those come from (``Head``)."""

    head: Head

    def __init__(self, sock: socket.socket, method: str = "GET") -> None:
        self._sock: socket.socket | None = sock
        self._method = method
        self._buf = b""  # bytes read past what was handed on
        self.status = 0
        self.reason = ""
        self.version = 11
        self.headers: list[tuple[str, str]] = []
        self.chunked = False
        self.length: int | None = None
        self.will_close = True
        self._chunk_left: int | None = 0  # in a chunked body: left of this chunk; None: done
        self._in_chunk = False  # a chunk was begun: its line end comes before the next size

    # -- the head ----------------------------------------------------------------------

    def begin(self) -> None:
        """Read and parse the head. Interim answers before it (``100 Continue``,
        ``103 Early Hints``, any 1xx but 101) are read and skipped, as RFC 9110 15.2
        asks of a client, at most ``MAX_INTERIM`` of them; a ``101`` is kept as the
        answer (hecated asks for no upgrade: ``headers.answer_problem`` refuses it)."""
        for _ in range(MAX_INTERIM + 1):
            head = parse_head(self._head_bytes(), self._method)
            if not (100 <= head.status < 200) or head.status == 101:
                self.head = head
                self.status, self.reason, self.version = head.status, head.reason, head.version
                self.headers, self.chunked = list(head.headers), head.chunked
                self.length, self.will_close = head.length, head.will_close
                return
        raise BadReplyError(f"sent more than {MAX_INTERIM} interim (1xx) answers")

    def _head_bytes(self) -> bytes:
        """The head up to the blank line (without it), within the bounds while it
        arrives; what follows stays buffered."""
        buf = self._buf
        searched = 0
        while True:
            end = _HEAD_END.search(buf, searched)
            if end is not None:
                break
            _check_partial(buf)
            searched = max(0, len(buf) - 3)
            piece = self._recv()
            if not piece:
                if not buf:
                    raise ConnectionResetError("the plugin closed the connection without answering")
                raise BadReplyError("closed the connection inside its answer's head")
            buf += piece
        self._buf = buf[end.end() :]
        return buf[: end.start()]

    def getheaders(self) -> list[tuple[str, str]]:
        return self.headers

    @property
    def buffered(self) -> int:
        """Bytes of the body that came with the head (read, not handed on yet)."""
        return len(self._buf)

    # -- the body ----------------------------------------------------------------------

    def read1(self, size: int) -> bytes:
        """Up to ``size`` bytes of the body, as soon as any have come; b"" at its end
        (or at the plugin's close: ``length`` then says how much was missing)."""
        if self._sock is None:
            return b""
        if self.chunked:
            return self._read1_chunked(size)
        if self.length is not None:
            size = min(size, self.length)
            if size == 0:
                self._ended()
                return b""
        data = self._take(size)
        if self.length is not None:
            self.length -= len(data)
        return data

    def _read1_chunked(self, size: int) -> bytes:
        if self._chunk_left == 0:
            self._chunk_left = self._next_chunk()
        left = self._chunk_left
        if left is None:
            self._ended()
            return b""
        data = self._take(min(size, left))
        if not data:
            raise BadReplyError("closed the connection inside a chunk")
        self._chunk_left = left - len(data)
        return data

    def _next_chunk(self) -> int | None:
        """The next chunk's size (the line end after the chunk before it read first);
        None at the last chunk, whose trailer is read and dropped, as http.client does."""
        if self._in_chunk and self._line() != "":
            raise BadReplyError("sent a chunk longer than its size said")
        self._in_chunk = True
        line = self._line().partition(";")[0].strip(" \t")
        if not line or not _HEX.issuperset(line):
            raise BadReplyError(f"sent a malformed chunk size ({line[:40]!r})")
        size = int(line, 16)
        if size == 0:
            while self._line():
                pass
            return None
        return size

    def _ended(self) -> None:
        """The body is whole: bytes the plugin sent past it (an answer nobody asked for)
        must not be read as the next request's, so the connection is not kept."""
        if self._buf:
            self.will_close = True

    def _line(self) -> str:
        """One line of the body's framing (without its line end), within the bound."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line, self._buf = self._buf[:end], self._buf[end + 1 :]
                if len(line) > MAX_LINE:
                    break
                return line.decode("latin-1").removesuffix("\r")
            if len(self._buf) > MAX_LINE:
                break
            piece = self._recv()
            if not piece:
                raise BadReplyError("closed the connection inside a chunked answer")
            self._buf += piece
        raise BadReplyError(f"sent a line over {MAX_LINE} bytes in a chunked answer")

    def _take(self, size: int) -> bytes:
        buf = self._buf
        if buf:
            data, self._buf = buf[:size], buf[size:]
            return data
        return self._recv(size)

    def _recv(self, size: int = _READ) -> bytes:
        sock = self._sock
        if sock is None:
            return b""
        return sock.recv(size)

    def close(self) -> None:
        """The answer is done with; the socket is the connection's (``pool.Connection``)."""
        self._sock = None
        self._buf = b""


_HEX = frozenset("0123456789abcdefABCDEF")


def _check_partial(buf: bytes) -> None:
    """Bounds on a head still arriving: no line nor line count past http.client's."""
    last = buf.rfind(b"\n")
    if len(buf) - last - 1 > MAX_LINE + 1:
        raise BadReplyError(f"sent a line over {MAX_LINE} bytes in its answer's head")
    if buf.count(b"\n") > MAX_HEADERS + 1:
        raise BadReplyError(f"sent more than {MAX_HEADERS} headers")


def _malformed(line: str) -> BadReplyError:
    """Why a header line is not ``name: value``: folded (obs-fold), or of no shape at all
    (no colon, a space before it); ``email`` took it and every later header as body."""
    if line[:1] in (" ", "\t"):
        return BadReplyError("sent a header folded over lines (obs-fold)")
    return BadReplyError(f"sent a malformed header line ({line[:80]!r})")

"""The wing's own HTTP/1.1 reader (``forwarding/wire.py``, issue 22) on a real socket pair:
answers arriving whole or a byte at a time read alike, http.client's bounds and framing
kept, and a malformed answer refused with a sentence, never half-read."""

from __future__ import annotations

import socket
import threading

import pytest

from hecated.http.forwarding.wire import MAX_HEADERS, BadReplyError, Reply, request_head


def read(raw: bytes, method: str = "GET", piece: int = 0) -> tuple[Reply, bytes]:
    """``raw`` sent by a writer thread (whole, or ``piece`` bytes at a time) then closed;
    the reply and its whole body as the relay reads it (read1 until b"")."""
    ours, theirs = socket.socketpair()

    def write() -> None:
        with theirs:
            if not piece:
                theirs.sendall(raw)
            else:
                for i in range(0, len(raw), piece):
                    theirs.sendall(raw[i : i + piece])

    writer = threading.Thread(target=write)
    writer.start()
    try:
        ours.settimeout(10)
        reply = Reply(ours, method)
        reply.begin()
        body = b""
        while data := reply.read1(65536):
            body += data
        return reply, body
    finally:
        writer.join()
        ours.close()


ANSWERS = [
    # (raw, status, headers, body, length left at the end, will_close)
    (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  b \r\n\r\nhello",
        200,
        [("Content-Length", "5"), ("X-A", "b")],
        b"hello",
        0,
        False,
    ),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nTrailer: x\r\n\r\n",
        200,
        [("Transfer-Encoding", "chunked")],
        b"hello!",
        None,
        False,
    ),
    (b"HTTP/1.0 200 OK\r\n\r\nto the close", 200, [], b"to the close", None, True),
    (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", 200, [("Content-Length", "2")], b"ok", 0, False),
    (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
        204,
        [("Connection", "close")],
        b"",
        0,
        True,
    ),
    (
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        404,
        [("Content-Length", "0")],
        b"",
        0,
        False,
    ),
]


@pytest.mark.parametrize("piece", [0, 1, 7])
@pytest.mark.parametrize(("raw", "status", "headers", "body", "left", "closes"), ANSWERS)
def test_answers_read_alike_whole_or_in_pieces(
    raw: bytes, status: int, headers: list, body: bytes, left: int | None, closes: bool, piece: int
) -> None:
    reply, got = read(raw, piece=piece)
    assert (reply.status, reply.getheaders(), got) == (status, headers, body)
    assert (reply.length, reply.will_close) == (left, closes)


def test_a_head_answer_has_no_body() -> None:
    reply, body = read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", method="HEAD")
    assert (reply.length, body) == (0, b"")


@pytest.mark.parametrize(
    ("raw", "method"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "HEAD"),
        (b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", "GET"),
        (b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", "GET"),
    ],
)
def test_an_answer_with_no_body_ends_at_once_whatever_its_framing_says(
    raw: bytes, method: str
) -> None:
    """HEAD, 204 and 304 have no body (RFC 9110 6.4.1) even when the plugin says chunked:
    the writer stays open, so reading a chunk size would wait for bytes that never come."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(raw)
        ours.settimeout(10)
        reply = Reply(ours, method)
        reply.begin()
        assert (reply.chunked, reply.length, reply.read1(65536)) == (False, 0, b"")
        assert not reply.will_close  # the connection is whole: the pool may keep it


def test_interim_answers_are_skipped_before_the_final_one() -> None:
    raw = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 102 Processing\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    for piece in (0, 1):
        reply, body = read(raw, piece=piece)
        assert (reply.status, reply.getheaders(), body) == (200, [("Content-Length", "2")], b"ok")


def test_a_101_is_the_answer_not_skipped() -> None:
    """hecated asks for no upgrade: a 101 is read as the answer, which
    ``headers.answer_problem`` refuses (a 502), never skipped as interim."""
    reply, body = read(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nbytes")
    assert (reply.status, body) == (101, b"")


def test_endless_interim_answers_are_refused() -> None:
    with pytest.raises(BadReplyError, match="interim"):
        read(b"HTTP/1.1 103 Early Hints\r\n\r\n" * 11 + b"HTTP/1.1 200 OK\r\n\r\n")


def test_a_content_length_of_thousands_of_digits_is_a_bad_reply_not_a_value_error() -> None:
    """int() refuses 4,300 digits with a ValueError the relay would not catch (a 500)."""
    with pytest.raises(BadReplyError, match="Content-Length"):
        read(b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\nok")
    reply, body = read(b"HTTP/1.1 200 OK\r\nContent-Length: 0000000000000000002\r\n\r\nok")
    assert (reply.status, body) == (200, b"ok")


def test_bytes_past_a_whole_answer_keep_the_connection_from_the_pool() -> None:
    reply, body = read(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n")
    assert body == b"ok"
    assert reply.will_close  # an answer nobody asked for: never read as the next one's


def test_a_short_body_ends_with_its_length_left() -> None:
    reply, body = read(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort")
    assert (body, reply.length) == (b"short", 4)  # the relay cuts the client's answer


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"HTTP/1.1 200 OK\r\nX-Oops\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n", "folded"),
        (b"SPDY/3 200 OK\r\n\r\n", "no HTTP/1.x status line"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "no status code"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "inside its answer's head"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * (MAX_HEADERS + 1) + b"\r\n", "100 headers"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000 + b"\r\n\r\n", "over 65536 bytes"),
    ],
)
def test_malformed_heads_are_refused_with_a_sentence(raw: bytes, words: str) -> None:
    with pytest.raises(BadReplyError, match=words):
        read(raw, piece=4096)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello!!\r\n", "longer"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nhel", "inside a chunk"),
    ],
)
def test_malformed_chunked_bodies_end_with_a_sentence(raw: bytes, words: str) -> None:
    with pytest.raises(BadReplyError, match=words):
        read(raw)


def test_a_close_before_any_byte_is_a_connection_error() -> None:
    with pytest.raises(ConnectionResetError):
        read(b"")


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "/a b", []),
        ("GET", "/\x7f", []),
        ("GET", "/é", []),
        ("G\x01T", "/", []),
        ("GET", "/", [("X:Y", "1")]),
        ("GET", "/", [("X", "a\r\nInjected: 1")]),
    ],
)
def test_a_request_head_that_would_break_lines_is_refused(
    method: str, target: str, headers: list
) -> None:
    with pytest.raises(ValueError):
        request_head(method, target, headers)


def test_a_request_head_in_one_piece() -> None:
    head = request_head("GET", "/manifest?a=1", [("Host", "localhost"), ("X-A", "é")])
    assert head == b"GET /manifest?a=1 HTTP/1.1\r\nHost: localhost\r\nX-A: \xe9\r\n\r\n"


# -- heads parsed once (issue 22: a plugin sends the same head again and again) --------------


def test_the_same_head_for_get_then_head_frames_each_by_its_method() -> None:
    """A head parsed for a GET is remembered; the same bytes answering a HEAD still
    have no body (the method is part of what is remembered), and the GET's again has."""
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Same: 1\r\n\r\n"
    got, body = read(raw + b"hello")
    assert (got.length, body) == (0, b"hello")
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(raw)  # and the writer stays open: a body read would wait
        ours.settimeout(10)
        head = Reply(ours, "HEAD")
        head.begin()
        assert (head.length, head.read1(65536)) == (0, b"")
    again, body = read(raw + b"world")
    assert (again.status, again.getheaders(), body) == (200, got.getheaders(), b"world")


def test_reading_a_body_leaves_the_remembered_head_as_it_was() -> None:
    """Each answer counts down its own length; the next answer of the same head has
    its whole body to read, and the relay's judgment of the head is shared."""
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabc"
    first, body = read(raw)
    second, again = read(raw)
    assert (body, again) == (b"abc", b"abc")
    assert second.head is first.head and second.head.length == 3
    assert second.head.headers == (("Content-Length", "3"), ("Connection", "keep-alive"))


def test_a_malformed_head_is_refused_every_time_it_comes() -> None:
    raw = b"HTTP/1.1 200 OK\r\nNo colon here\r\nContent-Length: 0\r\n\r\n"
    for _ in range(2):
        with pytest.raises(BadReplyError, match="malformed header line"):
            read(raw)

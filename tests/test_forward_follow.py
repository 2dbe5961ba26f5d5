"""One client connection carrying forwarded requests back to back (issue 22, goal 3).

The stream thread that answered a forwarded request reads the connection's next
request itself when it comes at once (``Edge._serve``, ``_Detached.next_request``),
instead of handing the connection back to the serving loop and another thread
taking it again. Whatever comes next must be answered as if it had arrived on a
new connection: another forwarded request with every header rule, a registry
request (read by that thread, dispatched the usual way), a body too large for one
read, a stream that still streams and whose client's hang-up still reaches the
plugin, pipelined requests in order.

A real hecated, real plugins (``test_forward.PLUGIN``), real sockets; nothing here
waits on time: every step waits for an answer or for a file the plugin writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, UnixHTTPConnection, short_tempdir, wait_for
from test_forward import Plugin, read_event


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[Daemon, Plugin, Path]]:
    home = short_tempdir("hff")
    daemon = Daemon(home).start()
    seen = home / "seen"
    plugin = Plugin(daemon.root, "hecate-app-followd", seen)
    try:
        yield daemon, plugin, seen
    finally:
        plugin.stop()
        daemon.stop()
        subprocess.run(["rm", "-rf", str(home)], check=False)


def ask(conn: UnixHTTPConnection, method: str, path: str, body: bytes | None = None, **headers):
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.getheaders(), resp.read()


def test_one_connection_carries_every_kind_of_request_in_turn(world: Any) -> None:
    daemon, plugin, _ = world
    prefix = f"/plugin/{plugin.name}"
    conn = UnixHTTPConnection(daemon.socket, timeout=20)
    try:
        for _ in range(3):
            status, headers, body = ask(conn, "GET", f"{prefix}/manifest")
            assert status == 200 and json.loads(body)["name"] == plugin.name
            assert dict(headers)["X-Plugin"] == plugin.name
        # A followed request keeps the header rules: hop-by-hop and forged ones stay out.
        status, _, body = ask(
            conn,
            "GET",
            f"{prefix}/echo",
            **{"Connection": "keep-alive, X-Private", "X-Private": "s", "X-Hecate-Peer-Uid": "0"},
        )
        assert status == 201
        echoed = json.loads(body)["headers"]
        assert "x-private" not in dict(echoed)
        assert [v for k, v in echoed if k == "x-hecate-peer-uid"] == [str(os.getuid())]
        # The registry's own request, read by the forwarding thread: answered as usual.
        status, _, body = ask(conn, "GET", "/api/plugins")
        assert status == 200 and isinstance(json.loads(body), (dict, list))
        status, _, body = ask(conn, "GET", f"{prefix}/manifest")
        assert status == 200
        # A body far larger than one read: the loop reads the rest of it.
        data = os.urandom(300 * 1024)
        status, _, body = ask(conn, "POST", f"{prefix}/echo", data)
        assert status == 201
        assert json.loads(body)["sha256"] == hashlib.sha256(data).hexdigest()
        # HEAD: the plugin's length, no body.
        status, headers, body = ask(conn, "HEAD", f"{prefix}/manifest")
        assert status == 200 and body == b"" and int(dict(headers)["Content-Length"]) > 0
        # A stream still streams, event by event, on the same connection.
        conn.request("GET", f"{prefix}/sse")
        resp = conn.getresponse()
        assert resp.status == 200
        for i in range(1, 4):
            plugin.go()
            assert f"data: event {i}".encode() in read_event(resp)
        assert resp.read() == b""
        status, _, body = ask(conn, "GET", f"{prefix}/manifest")
        assert status == 200 and json.loads(body)["name"] == plugin.name
    finally:
        conn.close()


def read_answer(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    """One answer off a raw socket (Content-Length framed): status and body."""
    while b"\r\n\r\n" not in buf:
        piece = sock.recv(65536)
        assert piece, bytes(buf)
        buf += piece
    end = buf.index(b"\r\n\r\n")
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    del buf[: end + 4]
    fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
    length = int(fields["content-length"])
    while len(buf) < length:
        piece = sock.recv(65536)
        assert piece, bytes(buf)
        buf += piece
    body = bytes(buf[:length])
    del buf[:length]
    return int(head[0].split()[1]), body


def test_pipelined_requests_are_answered_in_their_order(world: Any) -> None:
    daemon, plugin, _ = world
    paths = [
        f"/plugin/{plugin.name}/manifest",
        "/api/plugins",
        f"/plugin/{plugin.name}/echo?n=3",
        f"/plugin/{plugin.name}/nope",
        f"/plugin/{plugin.name}/echo?n=5",
    ]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(daemon.socket))
        sock.settimeout(20)
        buf = bytearray()
        for _ in range(2):  # all in one piece; then again, after the first answers
            sock.sendall(b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for p in paths))
            answers = [read_answer(sock, buf) for _ in paths]
            assert [status for status, _ in answers] == [200, 200, 201, 404, 201]
            assert json.loads(answers[2][1])["path"] == "/echo?n=3"
            assert json.loads(answers[4][1])["path"] == "/echo?n=5"


def test_a_stream_after_a_short_answer_still_hangs_up_on_the_plugin(world: Any) -> None:
    """The client's hang-up is watched for the connection's every forwarded request,
    not only its first: the plugin's stream ends when the client goes."""
    daemon, plugin, seen = world
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(daemon.socket))
        sock.settimeout(20)
        buf = bytearray()
        sock.sendall(f"GET /plugin/{plugin.name}/manifest HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert read_answer(sock, buf)[0] == 200
        sock.sendall(f"GET /plugin/{plugin.name}/hold?c=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        while b": open" not in buf:
            piece = sock.recv(4096)
            assert piece, bytes(buf)
            buf += piece
    wait_for(lambda: "closed after /hold?c=1" in seen.read_text(), timeout=20)


def test_an_answer_larger_than_the_socket_holds_arrives_whole(world: Any) -> None:
    """The first send takes what the socket has room for; the rest is buffered and sent
    as the client reads, from the same thread (it reads nothing until the end here)."""
    daemon, plugin, _ = world
    n = 8 * 1024 * 1024 + 5
    expected = hashlib.sha256(b"big").digest() * (n // 32) + b"x" * (n % 32)
    conn = UnixHTTPConnection(daemon.socket, timeout=20)
    try:
        for _ in range(2):
            status, headers, body = ask(conn, "GET", f"/plugin/{plugin.name}/big?n={n}")
            assert status == 200 and int(dict(headers)["Content-Length"]) == n
            assert body == expected
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("line", "extra"), [("HTTP/1.1", "Connection: close\r\n"), ("HTTP/1.0", "")]
)
def test_the_same_plugin_head_still_closes_when_the_client_asks(
    world: Any, line: str, extra: str
) -> None:
    """An answer head remembered for a kept-alive request is not reused for one whose
    client asked to close (or spoke HTTP/1.0): that answer says so and the connection ends."""
    daemon, plugin, _ = world
    path = f"/plugin/{plugin.name}/manifest"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(daemon.socket))
        sock.settimeout(20)
        buf = bytearray()
        for _ in range(2):
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert read_answer(sock, buf)[0] == 200
        sock.sendall(f"GET {path} {line}\r\nHost: x\r\n{extra}\r\n".encode())
        assert read_answer(sock, buf)[0] == 200
        assert sock.recv(1) == b""  # closed after it


def test_a_followed_request_that_expects_100_continue_gets_it(world: Any) -> None:
    """``Expect: 100-continue`` on the request a stream thread reads itself: the interim
    answer comes from that thread (``Channel.send_continue``), the body follows, the
    plugin's answer after it, and the connection goes on."""
    daemon, plugin, _ = world
    prefix = f"/plugin/{plugin.name}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(daemon.socket))
        s.settimeout(20)
        body = b"x" * 5000
        s.sendall(
            f"GET {prefix}/manifest HTTP/1.1\r\nHost: x\r\n\r\n"
            f"POST {prefix}/echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        seen = b""
        while b"HTTP/1.1 100 Continue\r\n\r\n" not in seen:
            piece = s.recv(65536)
            assert piece, seen
            seen += piece
        assert seen.startswith(b"HTTP/1.1 200 "), seen[:100]
        s.sendall(body)
        after = seen.split(b"HTTP/1.1 100 Continue\r\n\r\n", 1)[1]
        while b"\r\n\r\n" not in after:
            piece = s.recv(65536)
            assert piece, after
            after += piece
        assert after.startswith(b"HTTP/1.1 201 "), after[:200]

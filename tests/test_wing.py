"""The forwarding wing against hostile spellings and hostile plugins (issue 23).

A real hecated process; plugins are real processes on their own sockets. The
``RAW`` plugin answers each path with bytes written as they are (conflicting
framing, a folded header, a CR in the reason phrase, ``101``, an unrequested
extra answer), which no well-behaved HTTP server library would send.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, UnixHTTPConnection, short_tempdir, wait_for
from rel_support import raw_exchange
from test_forward import Plugin

from hecated.protocol import accepts

RAW = textwrap.dedent(
    r"""
    import socket, sys, threading

    path, seen = sys.argv[1], open(sys.argv[2], "a")
    go = threading.Semaphore(0)

    def read_go():
        for _ in sys.stdin:
            go.release()
    threading.Thread(target=read_go, daemon=True).start()

    def answer(body, head="HTTP/1.1 200 OK", extra=""):
        return f"{head}\r\nContent-Length: {len(body)}\r\n{extra}\r\n{body}".encode()

    HOP = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Private\r\n"
        b"X-Private: p\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\n"
        b"Trailer: X-T\r\nUpgrade: h2c\r\nX-Kept: k\r\n\r\n")

    CANNED = {
        "/te-and-length": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "/te-and-two-lengths": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 5\r\nContent-Length: 7\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "/two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n"
            b"hello!!",
        "/switch": b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n",
        "/folded": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Folded: a\r\n b\r\n\r\nok",
        "/cr-reason": b"HTTP/1.1 200 O\rK\r\nContent-Length: 2\r\n\r\nok",
        "/no-colon": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Oops\r\nX-After: 1\r\n\r\nok",
        "/space-colon": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Space : a\r\n\r\nok",
        "/many-headers": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
            + b"".join(b"X-%d: a\r\n" % i for i in range(100)) + b"\r\nok",
        "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
        "/hop": HOP + b"ok",
    }

    def serve(conn):
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                target = head.split(b"\r\n")[0].split(b" ")[1].decode()
                seen.write(target + "\n"); seen.flush()
                route = target.split("?")[0]
                if route == "/hop-late":  # the same head, its body only when told
                    conn.sendall(HOP)
                    go.acquire()
                    conn.sendall(b"ok")
                    continue
                if route == "/extra":  # its answer, then (when told) one nobody asked for
                    conn.sendall(answer("first"))
                    go.acquire()
                    conn.sendall(answer("stale", extra="X-Stale: yes\r\n"))
                    print("extra sent", flush=True)
                    continue
                conn.sendall(CANNED.get(route) or answer(target))

    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
    """
)


class RawPlugin:
    """The raw plugin: its own process and socket, the paths it was sent in ``seen``."""

    def __init__(self, root: Path, name: str) -> None:
        sockets = root / name / "sockets"
        sockets.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.socket = sockets / "api.sock"
        self.seen = root.parent / f"{name}.seen"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RAW, str(self.socket), str(self.seen)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        wait_for(lambda: self.socket.exists() and accepts(self.socket))

    def send_extra(self) -> None:
        """Let the plugin write its unrequested answer; return once it has."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        assert ready, "the plugin could not send its extra answer: hecated closed the connection"
        assert self.proc.stdout.readline() == b"extra sent\n"

    def go(self) -> None:
        """Let the plugin send what it holds back (``/hop-late``'s body)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def paths(self) -> list[str]:
        return self.seen.read_text().split() if self.seen.exists() else []

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[Daemon, RawPlugin]]:
    home = short_tempdir("hw")
    daemon = Daemon(home).start()
    raw = RawPlugin(daemon.root, "hecate-app-rawd")
    try:
        yield daemon, raw
    finally:
        raw.stop()
        daemon.stop()
        subprocess.run(["rm", "-rf", str(home)], check=False)


def get(sock: Path, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
    conn = UnixHTTPConnection(sock, timeout=20)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


def raw_get(sock: Path, target: str) -> tuple[int, dict[str, str], bytes]:
    """A request line sent exactly as written (curl --path-as-is)."""
    return raw_exchange(sock, f"GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode(), 20)


def read_answers(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """``count`` answers read off one connection (each framed by Content-Length)."""
    buf, answers = b"", []
    while len(answers) < count:
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if sep:
            lines = head.decode("latin-1").split("\r\n")
            fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
            length = int(fields["content-length"])
            if len(rest) >= length:
                answers.append((int(lines[0].split()[1]), rest[:length]))
                buf = rest[length:]
                continue
        piece = sock.recv(65536)
        assert piece, f"the connection closed after {len(answers)} answer(s): {buf!r}"
        buf += piece
    return answers


def envelope(body: bytes, code: str) -> str:
    doc = json.loads(body)
    assert doc["ok"] is False and doc["code"] == code and doc["error"], doc
    return doc["error"]


# -- defect 1: every spelling that reaches forwarding takes the forwarding road -------------


def test_slash_spelled_streams_run_on_the_wing_and_the_registry_still_answers() -> None:
    """Twenty clients hold ``//plugin/endless/hold`` streams open (more than the 16 API
    workers): each runs on a stream thread, so /health and the registry still answer."""
    home = short_tempdir("hw")
    daemon = Daemon(home).start()
    seen = home / "endless.seen"
    plugin = Plugin(daemon.root, "hecate-app-endlessd", seen)
    streams: list[socket.socket] = []
    try:
        for _ in range(20):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(20)
            s.connect(str(daemon.socket))
            s.sendall(b"GET //plugin/endless/hold HTTP/1.1\r\nHost: localhost\r\n\r\n")
            streams.append(s)
        for s in streams:  # each one is open: its first event arrived
            data = b""
            while b": open" not in data:
                piece = s.recv(4096)
                assert piece, data
                data += piece
        assert raw_get(daemon.socket, "/health")[0] == 200
        assert raw_get(daemon.socket, "//api/plugins")[0] == 200
        status, _, body = raw_get(daemon.socket, "///plugin/endless/manifest")
        assert status == 200 and json.loads(body)["name"] == "hecate-app-endlessd"
    finally:
        for s in streams:
            s.close()
        plugin.stop()
        daemon.stop()
        subprocess.run(["rm", "-rf", str(home)], check=False)


@pytest.mark.parametrize(
    "target",
    [
        "/./plugin/raw/x",
        "/a/../plugin/raw/x",
        "/plugin/raw/../../api/plugins",
        "/plugin/raw/x/%2e%2e/%2E%2E/api/plugins",
        "/plugin/raw/./x",
        "/api/plugins/../plugins",
    ],
)
def test_dot_segments_are_refused_before_anyone_resolves_them(world: Any, target: str) -> None:
    daemon, raw = world
    status, _, body = raw_get(daemon.socket, target)
    assert status == 400
    assert "segment" in envelope(body, "bad_request")
    assert not any(".." in p or "/./" in p for p in raw.paths())


def test_an_escaped_slash_in_the_name_does_not_shift_the_forwarded_path(world: Any) -> None:
    daemon, raw = world
    status, _, body = raw_get(daemon.socket, "/plugin/raw%2Fecho/x")
    assert status == 400
    assert "escaped" in envelope(body, "bad_request")
    assert "/x" not in raw.paths()
    # An escaped slash in the rest is the plugin's business: passed on as it came.
    status, _, body = raw_get(daemon.socket, "/plugin/raw/a%2Fb")
    assert (status, body) == (200, b"/a%2Fb")


# -- defect 5: a pooled connection the plugin wrote to is never reused ----------------------


def test_an_unrequested_answer_on_a_kept_connection_reaches_nobody(world: Any) -> None:
    daemon, raw = world
    status, _, body = get(daemon.socket, "/plugin/raw/extra")
    assert (status, body) == (200, b"first")
    raw.send_extra()  # on the connection hecated kept alive for the next request
    status, headers, body = get(daemon.socket, "/plugin/raw/mine")
    assert (status, body) == (200, b"/mine"), "a client got another request's answer"
    assert "X-Stale" not in dict(headers)
    status, _, body = get(daemon.socket, "/plugin/raw/next")
    assert (status, body) == (200, b"/next")


# -- defects 6 and 7: answers hecated cannot pass on faithfully are 502s --------------------


@pytest.mark.parametrize(
    ("route", "words"),
    [
        ("/te-and-length", "conflicting framing"),
        ("/te-and-two-lengths", "conflicting framing"),
        ("/two-lengths", "differ"),
        ("/switch", "101"),
        ("/folded", "folded"),
        ("/cr-reason", "reason phrase"),
        # A line that is no header: email's parser took it and every later header as
        # body, and the answer went out without them (issue 22's own reader refuses it).
        ("/no-colon", "malformed header line"),
        ("/space-colon", "malformed header line"),
        ("/many-headers", "100 headers"),  # http.client's bound, kept
    ],
)
def test_an_answer_that_cannot_be_relayed_faithfully_is_a_502(
    world: Any, route: str, words: str
) -> None:
    daemon, _ = world
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(str(daemon.socket))
        # Pipelined: the second request must get its own answer after the refusal.
        sock.sendall(
            f"GET /plugin/raw{route} HTTP/1.1\r\nHost: x\r\n\r\n"
            "GET /plugin/raw/after HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        (status, body), after = read_answers(sock, 2)
    assert status == 502
    assert words in envelope(body, "plugin_unreachable")
    assert after == (200, b"/after")


def test_a_chunked_answer_leaves_unchunked_with_one_framing(world: Any) -> None:
    daemon, _ = world
    status, headers, body = get(daemon.socket, "/plugin/raw/chunked")
    assert (status, body) == (200, b"hello")
    assert "content-length" not in {k.lower() for k, _ in headers}  # framed anew: chunked


@pytest.mark.parametrize("route", ["/hop", "/hop-late"])
def test_an_answers_hop_by_hop_headers_stop_here_whole_or_relayed_as_it_comes(
    world: Any, route: str
) -> None:
    """An answer whose body came with its head is handed on at once, one whose body
    comes later is relayed as it comes: both lose the same hop-by-hop headers (the
    listed ones, those Connection names) and keep the end-to-end ones."""
    daemon, raw = world
    conn = UnixHTTPConnection(daemon.socket, timeout=20)
    try:
        conn.request("GET", f"/plugin/raw{route}?n={len(raw.paths())}")
        if route == "/hop-late":
            wait_for(lambda: any(p.startswith(route) for p in raw.paths()))
            raw.go()
        resp = conn.getresponse()
        status, headers, body = resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()
    assert (status, body) == (200, b"ok")
    names = {k.lower() for k, _ in headers}
    assert not names & {"x-private", "keep-alive", "proxy-authenticate", "trailer", "upgrade"}
    assert dict(headers)["X-Kept"] == "k"
    assert dict(headers)["Content-Length"] == "2"


# -- minor: numbers as written -----------------------------------------------------------


@pytest.mark.parametrize("query", ["since=10_0", "since=%2B5", "since=%205", "wait=1_0"])
def test_numbers_with_underscores_or_signs_are_refused(world: Any, query: str) -> None:
    daemon, _ = world
    status, _, body = get(daemon.socket, f"/api/plugins?{query}")
    assert status == 400
    envelope(body, "invalid_parameter")

"""Forwarding /plugin/{name}/... to each plugin's own socket, end to end.

A real hecated process, and plugins that are real processes: a small stdlib
HTTP server on ``~/.hecate/NAME/sockets/api.sock``. Streams are synchronised
with the plugin (it sends each event when the test says so on its stdin), so
nothing here depends on timing.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, UnixHTTPConnection, http_request, short_tempdir, wait_for

from hecated.protocol import accepts

PLUGIN = textwrap.dedent(
    r"""
    import hashlib, json, os, socket, sys, threading, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    path = sys.argv[1]
    name = sys.argv[2]
    go = threading.Semaphore(0)   # one release per line on stdin: "send the next event"

    def read_go():
        for _ in sys.stdin:
            go.release()
    threading.Thread(target=read_go, daemon=True).start()
    seen = open(sys.argv[3], "a") if len(sys.argv) > 3 else None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *a): pass

        def _json(self, status, body, extra=()):
            data = json.dumps(body, sort_keys=True).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Plugin", name)
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _any(self):
            if seen:
                seen.write(self.path + "\n"); seen.flush()
            length = int(self.headers.get("Content-Length") or 0)
            body = b""
            digest = hashlib.sha256()
            left = length
            while left:
                piece = self.rfile.read(min(65536, left))
                if not piece:
                    break
                digest.update(piece)
                if len(body) < 1024:
                    body += piece[: 1024 - len(body)]
                left -= len(piece)
            route = self.path.split("?")[0]
            if route == "/manifest":
                return self._json(200, {"name": name, "version": "1.0", "icon": "x",
                                        "description": "test", "tag": "x-test"})
            if route == "/echo":
                return self._json(201, {
                    "method": self.command, "path": self.path,
                    "headers": sorted((k.lower(), v) for k, v in self.headers.items()),
                    "length": length, "sha256": digest.hexdigest(),
                    "head": body.decode("latin-1")}, [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
            if route == "/sse":  # chunked, as HTTP/1.1 servers stream: a cut is visible
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                for i in range(1, 4):
                    go.acquire()
                    event = f"id: {i}\ndata: event {i}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                return
            if route == "/big":  # n bytes, declared: more than a socket's buffer holds
                n = int(self.path.partition("n=")[2] or 0)
                self.send_response(200)
                self.send_header("Content-Length", str(n))
                self.end_headers()
                self.wfile.write(hashlib.sha256(b"big").digest() * (n // 32) + b"x" * (n % 32))
                return
            if route == "/hold":
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.close_connection = True
                self.wfile.write(b": open\n\n")
                self.wfile.flush()
                self.rfile.read()  # until hecated closes its end
                return
            if route == "/silent":
                self.rfile.read()
                return
            return self._json(404, {"ok": False, "error": "no such route", "code": "not_found"})

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _any

        def finish(self):  # a connection that carried a request closed: say which
            super().finish()
            if seen and getattr(self, "path", None):
                seen.write(f"closed after {self.path}\n"); seen.flush()

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_UNIX
        daemon_threads = True
        request_queue_size = 512
        def server_bind(self):
            self.socket.bind(self.server_address)
            self.server_name, self.server_port = "localhost", 0

    Server(path, Handler).serve_forever()
    """
)


class Plugin:
    """A plugin daemon: its own process, its own socket, no pid file, no plugin.toml."""

    def __init__(self, root: Path, name: str, seen: Path | None = None) -> None:
        self.name = name
        self.sockets = root / name / "sockets"
        self.sockets.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.socket = self.sockets / "api.sock"
        args = [sys.executable, "-c", PLUGIN, str(self.socket), name]
        if seen is not None:
            args.append(str(seen))
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE)
        wait_for(lambda: self.socket.exists() and accepts(self.socket))

    def go(self) -> None:
        """Let the plugin send its next event."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[Daemon, Path, list[Plugin]]]:
    home = short_tempdir("hf")
    daemon = Daemon(home, ["--forward-body-limit", str(4 * 1024 * 1024)]).start()
    plugins: list[Plugin] = []
    try:
        yield daemon, daemon.root, plugins
    finally:
        for plugin in plugins:
            plugin.stop()
        daemon.stop()
        subprocess.run(["rm", "-rf", str(home)], check=False)


def start(world: Any, name: str, seen: Path | None = None) -> Plugin:
    _, root, plugins = world
    plugin = Plugin(root, name, seen)
    plugins.append(plugin)
    return plugin


def request(sock: Path, method: str, path: str, body: bytes | None = None, **headers: str):
    """Status, header pairs (repeats kept) and raw body of one request."""
    conn = UnixHTTPConnection(sock, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


def envelope(status: int, body: bytes, code: str) -> dict[str, Any]:
    doc = json.loads(body)
    assert doc["ok"] is False and doc["code"] == code and doc["error"], doc
    return doc


def end_to_end(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The answer's headers that the plugin wrote (the servers' own ones differ)."""
    skip = {"date", "server", "via", "connection", "keep-alive", "transfer-encoding"}
    return sorted((k.lower(), v) for k, v in headers if k.lower() not in skip)


def echo_without_peer(body: bytes) -> dict[str, Any]:
    doc = json.loads(body)
    doc["headers"] = [h for h in doc["headers"] if not h[0].startswith("x-hecate-peer-")]
    return doc


# -- plain requests --------------------------------------------------------------------------


def test_get_and_post_through_the_forwarder_equal_the_direct_requests(world: Any) -> None:
    daemon = world[0]
    plugin = start(world, "hecate-app-echod")
    for method, path, body in [
        ("GET", "/manifest", None),
        ("GET", "/echo?q=1&r=%2F", None),
        ("POST", "/echo?x=y", b'{"a": 1}'),
        ("POST", "/echo", os.urandom(1024 * 1024 + 17)),  # over waitress's in-memory spool
        ("PUT", "/echo", b"x" * 10),
        ("DELETE", "/echo", None),
        ("GET", "/nope", None),
    ]:
        headers = {"X-Custom": "v", "Content-Type": "application/octet-stream"}
        direct = request(plugin.socket, method, path, body, **headers)
        forwarded = request(daemon.socket, method, f"/plugin/{plugin.name}{path}", body, **headers)
        assert forwarded[0] == direct[0], (method, path, forwarded)
        echo = path.startswith("/echo")  # its body (and length) names the peer headers
        drop = {"content-length"} if echo else set()
        assert [h for h in end_to_end(forwarded[1]) if h[0] not in drop] == [
            h for h in end_to_end(direct[1]) if h[0] not in drop
        ], (method, path)
        if echo:
            assert echo_without_peer(forwarded[2]) == echo_without_peer(direct[2])
            peer = dict(json.loads(forwarded[2])["headers"])
            assert peer["x-hecate-peer-pid"] == str(os.getpid())
            assert peer["x-hecate-peer-uid"] == str(os.getuid())
            assert peer["host"] == "localhost"
        else:
            assert forwarded[2] == direct[2]


def test_hop_by_hop_and_forged_peer_headers_are_not_forwarded(world: Any) -> None:
    daemon = world[0]
    plugin = start(world, "hecate-app-hopd")
    status, _, body = request(
        daemon.socket,
        "GET",
        f"/plugin/{plugin.name}/echo",
        **{
            "X-Hecate-Peer-Uid": "0",
            "X-Hecate-Peer-Pid": "1",
            "Connection": "keep-alive, X-Private",
            "X-Private": "secret",
            "Keep-Alive": "timeout=5",
        },
    )
    assert status == 201
    headers = json.loads(body)["headers"]
    names = [k for k, _ in headers]
    assert "x-private" not in names and "keep-alive" not in names
    assert dict(headers)["x-hecate-peer-uid"] == str(os.getuid())
    assert names.count("x-hecate-peer-uid") == 1


def test_a_body_over_the_forwarding_limit_is_a_413(world: Any) -> None:
    daemon = world[0]
    plugin = start(world, "hecate-app-bigd")
    status, _, body = request(
        daemon.socket, "POST", f"/plugin/{plugin.name}/echo", b"x" * (4 * 1024 * 1024 + 1)
    )
    assert status == 413
    envelope(status, body, "body_too_large")
    # The registry API keeps its own 64 KiB limit.
    status, _, body = request(daemon.socket, "POST", "/api/plugins/register", b"{" * 70000)
    assert status == 413


# -- streams ---------------------------------------------------------------------------------


def read_event(resp: http.client.HTTPResponse) -> bytes:
    """One server-sent event, read as it arrives (blocks until the plugin sent it)."""
    data = b""
    while not data.endswith(b"\n\n"):
        piece = resp.read1(4096)
        assert piece, f"the stream ended after {data!r}"
        data += piece
    return data


def open_stream(sock: Path, path: str) -> tuple[UnixHTTPConnection, http.client.HTTPResponse]:
    conn = UnixHTTPConnection(sock, timeout=20)
    conn.request("GET", path, headers={"Accept": "text/event-stream"})
    return conn, conn.getresponse()


def test_server_sent_events_arrive_one_by_one(world: Any) -> None:
    daemon = world[0]
    plugin = start(world, "hecate-app-ssed")
    conn, resp = open_stream(daemon.socket, f"/plugin/{plugin.name}/sse")
    try:
        # The headers came before any event: the plugin has not been told to send one.
        assert resp.status == 200
        assert resp.getheader("Content-Type") == "text/event-stream"
        for i in range(1, 4):
            plugin.go()  # the next event is sent only after the previous one was seen
            assert read_event(resp) == f"id: {i}\ndata: event {i}\n\n".encode()
        assert resp.read() == b""  # the plugin closed: the stream ends cleanly
    finally:
        conn.close()


def test_a_plugin_killed_mid_stream_ends_the_clients_stream(world: Any) -> None:
    daemon = world[0]
    plugin = start(world, "hecate-app-dyingd")
    conn, resp = open_stream(daemon.socket, f"/plugin/{plugin.name}/sse")
    try:
        plugin.go()
        assert read_event(resp) == b"id: 1\ndata: event 1\n\n"
        plugin.proc.send_signal(signal.SIGKILL)
        plugin.proc.wait(10)
        # The stream is cut (no chunked terminator), never completed nor hung.
        with pytest.raises(http.client.IncompleteRead):
            while resp.read1(4096):
                pass
    finally:
        conn.close()
    assert daemon.request("GET", "/health")[0] == 200
    assert "Traceback" not in daemon.log()


# -- errors ----------------------------------------------------------------------------------


def test_an_unknown_name_is_a_404(world: Any) -> None:
    daemon = world[0]
    status, _headers, body = request(daemon.socket, "GET", "/plugin/nosuch/manifest")
    assert status == 404
    envelope(status, body, "not_found")
    status, _, body = request(daemon.socket, "GET", "/plugin/Bad_Name/manifest")
    assert status == 400
    envelope(status, body, "invalid_name")
    status, _, body = request(daemon.socket, "GET", "/plugin/hecate-daemon/health")
    assert status == 400
    envelope(status, body, "reserved_name")


def test_a_stopped_plugin_is_a_502(world: Any) -> None:
    daemon, root, _ = world
    # A crash leaves the socket file; nothing accepts on it.
    sockets = root / "hecate-app-staled" / "sockets"
    sockets.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sockets / "api.sock"))
    stale.close()
    status, _, body = request(daemon.socket, "GET", "/plugin/stale/manifest")
    assert status == 502
    envelope(status, body, "plugin_unreachable")
    # A namespace with no socket at all.
    (root / "hecate-app-gone" / "sockets").mkdir(parents=True)
    status, _, body = request(daemon.socket, "GET", "/plugin/hecate-app-gone/manifest")
    assert status == 502
    envelope(status, body, "plugin_unreachable")


def test_a_registered_plugin_that_cannot_be_started_is_a_502(world: Any) -> None:
    """Registered (so it has a unit to start on demand), not running, and no user manager
    to start it here: still the plain 502 every client knows, saying why."""
    daemon, _, _ = world
    assert daemon.register("hecate-app-unstarted")[0] == 201
    status, _, body = request(daemon.socket, "GET", "/plugin/hecate-app-unstarted/manifest")
    assert status == 502, body
    envelope(status, body, "plugin_unreachable")
    assert "user manager" in json.loads(body)["error"]


def test_a_silent_plugin_is_a_504() -> None:
    home = short_tempdir("hf")
    daemon = Daemon(home, ["--forward-timeout", "0.5"]).start()
    plugin = Plugin(daemon.root, "hecate-app-silentd")
    try:
        status, _headers, body = request(daemon.socket, "GET", "/plugin/silent/silent")
        assert status == 504
        envelope(status, body, "plugin_timeout")
        # The daemon goes on answering on the same socket.
        assert daemon.request("GET", "/api/plugins")[0] == 200
    finally:
        plugin.stop()
        daemon.stop()
        subprocess.run(["rm", "-rf", str(home)], check=False)


def test_the_stream_cap_answers_503_while_the_registry_still_answers(world: Any) -> None:
    daemon = world[0]
    plugin = start(world, "hecate-app-holdd")
    streams: list[socket.socket] = []
    path = f"/plugin/{plugin.name}/hold"
    try:
        for _ in range(256):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(daemon.socket))  # blocking: waits for room in the backlog
            s.settimeout(20)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            streams.append(s)
        for s in streams:  # each one is open: its first event arrived
            data = b""
            while b": open" not in data:
                piece = s.recv(4096)
                assert piece, data
                data += piece
        status, headers, body = request(daemon.socket, "GET", path)
        assert status == 503
        envelope(status, body, "busy")
        assert dict(headers).get("Retry-After") == "1"
        _a_refused_head_has_no_body(daemon.socket, path)
        status, _, _ = http_request(daemon.socket, "GET", "/api/plugins")
        assert status == 200
        assert daemon.request("GET", "/health")[0] == 200
    finally:
        for s in streams:
            s.close()
    # The places free up once the streams end.
    wait_for(lambda: request(daemon.socket, "GET", f"/plugin/{plugin.name}/manifest")[0] == 200)


def _a_refused_head_has_no_body(path: Path, target: str) -> None:
    """HEAD refused busy on a kept-alive connection: its head says the body's length, and
    no body follows, or the client would read that body as the start of its next answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
        s.settimeout(20)
        s.sendall(f"HEAD {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            piece = s.recv(4096)
            assert piece, data
            data += piece
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 "), head
        assert b"\r\ncontent-length: " in head.lower(), head
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        while len(rest) < 12:
            piece = s.recv(4096)
            assert piece, rest
            rest += piece
        assert rest.startswith(b"HTTP/1.1 200"), rest[:200]


# -- names and the tree --------------------------------------------------------------------


def test_the_naming_conventions_in_order(world: Any) -> None:
    daemon = world[0]
    start(world, "hecate-app-traderd")
    start(world, "hecate-traderd")
    start(world, "hecate-marketd")
    start(world, "market")  # the name itself wins over both conventions

    def served_by(path: str) -> str:
        status, headers, _ = request(daemon.socket, "GET", path)
        assert status == 200, path
        return dict(headers)["X-Plugin"]

    assert served_by("/plugin/trader/manifest") == "hecate-app-traderd"
    assert served_by("/plugin/hecate-traderd/manifest") == "hecate-traderd"
    assert served_by("/plugin/market/manifest") == "market"
    assert served_by("/plugin/hecate-marketd/manifest") == "hecate-marketd"


def test_a_registered_plugin_is_reached_by_its_registry_name(world: Any) -> None:
    daemon = world[0]
    status, _, _ = daemon.register("hecate-app-regd")
    assert status == 201
    start(world, "hecate-app-regd")
    assert request(daemon.socket, "GET", "/plugin/hecate-app-regd/manifest")[0] == 200
    assert request(daemon.socket, "GET", "/plugin/reg/manifest")[0] == 200


def test_symlinks_out_of_the_tree_are_refused(world: Any, tmp_path: Path) -> None:
    daemon, root, _ = world
    outside = short_tempdir("hx")
    seen = outside / "seen"
    try:
        target = Plugin(outside, "elsewhere", seen)
        try:
            # sockets/ is a symlink to a directory outside the tree
            (root / "hecate-app-linkdird").mkdir()
            (root / "hecate-app-linkdird" / "sockets").symlink_to(target.sockets)
            # sockets/api.sock is a symlink to a socket outside the tree
            (root / "hecate-app-linksockd" / "sockets").mkdir(parents=True)
            (root / "hecate-app-linksockd" / "sockets" / "api.sock").symlink_to(target.socket)
            # the namespace itself is a symlink
            (root / "hecate-app-linknsd").symlink_to(outside / "elsewhere")
            for name, code in [
                ("linkdir", "plugin_unreachable"),
                ("linksock", "plugin_unreachable"),
                ("linkns", "plugin_unreachable"),  # the index lists it (as broken)
                ("hecate-app-linknsd", "plugin_unreachable"),
            ]:
                status, _, body = request(daemon.socket, "GET", f"/plugin/{name}/manifest")
                assert status == 502, (name, status)
                assert "symlink" in envelope(status, body, code)["error"]
            assert not seen.exists() or seen.read_text() == ""
            # ... while the plugin itself answers on its own socket.
            assert request(target.socket, "GET", "/manifest")[0] == 200
        finally:
            target.stop()
    finally:
        subprocess.run(["rm", "-rf", str(outside)], check=False)


def test_another_users_peer_is_refused_before_anything_is_forwarded(world: Any) -> None:
    """The forwarded route goes through the same peer check: a wrong uid is a 403."""
    from werkzeug.test import Client

    from hecated.core.index import Index
    from hecated.core.layout import Layout
    from hecated.http.app import HecateApp
    from hecated.http.forwarding.relay import Forwarder
    from hecated.protocol import PEER_ENVIRON_KEY, Peer

    _, root, _ = world
    registry = Index(Layout.at(root))
    app = HecateApp(registry, owner_uid=os.getuid() + 1, forward=Forwarder(registry))

    def as_peer(environ: dict, start_response: Any) -> Any:
        environ[PEER_ENVIRON_KEY] = Peer(os.getpid(), os.getuid(), os.getgid())
        return app(environ, start_response)

    resp = Client(as_peer).get("/plugin/trader/manifest")
    assert resp.status_code == 403
    assert json.loads(resp.get_data())["code"] == "forbidden"


def test_a_stream_that_carries_nothing_is_ended_after_the_idle_timeout() -> None:
    home = short_tempdir("hf")
    daemon = Daemon(home, ["--forward-idle-timeout", "0.5"]).start()
    plugin = Plugin(daemon.root, "hecate-app-idled")
    try:
        conn, resp = open_stream(daemon.socket, "/plugin/idle/hold")
        try:
            assert read_event(resp) == b": open\n\n"
            # Nothing more comes: hecated ends the stream (cut, not completed).
            with pytest.raises(http.client.IncompleteRead):
                while resp.read1(4096):
                    pass
        finally:
            conn.close()
        assert daemon.request("GET", "/health")[0] == 200
    finally:
        plugin.stop()
        daemon.stop()
        subprocess.run(["rm", "-rf", str(home)], check=False)


def test_the_forwarding_settings_come_from_flag_environment_and_file(tmp_path: Path) -> None:
    from hecated.core.config import ConfigError, resolve

    default = resolve({}, {"HOME": str(tmp_path)})
    assert (default.forward_body_limit, default.forward_streams) == (16 * 1024 * 1024, 256)
    assert (default.forward_idle_timeout, default.forward_timeout) == (300.0, 30.0)
    conf = tmp_path / "h.toml"
    conf.write_text("[hecated]\nforward_streams = 8\nforward_timeout = 5\n")
    env = {"HOME": str(tmp_path), "HECATE_FORWARD_IDLE_TIMEOUT": "60"}
    config = resolve({"config": str(conf), "forward_body_limit": 1000}, env)
    assert config.forward_body_limit == 1000  # flag
    assert config.forward_idle_timeout == 60.0  # environment
    assert (config.forward_streams, config.forward_timeout) == (8, 5.0)  # file
    with pytest.raises(ConfigError, match="forward_streams"):
        resolve({"forward_streams": 0}, {"HOME": str(tmp_path)})


def test_a_kept_alive_connection_the_plugin_closed_is_replaced(world: Any) -> None:
    """Bodiless GETs reuse a connection to the plugin; after the plugin restarted, the
    kept one is dead and the request goes over a new one, unseen by the client."""
    daemon = world[0]
    plugin = start(world, "hecate-app-restartd")
    for _ in range(3):
        assert request(daemon.socket, "GET", "/plugin/restart/manifest")[0] == 200
    plugin.stop()
    plugin.socket.unlink()
    start(world, "hecate-app-restartd")
    status, headers, _ = request(daemon.socket, "GET", "/plugin/restart/manifest")
    assert status == 200 and dict(headers)["X-Plugin"] == "hecate-app-restartd"
    # A POST never goes over a kept connection: it reaches the new plugin too.
    assert request(daemon.socket, "POST", "/plugin/restart/echo", b"x")[0] == 201


def test_a_client_that_half_closes_after_its_request_still_gets_the_answer(world: Any) -> None:
    """``nc -N``: the request, then shutdown(SHUT_WR). Only the sending side is shut; the
    answer (a plain one, and a stream to its end) must still come back whole."""
    daemon = world[0]
    plugin = start(world, "hecate-app-halfd")
    expected = request(plugin.socket, "GET", "/manifest")[2]
    for path, go in [("/manifest", 0), ("/sse", 3)]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(daemon.socket))
            s.settimeout(20)
            s.sendall(f"GET /plugin/half{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            s.shutdown(socket.SHUT_WR)
            for _ in range(go):
                plugin.go()
            data = b""
            while piece := s.recv(65536):  # to EOF: hecated closes once it has answered
                data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), data
        if path == "/manifest":
            assert body == expected
        else:
            assert b"data: event 3\n\n" in body and body.endswith(b"0\r\n\r\n"), body


def test_an_idle_kept_alive_connection_is_closed_without_another_request(world: Any) -> None:
    """The pool's connection to a plugin is closed once idle past its bound, by hecated
    itself: no later request to that plugin is needed to reap it."""
    from werkzeug.test import Client

    from hecated.core.index import Index
    from hecated.core.layout import Layout
    from hecated.http.app import HecateApp
    from hecated.http.forwarding.relay import Forwarder
    from hecated.http.forwarding.settings import ForwardSettings
    from hecated.protocol import PEER_ENVIRON_KEY, Peer

    _, root, _ = world
    seen = short_tempdir("hs") / "seen"
    try:
        plugin = start(world, "hecate-app-reapd", seen)
        registry = Index(Layout.at(root))
        forwarder = Forwarder(registry, ForwardSettings(pool_idle=0.5))
        app = HecateApp(registry, forward=forwarder)

        def as_peer(environ: dict, start_response: Any) -> Any:
            environ[PEER_ENVIRON_KEY] = Peer(os.getpid(), os.getuid(), os.getgid())
            return app(environ, start_response)

        resp = Client(as_peer).get(f"/plugin/{plugin.name}/manifest")
        assert resp.status_code == 200 and json.loads(resp.get_data())["name"] == plugin.name
        resp.close()  # as every WSGI server does once the answer has left: the relay ends
        assert "closed after /manifest" not in seen.read_text()  # kept for the next one ...
        assert sum(len(v) for v in forwarder.pool._idle.values()) == 1
        # ... and closed by hecated once idle past the bound: the plugin reads EOF.
        wait_for(lambda: "closed after /manifest" in seen.read_text())
        assert forwarder.pool._idle == {}
    finally:
        subprocess.run(["rm", "-rf", str(seen.parent)], check=False)


def test_at_shutdown_open_streams_are_cut_and_both_ends_closed() -> None:
    """A stream's connection is out of waitress's loop while it runs; stopping the daemon
    still ends it: the client's stream is cut, the plugin's connection closed, exit 0."""
    home = short_tempdir("hf")
    seen = home / "seen"
    daemon = Daemon(home).start()
    plugin = Plugin(daemon.root, "hecate-app-stopd", seen)
    try:
        streams = [open_stream(daemon.socket, "/plugin/stop/hold") for _ in range(3)]
        for _, resp in streams:
            assert read_event(resp) == b": open\n\n"
        assert daemon.stop() == 0
        for conn, resp in streams:
            with pytest.raises(http.client.IncompleteRead):  # cut, not completed
                while resp.read1(4096):
                    pass
            conn.close()
        wait_for(lambda: seen.read_text().count("closed after /hold") == 3)
        assert "Traceback" not in daemon.log()
    finally:
        plugin.stop()
        daemon.kill()
        subprocess.run(["rm", "-rf", str(home)], check=False)

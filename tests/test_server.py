"""The serving layer over real Unix sockets: concurrency, slow clients, peers, shutdown.

Each test serves a small WSGI app with ``UnixServer`` in a thread and talks to
it with plain sockets, so a server that serialised connections, lost the
peer's credentials, dropped an in-flight answer or removed someone else's
socket file would fail here. One test runs the real daemon and checks it holds
no TCP socket at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Daemon, UnixHTTPConnection, short_tempdir, wait_for

from hecated.http.server import Admission, UnixServer, bind_unix
from hecated.protocol import PEER_ENVIRON_KEY, RETRY_AFTER_HEADER, error_body


def echo_app(environ: dict, start_response: Callable) -> list[bytes]:
    peer = environ.get(PEER_ENVIRON_KEY)
    body = json.dumps({"path": environ["PATH_INFO"], "peer": list(peer) if peer else None})
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body.encode()]


class Served:
    """A UnixServer serving in a background thread, with its socket path."""

    def __init__(self, app: Callable, owned: bool = True, **kw) -> None:
        self.dir = short_tempdir("hs")
        self.path = self.dir / "api.sock"
        self.server = UnixServer(
            bind_unix(self.path), app, owned_path=self.path if owned else None, **kw
        )
        self.ticks = 0
        self.thread = threading.Thread(target=self.server.serve, args=(self._tick,), daemon=True)
        self.thread.start()

    def _tick(self) -> None:
        self.ticks += 1

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(10)
        assert not self.thread.is_alive(), "serve() did not return after shutdown()"
        self.server.close()

    def connect(self, timeout: float = 10.0) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(os.fspath(self.path))
        return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before the headers: {buf!r}"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def get(sock: socket.socket, path: str = "/", close: bool = False) -> tuple[int, dict, bytes]:
    extra = "Connection: close\r\n" if close else ""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode())
    return read_response(sock)


@pytest.fixture
def served() -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(app: Callable = echo_app, **kw) -> Served:
        s = Served(app, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.thread.is_alive():
            s.stop()
        else:
            s.server.close()
        shutil.rmtree(s.dir, ignore_errors=True)


def test_peer_credentials_reach_the_app(served) -> None:
    s = served()
    with s.connect() as sock:
        status, _, body = get(sock, "/who")
    assert status == 200
    assert json.loads(body) == {"path": "/who", "peer": [os.getpid(), os.getuid(), os.getgid()]}


def test_keep_alive_serves_several_requests_on_one_connection(served) -> None:
    s = served()
    with s.connect() as sock:
        for i in range(3):
            status, headers, body = get(sock, f"/n{i}")
            assert status == 200
            assert headers.get("connection", "").lower() != "close"
            assert json.loads(body)["path"] == f"/n{i}"


def test_requests_run_concurrently(served) -> None:
    """Four requests that each wait for the others only finish if they run at once."""
    _four_that_wait_for_each_other(served)


def test_a_pool_started_with_one_worker_grows_for_the_second_request(served) -> None:
    """The daemon starts one worker for its first answer (cold start); a second request
    must not wait for the rest: four that each wait for the others still all finish."""
    _four_that_wait_for_each_other(served, start_workers=1)


def _four_that_wait_for_each_other(served, **options) -> None:
    barrier = threading.Barrier(4, timeout=10)

    def app(environ, start_response):
        barrier.wait()
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    s = served(app, workers=4, **options)
    socks = [s.connect() for _ in range(4)]
    for sock in socks:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    answers = [read_response(sock) for sock in socks]
    for sock in socks:
        sock.close()
    assert [a[0] for a in answers] == [200] * 4
    assert not barrier.broken


def test_slow_clients_do_not_block_others(served) -> None:
    """More half-sent requests than worker threads, and a normal client still gets through."""
    s = served(workers=2)
    slow = [s.connect() for _ in range(10)]
    for sock in slow:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: loc")  # and then nothing
    with s.connect(timeout=5) as sock:
        status, _, body = get(sock, "/fast")
    assert status == 200 and json.loads(body)["path"] == "/fast"
    for sock in slow:
        sock.close()


def test_silent_connections_are_closed_after_the_timeout(served) -> None:
    s = served(channel_timeout=1)
    with s.connect(timeout=15) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: loc")
        assert sock.recv(1024) == b""  # the server hung up on us
    wait_for(lambda: s.server.active_connections == 0)


def test_a_request_trickling_in_past_the_deadline_is_dropped(served) -> None:
    """A slowloris keeps the idle timer fresh; the request deadline still ends it."""
    s = served(request_deadline=1)
    with s.connect(timeout=15) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: loc")
        hung_up = False
        for _ in range(40):  # 12 s of one byte every 0.3 s, far past the 1 s deadline
            time.sleep(0.3)
            try:
                sock.send(b"x")
            except OSError:
                hung_up = True
                break
            if select.select([sock], [], [], 0)[0] and sock.recv(1024) == b"":
                hung_up = True
                break
        assert hung_up, "the trickling request was never dropped"
    with s.connect() as sock:
        assert get(sock)[0] == 200


def test_oversized_request_line_is_refused_and_others_are_served(served) -> None:
    s = served()
    with s.connect() as sock:
        sock.sendall(b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(sock)
    assert 400 <= status < 500
    assert headers["content-type"] == "application/json"
    answer = json.loads(body)
    assert answer["code"] in ("bad_request", "headers_too_large")
    assert answer == error_body(answer["code"], answer["error"]) and answer["error"]
    with s.connect() as sock:
        assert get(sock)[0] == 200


def test_oversized_body_is_refused_in_the_api_error_shape(served) -> None:
    s = served()
    with s.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n")
        status, headers, body = read_response(sock)
    assert (status, headers["content-type"]) == (413, "application/json")
    answer = json.loads(body)
    assert answer == {"ok": False, "error": answer["error"], "code": "body_too_large"}
    assert RETRY_AFTER_HEADER.lower() not in headers  # only busy asks for a retry


EIGHT_MIB = 8 * 1024 * 1024


def _post(path: Path, body, headers: dict[str, str], chunked: bool = False):
    """What Python's own HTTP client sees when it sends a body over the limit."""
    conn = UnixHTTPConnection(path, timeout=30)
    try:
        conn.request(
            "POST", "/api/plugins/register", body=body, headers=headers, encode_chunked=chunked
        )
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), json.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_client_sending_8_mib_reads_the_413_before_the_close(served, chunked: bool) -> None:
    """Lingering close: http.client finishes sending, then reads the answer (no EPIPE)."""
    s = served()
    body = (b"x" * 65536 for _ in range(EIGHT_MIB // 65536)) if chunked else b"x" * EIGHT_MIB
    status, headers, answer = _post(
        s.path, body, {"Content-Type": "application/json"}, chunked=chunked
    )
    assert (status, answer["code"], answer["ok"]) == (413, "body_too_large", False)
    assert headers["Connection"].lower() == "close"
    wait_for(lambda: s.server.active_connections == 0)  # and then the connection is closed
    with s.connect() as sock:
        assert get(sock)[0] == 200


def test_a_client_sending_huge_headers_reads_the_431(served) -> None:
    s = served()
    status, _, answer = _post(s.path, b"{}", {"X-Big": "b" * (1 << 20)})
    assert (status, answer["code"]) == (431, "headers_too_large")


def test_lingering_is_bounded_in_bytes(served) -> None:
    """A refused client that never stops sending is cut off after linger_bytes."""
    s = served(linger_bytes=1 << 20)
    with s.connect(timeout=30) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
        status, _, _ = read_response(sock)
        assert status == 413
        sent, cut = 0, False
        while sent < 64 << 20:  # far past the bound: the server must hang up first
            try:
                sent += sock.send(b"y" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
        assert cut, f"still reading after {sent} bytes"
        assert sent >= 1 << 20  # and not before the bound


def test_lingering_is_bounded_in_time(served) -> None:
    """A refused client that keeps its connection open without closing is let go."""
    s = served(linger_seconds=0.5, poll_interval=0.05)
    with s.connect(timeout=30) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
        assert read_response(sock)[0] == 413
        assert sock.recv(1024) == b""  # our half is shut once the answer is out
        wait_for(lambda: s.server.active_connections == 0, timeout=20)
        with contextlib.suppress(OSError):
            sock.sendall(b"y")


@pytest.mark.slow
def test_the_daemon_answers_an_8_mib_registration_with_413(daemon: Daemon) -> None:
    """The issue's case, over the real daemon's socket: a JSON 413, not a broken pipe."""
    body = json.dumps({"name": "big", "description": "x" * EIGHT_MIB}).encode()
    status, _, answer = _post(daemon.socket, body, {"Content-Type": "application/json"})
    assert status == 413
    assert answer == {"ok": False, "error": answer["error"], "code": "body_too_large"}
    assert not (daemon.root / "big").exists()
    assert daemon.request("GET", "/health")[0] == 200


def test_connection_count_and_idle_time(served) -> None:
    s = served()
    sock = s.connect()
    get(sock)
    wait_for(lambda: s.server.active_connections == 1)
    assert s.server.idle_for() == 0.0
    sock.close()
    wait_for(lambda: s.server.active_connections == 0)
    wait_for(lambda: s.server.idle_for() > 0)


def test_idle_connections_cannot_lock_new_clients_out(served) -> None:
    """Three times the connection limit held open and silent (issue 23's 1,100 idle
    connections, scaled down): the idle ones silent longest are closed to keep room,
    so a new client is still accepted and answered, not left in the backlog."""
    s = served(max_connections=20, admission=Admission(reserve=4, per_peer=1000))
    idle = [s.connect() for _ in range(60)]
    try:
        with s.connect() as sock:
            status, _, body = get(sock, "/new")
        assert status == 200 and json.loads(body)["path"] == "/new"
        assert s.server.active_connections <= 20
        assert idle[0].recv(1) == b"", "the connection silent longest was not closed"
    finally:
        for sock in idle:
            sock.close()


def test_one_process_holds_at_most_its_share_of_connections(served) -> None:
    s = served(max_connections=100, admission=Admission(reserve=4, per_peer=8))
    idle = [s.connect() for _ in range(30)]
    try:
        wait_for(lambda: s.server.active_connections <= 8)
        with s.connect() as sock:  # the same process: its own idle one silent longest goes
            status, _, _ = get(sock, "/mine")
        assert status == 200
    finally:
        for sock in idle:
            sock.close()


def test_loop_stamps_heartbeat_and_runs_tick(served) -> None:
    s = served(poll_interval=0.05)
    first = s.server.heartbeat
    wait_for(lambda: s.ticks >= 3 and s.server.heartbeat > first)


def test_shutdown_from_another_thread_wakes_the_loop_at_once(served) -> None:
    s = served(poll_interval=3600)  # only the wake-up can end serve() in time
    with s.connect() as sock:  # an answer, then a tick: the loop is turning
        assert get(sock, close=True)[0] == 200
    wait_for(lambda: s.ticks >= 1 and s.thread.is_alive())
    s.server.shutdown()
    s.thread.join(10)
    assert not s.thread.is_alive()


def test_close_lets_the_request_in_flight_finish(served) -> None:
    entered, release = threading.Event(), threading.Event()

    def app(environ, start_response):
        entered.set()
        release.wait(10)
        start_response("200 OK", [("Content-Length", "4")])
        return [b"done"]

    s = served(app)
    sock = s.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert entered.wait(10)
    s.server.shutdown()
    s.thread.join(10)
    closer = threading.Thread(target=s.server.close)
    closer.start()
    # the listener is gone while the old request is still being answered
    wait_for(lambda: _refused(s.path) or not s.path.exists())
    release.set()
    status, _, body = read_response(sock)
    sock.close()
    closer.join(15)
    assert not closer.is_alive()
    assert (status, body) == (200, b"done")
    assert not s.path.exists()


def test_close_answers_a_request_whose_body_was_still_arriving(served) -> None:
    s = served()
    sock = s.connect()
    sock.sendall(b"POST /late HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
    wait_for(lambda: s.server.active_connections == 1)
    s.server.shutdown()
    s.thread.join(10)
    closer = threading.Thread(target=s.server.close)
    closer.start()
    sock.sendall(b"67890")
    status, _, body = read_response(sock)
    assert (status, json.loads(body)["path"]) == (200, "/late")
    assert sock.recv(1024) == b""  # and then the connection is closed
    sock.close()
    closer.join(15)
    assert not closer.is_alive()


def test_close_drops_a_stalled_half_request_and_returns(served) -> None:
    s = served()
    sock = s.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: lo")  # and then nothing, ever
    wait_for(lambda: s.server.active_connections == 1)
    s.stop()  # returns: the silent client is dropped after STALLED_AFTER
    assert sock.recv(1024) == b""
    sock.close()


def _refused(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(os.fspath(path))
    except OSError:
        return True
    finally:
        probe.close()
    return False


def test_socket_file_is_removed_only_when_we_bound_it(served) -> None:
    ours = served(owned=True)
    theirs = served(owned=False)
    ours.stop()
    theirs.stop()
    assert not ours.path.exists()
    assert theirs.path.exists()


def test_a_successors_socket_file_is_left_alone(served) -> None:
    s = served(owned=True)
    s.path.unlink()
    successor = bind_unix(s.path)  # another daemon took the path meanwhile
    try:
        s.stop()
        assert s.path.exists()
    finally:
        successor.close()


def test_refuses_a_tcp_socket() -> None:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(ValueError):
            UnixServer(tcp, echo_app)
    finally:
        tcp.close()


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _table_inodes(table: str) -> set[int]:
    path = Path("/proc/net") / table
    if not path.exists():
        return set()
    lines = path.read_text().splitlines()[1:]
    column = 9 if not table.startswith("unix") else 6
    return {int(line.split()[column]) for line in lines if len(line.split()) > column}


def test_the_daemon_never_listens_on_tcp(home: Path) -> None:
    d = Daemon(home).start()
    try:
        assert d.request("GET", "/health")[0] == 200
        ours = _socket_inodes(d.proc.pid)
        assert ours & _table_inodes("unix"), "the check must see the daemon's Unix socket"
        for table in ("tcp", "tcp6", "udp", "udp6"):
            assert not ours & _table_inodes(table), f"hecated holds a {table} socket"
    finally:
        d.stop()


def test_forward_threads_never_outnumber_the_stream_cap() -> None:
    """A stream's slot is freed only once its thread is idle again, so the request that
    slot lets in takes that thread instead of starting another (the cap bounds threads)."""
    from hecated.http.forwarding.threads import StreamThreads

    cap, open_now, most = 4, [0], 0
    lock = threading.Lock()
    pool = StreamThreads(keep=5)

    def release() -> None:
        with lock:
            open_now[0] -= 1

    def job() -> Callable[[], None]:
        time.sleep(0.001)  # a short forwarded request
        return release

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch as often as they can: the gap shows
    try:
        until = time.monotonic() + 1.5
        while time.monotonic() < until:  # as the loop admits them: only while under the cap
            with lock:
                room = open_now[0] < cap
                open_now[0] += room
            if room:
                pool.submit(job)
            most = max(most, sum(t.name == "hecated-forward" for t in threading.enumerate()))
    finally:
        sys.setswitchinterval(switch)
    assert 1 <= most <= cap


class HeldDetour:
    """A detour of the test's own (not the forwarding wing): it claims ``/held/...``,
    runs each on a thread of its own until the test lets it go, and refuses past one."""

    body_limit = 4096
    send_timeout = 10.0

    def __init__(self) -> None:
        self.running = threading.Semaphore(0)
        self.go = threading.Event()
        self.open = 0

    def claims(self, path: str) -> bool:
        return path.startswith("/held/")

    def run(self, job) -> str | None:
        if self.open:
            return "one held request at a time"
        self.open += 1

        def serve() -> None:
            self.running.release()
            self.go.wait(20)
            job.serve()
            self.open -= 1
            job.done()

        threading.Thread(target=serve, daemon=True).start()
        return None

    def close(self) -> None:
        self.go.set()


def test_the_one_hook_runs_what_a_detour_claims_and_answers_its_refusal(served) -> None:
    """server.py's hook with a detour that is not the wing: the claimed request leaves the
    API workers (the one worker still answers others), is served on the detour's thread
    with its connection out of the loop, and a refusal is a 503 busy in the envelope,
    decided before any routing, on a connection kept alive."""
    detour = HeldDetour()
    s = served(workers=1, detour=detour)
    with s.connect() as held:
        held.sendall(b"GET /held/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert detour.running.acquire(timeout=10)
        with s.connect() as other:
            assert get(other, "/free")[0] == 200  # the one API worker is not held
            status, headers, body = get(other, "/held/y")
            assert status == 503 and headers["retry-after"] == "1"
            assert json.loads(body) == error_body("busy", "one held request at a time")
            assert get(other, "/after-the-refusal")[0] == 200  # same connection, kept
        detour.go.set()
        status, _, body = read_response(held)
    assert status == 200 and json.loads(body)["path"] == "/held/x"


def test_each_detour_keeps_its_own_send_timeout() -> None:
    """A followed log keeps its minute for a client that reads nothing, even when the
    forwarded streams may wait for ever (forward_idle_timeout = 0): one bound for all
    claimed requests let a suspended `hecatectl logs -f` hold its place for ever."""
    from hecated.http.forwarding.edge import Edge
    from hecated.http.forwarding.settings import ForwardSettings
    from hecated.http.hooks import Detours
    from hecated.http.units import LogDetour

    logs = LogDetour()
    both = Detours(Edge(ForwardSettings(idle_timeout=0)), logs)
    try:
        assert both.send_timeout_of("/plugin/x/events") is None
        assert both.send_timeout_of("/api/plugins/hecate-x/logs") == logs.send_timeout
        assert logs.send_timeout is not None
    finally:
        both.close()

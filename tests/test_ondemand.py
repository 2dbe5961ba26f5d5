"""On-demand start and idle stop, end to end: a real hecated, a real private ``systemd
--user`` with its session bus, and the example plugin (examples/hecate-exampled.py) as
a real ``.service`` that registers itself with that hecated when it starts.

Start jobs are counted from the manager's side: its ``JobNew`` signals, read on a D-Bus
connection of the test's own (a method call on the same connection is the barrier:
the manager sends its signals before its later replies), and the unit's
``ExecStartPre`` appending a line to a file per process start. Every wait is on an end
state (a unit inactive, hecated exited), never a sleep.
"""

from __future__ import annotations

import collections
import http.client
import os
import queue
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, UnixHTTPConnection, http_request, wait_for
from systemd_support import UserManager, manager_on_bus, needs_user_manager

pytestmark = [needs_user_manager, pytest.mark.slow]

EXAMPLED = Path(__file__).resolve().parent.parent / "examples" / "hecate-exampled.py"
NAME = "hecate-exampled"


# A plugin program of the test's own, run as a unit (ExecStart=python THIS NAMESPACE_DIR):
# its socket in the namespace's sockets/, served by a threaded HTTP/1.1 server whose
# do_GET each plugin below writes (the prelude's ``Handler`` subclasses ``Base``).
PRELUDE = """
import os, sys, time, socketserver
from http.server import BaseHTTPRequestHandler
sockets = os.path.join(sys.argv[1], "sockets")
os.makedirs(sockets, exist_ok=True)
path = os.path.join(sockets, "api.sock")
if os.path.exists(path):
    os.unlink(path)
class Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
"""
SERVE = """
Server(path, Handler).serve_forever()
"""

# A plugin that streams: GET /health, and GET /stream sending an event every 0.2 s until
# the client goes.
STREAMER = (
    PRELUDE
    + """
class Handler(Base):
    def do_GET(self):
        if self.path == "/health":
            return self.answer(200, b'{"ok": true}')
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for i in range(10000):
                data = ("data: %d %d\\n\\n" % (os.getpid(), i)).encode()
                self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass
"""
    + SERVE
)

# A plugin whose own /health says 503 (it is not well, it says), while every other path
# answers 200.
SICKLY = (
    PRELUDE
    + """
class Handler(Base):
    def do_GET(self):
        if self.path == "/health":
            return self.answer(503, b'{"ok": false}')
        self.answer(200, b'{"mine": 1}')
"""
    + SERVE
)


class Jobs:
    """The manager's ``JobNew`` signals, from its side of the bus."""

    def __init__(self, address: str) -> None:
        from jeepney import MatchRule

        from hecated.adapters import unitbus

        self.bus = unitbus
        self.conn = unitbus.open_blocking(address)
        self.seen: collections.deque = collections.deque()
        rule = MatchRule(type="signal", interface=unitbus.MANAGER_IFACE, member="JobNew")
        self.conn.filter(rule, queue=self.seen)
        self._call(unitbus.add_match(unitbus.manager_signals("JobNew")))
        self._call(unitbus.manager_call("Subscribe"))

    def _call(self, msg: Any) -> tuple[Any, ...]:
        return self.bus.unwrap(self.conn.send_and_get_reply(msg, timeout=10))

    def started(self, unit: str) -> int:
        """Jobs made for ``unit`` so far (every signal sent before this call's reply)."""
        self._call(self.bus.manager_call("ListJobs"))
        return sum(1 for msg in self.seen if msg.body[2] == unit)

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="module")
def manager() -> Iterator[UserManager]:
    with manager_on_bus(journald=False) as um:
        yield um


class World:
    """One test's units, hecated and job count, over the module's manager."""

    def __init__(self, um: UserManager) -> None:
        self.um = um
        self.units: list[str] = []
        self.daemon: Daemon | None = None
        self.jobs = Jobs(um.bus_address)

    def unit(self, name: str, extra: str = "") -> str:
        """The example plugin as ``name.service``, each process start counted in a file."""
        unit = f"{name}.service"
        self.um.unit_dir.mkdir(parents=True, exist_ok=True)
        (self.um.unit_dir / unit).write_text(
            f"[Unit]\nDescription=test {name}\n\n[Service]\n"
            f"ExecStartPre=/bin/sh -c 'echo start >> %h/{name}.starts'\n"
            f"ExecStart={sys.executable} {EXAMPLED} --name {name}\n{extra}"
        )
        self.units.append(unit)
        self.um.systemctl("daemon-reload")
        return unit

    def streamer(self, name: str, extra: str = "") -> str:
        """A streaming plugin as ``name.service`` (it does not register itself); each
        event says which process sent it."""
        script = self.um.home / "streamer.py"
        script.write_text(STREAMER)
        namespace = self.um.home / ".hecate" / name
        unit = f"{name}.service"
        self.um.unit_dir.mkdir(parents=True, exist_ok=True)
        (self.um.unit_dir / unit).write_text(
            f"[Service]\nExecStart={sys.executable} {script} {namespace}\n{extra}"
        )
        self.units.append(unit)
        self.um.systemctl("daemon-reload")
        return unit

    def script(self, name: str, text: str) -> str:
        """A plugin script of the test's own as ``name.service`` (it does not register)."""
        script = self.um.home / f"{name}.py"
        script.write_text(text)
        return self.raw(
            name, f"ExecStart={sys.executable} {script} {self.um.home}/.hecate/{name}\n"
        )

    def raw(self, name: str, service: str) -> str:
        """``name.service`` with this [Service] section."""
        unit = f"{name}.service"
        self.um.unit_dir.mkdir(parents=True, exist_ok=True)
        (self.um.unit_dir / unit).write_text(f"[Service]\n{service}")
        self.units.append(unit)
        self.um.systemctl("daemon-reload")
        return unit

    def starts(self, name: str) -> int:
        path = self.um.home / f"{name}.starts"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def hecated(self, *args: str) -> Daemon:
        """hecated as the user runs it beside that manager (its XDG_RUNTIME_DIR, no
        DBUS_SESSION_BUS_ADDRESS: the bus is found at $XDG_RUNTIME_DIR/bus)."""
        d = Daemon(self.um.home, list(args), env={"XDG_RUNTIME_DIR": str(self.um.runtime)})
        d.env.pop("DBUS_SESSION_BUS_ADDRESS", None)
        self.daemon = d.start()
        return d

    def register(self, name: str, keys: str = "") -> None:
        """Registered (stopped), with hand-written unit keys, read by a rescan."""
        assert self.daemon is not None
        assert self.daemon.register(name)[0] in (200, 201)
        if keys:
            path = self.daemon.root / name / "plugin.toml"
            path.write_text(path.read_text() + keys)
            assert self.daemon.request("POST", "/api/rescan")[0] == 200

    def forward(self, name: str, path: str = "/health") -> tuple[int, Any]:
        assert self.daemon is not None
        # Longer than hecated's first-byte timeout (30 s): a start slowed by a loaded
        # machine is hecated's answer (200, or its 504), never the client giving up.
        target = f"/plugin/{name}{path}"
        status, _, body = http_request(self.daemon.socket, "GET", target, timeout=45.0)
        return status, body

    def active(self, unit: str) -> str:
        return self.um.prop(unit, "ActiveState")

    def close(self) -> None:
        self.jobs.close()
        if self.daemon is not None and self.daemon.proc and self.daemon.proc.poll() is None:
            self.daemon.stop()
        if self.units:
            self.um.systemctl("stop", *self.units, check=False)
            self.um.systemctl("reset-failed", *self.units, check=False)
        for unit in self.units:
            (self.um.unit_dir / unit).unlink(missing_ok=True)
        self.um.systemctl("daemon-reload", check=False)
        shutil.rmtree(self.um.home / ".hecate", ignore_errors=True)
        for starts in self.um.home.glob("*.starts"):
            starts.unlink()


@pytest.fixture
def world(manager: UserManager) -> Iterator[World]:
    w = World(manager)
    yield w
    w.close()


def test_twenty_forwarded_requests_to_a_stopped_plugin_start_it_once(world: World) -> None:
    unit = world.unit(NAME)
    d = world.hecated()
    world.register(NAME)
    # Reading the registry never starts anything.
    assert d.request("GET", "/api/plugins")[0] == 200
    assert d.request("GET", f"/api/plugins/{NAME}")[2]["status"] == "stopped"
    assert world.jobs.started(unit) == 0 and world.active(unit) == "inactive"

    answers: list[tuple[int, Any]] = []
    go = threading.Barrier(20)

    def ask() -> None:
        go.wait()
        answers.append(world.forward(NAME))

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 20
    failed = [a for a in answers if a[0] != 200]
    assert not failed, (failed, d.log())
    assert all(body["app"] == NAME for _, body in answers)
    assert world.starts(NAME) == 1
    assert world.jobs.started(unit) == 1
    assert d.log().count(f"starting {unit} for a forwarded request") == 1
    assert world.active(unit) == "active"
    wait_for(lambda: d.request("GET", f"/api/plugins/{NAME}")[2]["status"] == "running")


def test_idle_stop_stops_it_and_the_next_request_starts_it_again(world: World) -> None:
    unit = world.unit(NAME)
    world.hecated()
    world.register(NAME, "idle_stop_after = 1\n")
    assert world.forward(NAME)[0] == 200 and world.starts(NAME) == 1
    pid = world.um.prop(unit, "MainPID")
    # Nobody asks for a second: hecated stops the unit.
    wait_for(lambda: world.active(unit) == "inactive", timeout=30)
    status, again = world.forward(NAME)
    assert status == 200, again
    assert world.starts(NAME) == 2 and world.um.prop(unit, "MainPID") not in ("0", pid)
    assert world.jobs.started(unit) == 3  # start, the idle stop, start


def test_hecated_waits_for_a_plugins_idle_stop_before_its_own_idle_exit(
    world: World,
) -> None:
    unit = world.unit(NAME)
    d = world.hecated("--idle-timeout", "0.5")
    world.register(NAME, "idle_stop_after = 2\n")
    assert world.forward(NAME)[0] == 200
    # hecated would exit after 0.5 s idle, but the plugin's idle stop is due: it stays
    # until the stop is done, then exits by itself (nothing else stops the unit).
    wait_for(lambda: world.active(unit) == "inactive", timeout=30)
    assert d.proc is not None
    assert d.proc.wait(30) == 0
    assert "unused; stopping" in d.log()


def test_an_opted_out_plugin_and_one_without_a_unit_get_the_plain_502(world: World) -> None:
    unit = world.unit("hecate-optoutd")
    world.hecated()
    world.register("hecate-optoutd", "start_on_demand = false\n")
    status, body = world.forward("hecate-optoutd")
    assert status == 502 and body["code"] == "plugin_unreachable", body
    assert world.jobs.started(unit) == 0 and world.starts("hecate-optoutd") == 0

    world.register("hecate-nounitd")  # no unit file for hecate-nounitd.service
    status, body = world.forward("hecate-nounitd")
    assert status == 502 and body["code"] == "plugin_unreachable", body
    assert "no unit hecate-nounitd.service" in body["error"]


def test_a_unit_that_fails_to_start_answers_502_with_the_reason(world: World) -> None:
    name = "hecate-brokend"
    unit = world.unit(name, "ExecStartPre=/bin/sh -c 'exit 3'\n")
    world.hecated()
    world.register(name)
    status, body = world.forward(name)
    # As the control route answers: the job's result and the unit's state, in the body.
    assert (status, body["code"], body["result"]) == (502, "unit_failed", "failed"), body
    assert "job failed" in body["error"], body
    assert body["state"]["active_state"] == "failed" and isinstance(body["logs"], list)
    assert world.jobs.started(unit) == 1


def test_an_open_stream_keeps_the_plugin_up_and_its_end_starts_the_idle_clock(
    world: World,
) -> None:
    name = "hecate-streamd"
    unit = world.streamer(name)
    d = world.hecated()
    world.register(name, "idle_stop_after = 0.5\n")
    conn = UnixHTTPConnection(d.socket, timeout=30)
    try:
        conn.request("GET", f"/plugin/{name}/stream")  # started on demand
        resp = conn.getresponse()
        assert resp.status == 200
        assert world.jobs.started(unit) == 1
        got = b""
        # Events 0..5 arrive over a second: longer than idle_stop_after, and the plugin
        # is still up because the stream is open.
        while got.count(b"data: ") < 6:
            piece = resp.read1(4096)
            assert piece, f"the stream ended early: {got!r}"
            got += piece
        assert world.active(unit) == "active"
        resp.close()  # the client goes (the response holds the socket open too)
    finally:
        conn.close()
    # The stream gone, nobody uses the plugin: hecated stops it.
    try:
        wait_for(lambda: world.active(unit) == "inactive", timeout=15)
    except AssertionError:
        raise AssertionError(d.log()) from None
    assert "hecate-streamd: unused; stopping" in d.log()


def test_a_plugin_that_accepts_but_calls_itself_unwell_is_forwarded_to(world: World) -> None:
    """Its /health answers 503 (a ``refusing`` finding): something accepts, so the held
    request goes on and the plugin answers for itself (before: held until the 30 s
    first-byte timeout, then 504)."""
    name = "hecate-sicklyd"
    unit = world.script(name, SICKLY)
    d = world.hecated()
    world.register(name)
    status, body = world.forward(name, "/anything")
    assert (status, body) == (200, {"mine": 1}), (status, body, d.log())
    assert world.jobs.started(unit) == 1


def test_a_unit_that_dies_right_after_its_start_fails_fast(world: World) -> None:
    """The start job says done (Type=simple: the fork is enough), then the process exits 1:
    502 unit_failed with the unit's reason, as control answers, as soon as the manager
    says so (before: held until the 30 s first-byte timeout, then 504)."""
    name = "hecate-shortd"
    unit = world.raw(name, "ExecStart=/bin/sh -c 'exit 1'\n")
    d = world.hecated()
    world.register(name)
    status, body = world.forward(name)
    assert (status, body["code"]) == (502, "unit_failed"), (body, d.log())
    assert "exited with status 1" in body["error"], body
    assert body["state"]["active_state"] == "failed" and body["result"] == "exit-code", body
    assert world.jobs.started(unit) == 1


def events_of(resp: Any) -> Iterator[tuple[int, int]]:
    """(pid, number) of each event of a streamed answer, until it ends (or is cut)."""
    buffer = b""
    while True:
        try:
            piece = resp.read1(4096)
        except (OSError, http.client.HTTPException):
            return
        if not piece:
            return
        buffer += piece
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            pid, number = event.removeprefix(b"data: ").split()
            yield int(pid), int(number)


def test_a_request_that_comes_while_its_idle_stop_runs_is_not_cut(world: World) -> None:
    """The idle stop's job is under way (its ExecStop waits on a fifo the test holds) and
    the plugin still accepts: a forwarded stream that came now waits for the stop, then
    starts the plugin again, and is served by the new process (before: it connected to
    the old one at once, and the stop cut it). Only the first stop waits on the fifo."""
    name = "hecate-stopperd"
    fifo = world.um.home / "go.fifo"
    os.mkfifo(fifo)
    stopping = world.um.home / "stopping"
    unit = world.streamer(
        name,
        f"ExecStop=/bin/sh -c '[ -e {stopping} ] || {{ touch {stopping}; read x < {fifo}; }}'\n",
    )
    d = world.hecated()
    world.register(name, "idle_stop_after = 0.5\n")
    assert world.forward(name)[0] == 200  # started on demand; then unused: the stop comes
    old = int(world.um.prop(unit, "MainPID"))
    wait_for(lambda: stopping.exists(), timeout=30)  # the stop job runs; the plugin too
    answers: queue.Queue = queue.Queue()
    conn = UnixHTTPConnection(d.socket, timeout=30)

    def ask() -> None:
        conn.request("GET", f"/plugin/{name}/stream")
        answers.put(conn.getresponse())

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    try:
        # Either it was answered at once (the defect), or it waits for the stop (the fix).
        wait_for(lambda: not answers.empty() or "waits for its idle stop" in d.log(), 30)
        with fifo.open("w") as go:  # the stop goes on: SIGTERM to the old process
            go.write("go\n")
        wait_for(lambda: not os.path.exists(f"/proc/{old}"), timeout=30)
        resp = answers.get(timeout=30)
        assert resp.status == 200
        pids = set()
        for pid, _ in events_of(resp):
            pids.add(pid)
            if pid != old:
                break
        assert pids and old not in pids, f"the stream ran on the stopped process: {d.log()}"
        assert world.active(unit) == "active"
        resp.close()
    finally:
        conn.close()


def test_a_plugin_that_left_its_socket_file_behind_is_waited_for_all_the_same(
    world: World,
) -> None:
    """The streamer leaves its socket file when it is stopped (SIGTERM ends it at once),
    so hecated's last finding still says ``answering`` (nothing probes a socket file that
    stays), and its next start binds the same path again: a finding equal to the last,
    no change in the index. The held request must see it come up all the same (before:
    held until the first-byte timeout, as no change ever woke it)."""
    name = "hecate-leftoverd"
    unit = world.streamer(name)
    d = world.hecated()
    world.register(name)
    assert world.forward(name, "/health")[0] == 200  # started on demand
    wait_for(lambda: d.request("GET", f"/api/plugins/{name}")[2]["status"] == "running")
    world.um.systemctl("stop", unit)  # by hand, not through hecated
    assert (world.um.home / ".hecate" / name / "sockets" / "api.sock").exists()
    status, body = world.forward(name, "/health")
    assert status == 200, (body, d.log())
    assert world.jobs.started(unit) == 3  # start, the stop by hand, start

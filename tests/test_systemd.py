"""The systemd adapter against real parts: systemd-socket-activate, a NOTIFY_SOCKET, the journal.

The user-manager end-to-end tests are in test_systemd_e2e.py; these need no
manager: the socket is passed by ``systemd-socket-activate`` (Debian's), the
notifications land on a datagram socket the test owns, and journal records
are read off a stand-in ``/run/systemd/journal/socket``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, http_request, wait_for
from systemd_support import (
    FREEZABLE_HECATED,
    NotifyListener,
    assert_no_tcp,
    fake_journal,
    needs_socket_activate,
    parse_journal_datagram,
    socket_activate,
    stop_pid,
)

from hecated.adapters.systemd import (
    MESSAGE_IDS,
    ActivationError,
    ListenFd,
    Notifier,
    Supervisor,
    alias_fields,
    api_sockets,
    journal_fields,
    own_unit,
    stderr_is_journal,
)


def api_path(home: Path) -> Path:
    path = home / ".hecate" / "hecate-daemon" / "sockets" / "api.sock"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


@pytest.fixture
def procs() -> Iterator[list]:
    started: list = []
    yield started
    for proc in started:
        stop_pid(proc)


def listening(home: Path, count: int = 1) -> None:
    """systemd-socket-activate has bound and is listening (it says so, then waits)."""
    wait_for(lambda: activation_log(home).count("Listening on") >= count)


def first_request(home: Path, sock: Path, path: str = "/health", count: int = 1):
    """The first request once systemd-socket-activate listens (it activates hecated)."""
    listening(home, count)
    return http_request(sock, "GET", path)


def activation_log(home: Path) -> str:
    return (home / "activate.log").read_text(errors="replace")


def preregister(home: Path, *names: str) -> None:
    """Register plugins through a standalone daemon, then stop it: the tree is the state."""
    d = Daemon(home).start()
    try:
        for name in names:
            assert d.register(name)[0] == 201
    finally:
        assert d.stop() == 0


# -- the adapter's pieces, on real sockets ------------------------------------------------


def test_journal_fields_come_from_the_api_extras() -> None:
    record = logging.LogRecord("hecated.http.app", logging.INFO, __file__, 1, "x", (), None)
    for key, value in {
        "hecate_action": "purge",
        "hecate_plugin": "alpha",
        "hecate_peer_pid": 42,
        "hecate_peer_uid": 1000,
    }.items():
        setattr(record, key, value)
    assert journal_fields(record) == {
        "HECATE_ACTION": "purge",
        "PLUGIN": "alpha",
        "HECATE_PEER_PID": "42",
        "HECATE_PEER_UID": "1000",
        "MESSAGE_ID": MESSAGE_IDS["purge"],
    }
    plain = logging.LogRecord("hecated", logging.INFO, __file__, 1, "x", (), None)
    assert journal_fields(plain) == {}


def test_the_alias_is_named_only_for_the_users_hecate_service() -> None:
    v2 = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/hecate.service\n"
    v1 = "12:pids:/init.scope\n1:name=systemd:/init.scope/hecate.service\n0::/init.scope\n"
    assert own_unit(v2) == "hecate.service"
    assert own_unit(v1) == "hecate.service"  # v1's named hierarchy when v2's says nothing
    assert own_unit("0::/user.slice/user-1000.slice/session-2.scope\n") is None
    assert own_unit("garbage\n0::/app.slice/hecate.service\n") == "hecate.service"
    assert alias_fields(True, "hecate.service") == {"USER_UNIT": "hecate-daemon.service"}
    assert alias_fields(False, "hecate.service") == {}  # the system manager: not ours to name
    assert alias_fields(True, "other.service") == {}  # a packager's own unit name


def test_stderr_is_journal_only_when_dev_and_inode_match() -> None:
    st = os.fstat(2)
    assert stderr_is_journal(f"{st.st_dev}:{st.st_ino}")
    assert not stderr_is_journal(f"{st.st_dev}:{st.st_ino + 1}")
    assert not stderr_is_journal("garbage")
    assert not stderr_is_journal("")


def test_supervisor_pings_only_while_the_loop_turns(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = NotifyListener(home)
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    beat = [time.monotonic()]
    supervisor = Supervisor(Notifier(True), lambda: beat[0], lambda: "1 plugin registered", 0.2)
    supervisor.start()
    try:
        listener.wait_for("WATCHDOG=1")
        listener.wait_for("STATUS=1 plugin registered")
        beat[0] = time.monotonic() - 60  # the loop stopped turning a minute ago
        listener.drain()
        late = [m for m in iter(lambda: listener.receive(0.6), None) if "WATCHDOG=1" in m]
        assert late == [], "a stuck loop must not be reported alive"
        beat[0] = time.monotonic() + 3600  # turning again
        listener.wait_for("WATCHDOG=1")
    finally:
        supervisor.stop()
        supervisor.join(5)
        listener.close()


def test_api_socket_is_a_unix_listener_never_tcp(home: Path) -> None:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    first, second = (socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2))
    for sock, name in ((first, "a.sock"), (second, "b.sock")):
        sock.bind(str(home / name))
        sock.listen()
    fds = [ListenFd(os.dup(s.fileno()), n) for s, n in ((tcp, "x"), (first, "y"), (second, "api"))]
    [chosen] = api_sockets(fds, home / "b.sock")
    try:
        assert chosen.getsockname() == str(home / "b.sock")
        with pytest.raises(OSError):  # the TCP one and the unnamed one were closed
            os.fstat(fds[0].fd)
        with pytest.raises(OSError):
            os.fstat(fds[1].fd)
    finally:
        chosen.close()
    with pytest.raises(ActivationError):
        api_sockets([ListenFd(os.dup(tcp.fileno()), "api")], home / "b.sock")
    for sock in (tcp, first, second):
        sock.close()


def test_every_socket_named_api_is_served_the_expected_one_first(home: Path) -> None:
    """hecate.socket names both its paths api: the registry's and hecate-tui's."""
    socks = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
    for sock, name in zip(socks, ("tui.sock", "api.sock", "other.sock"), strict=True):
        sock.bind(str(home / name))
        sock.listen()
    fds = [ListenFd(os.dup(s.fileno()), n) for s, n in zip(socks, ("api", "api", "x"), strict=True)]
    chosen = api_sockets(fds, home / "api.sock")
    try:
        assert [c.getsockname() for c in chosen] == [str(home / "api.sock"), str(home / "tui.sock")]
        with pytest.raises(OSError):  # not named for the API: closed
            os.fstat(fds[2].fd)
    finally:
        for sock in (*chosen, *socks):
            sock.close()


# -- socket activation through systemd-socket-activate --------------------------------------


@pytest.mark.slow
@needs_socket_activate
def test_serves_the_passed_socket_and_never_unlinks_it(home: Path, procs: list) -> None:
    sock = api_path(home)
    proc = socket_activate(sock, home, ["serve"], {})
    procs.append(proc)
    status, _, body = first_request(home, sock, "/api/plugins")
    assert (status, body) == (200, [])
    assert_no_tcp(proc.pid)
    assert "socket-activated" in activation_log(home)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert sock.is_socket(), "the socket belongs to systemd: hecated must leave it"


@pytest.mark.slow
@needs_socket_activate
def test_both_sockets_of_hecate_socket_reach_one_hecated(home: Path, procs: list) -> None:
    """hecate.socket listens on the API's path and on ~/.hecate/daemon.sock (hecate-tui's):
    a first connection to either starts hecated, which serves both and unlinks neither."""
    api, tui = api_path(home), home / ".hecate" / "daemon.sock"
    proc = socket_activate([api, tui], home, ["serve"], {}, names="api:api")
    procs.append(proc)
    status, _, health = first_request(home, tui, count=2)
    assert status == 200 and health["status"] == "healthy"
    status, _, again = http_request(api, "GET", "/health")
    assert status == 200 and again["pid"] == health["pid"]
    assert "socket-activated" in activation_log(home)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert api.is_socket() and tui.is_socket(), "both belong to systemd: hecated leaves them"


@pytest.mark.slow
@needs_socket_activate
def test_fdnames_pick_the_api_socket(home: Path, procs: list) -> None:
    other, api = home / "other.sock", api_path(home)
    procs.append(socket_activate([other, api], home, ["serve"], {}, names="other:api"))
    assert first_request(home, api, count=2)[0] == 200
    with pytest.raises(ConnectionRefusedError):  # closed: hecated holds nothing it does not serve
        http_request(other, "GET", "/health")


@pytest.mark.slow
@needs_socket_activate
def test_a_passed_tcp_socket_is_refused(home: Path, procs: list) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    proc = socket_activate(f"127.0.0.1:{port}", home, ["serve"], {})  # type: ignore[arg-type]
    procs.append(proc)
    listening(home)
    conn = socket.create_connection(("127.0.0.1", port), timeout=5)  # activates hecated
    assert proc.wait(15) == 1
    conn.close()
    assert "never TCP" in activation_log(home)


@pytest.mark.slow
@needs_socket_activate
def test_notify_ready_status_watchdog_reload_stopping(home: Path, procs: list) -> None:
    preregister(home, "alpha", "beta")
    listener = NotifyListener(home)
    sock = api_path(home)
    env = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "1000000"}
    proc = socket_activate(sock, home, ["serve"], env)
    procs.append(proc)
    listening(home)
    first = socket.socket(socket.AF_UNIX)
    first.connect(str(sock))  # the first connection: systemd-socket-activate starts hecated
    ready = listener.wait_for("READY=1")
    # READY carries the status computed from the loaded index, and the socket answers by then.
    assert "STATUS=2 plugins registered, 0 running" in ready.split("\n")
    assert listener.messages[0] == "STATUS=loading the index"
    assert http_request(sock, "GET", "/health")[0] == 200
    first.close()
    listener.wait_for("WATCHDOG=1")
    listener.wait_for("WATCHDOG=1")
    http_request(sock, "POST", "/api/plugins/register", {"name": "gamma"})
    listener.wait_for("STATUS=3 plugins registered, 0 running")
    proc.send_signal(signal.SIGHUP)
    listener.wait_for("RELOADING=1")
    assert "STATUS=3 plugins registered, 0 running" in listener.wait_for("READY=1").split("\n")
    proc.send_signal(signal.SIGTERM)
    listener.wait_for("STOPPING=1")
    assert proc.wait(15) == 0
    listener.close()


@pytest.mark.slow
@needs_socket_activate
def test_a_stuck_loop_stops_the_watchdog_pings(home: Path, procs: list) -> None:
    listener = NotifyListener(home)
    sock = api_path(home)
    env = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "1000000"}
    # The shipped daemon behind a wrapper whose SIGUSR2 freezes the serving loop.
    proc = socket_activate(sock, home, ["serve"], env, command=FREEZABLE_HECATED)
    procs.append(proc)
    assert first_request(home, sock)[0] == 200
    listener.wait_for("WATCHDOG=1")
    proc.send_signal(signal.SIGUSR2)  # the wrapper freezes the serving loop
    wait_for(lambda: "withholding the watchdog ping" in activation_log(home))
    listener.drain()
    pings = [m for m in iter(lambda: listener.receive(1.5), None) if "WATCHDOG=1" in m]
    assert pings == []
    proc.kill()
    proc.wait(10)
    listener.close()


# -- journal -----------------------------------------------------------------------------


def journal_daemon(home: Path, matching: bool) -> Daemon:
    d = Daemon(home)
    d.stderr_path.touch()
    st = d.stderr_path.stat()
    d.env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino + (0 if matching else 1)}"
    return d.start()


def hecated_records(sock: socket.socket, timeout: float, **match: str) -> list[dict[str, str]]:
    """The first datagram from hecated whose fields include ``match`` (or none in time)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            fields = parse_journal_datagram(sock.recv(1 << 20))
        except TimeoutError:
            break
        if fields.get("SYSLOG_IDENTIFIER") == "hecated" and match.items() <= fields.items():
            return [fields]
    return []


@pytest.mark.slow
def test_journal_gets_structured_records_when_stderr_is_the_journal(home: Path) -> None:
    with fake_journal() as journal:
        if journal is None:
            pytest.skip("a real journald owns /run/systemd/journal/socket (or not root)")
        d = journal_daemon(home, matching=True)
        try:
            # The switch comes once the first answer is out (the fixture's /health).
            assert hecated_records(journal, 10, MESSAGE="logging to the journal")
            assert d.register("journaled")[0] == 201
            records = hecated_records(journal, 10, PLUGIN="journaled")
        finally:
            assert d.stop() == 0
    assert records, "no journal record for the registration"
    record = records[0]
    assert record["MESSAGE_ID"] == MESSAGE_IDS["register"]
    assert record["HECATE_ACTION"] == "register"
    assert record["HECATE_PEER_PID"] == str(os.getpid())
    assert record["HECATE_PEER_UID"] == str(os.getuid())
    assert record["PRIORITY"] == "6"
    assert "registered plugin journaled" in record["MESSAGE"]
    assert "registered plugin journaled" not in d.log(), "went to the journal, not stderr"


@pytest.mark.slow
def test_plain_stderr_when_journal_stream_does_not_match(home: Path) -> None:
    with fake_journal() as journal:
        d = journal_daemon(home, matching=False)
        try:
            assert d.register("plain")[0] == 201
            wait_for(lambda: "registered plugin plain" in d.log())
            if journal is not None:
                assert hecated_records(journal, 1.5) == []
        finally:
            assert d.stop() == 0

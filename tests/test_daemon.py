"""hecated as a real process on a real Unix socket, with a temporary HOME."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import threading
import tomllib
from pathlib import Path

import pytest
from conftest import HECATED, Daemon, short_tempdir, wait_for

from hecated.core.errors import BusyError
from hecated.wiring import Rescans

SPEC_SUBDIRS = ["connectors", "reckon-db", "run", "sockets", "sqlite"]


def test_layout_on_disk_matches_the_spec(daemon: Daemon) -> None:
    primary = daemon.data_dir
    assert sorted(p.name for p in primary.iterdir()) == SPEC_SUBDIRS
    assert stat.S_ISSOCK(daemon.socket.lstat().st_mode)
    assert daemon.socket == primary / "sockets" / "api.sock"
    assert stat.S_IMODE(daemon.socket.lstat().st_mode) == 0o600
    for d in (daemon.root, primary, *(primary / s for s in SPEC_SUBDIRS)):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert (primary / "run" / "daemon.pid").read_text() == f"{daemon.proc.pid}\n"
    assert (primary / "run" / "daemon.state").read_text() == "running\n"

    status, _, body = daemon.register("hecate-traderd", "0.1.0", "Trading daemon")
    assert status == 201
    ns = daemon.root / "hecate-traderd"
    assert body["base_dir"] == str(ns)
    assert sorted(p.name for p in ns.iterdir()) == sorted([*SPEC_SUBDIRS, "plugin.toml"])
    assert stat.S_IMODE(ns.stat().st_mode) == 0o700


def test_plugin_toml_round_trips_through_the_api(daemon: Daemon) -> None:
    daemon.register("hecate-traderd", "0.1.0", "Trading daemon")
    doc = tomllib.loads((daemon.root / "hecate-traderd" / "plugin.toml").read_text())
    assert doc["name"] == "hecate-traderd"
    assert doc["version"] == "0.1.0"
    assert doc["description"] == "Trading daemon"
    assert doc["schema"] == 1
    assert doc["registered_at"] == doc["updated_at"]
    _, _, listed = daemon.request("GET", "/api/plugins")
    assert [(p["name"], p["version"], p["status"]) for p in listed] == [
        ("hecate-traderd", "0.1.0", "stopped")
    ]


def test_registry_survives_a_restart(home: Path) -> None:
    d = Daemon(home).start()
    d.register("a", "1")
    d.register("b", "2")
    assert d.stop() == 0
    d2 = Daemon(home).start()
    try:
        _, _, listed = d2.request("GET", "/api/plugins")
        assert [(p["name"], p["version"]) for p in listed] == [("a", "1"), ("b", "2")]
    finally:
        d2.stop()


def test_deregister_keeps_data_and_purge_removes_it(daemon: Daemon) -> None:
    daemon.register("p")
    db = daemon.root / "p" / "sqlite" / "p.db"
    db.write_bytes(b"data")
    assert daemon.request("DELETE", "/api/plugins/p")[:1] == (200,)
    assert db.read_bytes() == b"data"
    assert not (daemon.root / "p" / "plugin.toml").exists()
    status, _, body = daemon.request("POST", "/api/plugins/p/purge")
    assert status == 200 and body["ok"] is True
    assert not (daemon.root / "p").exists()


def test_bad_input_gets_json_4xx_and_creates_nothing(daemon: Daemon) -> None:
    daemon_own = {"gitops"}  # made by the reconciler after the first answer, whenever it runs
    before = sorted(set(os.listdir(daemon.root)) - daemon_own)
    cases = [
        ({"name": "../evil"}, None, 400),
        ({"name": "hecate-daemon"}, None, 400),
        (None, b"{oops", 400),
        (None, b"name=x", 415),
    ]
    for body, raw, expected in cases:
        headers = {"Content-Type": "application/json" if raw != b"name=x" else "text/plain"}
        status, hdrs, answer = daemon.request(
            "POST", "/api/plugins/register", body, raw=raw, headers=headers
        )
        assert status == expected, answer
        assert hdrs["Content-Type"] == "application/json"
        assert set(answer) == {"ok", "error", "code"} and answer["ok"] is False
    assert sorted(set(os.listdir(daemon.root)) - daemon_own) == before
    assert daemon.proc.poll() is None


def test_second_daemon_refuses_to_start(daemon: Daemon, home: Path) -> None:
    second = subprocess.run(
        [str(HECATED)], env=daemon.env, capture_output=True, text=True, timeout=30
    )
    assert second.returncode == 1
    assert "already" in second.stderr
    assert daemon.request("GET", "/health")[0] == 200
    assert (daemon.data_dir / "run" / "daemon.pid").read_text() == f"{daemon.proc.pid}\n"


def test_other_process_answering_on_the_socket_is_not_displaced(home: Path) -> None:
    sock_path = home / "x.sock"
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind(str(sock_path))
    squatter.listen()
    try:
        proc = subprocess.run(
            [str(HECATED)],
            env={**Daemon(home).env, "HECATE_SOCKET_PATH": str(sock_path)},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 1
        assert "already answering" in proc.stderr
        assert stat.S_ISSOCK(sock_path.lstat().st_mode)
    finally:
        squatter.close()


def test_stale_socket_is_replaced(home: Path) -> None:
    d = Daemon(home)
    d.socket.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(d.socket))
    stale.close()  # the file stays, nothing answers: a crash's leftover
    d.start()
    try:
        assert d.request("GET", "/health")[0] == 200
    finally:
        d.stop()


def test_a_regular_file_at_the_socket_path_is_never_removed(home: Path) -> None:
    d = Daemon(home)
    d.socket.parent.mkdir(parents=True)
    d.socket.write_text("not a socket")
    proc = subprocess.run([str(HECATED)], env=d.env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "not a socket" in proc.stderr
    assert d.socket.read_text() == "not a socket"


def test_sigterm_removes_socket_and_pid_file(daemon: Daemon) -> None:
    assert daemon.stop(signal.SIGTERM) == 0
    assert not daemon.socket.exists()
    assert not (daemon.data_dir / "run" / "daemon.pid").exists()
    assert (daemon.data_dir / "run" / "daemon.state").read_text() == "stopped\n"


def test_sigint_stops_cleanly_too(daemon: Daemon) -> None:
    assert daemon.stop(signal.SIGINT) == 0
    assert not daemon.socket.exists()


def test_in_flight_request_finishes_on_sigterm(daemon: Daemon) -> None:
    body = b'{"name": "late-plugin", "version": "1"}'
    sockets_before = _socket_fds(daemon)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(10)
    conn.connect(str(daemon.socket))
    conn.sendall(
        b"POST /api/plugins/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:10]
    )
    # accepted: a connection the daemon did not hold before (the readiness probe's
    # keep-alive connection may close meanwhile, so a plain fd count can stand still)
    wait_for(lambda: _socket_fds(daemon) - sockets_before)
    daemon.proc.send_signal(signal.SIGTERM)
    conn.sendall(body[10:])
    answer = b""
    while chunk := conn.recv(65536):
        answer += chunk
    conn.close()
    assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
    assert daemon.proc.wait(15) == 0
    assert (daemon.root / "late-plugin" / "plugin.toml").exists()


def _socket_fds(daemon: Daemon) -> set[str]:
    fd_dir = f"/proc/{daemon.proc.pid}/fd"
    found = set()
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            target = os.readlink(f"{fd_dir}/{fd}")
            if target.startswith("socket:"):
                found.add(target)
    return found


def test_serves_requests_concurrently(daemon: Daemon) -> None:
    # A client that stalls mid-request must not stop others from being served.
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.connect(str(daemon.socket))
    stalled.sendall(b"GET /api/plugins HTTP/1.1\r\n")
    try:
        results: list[int] = []

        def worker(i: int) -> None:
            results.append(daemon.register(f"p{i}")[0])

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(results) == [201] * 20
    finally:
        stalled.close()
    _, _, listed = daemon.request("GET", "/api/plugins")
    assert len(listed) == 20


def test_socket_path_override(home: Path) -> None:
    sock = short_tempdir() / "k3s.sock"
    d = Daemon(home, env={"HECATE_SOCKET_PATH": str(sock)}).start()
    try:
        assert d.socket == sock
        status, _, body = d.register("p")
        assert status == 201
        assert body["base_dir"] == str(home / ".hecate" / "p")
        assert not (d.data_dir / "sockets" / "api.sock").exists()
    finally:
        d.stop()
    assert not sock.exists()


def test_data_dir_flag_moves_the_tree(home: Path) -> None:
    data = home / "srv" / "hecate" / "hecate-daemon"
    d = Daemon(home, args=["--data-dir", str(data)])
    d.socket = data / "sockets" / "api.sock"
    d.start()
    try:
        status, _, body = d.register("p")
        assert status == 201
        assert body["base_dir"] == str(home / "srv" / "hecate" / "p")
        assert not (home / ".hecate").exists()
    finally:
        d.stop()


# -- the one rescan: coalesced, none dropped (issue 13) ------------------------------------


class GatedScan:
    """A rescan pass that holds until the test lets it go: pass N returns N."""

    def __init__(self) -> None:
        self.entered: list[threading.Event] = [threading.Event() for _ in range(8)]
        self.release: list[threading.Event] = [threading.Event() for _ in range(8)]
        self.fail: set[int] = set()
        self.calls = 0

    def __call__(self) -> int:
        n = self.calls
        self.calls += 1
        self.entered[n].set()
        assert self.release[n].wait(30), f"pass {n + 1} was never released"
        if n + 1 in self.fail:
            raise OSError(f"pass {n + 1} failed")
        return n + 1


def entered(scan: GatedScan, n: int) -> None:
    assert scan.entered[n - 1].wait(30), f"pass {n} never started"


def test_a_rescan_asked_for_during_a_rescan_runs_once_more() -> None:
    scan = GatedScan()
    rescans = Rescans(scan)
    rescans.start()
    try:
        first = rescans.request()  # SIGHUP's way: never blocks
        entered(scan, 1)
        second, third = rescans.request(), rescans.request()  # both during pass 1
        assert rescans.pending
        scan.release[0].set()
        assert rescans.wait(first, 30) == 1
        entered(scan, 2)  # not dropped: the pending flag makes it run again
        scan.release[1].set()
        assert (rescans.wait(second, 30), rescans.wait(third, 30)) == (2, 2)
        assert not rescans.pending
        assert (rescans.passes, scan.calls) == (2, 2), "two requests in one pass: one more pass"
    finally:
        for gate in scan.release:
            gate.set()
        rescans.close()


def test_an_http_caller_gets_the_count_of_a_pass_that_started_after_it_asked() -> None:
    scan = GatedScan()
    rescans = Rescans(scan)
    rescans.start()
    answers: list[int] = []
    try:
        rescans.request()
        entered(scan, 1)  # a pass is half-way through the tree when the request comes
        ticket = rescans.request()  # what rescans() does: ask, then wait for a pass
        caller = threading.Thread(target=lambda: answers.append(rescans.wait(ticket, 30)))
        caller.start()
        scan.release[0].set()
        entered(scan, 2)
        assert answers == [], "answered from the pass that began before the request"
        scan.release[1].set()
        caller.join(30)
        assert answers == [2]
    finally:
        for gate in scan.release:
            gate.set()
        rescans.close()


def test_a_failed_pass_fails_its_callers_and_the_next_request_runs_again() -> None:
    scan = GatedScan()
    scan.fail.add(1)
    for gate in scan.release:
        gate.set()
    rescans = Rescans(scan)
    rescans.start()
    try:
        with pytest.raises(OSError, match="pass 1 failed"):
            rescans()
        assert rescans() == 2
    finally:
        rescans.close()


def test_a_caller_waiting_at_shutdown_gets_busy_not_a_hang() -> None:
    scan = GatedScan()
    rescans = Rescans(scan)  # never started: no pass will cover the request
    ticket = rescans.request()
    rescans.close()
    with pytest.raises(BusyError):
        rescans.wait(ticket, 30)
    assert scan.calls == 0


def test_post_rescan_counts_what_is_on_disk_now(daemon: Daemon) -> None:
    ns = daemon.root / "by-hand"
    ns.mkdir(mode=0o700)
    (ns / "plugin.toml").write_text('name = "by-hand"\nversion = "1"\n')
    status, _, body = daemon.request("POST", "/api/rescan")
    assert (status, body) == (200, {"ok": True, "plugins": 1})
    wait_for(lambda: "rescanned the tree (pass 1): 1 plugin(s)" in daemon.log())


def test_sighup_and_post_rescan_run_the_same_passes(daemon: Daemon) -> None:
    """One rescan: a SIGHUP's pass and an HTTP request's pass are numbered in one series."""
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "rescanned the tree (pass 1): 0 plugin(s)" in daemon.log())
    assert daemon.register("after-hup")[0] == 201
    status, _, body = daemon.request("POST", "/api/rescan")
    assert (status, body) == (200, {"ok": True, "plugins": 1})
    assert "rescanned the tree (pass 2): 1 plugin(s)" in daemon.log()

"""hecate-tui finds hecated: ``~/.hecate/daemon.sock`` is served beside the API's socket.

hecate-tui (cmd/hecate-tui/main.go, resolveConnection) tries ``$HECATE_SOCKET``, then
``/run/hecate/daemon.sock``, then ``$HOME/.hecate/daemon.sock`` (an ``os.Stat`` that
follows links), and decodes ``GET /health`` into status, ready, uptime_seconds (an
int) and version. Under systemd, hecate.socket listens there (test_systemd*.py);
standalone, hecated binds it itself, never over something that is not its own.
"""

from __future__ import annotations

import socket
from pathlib import Path

from conftest import Daemon, http_request


def tui_socket(home: Path) -> Path:
    return home / ".hecate" / "daemon.sock"


def test_standalone_hecated_serves_hecate_tuis_socket_and_removes_it(home: Path) -> None:
    daemon = Daemon(home).start()
    try:
        tui = tui_socket(home)
        assert tui.is_socket() and (tui.stat().st_mode & 0o777) == 0o600
        status, _, health = http_request(tui, "GET", "/health")
        assert status == 200
        assert (health["status"], health["ready"], health["service"]) == ("healthy", True, "hecate")
        assert isinstance(health["uptime_seconds"], int) and health["version"]
        assert daemon.register("hecate-traderd")[0] == 201
        _, _, listed = http_request(tui, "GET", "/api/plugins")
        assert [p["name"] for p in listed] == ["hecate-traderd"]  # one daemon, two doors
        status, _, _ = http_request(daemon.socket, "GET", "/health")
        assert status == 200
    finally:
        assert daemon.stop() == 0
    assert not tui_socket(home).exists(), "the standalone daemon bound it: it removes it"


def test_a_file_that_is_not_a_socket_is_left_alone_and_the_api_serves_on(home: Path) -> None:
    tui = tui_socket(home)
    tui.parent.mkdir(mode=0o700)
    tui.write_text("someone's notes\n")
    daemon = Daemon(home).start()
    try:
        assert daemon.request("GET", "/health")[0] == 200
        assert "not serving hecate-tui's socket" in daemon.log()
    finally:
        assert daemon.stop() == 0
    assert tui.read_text() == "someone's notes\n"


def test_a_socket_another_daemon_answers_on_is_left_to_it(home: Path) -> None:
    """The ecosystem's own daemon may hold ~/.hecate/daemon.sock: hecated does not take it."""
    tui = tui_socket(home)
    tui.parent.mkdir(mode=0o700)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(tui))
    other.listen()
    try:
        daemon = Daemon(home).start()
        try:
            assert "already answering" in daemon.log()
            assert daemon.request("GET", "/health")[0] == 200
        finally:
            assert daemon.stop() == 0
        assert tui.is_socket()  # still the other's
        other.settimeout(5)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(tui))
        accepted, _ = other.accept()
        accepted.close()
        probe.close()
    finally:
        other.close()

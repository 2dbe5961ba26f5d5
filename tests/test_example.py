"""The example plugin daemon end to end: it registers, runs, is seen running, stops."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, http_request, wait_for
from ctl_support import EXAMPLED, clean_env, ctl, python, stop

from hecated.client import HecateClient

pytestmark = pytest.mark.slow
NAME = "hecate-exampled"


class Example:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.ns = home / ".hecate" / NAME
        self.proc: subprocess.Popen | None = None

    def start(self) -> Example:
        self.proc = subprocess.Popen(
            [python(), str(EXAMPLED)],
            env=clean_env(self.home),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return self

    def status(self, client: HecateClient) -> str | None:
        try:
            return client.get(NAME).status
        except Exception:
            return None


@pytest.fixture
def example(home: Path) -> Iterator[Example]:
    ex = Example(home)
    yield ex
    if ex.proc is not None:
        stop(ex.proc)


def test_example_runs_is_seen_running_and_stops(daemon: Daemon, example: Example) -> None:
    client = HecateClient(daemon.socket)
    example.start()
    # generous: the registry learns liveness from run/daemon.pid
    wait_for(lambda: example.status(client) == "running", timeout=30)
    info = client.get(NAME)
    assert info.pid == example.proc.pid
    assert info.version == "0.1.0"
    assert (example.ns / "run/daemon.pid").read_text() == f"{example.proc.pid}\n"
    assert (example.ns / "run/daemon.state").read_text() == "running\n"

    listing = ctl(daemon.home, "list")
    assert [NAME, "0.1.0", "running"] in [line.split()[:3] for line in listing.out.splitlines()]

    # its own API on its own socket, its data in its own sqlite/ dir
    sock = example.ns / "sockets/api.sock"
    assert sock.is_socket() and sock.stat().st_mode & 0o777 == 0o600
    status, _, body = http_request(sock, "GET", "/")
    assert status == 200
    assert body == {"name": NAME, "pid": example.proc.pid, "hits": 1}
    assert (example.ns / "sqlite/example.db").is_file()

    example.proc.send_signal(signal.SIGTERM)
    assert example.proc.wait(20) == 0
    wait_for(lambda: example.status(client) == "stopped", timeout=30)
    assert not (example.ns / "run/daemon.pid").exists()
    assert not sock.exists()
    assert (example.ns / "run/daemon.state").read_text() == "stopped\n"

    # a restart re-registers; the data survived
    example.start()
    wait_for(lambda: example.status(client) == "running", timeout=30)
    wait_for(sock.is_socket, timeout=30)
    assert http_request(sock, "GET", "/")[2]["hits"] == 2

    # killed without a chance to clean up: the pid file stays, but names a dead process
    example.proc.send_signal(signal.SIGKILL)
    example.proc.wait(20)
    wait_for(lambda: example.status(client) == "stopped", timeout=30)
    assert (example.ns / "run/daemon.pid").exists()


def test_example_started_before_hecated_waits_for_it(home: Path, example: Example) -> None:
    """The SDK retries while the socket is not there yet (a daemon starting up)."""
    example.start()
    d = Daemon(home).start()
    try:
        client = HecateClient(d.socket)
        wait_for(lambda: example.status(client) == "running", timeout=30)
    finally:
        stop(example.proc)
        example.proc = None
        d.stop()


def test_example_without_hecated_fails_clearly(home: Path) -> None:
    proc = subprocess.run(
        [python(), str(EXAMPLED), "--socket", str(home / "nothing.sock"), "--wait", "0.2"],
        env=clean_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "cannot register with hecated" in proc.stderr
    assert "Traceback" not in proc.stderr

"""Shared fixtures: a temporary HOME and a real hecated process on a real Unix socket."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

# CI gates a landing, so its property tests explore the same examples every run; the
# random exploration lives in local runs and `make soak`, where a new failure is news.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

BIN = Path(sys.executable).parent
HECATED = BIN / "hecated"
HECATECTL = BIN / "hecatectl"


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(os.fspath(self.unix_path))
        self.sock = sock


def http_request(
    sock_path: Path,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], Any]:
    """One request over the Unix socket; returns status, headers and the decoded JSON."""
    conn = UnixHTTPConnection(sock_path, timeout)
    hdrs = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    return resp.status, dict(resp.getheaders()), json.loads(payload) if payload else None


def short_tempdir(prefix: str = "hc") -> Path:
    """A short path: Unix socket addresses hold at most 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o700)
    return path


def memory_tempdir(prefix: str = "hm", need_mb: int = 256) -> Path:
    """A private directory on tmpfs (/dev/shm) when it has room, else ``short_tempdir``.

    For tests about many files or many requests, not about the disk: tmpfs makes the
    fsyncs no-ops and a 10,000-namespace tree quick to make and remove. Durability
    tests stay on the disk (``home``)."""
    shm = Path("/dev/shm")
    try:
        st = os.statvfs(shm)
        roomy = st.f_bavail * st.f_frsize >= need_mb << 20 and os.access(shm, os.W_OK)
    except OSError:
        roomy = False
    if not roomy:
        return short_tempdir(prefix)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=shm))
    path.chmod(0o700)
    return path


@pytest.fixture
def memory_home() -> Iterator[Path]:
    path = memory_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """pytest's own, short: its default (longer under xdist, ``.../popen-gw0/...``) leaves
    too few of a socket address's 107 bytes for a namespace's ``sockets/api.sock``."""
    path = short_tempdir("ht")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def home() -> Iterator[Path]:
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


_made: list[Daemon] = []  # every Daemon of the running test, for the finalizer below


class Daemon:
    """A hecated subprocess started the way a user starts it, with its own HOME."""

    def __init__(self, home: Path, args: list[str] | None = None, env: dict | None = None) -> None:
        _made.append(self)
        self.home = home
        self.args = args or []
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("HECATE_")}
        self.env = {**inherited, "HOME": str(home), **(env or {})}
        self.root = home / ".hecate"
        self.data_dir = self.root / "hecate-daemon"
        self.socket = Path(
            (env or {}).get("HECATE_SOCKET_PATH") or self.data_dir / "sockets" / "api.sock"
        )
        self.proc: subprocess.Popen | None = None
        self.stderr_path = home / "hecated.stderr"

    def start(self, wait: bool = True) -> Daemon:
        self._stderr = self.stderr_path.open("ab")
        self.proc = subprocess.Popen(
            [str(HECATED), *self.args], env=self.env, stdout=self._stderr, stderr=self._stderr
        )
        if wait:
            wait_for(self._ready, timeout=15)
        return self

    def _ready(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise AssertionError(f"hecated exited with {self.proc.returncode}: {self.log()}")
        try:
            return self.request("GET", "/health")[0] == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def request(self, method: str, path: str, body: Any = None, **kw: Any):
        return http_request(self.socket, method, path, body, **kw)

    def register(self, name: str, version: str = "1.0", description: str = "") -> Any:
        return self.request(
            "POST",
            "/api/plugins/register",
            {"name": name, "version": version, "description": description},
        )

    def kill(self) -> None:
        """SIGKILL by pid, whatever state a failed test left it in (finalizers only)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(15)
        stderr = getattr(self, "_stderr", None)
        if stderr is not None:
            stderr.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._stderr.close()
        return code


@pytest.fixture(autouse=True)
def no_daemon_outlives_its_test() -> Iterator[None]:
    """A test that fails before its own ``finally`` (or a start that never became ready)
    must not leave a hecated running: each one it made is killed by pid here, after the
    test's other fixtures have stopped theirs the gentle way."""
    _made.clear()
    try:
        yield
    finally:
        made = list(_made)
        _made.clear()
        for d in made:
            d.kill()


@pytest.fixture
def daemon(home: Path) -> Iterator[Daemon]:
    d = Daemon(home).start()
    yield d
    if d.proc and d.proc.poll() is None:
        d.stop()


# Files whose tests use something machine-wide: a systemd --user manager (one cgroup for
# all, see systemd_support.MANAGER_LOCK), /run/systemd/journal/socket, packages installed
# with dpkg, the shared unit directories. Under pytest-xdist (`make test`) they run in one
# group, on one worker, one after another; everything else is private to its test.
MACHINE_WIDE = {
    "test_systemd.py",
    "test_systemd_e2e.py",
    "test_alias_e2e.py",
    "test_packaging.py",
    "test_units.py",
    "test_unit_adapter.py",
    "test_unit_status.py",
    "test_unit_control.py",
    "test_ondemand.py",
    "test_install_units.py",
    "test_install_e2e.py",
    "test_gitops.py",
}

# Single tests elsewhere that read what those install machine-wide: doctor looks in
# /usr/lib/systemd/user too, where test_packaging's .deb puts hecate.socket for a while.
MACHINE_WIDE_TESTS = {"test_doctor_on_a_healthy_installation"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the group into the node id
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        name = getattr(item, "originalname", item.name)
        if item.path.name in MACHINE_WIDE or name in MACHINE_WIDE_TESTS:
            item.add_marker(pytest.mark.xdist_group("machine-wide"))

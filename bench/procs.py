"""Processes under test: a hecated on its own HOME, a tree of plugins, what /proc says of them.

Everything started here runs unpinned unless ``PINNED`` is set (then on the server
CPU(s), with ``sched_setaffinity`` before exec), and is stopped by its pid, never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from hecated.core.layout import SUBDIRS
from hecated.core.manifest import Manifest, dumps

HECATED = Path(sys.executable).parent / "hecated"


# Headline runs are unpinned: nobody runs hecated pinned to a core, and pinning
# flatters a server that hands each request between threads (issue 15). ``--pinned``
# (bench/run.py) sets this for a labelled extra run, servers on one half of the
# CPUs and clients on the other, as the tables were measured before.
PINNED = False


def cpu_split() -> tuple[set[int] | None, set[int] | None]:
    """Server CPUs and client CPUs in a pinned run; ``(None, None)`` (no pinning) otherwise."""
    if not PINNED:
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus)
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


def placement() -> str:
    server, client = cpu_split()
    if server is None or client is None:
        return (
            f"unpinned (servers and clients free on all {len(os.sched_getaffinity(0))} CPUs, "
            "as users run them)"
        )
    return (
        f"**pinned**: servers on CPU {fmt_cpus(server)}, clients on CPU {fmt_cpus(client)} "
        "(sched_setaffinity)"
    )


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, for the line under every table."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def fmt_cpus(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def pinned(cpus: set[int] | None):
    """A ``preexec_fn`` that pins the child before exec, like ``taskset -c`` (None: no pinning)."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def temp_home(prefix: str = "hcb") -> Path:
    """Short, private: Unix socket paths hold at most 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o700)
    return path


def make_plugins(home: Path, count: int, prefix: str = "bench") -> list[str]:
    """``count`` registered plugins on disk as hecated writes them (no fsync: set-up, not test)."""
    root = home / ".hecate"
    root.mkdir(mode=0o700, exist_ok=True)
    now = datetime.now(UTC).replace(microsecond=0)
    names = []
    for i in range(count):
        name = f"{prefix}-{i:05d}"
        ns = root / name
        ns.mkdir(mode=0o700)
        for sub in SUBDIRS:
            (ns / sub).mkdir(mode=0o700)
        manifest = Manifest(
            name=name,
            version=f"1.{i % 10}.0",
            description=f"benchmark plugin number {i}, a line of text like real ones carry",
            registered_at=now,
            updated_at=now,
        )
        (ns / "plugin.toml").write_bytes(dumps(manifest))
        names.append(name)
    return names


@dataclass
class Hecated:
    """A real hecated on ``home`` (pinned to ``cpus`` if given); ``started``: when spawned."""

    home: Path
    cpus: set[int] | None
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    started: float = 0.0

    @property
    def socket(self) -> str:
        return str(self.home / ".hecate" / "hecate-daemon" / "sockets" / "api.sock")

    def start(self) -> Hecated:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HECATE_")}
        env["HOME"] = str(self.home)
        log = (self.home / "hecated.log").open("ab")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(HECATED), *self.args],
            env=env,
            stdout=log,
            stderr=log,
            preexec_fn=pinned(self.cpus),
        )
        log.close()
        return self

    def wait_answer(self, path: str = "/api/plugins", timeout: float = 60.0) -> float:
        """Seconds from spawn to the first complete answer to ``GET path``."""
        from rawhttp import Client

        client = Client(self.socket, path, keep_alive=False)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.one(None, bytearray())
                return time.perf_counter() - self.started
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"hecated exited: {self.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"hecated did not answer in {timeout}s: {self.log()[-2000:]}")
            time.sleep(0.002)

    def log(self) -> str:
        path = self.home / "hecated.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        stop_pid(self.proc)


def stop_pid(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_socket(path: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            return
        except OSError:
            time.sleep(0.01)
        finally:
            probe.close()
    raise RuntimeError(f"nothing listens on {path} after {timeout}s")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def inotify_watches(pid: int) -> int:
    """Watches held by all of ``pid``'s inotify instances (one ``inotify wd:`` line each)."""
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        total += sum(1 for line in text.splitlines() if line.startswith("inotify wd:"))
    return total


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

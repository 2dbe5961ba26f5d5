"""What liveness probes cost: idle CPU with 100 live plugins, and list latency beside none.

Usage: .venv/bin/python bench/liveness.py [--plugins 100] [--idle 30] [--requests 2000]

1. A hecated on its own HOME with ``--plugins`` registered plugins, none live; the
   latency of ``GET /api/plugins`` (raw socket, one connection per request, ``--requests``
   requests; median and p99).
2. One plugin process (tests/plugin_support.py) serving all of them on their
   ``sockets/api.sock``; once every plugin is ``running``, hecated's CPU over ``--idle``
   seconds at the default probe interval (utime + stime from ``/proc/PID/stat``), and
   the same list latency again.

Goals (issue 12): idle CPU at most 1% of a core; the list with 100 live plugins at most
1.2x the list with none. Everything started here is stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HECATED = Path(sys.executable).parent / "hecated"
PLUGIN = HERE.parent / "tests" / "plugin_support.py"
TICKS = os.sysconf("SC_CLK_TCK")


def ask(path: Path, target: str) -> tuple[int, bytes]:
    """One GET with a raw socket, read to the end (hecated closes after Connection: close)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(os.fspath(path))
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


def latency(path: Path, requests: int) -> tuple[float, float]:
    """Median and p99 of ``GET /api/plugins`` in ms, after a short warm-up."""
    for _ in range(50):
        ask(path, "/api/plugins")
    times = []
    for _ in range(requests):
        began = time.perf_counter()
        status, _ = ask(path, "/api/plugins")
        times.append((time.perf_counter() - began) * 1000)
        assert status == 200
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def wait_until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("bench: the plugins did not all come up in time")
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plugins", type=int, default=100)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="hlb", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HECATE_")}
    env["HOME"] = str(home)
    sock = home / ".hecate" / "hecate-daemon" / "sockets" / "api.sock"
    names = [f"hecate-app-p{i:03d}d" for i in range(args.plugins)]
    daemon = subprocess.Popen([str(HECATED)], env=env, stderr=subprocess.DEVNULL)
    plugins = None
    try:
        wait_until(lambda: sock.exists(), 15)
        for name in names:
            body = json.dumps({"name": name, "version": "1"}).encode()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(os.fspath(sock))
                s.sendall(
                    b"POST /api/plugins/register HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                    b"Content-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                while s.recv(65536):
                    pass
        none_live = latency(sock, args.requests)

        plugins = subprocess.Popen(
            [sys.executable, str(PLUGIN), *(str(home / ".hecate" / n) for n in names)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert plugins.stdout is not None and plugins.stdout.readline().strip() == "ready"

        def all_running() -> bool:
            listing = json.loads(ask(sock, "/api/plugins")[1])
            return sum(p["status"] == "running" for p in listing) == args.plugins

        wait_until(all_running, 60)
        time.sleep(1)  # let the manifests of the last ones settle before measuring idle
        before, began = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(args.idle)
        idle_cpu = (cpu_seconds(daemon.pid) - before) / (time.monotonic() - began) * 100
        all_live = latency(sock, args.requests)
        print(f"plugins: {args.plugins}, probe interval: default (10 s), idle: {args.idle:.0f} s")
        print(f"hecated idle CPU with all live: {idle_cpu:.2f}% of a core (goal <= 1%)")
        for label, (median, p99) in (("none live", none_live), ("all live", all_live)):
            print(f"GET /api/plugins, {label + ':':10} median {median:.3f} ms, p99 {p99:.3f} ms")
        print(f"ratio of medians: {all_live[0] / none_live[0]:.2f}x (goal <= 1.2x)")
    finally:
        for proc in (plugins, daemon):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM if proc is daemon else signal.SIGKILL)
                proc.wait(15)
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

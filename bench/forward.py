"""Forwarding /plugin/{name}/... (issue 14): its cost beside a direct request, and what
open streams cost the registry.

- ``GET /manifest`` forwarded through hecated beside the same request straight to the
  plugin's socket: same raw client (``rawhttp``), keep-alive on the client's side, one
  run, interleaved in rounds so a load spike hits both alike (goal: p50 <= 2x direct).
- ``GET /api/plugins`` latency with 200 idle forwarded streams open beside none
  (goal <= 1.2x).
- hecated's threads and RSS with none, 200 and 256 (the cap) streams open.

The plugin is the tests' stdlib plugin (its own process, its own socket). Run:
``.venv/bin/python bench/forward.py``; figures from a loaded machine are indicative.
"""

from __future__ import annotations

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
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from rawhttp import Client, read_response  # noqa: E402
from test_forward import PLUGIN  # noqa: E402

HECATED = Path(sys.executable).parent / "hecated"


def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.02)


def answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
        return True
    except OSError:
        return False


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            out[key] = int(value.split()[0])
    return out


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in samples)
    return {
        "p50_ms": round(statistics.median(ms), 3),
        "p90_ms": round(ms[int(len(ms) * 0.9)], 3),
        "p99_ms": round(ms[int(len(ms) * 0.99)], 3),
        "n": len(ms),
    }


def rounds(clients: dict[str, Client], n: int, per_round: int = 100) -> dict[str, list[float]]:
    """Interleave the clients in rounds: a spike of load on the machine hits both."""
    out: dict[str, list[float]] = {k: [] for k in clients}
    for _ in range(n // per_round):
        for key, client in clients.items():
            out[key] += client.run(per_round)
    return out


def open_streams(sock: Path, path: str, count: int) -> list[socket.socket]:
    streams = []
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(sock))
        s.settimeout(30)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        streams.append(s)
    for s in streams:
        data = b""
        while b": open" not in data:
            piece = s.recv(4096)
            if not piece:
                raise RuntimeError(f"stream closed: {data!r}")
            data += piece
    return streams


def run(samples: int = 2000) -> dict:
    home = Path(tempfile.mkdtemp(prefix="hbf", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HECATE_")}
    env["HOME"] = str(home)
    root = home / ".hecate"
    sock = root / "hecate-daemon" / "sockets" / "api.sock"
    daemon = subprocess.Popen([str(HECATED)], env=env, stderr=subprocess.DEVNULL)
    plugin_dir = root / "hecate-app-benchd" / "sockets"
    plugin_dir.mkdir(parents=True)
    plugin_sock = plugin_dir / "api.sock"
    plugin = subprocess.Popen(
        [sys.executable, "-c", PLUGIN, str(plugin_sock), "hecate-app-benchd"],
        stdin=subprocess.PIPE,
    )
    try:
        wait_for(lambda: answers(sock) and answers(plugin_sock))
        # Register a few plugins so the list is not trivially empty.
        for i in range(20):
            c = Client(
                str(sock),
                "/api/plugins/register",
                False,
                201,
                "POST",
                json.dumps({"name": f"p{i}", "version": "1"}).encode(),
            )
            c.run(1)
        direct = Client(str(plugin_sock), "/manifest", True)
        forwarded = Client(str(sock), "/plugin/bench/manifest", True)
        rounds({"direct": direct, "forwarded": forwarded}, 200)  # warm-up
        manifest = rounds({"direct": direct, "forwarded": forwarded}, samples)
        result: dict = {
            "manifest_direct": percentiles(manifest["direct"]),
            "manifest_forwarded": percentiles(manifest["forwarded"]),
        }
        result["manifest_p50_ratio"] = round(
            result["manifest_forwarded"]["p50_ms"] / result["manifest_direct"]["p50_ms"], 2
        )
        listing = Client(str(sock), "/api/plugins", True)
        listing.run(200)
        result["proc_0_streams"] = proc_status(daemon.pid)
        idle = listing.run(samples)
        streams = open_streams(sock, "/plugin/bench/hold", 200)
        result["proc_200_streams"] = proc_status(daemon.pid)
        busy = listing.run(samples)
        more = open_streams(sock, "/plugin/bench/hold", 56)
        result["proc_256_streams"] = proc_status(daemon.pid)
        with socket.socket(socket.AF_UNIX) as s:  # the 257th
            s.connect(str(sock))
            s.sendall(b"GET /plugin/bench/hold HTTP/1.1\r\nHost: localhost\r\n\r\n")
            result["stream_257_status"] = read_response(s, bytearray())[0]
        for s in streams + more:
            s.close()
        result["list_no_streams"] = percentiles(idle)
        result["list_200_streams"] = percentiles(busy)
        result["list_p50_ratio"] = round(
            result["list_200_streams"]["p50_ms"] / result["list_no_streams"]["p50_ms"], 2
        )
        return result
    finally:
        plugin.kill()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        plugin.wait(10)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))

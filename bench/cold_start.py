"""Cold start through socket activation: connect → full response while nothing is running.

Each round starts ``systemd-socket-activate -l SOCK -- hecated serve`` (the way
systemd starts hecate.service from hecate.socket), waits until it listens,
then times one ``GET /api/plugins`` from connect to the last byte: that
includes exec'ing Python, importing hecated, loading the index and answering.
Beside it, in the same run and started the same way, a bare Python child that
accepts on fd 3 and replies: the floor for any Python daemon. Rounds alternate
between the two so that machine noise falls on both alike.

    .venv/bin/python bench/cold_start.py [N]
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

HECATED = Path(sys.executable).parent / "hecated"
BARE_CHILD = (
    "import socket\n"
    "s = socket.socket(fileno=3)\n"
    "c, _ = s.accept()\n"
    "c.recv(65536)\n"
    "c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\n"
    "Content-Length: 3\\r\\nConnection: close\\r\\n\\r\\n[]\\n')\n"
    "c.close()\n"
)
REQUEST = b"GET /api/plugins HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def _activate(sock: Path, home: Path, cmd: list[str], log: Path) -> subprocess.Popen:
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        raise SystemExit("systemd-socket-activate is not installed (Debian: systemd)")
    with log.open("wb") as out:
        return subprocess.Popen(
            [activate, "-l", str(sock), "-E", f"HOME={home}", "--", *cmd],
            stdout=out,
            stderr=out,
        )


def _wait_listening(log: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 10
    while b"Listening on" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"systemd-socket-activate did not listen: {log.read_text()}")
        time.sleep(0.005)


def _one_request(sock: Path) -> tuple[float, bytes]:
    start = time.perf_counter()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(30)
    conn.connect(os.fspath(sock))
    conn.sendall(REQUEST)
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed, b"".join(chunks)


def _round(home: Path, cmd: list[str]) -> float:
    sock = home / ".hecate" / "hecate-daemon" / "sockets" / "api.sock"
    sock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    sock.unlink(missing_ok=True)
    log = home / "activate.log"
    proc = _activate(sock, home, cmd, log)
    try:
        _wait_listening(log, proc)
        elapsed, response = _one_request(sock)
        if not response.startswith(b"HTTP/1.") or b" 200 " not in response.split(b"\r\n")[0]:
            raise RuntimeError(f"bad response: {response[:200]!r}\n{log.read_text()}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return elapsed


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p90_ms": round(p90 * 1000, 1),
        "min_ms": round(ordered[0] * 1000, 1),
    }


def run(n: int = 20) -> dict:
    """Median and p90 of ``n`` cold starts of hecated and of the bare child, in ms."""
    home = Path(tempfile.mkdtemp(prefix="hcb", dir="/tmp"))
    try:
        hecated = [str(HECATED), "serve"]
        bare = [sys.executable, "-c", BARE_CHILD]
        _round(home, hecated)  # warm the page cache for both before measuring
        _round(home, bare)
        samples: dict[str, list[float]] = {"hecated": [], "bare_child": []}
        for _ in range(n):
            samples["hecated"].append(_round(home, hecated))
            samples["bare_child"].append(_round(home, bare))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    result = {name: _summary(values) for name, values in samples.items()}
    result["n"] = n
    result["ratio_median"] = round(
        result["hecated"]["median_ms"] / result["bare_child"]["median_ms"], 2
    )
    return result


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    outcome = run(rounds)
    print(json.dumps(outcome, indent=2))
    h, b = outcome["hecated"], outcome["bare_child"]
    print(
        f"cold start via socket activation, n={rounds}: hecated median {h['median_ms']} ms "
        f"(p90 {h['p90_ms']}), bare Python child median {b['median_ms']} ms "
        f"(p90 {b['p90_ms']}): {outcome['ratio_median']}x",
        file=sys.stderr,
    )

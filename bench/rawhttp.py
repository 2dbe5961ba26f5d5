"""A raw-socket HTTP/1.1 client for the benchmarks.

``http.client`` costs ~90 µs a request on its own, more than the servers we
measure, so the figures come from this minimal client: one ``sendall`` of a
pre-built request, reads until the ``Content-Length`` is satisfied (or EOF on
``Connection: close``). It checks the status so a benchmark of 404s cannot pass
for a benchmark of answers.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass


class BadResponse(RuntimeError):
    """The server answered something other than the status we asked for."""


def request_bytes(path: str, keep_alive: bool, method: str = "GET", body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
    if not keep_alive:
        head += "Connection: close\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, bytes, bool]:
    """Status, body and whether the server keeps the connection open."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        chunk = sock.recv(65536)
        if not chunk:
            raise BadResponse("connection closed before the headers")
        buf += chunk
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    del buf[: end + 4]
    status = int(head[0].split(" ", 2)[1])
    length = None
    close = head[0].startswith("HTTP/1.0")
    for line in head[1:]:
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "content-length":
            length = int(value)
        elif key == "connection":
            close = value.strip().lower() == "close"
    if length is None:  # read to EOF
        while chunk := sock.recv(65536):
            buf += chunk
        length, close = len(buf), True
    while len(buf) < length:
        chunk = sock.recv(max(65536, length - len(buf)))
        if not chunk:
            raise BadResponse("connection closed inside the body")
        buf += chunk
    body = bytes(buf[:length])
    del buf[:length]
    return status, body, not close


def fetch(address: str, path: str) -> bytes:
    """One GET over a Unix socket: the body, as a baseline will serve the same bytes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(address)
        sock.sendall(request_bytes(path, False))
        status, body, _ = read_response(sock, bytearray())
    if status != 200:
        raise BadResponse(f"GET {path}: {status}")
    return body


@dataclass
class Client:
    """One client's loop: ``count`` requests, new connection each or one kept alive."""

    address: str | tuple[str, int]  # a Unix socket path, or (host, port) for TCP baselines
    path: str
    keep_alive: bool
    expect: int = 200
    method: str = "GET"
    body: bytes = b""
    body_of: Callable[[int], bytes] | None = None  # a body per request (unique names)
    sent: int = 0

    def connect(self) -> socket.socket:
        if isinstance(self.address, tuple):
            sock = socket.create_connection(self.address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.address)
        return sock

    def one(self, sock: socket.socket | None, buf: bytearray) -> tuple[socket.socket | None, int]:
        if sock is None:
            sock = self.connect()
        body = self.body_of(self.sent) if self.body_of else self.body
        self.sent += 1
        sock.sendall(request_bytes(self.path, self.keep_alive, self.method, body))
        status, body, keep = read_response(sock, buf)
        if status != self.expect:
            raise BadResponse(f"{self.method} {self.path}: {status} {body[:200]!r}")
        if not (self.keep_alive and keep):
            sock.close()
            sock = None
            buf.clear()
        return sock, len(body)

    def run(self, count: int) -> list[float]:
        """Latencies in seconds, one per request."""
        out: list[float] = []
        sock: socket.socket | None = None
        buf = bytearray()
        clock = time.perf_counter
        try:
            for _ in range(count):
                t0 = clock()
                sock, _size = self.one(sock, buf)
                out.append(clock() - t0)
        finally:
            if sock is not None:
                sock.close()
        return out


def run_clients(
    make: Callable[[int], Client], clients: int, count: int, cpus: set[int] | None
) -> tuple[list[float], float]:
    """``clients`` processes (not threads: the GIL would serialise them) each doing ``count``.

    Returns all latencies and the wall time from the first start to the last end.
    """
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    start = ctx.Barrier(clients + 1)
    queue = ctx.Queue()

    def work(index: int) -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        client = make(index)
        client.run(min(20, count))  # warm up this process's code paths
        start.wait()
        t0 = time.perf_counter()
        lat = client.run(count)
        queue.put((lat, t0, time.perf_counter()))

    procs = [ctx.Process(target=work, args=(i,), daemon=True) for i in range(clients)]
    for p in procs:
        p.start()
    start.wait()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(10)
    lat = [x for r in results for x in r[0]]
    wall = max(r[2] for r in results) - min(r[1] for r in results)
    return lat, wall

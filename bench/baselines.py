"""The baselines: nginx serving the same bytes from files, etcd doing durable puts.

The bench installs them itself with apt (Debian's ``nginx-light`` and
``etcd-server``), starts each on a temporary directory, pinned to the server
CPUs like hecated, and stops each by its pid. Nothing here is configured
system-wide: no unit is enabled, no port is left open.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from procs import pinned, stop_pid, wait_socket

APT_PACKAGES = {"nginx": "nginx-light", "etcd": "etcd-server"}


def ensure_installed(binaries: list[str]) -> None:
    """apt-get install whatever of nginx/etcd is missing (root, or sudo)."""
    missing = [APT_PACKAGES[b] for b in binaries if not _which(b)]
    if not missing:
        return
    sudo = [] if os.getuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing baselines with apt: {' '.join(missing)}", flush=True)
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
    )
    # Debian starts the services it installs; the bench wants none running.
    for unit in ("nginx", "etcd"):
        subprocess.run(
            [*sudo, "systemctl", "disable", "--now", unit], capture_output=True, check=False
        )


def _which(binary: str) -> str | None:
    return shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")


@dataclass
class Nginx:
    """nginx-light, one worker, serving ``files`` (name → bytes) on a Unix socket."""

    workdir: Path
    cpus: set[int] | None
    proc: subprocess.Popen | None = None

    @property
    def socket(self) -> str:
        return str(self.workdir / "nginx.sock")

    def start(self, files: dict[str, bytes]) -> Nginx:
        www = self.workdir / "www"
        www.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (www / name).write_bytes(data)
        conf = self.workdir / "nginx.conf"
        w = self.workdir
        conf.write_text(
            f"""user root;
worker_processes 1;
daemon off;
pid {w}/nginx.pid;
error_log {w}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {w}/tmp-body;
    proxy_temp_path {w}/tmp-proxy;
    fastcgi_temp_path {w}/tmp-fastcgi;
    uwsgi_temp_path {w}/tmp-uwsgi;
    scgi_temp_path {w}/tmp-scgi;
    keepalive_requests 1000000;
    server {{
        listen unix:{self.socket};
        root {www};
        default_type application/json;
        etag off;
    }}
}}
"""
        )
        self.proc = subprocess.Popen(
            [_which("nginx") or "nginx", "-c", str(conf), "-p", str(w)],
            stdout=subprocess.DEVNULL,
            stderr=(w / "stderr.log").open("wb"),
            preexec_fn=pinned(self.cpus),
        )
        wait_socket(self.socket, self.proc)
        return self

    def stop(self) -> None:
        stop_pid(self.proc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Etcd:
    """One etcd member on loopback, data dir in ``workdir``: every put is in its fsynced WAL."""

    workdir: Path
    cpus: set[int] | None
    proc: subprocess.Popen | None = None
    port: int = 0

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self) -> Etcd:
        self.port, peer = _free_port(), _free_port()
        client_url, peer_url = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{peer}"
        self.proc = subprocess.Popen(
            [
                _which("etcd") or "etcd",
                "--name=bench",
                f"--data-dir={self.workdir / 'data'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=bench={peer_url}",
                "--log-level=error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "etcd.log").open("wb"),
            preexec_fn=pinned(self.cpus),
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                status, _ = etcd_call(self.address, "/v3/kv/range", {"key": b64("x")})
                if status == 200:
                    return self
            except OSError:
                time.sleep(0.05)
            if self.proc.poll() is not None:
                break
        raise RuntimeError(f"etcd did not start: {(self.workdir / 'etcd.log').read_text()[-2000:]}")

    def stop(self) -> None:
        stop_pid(self.proc)


def b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode()


def put_body(key: str, value: bytes) -> bytes:
    return json.dumps({"key": b64(key), "value": b64(value)}).encode()


def etcd_call(address: tuple[str, int], path: str, body: dict) -> tuple[int, bytes]:
    from rawhttp import read_response, request_bytes

    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(request_bytes(path, False, "POST", json.dumps(body).encode()))
        status, data, _ = read_response(sock, bytearray())
    return status, data


def etcd_watch_latency(address: tuple[str, int], samples: int) -> list[float]:
    """Seconds from a put's start to its event arriving on an open watch stream."""
    from rawhttp import Client

    key = "bench/watched"
    watch = socket.create_connection(address)
    watch.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = json.dumps({"create_request": {"key": b64(key)}}).encode()
    watch.sendall(
        b"POST /v3/watch HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    watch.settimeout(10)
    seen = _read_until(watch, b"", b'"created":true')
    putter = Client(address, "/v3/kv/put", keep_alive=True, method="POST")
    sock, buf = None, bytearray()
    out = []
    try:
        for i in range(samples):
            putter.body = put_body(key, f"value-{i}".encode())
            t0 = time.perf_counter()
            sock, _ = putter.one(sock, buf)
            seen = _read_until(watch, seen, f'"value":"{b64(f"value-{i}")}"'.encode())
            out.append(time.perf_counter() - t0)
    finally:
        watch.close()
        if sock is not None:
            sock.close()
    return out


def _read_until(sock: socket.socket, seen: bytes, marker: bytes) -> bytes:
    """Read the watch stream until ``marker`` shows up; returns what follows it."""
    while marker not in seen:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("etcd closed the watch stream")
        seen += chunk
    return seen[seen.index(marker) + len(marker) :]

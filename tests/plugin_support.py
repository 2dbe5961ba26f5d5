"""A test plugin modelled on the real ones (hecate-traderd, hecate-app-traderd).

Run as its own process (``python tests/plugin_support.py NAMESPACE_DIR ...``):
binds ``NAMESPACE_DIR/sockets/api.sock`` for each namespace given and serves
``GET /health``, ``GET /manifest`` and ``GET /ui/component.js`` as they do. It
writes no pid file and never registers, exactly like the real plugins. Modes:

- ``normal``: answers as traderd does;
- ``no-ui``: no ``/ui/component.js`` (404), as a plugin whose UI route is missing;
- ``silent``: accepts connections and never answers;
- ``--manifest-name``: the name its manifest claims (default: the short name).

It prints ``ready`` on stdout once every socket listens. One process may serve
many namespaces (the bench's 100 live plugins).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path


def short_name(namespace: str) -> str:
    for prefix in ("hecate-app-", "hecate-"):
        if namespace.startswith(prefix) and namespace.endswith("d"):
            return namespace[len(prefix) : -1]
    return namespace


class Handler(BaseHTTPRequestHandler):
    server: PluginServer

    def do_GET(self) -> None:
        srv = self.server
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._json(200, {"ok": True, "app": srv.namespace, "version": "0.3.0", "node": "n@h"})
        elif path == "/manifest":
            short = short_name(srv.namespace)
            self._json(
                200,
                {
                    "name": srv.manifest_name or short,
                    "version": "0.3.0",
                    "display_name": short.title(),
                    "icon": "\N{CHART WITH UPWARDS TREND}",
                    "description": "AI Stock Trading Agents",
                    "tag": f"{short}-studio",
                },
            )
        elif path == "/ui/component.js" and srv.mode != "no-ui":
            data = b"customElements.define('x-studio', class extends HTMLElement {});\n"
            self._send(200, "text/javascript", data)
        else:
            self._json(404, {"ok": False, "error": "not_found"})

    def _json(self, status: int, body: dict) -> None:
        self._send(status, "application/json", json.dumps(body).encode())

    def _send(self, status: int, ctype: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args: object) -> None:
        pass


class PluginServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, namespace_dir: Path, mode: str, manifest_name: str | None) -> None:
        self.namespace = namespace_dir.name
        self.mode = mode
        self.manifest_name = manifest_name
        sockets = namespace_dir / "sockets"
        sockets.mkdir(parents=True, exist_ok=True)
        path = sockets / "api.sock"
        if path.exists():
            path.unlink()
        super().__init__(os.fspath(path), Handler)

    def serve_idle(self) -> None:
        self.serve_forever(poll_interval=None)  # type: ignore[arg-type]

    def serve_silently(self) -> None:
        """Accept and never answer: connections are held open, nothing is read or sent."""
        held: list[socket.socket] = []
        while True:
            conn, _ = self.socket.accept()
            held.append(conn)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("namespaces", nargs="+", type=Path)
    parser.add_argument("--mode", choices=["normal", "no-ui", "silent"], default="normal")
    parser.add_argument("--manifest-name")
    args = parser.parse_args(argv)
    servers = [PluginServer(ns, args.mode, args.manifest_name) for ns in args.namespaces]
    for srv in servers:
        # No poll timeout: a plugin process serving 100 sockets must not wake 200 times a
        # second for a shutdown() it is never asked for (it is killed), or it would load the
        # very CPU the bench measures hecated on.
        target = srv.serve_silently if args.mode == "silent" else srv.serve_idle
        threading.Thread(target=target, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
    return 0


class Plugin:
    """The test plugin as a subprocess: started, ready (its sockets listen), killed."""

    def __init__(self, *namespaces: Path, mode: str = "normal", manifest_name: str | None = None):
        cmd = [sys.executable, __file__, *map(os.fspath, namespaces), "--mode", mode]
        if manifest_name:
            cmd += ["--manifest-name", manifest_name]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise AssertionError(f"the test plugin did not start: {line!r}")

    def kill(self) -> None:
        """SIGKILL: its socket files stay behind, as after a crash."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(15)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> Plugin:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.kill()


if __name__ == "__main__":
    sys.exit(main())

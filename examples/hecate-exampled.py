#!/usr/bin/env python3
"""hecate-exampled: the smallest complete Hecate plugin daemon, as a walk-through.

What every plugin daemon does, in order:

1. register with hecated through the SDK, every time it starts (re-registering
   updates the version and keeps the data), and take the paths it answers with;
2. write ``run/daemon.pid`` -- a live pid makes the registry say ``starting``
   -- and ``run/daemon.state``;
3. bind its own API on ``sockets/api.sock`` (mode 0600), the socket the
   registry advertises to other plugins; its ``GET /health`` answering 2xx is
   what makes the registry say ``running``;
4. keep its data under the paths it was given (here a SQLite file in ``sqlite/``);
5. on SIGTERM/SIGINT stop serving, remove its socket and pid file, and write
   state ``stopped``. (After a SIGKILL the pid file stays behind, but it names
   a dead process, so the registry still says ``stopped``.)

Its API is what the Hecate ecosystem's own plugin daemons serve on their
socket (hecate-traderd and friends; see docs/ecosystem.md), so hecate-web and
hecated treat it like one of them:

- ``GET /health``: 200 ``{"ok": true, "app", "version", "node"}`` -- 2xx is "alive";
- ``GET /manifest``: ``{"name", "version", "display_name", "icon", "description",
  "tag"}``; ``name`` is the short name (``example`` for ``hecate-exampled``, as
  ``trader`` is for ``hecate-traderd``), ``icon`` an emoji, ``tag`` the custom
  element the UI mounts;
- ``GET /ui/component.js``: an ES module defining that custom element (a UI drops
  a plugin whose module is missing);
- ``GET /``: ``{"name", "pid", "hits"}``, counting requests in the SQLite file so
  the count survives restarts.

Anything else answers the ecosystem's error shape, ``{"ok": false, "error": ...}``
(404, or 405 for a method other than GET/HEAD).

Run it:  python3 examples/hecate-exampled.py [--name NAME] [--socket PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import socketserver
import sqlite3
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from hecated.client import ClientError, HecateClient, PluginPaths

NAME = "hecate-exampled"
VERSION = "0.1.0"
DESCRIPTION = "Example plugin daemon for Hecate"
ICON = "\N{TEST TUBE}"
DRAIN_MAX = 64 * 1024  # bytes of a refused request body read before answering
log = logging.getLogger(NAME)


def write_atomically(path: Path, text: str) -> None:
    """Temp file, fsync, rename: a reader never sees half a pid."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class Store:
    """The plugin's own data: one SQLite file in the ``sqlite/`` dir it was given."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS hits (id INTEGER PRIMARY KEY, n INTEGER)")
        self._db.execute("INSERT OR IGNORE INTO hits (id, n) VALUES (1, 0)")
        self._lock = threading.Lock()

    def hit(self) -> int:
        with self._lock:
            self._db.execute("UPDATE hits SET n = n + 1 WHERE id = 1")
            return self._db.execute("SELECT n FROM hits WHERE id = 1").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def short_name(name: str) -> str:
    """The manifest's name: ``hecate-app-{x}d`` and ``hecate-{x}d`` are plugin ``x``.

    The real plugins do the same (``trader`` in the namespace ``hecate-traderd``
    or ``hecate-app-traderd``); any other namespace name is used as it is.
    """
    for prefix in ("hecate-app-", "hecate-"):
        if name.startswith(prefix) and name.endswith("d") and len(name) > len(prefix) + 1:
            return name[len(prefix) : -1]
    return name


@dataclass(frozen=True)
class Manifest:
    """What ``GET /manifest`` says; hecate-web mounts ``tag`` from ``/ui/component.js``."""

    name: str
    version: str
    display_name: str
    icon: str
    description: str
    tag: str

    @classmethod
    def for_namespace(cls, namespace: str) -> Manifest:
        short = short_name(namespace)
        return cls(
            name=short,
            version=VERSION,
            display_name=short.replace("-", " ").title(),
            icon=ICON,
            description=DESCRIPTION,
            tag=f"{short}-studio",  # a custom element's name needs a hyphen
        )

    def component_js(self) -> str:
        """A tiny custom element, defined once even if the module is loaded twice."""
        title = json.dumps(f"{self.icon} {self.display_name}")
        return (
            f"// {self.tag}: the UI of the Hecate plugin {self.name!r} (hecate-exampled)\n"
            f"class ExampleStudio extends HTMLElement {{\n"
            f"  connectedCallback() {{\n"
            f"    const h = document.createElement('h2');\n"
            f"    h.textContent = {title};\n"
            f"    const p = document.createElement('p');\n"
            f"    p.textContent = {json.dumps(self.description)};\n"
            f"    this.replaceChildren(h, p);\n"
            f"  }}\n"
            f"}}\n"
            f"if (!customElements.get({json.dumps(self.tag)})) {{\n"
            f"  customElements.define({json.dumps(self.tag)}, ExampleStudio);\n"
            f"}}\n"
        )


class Handler(BaseHTTPRequestHandler):
    server: UnixHTTPServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._json(200, self.server.health())
        elif path == "/manifest":
            self._json(200, asdict(self.server.manifest))
        elif path == "/ui/component.js":
            self._send(200, "text/javascript; charset=utf-8", self.server.component_js)
        elif path == "/":
            body = {
                "name": self.server.plugin_name,
                "pid": os.getpid(),
                "hits": self.server.store.hit(),
            }
            self._json(200, body)
        else:
            self._json(404, {"ok": False, "error": "not_found"})

    def do_HEAD(self) -> None:
        self.do_GET()

    def _refuse(self) -> None:
        # Read the body the client is sending first: answering and closing on an unread
        # body resets the connection under a client still sending it, which then gets
        # a broken pipe instead of this 405 (what hecated's lingering close avoids too).
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if 0 < length <= DRAIN_MAX:
            self.rfile.read(length)
        else:
            self.close_connection = True
        self._json(405, {"ok": False, "error": "method_not_allowed"}, allow="GET, HEAD")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def _json(self, status: int, body: dict, allow: str | None = None) -> None:
        data = (json.dumps(body) + "\n").encode()
        self._send(status, "application/json", data, allow)

    def _send(self, status: int, ctype: str, data: bytes, allow: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Access-Control-Allow-Origin", "*")  # as the real plugins answer
        if allow:
            self.send_header("Allow", allow)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def address_string(self) -> str:
        return "unix"

    def log_message(self, fmt: str, *args: object) -> None:
        log.debug(fmt, *args)


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, store: Store, plugin_name: str) -> None:
        self.store = store
        self.plugin_name = plugin_name
        self.manifest = Manifest.for_namespace(plugin_name)
        self.component_js = self.manifest.component_js().encode()
        self.node = f"{plugin_name}@{socket.gethostname()}"
        _remove_stale_socket(path)
        old = os.umask(0o177)  # the socket is 0600 from its first moment
        try:
            super().__init__(os.fspath(path), Handler)
        finally:
            os.umask(old)

    def health(self) -> dict[str, object]:
        """Liveness in the shape hecate-traderd answers (``ok``, ``app``, ``version``, ``node``)."""
        return {"ok": True, "app": self.plugin_name, "version": VERSION, "node": self.node}


def _remove_stale_socket(path: Path) -> None:
    """A socket file nobody answers on is a leftover of a crash; one that answers is not."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(os.fspath(path))
    except OSError:
        path.unlink()
    else:
        raise SystemExit(f"{NAME}: another instance already answers on {path}")
    finally:
        probe.close()


def run(name: str, socket_path: str | None, wait: float) -> int:
    client = HecateClient(socket_path, connect_retry=wait)  # hecated may be starting too
    try:
        paths: PluginPaths = client.register(name, VERSION, DESCRIPTION)
    except ClientError as exc:
        log.error("cannot register with hecated: %s", exc)
        return 1
    log.info("registered %s; namespace %s", name, paths.base_dir)

    store = Store(paths.sqlite_dir / "example.db")
    server = UnixHTTPServer(paths.api_socket, store, name)
    write_atomically(paths.pid_file, f"{os.getpid()}\n")
    write_atomically(paths.state_file, "running\n")

    def stop(signum: int, _frame: object) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        # shutdown() waits for serve_forever() to return: call it off the main thread.
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("serving on %s", paths.api_socket)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            paths.api_socket.unlink()
        with contextlib.suppress(FileNotFoundError):
            paths.pid_file.unlink()
        write_atomically(paths.state_file, "stopped\n")
        store.close()
        log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=NAME, description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=NAME, help=f"the name to register (default {NAME})")
    parser.add_argument("--socket", help="hecated's socket (default: the SDK's default)")
    parser.add_argument(
        "--wait", type=float, default=10.0, help="seconds to wait for hecated (default 10)"
    )
    args = parser.parse_args(argv)
    os.umask(0o077)  # its data is private to its user, like the namespace around it
    logging.basicConfig(level=logging.INFO, format=f"{NAME}: %(message)s", stream=sys.stderr)
    return run(args.name, args.socket, args.wait)


if __name__ == "__main__":
    sys.exit(main())

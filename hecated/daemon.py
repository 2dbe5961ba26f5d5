"""The composition root: wires layout, registry, API and server into a running daemon.

Nothing here is clever. It orders start-up so that the index is loaded before
the first request is accepted, and shut-down so that requests in flight
finish before the run files say ``stopped``.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from pathlib import Path

from .api import HecateApp
from .config import Config
from .errors import HecateError
from .registry import Registry
from .runfiles import LockedError, RunFiles
from .server import AlreadyRunningError, SocketPathError, UnixServer, bind_unix

log = logging.getLogger("hecated")


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def take_socket(config: Config) -> tuple[socket.socket, Path | None]:
    """The listening socket, and the path we bound (None when it is not ours to unlink)."""
    path = config.layout.api_socket
    return bind_unix(path), path


def run(config: Config) -> int:
    setup_logging(config.log_level)
    layout = config.layout
    runfiles = RunFiles(layout)
    try:
        layout.ensure_layout()
        runfiles.acquire()
    except (LockedError, HecateError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    try:
        return _serve(config, runfiles)
    finally:
        runfiles.release()


def _serve(config: Config, runfiles: RunFiles) -> int:
    registry = Registry(config.layout)
    count = registry.scan(clean_temps=True)
    try:
        sock, owned = take_socket(config)
    except (AlreadyRunningError, SocketPathError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    server = UnixServer(sock, HecateApp(registry), owned_path=owned, workers=config.workers)

    def on_stop(signum: int, _frame: object) -> None:
        log.info("%s: shutting down", signal.Signals(signum).name)
        server.shutdown()

    def on_reload(_signum: int, _frame: object) -> None:
        threading.Thread(target=_rescan, args=(registry,), name="hecated-rescan").start()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)

    def tick() -> None:
        if config.idle_timeout and server.idle_for() >= config.idle_timeout:
            log.info("idle for %.0f s: exiting until the next connection", config.idle_timeout)
            server.shutdown()

    runfiles.set_state("running")
    log.info("serving %d plugin(s) on %s", count, config.layout.api_socket)
    try:
        server.serve(tick)
    finally:
        runfiles.set_state("stopping")
        server.close()
    log.info("stopped")
    return 0


def _rescan(registry: Registry) -> None:
    count = registry.scan()
    log.info("rescanned the tree: %d plugin(s)", count)

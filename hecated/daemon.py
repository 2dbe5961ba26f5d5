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
    # Long polls may take at most half the workers: the rest keep answering.
    registry.max_waiters = max(1, config.workers // 2)
    app = HecateApp(registry)
    server = UnixServer(sock, app, owned_path=owned, workers=config.workers)
    watching = _Watching(registry, app)

    def on_stop(signum: int, _frame: object) -> None:
        log.info("%s: shutting down", signal.Signals(signum).name)
        server.shutdown()

    def on_reload(_signum: int, _frame: object) -> None:
        threading.Thread(target=watching.rescan_logged, name="hecated-rescan").start()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)

    def tick() -> None:
        if config.idle_timeout and server.idle_for() >= config.idle_timeout:
            log.info("idle for %.0f s: exiting until the next connection", config.idle_timeout)
            server.shutdown()

    runfiles.set_state("running")
    log.info("serving %d plugin(s) on %s", count, config.layout.api_socket)
    # The watcher starts beside the serving loop, not before it: the first
    # request never waits for thousands of inotify watches to be set up.
    threading.Thread(target=watching.start, name="hecated-watch-start", daemon=True).start()
    try:
        server.serve(tick)
    finally:
        runfiles.set_state("stopping")
        registry.close()  # long polls answer now, so the workers can finish
        watching.stop()
        server.close()
    log.info("stopped")
    return 0


class _Watching:
    """The watcher's lifetime: started once the daemon serves, stopped before it exits."""

    def __init__(self, registry: Registry, app: HecateApp) -> None:
        self.registry = registry
        self.app = app
        self.watcher = None
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> None:
        from .watch import Watcher  # watchdog loads off the cold-start path

        with self._lock:
            if self._stopped:
                return
            try:
                self.watcher = Watcher(self.registry).start()
            except Exception:
                log.exception("cannot watch %s; hand edits need SIGHUP", self.registry.layout.root)
                return
            self.app.rescan = self.watcher.rescan
        log.info(
            "watching %s (%d inotify watches)", self.registry.layout.root, self.watcher.watch_count
        )

    def rescan_logged(self) -> None:
        watcher = self.watcher
        count = watcher.rescan() if watcher is not None else self.registry.scan()
        log.info("rescanned the tree: %d plugin(s)", count)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self.watcher is not None:
                self.watcher.stop()

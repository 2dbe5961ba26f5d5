"""The composition root: wires layout, registry, API and server into a running daemon.

Nothing here is clever. It orders start-up so that the index is loaded before
the first request is accepted, and shut-down so that requests in flight
finish before the run files say ``stopped``.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from hecated.adapters.systemd import (
    ActivationError,
    ListenFd,
    Notifier,
    Supervisor,
    api_socket,
    journal_handler,
    listen_fds,
    stderr_is_journal,
    watchdog_timeout,
)
from hecated.core.config import Config
from hecated.core.errors import HecateError
from hecated.core.registry import RUNNING, Registry
from hecated.core.runfiles import LockedError, RunFiles
from hecated.http.app import HecateApp
from hecated.http.server import AlreadyRunningError, SocketPathError, UnixServer, bind_unix

log = logging.getLogger("hecated")

# Test-only hook, off unless this variable is "1": SIGUSR2 then freezes the
# serving loop for good, so the end-to-end tests can prove that systemd's
# watchdog kills a daemon whose loop is stuck. Nothing else reads it.
TEST_HOOKS_ENV = "HECATED_TEST_HOOKS"
# Deferred start-up work waits for the first answer, but not longer than this.
SETTLE_AFTER = 1.0


def setup_logging(level: str) -> None:
    """Plain lines on stderr from the start; ``use_journal`` adds the fields later."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def use_journal() -> bool:
    """Structured records to journald, when stderr is the journal (``JOURNAL_STREAM``).

    Called once the first request is answered: until then records go to stderr,
    which systemd already feeds to the journal (only the fields are missing), and
    the first answer does not wait for ``systemd.journal`` to import.
    """
    handler = journal_handler() if stderr_is_journal() else None
    if handler is None:
        return False
    logging.getLogger().handlers[:] = [handler]
    log.info("logging to the journal")
    return True


def after_first_answer() -> None:
    """Start-up work no first request needs: it runs once the first answer has gone out."""
    use_journal()


def take_socket(config: Config, passed: list[ListenFd]) -> tuple[socket.socket, Path | None]:
    """The listening socket, and the path we bound (None when it is not ours to unlink).

    A socket systemd passed us belongs to the socket unit: we serve on it and
    never unlink it, so the next activation finds it where systemd left it.
    """
    path = config.layout.api_socket
    if passed:
        return api_socket(passed, path), None
    return bind_unix(path), path


def raise_fd_limit(want: int = 8192) -> None:
    """Lift the soft fd limit toward the hard one: the server keeps up to
    MAX_CONNECTIONS connections open, each an fd, and 1024 is the usual soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def run(config: Config) -> int:
    passed = listen_fds()  # once, first: it clears LISTEN_* for anything after it
    setup_logging(config.log_level)
    raise_fd_limit()
    layout = config.layout
    runfiles = RunFiles(layout)
    try:
        layout.ensure_layout()
        runfiles.acquire()
    except (LockedError, HecateError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    try:
        return _serve(config, runfiles, passed)
    finally:
        runfiles.release()


def _serve(config: Config, runfiles: RunFiles, passed: list[ListenFd]) -> int:
    notifier = Notifier()
    notifier.status("loading the index")
    registry = Registry(config.layout)
    cached = registry.load_cache()
    began = time.monotonic()
    count = registry.scan()
    log.debug(
        "scanned %d plugin(s) in %.0f ms (%d of %d cached manifests still valid)",
        count,
        (time.monotonic() - began) * 1000,
        registry.cache.hits,
        cached,
    )
    try:
        sock, owned = take_socket(config, passed)
    except (AlreadyRunningError, SocketPathError, ActivationError, OSError) as exc:
        log.error("cannot start: %s", exc)
        notifier.status(f"cannot start: {exc}")
        return 1
    # Long polls may take at most half the workers: the rest keep answering.
    registry.max_waiters = max(1, config.workers // 2)
    app = HecateApp(registry)
    server = UnixServer(sock, app, owned_path=owned, workers=config.workers)
    watching = _Watching(registry, app)
    supervisor = Supervisor(
        notifier, lambda: server.heartbeat, lambda: status_line(registry), watchdog_timeout()
    )
    registry.subscribe(supervisor.changed)

    def on_stop(signum: int, _frame: object) -> None:
        log.info("%s: shutting down", signal.Signals(signum).name)
        server.shutdown()

    reloading = threading.Lock()  # SIGHUPs that arrive during a rescan join it

    def on_reload(_signum: int, _frame: object) -> None:
        threading.Thread(
            target=_rescan,
            args=(reloading, watching, registry, notifier),
            name="hecated-rescan",
            daemon=True,
        ).start()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)
    frozen = _test_freeze_hook()
    started = settled = False
    begun = time.monotonic()

    def tick() -> None:
        nonlocal started, settled
        if not started:  # the loop has turned once: the socket is being served
            started = True
            notifier.ready(status_line(registry))
            if notifier.enabled:
                supervisor.start()
        # Settle once no connection is open (the first answer is out), or after
        # SETTLE_AFTER when a keep-alive client holds its connection open.
        if not settled and (server.idle_for() > 0 or time.monotonic() - begun > SETTLE_AFTER):
            settled = True
            after_first_answer()
            # The rest too: the first answer never waits for a listdir per namespace
            # or for thousands of inotify watches (the watcher's own rescan covers
            # edits made until then).
            threading.Thread(
                target=_settle, args=(registry, watching), name="hecated-settle", daemon=True
            ).start()
        if config.idle_timeout and server.idle_for() >= config.idle_timeout:
            log.info("idle for %.0f s: exiting until the next connection", config.idle_timeout)
            server.shutdown()
        if frozen.is_set():
            log.warning("test hook: freezing the serving loop")
            threading.Event().wait()

    runfiles.set_state("running")
    app.set_status("healthy")  # /health: status healthy, ready true
    log.info("serving %d plugin(s) on %s", count, config.layout.api_socket)
    try:
        server.serve(tick)
    finally:
        app.set_status("stopping")
        notifier.stopping()
        supervisor.stop()
        runfiles.set_state("stopping")
        registry.close()  # long polls answer now, so the workers can finish
        watching.stop()
        server.close()
        registry.save_cache()
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
        from hecated.adapters.watch import Watcher  # watchdog loads off the cold-start path

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

    def rescan(self) -> int:
        """The watches rebuilt and the tree rescanned; only the latter before the watcher runs."""
        watcher = self.watcher
        return watcher.rescan() if watcher is not None else self.registry.scan()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self.watcher is not None:
                self.watcher.stop()


def _settle(registry: Registry, watching: _Watching) -> None:
    """Start-up work that waits for the first answer, in the order it matters.

    Crashed writers' temp files go first (a registration racing this is safe:
    our own temp files carry files.OWNER and are never touched), then the
    manifest cache is saved for the next start, then the watcher starts.
    """
    removed = registry.clean_temps()
    if removed:
        log.info("removed %d temp file(s) left by a crashed writer", removed)
    registry.save_cache()
    watching.start()


def status_line(registry: Registry) -> str:
    """The human line systemctl status shows: "3 plugins registered, 2 running"."""
    plugins = registry.list()
    running = sum(1 for p in plugins if p.status == RUNNING)
    noun = "plugin" if len(plugins) == 1 else "plugins"
    return f"{len(plugins)} {noun} registered, {running} running"


def _test_freeze_hook() -> threading.Event:
    """See TEST_HOOKS_ENV: an event SIGUSR2 sets, and nothing sets otherwise."""
    frozen = threading.Event()
    if os.environ.get(TEST_HOOKS_ENV) == "1":
        signal.signal(signal.SIGUSR2, lambda _s, _f: frozen.set())
    return frozen


def _rescan(
    reloading: threading.Lock, watching: _Watching, registry: Registry, notifier: Notifier
) -> None:
    """SIGHUP: RELOADING=1, the tree rescanned, READY=1 whatever happened in between."""
    if not reloading.acquire(blocking=False):
        return  # a rescan is running; it covers this signal too
    try:
        if watching.stopped:
            return  # shutting down: no READY=1 after STOPPING=1
        notifier.reloading()
        try:
            count = watching.rescan()
            log.info("rescanned the tree: %d plugin(s)", count, extra={"hecate_action": "rescan"})
        except Exception:
            log.exception("rescanning the tree failed")
        finally:
            notifier.ready(status_line(registry))
    finally:
        reloading.release()

"""The composition root: wires layout, registry, API and server into a running daemon.

Nothing here is clever. One object, ``Lifecycle`` (shaped like uvicorn's
``Server``), owns the daemon's life: ``startup`` loads the index before the
first request is accepted, ``tick`` runs on every turn of the serving loop,
the signal handlers only ask for things, ``rescan`` is the one way the tree is
read again (SIGHUP and ``POST /api/rescan`` alike), and ``shutdown`` lets
requests in flight finish before the run files say ``stopped``.
"""

from __future__ import annotations

import gc
import logging
import resource
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hecated.adapters.liveness import Prober
from hecated.adapters.systemd import (
    ActivationError,
    ListenFd,
    Notifier,
    Supervisor,
    alias_fields,
    api_sockets,
    journal_handler,
    listen_fds,
    own_unit,
    stderr_is_journal,
)
from hecated.core.config import Config
from hecated.core.errors import HecateError
from hecated.core.events import Events
from hecated.core.index import Index
from hecated.core.layout import RUN_DIR
from hecated.core.runfiles import LockedError, RunFiles
from hecated.http.fast import FastPath, WSGIApp
from hecated.http.forwarding.settings import ForwardSettings
from hecated.http.server import AlreadyRunningError, SocketPathError, UnixServer, bind_unix
from hecated.http.views import Views
from hecated.protocol import TUI_SOCKET, PluginStatus
from hecated.wiring import (
    LiveUnits,
    OnDemandUnits,
    Reconciling,
    Rescans,
    Watching,
    detours,
    plugin_units,
    unit_verifier,
)

if TYPE_CHECKING:
    from hecated.http.forwarding.ondemand import OnDemand

log = logging.getLogger("hecated")


def setup_logging(level: str) -> None:
    """Plain lines on stderr from the start; ``use_journal`` adds the fields later."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def use_journal(journal_stream: str, user_manager: bool = False) -> bool:
    """Structured records to journald, when stderr is the journal (``JOURNAL_STREAM``).

    Called once the first request is answered: until then records go to stderr,
    which systemd already feeds to the journal (only the fields are missing), and
    the first answer does not wait for ``systemd.journal`` to import.
    """
    if not stderr_is_journal(journal_stream):
        return False
    handler = journal_handler(alias_fields(user_manager, own_unit()))
    if handler is None:
        return False
    logging.getLogger().handlers[:] = [handler]
    log.info("logging to the journal")
    return True


Listening = list[tuple[socket.socket, Path | None]]


def take_sockets(config: Config, passed: list[ListenFd]) -> Listening:
    """The listening sockets, the API's first, each with the path we bound (None when
    it is not ours to unlink).

    A socket systemd passed us belongs to the socket unit: we serve on it and never
    unlink it, so the next activation finds it where systemd left it (hecate.socket
    passes two: the API's and ``~/.hecate/daemon.sock``). Standalone, we bind the
    API's, then hecate-tui's ``~/.hecate/daemon.sock`` if we can: a file there that
    is not a socket, or a socket another daemon answers on, is left alone.
    """
    path = config.layout.api_socket
    if passed:
        return [(sock, None) for sock in api_sockets(passed, path)]
    listening: Listening = [(bind_unix(path), path)]
    tui = config.layout.root / TUI_SOCKET
    try:
        listening.append((bind_unix(tui), tui))
    except (AlreadyRunningError, SocketPathError, OSError) as exc:
        log.warning("not serving hecate-tui's socket %s: %s", tui, exc)
        return listening
    return listening


def raise_fd_limit(want: int = 8192) -> None:
    """Lift the soft fd limit toward the hard one: the server keeps up to
    MAX_CONNECTIONS connections open, each an fd, and 1024 is the usual soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def run(config: Config, registry: Index | None = None) -> int:
    """The daemon, from its run files locked to its clean stop (the exit status).

    ``registry``: the index whose start scan the command line began before this
    module's imports (``Index.head_start``); None begins it here, after the lock.
    """
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
    if registry is None:
        registry = Index(layout)
        registry.head_start()
    try:
        return Lifecycle(config, runfiles, passed, registry).run()
    finally:
        runfiles.release()


class Lifecycle:
    """The daemon's life, owned in one place: startup, the loop's tick, signals, shutdown.

    The serving loop (``UnixServer.serve``) runs on the main thread and calls
    ``tick`` on every turn; everything slow happens on other threads. The
    signal handlers only ask (stop, rescan) and never block.
    """

    def __init__(
        self, config: Config, runfiles: RunFiles, passed: list[ListenFd], registry: Index
    ) -> None:
        self.config = config
        self.runfiles = runfiles
        self.passed = passed
        self.notifier = Notifier(config.notify)
        self.registry = registry  # its start scan begun (Index.head_start)
        # The recent changes, for GET /api/events: recorded from the first (the start scan).
        self.events = Events(self.registry, config.events_backlog)
        # Liveness: socket probes and pidfds, fed by the index's change feed and publishing
        # into it; started after the first answer, closed in shutdown (the daemon owns it).
        self.prober = Prober(self.registry, **config.section("probe"))
        self.rescans = Rescans(self._rescan_pass)
        self.watching = Watching(self.registry, self.prober.socket_changed)
        self.units = LiveUnits(self.registry)  # the plugins' units, live (issue 20)
        # The gitops tree linked into the user manager (issue 21): after the first answer.
        self.gitops = Reconciling(
            self.registry, config.section("units")["job_timeout"], **config.section("gitops")
        )
        # On-demand start and idle stop of plugins' units (the forwarding wing's), over the
        # user manager; built with the full app (no forwarded request comes before it).
        self.starter = OnDemandUnits(config.section("units")["job_timeout"], self._adapters_now)
        self.on_demand: OnDemand | None = None
        self._defer_lock = threading.Lock()
        self.server: UnixServer | None = None
        self.app: FastPath | None = None
        self.supervisor: Supervisor | None = None
        self.plugins_at_start = 0
        self._began = 0.0
        self._ready = False  # READY=1 sent: the loop has turned once
        self._deferred = False  # the after-first-answer work has been started
        self._stopping = False  # STOPPING=1 sent: no READY=1 may follow
        self._notify_lock = threading.Lock()

    # -- the whole life -----------------------------------------------------------------

    def run(self) -> int:
        """Serve until a signal or the idle timeout; 0 after a clean stop, 1 if never started."""
        if not self.startup():
            return 1
        assert self.server is not None
        self.runfiles.set_state("running")
        assert self.app is not None
        self.app.set_status("healthy")  # /health: status healthy, ready true
        log.info("serving %d plugin(s) on %s", self.plugins_at_start, self.config.layout.api_socket)
        try:
            self.server.serve(self.tick)
        finally:
            self.shutdown()
        log.info("stopped")
        return 0

    def startup(self) -> bool:
        """The index loaded, the socket taken, the parts built, the signals handled."""
        config, registry = self.config, self.registry
        self.notifier.status("loading the index")
        # The start scan reads every run dir (the statuses of the first list); the socket
        # probes it asks for wait for the first answer (_after_first_answer).
        self.prober.hold()
        began = time.monotonic()
        self.plugins_at_start = registry.scan(at_start=True)
        log.debug(
            "scanned %d plugin(s) in %.0f ms (%d of %d cached manifests still valid, "
            "%d files parsed by a child process)",
            self.plugins_at_start,
            (time.monotonic() - began) * 1000,
            registry.cache.hits,
            registry.cached_at_start,
            registry.store.parsed_in_child,
        )
        try:
            (sock, owned), *also = take_sockets(config, self.passed)
        except (AlreadyRunningError, SocketPathError, ActivationError, OSError) as exc:
            log.error("cannot start: %s", exc)
            self.notifier.status(f"cannot start: {exc}")
            return False
        registry.max_waiters = config.max_waiters
        forward = ForwardSettings.from_config(config)
        views = Views(registry)

        # The hot GETs from cached bytes; the full app on the first request that needs
        # it or after the first answer (_deferred_work), whichever comes first.
        self.app = app = FastPath(views, lambda: self._full_app(views, forward))
        self.server = server = UnixServer(
            sock,
            app,
            owned_path=owned,
            workers=config.workers,
            start_workers=1,  # the rest after the first answer (_deferred_work)
            detour=detours(forward),
            also=also,
        )
        self.supervisor = Supervisor(
            self.notifier, lambda: server.heartbeat, self.status_line, config.watchdog
        )
        registry.subscribe(self.supervisor.changed)
        self.rescans.start()
        signal.signal(signal.SIGTERM, self.handle_exit)
        signal.signal(signal.SIGINT, self.handle_exit)
        signal.signal(signal.SIGHUP, self.handle_reload)
        self._began = time.monotonic()
        return True

    def _full_app(self, views: Views, forward: ForwardSettings) -> WSGIApp:
        """The full app, built on the first request that needs it or after the first answer."""
        # Werkzeug and the relay (http.client, email): off the cold-start path.
        from hecated.http.app import HecateApp
        from hecated.http.events import EventStreams
        from hecated.http.forwarding.relay import Forwarder

        config, registry = self.config, self.registry
        forwarder = Forwarder(registry, forward, on_demand=self._build_on_demand())
        events = EventStreams(self.events, views, config.events_heartbeat, config.events_clients)
        return HecateApp(
            registry,
            rescan=self.rescan,
            views=views,
            forward=forwarder,
            units=plugin_units(config),
            verifier=unit_verifier(self.registry.layout.data_dir / RUN_DIR),
            events=events,
        )

    def tick(self) -> None:
        """One turn of the serving loop: readiness, deferred start-up work, idle exit."""
        server = self.server
        assert server is not None and self.supervisor is not None
        if not self._ready:  # the loop has turned once: the socket is being served
            self._ready = True
            self.notifier.ready(self.status_line())
            if self.notifier.enabled:
                self.supervisor.start()  # pings only while this loop's heartbeat is fresh
        # Once no connection is open (the first answer is out), or after defer_at_most
        # when a keep-alive client holds its connection open.
        if not self._deferred and (
            server.idle_for() > 0 or time.monotonic() - self._began > self.config.defer_at_most
        ):
            self._adapters_now()
        idle = self.config.idle_timeout
        # Not while a plugin's idle stop is due: exiting would lose it.
        if idle and server.idle_for() >= idle and not self._idle_stop_due() and not self._busy():
            log.info("idle for %.0f s: exiting until the next connection", idle)
            server.shutdown()

    def shutdown(self) -> None:
        """In order: tell the manager, stop answering long polls, stop the adapters,
        finish the requests in flight, keep the cache for the next start."""
        if self.app is not None:
            self.app.set_status("stopping")
        with self._notify_lock:
            self._stopping = True
            self.notifier.stopping()
        if self.supervisor is not None:
            self.supervisor.stop()
        self.runfiles.set_state("stopping")
        if self.on_demand is not None:
            self.on_demand.close()  # requests held for a plugin's start answer now
        self.registry.close()  # long polls answer now, so the workers can finish
        self.rescans.close()  # a pass under way finishes; waiters not covered get 503
        self.watching.stop()  # adapters stop here: the watcher, the units, then the prober
        self.gitops.stop()  # a pass under way ends first (its waits are bounded)
        self.units.stop()
        self.prober.close()
        if self.server is not None:
            self.server.close()
        self.registry.save_cache()

    # -- signals: they ask, they never block ----------------------------------------------

    def handle_exit(self, signum: int, _frame: object) -> None:
        log.info("%s: shutting down", signal.Signals(signum).name)
        if self.server is not None:
            self.server.shutdown()

    def handle_reload(self, _signum: int, _frame: object) -> None:
        """SIGHUP (``systemctl reload``): a rescan, run on the rescan thread."""
        self.rescans.request()

    # -- the one rescan -------------------------------------------------------------------

    def rescan(self) -> int:
        """Rescan the tree with a pass that starts after this call; the plugin count.

        ``POST /api/rescan`` calls this; SIGHUP asks for the same pass without
        waiting. Calls that arrive during a pass share the next one.
        """
        return self.rescans()

    def _rescan_pass(self) -> int:
        """One pass, on the rescan thread: RELOADING=1, the tree read, READY=1."""
        with self._notify_lock:
            announce = self._ready and not self._stopping
            if announce:
                self.notifier.reloading()
        self.gitops.request()  # the gitops tree looked at again too
        try:
            count = self.watching.rescan()
        except Exception:
            log.exception("rescanning the tree failed")
            raise
        finally:
            with self._notify_lock:
                if announce and not self._stopping:  # never READY=1 after STOPPING=1
                    self.notifier.ready(self.status_line())
        log.info(
            "rescanned the tree (pass %d): %d plugin(s)",
            self.rescans.passes,
            count,
            extra={"hecate_action": "rescan"},
        )
        return count

    # -- after the first answer -------------------------------------------------------------

    def _build_on_demand(self) -> OnDemand:
        """The wing's on-demand starts and idle stops, over the user manager."""
        from hecated.http.forwarding.idlestop import IdleStops
        from hecated.http.forwarding.ondemand import OnDemand

        starter = self.starter
        self.on_demand = OnDemand(
            self.registry, starter.start, IdleStops(starter.stop, starter.job_timeout)
        )
        return self.on_demand

    def _busy(self) -> bool:
        """The gitops reconciler has changes to reconcile: exiting now would drop them
        until the next start (which would catch up, but later than the user asked)."""
        return self.gitops.pending()

    def _idle_stop_due(self) -> bool:
        """A plugin's idle stop is due or runs: exiting idle now would lose it."""
        on_demand = self.on_demand
        return on_demand is not None and on_demand.idle.pending()

    def _adapters_now(self) -> None:
        """The after-first-answer work, now, once: from the loop's tick, or from an
        on-demand start before the first answer is out (the watcher and the prober are
        what see the started plugin's socket answer; the request waits for them)."""
        with self._defer_lock:
            if self._deferred:
                return
            self._deferred = True
        self._after_first_answer()

    def _after_first_answer(self) -> None:
        """Start-up work no first request needs, started once the first answer is out.

        The journal first (records until then went to stderr, which systemd feeds
        to the journal anyway), then the socket probes the start scan queued (run on
        the prober's threads); the rest on a thread, so the first answer never
        waits for a listdir per namespace or for thousands of inotify watches (the
        watcher's own rescan covers edits made until then).
        """
        gc.enable()  # off since the process began (cli.hecated_main): start-up is over
        use_journal(self.config.journal_stream, self.config.user_manager)
        self.prober.release()  # the socket probes the start scan queued
        threading.Thread(target=self._deferred_work, name="hecated-deferred", daemon=True).start()

    def _deferred_work(self) -> None:
        """In the order it matters: the worker pool whole, crashed writers' temp files
        (a registration racing this is safe: our own temp files carry files.OWNER and
        are never touched), the manifest cache for the next start, then the adapters
        (the watcher), then the full app (unless a request has already needed it)."""
        if self.server is not None:
            self.server.grow_workers()  # the pool whole (the second request would do it too)
        removed = self.registry.clean_temps()
        if removed:
            log.info("removed %d temp file(s) left by a crashed writer", removed)
        self.registry.save_cache()
        # The gitops tree first: it makes its directories before the watcher says it watches.
        self.gitops.start()  # its first pass catches up, on its own thread
        self.watching.start()  # adapters start here, beside the watcher
        self.units.start()  # the units' states from the user manager's signals
        self.prober.start()  # the periodic socket probes
        if self.app is not None:
            try:
                self.app.load()  # Werkzeug and the full app, before a request waits for them
            except Exception:
                log.exception(
                    "building the full app failed; the next request that needs it retries"
                )

    def status_line(self) -> str:
        return status_line(self.registry)


def status_line(registry: Index) -> str:
    """The human line systemctl status shows: "3 plugins registered, 2 running"."""
    listed = registry.list()
    plugins = [p for p in listed if p.registered]
    running = sum(1 for p in plugins if p.status == PluginStatus.RUNNING)
    noun = "plugin" if len(plugins) == 1 else "plugins"
    found = len(listed) - len(plugins)  # discovered: their sockets answer, no plugin.toml
    return f"{len(plugins)} {noun} registered, {running} running" + (
        f", {found} discovered" if found else ""
    )

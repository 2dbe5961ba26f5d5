"""The daemon's parts with a life of their own: what ``daemon.Lifecycle`` wires and stops.

Kept apart from ``daemon.py`` so the composition root reads as the order of a life
(startup, tick, signals, shutdown) while each part's own start, stop and threads
live here: the coalesced rescans, the file watcher's lifetime, the plugins' units
followed live (issue 20), the forwarding wing's starter and stopper over the user
manager, the app's unit control and the detours. Adapters load here on first use,
off the cold-start path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hecated.core.config import Config
from hecated.core.errors import BusyError
from hecated.core.index import Index
from hecated.http.events import EventDetour
from hecated.http.forwarding.edge import Edge
from hecated.http.forwarding.settings import ForwardSettings
from hecated.http.hooks import Detours
from hecated.http.units import LogDetour

if TYPE_CHECKING:
    from hecated.adapters.unitapi import SystemdUnits
    from hecated.core.status import UnitFinding
    from hecated.http.install import UnitVerifier
    from hecated.http.units import UnitControl

log = logging.getLogger("hecated")


def plugin_units(config: Config) -> UnitControl:
    """Start, stop, restart and logs of the plugins' units, for the app (issue 20): over
    the user's systemd manager and journald; jeepney and systemd-python load on first use."""
    from hecated.adapters.unitapi import SystemdUnits

    return SystemdUnits(**config.section("units"))


def unit_verifier(scratch: Path) -> UnitVerifier:
    """The second check of a unit file to install (issue 21): ``systemd-analyze verify``
    where it is installed (without it, every file gets the first check only). Its copies
    go in hecated's own ``run/`` (``scratch``), which is always hecated's to write, not the
    system's temp directory, which a drop-in can leave read-only (``PrivateTmp=no`` under
    ``ProtectSystem=strict``; systemd-analyze's own working directory is in /tmp whatever
    ``TMPDIR`` says, so there every install goes unverified, and says why)."""
    from hecated.adapters.unitverify import SystemdAnalyze

    try:
        scratch.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        return SystemdAnalyze()  # the system's temp directory, as a last resort
    return SystemdAnalyze(scratch=str(scratch))


def detours(forward: ForwardSettings) -> Detours:
    """What runs on threads of its own, out of the serving loop: forwarded requests
    (the wing's edge), log requests (a followed log streams until its client goes) and
    the event streams (``/api/events``)."""
    return Detours(Edge(forward), LogDetour(), EventDetour())


class Rescans:
    """Rescans of the tree, one at a time, none dropped: the pending-flag pattern.

    Whoever wants the tree read again (SIGHUP, ``POST /api/rescan``) calls
    ``request``: it never blocks, so a signal handler may call it. Requests that
    arrive while a pass runs leave work pending, and the one thread that runs
    passes runs exactly one more when it finishes, however many arrived. The
    pending flag is a count (``requested > covered``) rather than a bool, so a
    caller who waits learns the result of a pass that started after its request,
    never one that was already half-way through the tree when it asked.
    """

    def __init__(self, run_pass: Callable[[], int]) -> None:
        self._run_pass = run_pass
        # Reentrant: a signal handler runs on the main thread, perhaps inside close().
        self._cond = threading.Condition(threading.RLock())
        self._requested = 0  # requests so far
        self._covered = 0  # requests the last finished pass started after
        self._outcome: tuple[int, BaseException | None] = (0, None)
        self._closed = False
        self.passes = 0
        self._thread = threading.Thread(target=self._run, name="hecated-rescan", daemon=True)

    @property
    def pending(self) -> bool:
        """Some request is not yet covered by a finished pass."""
        with self._cond:
            return self._requested > self._covered

    def start(self) -> None:
        """Start running passes (requests made before this wait for it)."""
        self._thread.start()

    def request(self) -> int:
        """Ask for a pass that starts after now; returns the ticket ``wait`` takes."""
        with self._cond:
            self._requested += 1
            self._cond.notify_all()
            return self._requested

    def wait(self, ticket: int, timeout: float | None = None) -> int:
        """The plugin count of a pass that started after ``ticket`` was issued.

        Raises what that pass raised, or ``BusyError`` when the daemon stops first.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._covered >= ticket or self._closed, timeout)
            if self._covered < ticket:
                raise BusyError("the daemon is shutting down: the tree was not rescanned")
            count, error = self._outcome
        if error is not None:
            raise error
        return count

    def __call__(self) -> int:
        """Request a pass and wait for it: what ``POST /api/rescan`` runs."""
        return self.wait(self.request())

    def close(self, timeout: float = 10.0) -> None:
        """No pass starts after this one; waiters not covered are told so."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._requested > self._covered or self._closed)
                if self._closed:
                    return
                covering = self._requested
                self.passes += 1
            try:
                outcome: tuple[int, BaseException | None] = (self._run_pass(), None)
            except Exception as exc:  # the waiters get it; the next request tries again
                outcome = (0, exc)
            with self._cond:
                self._covered = covering
                self._outcome = outcome
                self._cond.notify_all()


class OnDemandUnits:
    """The wing's starter and stopper: the control routes' own unit calls
    (``adapters/unitapi.SystemdUnits.job``), so the adapter's exceptions become core
    errors in one place; the wing decides what each means for a forwarded request."""

    def __init__(self, job_timeout: float, before_start: Callable[[], None]) -> None:
        self.job_timeout = job_timeout
        self.before_start = before_start
        self._units: SystemdUnits | None = None

    def start(self, unit: str, timeout: float) -> UnitFinding | None:
        """Started; the unit's state just after the job (the wing tells from it a unit
        that ends right after its start job was done)."""
        self.before_start()
        return self._control().job("start", unit, min(timeout, self.job_timeout))

    def stop(self, unit: str, timeout: float) -> None:
        self._control().job("stop", unit, min(timeout, self.job_timeout))

    def _control(self) -> SystemdUnits:
        if self._units is None:  # jeepney loads with it, off the cold-start path
            from hecated.adapters.unitapi import SystemdUnits

            self._units = SystemdUnits(self.job_timeout)
        return self._units


class _Once:
    """A part started once the daemon serves and stopped before it exits: a start that
    comes after the stop (a slow deferred thread) starts nothing, and a part that fails
    to start is logged, never fatal. ``halt`` names the part's stopping method."""

    halt = "stop"

    def __init__(self) -> None:
        self.part: Any = None
        self._lock = threading.Lock()
        self._stopped = False

    def _start(self, make: Callable[[], Any], failed: str) -> Any:
        """The part, started; None when stopped already or when it failed to start."""
        with self._lock:
            if self._stopped:
                return None
            try:
                self.part = make()
            except Exception:
                log.exception(failed)
                return None
            return self.part

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            part, self.part = self.part, None
        if part is not None:
            getattr(part, self.halt)()


class Watching(_Once):
    """The watcher's lifetime: started once the daemon serves, stopped before it exits."""

    def __init__(self, registry: Index, on_socket: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.registry = registry
        self.on_socket = on_socket

    def start(self) -> None:
        from hecated.adapters.watch import Watcher  # watchdog loads off the cold-start path

        root = self.registry.layout.root
        watcher = self._start(
            lambda: Watcher(self.registry, on_socket=self.on_socket).start(),
            f"cannot watch {root}; hand edits need SIGHUP",
        )
        if watcher is not None:
            log.info("watching %s (%d inotify watches)", root, watcher.watch_count)

    def rescan(self) -> int:
        """The watches rebuilt and the tree rescanned; only the latter before the watcher runs."""
        watcher = self.part
        return watcher.rescan() if watcher is not None else self.registry.scan()


class LiveUnits(_Once):
    """The plugins' units followed from the user manager's signals: started after the
    first answer (the D-Bus library loads in the watcher's own thread, never on the
    cold-start path), stopped in the shutdown. No manager: the probes alone decide."""

    halt = "close"

    def __init__(self, registry: Index) -> None:
        super().__init__()
        self.registry = registry

    def start(self) -> None:
        from hecated.adapters.unitstatus import UnitStatus  # off the cold-start path

        self._start(
            lambda: UnitStatus(self.registry).start(),
            "cannot follow the plugins' units; statuses come from probes",
        )


class Reconciling(_Once):
    """The gitops reconciler (adapters/gitops, issue 21): the desired-state tree linked into
    the user manager. Started after the first answer like the other adapters (its first
    pass catches up with what changed while hecated was not running), closed in the
    shutdown; while it has changes to reconcile, hecated does not exit idle."""

    halt = "close"

    def __init__(self, registry: Index, job_timeout: float, quiet: float) -> None:
        super().__init__()
        self.registry = registry
        self.job_timeout = job_timeout
        self.quiet = quiet

    def start(self) -> None:
        from hecated.adapters.gitops import Reconciler  # watchdog, jeepney: off the cold start
        from hecated.adapters.unitcontrol import UserManager

        self._start(
            lambda: Reconciler(
                self.registry, UserManager(job_timeout=self.job_timeout), quiet=self.quiet
            ).start(),
            f"cannot reconcile {self.registry.layout.gitops_dir}; installs as files wait",
        )

    def pending(self) -> bool:
        part = self.part
        return part is not None and part.pending

    def request(self) -> None:
        """A pass now, beside a rescan of the tree (SIGHUP, ``POST /api/rescan``)."""
        part = self.part
        if part is not None:
            part.request()

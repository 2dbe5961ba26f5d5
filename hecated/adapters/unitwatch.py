"""The units' states, live, from the user manager's own signals.

A ``UnitWatcher`` thread holds one D-Bus connection, subscribes to the
manager, and keeps the state of each unit it is asked to watch. It calls
``publish(unit, state)`` on every change, from signals only: PropertiesChanged
on each watched unit's object (systemd sends the Service interface's change
first and the Unit interface's last, "so clients can rely on this order to get
atomic behaviour", so a state is published on the second), UnitNew, UnitRemoved
and Reloading from the manager, NameOwnerChanged from the bus. Not JobRemoved:
a job that changes a unit's state changes its properties too, and re-reading a
unit at each job's end made a 50-unit login storm's states ~0.3 s late, queued
behind round trips to a busy manager (docs/units.md); control calls wait for
their own job's end.
Between signals the thread sleeps in one blocking receive: no timer, no poll,
whatever the number of units.

When the bus or the manager goes away, each watched unit is published as
``None`` ("the manager says nothing now": status falls back to the probes) and
the thread reconnects by itself, backing off from ``backoff_min`` to
``backoff_max`` seconds between attempts; on reconnecting it reads every state
again. It never dies of a D-Bus error. ``watch`` changes the set of units
from any thread; ``close`` stops the thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from hecated.adapters.units import SystemdUnavailable, UnitState, check_unit_name
from hecated.adapters.unitsession import Session, Stopped

log = logging.getLogger("hecated.adapters.unitwatch")

Publish = Callable[[str, UnitState | None], None]


def _bus() -> ModuleType:
    """The D-Bus half, imported in the watcher's thread, never on a cold start's path."""
    from hecated.adapters import unitbus

    return unitbus


class UnitWatcher:
    """Watches a changing set of units; see the module's docstring."""

    def __init__(
        self,
        publish: Publish,
        units: Iterable[str] = (),
        *,
        address: str | None = None,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        call_timeout: float | None = None,
    ) -> None:
        self._publish = publish
        # Seconds one call to the manager may wait for its reply (None: unitbus.CALL_TIMEOUT):
        # a manager that answers nothing in that time is a lost one (see unitsession).
        self.call_timeout = call_timeout
        self._wanted = frozenset(check_unit_name(u) for u in units)
        self.address = address
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._last: dict[str, UnitState | None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conn: Any = None
        self._following = False  # a session is established: states come from signals
        self._thread = threading.Thread(target=self._run, name="unit-watcher", daemon=True)

    def start(self) -> UnitWatcher:
        self._thread.start()
        return self

    def watch(self, units: Iterable[str]) -> None:
        """Watch exactly these units from now on (names checked here, in the caller)."""
        wanted = frozenset(check_unit_name(u) for u in units)
        with self._lock:
            self._wanted = wanted
            if self._conn is not None:
                self._conn.interrupt()  # the session picks the new set up between messages

    def wanted(self) -> frozenset[str]:
        with self._lock:
            return self._wanted

    @property
    def connected(self) -> bool:
        """Whether the watcher follows the manager now (for /health: states are live)."""
        with self._lock:
            return self._following

    def states(self) -> dict[str, UnitState | None]:
        """The last state published for each watched unit (None: the manager is away)."""
        with self._lock:
            return {u: self._last.get(u) for u in self._wanted}

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._lock:
            if self._conn is not None:
                self._conn.interrupt()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- what a session tells its watcher (unitsession.Session) ----------------------------

    def attach(self, conn: Any) -> None:
        """The session's connection: ``watch`` and ``close`` interrupt its receive."""
        with self._lock:
            self._conn = conn

    def following(self) -> None:
        with self._lock:
            self._following = True

    def detach(self) -> None:
        with self._lock:
            self._conn = None
            self._following = False

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            bus = _bus()
            address = self.address or bus.bus_address()
        except (ImportError, SystemdUnavailable) as exc:  # nothing will ever change that
            log.warning("unit watcher: not following units: %s", exc)
            return
        delay, down = self.backoff_min, False
        while not self._stop.is_set():
            session = None
            try:
                session = Session(self, bus, address)
                session.serve()
            except Stopped:
                break
            except Exception as exc:  # whatever the bus did, the watcher carries on
                # The first failure says so; the retries of an outage stay quiet.
                log.log(logging.DEBUG if down else logging.WARNING, "unit watcher: %s", exc)
            finally:
                if session is not None:
                    session.close()
            if session is not None and session.established:
                delay = self.backoff_min
            down = not (session is not None and session.established)
            self._lost()
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, self.backoff_max)

    def _lost(self) -> None:
        for unit, state in list(self._last.items()):
            if state is not None:
                self.emit(unit, None)

    def emit(self, unit: str, state: UnitState | None) -> None:
        """Publish a unit's state if it changed (the watcher's thread only)."""
        if unit in self._last and self._last[unit] == state:
            return
        with self._lock:
            self._last[unit] = state
        try:
            self._publish(unit, state)
        except Exception:
            log.exception("unit watcher: publish(%s) failed", unit)

    def forget(self, unit: str) -> None:
        with self._lock:
            self._last.pop(unit, None)

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

import collections
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from hecated.adapters.units import (
    NoSuchUnit,
    SystemdUnavailable,
    UnitError,
    UnitState,
    check_unit_name,
)

log = logging.getLogger("hecated.adapters.unitwatch")
_READ_TRIES = 5  # reads of one unit while it keeps changing, before the last one stands

Publish = Callable[[str, UnitState | None], None]
# The properties a UnitState is made of: a change to any other is not news.
_UNIT_PROPS = frozenset({"LoadState", "ActiveState", "SubState", "StateChangeTimestamp"})
_SERVICE_PROPS = frozenset(
    {
        "Result",
        "NRestarts",
        "MainPID",
        "ExecMainCode",
        "ExecMainStatus",
        "ExecMainExitTimestamp",
        "Restart",
        "RestartUSec",
    }
)


def _bus() -> ModuleType:
    """The D-Bus half, imported in the watcher's thread, never on a cold start's path."""
    from hecated.adapters import unitbus

    return unitbus


class _Lost(Exception):
    """The manager left the bus (or the bus left us): reconnect."""


class _Stopped(Exception):
    """``close`` was called."""


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
    ) -> None:
        self._publish = publish
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
                session = _Session(self, bus, address)
                session.serve()
            except _Stopped:
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


class _Session:
    """One connection's life: set up, read the states, then follow the signals."""

    def __init__(self, watcher: UnitWatcher, bus: ModuleType, address: str) -> None:
        self.watcher = watcher
        self.bus = bus
        self.established = False
        self.woken = False
        self.reloading = False
        self.pending: collections.deque = collections.deque()
        self.paths: dict[str, str] = {}  # object path -> unit, for the watched units
        self.refd: set[str] = set()  # units we hold a reference on (RefUnit)
        self.props: dict[str, tuple[dict, dict]] = {}  # unit -> (Unit, Service) properties
        self.conn = bus.open_interruptible(address)
        with watcher._lock:
            watcher._conn = self.conn

    def close(self) -> None:
        with self.watcher._lock:
            self.watcher._conn = None
            self.watcher._following = False
        self.bus.close_interruptible(self.conn)

    def serve(self) -> None:
        bus = self.bus
        if self.watcher._stop.is_set():  # closed while we connected
            raise _Stopped
        bus.check_ours(self.call(bus.owner_uid()))
        self.call(bus.add_match(bus.manager_owner_changes()))
        self.call(bus.add_match(bus.manager_signals("Reloading")))
        self.call(bus.manager_call("Subscribe"))
        self.established = True
        with self.watcher._lock:
            self.watcher._following = True
        log.info("unit watcher: following the user manager's signals")
        self.sync()
        while True:
            if self.woken:
                self.woken = False
                self.sync()
            msg = self.pending.popleft() if self.pending else self.receive()
            if msg is not None:
                self.handle(msg)

    # -- messages ------------------------------------------------------------------------

    def receive(self) -> Any:
        """The next message; None when woken (by ``watch`` or ``close``)."""
        try:
            return self.conn.receive()
        except self.bus.ReceiveStopped:
            self._woken()
            return None

    def _woken(self) -> None:
        self.conn.reset_interrupt()
        if self.watcher._stop.is_set():
            raise _Stopped
        self.woken = True

    def call(self, msg: Any, unit: str = "") -> tuple[Any, ...]:
        """Send a method call and wait for its reply; signals meanwhile wait in ``pending``."""
        bus = self.bus
        serial = next(self.conn.outgoing_serial)
        self.conn.send(msg, serial=serial)
        while True:
            reply = self.receive()
            if reply is None:
                continue
            if bus.reply_serial(reply) == serial:
                return bus.unwrap(reply, unit)
            if bus.signal_of(reply) is not None:
                self.pending.append(reply)

    def handle(self, msg: Any) -> None:
        bus = self.bus
        kind = bus.signal_of(msg)
        if kind is None:
            return
        interface, member, path = kind
        if member == "PropertiesChanged" and path in self.paths and not self.reloading:
            self.changed(self.paths[path], *msg.body)
        elif interface == bus.MANAGER_IFACE:
            self.manager_signal(member, msg.body)
        elif member == "NameOwnerChanged" and msg.body[0] == bus.SYSTEMD and not msg.body[2]:
            raise _Lost("the user manager left the bus")

    def manager_signal(self, member: str, body: tuple[Any, ...]) -> None:
        wanted = self.watcher.wanted()
        if member == "Reloading":
            # A daemon-reload (or re-exec) takes every unit apart and builds it again:
            # what is said meanwhile (UnitRemoved above all) is not news. Read after.
            self.reloading = bool(body[0])
            if not self.reloading:
                for unit in sorted(set(self.paths.values())):
                    self.load(unit)
        elif self.reloading:
            return
        elif member == "UnitNew" and body[0] in wanted and body[0] not in self.refd:
            self.probe(body[0])
        elif member == "UnitRemoved" and body[0] in self.refd:
            self.unloaded(body[0])

    # -- states --------------------------------------------------------------------------

    def sync(self) -> None:
        """Follow the watched set: read the new units, drop the ones no longer wanted."""
        wanted = self.watcher.wanted()
        for unit in sorted(wanted - self.props.keys()):
            self.load(unit)
        for unit in sorted(self.props.keys() - wanted):
            self.drop(unit)
            self.watcher.forget(unit)

    def load(self, unit: str) -> None:
        """Read a unit's state now, following its signals from before the read (the
        matches first, so no change falls between the read and the matches)."""
        bus = self.bus
        path = bus.unit_path(unit)
        if path not in self.paths:
            for rule in bus.unit_rules(unit, path):
                self.call(bus.add_match(rule))
            self.paths[path] = unit
        if unit not in self.refd:
            # Referenced, a unit stays loaded while we watch it: LoadUnit alone lets the
            # manager unload a stopped unit at once (UnitRemoved, UnitNew, churn). The
            # manager refuses a reference on a unit without a unit file, or masked: such
            # a unit is read all the same, and read again when UnitNew says it is back.
            try:
                self.call(bus.manager_call("RefUnit", "s", unit), unit)
                self.refd.add(unit)
            except SystemdUnavailable:
                raise
            except UnitError:
                pass
        unit_props, service_props = self.read(unit, path)
        self.props[unit] = (unit_props, service_props)
        self.watcher.emit(unit, bus.state_from(unit, unit_props, service_props))

    def probe(self, unit: str) -> None:
        """UnitNew of a unit we hold no reference on (no unit file, masked): follow it
        if it has a unit file now, else say what it is. Only GetUnit and the object's
        own properties, which load nothing: a read that loads a unit the manager then
        unloads makes it say UnitNew again, and so on. UnitRemoved of such a unit is
        that unload, and says nothing."""
        bus = self.bus
        try:
            (path,) = self.call(bus.manager_call("GetUnit", "s", unit), unit)
            (unit_props,) = self.call(bus.get_all(path, bus.UNIT_IFACE), unit)
        except NoSuchUnit:  # gone again already
            return
        unit_props = bus.plain(unit_props)
        if unit_props.get("LoadState") == "loaded":
            self.load(unit)
        else:
            self.props[unit] = (unit_props, {})
            self.watcher.emit(unit, bus.state_from(unit, unit_props, {}))

    def read(self, unit: str, path: str) -> tuple[dict, dict]:
        """The unit's Unit and Service properties as of one moment.

        Two GetAll calls are not one read: the state may change between them. systemd
        sends a change as the Service interface's signal then the Unit's, back to back,
        and answers our calls in order on this one connection; so the Service read then
        the Unit read saw one moment unless a change of the unit came between the two
        answers, and then we read again. Every change still waiting came before the
        second answer, so the read holds it: those are dropped, not applied over it."""
        bus = self.bus
        for _ in range(_READ_TRIES):
            (service_props,) = self.call(bus.get_all(path, bus.SERVICE_IFACE), unit)
            mark = len(self.pending)
            (unit_props,) = self.call(bus.get_all(path, bus.UNIT_IFACE), unit)
            if not any(self.changes(m, path) for m in list(self.pending)[mark:]):
                break
        self.pending = collections.deque(m for m in self.pending if not self.changes(m, path))
        return bus.plain(unit_props), bus.plain(service_props)

    def changes(self, msg: Any, path: str) -> bool:
        kind = self.bus.signal_of(msg)
        return kind is not None and kind[1:] == ("PropertiesChanged", path)

    def drop(self, unit: str) -> None:
        bus = self.bus
        for path in [p for p, u in self.paths.items() if u == unit]:
            del self.paths[path]
            for rule in bus.unit_rules(unit, path):
                self.call(bus.remove_match(rule))
        if unit in self.refd:
            self.refd.discard(unit)
            with contextlib.suppress(NoSuchUnit):
                self.call(bus.manager_call("UnrefUnit", "s", unit), unit)
        self.props.pop(unit, None)

    def unloaded(self, unit: str) -> None:
        """The manager let the unit go (our reference with it): it is not running. The
        match stays, so UnitNew and the next read find the unit followed already."""
        self.refd.discard(unit)
        self.props.pop(unit, None)
        self.watcher.emit(unit, UnitState(unit, "not-loaded", "inactive", "dead"))

    def changed(self, unit: str, interface: str, changed: dict, invalidated: list) -> None:
        bus = self.bus
        if unit not in self.props:  # unloaded: UnitNew reads it again
            return
        unit_props, service_props = self.props[unit]
        if interface == bus.SERVICE_IFACE:
            service_props.update(bus.plain(changed))
        elif interface == bus.UNIT_IFACE:
            unit_props.update(bus.plain(changed))
        else:
            return
        if set(invalidated) & (_UNIT_PROPS | _SERVICE_PROPS):
            self.load(unit)
        elif interface == bus.UNIT_IFACE:  # systemd sends the Unit interface's change last
            self.watcher.emit(unit, bus.state_from(unit, unit_props, service_props))

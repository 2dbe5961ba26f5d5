"""One connection's life for the unit watcher (``unitwatch``): set up, read, follow.

The watcher's thread makes a ``Session`` per connection to the user manager and
runs ``serve`` until the bus or the manager goes away (``Lost`` or any D-Bus
error: the watcher reconnects) or ``close`` is called (``Stopped``). The
session owns the connection's match rules, the references it holds on units,
each watched unit's properties, and the ordering rules that keep a published
state from going back in time (see ``read``). It publishes through the
watcher's ``emit``, which drops repeats.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any

from hecated.adapters.units import NoSuchUnit, SystemdUnavailable, UnitError, UnitState

if TYPE_CHECKING:
    from hecated.adapters.unitwatch import UnitWatcher

log = logging.getLogger("hecated.adapters.unitwatch")
_READ_TRIES = 5  # reads of one unit while it keeps changing, before the last one stands

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


class Lost(Exception):
    """The manager left the bus (or the bus left us): reconnect."""


class Stopped(Exception):
    """``close`` was called."""


class Session:
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
        watcher.attach(self.conn)

    def close(self) -> None:
        self.watcher.detach()
        self.bus.close_interruptible(self.conn)

    def serve(self) -> None:
        bus = self.bus
        if self.watcher.stopping:  # closed while we connected
            raise Stopped
        bus.check_ours(self.call(bus.owner_uid()))
        self.call(bus.add_match(bus.manager_owner_changes()))
        self.call(bus.add_match(bus.manager_signals("Reloading")))
        self.call(bus.manager_call("Subscribe"))
        self.established = True
        self.watcher.following()
        log.info("unit watcher: following the user manager's signals")
        self.sync()
        while True:
            # A loop, not an if: a wake-up that came while ``sync`` read (its interrupt
            # consumed by a call's receive) must be acted on now, never left for the
            # blocking receive below, which would wait for a signal that may not come.
            while self.woken:
                self.woken = False
                self.sync()
            msg = self.pending.popleft() if self.pending else self.receive()
            if msg is not None:
                self.handle(msg)

    # -- messages ------------------------------------------------------------------------

    def receive(self, timeout: float | None = None) -> Any:
        """The next message; None when woken (by ``watch`` or ``close``). Between
        signals it waits without a timeout (no polling); a call's reply, ``timeout``."""
        try:
            return self.conn.receive(timeout=timeout)
        except self.bus.ReceiveStopped:
            self._woken()
            return None

    def _woken(self) -> None:
        self.conn.reset_interrupt()
        if self.watcher.stopping:
            raise Stopped
        self.woken = True

    def call(self, msg: Any, unit: str = "") -> tuple[Any, ...]:
        """Send a method call and wait for its reply; signals meanwhile wait in ``pending``.

        Bounded (``call_timeout``): a manager that answers nothing (frozen, wedged) is
        treated as gone, so the states fall back to the probes and the thread reconnects,
        instead of waiting with stale states for ever."""
        bus = self.bus
        bound = self.watcher.call_timeout or bus.CALL_TIMEOUT
        deadline = time.monotonic() + bound
        serial = next(self.conn.outgoing_serial)
        self.conn.send(msg, serial=serial)
        while True:
            try:
                reply = self.receive(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise Lost(f"the user manager did not answer within {bound:g} s") from None
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
            raise Lost("the user manager left the bus")

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
        match stays, so UnitNew and the next read find the unit followed already.

        Asked once more first (GetUnit loads nothing): a removal read while the unit was
        being loaded again (a start of a unit whose file just appeared, on a loaded
        machine) must not publish "not-loaded" over a unit that runs."""
        self.refd.discard(unit)
        self.props.pop(unit, None)
        try:
            self.call(self.bus.manager_call("GetUnit", "s", unit), unit)
        except NoSuchUnit:
            self.watcher.emit(unit, UnitState(unit, "not-loaded", "inactive", "dead"))
            return
        self.load(unit)  # there again: referenced and read as it is now

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

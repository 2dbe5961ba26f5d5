"""The plugins' units, live in the index: the unit watcher's states published as findings.

The third source of a plugin's status (``core.status.combine``): what the user
manager says of the plugin's systemd user unit. A ``UnitStatus`` owns one
``UnitWatcher`` (adapters/unitwatch: the manager's signals, no polling) and
keeps two maps in step with the index's change feed: plugin -> unit (its
``plugin.toml``'s ``unit``, else the convention ``{name}.service``) and unit ->
plugins. The watch set is recomputed from the feed, so a registration, a hand
edit of ``unit`` or a deregistration changes what is watched without a rescan.
Each state the watcher publishes becomes a ``UnitFinding`` (the entry's ``unit``
block, with the status and the reason in words that state decides) for every
plugin of that unit (``Index.set_unit``); ``None`` (the manager away) makes the
status fall back to the probes.

Which plugins: registered ones with a valid ``plugin.toml`` and discovered ones
(the convention's unit; they are listed only while their socket answers). An
invalid ``plugin.toml`` names no unit we could trust: none is watched for it.

Ordering: the feed's listener runs under the changed name's lock and so does
each publication here, so a plugin whose unit just changed never gets the old
unit's state after the new one's. The watcher stores a state before it calls
``publish``, and the listener maps a plugin before it reads the watcher's
states: one of the two always sees both.
"""

from __future__ import annotations

import logging
import threading

from hecated.adapters.units import UnitState, unit_reason, unit_status
from hecated.adapters.unitwatch import UnitWatcher
from hecated.core.index import Change, Index, Plugin
from hecated.core.status import UnitFinding
from hecated.core.store import Entry
from hecated.core.units import unit_of
from hecated.protocol import InvalidUnitName, check_unit_name

log = logging.getLogger("hecated.adapters.unitstatus")


def unit_finding(state: UnitState | None) -> UnitFinding | None:
    """The index's finding for a unit state (None: the manager says nothing now).

    ``reason`` is the story that decides the status (failed, restarting...), else
    what the unit went through (an active unit restarted after a kill), else None."""
    if state is None:
        return None
    decided = unit_status(state)
    status, reason = decided if decided is not None else (None, unit_reason(state) or None)
    return UnitFinding(
        name=state.name,
        load_state=state.load_state,
        active_state=state.active_state,
        sub_state=state.sub_state,
        result=state.result,
        restarts=state.n_restarts,
        since=state.since,
        main_pid=state.main_pid or None,
        status=status,
        reason=reason,
    )


def watched_unit(name: str, entry: Entry | None, listed: bool) -> str | None:
    """The unit to watch for ``name`` (``core.units.unit_of``: ``plugin.toml``'s ``unit``,
    else the convention); None when it is not listed, its ``plugin.toml`` is invalid, or
    the convention's name is no valid unit name (``entry`` None and listed: a
    discovered plugin, the convention's unit)."""
    if not listed or (entry is not None and entry.manifest is None):
        return None
    try:
        return check_unit_name(unit_of(entry, name))
    except InvalidUnitName:
        return None


class UnitStatus:
    """Follows the units of the index's plugins and publishes their states into it.

    ``start`` after the daemon's first answer (the watcher imports jeepney in its
    own thread); ``close`` in the shutdown. ``address`` None: the session bus of
    ``$DBUS_SESSION_BUS_ADDRESS``, else ``$XDG_RUNTIME_DIR/bus``.
    """

    def __init__(self, registry: Index, address: str | None = None) -> None:
        self.registry = registry
        self.watcher = UnitWatcher(self._publish, address=address)
        self._lock = threading.Lock()
        self._unit_of: dict[str, str] = {}  # plugin -> its unit
        self._plugins_of: dict[str, set[str]] = {}  # unit -> its plugins
        self._seen: set[str] | None = set()  # names the feed told of while seeding
        self._closed = False

    def start(self) -> UnitStatus:
        """Subscribe to the feed, map every listed plugin, then start the watcher."""
        self.registry.subscribe(self._changed)
        for plugin in self.registry.list():
            with self.registry.name_lock(plugin.name):
                self._seed(plugin)
        with self._lock:
            self._seen = None
        self._watch()
        self.watcher.start()
        log.info("following %d plugin unit(s)", len(self.units()))
        return self

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.watcher.close()

    def units(self) -> dict[str, str]:
        """plugin -> the unit followed for it."""
        with self._lock:
            return dict(self._unit_of)

    # -- the feed (under the changed name's lock) -------------------------------------------

    def _seed(self, plugin: Plugin) -> None:
        with self._lock:
            if self._seen is not None and plugin.name in self._seen:  # the feed's is newer
                return
        entry = plugin.entry if plugin.registered else None
        self._remap(plugin.name, watched_unit(plugin.name, entry, listed=True))

    def _changed(self, change: Change) -> None:
        with self._lock:
            if self._closed:
                return
            if self._seen is not None:
                self._seen.add(change.name)
        unit = watched_unit(change.name, change.entry, listed=change.live is not None)
        moved, new_set = self._remap(change.name, unit)
        if new_set:
            self._watch()
        if moved:
            self._tell(change.name, unit)

    def _remap(self, name: str, unit: str | None) -> tuple[bool, bool]:
        """Map ``name`` to ``unit``: (the map changed, the set of units changed)."""
        with self._lock:
            old = self._unit_of.get(name)
            if old == unit:
                return False, False
            new_set = False
            if old is not None:
                users = self._plugins_of[old]
                users.discard(name)
                if not users:
                    del self._plugins_of[old]
                    new_set = True
                del self._unit_of[name]
            if unit is not None:
                self._unit_of[name] = unit
                new_set = new_set or unit not in self._plugins_of
                self._plugins_of.setdefault(unit, set()).add(name)
            return True, new_set

    def _watch(self) -> None:
        """The watched set handed over under the lock: two changes' threads (each under
        its own name's lock) must hand their sets in the order they made them, or the
        older set could come last and a plugin's unit go unwatched."""
        with self._lock:
            self.watcher.watch(list(self._plugins_of))

    def _tell(self, name: str, unit: str | None) -> None:
        """``name``'s finding now: its new unit's last state (None: not read yet)."""
        state = None if unit is None else self.watcher.states().get(unit)
        self.registry.set_unit(name, unit_finding(state))

    # -- the watcher's thread -------------------------------------------------------------

    def _publish(self, unit: str, state: UnitState | None) -> None:
        finding = unit_finding(state)
        with self._lock:
            names = sorted(self._plugins_of.get(unit, ()))
        for name in names:
            with self.registry.name_lock(name):
                with self._lock:
                    still = self._unit_of.get(name) == unit
                if still:
                    self.registry.set_unit(name, finding)

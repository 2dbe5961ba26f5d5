"""The wire to the user manager: jeepney messages for org.freedesktop.systemd1, and back.

Imported only when a unit is first controlled or watched (never at a cold
start): jeepney is imported here, at the top, and nowhere else. The callers
(``unitcontrol``, ``unitwatch``) hold the connections and decide what to wait
for; this module builds the messages, finds the bus, checks that the manager
on it is ours, and turns replies and D-Bus errors into ``units`` values.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from jeepney import DBusAddress, HeaderFields, Message, MessageType, new_method_call
from jeepney.bus import get_bus
from jeepney.bus_messages import MatchRule, message_bus
from jeepney.io import blocking
from jeepney.io import threading as jthreading
from jeepney.wrappers import DBusErrorResponse, unwrap_msg

from hecated.adapters.units import (
    JobConflict,
    NoSuchUnit,
    SystemdUnavailable,
    UnitError,
    UnitState,
)

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER_IFACE = "org.freedesktop.systemd1.Manager"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE = "org.freedesktop.systemd1.Service"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
DBUS_IFACE = "org.freedesktop.DBus"
CALL_TIMEOUT = 10.0  # seconds for one method call's reply (a job's end is waited for apart)

# What an interruptible connection's receive raises when another thread interrupts it.
ReceiveStopped = jthreading.ReceiveStopped

_MANAGER = DBusAddress(MANAGER_PATH, SYSTEMD, MANAGER_IFACE)
# D-Bus errors meaning "nobody is there", as opposed to "the manager said no".
_GONE = {
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.Disconnected",
}
_NO_UNIT = {"org.freedesktop.systemd1.NoSuchUnit", "org.freedesktop.systemd1.LoadFailed"}
# A job in mode "fail" that would cancel one already queued: may be made once that one ends.
_CONFLICT = "org.freedesktop.systemd1.TransactionIsDestructive"


def bus_address(env: dict[str, str] | None = None) -> str:
    """The current user's session bus: $DBUS_SESSION_BUS_ADDRESS, else $XDG_RUNTIME_DIR/bus."""
    env = os.environ if env is None else env
    if address := env.get("DBUS_SESSION_BUS_ADDRESS"):
        return address
    if runtime := env.get("XDG_RUNTIME_DIR"):
        return f"unix:path={runtime}/bus"
    raise SystemdUnavailable("no session bus: neither DBUS_SESSION_BUS_ADDRESS nor XDG_RUNTIME_DIR")


def open_blocking(address: str) -> blocking.DBusConnection:
    """A connection for one control call; SystemdUnavailable when the bus is not there."""
    try:
        return blocking.open_dbus_connection(address)
    except (OSError, TimeoutError, RuntimeError, ValueError, DBusErrorResponse) as exc:
        raise SystemdUnavailable(f"cannot reach the session bus at {address}: {exc}") from exc


def open_interruptible(address: str) -> jthreading.DBusConnection:
    """A connection whose blocking receive another thread can interrupt (the watcher's).

    Not jeepney.io.threading.open_dbus_connection: its Hello goes through a router
    thread that, closing, can fail on the reply it already delivered (jeepney 0.8:
    InvalidStateError in drop_all, a traceback on stderr). We say Hello ourselves."""
    conn = None
    try:
        conn = jthreading.DBusConnection(blocking.prep_socket(get_bus(address), timeout=1.0))
        hello = message_bus.Hello()
        serial = next(conn.outgoing_serial)
        conn.send(hello, serial=serial)
        conn.unique_name = unwrap(_await_reply(conn, serial, CALL_TIMEOUT))[0]
        return conn
    except (OSError, TimeoutError, RuntimeError, ValueError, UnitError) as exc:
        if conn is not None:
            close_interruptible(conn)
        raise SystemdUnavailable(f"cannot reach the session bus at {address}: {exc}") from exc


def _await_reply(conn: jthreading.DBusConnection, serial: int, timeout: float) -> Message:
    deadline = time.monotonic() + timeout
    while True:
        reply = conn.receive(timeout=max(0.0, deadline - time.monotonic()))
        if reply_serial(reply) == serial:
            return reply


def close_interruptible(conn: jthreading.DBusConnection) -> None:
    """Close the connection and the wake-up pipe jeepney leaves open."""
    conn.close()
    for fd in (conn._stop_r, conn._stop_w):
        with contextlib.suppress(OSError):
            os.close(fd)


def unwrap(reply: Message, unit: str = "") -> tuple[Any, ...]:
    """A reply's body, or the error it carries as a ``units`` exception."""
    try:
        return unwrap_msg(reply)
    except DBusErrorResponse as exc:
        raise error_for(exc.name or "", exc.data, unit) from None


def error_for(name: str, data: Any, unit: str) -> UnitError:
    text = data[0] if data and isinstance(data[0], str) else name
    if name in _GONE:
        return SystemdUnavailable(f"the user manager is not on the bus: {text}")
    if name in _NO_UNIT:
        return NoSuchUnit(unit)
    if name == _CONFLICT:
        return JobConflict(f"{unit}: {text} ({name})")
    return UnitError(f"the user manager refused: {text} ({name})")


# -- messages ----------------------------------------------------------------------------


def manager_call(method: str, signature: str | None = None, *args: Any) -> Message:
    return new_method_call(_MANAGER, method, signature, args)


def get_all(path: str, interface: str) -> Message:
    address = DBusAddress(path, SYSTEMD, PROPS_IFACE)
    return new_method_call(address, "GetAll", "s", (interface,))


def add_match(rule: MatchRule) -> Message:
    return message_bus.AddMatch(rule)


def remove_match(rule: MatchRule) -> Message:
    return message_bus.RemoveMatch(rule)


def owner_uid(name: str = SYSTEMD) -> Message:
    return message_bus.GetConnectionUnixUser(name)


def check_ours(uid_reply: tuple[Any, ...]) -> None:
    """The manager on this bus must run as us: never another user's manager."""
    if uid_reply[0] != os.getuid():
        raise SystemdUnavailable(f"the systemd on this bus runs as uid {uid_reply[0]}, not us")


# Bus-side rules name the manager by its well-known name; the local tests below do
# not, since a signal carries the sender's unique name.
def manager_signals(member: str | None = None) -> MatchRule:
    return MatchRule(
        type="signal", sender=SYSTEMD, interface=MANAGER_IFACE, member=member, path=MANAGER_PATH
    )


def unit_path(unit: str) -> str:
    """The unit's object path, as systemd's bus_label_escape makes it (``_2e`` for '.')."""
    label = "".join(
        c if c.isascii() and (c.isalpha() or (c.isdigit() and i)) else f"_{ord(c):02x}"
        for i, c in enumerate(unit)
    )
    return f"{MANAGER_PATH}/unit/{label}"


def unit_rules(unit: str, path: str) -> list[MatchRule]:
    """The signals of one watched unit: its object's PropertiesChanged, the manager's
    UnitNew and UnitRemoved naming it. Only the watched units wake the watcher."""
    changes = MatchRule(
        type="signal", sender=SYSTEMD, interface=PROPS_IFACE, member="PropertiesChanged", path=path
    )
    rules = [changes]
    for member in ("UnitNew", "UnitRemoved"):
        rule = manager_signals(member)
        rule.add_arg_condition(0, unit)
        rules.append(rule)
    return rules


def manager_owner_changes() -> MatchRule:
    rule = MatchRule(
        type="signal", sender=DBUS_IFACE, interface=DBUS_IFACE, member="NameOwnerChanged"
    )
    rule.add_arg_condition(0, SYSTEMD)
    return rule


def job_removed_local() -> MatchRule:
    """JobRemoved as matched on our side of the connection (no sender: see above)."""
    return MatchRule(type="signal", interface=MANAGER_IFACE, member="JobRemoved")


def signal_of(msg: Message) -> tuple[str, str, str] | None:
    """(interface, member, path) of a signal; None for anything else."""
    if msg.header.message_type != MessageType.signal:
        return None
    fields = msg.header.fields
    return (
        fields.get(HeaderFields.interface, ""),
        fields.get(HeaderFields.member, ""),
        fields.get(HeaderFields.path, ""),
    )


def reply_serial(msg: Message) -> int:
    return msg.header.fields.get(HeaderFields.reply_serial, -1)


# -- properties --------------------------------------------------------------------------


def plain(props: dict[str, Any]) -> dict[str, Any]:
    """GetAll's {name: (signature, value)} as {name: value}."""
    return {key: value[1] if isinstance(value, tuple) else value for key, value in props.items()}


def _usec(value: Any) -> float | None:
    return value / 1e6 if isinstance(value, int) and value > 0 else None


def state_from(name: str, unit: dict[str, Any], service: dict[str, Any]) -> UnitState:
    """A ``UnitState`` from the plain properties of the Unit and Service interfaces."""
    return UnitState(
        name=name,
        load_state=str(unit.get("LoadState", "")),
        active_state=str(unit.get("ActiveState", "")),
        sub_state=str(unit.get("SubState", "")),
        result=str(service.get("Result", "success")),
        n_restarts=int(service.get("NRestarts", 0)),
        since=_usec(unit.get("StateChangeTimestamp")),
        main_pid=int(service.get("MainPID", 0)),
        exit_code=int(service.get("ExecMainCode", 0)),
        exit_status=int(service.get("ExecMainStatus", 0)),
        restart=str(service.get("Restart", "no")),
        exit_time=_usec(service.get("ExecMainExitTimestamp")),
        restart_delay=(_usec(service.get("RestartUSec")) or 0.0),
    )


Call = Callable[[Message], tuple[Any, ...]]


def read_props(call: Call, unit: str, load: bool = True) -> tuple[str, dict, dict]:
    """(object path, Unit properties, Service properties) of one unit, plain, through
    ``call`` (whoever owns the connection sends and waits).

    ``load``: LoadUnit, which loads a unit the manager had let go (a stopped one);
    without it GetUnit, which answers NoSuchUnit for a unit not in memory."""
    method = "LoadUnit" if load else "GetUnit"
    (path,) = call(manager_call(method, "s", unit))
    (unit_props,) = call(get_all(path, UNIT_IFACE))
    (service_props,) = call(get_all(path, SERVICE_IFACE))
    return path, plain(unit_props), plain(service_props)


def read_unit(call: Call, unit: str) -> tuple[str, UnitState]:
    path, unit_props, service_props = read_props(call, unit)
    return path, state_from(unit, unit_props, service_props)

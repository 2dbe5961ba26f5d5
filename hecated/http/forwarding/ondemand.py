"""On-demand start: a forwarded request to a plugin that is not running starts its unit.

A request for ``/plugin/NAME/...`` whose socket does not listen (no socket file,
or the connect refused: ``PluginNotListeningError``), to a registered plugin
that has a unit and does not opt out (``start_on_demand = false``), starts the
unit through the starter the daemon injects (the wing never talks to systemd
itself: ``lint-imports`` keeps adapters out of http) and is held until the
plugin's socket answers, within the request's first-byte timeout; then it is
relayed as usual.

However many requests arrive meanwhile, a plugin gets ONE start: the first
request's thread runs the start job and the wait, the others join it (a
per-plugin shared start) and learn its outcome. The wait is event-driven: the
index's change feed (``Index.subscribe``) wakes it on each change of that
plugin, and it proceeds once the plugin's last socket finding says something
accepts (``answering``: its own ``GET /health`` answered 2xx; or ``refusing``:
it answered otherwise, and then the plugin answers the request for itself) and a
connect succeeds. It gives up early when the unit says it has ended since its
start job was done (failed, or inactive: a ``502 unit_failed`` with the unit's
reason, as the control routes answer), and at the first-byte timeout after one
last connect. ``Index.wait`` is the long polls' and is bounded by
``max_waiters``: twenty held requests must neither be told ``busy`` nor take
the long polls' places. ``GET /api/plugins`` reads the index only: nothing in
the registry API reaches this module.
"""

from __future__ import annotations

import copy
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from hecated.core.errors import (
    BusyError,
    HecateError,
    InvalidUnitError,
    NoUnitError,
    SystemdUnavailableError,
    UnitFailedError,
)
from hecated.core.status import SocketFinding, SocketKind, UnitFinding
from hecated.core.units import unit_of
from hecated.http.forwarding.errors import (
    PluginNotListeningError,
    PluginTimeoutError,
    PluginUnreachableError,
)
from hecated.http.forwarding.idlestop import IdleStops

__all__ = ["OnDemand", "Plan", "Starter", "plan_of"]

log = logging.getLogger("hecated.http.forwarding")

# start(unit, timeout): returns once the start job is done, with the unit's state just
# after it (None: not known), or raises the core error the control routes answer with
# (the daemon's SystemdUnits.job: unit_failed, no_unit, systemd_unavailable...).
Starter = Callable[[str, float], UnitFinding | None]

# What a unit that has ended is in: after its start job was done, the plugin is not coming.
ENDED = frozenset({"failed", "inactive"})
# Socket findings that say something accepts: the held requests may go on.
ACCEPTING = frozenset({SocketKind.ANSWERING, SocketKind.REFUSING})
# A stale accepting finding (the connect refused): looked at again after this many seconds,
# doubling, besides each change.
STALE_FIRST = 0.01
STALE_MAX = 0.5


class _Index(Protocol):
    """What on-demand start needs of the registry: an entry, a finding, the feed."""

    def get(self, name: str) -> Any: ...

    def finding(self, name: str) -> SocketFinding | None: ...

    def unit(self, name: str) -> UnitFinding | None: ...

    def subscribe(self, listener: Callable[[Any], None]) -> None: ...


@dataclass(frozen=True)
class Plan:
    """What a plugin's ``plugin.toml`` says of its unit: which (None: no unit hecated may
    act on), whether a request may start it, and the idle stop (None: off)."""

    unit: str | None = None
    start: bool = False
    idle_stop_after: float | None = None


def plan_of(plugin: Any) -> Plan:
    """The plan for an index entry: only a registered plugin with a valid manifest has a
    unit (a discovered namespace is nobody's to start); left out, ``{name}.service``
    (``core.manifest`` has checked the three keys)."""
    if plugin is None or not plugin.registered or plugin.entry.manifest is None:
        return Plan()
    manifest = plugin.entry.manifest
    # idle_stop_after = 0 is "off", as 0 is for hecated's own idle exit (not "stop the
    # plugin after every request").
    idle = manifest.idle_stop_after or None
    return Plan(unit_of(manifest, plugin.name), manifest.start_on_demand, idle)


class _Start:
    """One plugin's shared start: the changes seen while it waits, and its outcome."""

    def __init__(self) -> None:
        self.changes = 0
        self.done = False
        self.error: HecateError | None = None


class OnDemand:
    """Starts plugins' units for forwarded requests, one start per plugin at a time."""

    def __init__(self, index: _Index, start: Starter, idle: IdleStops) -> None:
        self.index = index
        self.idle = idle
        self._start_unit = start
        self._cond = threading.Condition()
        self._starts: dict[str, _Start] = {}
        self._closed = False
        self.jobs = 0  # start jobs asked for (the tests and the bench read it)
        index.subscribe(self._changed)

    def plan(self, namespace: str) -> Plan:
        return plan_of(self.index.get(namespace))

    def in_use(self, namespace: str, timeout: float) -> Callable[[], None]:
        """A forwarded request to ``namespace`` begins: it counts as open for the idle
        stop until what is returned is called, and it waits (at most ``timeout``) for an
        idle stop of it that is under way, which would otherwise cut it (``settle``)."""
        plan = self.plan(namespace)
        ended = _nothing
        if plan.unit is not None and plan.idle_stop_after is not None:
            ended = self.idle.begin(namespace, plan.unit, plan.idle_stop_after)
        try:
            self.idle.settle(namespace, timeout)
        except TimeoutError:
            ended()
            raise PluginTimeoutError(
                f"plugin {namespace!r} is being stopped (idle), and the stop did not end in time"
            ) from None
        except BaseException:
            ended()
            raise
        return ended

    def _changed(self, change: Any) -> None:
        """The change feed (told under the name's lock): wake whoever waits on that name."""
        with self._cond:
            start = self._starts.get(change.name)
            if start is not None:
                start.changes += 1
                self._cond.notify_all()

    def connect(
        self, namespace: str, unit: str, connect: Callable[[], socket.socket], timeout: float
    ) -> socket.socket:
        """Start ``namespace``'s unit (or join the start under way) and return a connected
        socket once its socket answers; raise why not (the same for every joiner)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            start = self._starts.get(namespace)
            owner = start is None
            if start is None:
                start = self._starts[namespace] = _Start()
        if owner:
            return self._lead(start, namespace, unit, connect, deadline)
        with self._cond:
            self._cond.wait_for(lambda: start.done or self._closed, deadline - time.monotonic())
            if not start.done:
                raise self._late(namespace, unit, timeout)
        if start.error is not None:
            raise _again(start.error)
        return _patiently(connect, deadline)

    def _lead(
        self,
        start: _Start,
        namespace: str,
        unit: str,
        connect: Callable[[], socket.socket],
        deadline: float,
    ) -> socket.socket:
        """The first request's part: the start job, then the wait for the socket."""
        try:
            sock = self._start_and_wait(start, namespace, unit, connect, deadline)
        except HecateError as exc:
            start.error = exc
            raise
        except BaseException:
            start.error = PluginUnreachableError(f"plugin {namespace!r}: starting it failed")
            raise
        finally:
            with self._cond:
                start.done = True
                self._starts.pop(namespace, None)
                self._cond.notify_all()
        return sock

    def _start_and_wait(
        self,
        start: _Start,
        namespace: str,
        unit: str,
        connect: Callable[[], socket.socket],
        deadline: float,
    ) -> socket.socket:
        # An idle stop of it under way ends first, but the request waits for it no
        # longer than its own time: the stop job may take up to the job timeout.
        guard = self.idle.guard(namespace, max(0.0, deadline - time.monotonic()))
        try:
            guard.__enter__()
        except TimeoutError:
            raise PluginTimeoutError(
                f"plugin {namespace!r} is being stopped (idle), and the stop did not end in time"
            ) from None
        try:
            try:  # it may have come up since this request's connect failed: no start then
                return connect()
            except PluginNotListeningError:
                pass
            left = deadline - time.monotonic()
            log.info("%s: not running; starting %s for a forwarded request", namespace, unit)
            with self._cond:
                self.jobs += 1
            try:
                after = self._start_unit(unit, max(0.001, left))
            except HecateError as exc:
                log.warning("%s: starting %s on demand failed: %s", namespace, unit, exc.message)
                answer = _for_request(namespace, exc)
                if answer is exc:
                    raise
                raise answer from exc
        finally:
            guard.__exit__(None, None, None)
        return self._until_answering(start, namespace, unit, connect, deadline, after)

    def _until_answering(
        self,
        start: _Start,
        namespace: str,
        unit: str,
        connect: Callable[[], socket.socket],
        deadline: float,
        after: UnitFinding | None,
    ) -> socket.socket:
        """Each change of ``namespace`` (a pid file, a finding, its unit): accepting yet?
        Ended? A finding left from before the start may say either still: the connect
        tells the first, ``_ended`` the second. At the deadline, one last connect.

        A finding that says something accepts while the connect is refused is stale (a
        plugin killed with its socket file left in place: nothing probes a file that
        stays), and the plugin's coming up may then change nothing in the index (the
        same path bound again, the same finding): such a wait also looks again after a
        short pause, doubling from ``STALE_FIRST`` to ``STALE_MAX`` seconds."""
        timeout = deadline - time.monotonic()
        pause = STALE_FIRST
        while True:
            with self._cond:
                seen = start.changes
            found = self.index.finding(namespace)
            sock = _if_accepting(found, connect, deadline)
            if sock is not None:
                return sock
            _ended(namespace, unit, after, self.index.unit(namespace))
            stale = found is not None and found.kind in ACCEPTING
            with self._cond:
                left = deadline - time.monotonic()
                if left > 0:
                    self._cond.wait_for(
                        lambda seen=seen: start.changes != seen or self._closed,
                        min(left, pause) if stale else left,
                    )
                closed = self._closed
            if stale:
                pause = min(pause * 2, STALE_MAX)
            if closed or deadline - time.monotonic() <= 0:
                return self._last_try(namespace, unit, connect, timeout)

    def _last_try(
        self, namespace: str, unit: str, connect: Callable[[], socket.socket], timeout: float
    ) -> socket.socket:
        """The time is up (or hecated stops): one connect, in case the plugin listens
        though no finding said so yet (a probe late on a loaded machine), then why not."""
        if not self._closed:
            try:
                return connect()
            except PluginNotListeningError:
                pass
        raise self._late(namespace, unit, timeout)

    def _late(self, namespace: str, unit: str, timeout: float) -> HecateError:
        if self._closed:
            return PluginUnreachableError(f"plugin {namespace!r}: hecated is stopping")
        return PluginTimeoutError(
            f"plugin {namespace!r}: its unit {unit} was started, but its socket did not "
            f"answer within {timeout:g} s"
        )

    def close(self) -> None:
        """hecated stops: held requests are answered now; the idle timer ends."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.idle.close()


def _if_accepting(
    found: SocketFinding | None, connect: Callable[[], socket.socket], deadline: float
) -> socket.socket | None:
    """A connected socket when the last finding says something accepts (answering; or
    refusing: its /health said no, and it answers the request for itself); else None."""
    if found is None or found.kind not in ACCEPTING:
        return None
    try:
        return _patiently(connect, deadline)
    except PluginNotListeningError:
        return None


def _ended(namespace: str, unit: str, after: UnitFinding | None, now: UnitFinding | None) -> None:
    """Raise ``502 unit_failed`` when the unit has ended since its start job was done: in
    the state read just after the job (``after``), or in a later one the manager sent
    (``now``, newer than ``after``: an older one is from before the start)."""
    if after is None:
        return
    ended = after if after.active_state in ENDED else None
    if ended is None and now is not None and now.active_state in ENDED:
        newer = now.since is not None and after.since is not None and now.since > after.since
        ended = now if newer else None
    if ended is None:
        return
    why = ended.reason or f"is {ended.active_state} ({ended.sub_state})"
    raise UnitFailedError(
        f"plugin {namespace!r}: its unit {unit} was started, then ended: {why}",
        ended.result,
        ended.as_dict(),
    )


def _for_request(namespace: str, error: HecateError) -> HecateError:
    """A start's failure as the forwarded request's answer: no unit to start (none in the
    manager, or a name that is none) leaves the plain ``502 plugin_unreachable`` the
    request had without on-demand start, and so does no user manager to ask (the
    plugin's 502, saying so: clients of /plugin/ know that answer); a failed start is
    answered as the control routes answer it (``502 unit_failed`` with the reason and the
    plugin's last lines)."""
    if isinstance(error, (NoUnitError, InvalidUnitError)):
        return PluginUnreachableError(f"plugin {namespace!r} is not running, and {error.message}")
    if isinstance(error, SystemdUnavailableError):
        # The plugin is what the request wanted: its 502, with why it was not started.
        return PluginUnreachableError(
            f"plugin {namespace!r} is not running, and no user manager could start it "
            f"({error.message})"
        )
    return error


def _nothing() -> None:
    pass


def _again(error: HecateError) -> HecateError:
    """The start's error for one more request: a copy where it can be made (one exception
    object raised on many threads gets their tracebacks mixed), else the same one."""
    try:
        return copy.copy(error)
    except Exception:
        return error


# A full listen queue (EAGAIN) just after a start: the held requests were let go at once,
# a herd of our own making, and a plugin's queue may be short (Python's socketserver: 5).
# Looked at again this many times, 5 ms doubling, within the request's deadline.
BUSY_RETRIES = 6


def _patiently(connect: Callable[[], socket.socket], deadline: float) -> socket.socket:
    """``connect``, again after a short pause while the plugin's listen queue is full."""
    for attempt in range(BUSY_RETRIES):
        try:
            return connect()
        except BusyError:
            pause = 0.005 * 2**attempt
            if time.monotonic() + pause >= deadline:
                raise
            time.sleep(pause)
    return connect()

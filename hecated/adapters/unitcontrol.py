"""Start, stop and restart a plugin's unit through the current user's systemd manager.

One short D-Bus connection per call: control is rare (a person or an on-demand
start asks), a connection costs a millisecond, and no connection is left to go
stale when the manager restarts. Each call checks the unit name first, checks
that the manager on the bus runs as us, and answers once the job has ended
(its ``JobRemoved`` signal) with the unit's state.
Like the original hecate-daemon, a start or restart first clears a failed state
(ResetFailedUnit), so a unit that hit its start limit can be started again.

The bound is the whole call's, not each message's: one deadline, ``job_timeout``
from the call's start, is threaded through every D-Bus call it makes (each gets what
is left of it), and only the last read of the unit's state may run ``READ_SLACK``
past it, to say how far a job that did not end got. A manager that hangs mid-call
(frozen, swapping) cannot make one start take several times the bound.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from hecated.adapters.units import (
    JobFailed,
    JobTimeout,
    NoSuchUnit,
    SystemdUnavailable,
    UnitState,
    check_unit_name,
)

JOB_TIMEOUT = 30.0  # seconds a control call waits for its job, as the original's systemctl
# Seconds past the deadline the state read after a job may take: a job that did not end
# is told with the state it reached when the manager answers at once, without it when not.
READ_SLACK = 1.0


def _bus() -> ModuleType:
    """The D-Bus half, imported on first use (a cold start never pays for jeepney)."""
    from hecated.adapters import unitbus

    return unitbus


@dataclass(frozen=True)
class JobOutcome:
    """A job that ended ``done``, and the unit's state just after."""

    unit: str
    result: str
    state: UnitState


class UserManager:
    """The current user's systemd manager, reached over the session bus.

    ``address``: a D-Bus address; None means $DBUS_SESSION_BUS_ADDRESS or
    $XDG_RUNTIME_DIR/bus, read at each call. Every method may raise
    ``InvalidUnitName`` (before any call), ``SystemdUnavailable``, ``NoSuchUnit``;
    the control methods also ``JobFailed`` (``JobTimeout`` when the bound passes)."""

    def __init__(self, address: str | None = None, job_timeout: float = JOB_TIMEOUT) -> None:
        self.address = address
        self.job_timeout = job_timeout

    def state(self, unit: str) -> UnitState:
        """The unit's state now (a unit without a unit file has ``exists`` False)."""
        check_unit_name(unit)
        deadline = time.monotonic() + _bus().CALL_TIMEOUT
        with self._connection(deadline) as conn:
            return _bus().read_unit(self._caller(conn, unit, deadline), unit)[1]

    def start(self, unit: str, timeout: float | None = None, mode: str = "replace") -> JobOutcome:
        """``mode`` as systemd's: ``fail`` refuses (a ``UnitError``) a start that would
        cancel a queued stop job (the gitops reconciler's, so an uninstall's stop stands)."""
        return self._job("StartUnit", unit, timeout, reset=True, mode=mode)

    def stop(self, unit: str, timeout: float | None = None) -> JobOutcome:
        return self._job("StopUnit", unit, timeout, reset=False)

    def restart(self, unit: str, timeout: float | None = None) -> JobOutcome:
        return self._job("RestartUnit", unit, timeout, reset=True)

    # -- the parts -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _connection(self, deadline: float | None = None) -> Iterator[Any]:
        bus = _bus()
        conn = bus.open_blocking(self.address or bus.bus_address())
        try:
            bus.check_ours(self._caller(conn, "", deadline)(bus.owner_uid()))
            yield conn
        except (OSError, EOFError) as exc:  # the bus went away mid-call
            raise SystemdUnavailable(f"lost the session bus: {exc}") from exc
        finally:
            conn.close()

    @staticmethod
    def _caller(conn: Any, unit: str, deadline: float | None = None) -> Any:
        """Calls on ``conn``, each waiting for its reply only as long as ``deadline`` (the
        whole call's) allows; None: one call's own ``CALL_TIMEOUT`` from each call on."""
        bus = _bus()

        def call(msg: Any) -> tuple[Any, ...]:
            left = bus.CALL_TIMEOUT if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise SystemdUnavailable("the user manager did not answer in time")
            try:
                reply = conn.send_and_get_reply(msg, timeout=left)
            except TimeoutError as exc:
                raise SystemdUnavailable("the user manager did not answer in time") from exc
            return bus.unwrap(reply, unit)

        return call

    def _job(
        self, method: str, unit: str, timeout: float | None, reset: bool, mode: str = "replace"
    ) -> JobOutcome:
        check_unit_name(unit)
        bound = self.job_timeout if timeout is None else timeout
        deadline = time.monotonic() + bound
        bus = _bus()
        with self._connection(deadline) as conn:
            call = self._caller(conn, unit, deadline)
            removed: collections.deque = collections.deque()
            with conn.filter(bus.job_removed_local(), queue=removed):
                call(bus.add_match(bus.manager_signals("JobRemoved")))
                if reset:
                    with contextlib.suppress(NoSuchUnit):  # not loaded: nothing failed
                        call(bus.manager_call("ResetFailedUnit", "s", unit))
                (job,) = call(bus.manager_call(method, "ss", unit, mode))
                result = _wait_job(conn, removed, job, deadline)
            state = _state_after(conn, unit, deadline + READ_SLACK, result is None)
        if result is None:
            raise JobTimeout(unit, bound, state)
        if result != "done":
            raise JobFailed(unit, result, state)
        assert state is not None
        return JobOutcome(unit, result, state)

    # -- for the gitops reconciler (adapters/gitops): added at the end, kept apart ----------

    def reload(self, timeout: float | None = None) -> None:
        """``systemctl --user daemon-reload``: Manager.Reload, which answers once the
        manager has read every unit file again (generators, Quadlet's too, run first)."""
        bound = self.job_timeout if timeout is None else timeout
        bus = _bus()
        with self._connection() as conn:
            try:
                reply = conn.send_and_get_reply(bus.manager_call("Reload"), timeout=bound)
            except TimeoutError as exc:
                raise SystemdUnavailable(f"the daemon-reload took over {bound:g} s") from exc
            bus.unwrap(reply)

    def needs_reload(self, unit: str) -> bool:
        """The unit is loaded and its file changed since (NeedDaemonReload); loads nothing:
        a unit not in memory reads its file afresh when it is next loaded."""
        props = self._loaded(unit)
        return props is not None and bool(props.get("NeedDaemonReload", False))

    def fragment(self, unit: str) -> str | None:
        """The file the manager loaded the unit from (FragmentPath; "" when it has none);
        None when the unit is not in memory, so not running. Loads nothing: asked before
        a stop a hecated before this one owed, to tell whose file the unit runs now."""
        props = self._loaded(unit)
        return None if props is None else str(props.get("FragmentPath", ""))

    def _loaded(self, unit: str) -> dict[str, Any] | None:
        """The unit's properties if the manager has it in memory (GetUnit, which loads
        nothing, unlike LoadUnit), else None."""
        check_unit_name(unit)
        bus = _bus()
        with self._connection() as conn:
            call = self._caller(conn, unit)
            try:
                (path,) = call(bus.manager_call("GetUnit", "s", unit))
            except NoSuchUnit:
                return None
            (props,) = call(bus.get_all(path, bus.UNIT_IFACE))
        return bus.plain(props)


def _state_after(conn: Any, unit: str, deadline: float, timed_out: bool) -> UnitState | None:
    """The unit's state after its job; None when the job did not end and the manager does
    not answer either (the bound has passed: no more waiting for a state)."""
    try:
        return _bus().read_unit(UserManager._caller(conn, unit, deadline), unit)[1]
    except SystemdUnavailable:
        if timed_out:
            return None
        raise


def _wait_job(conn: Any, removed: collections.deque, job: str, deadline: float) -> str | None:
    """The result JobRemoved gives ``job`` (done, failed, canceled, timeout, dependency,
    skipped...), or None when it has not ended by ``deadline``."""
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = conn.recv_until_filtered(removed, timeout=left)
        except TimeoutError:
            return None
        _id, path, _unit, result = msg.body
        if path == job:
            return result
    return None

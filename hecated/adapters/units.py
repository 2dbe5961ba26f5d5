"""The plugin units' vocabulary: which unit names we accept, a unit's state, and its words.

Everything here is pure and stdlib-only, so the HTTP layer can refuse a bad
unit name and the status rule can read a state without loading the D-Bus
library. The parts that talk to the user manager (``unitcontrol``,
``unitwatch``, over ``unitbus``) import jeepney only when first used.

Only ``.service`` units of the user manager are accepted, with a name that
systemd itself would take and nothing it would read as more than a name: no
path, no backslash escape, no template without an instance.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from hecated import protocol

UNIT_NAME_MAX = protocol.UNIT_NAME_MAX
SUFFIX = protocol.UNIT_SUFFIX


class UnitError(Exception):
    """Anything the unit adapter refuses or the user manager reports."""


class InvalidUnitName(UnitError, protocol.InvalidUnitName):
    """A unit name that is not a plain ``.service`` name; refused before any call.

    The rule is ``protocol.check_unit_name`` (the name rules' home); here it is also a
    ``UnitError``, so a caller of the adapter catches one family."""


class SystemdUnavailable(UnitError):
    """No user manager can be reached: no bus, no manager on it, or not ours."""


class NoSuchUnit(UnitError):
    """The user manager knows no unit by that name (no unit file loaded)."""

    def __init__(self, unit: str) -> None:
        super().__init__(f"the user manager has no unit {unit}")
        self.unit = unit


class JobConflict(UnitError):
    """A job asked in mode ``fail`` that would cancel a job already queued for the unit
    (systemd's TransactionIsDestructive: a start meeting a stop). Not a refusal for
    good: asked again once that job has ended, it is made."""


class JobFailed(UnitError):
    """A start/stop/restart job ended other than ``done``; ``result`` is systemd's word."""

    def __init__(self, unit: str, result: str, state: UnitState | None) -> None:
        words = unit_reason(state) if state is not None else ""
        detail = f": {words}" if words else ""
        super().__init__(f"{unit}: job {result}{detail}")
        self.unit = unit
        self.result = result
        self.state = state


class JobTimeout(JobFailed):
    """The job did not end within the bound; it goes on in the manager."""

    def __init__(self, unit: str, timeout: float, state: UnitState | None) -> None:
        super().__init__(unit, f"still running after {timeout:g} s", state)
        self.timeout = timeout


def check_unit_name(unit: str) -> str:
    """``unit`` if it is a name we may hand to the user manager, else ``InvalidUnitName``
    (the protocol's rule, raised as the adapter's error)."""
    try:
        return protocol.check_unit_name(unit)
    except protocol.InvalidUnitName as exc:
        raise InvalidUnitName(str(exc)) from None


@dataclass(frozen=True)
class UnitState:
    """What the user manager says of one unit (org.freedesktop.systemd1 Unit + Service).

    ``exit_code`` is siginfo's code for the main process (1 exited, 2 killed, 3 dumped
    core, 0 none yet) and ``exit_status`` its status or signal; ``since`` is the
    last state change, seconds since the epoch (None: never)."""

    name: str
    load_state: str
    active_state: str
    sub_state: str
    result: str = "success"
    n_restarts: int = 0
    since: float | None = None
    main_pid: int = 0
    exit_code: int = 0
    exit_status: int = 0
    restart: str = "no"
    exit_time: float | None = None
    restart_delay: float = 0.0

    @property
    def start_limit_hit(self) -> bool:
        """Whether the start limit stopped it, which systemd (252) does not say outright.

        It keeps the first failure's Result (exit-code, say), so a failed unit whose
        Restart= policy covers that result was stopped by the limit -- if it failed
        when a restart was due (RestartSec after the main process exited). A unit also
        passes through ``failed`` as its process exits, just before ``auto-restart``:
        that ``failed`` comes with the exit, and is no limit."""
        if self.result == "start-limit-hit":
            return True
        if self.active_state != "failed" or self.result not in _RESTARTED_ON.get(self.restart, ()):
            return False
        if self.since is None or self.exit_time is None:
            return True
        return self.since - self.exit_time >= max(self.restart_delay / 2, _SAME_EVENT)

    @property
    def exists(self) -> bool:
        """Whether a unit file backs it (a name the manager only made up is ``not-found``)."""
        return self.load_state not in ("not-found", "stub")


# systemd's service_shall_restart(): the failed results each Restart= policy restarts on.
_FAILURES = ("exit-code", "signal", "core-dump", "timeout", "watchdog", "oom-kill")
_RESTARTED_ON = {
    "always": _FAILURES,
    "on-failure": _FAILURES,
    "on-abnormal": ("signal", "core-dump", "timeout", "watchdog", "oom-kill"),
    "on-watchdog": ("watchdog",),
    "on-abort": ("signal", "core-dump"),
}
# Two clock reads in one manager event (the exit, then the state change) are this close.
_SAME_EVENT = 0.001
# siginfo codes for ExecMainCode (CLD_EXITED, CLD_KILLED, CLD_DUMPED).
CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3
# systemd's service results (service.c, service_result_table) in words.
RESULT_WORDS = {
    "exit-code": "exited with a failure status",
    "signal": "killed by a signal",
    "core-dump": "dumped core",
    "timeout": "timed out",
    "watchdog": "stopped answering its watchdog",
    "start-limit-hit": "start limit hit",
    "resources": "could not get its resources",
    "protocol": "broke the service protocol",
    "oom-kill": "killed by the OOM killer",
    "exec-condition": "its ExecCondition failed",
    "success": "",
}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _exit_words(state: UnitState) -> str:
    if state.exit_code == CLD_EXITED:
        return f"exited with status {state.exit_status}"
    if state.exit_code == CLD_KILLED:
        return f"killed by {_signal_name(state.exit_status)}"
    if state.exit_code == CLD_DUMPED:
        return f"dumped core on {_signal_name(state.exit_status)}"
    return ""


def unit_reason(state: UnitState) -> str:
    """The unit's story in words: "exited with status 1; restarted 5 times; start limit hit"."""
    parts = []
    failed = state.result != "success" or state.active_state == "failed"
    exited = _exit_words(state) if failed or state.n_restarts else ""
    if exited and (state.exit_code, state.exit_status) != (CLD_EXITED, 0):
        parts.append(exited)
    if state.n_restarts:
        times = "once" if state.n_restarts == 1 else f"{state.n_restarts} times"
        parts.append(f"restarted {times}")
    said = parts and state.result in ("exit-code", "signal", "core-dump")
    if state.result not in ("success", "start-limit-hit") and not said:
        parts.append(RESULT_WORDS.get(state.result, state.result))
    if state.start_limit_hit:
        parts.append(RESULT_WORDS["start-limit-hit"])
    return "; ".join(parts)


def unit_status(state: UnitState) -> tuple[str, str] | None:
    """The plugin status a unit state decides, with its reason; None when it decides none.

    ``active`` decides nothing: ``running`` still needs the plugin's own socket to
    answer (the probes). Nor does a unit without a unit file: the plugin runs some
    other way, or not at all, and the probes say which."""
    if not state.exists:
        return None
    if state.load_state == "masked" and state.active_state == "inactive":
        return "stopped", "the unit is masked: it cannot start until unmasked"
    active = state.active_state
    if active == "failed":
        return "failed", unit_reason(state) or "the unit failed"
    if active == "activating":
        if state.sub_state == "auto-restart":
            story = unit_reason(state)
            return "starting", f"restarting after a failure ({story})" if story else "restarting"
        return "starting", f"the unit is starting ({state.sub_state})"
    if active == "deactivating":
        return "stopping", f"the unit is stopping ({state.sub_state})"
    if active in ("inactive", "maintenance"):
        return "stopped", f"the unit is {active} ({state.sub_state})"
    return None

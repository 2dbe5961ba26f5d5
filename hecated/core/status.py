"""The status rule: what a plugin's ``status`` is, from what is known of it.

A pure function (``combine``) of its findings, each from one source:

- the run dir (``runstate.read_run``): a live pid, the state line; read by the
  index itself on every refresh (core calling core);
- the plugin's socket (a ``SocketFinding``): found by the liveness adapter's
  probes and published into the index (``Index.set_finding``);
- the plugin's systemd user unit (a ``UnitFinding``): what the user manager
  says, followed from its signals by the unit adapters and published into the
  index (``Index.set_unit``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from hecated.core.runstate import RunState
from hecated.protocol import PluginStatus

__all__ = ["LiveManifest", "Liveness", "SocketFinding", "SocketKind", "UnitFinding", "combine"]


@dataclass(frozen=True)
class LiveManifest:
    """What a plugin's own ``GET /manifest`` and ``GET /ui/component.js`` said.

    Live data, read from the plugin while it answers: never written into
    ``plugin.toml`` (which stays the registration). ``problems`` are plain
    sentences a person can act on (a name that fits no convention, a missing
    field, a UI module the UI cannot load).
    """

    name: str | None = None
    version: str | None = None
    description: str | None = None
    display_name: str | None = None
    icon: str | None = None
    tag: str | None = None
    ui: bool = False
    problems: tuple[str, ...] = ()


class SocketKind(StrEnum):
    """What a look at a plugin's ``sockets/api.sock`` found."""

    ANSWERING = "answering"  # GET /health answered 2xx
    REFUSING = "refusing"  # something accepts, but the answer is not a 2xx (or none came)
    ABSENT = "absent"  # no socket file, or nothing accepts on it


@dataclass(frozen=True)
class SocketFinding:
    """What one probe of a plugin's socket found; ``socket_file`` tells a stale socket
    (a crash's leftover) from none at all."""

    kind: SocketKind
    detail: str | None = None
    manifest: LiveManifest | None = None
    socket_file: bool = False


@dataclass(frozen=True)
class UnitFinding:
    """What the user manager says of a plugin's unit: the entry's ``unit`` block.

    ``status`` and ``reason`` are the plugin status that state decides and its
    story in words ("exited with status 1; restarted 5 times; start limit hit"),
    computed by the unit adapter (which knows systemd's vocabulary); ``status``
    None: the unit decides nothing (it is active, so the socket decides; or no
    unit file backs the name). ``since`` is seconds since the epoch.
    """

    name: str
    load_state: str
    active_state: str
    sub_state: str
    result: str = "success"
    restarts: int = 0
    since: float | None = None
    main_pid: int | None = None
    status: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, object]:
        """The ``unit`` block of a list or detail entry."""
        return {
            "name": self.name,
            "load_state": self.load_state,
            "active_state": self.active_state,
            "sub_state": self.sub_state,
            "result": self.result,
            "restarts": self.restarts,
            "since": self.since,
            "main_pid": self.main_pid,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Liveness:
    """What is known about a plugin's process, as the index holds it.

    ``status`` is one of ``running``, ``starting``, ``unhealthy``, ``stopped``;
    ``detail`` says why when it is not plainly running or stopped. ``answering``
    is true while something accepts on the plugin's ``sockets/api.sock``: that
    alone keeps a namespace without ``plugin.toml`` in the index (discovered).
    """

    status: PluginStatus
    pid: int | None = None
    state: str | None = None
    detail: str | None = None
    manifest: LiveManifest | None = None
    answering: bool = False
    unit: UnitFinding | None = None


def combine(
    run: RunState, found: SocketFinding | None, unit: UnitFinding | None = None
) -> Liveness:
    """The status from the run dir, the socket (None: not probed yet) and the unit (None:
    no word from the user manager).

    Only the socket's own answer makes a plugin ``running``: a live pid whose socket
    is missing, refuses, or has not been looked at yet is ``starting`` (issue 12).
    A unit that decides a status (failed, starting, stopping, stopped) wins over the
    probes, except that a ``stopped`` unit whose plugin answers anyway (started by
    hand: its socket answers, or its pid file names a live process) is what the probes
    say; an ``active`` unit decides nothing but makes a plugin whose socket does not
    answer yet ``starting``, not ``stopped``.
    """
    probed = _probed(run, found)
    if unit is None:
        return probed
    by_hand = unit.status == PluginStatus.STOPPED and probed.status != PluginStatus.STOPPED
    if unit.status is None or by_hand:
        if unit.active_state == "active" and probed.status == PluginStatus.STOPPED:
            why = "the unit is active; sockets/api.sock does not answer yet"
            return replace(probed, status=PluginStatus.STARTING, detail=why, unit=unit)
        return replace(probed, unit=unit)
    return replace(probed, status=PluginStatus(unit.status), detail=unit.reason, unit=unit)


def _probed(run: RunState, found: SocketFinding | None) -> Liveness:
    """What the run dir and the socket alone say."""
    pid, state = run.pid, run.state
    if found is not None and found.kind == SocketKind.ANSWERING:
        return Liveness(PluginStatus.RUNNING, pid, state, None, found.manifest, answering=True)
    if found is not None and found.kind == SocketKind.REFUSING:
        return Liveness(PluginStatus.UNHEALTHY, pid, state, found.detail, answering=True)
    if run.alive:
        return Liveness(PluginStatus.STARTING, pid, state, _not_answering(found))
    return Liveness(PluginStatus.STOPPED, None, state, found.detail if found else None)


def _not_answering(found: SocketFinding | None) -> str:
    """Why a live process counts as ``starting``. Not probed yet and no socket file
    read alike, so a fresh scan and a watched index agree on the words."""
    if found is not None and found.detail:
        return found.detail
    return "its process runs; sockets/api.sock does not answer yet"

"""The status rule: what a plugin's ``status`` is, from what is known of it.

A pure function (``combine``) of its findings, each from one source:

- the run dir (``runstate.read_run``): a live pid, the state line; read by the
  index itself on every refresh (core calling core);
- the plugin's socket (a ``SocketFinding``): found by the liveness adapter's
  probes and published into the index (``Index.set_finding``).

The lifecycle issue adds a third source, the plugin's unit state, merged by the
same rule: one more argument here, one more publisher into the index.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from hecated.core.runstate import RunState
from hecated.protocol import PluginStatus

__all__ = ["LiveManifest", "Liveness", "SocketFinding", "SocketKind", "combine"]


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


def combine(run: RunState, found: SocketFinding | None) -> Liveness:
    """The status from the run dir's finding and the socket's (None: not probed yet).

    Only the socket's own answer makes a plugin ``running``: a live pid whose socket
    is missing, refuses, or has not been looked at yet is ``starting`` (issue 12).
    """
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
